"""DINO ViT-S/16 backbone on timm's VisionTransformer, exposing what SMTC needs from the last block.

`ViTEncoder` keeps timm's (= DINO's) parameter names, so DINO and SMTC checkpoints load without renaming.
At any input size the positional embedding is interpolated the way DINO's `interpolate_pos_encoding` does
(bicubic, scale factor `(grid + 0.1) / sqrt(N)`), not with timm's resampling, so features match DINO's code.

Stochastic depth: timm's `DropPath` draws each sample's keep/drop from the global RNG. `keys` (the training
forward) takes `drop`, uniforms per sample and residual branch, instead, so that a caller can key them per sample
(`raytrain.train.smtc_task`); a sample keeps a branch of drop rate p where its uniform is < 1 - p, scaled by
1 / (1 - p) as timm does.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

PATCH = 16
DIM = 384


class ViTFeatures(NamedTuple):
    keys: Tensor  # B x D x h x w, last block's keys, heads concatenated
    tokens: Tensor  # B x D x h x w, last block's output tokens before the final LayerNorm
    cls: Tensor  # B x D, last block's CLS token before the final LayerNorm


class ViTEncoder(VisionTransformer):
    """ViT-S/16 (384 wide, 12 blocks, 6 heads), timm module with DINO-style feature access."""

    def __init__(self, drop_path: float = 0.0) -> None:
        super().__init__(patch_size=PATCH, embed_dim=DIM, depth=12, num_heads=6, num_classes=0,
                         drop_path_rate=drop_path, dynamic_img_size=True)

    def pos_embed_for(self, h: int, w: int) -> Tensor:
        """Positional embedding (CLS first) for an h x w patch grid, interpolated as DINO does."""
        n = self.pos_embed.shape[1] - 1
        side = int(math.sqrt(n))
        if n == h * w and h == w:
            return self.pos_embed
        grid = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic")
        if grid.shape[-2:] != (h, w):
            raise ValueError(f"positional embedding interpolated to {tuple(grid.shape[-2:])}, expected {(h, w)}")
        return torch.cat([self.pos_embed[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)

    @property
    def drop_draws(self) -> int:
        """How many uniforms per sample `drop` holds: one per residual branch (two per block)."""
        return 2 * len(self.blocks)

    def _branch(self, module: torch.nn.Module, y: Tensor, u: Tensor | None) -> Tensor:
        """Residual branch output y after stochastic depth (`module`: the block's DropPath or Identity)."""
        p = getattr(module, "drop_prob", 0.0)
        if u is None or not self.training or p == 0:
            return module(y)
        keep = 1 - p
        return y * ((u < keep).to(y.dtype) / keep).view(-1, *([1] * (y.ndim - 1)))

    def _block(self, i: int, x: Tensor, drop: Tensor | None) -> Tensor:
        """Block i (timm's `Block.forward`), its stochastic depth decided by drop[:, 2i:2i+2] where given."""
        blk = self.blocks[i]
        u1, u2 = (None, None) if drop is None else (drop[:, 2 * i], drop[:, 2 * i + 1])
        x = x + self._branch(blk.drop_path1, blk.ls1(blk.attn(blk.norm1(x))), u1)
        return x + self._branch(blk.drop_path2, blk.ls2(blk.mlp(blk.norm2(x))), u2)

    def _last_block_input(self, x: Tensor, drop: Tensor | None = None) -> tuple[Tensor, int, int]:
        x = self.patch_embed.proj(x)
        h, w = x.shape[-2:]
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed_for(h, w)
        x = self.norm_pre(self.patch_drop(self.pos_drop(x)))
        for i in range(len(self.blocks) - 1):
            x = self._block(i, x, drop)
        return x, h, w

    def _last_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attn = self.blocks[-1].attn
        b, n, _ = x.shape
        qkv = attn.qkv(self.blocks[-1].norm1(x)).reshape(b, n, 3, attn.num_heads, attn.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each B x heads x N x head_dim
        return attn.q_norm(q), attn.k_norm(k), v

    @staticmethod
    def _to_map(x: Tensor, h: int, w: int) -> Tensor:
        """B x (1 + h*w) x D tokens -> B x D x h x w patch map (CLS dropped)."""
        return x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w)

    @staticmethod
    def _heads_to_tokens(k: Tensor) -> Tensor:
        """B x heads x N x head_dim -> B x N x (heads * head_dim), head-major as DINO concatenates."""
        return k.transpose(1, 2).flatten(2)

    def keys(self, x: Tensor, drop: Tensor | None = None) -> Tensor:
        """Last block's keys, B x D x h x w, without computing the rest of the last block; `drop`: B x
        `drop_draws` stochastic-depth uniforms (None: timm's draws)."""
        x, h, w = self._last_block_input(x, drop)
        _, k, _ = self._last_qkv(x)
        return self._to_map(self._heads_to_tokens(k), h, w)

    def features(self, x: Tensor) -> ViTFeatures:
        """Keys, pre-norm output tokens and CLS of the last block for images B x 3 x H x W (any size)."""
        x, h, w = self._last_block_input(x)
        blk = self.blocks[-1]
        attn = blk.attn
        q, k, v = self._last_qkv(x)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if self.training else 0.0)
        y = attn.proj_drop(attn.proj(attn.norm(self._heads_to_tokens(y))))
        x = x + blk.drop_path1(blk.ls1(y))
        x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
        return ViTFeatures(self._to_map(self._heads_to_tokens(k), h, w), self._to_map(x, h, w), x[:, 0])

    def last_block_unused_by_keys(self) -> list[torch.nn.Parameter]:
        """Parameters that `keys` never touches: the last block after qkv and the final norm."""
        blk = self.blocks[-1]
        mods = [blk.attn.norm, blk.attn.proj, blk.ls1, blk.norm2, blk.mlp, blk.ls2, self.norm]
        return [p for m in mods for p in m.parameters()]


def vit_small(drop_path: float = 0.0) -> ViTEncoder:
    """DINO ViT-S/16 backbone, randomly initialised (load weights with `raytrain.models.weights`)."""
    return ViTEncoder(drop_path=drop_path)
