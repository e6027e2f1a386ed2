"""STMAE one-shot training task: reference sampling, lr schedule, first-frame-only labels, training, state."""
from __future__ import annotations

import io

import pytest
import torch

from raytrain.augment import normalize_uint8
from raytrain.config import STMAEConfig
from raytrain.train.stmae_task import OneShotReconstruction, STMAETask, lr_at, sample_references

torch.set_num_threads(2)


def tiny_cfg(**kw) -> STMAEConfig:
    return STMAEConfig(**{**dict(crop=64, num_frames=4, batch_size=2, num_ref_frames=2, max_objects=2, steps=10,
                                 lr=1e-4, seed=3), **kw})


def make_batch(seed: int = 0, b: int = 2, t: int = 4, s: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (b, t, 3, s, s), dtype=torch.uint8, generator=g)
    masks = torch.zeros(b, t, s, s, dtype=torch.uint8)
    u = s // 16
    for ti in range(t):  # objects drift right by s/32 px per frame
        d = ti * u // 2
        masks[0, ti, 2 * u:7 * u, 2 * u + d:7 * u + d] = 1
        masks[0, ti, 9 * u:15 * u, 7 * u + d:12 * u + d] = 2
        masks[1:, ti, 4 * u:12 * u, 4 * u + d:10 * u + d] = 1
    colours = torch.tensor([[0, 0, 0], [200, 40, 40], [40, 40, 200]], dtype=torch.uint8)
    frames = torch.where(masks.unsqueeze(2) > 0, colours[masks.long()].permute(0, 1, 4, 2, 3), frames)
    return {"frames": frames, "masks": masks, "num_objects": torch.tensor([2] + [1] * (b - 1)),
            "position": torch.arange(b) + seed * b}


@pytest.fixture(scope="module")
def task() -> STMAETask:
    return STMAETask(tiny_cfg(crop=32, num_frames=3, num_ref_frames=1), "cpu")


def test_reference_sampling():
    positions = list(range(80, 96))
    refs = sample_references(positions, 8, 3, seed=0)
    assert refs.shape == (16, 3) and (refs[:, -1] == 7).all()
    assert ((refs[:, :2] >= 1) & (refs[:, :2] <= 6)).all() and (refs[:, 0] != refs[:, 1]).all()
    assert len({tuple(r) for r in refs.tolist()}) > 1  # drawn per clip
    assert torch.equal(refs, sample_references(positions, 8, 3, seed=0))
    # a clip's references depend on its position in the global stream, not on the batch it is trained in
    assert torch.equal(refs[8:], sample_references(positions[8:], 8, 3, seed=0))
    assert torch.equal(torch.cat([sample_references(positions[i::2], 8, 3, seed=0) for i in (0, 1)]),
                       torch.cat([refs[0::2], refs[1::2]]))
    assert not torch.equal(refs, sample_references(positions, 8, 3, seed=1))  # the seed matters
    assert torch.equal(sample_references([0, 1], 4, 3, seed=0), torch.tensor([[1, 2, 3], [1, 2, 3]]))


def test_lr_schedule():
    cfg = tiny_cfg(steps=370, lr=2e-5, lr_decay_at=85 / 370)
    assert lr_at(cfg, 0) == lr_at(cfg, 84) == 2e-5
    assert lr_at(cfg, 85) == lr_at(cfg, 369) == pytest.approx(2e-6)


def _loss_and_grads(task: STMAETask, batch: dict, step: int) -> tuple[dict, list[torch.Tensor]]:
    task.optimizer.zero_grad(set_to_none=True)
    losses = task.compute_loss(batch, step)
    losses["loss"].backward()
    grads = [p.grad.clone() for p in task.model.parameters()]
    task.optimizer.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in losses.items()}, grads


def test_only_first_frame_masks_reach_the_loss(task: STMAETask):
    batch = make_batch(t=3, s=32)
    other = {k: v.clone() for k, v in batch.items()}
    other["masks"][:, 1:] = torch.randint(0, 3, other["masks"][:, 1:].shape, dtype=torch.uint8)
    loss_a, grads_a = _loss_and_grads(task, batch, step=1)
    loss_b, grads_b = _loss_and_grads(task, other, step=1)
    assert all(torch.equal(loss_a[k], loss_b[k]) for k in loss_a)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert all(g.abs().sum() > 0 for g in grads_a[:3])  # the key encoder stem gets a gradient
    changed = {k: v.clone() for k, v in batch.items()}
    changed["masks"][0, 0, :16] = 0  # the first-frame mask does reach it
    with torch.no_grad():
        assert task.compute_loss(changed, 1)["loss"] != loss_a["loss"]


class _EncodeAllWithGrad(OneShotReconstruction):
    def encode(self, frames: torch.Tensor, refs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.net.encode_key(frames)


def test_partial_autograd_encoding_matches_encoding_everything(task: STMAETask):
    batch = make_batch(seed=2, t=3, s=32)
    loss, grads = _loss_and_grads(task, batch, step=4)
    recon, task.recon = task.recon, _EncodeAllWithGrad(task.model)  # upstream: graph of all frames
    try:
        loss_all, grads_all = _loss_and_grads(task, batch, step=4)
    finally:
        task.recon = recon
    torch.testing.assert_close(loss, loss_all)
    for g, g_all in zip(grads, grads_all):
        torch.testing.assert_close(g, g_all, rtol=1e-4, atol=1e-6)


def test_bad_batch_refused(task: STMAETask):
    batch = make_batch(t=3, s=32)
    batch["num_objects"] = torch.tensor([4, 1])
    with pytest.raises(ValueError, match="max_objects"):
        task.compute_loss(batch, 0)


def test_imagenet_weights_from_config(tmp_path):
    import torchvision
    r18 = torchvision.models.resnet18().state_dict()
    torch.save(r18, tmp_path / "resnet18.pth")
    task = STMAETask(tiny_cfg(resnet18_path=str(tmp_path / "resnet18.pth")), "cpu")
    assert torch.equal(task.model.value_encoder.layer1[0].conv1.weight, r18["layer1.0.conv1.weight"])
    with pytest.raises(ValueError, match="resnet18.pth: .*right ResNet depth"):
        STMAETask(tiny_cfg(resnet50_path=str(tmp_path / "resnet18.pth")), "cpu")


def test_training_reduces_loss_and_state_round_trips():
    task = STMAETask(tiny_cfg(), "cpu")
    batch = make_batch(1)
    metrics = [task.train_step(batch, 0) for _ in range(2)]  # same clip positions: same references
    assert set(metrics[0]) == {"loss", "loss_ce", "loss_dice", "lr"} and metrics[0]["lr"] == 1e-4
    with torch.no_grad():
        after = task.compute_loss(batch, 0)["loss"].item()
    before = metrics[0]["loss"]  # computed before the first update
    assert after < 0.9 * before, (before, after, metrics)

    buf = io.BytesIO()
    torch.save(task.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = STMAETask(tiny_cfg(seed=7), "cpu")
    fresh.load_state_dict(state)
    for a, b in zip(task.model.state_dict().values(), fresh.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(task.optimizer.state_dict()["state"].values(), fresh.optimizer.state_dict()["state"].values()):
        assert a["step"] == b["step"] == 2 and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def _bn_stats(part: torch.nn.Module) -> list[torch.Tensor]:
    return [t.clone() for m in part.modules() if isinstance(m, torch.nn.BatchNorm2d)
            for t in (m.running_mean, m.running_var)]


def test_random_encoders_get_batchnorm_statistics_from_the_first_batch(tmp_path):
    """Frozen BN of a random encoder would be the identity (mean 0, var 1): keys ~0.02 in size, a uniform
    memory softmax. The first batch sets the statistics, once; a resumed run keeps the checkpoint's."""
    batch = make_batch(1)
    task = STMAETask(tiny_cfg(), "cpu")
    frames = normalize_uint8(batch["frames"][0])
    with torch.no_grad():
        before = task.model.encode_key(frames)[0].std().item()
    assert all(torch.equal(t, torch.zeros_like(t) if i % 2 == 0 else torch.ones_like(t))
               for i, t in enumerate(_bn_stats(task.model)))
    task.start(batch)
    task.train_step(batch, 0)
    first = _bn_stats(task.model)
    assert all(not torch.equal(t, torch.zeros_like(t)) for t in first[::2])
    with torch.no_grad():
        after = task.model.encode_key(frames)[0].std().item()
    assert after > 4 * before, (before, after)
    assert not task.model.key_encoder.bn1.training
    task.train_step(make_batch(2), 1)  # the statistics stay frozen afterwards
    assert all(torch.equal(a, b) for a, b in zip(first, _bn_stats(task.model)))

    resumed = STMAETask(tiny_cfg(), "cpu")
    resumed.load_state_dict(task.state_dict())  # the loop does not call start() on a resumed run
    resumed.train_step(make_batch(3), 2)
    assert all(torch.equal(a, b) for a, b in zip(first, _bn_stats(resumed.model)))

    none = STMAETask(tiny_cfg(bn_calibration="none"), "cpu")
    untouched = _bn_stats(none.model)
    none.start(batch)
    assert all(torch.equal(a, b) for a, b in zip(untouched, _bn_stats(none.model)))

    import torchvision
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    half = STMAETask(tiny_cfg(resnet18_path=str(tmp_path / "resnet18.pth")), "cpu")
    given = _bn_stats(half.model.value_encoder)
    half.start(batch)  # pretrained mask encoder keeps its statistics, the random key encoder is set
    assert all(torch.equal(a, b) for a, b in zip(given, _bn_stats(half.model.value_encoder)))
    assert not torch.equal(_bn_stats(half.model.key_encoder)[0], torch.zeros(64))


def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        task = STMAETask(tiny_cfg(crop=32, num_frames=3, num_ref_frames=1, batch_size=1), "cpu")
        assert isinstance(task.recon, torch.nn.parallel.DistributedDataParallel)
        batch = make_batch(seed=rank, b=1, t=3, s=32)
        task.start(batch)  # BatchNorm statistics of each rank's own batch, averaged over the ranks
        before = torch.cat([p.detach().flatten() for p in task.model.parameters()]).clone()
        for step in range(2):  # a second step fails if DDP missed a parameter's gradient
            task.train_step(batch, step)
        after = torch.cat([p.detach().flatten() for p in task.model.parameters()])
        stats = torch.cat([b.flatten() for n, b in task.model.named_buffers() if "running" in n])
        torch.save({"changed": (after - before).abs().sum(), "params": after, "stats": stats}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_keep_replicas_in_sync(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["changed"] > 0 and torch.equal(r0["params"], r1["params"])
    assert torch.equal(r0["stats"], r1["stats"]) and r0["stats"].abs().sum() > 0


def test_channels_last_frames_give_the_same_loss(task):
    """The data pipeline hands frames over as a B x T x 3 x S x S view of channels-last memory."""
    batch = make_batch(s=32, t=3)
    view = batch["frames"].permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    assert not view.is_contiguous() and torch.equal(view, batch["frames"])
    with torch.no_grad():
        ours, theirs = task.compute_loss(batch, 0), task.compute_loss({**batch, "frames": view}, 0)
    for k in ours:
        torch.testing.assert_close(theirs[k], ours[k], rtol=1e-4, atol=1e-6)
