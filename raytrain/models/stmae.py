"""STMAE: spatio-temporal mask autoencoder for one-shot video object segmentation (FAIML 2024).

An XMem fork (Supgb/STMAE) whose memory values are object masks rather than features:

- key encoder: ResNet-50 up to layer3 (f4 256 ch at 1/4, f8 512 at 1/8, f16 1024 at 1/16); the key is the
  raw f16 map (no key projection);
- affinity: plain dot products between memory and query keys (`similarity="dot"`, upstream), softmax over
  the memory axis; the coarse mask of every object is the affinity applied to its memory masks at 1/16;
- mask encoder (`value_encoder`): ResNet-18 on [RGB, coarse mask of the object, sum of the other objects'
  coarse masks] up to layer3, fused with f16 (GroupResBlock 1280->512, CBAM, GroupResBlock 512->512);
- decoder: fuse with f16, upsample with the f8 and f4 skips, 3x3 conv to one logit per object, x4 upsampling;
- multi-object: sigmoid per object x selector, then STM soft aggregation.

BatchNorm statistics stay frozen: `train()` keeps every BatchNorm layer in eval mode (upstream calls
`.eval()` on the whole network during training, which is the same thing since the model has no dropout).
Upstream's encoders bring ImageNet statistics; a randomly initialised one has mean 0 / variance 1, so its
BatchNorm layers do nothing, and training first sets them from one batch (`STMAETask.start`).
Attribute names follow the upstream code, so released checkpoints (plain state dict or {'network': ...})
load with `load_checkpoint`.

Option (not upstream): `similarity="l2"` is STCN's negative squared Euclidean distance over sqrt(C). Upstream's
plain dot product is the default and what released weights were trained with. It relies on pretrained keys:
from random weights (no ImageNet weights can be had here) the memory entry with the largest norm wins
every query, so matching a frame to frame 0 by nearest key gave a mask IoU of 0.03 on the benchmark's
synthetic val videos, against 0.16 with "l2" (docs/results.md, "Shown to learn").

Deviations from upstream:
- The dot-product similarity, its softmax and the mask readout are computed in fp32 even under autocast
  (upstream runs them in fp16 under AMP, where unscaled 1024-d dot products lose most of their precision).
- Top-k softmax subtracts the maximum before exponentiating (upstream exponentiates the raw top-k
  similarities, which overflows to inf/NaN for these unscaled dot products).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from raytrain.config import SIMILARITIES
from raytrain.models.stmae_modules import FeatureFusionBlock, UpsampleBlock, aggregate
from shards.errors import UserError

VALUE_DIM_KEY = "value_encoder.fuser.block2.conv2.weight"


def check_similarity(kind: str) -> str:
    """`kind` if it is one of SIMILARITIES, else ValueError."""
    if kind not in SIMILARITIES:
        raise ValueError(f"--similarity must be one of {', '.join(SIMILARITIES)}, got {kind!r}")
    return kind


def _resnet(name: str, in_chans: int = 3) -> nn.Module:
    """A randomly initialised timm ResNet. Its last BN in every block starts at zero (timm's default), which
    keeps activations bounded with frozen BN statistics; training starts from ImageNet weights anyway."""
    return timm.create_model(name, pretrained=False, in_chans=in_chans, zero_init_last=True)


class KeyEncoder(nn.Module):
    """ResNet-50 stem, layer1 (`res2`), layer2, layer3 -> (f16, f8, f4)."""

    def __init__(self):
        super().__init__()
        net = _resnet("resnet50")
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.act1, net.maxpool
        self.res2, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f4 = self.res2(x)
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return f16, f8, f4


class MaskEncoder(nn.Module):
    """ResNet-18 over [RGB, own coarse mask, other objects' coarse masks] fused with the key f16.

    Layer order is XMem's: conv1, BN, maxpool, ReLU. The two extra conv1 input channels are orthogonally
    initialised (`raytrain.models.resnet_weights` keeps them when it loads ImageNet RGB filters).
    """

    def __init__(self, value_dim: int = 512):
        super().__init__()
        net = _resnet("resnet18", in_chans=5)
        extra = torch.empty(net.conv1.out_channels, 2, *net.conv1.kernel_size)
        nn.init.orthogonal_(extra)
        with torch.no_grad():
            net.conv1.weight[:, 3:] = extra
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.act1, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.fuser = FeatureFusionBlock(1024, 256, value_dim, value_dim)

    def forward(self, image: torch.Tensor, f16: torch.Tensor, masks: torch.Tensor,
                others: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W), f16 (B, 1024, H/16, W/16), masks/others (B, M, H, W) -> (B, M, C, H/16, W/16)."""
        b, m = masks.shape[:2]
        g = torch.cat([image.unsqueeze(1).expand(-1, m, -1, -1, -1), masks.unsqueeze(2), others.unsqueeze(2)], 2)
        g = self.relu(self.maxpool(self.bn1(self.conv1(g.flatten(0, 1)))))
        g = self.layer3(self.layer2(self.layer1(g)))
        return self.fuser(f16, g.view(b, m, *g.shape[1:]))


class Decoder(nn.Module):
    """Mask decoder: fuse with f16, up to 1/8 (f8 skip) and 1/4 (f4 skip), one logit per object."""

    def __init__(self, value_dim: int = 512):
        super().__init__()
        self.fuser = FeatureFusionBlock(1024, value_dim, 512, 512)
        self.up_16_8 = UpsampleBlock(512, 512, 256)
        self.up_8_4 = UpsampleBlock(256, 256, 256)
        self.pred = nn.Conv2d(256, 1, kernel_size=3, padding=1)

    def forward(self, f16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor, g16: torch.Tensor) -> torch.Tensor:
        b, m = g16.shape[:2]
        g4 = self.up_8_4(f4, self.up_16_8(f8, self.fuser(f16, g16)))
        logits = self.pred(F.relu(g4.flatten(0, 1)))
        logits = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)
        return logits.view(b, m, *logits.shape[-2:])


def similarity(memory_key: torch.Tensor, query_key: torch.Tensor, kind: str = "dot") -> torch.Tensor:
    """Memory (B, C, N) x query (B, C, P) keys -> (B, N, P), in fp32.

    "dot": plain dot products (upstream: no scaling, no L2 term). "l2": (2 m.q - |m|^2) / sqrt(C), which is
    -|m - q|^2 / sqrt(C) up to a per-query constant, so its softmax over the memory axis is STCN's.
    """
    with torch.autocast(memory_key.device.type, enabled=False):
        mk, qk = memory_key.float(), query_key.float()
        dot = torch.einsum("bcn,bcp->bnp", mk, qk)
        if kind == "dot":
            return dot
        if kind == "l2":
            return (2 * dot - mk.pow(2).sum(1).unsqueeze(2)) / mk.shape[1] ** 0.5
        raise ValueError(f"unknown similarity {kind!r}")


def softmax_affinity(sim: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """Softmax over the memory axis (dim 1), optionally over the top-k entries only (others get 0).

    Max-subtracted in both cases (torch.softmax), so large similarities stay finite.
    """
    if top_k is None or top_k <= 0 or top_k >= sim.shape[1]:
        return torch.softmax(sim, dim=1)
    values, indices = sim.topk(top_k, dim=1)
    return torch.zeros_like(sim).scatter_(1, indices, torch.softmax(values, dim=1))


def readout_masks(affinity: torch.Tensor, memory_masks: torch.Tensor) -> torch.Tensor:
    """Affinity (B, N, P) applied to memory masks (B, M, N) -> (B, M, P), in fp32."""
    with torch.autocast(affinity.device.type, enabled=False):
        return torch.bmm(memory_masks.float(), affinity.float())


def others_sum(masks: torch.Tensor) -> torch.Tensor:
    """For every object of (B, M, H, W), the sum of the other objects' masks (zeros when M == 1)."""
    return masks.sum(1, keepdim=True) - masks


class STMAE(nn.Module):
    """Key encoder, mask encoder and decoder with memory-mask readout; see the module docstring."""

    def __init__(self, value_dim: int = 512, similarity: str = "dot"):
        super().__init__()
        self.value_dim = value_dim
        self.similarity = check_similarity(similarity)
        self.key_encoder = KeyEncoder()
        self.value_encoder = MaskEncoder(value_dim)
        self.decoder = Decoder(value_dim)

    def train(self, mode: bool = True) -> STMAE:
        """Set train/eval mode but keep BatchNorm layers in eval mode (frozen running statistics)."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def encode_key(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised frames (..., 3, H, W) -> f16 (..., 1024, H/16, W/16), f8 (..., 512, H/8, W/8),
        f4 (..., 256, H/4, W/4); any leading dimensions are kept."""
        lead = frames.shape[:-3]
        feats = self.key_encoder(frames.reshape(-1, *frames.shape[-3:]))
        return tuple(f.view(*lead, *f.shape[1:]) for f in feats)  # type: ignore[return-value]

    def encode_value(self, frame: torch.Tensor, f16: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Frame (B, 3, H, W), its f16 and per-object coarse masks (B, M, H, W) -> g16 (B, M, C, H/16, W/16)."""
        return self.value_encoder(frame, f16, masks, others_sum(masks))

    def read_masks(self, query_key: torch.Tensor, memory_key: torch.Tensor, memory_masks: torch.Tensor,
                   top_k: int | None = None) -> torch.Tensor:
        """Coarse masks (B, M, h, w) of the query from memory keys (B, C, T, h, w) and masks (B, M, T, h, w)."""
        b, _, h, w = query_key.shape
        affinity = softmax_affinity(similarity(memory_key.flatten(2), query_key.flatten(2), self.similarity), top_k)
        return readout_masks(affinity, memory_masks.flatten(2)).view(b, -1, h, w)

    def segment(self, f16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor, g16: torch.Tensor,
                selector: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode g16 -> (aggregated logits (B, M+1, H, W), foreground probabilities (B, M, H, W),
        probabilities with background (B, M+1, H, W)). `selector` (B, M, 1, 1) zeroes padded object slots."""
        prob = torch.sigmoid(self.decoder(f16, f8, f4, g16))
        if selector is not None:
            prob = prob * selector
        logits, prob = aggregate(prob, dim=1)
        return logits, prob[:, 1:], prob

    def decode_coarse(self, frame: torch.Tensor, f16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor,
                      coarse: torch.Tensor, selector: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Coarse masks at 1/16 (B, M, h, w) -> upsampled, mask-encoded and decoded; returns `segment`'s tuple."""
        coarse = F.interpolate(coarse, size=frame.shape[-2:], mode="bilinear", align_corners=False)
        return self.segment(f16, f8, f4, self.encode_value(frame, f16, coarse), selector)

    def forward(self, frame: torch.Tensor, f16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor,
                memory_key: torch.Tensor, memory_masks: torch.Tensor, selector: torch.Tensor | None = None,
                top_k: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Segment one frame (B, 3, H, W) with features f16/f8/f4 from memory keys (B, 1024, T, h, w) and
        memory masks (B, M, T, h, w); returns `segment`'s tuple."""
        coarse = self.read_masks(f16, memory_key, memory_masks, top_k)
        return self.decode_coarse(frame, f16, f8, f4, coarse, selector)


def checkpoint_weights(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The STMAE state dict inside a loaded checkpoint: a plain state dict, {'network': ...} (upstream
    training checkpoints), {'model': ...} (`STMAETask.state_dict`) or {'task': {'model': ...}} (the Ray
    training loop's state.pt). Raises ValueError otherwise."""
    while isinstance(obj, dict):
        wrapper = next((k for k in ("task", "network", "model") if isinstance(obj.get(k), dict)), None)
        if wrapper is None:
            break
        obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{source}: not a state dict (or {{'network': state dict}})")
    weights = {k.removeprefix("module."): v for k, v in obj.items()}
    if VALUE_DIM_KEY not in weights:
        keys = ", ".join(list(weights)[:4])
        raise UserError(f"{source}: not an STMAE checkpoint: '{VALUE_DIM_KEY}' is missing (first keys: {keys})")
    return weights


def from_weights(weights: dict[str, torch.Tensor], source: str = "state dict", similarity: str = "dot") -> STMAE:
    """Build an STMAE (value_dim read from the weights, as upstream) and load `weights` strictly.

    Single-object weights (4-channel mask-encoder conv1) are widened with zero filters, as upstream does.
    """
    weights = dict(weights)
    model = STMAE(value_dim=weights[VALUE_DIM_KEY].shape[0], similarity=similarity)
    conv1 = weights.get("value_encoder.conv1.weight")
    if conv1 is not None and conv1.ndim == 4 and conv1.shape[1] == 4:
        weights["value_encoder.conv1.weight"] = torch.cat([conv1, torch.zeros_like(conv1[:, :1])], 1)
    own = model.state_dict()
    for k in own:
        if k.endswith("num_batches_tracked") and k not in weights:
            weights[k] = own[k]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"{source}: does not match the STMAE architecture: {e}") from None
    return model


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", similarity: str = "dot") -> STMAE:
    """Build an STMAE from a checkpoint file (released weights, upstream training checkpoint or
    `STMAETask.state_dict()`), read with torch.load(weights_only=True)."""
    obj = torch.load(path, map_location=map_location, weights_only=True)
    return from_weights(checkpoint_weights(obj, str(path)), str(path), similarity)
