"""SMTC training task: augmentation, schedule, parameter groups, training steps, resume, DDP."""
from __future__ import annotations

import copy
import dataclasses
import io
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torchvision.transforms.v2 import functional as TF

from raytrain import augment
from raytrain.config import SMTCConfig
from raytrain.losses.smtc import instance_loss
from raytrain.models.vit import vit_small
from raytrain.train.smtc_task import SMTCTask, encoder_lr_scale, learning_rate, param_groups

torch.set_num_threads(2)

TINY = dict(resolution=64, num_slots=4, num_instance=2, batch_size=2, num_frames=2, steps=1000, grad_iter=3,
            lr=3e-4)


def _frames(t: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (2, t, 3, 64, 64), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue"])
def test_jitter_ops_match_torchvision(name):
    x = torch.rand(3, 2, 3, 16, 20, generator=torch.Generator().manual_seed(0))
    f = torch.tensor([-0.1, 0.05, 0.3]) if name == "hue" else torch.tensor([0.6, 1.3, 1.0])
    ours = getattr(augment, f"adjust_{name}")(x, f)
    ref = torch.stack([getattr(TF, f"adjust_{name}")(x[i], float(f[i])) for i in range(3)])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_blur_and_grayscale_match_torchvision():
    x = torch.rand(3, 2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.1, 1.0, 2.0])
    ours = augment.gaussian_blur(x, sigma, 25)
    ref = torch.stack([TF.gaussian_blur(x[i], [25, 25], [float(sigma[i])] * 2) for i in range(3)])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(augment.rgb_to_grayscale(x), TF.rgb_to_grayscale(x), rtol=0, atol=1e-6)
    assert augment.blur_kernel_size(256) == 25 and augment.blur_kernel_size(64) == 7


def test_augment_parameter_distribution():
    p = augment.sample_clip_params(20000, torch.Generator().manual_seed(0))
    assert p.gray.float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert p.jitter.float().mean().item() == pytest.approx(0.8, abs=0.01)
    assert p.blur.float().mean().item() == pytest.approx(0.5, abs=0.01)
    lo, hi = p.factors.amin(0), p.factors.amax(0)
    torch.testing.assert_close(lo, torch.tensor([0.6, 0.6, 0.6, -0.1]), atol=1e-3, rtol=0)
    torch.testing.assert_close(hi, torch.tensor([1.4, 1.4, 1.4, 0.1]), atol=1e-3, rtol=0)
    assert 0.1 <= p.sigma.min() and p.sigma.max() <= 2.0
    assert torch.equal(p.order.sort(1).values, torch.arange(4).expand(20000, -1))  # a permutation per clip
    assert len({tuple(o) for o in p.order[:100].tolist()}) > 10


def test_augment_clips_reproducible_and_same_on_all_frames():
    frame = _frames(1)
    clips = torch.cat([frame.expand(-1, 3, -1, -1, -1), frame.flip(-1).expand(-1, 3, -1, -1, -1)])  # 4 clips
    a, b, c = (augment.augment_clips(clips, augment.sample_clip_params(4, torch.Generator().manual_seed(seed)))
               for seed in (5, 5, 6))
    assert a.shape == (4, 3, 3, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 0], a[:, 2])  # one parameter set per clip
    mean = torch.tensor(augment.IMAGENET_MEAN).reshape(3, 1, 1)
    std = torch.tensor(augment.IMAGENET_STD).reshape(3, 1, 1)
    assert (a * std + mean).min() >= -1e-5 and (a * std + mean).max() <= 1 + 1e-5


def test_learning_rate_schedule():
    assert learning_rate(0, 2e-5, 10000) == pytest.approx(2e-5)
    assert learning_rate(5000, 2e-5, 10000) == pytest.approx(0.55 * 2e-5)
    assert learning_rate(10000, 2e-5, 10000) == pytest.approx(2e-6)
    assert learning_rate(12000, 2e-5, 10000) == pytest.approx(2e-6)  # no IndexError past the end
    lrs = [learning_rate(s, 1.0, 100) for s in range(101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert encoder_lr_scale(2999, 3000) == 0.0 and encoder_lr_scale(3000, 3000) == 0.01


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory):
    torch.manual_seed(42)
    path = tmp_path_factory.mktemp("dino") / "dino_deitsmall16_pretrain.pth"
    torch.save(vit_small().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def trained(dino_file):
    """A tiny task trained 6 steps on one batch of the same two clips (same views and noise every step)."""
    task = SMTCTask(SMTCConfig(dino_path=str(dino_file), **TINY), torch.device("cpu"))
    history = [task.train_step({"frames": _frames(), "position": torch.tensor([5, 6])}, step) for step in range(6)]
    return task, history


def test_param_groups_follow_upstream(trained):
    task, _ = trained
    names = {id(p): n for n, p in task.model.named_parameters()}
    groups = [[names[id(p)] for p in g["params"]] for g in task.optimizer.param_groups]
    assert [g["weight_decay"] for g in task.optimizer.param_groups] == [0.1, 0.0, 0.1, 0.0]
    assert all(n.startswith("encoder.") for n in groups[0] + groups[1])
    assert not any(n.startswith("encoder.") for n in groups[2] + groups[3])
    assert {"encoder.cls_token", "encoder.pos_embed", "encoder.blocks.0.attn.qkv.weight"} <= set(groups[0])
    assert {"encoder.blocks.0.norm1.weight", "encoder.blocks.0.attn.qkv.bias"} <= set(groups[1])
    assert {"slot_attention.slots_mu", "slot_attention.slots_sigma", "transport_proj.weight",
            "mlp_slot.0.weight", "slot_attention.project_q.weight"} <= set(groups[2])
    assert {"slot_attention.norm_input.weight", "mlp_slot.0.bias"} <= set(groups[3])
    trainable = sum(p.requires_grad for p in task.model.parameters())
    assert sum(len(g) for g in groups) == trainable
    assert param_groups(task.model, 0.5)[0]["weight_decay"] == 0.5


def test_training_steps_decrease_the_loss(trained):
    task, history = trained
    for m in history:
        assert set(m) == {"loss", "loss_cons", "loss_diff", "loss_inst", "valid_frac", "lr"}
        assert all(math.isfinite(v) for v in m.values())
        assert m["loss"] == pytest.approx(m["loss_cons"] + m["loss_diff"] + m["loss_inst"], abs=1e-5)
    losses = [m["loss"] for m in history]
    assert losses[-1] < losses[0] - 0.02, losses
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    # DDP runs without find_unused_parameters: every trainable parameter got a gradient
    assert all(p.grad is not None for g in task.optimizer.param_groups for p in g["params"])


def test_teacher_encoder_stays_dino_and_student_moves(trained, dino_file):
    task, _ = trained
    dino = torch.load(dino_file, weights_only=True)
    for name, p in task.teacher.encoder.state_dict().items():
        assert torch.equal(p, dino[name]), name
    assert not task.teacher.training and not any(p.requires_grad for p in task.teacher.parameters())
    # encoder lr x0 for steps 0-2, x0.01 for steps 3-5: the student's encoder has moved a little
    assert not torch.equal(task.model.encoder.blocks[0].attn.qkv.weight, dino["blocks.0.attn.qkv.weight"])
    assert not torch.equal(task.teacher.mlp_slot[0].weight, task.model.mlp_slot[0].weight)


def test_teacher_gets_no_gradient_and_moves_only_by_ema(trained):
    """After a training step no teacher parameter holds a gradient, and each one is the EMA of its old value
    and the student's new one with the configured momentum; the teacher's encoder is excluded and stays."""
    task = copy.deepcopy(trained[0])
    task.cfg = dataclasses.replace(task.cfg, ema_momentum=0.75)  # not the default 0.999: the flag is used
    old = {name: p.detach().clone() for name, p in task.teacher.named_parameters()}
    student_before = {name: p.detach().clone() for name, p in task.model.named_parameters()}
    task.train_step({"frames": _frames(seed=4)}, 6)  # step >= grad_iter: the student's encoder moves too
    assert all(p.grad is None for p in task.teacher.parameters())
    assert all(p.grad is not None for g in task.optimizer.param_groups for p in g["params"])  # a backward ran
    student = {name: p.detach() for name, p in task.model.named_parameters()}
    moved = 0
    for name, p in task.teacher.named_parameters():
        if name.startswith("encoder."):
            assert torch.equal(p, old[name]), name
            continue
        # teacher <- 0.75 teacher + 0.25 student, with the student's value after this step's update
        torch.testing.assert_close(p.detach(), 0.75 * old[name] + 0.25 * student[name], rtol=1e-6, atol=1e-7,
                                   msg=name)
        moved += not torch.equal(student[name], student_before[name])
    assert moved >= 10  # the step did change the student: EMA with its old value would differ
    qkv = "encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(student[qkv], student_before[qkv])


def test_state_dict_round_trip_gives_identical_next_step(trained):
    task, _ = trained
    buffer = io.BytesIO()
    torch.save(task.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = SMTCTask(SMTCConfig(**TINY), torch.device("cpu"))
    resumed.load_state_dict(state)
    batch = {"frames": _frames(seed=3)}
    a, b = task.train_step(batch, 6), resumed.train_step(batch, 6)
    assert a == b
    for (name, p), q in zip(task.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name
    for p, q in zip(task.teacher.parameters(), resumed.teacher.parameters()):
        assert torch.equal(p, q)


def test_bad_batch_is_refused(trained):
    task, _ = trained
    with pytest.raises(ValueError, match=r"uint8 \[B, 2, 3, 64, 64\]"):
        task.train_step({"frames": _frames().float()}, 0)
    with pytest.raises(ValueError, match="--resolution"):
        task.train_step({"frames": torch.zeros(2, 2, 3, 32, 32, dtype=torch.uint8)}, 0)
    with pytest.raises(ValueError, match="--num_frames"):
        task.train_step({"frames": _frames(t=3)}, 0)


def _ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    task = SMTCTask(SMTCConfig(**dict(TINY, grad_iter=0)), torch.device("cpu"))
    for step in range(2):  # DDP without find_unused_parameters fails on the 2nd step if a gradient was missing
        task.train_step({"frames": _frames(seed=rank)}, step)
    torch.save(task.model.state_dict(), f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)  # gradients were averaged: replicas stay identical


def test_channels_last_frames_give_the_same_step():
    """The data pipeline hands frames over as a B x T x 3 x S x S view of channels-last memory."""
    frames = _frames()
    view = frames.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    assert not view.is_contiguous() and torch.equal(view, frames)
    task = SMTCTask(SMTCConfig(**TINY), torch.device("cpu"))
    twin = copy.deepcopy(task)
    ours, theirs = task.train_step({"frames": frames}, 0), twin.train_step({"frames": view}, 0)
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert theirs[k] == pytest.approx(ours[k], rel=1e-4, abs=1e-6), k


def test_each_clips_draws_are_keyed_by_its_position_alone():
    """A clip's views, stochastic depth and slot noise depend on the seed and its position in the global stream,
    not on its batch mates, their order, the step or the rank (`--jitter_order clip`)."""
    task = SMTCTask(SMTCConfig(**dict(TINY, jitter_order="clip")), torch.device("cpu"))
    pair, alone, swapped = (task.clip_draws(p, 2) for p in ([3, 7], [7], [7, 3]))
    for a, b, row in ((pair, alone, 1), (pair, swapped, 1)):
        for params_a, params_b in zip(a[:2], b[:2]):
            for x, y in zip(params_a, params_b):
                assert torch.equal(x[row], y[1 - row if b is swapped else 0])
        frames_a, frames_b = slice(2 * row, 2 * row + 2), slice(0, 2) if b is alone else slice(0, 2)
        assert torch.equal(a[2].drop[frames_a], b[2].drop[frames_b])
        assert torch.equal(a[2].noise[frames_a], b[2].noise[frames_b])
        assert torch.equal(a[3].noise[frames_a], b[3].noise[frames_b])
    other = SMTCTask(SMTCConfig(**dict(TINY, seed=1, jitter_order="clip")), torch.device("cpu")).clip_draws([7], 2)
    assert not torch.equal(other[2].noise, alone[2].noise) and not torch.equal(other[0].factors, alone[0].factors)
    assert not torch.equal(pair[2].noise[:2], pair[2].noise[2:]) and not torch.equal(pair[2].noise, pair[3].noise)


def test_the_default_jitter_order_is_one_per_view_of_the_batch_keyed_by_its_first_clip():
    """Upstream's kornia draws the order of the jitter operations once per call, i.e. per view of the batch:
    the default keeps that, keyed by the batch's first clip; every other draw stays the clip's own."""
    task = SMTCTask(SMTCConfig(**TINY), torch.device("cpu"))
    per_clip = SMTCTask(SMTCConfig(**dict(TINY, jitter_order="clip")), torch.device("cpu"))
    orders = {}
    for first in range(12):
        draws = task.clip_draws([first, 40, 41], 2)
        for view in draws[:2]:
            assert torch.equal(view.order, view.order[:1].expand(3, 4))
        assert torch.equal(draws[0].order, task.clip_draws([first, 50], 2)[0].order[:1].expand(3, 4))
        orders[first] = (tuple(draws[0].order[0].tolist()), tuple(draws[1].order[0].tolist()))
        ref = per_clip.clip_draws([first, 40, 41], 2)
        for view, ref_view in zip(draws[:2], ref[:2]):
            assert all(torch.equal(x, y) for x, y in zip(view[:3] + view[4:], ref_view[:3] + ref_view[4:]))
        assert torch.equal(draws[2].noise, ref[2].noise) and torch.equal(draws[2].drop, ref[2].drop)
    assert len(set(orders.values())) > 1 and any(s != t for s, t in orders.values())


def test_only_the_instance_loss_normaliser_depends_on_the_per_worker_batch():
    """Two clips in one batch against each clip alone, same weights: every clip's forward is the same; L_cons,
    L_diff and the valid fraction are per-clip means; L_inst is the per-batch sum of terms over the per-batch
    count of valid instances, so the pair's L_inst is the halves' weighted by their valid counts (upstream's
    per-GPU normaliser: why 1 x 4 and 2 x 2 workers do not train alike)."""
    task = SMTCTask(SMTCConfig(**dict(TINY, drop_path=0.5, jitter_order="clip")), torch.device("cpu"))
    frames, position = _frames(), torch.tensor([3, 7])
    with torch.no_grad():
        pair = task.compute_loss({"frames": frames, "position": position}, 0)
        halves = [task.compute_loss({"frames": frames[i:i + 1], "position": position[i:i + 1]}, 0) for i in (0, 1)]
        draws = task.clip_draws([3, 7], 2)
        view = augment.augment_clips(frames, draws[0])
        out = task.model(view, draws[2])
        alone = task.model(view[1:], task.clip_draws([7], 2)[2])
    for x, y in zip(out, alone):
        torch.testing.assert_close(x[1:], y, rtol=1e-4, atol=1e-5)
    for k in ("loss_cons", "loss_diff", "valid_frac"):
        assert pair[k].item() == pytest.approx((halves[0][k] + halves[1][k]).item() / 2, rel=1e-5), k
    # L_inst at valid instances (a random model has none): the pair's is its halves' weighted by their counts
    with torch.no_grad():
        out_t = task.teacher(augment.augment_clips(frames, draws[1]), draws[3])
    share = torch.tensor([0.3, 0.7]).view(2, 1, 1, 1)
    valid_s = torch.rand(2, 2, 4, 2, generator=torch.Generator().manual_seed(0)) < share
    valid_t = torch.rand(2, 2, 4, 2, generator=torch.Generator().manual_seed(1)) < 0.5
    whole = instance_loss(out.projected, out_t.projected, valid_s, valid_t).item()
    parts = [instance_loss(out.projected[i:i + 1], out_t.projected[i:i + 1], valid_s[i:i + 1], valid_t[i:i + 1]).item()
             for i in (0, 1)]
    counts = valid_s.flatten(1).sum(1).tolist()
    assert counts[0] != counts[1] and min(counts) > 0, counts
    assert whole == pytest.approx(sum(p * c for p, c in zip(parts, counts)) / sum(counts), rel=1e-5)
    assert whole != pytest.approx(sum(parts) / 2, rel=1e-3)
