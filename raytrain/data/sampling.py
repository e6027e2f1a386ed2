"""Clip samplers: which frames of a video make one training clip. Pure functions of a numpy Generator."""
from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np


def smtc_min_length(num_frames: int) -> int:
    """The shortest video `smtc_frames` samples from, at any gap: 2 * (num_frames // 2) + 1 frames (the
    clip at gap 1 around the only possible centre)."""
    return 2 * (num_frames // 2) + 1


def smtc_frames(length: int, num_frames: int, gap: int, rng: np.random.Generator) -> list[int] | None:
    """SMTC clip: `num_frames` frames spaced by `gap` around a random centre (upstream `src/data.py`).

    Offsets are gap * (i - num_frames // 2), e.g. -8, -4, 0, +4 for 4 frames and gap 4; the centre is
    uniform in [gap * num_frames // 2, length - gap * num_frames // 2 - 1]. Upstream lowers the gap by one
    when that range has fewer than two values; from gap 1 that gives gap 0, i.e. one random frame repeated
    `num_frames` times (a video of exactly `smtc_min_length` frames at gap 1), which is followed here.
    Upstream crashes if the clip still does not fit; here the gap keeps shrinking until it does (down to 1).
    Returns None for videos shorter than `smtc_min_length(num_frames)` (upstream: a repeated frame at gap 1,
    a crash at larger gaps), the rule `raytrain.data.plan.usable` admits videos by.
    """
    if gap < 1:
        raise ValueError(f"--gap must be at least 1, got {gap}")
    if length < smtc_min_length(num_frames):
        return None
    if gap * num_frames // 2 >= length - gap * num_frames // 2 - 1:
        gap -= 1
    while True:  # ends by gap 1 (the length check above) or at the gap 0 left by upstream's step
        lo = gap * num_frames // 2
        hi = length - gap * num_frames // 2 - 1
        if lo <= hi:
            centre = int(rng.integers(lo, hi + 1))
            return [centre + gap * (i - num_frames // 2) for i in range(num_frames)]
        gap -= 1


def stmae_frames(length: int, num_frames: int, max_jump: int, rng: np.random.Generator) -> list[int] | None:
    """STMAE clip: frame 0 first, the rest drawn one by one within `max_jump` of an already chosen frame
    (never frame 0 again), then sorted (upstream `VOSDataset`, XMem's rule anchored at frame 0).

    Returns None for videos shorter than `num_frames`.
    """
    if length < num_frames:
        return None
    jump = max(1, min(length, max_jump))
    chosen = [0]
    allowed = set(range(1, min(length, jump + 1)))
    while len(chosen) < num_frames:
        pick = int(rng.choice(sorted(allowed)))
        chosen.append(pick)
        allowed |= set(range(max(1, pick - jump), min(length, pick + jump + 1)))
        allowed -= set(chosen)
    return sorted(chosen)


def max_skip_at(step: int, steps: int, values: Sequence[int], starts: Sequence[float]) -> int:
    """The max-skip curriculum value in force at `step` (starts are fractions of the run)."""
    i = bisect.bisect_right([s * steps for s in starts], step) - 1
    return int(values[max(i, 0)])


def frame_stride(frame_names: Sequence[str]) -> int:
    """Spacing of a video's frame numbers: 1 for DAVIS (00000, 00001, …), 5 for YouTube-VOS train
    (00000, 00005, …). STMAE divides max-skip by it, as upstream does for YouTube-VOS."""
    if len(frame_names) < 2 or not all(n.isdigit() for n in frame_names[:2]):
        return 1
    return max(1, int(frame_names[1]) - int(frame_names[0]))
