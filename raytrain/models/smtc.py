"""SMTC (ICCV 2023): DINO ViT-S/16 keys fused with frame correlation, two-stage slot attention, EMA teacher.

Module attribute names follow upstream (`encoder`, `transport_proj`, `mlp_slot`, `slot_attention.*`), so the
released checkpoint loads key for key (`raytrain.models.weights.load_smtc_weights`).

`transport_proj` maps the correlation with the previous frame's keys, resized to the *training* grid
(resolution / 16, e.g. 16 x 16 = 256 positions at 256^2), to 384 channels. Its in-channels are therefore fixed
by the training resolution; at other input sizes the previous frame's keys are resized bilinearly to that grid
(upstream hard-codes 256 in the same way).

The training forward never uses the last block's output tokens, only its keys, so the last block's attention
projection and MLP and the final LayerNorm never receive gradients. They are frozen (requires_grad False):
upstream leaves them trainable but they stay unchanged (no gradient), so this changes nothing except that DDP
needs no `find_unused_parameters`. They are still used by `encode_frames` (label propagation).

Deviations from upstream:
- Instance-stage mask (`instance_mask`): the default, "logit", is upstream's rule, 1[semantic_logits > 0.3]
  on the raw scaled dot products (upstream computes the softmax over slots and then overwrites it; the
  released checkpoint was trained this way). "softmax" (`--instance_mask softmax`) is an option that
  thresholds the probability instead, 1[softmax_over_slots(semantic_logits) > 0.3].
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raytrain.config import INSTANCE_MASKS
from raytrain.models.vit import DIM, PATCH, vit_small

MASK_THRESHOLD = 0.3


def check_instance_mask(instance_mask: str) -> str:
    """`instance_mask` if it is one of INSTANCE_MASKS, else ValueError."""
    if instance_mask not in INSTANCE_MASKS:
        raise ValueError(f"--instance_mask must be one of {', '.join(INSTANCE_MASKS)}, got {instance_mask!r}")
    return instance_mask


class SlotOutput(NamedTuple):
    semantic: Tensor  # b x S x D
    semantic_logits: Tensor  # b x S x N, last iteration, before its update
    instances: Tensor  # b x S x P x D
    instance_logits: Tensor  # b x S x P x N, last iteration, before its update


class SMTCOutput(NamedTuple):
    """Training forward outputs (B clips of T frames, N = h*w positions)."""

    semantic_logits: Tensor  # B x T x S x N
    keys: Tensor  # B x T x N x D, last-block keys without the correlation term
    semantic: Tensor  # B x T x S x D
    instances: Tensor  # B x T x S x P x D
    projected: Tensor  # B x T x S x P x D, mlp_slot(instances), L2-normalised


class Discovery(NamedTuple):
    """Inference outputs for object discovery."""

    p_sem: Tensor  # B x T x S x N, softmax over slots
    similarity: Tensor  # B x T x S x P, cos(semantic slot, instance slot)
    masks: Tensor  # B x T x S x P x N, p_sem[s] * softmax over P of the instance logits
    h: int
    w: int


class Draws(NamedTuple):
    """The random draws of one training forward of B clips of T frames, made by the caller (per clip)."""

    drop: Tensor | None  # (B*T) x encoder.drop_draws stochastic-depth uniforms (`ViTEncoder.keys`)
    noise: Tensor  # (B*T) x S x P x D standard normal: the instance slots' initialisation


def _normal(mean: Tensor, std: Tensor, noise: Tensor) -> Tensor:
    """mean + std * noise with the gradient of `torch.normal(mean, std)`: zero for both (its samples are not
    reparameterised), while both stay in the graph (DDP expects every parameter to get a gradient)."""
    return (mean + std * noise).detach() + 0 * (mean + std)


class SlotAttention(nn.Module):
    """Two-stage slot attention shared by semantic and instance slots (no GRU; residual + MLP update).

    instance_mask: which semantic map the instance stage is masked with, thresholded at MASK_THRESHOLD:
    "logit" (upstream: the raw semantic logits) or "softmax" (their softmax over slots).
    """

    def __init__(self, num_slots: int, num_instances: int, dim: int = DIM, iters: int = 3,
                 eps: float = 1e-8, instance_mask: str = "logit") -> None:
        super().__init__()
        self.num_slots, self.num_instances, self.iters, self.eps = num_slots, num_instances, iters, eps
        self.instance_mask = check_instance_mask(instance_mask)
        self.scale = dim ** -0.5
        self.norm_input = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_pre_ff = nn.LayerNorm(dim)
        self.slots_mu = nn.Parameter(torch.randn(1, num_slots, 1, dim))
        self.slots_sigma = nn.Parameter(torch.zeros(1, num_slots, 1, dim))
        nn.init.xavier_uniform_(self.slots_sigma)
        self.project_q = nn.Linear(dim, dim)
        self.project_k = nn.Linear(dim, dim)
        self.project_v = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def _update(self, slots: Tensor, attn: Tensor, v: Tensor) -> Tensor:
        slots = slots + torch.einsum("b...n,bnd->b...d", attn, v)
        return slots + self.mlp(self.norm_pre_ff(slots))

    def semantic_mask(self, semantic_logits: Tensor) -> Tensor:
        """Boolean b x S x N mask of the pixels each semantic slot passes to its instance slots."""
        score = semantic_logits if self.instance_mask == "logit" else semantic_logits.softmax(dim=1)
        return score > MASK_THRESHOLD

    def forward(self, inputs: Tensor, iters: int | None = None, noise: Tensor | None = None) -> SlotOutput:
        """inputs: b x N x D. Semantic slots start at mu; instance slots at N(mu_s, exp(sigma_s)), from `noise`
        (b x S x P x D standard normal) where given, else drawn from the global RNG.

        At iteration iters-2 slots become detach(slots) - detach(init) + init, so gradients flow only through
        the last iteration and straight to the initialisation.
        """
        iters = iters or self.iters
        x = self.norm_input(inputs)
        k, v = self.project_k(x), self.project_v(x)
        b = x.shape[0]

        init = self.slots_mu[:, :, 0].expand(b, -1, -1)
        slots = init
        for t in range(iters):
            logits = torch.einsum("bsd,bnd->bsn", self.project_q(self.norm_slots(slots)), k) * self.scale
            attn = logits.softmax(dim=1) + self.eps
            slots = self._update(slots, attn / attn.sum(dim=-1, keepdim=True), v)
            if t == iters - 2:
                slots = slots.detach() - init.detach() + init
        semantic, semantic_logits = slots, logits

        mask = self.semantic_mask(semantic_logits).to(k.dtype).unsqueeze(2)  # b S 1 N
        shape = (b, -1, self.num_instances, -1)
        mu, std = self.slots_mu.expand(*shape), self.slots_sigma.exp().expand(*shape)
        init = torch.normal(mu, std) if noise is None else _normal(mu, std, noise.to(mu.dtype))
        slots = init
        for t in range(iters):
            logits = torch.einsum("bspd,bnd->bspn", self.project_q(self.norm_slots(slots)), k) * self.scale
            attn = (logits.softmax(dim=2) + self.eps) * mask
            slots = self._update(slots, attn / (attn.sum(dim=-1, keepdim=True) + self.eps), v)
            if t == iters - 2:
                slots = slots.detach() - init.detach() + init
        return SlotOutput(semantic, semantic_logits, slots, logits)


class SMTC(nn.Module):
    """SMTC student/teacher network. Inputs are ImageNet-normalised clips B x T x 3 x H x W.

    `instance_mask` ("logit", upstream's, or "softmax") is passed to `SlotAttention`.
    """

    def __init__(self, num_slots: int = 16, num_instances: int = 4, iters: int = 3, resolution: int = 256,
                 drop_path: float = 0.1, instance_mask: str = "logit") -> None:
        super().__init__()
        self.encoder = vit_small(drop_path)
        self.grid = resolution // PATCH
        self.transport_proj = nn.Conv1d(self.grid * self.grid, DIM, kernel_size=1)
        self.mlp_slot = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.ReLU(inplace=True), nn.Linear(2 * DIM, DIM))
        self.slot_attention = SlotAttention(num_slots, num_instances, DIM, iters, instance_mask=instance_mask)
        for p in self.encoder.last_block_unused_by_keys():
            p.requires_grad_(False)

    def _correlate(self, keys: Tensor) -> Tensor:
        """keys B x T x D x h x w -> slot inputs (B*T) x N x D: keys + transport_proj(corr with frame t-1)."""
        b, t, d, h, w = keys.shape
        flat = keys.flatten(0, 1)
        prev = flat if (h, w) == (self.grid, self.grid) else F.interpolate(flat, (self.grid, self.grid),
                                                                           mode="bilinear")
        prev = prev.reshape(b, t, d, -1).roll(shifts=1, dims=1).flatten(0, 1)  # frame 0 pairs with frame T-1
        flat = flat.flatten(2)  # (B*T) x D x N
        corr = torch.einsum("bdm,bdn->bmn", prev, flat)  # raw dot products, grid^2 x N
        return (flat + self.transport_proj(corr)).transpose(1, 2)

    def _slots(self, frames: Tensor, iters: int | None = None, draws: Draws | None = None
               ) -> tuple[Tensor, SlotOutput, int, int]:
        b, t = frames.shape[:2]
        keys = self.encoder.keys(frames.flatten(0, 1), None if draws is None else draws.drop)
        h, w = keys.shape[-2:]
        keys = keys.reshape(b, t, *keys.shape[1:])
        return keys, self.slot_attention(self._correlate(keys), iters, None if draws is None else draws.noise), h, w

    def forward(self, frames: Tensor, draws: Draws | None = None) -> SMTCOutput:
        """Training forward: semantic logits, raw keys, semantic/instance slots, projected instances. `draws`:
        the forward's random draws (None: from the global RNG)."""
        b, t = frames.shape[:2]
        keys, out, _, _ = self._slots(frames, draws=draws)
        projected = F.normalize(self.mlp_slot(out.instances), dim=-1)

        def split(x: Tensor) -> Tensor:
            return x.reshape(b, t, *x.shape[1:])

        return SMTCOutput(split(out.semantic_logits), keys.flatten(3).transpose(2, 3), split(out.semantic),
                          split(out.instances), split(projected))

    def discover(self, frames: Tensor, iters: int | None = None) -> Discovery:
        """Object-discovery forward (upstream's call without a third argument); `iters` overrides the
        number of slot iterations (upstream's eval uses 5)."""
        b, t = frames.shape[:2]
        _, out, h, w = self._slots(frames, iters)
        semantic = F.normalize(out.semantic, dim=-1)
        instances = F.normalize(out.instances, dim=-1)
        similarity = torch.einsum("bsd,bspd->bsp", semantic, instances)
        p_sem = out.semantic_logits.softmax(dim=1)
        masks = p_sem.unsqueeze(2) * out.instance_logits.softmax(dim=2)

        def split(x: Tensor) -> Tensor:
            return x.reshape(b, t, *x.shape[1:])

        return Discovery(split(p_sem), split(similarity), split(masks), h, w)

    def encode_frames(self, frames: Tensor) -> Tensor:
        """Pre-norm last-block tokens B x T x h x w x D for frames B x T x 3 x H x W (label propagation)."""
        b, t = frames.shape[:2]
        tokens = self.encoder.features(frames.flatten(0, 1)).tokens
        return tokens.reshape(b, t, *tokens.shape[1:]).permute(0, 1, 3, 4, 2)


def make_teacher(student: SMTC) -> SMTC:
    """EMA teacher: a copy of the student in eval mode with requires_grad False."""
    teacher = copy.deepcopy(student).eval()
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: SMTC, student: SMTC, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student for every parameter outside the encoder
    (the teacher's encoder keeps its initial, DINO, weights)."""
    student_params = dict(student.named_parameters())
    for name, p in teacher.named_parameters():
        if not name.startswith("encoder."):
            p.lerp_(student_params[name].detach(), 1.0 - momentum)
