"""SMTC self-supervised training step (upstream `src/train.py`).

Per step, for uint8 clips B x T x 3 x H x W:
1. two independent photometric views on the device (`raytrain.augment`), student and teacher;
2. student forward (train mode, drop-path on) and EMA-teacher forward (eval mode, no gradient), bf16 autocast
   on CUDA;
3. loss = L_cons (`bi_cons`) + L_diff (`entro_cons`) + L_inst (`raytrain.losses.smtc`), in float32;
4. AdamW step with four parameter groups (encoder / rest x decayed / not: biases and 1-D parameters are not
   decayed), weight decay `cfg.weight_decay`, lr cosine from `scaled_lr(cfg)` to a tenth of it over cfg.steps without
   warm-up, encoder lr x0 before `grad_iter` and x0.01 after; optional gradient clipping;
5. EMA of the teacher (momentum `ema_momentum`), encoder excluded.

Every per-clip random draw of a step is made from generators seeded by (cfg.seed, the clip's position in the
global clip stream, `batch["position"]`) (`clip_draws`): its two views, its stochastic-depth keep/drop per frame
and residual branch, and the initial instance slots of its frames, student's and teacher's. The one draw upstream
makes per batch, the order of the colour-jitter operations of each view, is keyed by the batch's first clip
(`--jitter_order batch`, the default) or made per clip too (`--jitter_order clip`). With `clip`, a clip is
trained on the same draws whichever worker, step and batch mates it gets; with either, a resumed run repeats
them. No draw is left to the global RNG. What still depends on the per-worker batch is L_inst's
normaliser (see `raytrain.losses.smtc.instance_loss` and docs/faithfulness.md), as upstream's does per GPU.
DDP needs no `find_unused_parameters`: the only parameters the losses never reach (last ViT block after its
keys, final norm) are frozen in `SMTC`.

Deviations from upstream:
- lr schedule is a function of the step over exactly cfg.steps. Upstream builds an array of
  floor(steps / batches-per-epoch) * batches-per-epoch entries (9984 for 10k steps at 4 x 32 clips) and its
  loop raises IndexError at step 9984; here steps past cfg.steps keep the final lr.
- The teacher is saved in `state_dict` (upstream does not save it), so a resumed run continues the same EMA.
- bf16 autocast on CUDA (upstream runs in float32) and no `set_detect_anomaly`.
- Augmentation: see `raytrain.augment` (blur sigma drawn per clip).
- Random draws keyed per clip (above), not from the global RNG of each GPU; the instance-slot initialisation
  has torch.normal's (zero) gradient (`raytrain.models.smtc._normal`).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from raytrain.augment import ClipParams, augment_clips, sample_clip_params, stack_params
from raytrain.config import SMTCConfig, scaled_lr
from raytrain.losses.smtc import (RELAXED_TAU, STRICT_TAU, instance_loss, semantic_consistency,
                                  slot_diversity, valid_instances)
from raytrain.models.smtc import SMTC, Draws, SMTCOutput, ema_update, make_teacher
from raytrain.models.vit import DIM
from raytrain.models.weights import load_vit_weights


ENCODER_LR_SCALE = 0.01


def learning_rate(step: int, base: float, steps: int) -> float:
    """Cosine from `base` at step 0 to 0.1 * base at `steps` (and after), no warm-up."""
    final = 0.1 * base
    progress = min(step, steps) / max(steps, 1)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * progress))


def encoder_lr_scale(step: int, grad_iter: int) -> float:
    """Encoder lr multiplier: 0 before `grad_iter`, 0.01 from then on."""
    return 0.0 if step < grad_iter else ENCODER_LR_SCALE


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Upstream's groups, in order: encoder decayed, encoder not decayed, rest decayed, rest not decayed."""
    groups: list[list[nn.Parameter]] = [[], [], [], []]
    for name, p in model.named_parameters():
        if p.requires_grad:
            no_decay = name.endswith(".bias") or p.ndim == 1
            groups[(0 if name.startswith("encoder.") else 2) + int(no_decay)].append(p)
    return [{"params": g, "weight_decay": 0.0 if i % 2 else weight_decay} for i, g in enumerate(groups)]


def clip_seeds(seed: int, position: int) -> tuple[int, int]:
    """(CPU generator seed, device generator seed) of the clip at `position` in the global clip stream."""
    cpu, device = np.random.SeedSequence([seed, position]).generate_state(2)
    return int(cpu), int(device)


def batch_seed(seed: int, first: int) -> int:
    """The seed of the draws made once per batch (`--jitter_order batch`): the batch's first clip position."""
    return int(np.random.SeedSequence([seed, first, 1]).generate_state(1)[0])


def positions(batch: dict[str, Tensor], step: int) -> list[int]:
    """The clips' positions in the global stream: `batch["position"]` (the training loop's batches); a batch
    without them (benchmarks) is taken for step `step` of one worker: step * B .. step * B + B - 1."""
    if "position" in batch:
        return batch["position"].tolist()
    b = batch["frames"].shape[0]
    return list(range(step * b, step * b + b))


class SMTCTask:
    """TrainTask for SMTC (see module docstring)."""

    def __init__(self, cfg: SMTCConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, torch.device(device)
        initialised = dist.is_available() and dist.is_initialized()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = SMTC(cfg.num_slots, cfg.num_instance, cfg.num_iterations, cfg.resolution, cfg.drop_path,
                         instance_mask=cfg.instance_mask)
        if cfg.dino_path:
            load_vit_weights(model.encoder, cfg.dino_path)
        self.model = model.to(self.device)
        self.net: nn.Module = self.model
        if initialised and dist.get_world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.teacher = make_teacher(self.model)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=scaled_lr(cfg))
        self.tau = STRICT_TAU if cfg.strict_filter else RELAXED_TAU
        self.amp = self.device.type == "cuda"  # bf16 autocast of the forward passes (tests set it on the CPU too)

    def _check(self, frames: Tensor) -> None:
        t, size = self.cfg.num_frames, self.cfg.resolution
        if frames.dtype != torch.uint8 or frames.ndim != 5 or tuple(frames.shape[1:]) != (t, 3, size, size):
            raise ValueError(f"SMTC batch['frames'] must be uint8 [B, {t}, 3, {size}, {size}] (--num_frames, "
                             f"--resolution), got {frames.dtype} {list(frames.shape)}")

    def losses(self, out_s: SMTCOutput, out_t: SMTCOutput) -> dict[str, Tensor]:
        """The three loss terms, their sum and the fraction of valid student instances."""
        zero = torch.zeros((), device=out_s.semantic_logits.device)
        valid_s = valid_instances(out_s.semantic_logits, out_s.semantic, out_s.instances, self.tau)
        valid_t = valid_instances(out_t.semantic_logits, out_t.semantic, out_t.instances, self.tau)
        terms = {
            "loss_cons": semantic_consistency(out_s.semantic_logits, out_t.semantic_logits, out_t.keys)
            if self.cfg.bi_cons else zero,
            "loss_diff": slot_diversity(out_s.semantic_logits) if self.cfg.entro_cons else zero,
            "loss_inst": instance_loss(out_s.projected, out_t.projected, valid_s, valid_t),
        }
        return {"loss": sum(terms.values()), **terms, "valid_frac": valid_s.mean()}

    def clip_draws(self, clips: list[int], num_frames: int) -> tuple[ClipParams, ClipParams, Draws, Draws]:
        """The draws of the clips at positions `clips`: student and teacher view parameters, student and teacher
        forward draws (the teacher runs in eval mode: no stochastic depth). Each clip's come from generators of
        its own (`clip_seeds`): the views and stochastic depth from a CPU one, the slot noise from one on the
        task's device."""
        shape = (2, num_frames, self.cfg.num_slots, self.cfg.num_instance, DIM)
        views_s, views_t, drops, noises = [], [], [], []
        for position in clips:
            cpu_seed, device_seed = clip_seeds(self.cfg.seed, position)
            generator = torch.Generator().manual_seed(cpu_seed)
            views_s.append(sample_clip_params(1, generator))
            views_t.append(sample_clip_params(1, generator))
            drops.append(torch.rand(num_frames, self.model.encoder.drop_draws, generator=generator))
            on_device = torch.Generator(self.device).manual_seed(device_seed)
            noises.append(torch.randn(shape, generator=on_device, device=self.device))
        noise = torch.stack(noises, 1).flatten(1, 2)  # 2 x (B*T) x S x P x D
        params_s, params_t = stack_params(views_s), stack_params(views_t)
        if self.cfg.jitter_order == "batch":  # upstream: one order per view of the batch, keyed by its first clip
            generator = torch.Generator().manual_seed(batch_seed(self.cfg.seed, clips[0]))
            params_s, params_t = (p._replace(order=torch.randperm(4, generator=generator).expand(len(clips), 4))
                                  for p in (params_s, params_t))
        return params_s, params_t, Draws(torch.cat(drops).to(self.device), noise[0]), Draws(None, noise[1])

    def compute_loss(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Both forward passes on `batch` and `losses`, with the student's graph (the global RNG untouched)."""
        frames = batch["frames"]
        self._check(frames)
        params_s, params_t, draws_s, draws_t = self.clip_draws(positions(batch, step), frames.shape[1])
        view_s, view_t = augment_clips(frames, params_s), augment_clips(frames, params_t)
        self.net.train()
        self.teacher.eval()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out_s = self.net(view_s, draws_s)
            with torch.no_grad():
                out_t = self.teacher(view_t, draws_t)
        return self.losses(out_s, out_t)

    def start(self, batch: dict[str, Tensor]) -> None:
        """Nothing to set up from data."""

    def train_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        lr = learning_rate(step, scaled_lr(self.cfg), self.cfg.steps)
        encoder_scale = encoder_lr_scale(step, self.cfg.grad_iter)
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = lr * (encoder_scale if i < 2 else 1.0)

        metrics = self.compute_loss(batch, step)
        self.optimizer.zero_grad(set_to_none=True)
        metrics["loss"].backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                     self.cfg.grad_clip)
        self.optimizer.step()
        ema_update(self.teacher, self.model, self.cfg.ema_momentum)
        values = torch.stack([v.detach().float() for v in metrics.values()]).tolist()
        return {**dict(zip(metrics, values)), "lr": lr}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
