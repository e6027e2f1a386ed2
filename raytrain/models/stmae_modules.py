"""Building blocks of STMAE (inherited from XMem): per-object group convolutions, CBAM, feature fusion,
upsampling blocks and STM soft aggregation.

Group tensors `g` have shape (batch, objects, channels, H, W); every group module treats the objects of a
sample independently. Module and attribute names follow XMem so that released checkpoints load.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def upsample_groups(g: torch.Tensor, ratio: float = 2) -> torch.Tensor:
    """Bilinear upsampling of a (B, M, C, H, W) group tensor."""
    b, m = g.shape[:2]
    out = F.interpolate(g.flatten(0, 1), scale_factor=ratio, mode="bilinear", align_corners=False)
    return out.view(b, m, *out.shape[1:])


class GConv2d(nn.Conv2d):
    """A Conv2d applied to every object of a (B, M, C, H, W) tensor."""

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        b, m = g.shape[:2]
        out = super().forward(g.flatten(0, 1))
        return out.view(b, m, *out.shape[1:])


class GroupResBlock(nn.Module):
    """Pre-activation residual block (ReLU -> conv3x3, twice); 3x3 conv shortcut when the width changes."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.downsample = None if in_dim == out_dim else GConv2d(in_dim, out_dim, kernel_size=3, padding=1)
        self.conv1 = GConv2d(in_dim, out_dim, kernel_size=3, padding=1)
        self.conv2 = GConv2d(out_dim, out_dim, kernel_size=3, padding=1)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(F.relu(g))))
        return out + (g if self.downsample is None else self.downsample(g))


class ChannelGate(nn.Module):
    """CBAM channel attention: shared MLP over global average and max pooling."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(),
                                 nn.Linear(channels // reduction, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(att)[:, :, None, None]


class _Conv(nn.Module):
    """Holds the spatial-gate conv under the attribute name `conv` (checkpoint key compatibility)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SpatialGate(nn.Module):
    """CBAM spatial attention: 7x7 conv over channel-wise max and mean."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.spatial = _Conv(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """Convolutional block attention module (channel gate, then spatial gate) on (N, C, H, W)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.ChannelGate = ChannelGate(channels, reduction)
        self.SpatialGate = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class FeatureFusionBlock(nn.Module):
    """Concatenate image features x (B, Cx, H, W) to every object of g, then ResBlock -> +CBAM -> ResBlock."""

    def __init__(self, x_in_dim: int, g_in_dim: int, g_mid_dim: int, g_out_dim: int):
        super().__init__()
        self.block1 = GroupResBlock(x_in_dim + g_in_dim, g_mid_dim)
        self.attention = CBAM(g_mid_dim)
        self.block2 = GroupResBlock(g_mid_dim, g_out_dim)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        b, m = g.shape[:2]
        g = self.block1(torch.cat([x.unsqueeze(1).expand(-1, m, -1, -1, -1), g], 2))
        r = self.attention(g.flatten(0, 1)).view_as(g)
        return self.block2(g + r)


class UpsampleBlock(nn.Module):
    """Decoder stage: 3x3 conv on the skip feature, added to the x2-upsampled group features, ResBlock."""

    def __init__(self, skip_dim: int, g_up_dim: int, g_out_dim: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_dim, g_up_dim, kernel_size=3, padding=1)
        self.out_conv = GroupResBlock(g_up_dim, g_out_dim)

    def forward(self, skip: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.out_conv(self.skip_conv(skip).unsqueeze(1) + upsample_groups(g, 2))


def aggregate(prob: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """STM soft aggregation of per-object foreground probabilities along `dim`.

    Prepends the background prod(1 - p_i), clamps to [1e-7, 1 - 1e-7], converts to logits and takes a
    softmax over the M + 1 channels, in fp32 (1 - 1e-7 is 1 in half precision). Returns (logits,
    probabilities), both with M + 1 channels.
    """
    prob = prob.float()
    bg = torch.prod(1 - prob, dim=dim, keepdim=True)
    p = torch.cat([bg, prob], dim).clamp(1e-7, 1 - 1e-7)
    logits = torch.log(p / (1 - p))
    return logits, torch.softmax(logits, dim=dim)
