"""STMAE model: shapes, affinity/readout, aggregation, frozen BN, checkpoint and ImageNet-weight loading."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from raytrain.models.resnet_weights import load_resnet
from raytrain.models.stmae import (STMAE, checkpoint_weights, load_checkpoint, readout_masks, similarity,
                                   softmax_affinity)
from raytrain.models.stmae_modules import aggregate

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def model() -> STMAE:
    torch.manual_seed(0)
    return STMAE().eval()


def test_shapes_through_every_stage(model: STMAE):
    b, t, m, h, w = 2, 2, 3, 32, 48
    frames = torch.randn(b, t, 3, h, w)
    with torch.no_grad():
        f16, f8, f4 = model.encode_key(frames)
        assert f16.shape == (b, t, 1024, 2, 3) and f8.shape == (b, t, 512, 4, 6) and f4.shape == (b, t, 256, 8, 12)
        keys = f16.transpose(1, 2)  # B, C, T, h, w
        memory = torch.rand(b, m, 1, 2, 3)
        coarse = model.read_masks(f16[:, 1], keys[:, :, :1], memory)
        assert coarse.shape == (b, m, 2, 3)
        assert coarse.min() >= 0 and coarse.max() <= 1
        up = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        g16 = model.encode_value(frames[:, 1], f16[:, 1], up)
        assert g16.shape == (b, m, 512, 2, 3)
        logits, prob, prob_bg = model.segment(f16[:, 1], f8[:, 1], f4[:, 1], g16)
        assert logits.shape == (b, m + 1, h, w) and prob.shape == (b, m, h, w) and prob_bg.shape == (b, m + 1, h, w)
        torch.testing.assert_close(prob, prob_bg[:, 1:])
        out = model(frames[:, 1], f16[:, 1], f8[:, 1], f4[:, 1], keys[:, :, :1], memory)  # = the stages above
        for a, e in zip(out, (logits, prob, prob_bg)):
            torch.testing.assert_close(a, e)


def test_readout_is_softmax_over_memory_dot_products():
    g = torch.Generator().manual_seed(0)
    mk, qk = torch.randn(2, 8, 30, generator=g), torch.randn(2, 8, 12, generator=g)
    mv = torch.rand(2, 3, 30, generator=g)
    affinity = softmax_affinity(similarity(mk, qk))
    expected = torch.einsum("bmn,bnp->bmp", mv, torch.softmax(torch.einsum("bcn,bcp->bnp", mk, qk), 1))
    torch.testing.assert_close(readout_masks(affinity, mv), expected)
    torch.testing.assert_close(affinity.sum(1), torch.ones(2, 12))
    # top-k with k >= N is the full softmax; with k < N exactly k entries per query are non-zero
    torch.testing.assert_close(softmax_affinity(similarity(mk, qk), top_k=30), affinity)
    assert ((softmax_affinity(similarity(mk, qk), top_k=5) > 0).sum(1) == 5).all()


def test_l2_similarity_is_stcns_negative_squared_distance_under_the_softmax():
    g = torch.Generator().manual_seed(1)
    mk, qk = torch.randn(2, 16, 30, generator=g), torch.randn(2, 16, 12, generator=g)
    distance = torch.cdist(mk.transpose(1, 2), qk.transpose(1, 2)).pow(2)  # B, N, P
    torch.testing.assert_close(softmax_affinity(similarity(mk, qk, "l2")), torch.softmax(-distance / 4, dim=1))
    assert not torch.allclose(similarity(mk, qk, "l2"), similarity(mk, qk))
    with pytest.raises(ValueError, match="--similarity must be one of dot, l2, got 'cosine'"):
        STMAE(value_dim=64, similarity="cosine")


def test_topk_softmax_finite_on_large_similarities():
    sim = 3000 + 500 * torch.randn(1, 200, 16, generator=torch.Generator().manual_seed(0))
    values = sim.topk(30, dim=1).values
    naive = values.exp() / values.exp().sum(1, keepdim=True)  # upstream: exp without max subtraction
    assert not torch.isfinite(naive).all()
    affinity = softmax_affinity(sim, top_k=30)
    assert torch.isfinite(affinity).all()
    torch.testing.assert_close(affinity.sum(1), torch.ones(1, 16))
    assert ((affinity > 0).sum(1) <= 30).all()


def test_soft_aggregation_sums_to_one():
    prob = torch.rand(2, 3, 5, 7)
    prob[1, 2] = 0  # a padded object slot (selector 0)
    logits, agg = aggregate(prob, dim=1)
    assert agg.shape == (2, 4, 5, 7)
    torch.testing.assert_close(agg.sum(1), torch.ones(2, 5, 7))
    torch.testing.assert_close(torch.softmax(logits, 1), agg)
    assert agg[1, 3].max() < 1e-5
    # odds ratios are kept: p_i/(1-p_i) : p_j/(1-p_j) with the background prod(1 - p)
    p = torch.cat([torch.prod(1 - prob, 1, keepdim=True), prob], 1).clamp(1e-7, 1 - 1e-7)
    odds = p / (1 - p)
    torch.testing.assert_close(agg, odds / odds.sum(1, keepdim=True))


def test_batchnorm_frozen_in_train_mode():
    net = STMAE(value_dim=64).train()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert net.training and net.decoder.training
    before = net.key_encoder.bn1.running_mean.clone()
    net.encode_key(torch.randn(2, 3, 32, 32) * 5 + 3)
    assert torch.equal(net.key_encoder.bn1.running_mean, before)


def test_checkpoint_names_follow_upstream(model: STMAE):
    sd = model.state_dict()
    for key in ["key_encoder.conv1.weight", "key_encoder.res2.0.conv1.weight", "key_encoder.layer3.5.bn3.weight",
                "value_encoder.layer3.1.conv2.weight", "value_encoder.fuser.block1.downsample.weight",
                "value_encoder.fuser.attention.ChannelGate.mlp.1.weight",
                "value_encoder.fuser.attention.SpatialGate.spatial.conv.weight",
                "value_encoder.fuser.block2.conv2.weight", "decoder.fuser.block1.conv1.weight",
                "decoder.up_16_8.skip_conv.weight", "decoder.up_16_8.out_conv.downsample.weight",
                "decoder.up_8_4.out_conv.conv2.bias", "decoder.pred.weight"]:
        assert key in sd, key
    assert not any(k.startswith(("key_encoder.layer4", "key_encoder.fc", "value_encoder.layer4")) for k in sd)
    assert "decoder.up_8_4.out_conv.downsample.weight" not in sd  # 256 -> 256: identity shortcut
    assert sd["value_encoder.conv1.weight"].shape == (64, 5, 7, 7)
    assert sd["value_encoder.fuser.block1.conv1.weight"].shape == (512, 1280, 3, 3)
    assert sd["decoder.fuser.block1.conv1.weight"].shape == (512, 1536, 3, 3)


def test_checkpoint_round_trips(tmp_path):
    torch.manual_seed(1)
    net = STMAE(value_dim=64).eval()
    x = torch.randn(1, 3, 32, 32)
    memory = torch.rand(1, 2, 1, 2, 2)
    with torch.no_grad():
        f16, f8, f4 = net.encode_key(x)
        ref = net(x, f16, f8, f4, f16.unsqueeze(2), memory)
    sd = net.state_dict()
    torch.save(sd, tmp_path / "plain.pth")  # the released format
    loaded = load_checkpoint(tmp_path / "plain.pth").eval()
    assert loaded.value_dim == 64  # inferred from value_encoder.fuser.block2.conv2.weight
    with torch.no_grad():
        for a, b in zip(loaded(x, f16, f8, f4, f16.unsqueeze(2), memory), ref):
            torch.testing.assert_close(a, b)

    single = dict(sd)  # an upstream training checkpoint of a single-object (stage-0) model
    single["value_encoder.conv1.weight"] = sd["value_encoder.conv1.weight"][:, :4].clone()
    torch.save({"epoch": 3, "it": 10, "network": single, "optimizer": {}}, tmp_path / "network.pth")
    loaded = load_checkpoint(tmp_path / "network.pth").state_dict()
    conv1 = loaded.pop("value_encoder.conv1.weight")
    assert torch.equal(conv1[:, :4], single["value_encoder.conv1.weight"]) and not conv1[:, 4].any()
    assert all(torch.equal(v, sd[k]) for k, v in loaded.items())

    task_state = {"task": {"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {}}, "step": 5}
    assert checkpoint_weights(task_state, "state.pt").keys() == sd.keys()


def test_wrong_checkpoints_refused(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="resnet.pth: not an STMAE checkpoint"):
        load_checkpoint(tmp_path / "resnet.pth")
    sd = STMAE(value_dim=64).state_dict()
    del sd["decoder.pred.weight"]
    torch.save({"network": sd}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="broken.pth: does not match the STMAE architecture"):
        load_checkpoint(tmp_path / "broken.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        load_checkpoint(tmp_path / "tensor.pth")


def _check_loaded(net: STMAE, r50: dict, r18: dict) -> None:
    ke, ve = net.key_encoder.state_dict(), net.value_encoder.state_dict()
    assert torch.equal(ke["conv1.weight"], r50["conv1.weight"])
    assert torch.equal(ke["res2.2.conv3.weight"], r50["layer1.2.conv3.weight"])
    assert torch.equal(ke["layer3.5.bn3.running_var"], r50["layer3.5.bn3.running_var"])
    assert torch.equal(ve["layer2.1.bn2.weight"], r18["layer2.1.bn2.weight"])
    assert torch.equal(ve["conv1.weight"][:, :3], r18["conv1.weight"])
    extra = ve["conv1.weight"][:, 3:].flatten(1)  # orthogonal init: 64 orthonormal rows of length 98
    torch.testing.assert_close(extra @ extra.T, torch.eye(64), atol=1e-4, rtol=0)


def test_imagenet_weights_torchvision_and_timm_formats(tmp_path):
    torch.manual_seed(2)
    r50 = torchvision.models.resnet50().state_dict()
    r18 = torchvision.models.resnet18().state_dict()
    for sd in (r50, r18):  # non-trivial BN statistics
        for k, v in sd.items():
            if k.endswith(("running_mean", "running_var")):
                v.uniform_(0.5, 1.5)
    torch.save(r50, tmp_path / "resnet50-19c8e357.pth")
    torch.save(r18, tmp_path / "resnet18-5c106cde.pth")
    net = STMAE(value_dim=64)
    load_resnet(net.key_encoder, tmp_path / "resnet50-19c8e357.pth", rename={"layer1": "res2"})
    load_resnet(net.value_encoder, tmp_path / "resnet18-5c106cde.pth")
    _check_loaded(net, r50, r18)

    t50 = timm.create_model("resnet50").state_dict()
    t18 = timm.create_model("resnet18").state_dict()
    save_file(t50, str(tmp_path / "model.safetensors"))  # timm hub format
    torch.save({"state_dict": {f"module.{k}": v for k, v in t18.items()}, "epoch": 1}, tmp_path / "timm18.pth.tar")
    load_resnet(net.key_encoder, tmp_path / "model.safetensors", rename={"layer1": "res2"})
    load_resnet(net.value_encoder, tmp_path / "timm18.pth.tar")
    _check_loaded(net, t50, t18)

    with pytest.raises(ValueError, match="resnet18-5c106cde.pth: .*right ResNet depth"):
        load_resnet(net.key_encoder, tmp_path / "resnet18-5c106cde.pth", rename={"layer1": "res2"})
    torch.save({"foo": torch.zeros(1)}, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="junk.pth: not a torchvision/timm ResNet"):
        load_resnet(net.value_encoder, tmp_path / "junk.pth")
