"""Batched linear assignment (Hungarian matching) for many small square problems at once.

For P <= 8 every permutation is scored on the tensor's device (P! <= 40320 candidates, table built once per P)
and the cheapest wins; problems are processed in chunks so memory stays bounded. Larger P falls back to
`scipy.optimize.linear_sum_assignment`, one problem at a time on the CPU.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

MAX_ENUMERATED = 8
_CHUNK_ELEMENTS = 1 << 24  # gathered costs held at once (64 MiB of float32)


@functools.lru_cache(maxsize=None)
def _permutations(p: int) -> Tensor:
    """All permutations of range(p), (p! x p) int64 on the CPU."""
    return torch.tensor(list(itertools.permutations(range(p))), dtype=torch.long).reshape(-1, p)


def batched_assignment(cost: Tensor) -> Tensor:
    """Minimum-cost perfect matching of each P x P problem in `cost[..., P, P]`.

    Returns `cols[..., P]` (int64, on cost's device): row i is matched to column cols[..., i], the same
    convention as scipy's `linear_sum_assignment(cost)[1]`. Ties go to the lexicographically first permutation.
    """
    if cost.ndim < 2 or cost.shape[-1] != cost.shape[-2]:
        raise ValueError(f"cost must be [..., P, P], got shape {tuple(cost.shape)}")
    p = cost.shape[-1]
    batch = cost.shape[:-2]
    flat = cost.detach().reshape(-1, p * p)
    if p > MAX_ENUMERATED:
        arr = flat.float().cpu().numpy().reshape(-1, p, p)
        cols = np.stack([linear_sum_assignment(c)[1] for c in arr]) if len(arr) else np.zeros((0, p), np.int64)
        return torch.as_tensor(cols, dtype=torch.long, device=cost.device).reshape(*batch, p)
    flat = flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat
    perms = _permutations(p).to(cost.device)
    k = perms.shape[0]
    index = (torch.arange(p, device=cost.device).unsqueeze(1) * p + perms.T).reshape(-1)  # (row, col), row-major
    step = max(1, _CHUNK_ELEMENTS // index.numel())
    best = [flat[i:i + step].index_select(1, index).view(-1, p, k).sum(1).argmin(-1)
            for i in range(0, flat.shape[0], step)]
    best = torch.cat(best) if best else torch.zeros(0, dtype=torch.long, device=cost.device)
    return perms[best].reshape(*batch, p)
