"""SMTC model: ViT feature access, slot structure, EMA teacher and checkpoint loading (random weights)."""
from __future__ import annotations

import argparse
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

from raytrain.models.smtc import SMTC, SlotAttention, ema_update, make_teacher
from raytrain.models.vit import vit_small
from raytrain.models.weights import load_smtc_weights, load_vit_weights

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return vit_small().eval()


@pytest.fixture(scope="module")
def smtc():
    torch.manual_seed(1)
    return SMTC(num_slots=4, num_instances=2, iters=3, resolution=64).eval()


@pytest.fixture(scope="module")
def blank_vit():
    """A second ViT whose weights each test scrambles before loading into it."""
    return vit_small().eval()


def _scramble(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()


@pytest.mark.parametrize("size", [(224, 224), (64, 96)])
def test_last_block_matches_timm(vit, size):
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        feats = vit.features(x)
        tokens_in, h, w = vit._last_block_input(x)
        ref = vit.blocks[-1](tokens_in)
        ref_keys = vit.blocks[-1].attn.qkv(vit.blocks[-1].norm1(tokens_in))[..., 384:768]
        keys_only = vit.keys(x)
        timm_out = vit.forward_features(x) if size == (224, 224) else None  # timm: blocks, final norm
    assert (h, w) == (size[0] // 16, size[1] // 16)
    assert feats.tokens.shape == feats.keys.shape == (1, 384, h, w)
    torch.testing.assert_close(feats.tokens.flatten(2).transpose(1, 2), ref[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats.cls, ref[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats.keys.flatten(2).transpose(1, 2), ref_keys[:, 1:])
    torch.testing.assert_close(keys_only, feats.keys)
    if timm_out is not None:  # no positional interpolation at the native size: timm's own forward agrees
        torch.testing.assert_close(vit.norm(feats.tokens.flatten(2).transpose(1, 2)), timm_out[:, 1:],
                                   rtol=1e-5, atol=1e-5)


def test_pos_embed_interpolation(vit):
    assert vit.pos_embed_for(14, 14) is vit.pos_embed
    pe = vit.pos_embed_for(16, 16)
    assert pe.shape == (1, 257, 384)
    torch.testing.assert_close(pe[:, 0], vit.pos_embed[:, 0])
    grid = vit.pos_embed[:, 1:].reshape(1, 14, 14, 384).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=(16.1 / 14, 16.1 / 14), mode="bicubic")  # DINO's formula
    torch.testing.assert_close(pe[:, 1:], ref.flatten(2).transpose(1, 2))
    assert vit.pos_embed_for(30, 50).shape == (1, 1501, 384)


def test_training_forward_shapes(smtc):
    frames = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        out = smtc(frames)
    assert out.semantic_logits.shape == (2, 3, 4, 16)
    assert out.keys.shape == (2, 3, 16, 384)
    assert out.semantic.shape == (2, 3, 4, 384)
    assert out.instances.shape == out.projected.shape == (2, 3, 4, 2, 384)
    torch.testing.assert_close(out.projected.norm(dim=-1), torch.ones(2, 3, 4, 2))
    with torch.no_grad():
        keys = smtc.encoder.keys(frames.flatten(0, 1))
    torch.testing.assert_close(out.keys, keys.flatten(2).transpose(1, 2).reshape(2, 3, 16, 384))


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_discover_structure(smtc, size):
    with torch.no_grad():
        d = smtc.discover(torch.randn(1, 4, 3, *size), iters=5)
    n = d.h * d.w
    assert (d.h, d.w) == (size[0] // 16, size[1] // 16)
    assert d.p_sem.shape == (1, 4, 4, n) and d.similarity.shape == (1, 4, 4, 2)
    assert d.masks.shape == (1, 4, 4, 2, n)
    torch.testing.assert_close(d.p_sem.sum(2), torch.ones(1, 4, n))
    torch.testing.assert_close(d.masks.sum(3), d.p_sem)  # instance softmax is over the P of one slot
    assert d.similarity.abs().max() <= 1 + 1e-5


def test_encode_frames(smtc):
    frames = torch.randn(1, 2, 3, 48, 64)
    with torch.no_grad():
        tokens = smtc.encode_frames(frames)
        ref = smtc.encoder.features(frames[0]).tokens
    assert tokens.shape == (1, 2, 3, 4, 384)
    torch.testing.assert_close(tokens[0], ref.permute(0, 2, 3, 1))


def test_correlation_fusion_uses_previous_frame_cyclically(smtc):
    keys = torch.randn(1, 3, 384, 4, 4)
    fused = smtc._correlate(keys).reshape(1, 3, 16, 384)
    flat = keys.flatten(3)  # B T D N
    for t, prev in ((0, 2), (1, 0), (2, 1)):
        corr = flat[0, prev].T @ flat[0, t]  # 16 (previous positions) x 16
        ref = flat[0, t] + smtc.transport_proj(corr.unsqueeze(0))[0]
        torch.testing.assert_close(fused[0, t], ref.T, rtol=1e-4, atol=1e-3)


def _reference_slots(sa: SlotAttention, x: torch.Tensor, init: torch.Tensor, threshold_prob: bool):
    """One iteration of both stages written out from the spec."""
    h = sa.norm_input(x)
    k, v = sa.project_k(h), sa.project_v(h)
    mu = sa.slots_mu[:, :, 0].expand(x.shape[0], -1, -1)
    logits = sa.project_q(sa.norm_slots(mu)) @ k.transpose(1, 2) * sa.scale
    attn = logits.softmax(1) + 1e-8
    attn = attn / attn.sum(-1, keepdim=True)
    sem = mu + attn @ v
    sem = sem + sa.mlp(sa.norm_pre_ff(sem))
    mask = (logits.softmax(1) if threshold_prob else logits) > 0.3
    ilog = torch.einsum("bspd,bnd->bspn", sa.project_q(sa.norm_slots(init)), k) * sa.scale
    iattn = (ilog.softmax(2) + 1e-8) * mask.unsqueeze(2)
    iattn = iattn / (iattn.sum(-1, keepdim=True) + 1e-8)
    inst = init + torch.einsum("bspn,bnd->bspd", iattn, v)
    return sem, logits, inst + sa.mlp(sa.norm_pre_ff(inst)), ilog


@pytest.mark.parametrize("instance_mask", ["logit", "softmax"])
def test_slot_attention_one_iteration_matches_spec(instance_mask):
    torch.manual_seed(0)
    sa = SlotAttention(num_slots=3, num_instances=2, dim=384, iters=1, instance_mask=instance_mask)
    x = 3 * torch.randn(2, 20, 384)
    torch.manual_seed(5)
    with torch.no_grad():
        out = sa(x)
        torch.manual_seed(5)
        shape = (2, -1, 2, -1)
        init = torch.normal(sa.slots_mu.expand(*shape), sa.slots_sigma.exp().expand(*shape))
        sem, logits, inst, ilog = _reference_slots(sa, x, init, threshold_prob=instance_mask == "softmax")
        _, _, inst_other, _ = _reference_slots(sa, x, init, threshold_prob=instance_mask != "softmax")
    torch.testing.assert_close(out.semantic, sem, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.semantic_logits, logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.instance_logits, ilog, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.instances, inst, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(inst, inst_other, atol=1e-3)  # the mask choice (probability vs raw logit) matters


def test_instance_mask_modes_on_hand_made_logits():
    # 2 slots x 4 pixels. Pixel 0: logits 0.5 / 0.4, softmax 0.52 / 0.48 -> both pass either rule.
    # Pixel 1: -1 / -3 -> softmax 0.88 / 0.12: slot 0 passes only the softmax rule.
    # Pixel 2: 2 / 0.35 -> softmax 0.84 / 0.16: slot 1 passes only the logit rule.
    # Pixel 3: 0.1 / 0.2 -> softmax 0.48 / 0.52: both pass only the softmax rule.
    logits = torch.tensor([[[0.5, -1.0, 2.0, 0.1], [0.4, -3.0, 0.35, 0.2]]])
    by_logit = torch.tensor([[[True, False, True, False], [True, False, True, False]]])
    by_softmax = torch.tensor([[[True, True, True, True], [True, False, False, True]]])
    default = SlotAttention(num_slots=2, num_instances=2, dim=8)
    assert default.instance_mask == "logit"
    assert torch.equal(default.semantic_mask(logits), by_logit)
    softmax = SlotAttention(num_slots=2, num_instances=2, dim=8, instance_mask="softmax")
    assert torch.equal(softmax.semantic_mask(logits), by_softmax)
    assert torch.equal(softmax.semantic_mask(logits), logits.softmax(1) > 0.3)


def test_instance_mask_default_plumbing_and_validation():
    assert SMTC(num_slots=2, num_instances=2, resolution=32).slot_attention.instance_mask == "logit"
    assert SMTC(num_slots=2, num_instances=2, resolution=32,
                instance_mask="softmax").slot_attention.instance_mask == "softmax"
    with pytest.raises(ValueError, match="--instance_mask"):
        SlotAttention(num_slots=2, num_instances=2, dim=8, instance_mask="prob")
    with pytest.raises(ValueError, match="--instance_mask"):
        SMTC(num_slots=2, num_instances=2, resolution=32, instance_mask="sigmoid")


def test_gradients_reach_every_trainable_parameter(smtc):
    model = copy.deepcopy(smtc).train()
    out = model(torch.randn(1, 2, 3, 64, 64))
    (out.semantic_logits.sum() + out.projected.sum()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert no_grad == []
    assert frozen == {"encoder.norm.weight", "encoder.norm.bias"} | {
        f"encoder.blocks.11.{m}.{t}" for m in ("attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for t in ("weight", "bias")}
    sa = model.slot_attention
    assert sa.slots_mu.grad.abs().sum() > 0
    assert sa.slots_sigma.grad.abs().sum() == 0  # torch.normal passes no gradient to the std


def test_ema_teacher(smtc):
    student = copy.deepcopy(smtc)
    teacher = make_teacher(student)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher, student, momentum=0.9)
    student_params = dict(student.named_parameters())
    for name, p in teacher.named_parameters():
        if name.startswith("encoder."):
            assert torch.equal(p, before[name]), name
        else:
            torch.testing.assert_close(p, 0.9 * before[name] + 0.1 * student_params[name])


def _same_features(a, b, x):
    with torch.no_grad():
        fa, fb = a.features(x), b.features(x)
    return all(torch.equal(u, v) for u, v in zip(fa, fb))


def test_load_dino_plain_timm_and_training_checkpoints(vit, blank_vit, tmp_path):
    state = vit.state_dict()
    x = torch.randn(1, 3, 64, 64)
    plain = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(state, plain)
    timm_file = tmp_path / "timm.pth"
    torch.save({**state, "head.weight": torch.randn(1000, 384), "head.bias": torch.zeros(1000)}, timm_file)
    deit_style = tmp_path / "deit.pth"
    torch.save({"model": state, "epoch": 299}, deit_style)
    training = tmp_path / "checkpoint.pth"
    decoy = {**state, "cls_token": torch.randn_like(state["cls_token"])}
    torch.save({"student": {f"module.backbone.{k}": v for k, v in decoy.items()},
                "teacher": {**{f"backbone.{k}": v for k, v in state.items()},
                            "head.mlp.0.weight": torch.randn(8, 384)},
                "args": argparse.Namespace(arch="vit_small", patch_size=16), "epoch": 3}, training)
    for path in (plain, timm_file, deit_style, training):
        _scramble(blank_vit)
        assert not _same_features(blank_vit, vit, x)
        load_vit_weights(blank_vit, path)
        assert _same_features(blank_vit, vit, x), path
    load_vit_weights(blank_vit, training, which="student")
    assert torch.equal(blank_vit.cls_token, decoy["cls_token"])


def test_load_smtc_checkpoint_gives_identical_outputs(smtc, blank_vit, tmp_path):
    path = tmp_path / "checkpoint_9500_loss_-1.2.pth"
    torch.save({"iteration": 9500, "model_state_dict": smtc.state_dict(), "loss": torch.tensor(-1.2),
                "optimizer_state_dict": {"state": {}, "param_groups": []}}, path)
    fresh = copy.deepcopy(smtc)
    _scramble(fresh)
    load_smtc_weights(fresh, path)
    frames = torch.randn(1, 4, 3, 64, 64)
    outs = []
    for model in (smtc, fresh):
        torch.manual_seed(3)
        with torch.no_grad():
            outs.append(model.discover(frames))
    for a, b in zip(*outs):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    _scramble(blank_vit)
    load_vit_weights(blank_vit, path)  # the encoder part of an SMTC checkpoint
    assert _same_features(blank_vit, smtc.encoder, frames[0])


def test_wrong_checkpoints_are_refused(smtc, blank_vit, tmp_path):
    before = {k: v.clone() for k, v in smtc.state_dict().items()}
    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    with pytest.raises(ValueError, match=r"resnet18\.pth.*missing keys \(e\.g\. .*blocks\.0"):
        load_vit_weights(blank_vit, resnet)
    with pytest.raises(ValueError, match=r"resnet18\.pth.*unexpected keys \(e\.g\. .*bn1"):
        load_smtc_weights(smtc, resnet)
    other = tmp_path / "smtc_8_slots.pth"
    state = dict(smtc.state_dict(), **{"slot_attention.slots_mu": torch.zeros(1, 8, 1, 384),
                                      "transport_proj.weight": torch.zeros(384, 64, 1)})
    torch.save({"model_state_dict": state}, other)
    with pytest.raises(ValueError, match=r"smtc_8_slots\.pth.*shape mismatch for .*slots_mu"):
        load_smtc_weights(smtc, other)
    junk = tmp_path / "junk.pth"
    torch.save({"epoch": 3}, junk)
    with pytest.raises(ValueError, match="junk.pth holds no"):
        load_vit_weights(blank_vit, junk)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_vit_weights(blank_vit, tmp_path / "nope.pth")
    assert all(torch.equal(v, before[k]) for k, v in smtc.state_dict().items())  # nothing half-loaded
