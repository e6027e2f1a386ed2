"""STMAE one-shot training step (upstream `STMAETrainer.train_one_step`): only first-frame masks reach the loss.

For a clip of T frames with the first-frame mask only:
1. encode keys (f16, f8, f4) of all frames;
2. forward reconstruction without gradient: frame ti = 1..T-1 is segmented from all earlier frames (memory
   masks: frame 0's one-hot downsampled bilinearly to 1/16, then the predicted foreground probabilities);
3. backward reconstruction with gradient: frame 0 is segmented from reference frames only (when
   T-1 > num_ref_frames: per sample num_ref_frames-1 random distinct frames from 1..T-2 plus frame T-1,
   else all of 1..T-1); frame 0 is never a reference;
4. loss = cross-entropy + soft Dice of the reconstructed frame 0 against its ground truth.

AdamW on all parameters, lr x0.1 after `lr_decay_at * steps` (upstream: epoch 85 of 370), bf16 autocast on
CUDA, BatchNorm statistics frozen. Encoders without a weights file (random initialisation) first get the
statistics of the run's first batch (`start`, `bn_calibration`); upstream always starts from ImageNet weights.

Deviations from upstream:
- Frames whose keys cannot receive a gradient (those that are neither frame 0 nor a reference of their
  sample) are encoded without autograd; upstream keeps the graph of all T frames. Same numbers, less memory.
- bf16 autocast instead of fp16 + GradScaler; the lr schedule is per step (`lr_decay_at` of the steps)
  instead of per epoch.
- Each clip's reference frames are drawn from a generator seeded by (seed, the clip's position in the global
  clip stream), so a resumed run, on any number of workers, draws the same references for the same clips.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from raytrain.augment import normalize_uint8
from raytrain.config import STMAEConfig, scaled_lr
from raytrain.losses.stmae import stmae_loss
from raytrain.models.resnet_weights import load_resnet
from raytrain.models.stmae import STMAE

def lr_at(cfg: STMAEConfig, step: int) -> float:
    """The peak lr (`scaled_lr`), x0.1 from step lr_decay_at * steps on."""
    return scaled_lr(cfg) * (0.1 if step >= cfg.lr_decay_at * cfg.steps else 1.0)


def clip_generator(seed: int, position: int) -> torch.Generator:
    """A CPU generator determined by (seed, a clip's position in the global clip stream)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, position]).generate_state(1)[0]))


def sample_references(positions: list[int], num_frames: int, num_ref_frames: int, seed: int) -> torch.Tensor:
    """Reference frame indices (B, R) for the backward reconstruction of frame 0 of the clips at `positions`."""
    last = num_frames - 1
    if last <= num_ref_frames:
        return torch.arange(1, num_frames).expand(len(positions), -1).clone()
    rows = [torch.cat([torch.randperm(last - 1, generator=clip_generator(seed, p))[:num_ref_frames - 1] + 1,
                       torch.tensor([last])]) for p in positions]
    return torch.stack(rows)


def _take(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Per-sample gather of whole slices along `dim` of x (B, ...) with index (B, R)."""
    shape = [1] * x.ndim
    shape[0], shape[dim] = index.shape
    index = index.view(shape).expand(*[s if i not in (0, dim) else -1 for i, s in enumerate(x.shape)])
    return x.gather(dim, index)


class OneShotReconstruction(nn.Module):
    """One training forward pass: pseudo-label frames 1..T-1 (no grad), reconstruct frame 0 (with grad).

    One module call per step, so DDP sees a single forward; every parameter gets a gradient through the
    frame-0 reconstruction, so DDP needs no unused-parameter search.
    """

    def __init__(self, net: STMAE):
        super().__init__()
        self.net = net

    def encode(self, frames: torch.Tensor, refs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Key features (B, T, C, h, w) x3; autograd only for frame 0 and each sample's references."""
        b, t = frames.shape[:2]
        need = torch.zeros(b, t, dtype=torch.bool, device=frames.device)
        need[:, 0] = True
        need.scatter_(1, refs, True)
        need = need.flatten()
        grad_ids, other_ids = need.nonzero()[:, 0], (~need).nonzero()[:, 0]
        flat = frames.flatten(0, 1)
        feats = self.net.encode_key(flat[grad_ids])
        if len(other_ids):
            with torch.no_grad():
                rest = self.net.encode_key(flat[other_ids])
            order = torch.argsort(torch.cat([grad_ids, other_ids]))
            feats = tuple(torch.cat([a, c])[order] for a, c in zip(feats, rest))
        return tuple(f.view(b, t, *f.shape[1:]) for f in feats)

    def forward(self, frames: torch.Tensor, first_gt: torch.Tensor, selector: torch.Tensor,
                refs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, T, 3, H, W) normalised, first_gt (B, M, H, W) one-hot, selector (B, M, 1, 1),
        refs (B, R) -> frame-0 logits (B, M+1, H, W) and foreground probabilities (B, M, H, W)."""
        t = frames.shape[1]
        f16, f8, f4 = self.encode(frames, refs)
        keys = f16.transpose(1, 2)  # B, C, T, h, w
        masks = [F.interpolate(first_gt, size=f16.shape[-2:], mode="bilinear", align_corners=False)]
        with torch.no_grad():
            for ti in range(1, t):
                _, prob, _ = self.net(frames[:, ti], f16[:, ti], f8[:, ti], f4[:, ti], keys[:, :, :ti],
                                      torch.stack(masks, 2), selector)
                masks.append(F.interpolate(prob, size=f16.shape[-2:], mode="bilinear", align_corners=False))
        memory_masks = torch.stack(masks, 2)  # B, M, T, h, w
        logits, prob, _ = self.net(frames[:, 0], f16[:, 0], f8[:, 0], f4[:, 0], _take(keys, refs, 2),
                                   _take(memory_masks, refs, 2), selector)
        return logits, prob


class STMAETask:
    """The STMAE TrainTask: model, AdamW, lr schedule, one optimizer step per batch.

    Batch: {"frames": uint8 (B, T, 3, S, S), "masks": uint8 (B, T, S, S), "num_objects": int64 (B,)};
    only masks[:, 0] is read.
    """

    def __init__(self, cfg: STMAEConfig, device: torch.device | str):
        if cfg.num_frames < 2 or cfg.num_ref_frames < 1 or cfg.max_objects < 1:
            raise ValueError(f"--num_frames {cfg.num_frames} / --num_ref_frames {cfg.num_ref_frames} / "
                             f"--max_objects {cfg.max_objects}: need at least 2 frames, 1 reference, 1 object")
        self.cfg = cfg
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model = STMAE(similarity=cfg.similarity)
        if cfg.resnet50_path:
            load_resnet(self.model.key_encoder, cfg.resnet50_path, rename={"layer1": "res2"})
        if cfg.resnet18_path:
            load_resnet(self.model.value_encoder, cfg.resnet18_path)
        self.model.to(self.device).train()
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        recon = OneShotReconstruction(self.model)
        if self.distributed:
            cuda_index = self.device.index if self.device.type == "cuda" else None
            with warnings.catch_warnings():  # torch 2.14 deprecates the flag; older ones lack its successor
                warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
                recon = DistributedDataParallel(recon, device_ids=None if cuda_index is None else [cuda_index],
                                                broadcast_buffers=False)  # frozen BN: nothing to sync per step
        self.recon = recon
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=scaled_lr(cfg), weight_decay=cfg.weight_decay)
        self.amp = self.device.type == "cuda"

    def compute_loss(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """Forward pass and loss terms ('loss', 'loss_ce', 'loss_dice') of one batch, with graph."""
        frames = normalize_uint8(batch["frames"])
        first = batch["masks"][:, 0].long()
        num_objects = batch["num_objects"].tolist()
        m = self.cfg.max_objects
        top_ids = first.flatten(1).amax(1).tolist()
        if max(num_objects) > m or any(i > n for i, n in zip(top_ids, num_objects)):
            raise ValueError(f"batch: num_objects {num_objects} (--max_objects {m}) and first-frame ids up to "
                             f"{top_ids}: ids must be 0..num_objects with num_objects <= max_objects")
        b, t = frames.shape[:2]
        slots = torch.arange(1, m + 1, device=self.device)
        first_gt = (first.unsqueeze(1) == slots.view(1, m, 1, 1)).float()
        selector = (slots.view(1, m) <= batch["num_objects"].view(b, 1)).float().view(b, m, 1, 1)
        refs = sample_references(batch["position"].tolist(), t, self.cfg.num_ref_frames, self.cfg.seed)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits, prob = self.recon(frames, first_gt, selector, refs.to(self.device))
        return stmae_loss(logits, prob, first, num_objects)

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        lr = lr_at(self.cfg, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        losses = self.compute_loss(batch, step)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return {**{k: v.item() for k, v in losses.items()}, "lr": lr}

    def start(self, batch: dict[str, torch.Tensor]) -> None:
        """Before the first step of a run: with `bn_calibration` "first_batch", give the encoders that have no
        weights file the BatchNorm statistics of `batch` (`calibrate_bn`)."""
        if self.cfg.bn_calibration == "first_batch":
            self.calibrate_bn(batch, [part for part, path in ((self.model.key_encoder, self.cfg.resnet50_path),
                                                              (self.model.value_encoder, self.cfg.resnet18_path))
                                      if not path])

    @torch.no_grad()
    def calibrate_bn(self, batch: dict[str, torch.Tensor], parts: list[nn.Module]) -> None:
        """Set the running statistics of the BatchNorm layers in `parts` from one training forward pass over
        `batch` (with several ranks: over the whole global batch, every rank's slice gathered in rank order, so
        that the statistics do not depend on how the batch is split), then freeze them again.

        Frozen statistics of a random encoder are mean 0, variance 1, so its BatchNorm layers do not normalise:
        the keys come out about 0.02 in size and the memory softmax is uniform (every query reads the mean
        mask). Upstream never meets this: its encoders start from ImageNet weights and statistics."""
        layers = [m for part in parts for m in part.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not layers:
            return
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over this pass
            m.train()
        self.compute_loss(self._gathered(batch) if self.distributed else batch, 0)
        for m in layers:
            m.momentum = 0.1
        self.model.train()

    @staticmethod
    def _gathered(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The global batch: every rank's `batch` (of the same shapes), concatenated in rank order."""
        out = {}
        for key in ("frames", "masks", "num_objects", "position"):
            parts = [torch.empty_like(batch[key]) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, batch[key].contiguous())
            out[key] = torch.cat(parts)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
