"""STMAE reconstruction loss on the first frame: cross-entropy + soft Dice, weights 1:1 (upstream
`model/losses.py`; no bootstrapping, no warm-up)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def first_frame_ce(logits: torch.Tensor, target: torch.Tensor, num_objects: list[int]) -> torch.Tensor:
    """Per sample, cross-entropy over the first n_obj + 1 channels of the aggregated logits (B, M+1, H, W)
    against class indices (B, H, W); averaged over the batch."""
    b = logits.shape[0]
    losses = [F.cross_entropy(logits[i:i + 1, :n + 1].float(), target[i:i + 1]) for i, n in enumerate(num_objects)]
    return torch.stack(losses).sum() / b


def soft_dice(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - (2 |p * g| + 1) / (|p| + |g| + 1) for every object slot of foreground probabilities (B, M, H, W)
    vs one-hot(target == slot + 1), averaged over slots and batch."""
    m = prob.shape[1]
    gt = (target.unsqueeze(1) == torch.arange(1, m + 1, device=target.device).view(1, m, 1, 1)).float()
    p = prob.float().flatten(2)
    gt = gt.flatten(2)
    return (1 - (2 * (p * gt).sum(-1) + 1) / (p.sum(-1) + gt.sum(-1) + 1)).mean()


def stmae_loss(logits: torch.Tensor, prob: torch.Tensor, target: torch.Tensor,
               num_objects: list[int]) -> dict[str, torch.Tensor]:
    """{'loss', 'loss_ce', 'loss_dice'} of the reconstructed first frame: logits (B, M+1, H, W),
    foreground probabilities (B, M, H, W), first-frame ids (B, H, W) with 0 = background."""
    ce = first_frame_ce(logits, target, num_objects)
    dice = soft_dice(prob, target)
    return {"loss": ce + dice, "loss_ce": ce, "loss_dice": dice}
