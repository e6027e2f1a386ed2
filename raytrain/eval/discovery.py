"""Unsupervised multi-object discovery with SMTC on DAVIS-2017 (upstream `src/eval_multi.py`), scored two ways.

Candidates (as upstream): frames resized bilinearly to `size` (480x800), Kinetics mean/std, non-overlapping
windows of `window` (4) frames, the last one filled with the video's last frames, `iters` (5) slot
iterations. Every frame gets the S x P maps p_sem[s] * softmax_P(instance logits)[s, p] (they sum to one at
each position) and keeps those with cos(semantic slot, instance slot) >= 0.5.

Two scoring modes, never to be mixed up:

- `OFFICIAL` ("official", the DAVIS-2017 unsupervised protocol of `raytrain.eval.davis`): candidates become at
  most `max_proposals` (20) proposals whose ids hold over the whole video, written as P-mode PNGs and scored
  with one Hungarian assignment per sequence. Each frame is partitioned on the feature grid by its strongest
  candidate (positions whose strongest candidate is not kept stay unassigned); the resulting segments are
  linked frame to frame into tracks by a Hungarian matching on mask IoU (>= `min_iou`, a track may skip up to
  `max_gap` frames); the `max_proposals` tracks present in the most frames (then largest) get ids 1..20 and
  are painted without overlap by a full-resolution argmax of the bilinearly upsampled candidates.
- `PAPER` ("smtc-paper", upstream's patched toolkit): per frame, the kept candidates are nearest-upsampled to
  the annotation size, min-max normalised one by one and thresholded at > 0.3; they may overlap, up to 300
  per frame; zero-padded to the largest count; Hungarian matching on J + F *in every frame separately*, so a
  proposal may follow a different object in every frame. Its numbers are NOT comparable with the official
  protocol.

Deviations from upstream:
- The random initialisation of the instance slots is seeded per video (from `seed` and the video name), so
  results are reproducible and do not depend on which worker evaluated a video; upstream sets no seed and its
  numbers vary between runs.
- Windows are batched (`batch` windows per forward); the instance-slot draws therefore depend on `batch`.
- A frame without kept candidates scores as all-empty proposals (upstream's `F.interpolate` fails on it).
- Paper mode: per-object rows follow the ground-truth objects (upstream lists each frame's matches in
  proposal order, which scrambles the per-object CSV rows); the global numbers are identical.
- Paper mode stores the kept soft candidates of each video on the feature grid (`candidates/<seq>.npz`,
  float16) instead of upstream's `DAVIS_Twostage/<seq>.pth`.
"""
from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from raytrain.eval.davis import VOID, SequenceScores, score_unsup
from raytrain.eval.video_io import VideoResult, encode_png, read_clip, read_ground_truth
from raytrain.eval.metrics import Boundary, bound_pix, f_from_boundaries
from raytrain.models.smtc import SMTC
from shards.layout import Video
from shards.palettes import DAVIS_PALETTE

OFFICIAL = "official"
PAPER = "smtc-paper"
MODES = (OFFICIAL, PAPER)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
SIMILARITY_THRESHOLD = 0.5  # keep candidates with cos(semantic slot, instance slot) >= this
PAPER_THRESHOLD = 0.3
PAPER_MAX_PROPOSALS = 300
PROTOCOL_NOTE = {
    OFFICIAL: "official DAVIS-2017 unsupervised protocol (<= 20 proposals, one matching per sequence)",
    PAPER: "smtc-paper protocol (per-frame matching, overlapping masks, <= 300 proposals): "
           "NOT comparable with the official DAVIS protocol",
}


@dataclass
class Candidates:
    """Candidate masks of a video on the feature grid."""

    soft: torch.Tensor  # [T, K, h, w] p_sem[s] * p_inst[s, p], K = S * P in (s, p) order
    valid: torch.Tensor  # [T, K] bool: cos(semantic slot, instance slot) >= 0.5


@dataclass(frozen=True)
class DiscoverySettings:
    mode: str = OFFICIAL
    size: tuple[int, int] = (480, 800)  # encoder input (H, W)
    window: int = 4
    iters: int = 5
    seed: int = 0
    batch: int = 4  # windows per forward
    max_proposals: int = 20  # official mode
    min_iou: float = 0.3  # official mode: linking threshold
    max_gap: int = 4  # official mode: frames a track may be missing and still be continued
    save_candidates: bool = True  # paper mode: write candidates/<seq>.npz

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")


def window_indices(num_frames: int, window: int) -> list[tuple[list[int], int]]:
    """(frame indices, number of real frames) of each window; the last one is filled with the last frames."""
    out = []
    for start in range(0, num_frames, window):
        idx = list(range(start, min(start + window, num_frames)))
        real = len(idx)
        idx += [max(0, num_frames - (window - real) + j) for j in range(window - real)]
        out.append((idx, real))
    return out


def video_seed(seed: int, name: str) -> int:
    """Seed of a video's instance-slot draws (independent of where and in which order videos run)."""
    return zlib.crc32(f"{seed}/{name}".encode())


@torch.inference_mode()
def candidates(model: SMTC, frames: torch.Tensor, *, size: tuple[int, int] = (480, 800), window: int = 4,
               iters: int = 5, seed: int = 0, batch: int = 4, device: torch.device | str | None = None
               ) -> Candidates:
    """Candidate masks of a video, frames uint8 [T, 3, H, W]; `model` must be in eval mode."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be uint8 [T, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
    device = torch.device(device) if device is not None else frames.device
    mean = torch.tensor(KINETICS_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(KINETICS_STD, device=device).view(1, 3, 1, 1)
    windows = window_indices(len(frames), window)
    soft, valid = [], []
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for b0 in range(0, len(windows), batch):
            chunk = windows[b0:b0 + batch]
            x = frames[[i for idx, _ in chunk for i in idx]].to(device).float() / 255
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
            out = model.discover(((x - mean) / std).view(len(chunk), window, 3, *size), iters=iters)
            for j, (_, real) in enumerate(chunk):
                soft.append(out.masks[j, :real].flatten(1, 2).reshape(real, -1, out.h, out.w).float())
                valid.append(out.similarity[j, :real].flatten(1) >= SIMILARITY_THRESHOLD)
    return Candidates(torch.cat(soft), torch.cat(valid))


# ----------------------------------------------------------------------------------------- official mode

def winners(c: Candidates) -> torch.Tensor:
    """[T, h, w]: index of the strongest candidate at each grid position, -1 where it is not a kept one."""
    best = c.soft.argmax(1)
    kept = c.valid.gather(1, best.flatten(1)).view_as(best)
    return torch.where(kept, best, -1)


def link_tracks(win: np.ndarray, num_candidates: int, max_proposals: int = 20, min_iou: float = 0.3,
                max_gap: int = 4) -> np.ndarray:
    """Proposal id (1..max_proposals, 0 = none) of every candidate in every frame, [T, K].

    win: [T, h, w] from `winners`. Each frame's segments (positions won by one candidate) continue the track
    whose last segment overlaps them most (Hungarian on IoU, at least `min_iou`, track last seen at most
    `max_gap` frames before); other segments start tracks. The tracks present in the most frames (ties: larger
    total area, then earlier start) become proposals 1, 2, ...
    """
    num_frames = len(win)
    track_of = np.full((num_frames, num_candidates), -1)
    last_mask: list[np.ndarray] = []
    last_seen: list[int] = []
    frames: list[int] = []
    area: list[int] = []
    for t in range(num_frames):
        segs = np.unique(win[t])
        segs = segs[segs >= 0]
        masks = (win[t][None] == segs[:, None, None]).reshape(len(segs), win[t].size)
        alive = [i for i, seen in enumerate(last_seen) if t - seen <= max_gap]
        matched: dict[int, int] = {}
        if alive and len(segs):
            prev = np.stack([last_mask[i] for i in alive]).astype(np.float64)
            cur = masks.astype(np.float64)
            inter = prev @ cur.T
            iou = inter / np.maximum(prev.sum(1)[:, None] + cur.sum(1)[None] - inter, 1)
            rows, cols = linear_sum_assignment(-iou)
            matched = {int(c): alive[r] for r, c in zip(rows, cols) if iou[r, c] >= min_iou}
        for j, k in enumerate(segs):
            track = matched.get(j)
            if track is None:
                track = len(last_seen)
                last_mask.append(masks[j])
                last_seen.append(t)
                frames.append(0)
                area.append(0)
            last_mask[track], last_seen[track] = masks[j], t
            frames[track] += 1
            area[track] += int(masks[j].sum())
            track_of[t, k] = track
    order = sorted(range(len(frames)), key=lambda i: (-frames[i], -area[i], i))
    ids = np.zeros(len(frames) + 1, np.int64)  # the extra last entry maps track -1 to id 0
    for rank, track in enumerate(order[:max_proposals]):
        ids[track] = rank + 1
    return ids[track_of]


@torch.inference_mode()
def paint(c: Candidates, ids: np.ndarray, out_size: tuple[int, int]) -> list[np.ndarray]:
    """Non-overlapping id maps at `out_size`: the id of the strongest bilinearly upsampled candidate."""
    out = []
    for t in range(len(c.soft)):
        up = F.interpolate(c.soft[t][None], size=tuple(out_size), mode="bilinear", align_corners=False)[0]
        lut = torch.as_tensor(ids[t], device=up.device)
        out.append(lut[up.argmax(0)].cpu().numpy().astype(np.uint8))
    return out


def official_proposals(c: Candidates, out_size: tuple[int, int], max_proposals: int = 20, min_iou: float = 0.3,
                       max_gap: int = 4) -> list[np.ndarray]:
    """At most `max_proposals` proposals with ids consistent over time, as id maps at `out_size`."""
    ids = link_tracks(winners(c).cpu().numpy(), c.soft.shape[1], max_proposals, min_iou, max_gap)
    return paint(c, ids, out_size)


def candidate_maps(c: Candidates, out_size: tuple[int, int]) -> list[np.ndarray]:
    """Per-frame partition by the strongest kept candidate, ids = candidate index + 1 (NOT consistent over
    time; a preview of what the paper mode scores)."""
    k = c.soft.shape[1]
    ids = np.where(c.valid.cpu().numpy(), np.arange(1, k + 1), 0)
    return paint(c, ids, out_size)


# -------------------------------------------------------------------------------------------- paper mode

@torch.inference_mode()
def paper_masks(c: Candidates, out_size: tuple[int, int]) -> list[np.ndarray]:
    """Per frame, bool [n_t, H, W]: kept candidates, nearest-upsampled, min-max normalised, > 0.3."""
    out = []
    for t in range(len(c.soft)):
        m = c.soft[t][c.valid[t]]
        if len(m) == 0:
            out.append(np.zeros((0, *out_size), dtype=bool))
            continue
        m = F.interpolate(m[None], size=tuple(out_size), mode="nearest")[0].flatten(1)
        low, high = m.min(1, keepdim=True)[0], m.max(1, keepdim=True)[0]
        out.append(((m - low) / (high - low) > PAPER_THRESHOLD).view(-1, *out_size).cpu().numpy())
    return out


def _pair_scores(objects: np.ndarray, proposals: np.ndarray, void: np.ndarray, radius: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """J and F [proposals, objects] of one frame (void pixels removed from both)."""
    proposals = proposals & ~void
    p = proposals.reshape(len(proposals), -1).astype(np.float32)  # pixel counts < 2**24: exact
    g = objects.reshape(len(objects), -1).astype(np.float32)
    inter = (p @ g.T).astype(np.float64)
    union = p.sum(1, dtype=np.float64)[:, None] + g.sum(1, dtype=np.float64)[None] - inter
    j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    gb = [Boundary(o[None]) for o in objects]
    pb = [Boundary(q[None]) for q in proposals]
    f = np.array([[f_from_boundaries(b, q, radius)[0] for b in gb] for q in pb])
    return j, f.reshape(j.shape)


def score_paper(gt: np.ndarray, masks: Sequence[np.ndarray], sequence: str = "",
                max_proposals: int = PAPER_MAX_PROPOSALS) -> SequenceScores:
    """smtc-paper scores of one sequence: gt [T, H, W] (unsupervised ids, 255 void), masks: per frame bool
    [n_t, H, W]. Proposals are zero-padded to max(max_t n_t, objects); every frame has its own Hungarian
    matching on J + F."""
    gt = np.asarray(gt)
    if len(masks) != len(gt):
        raise ValueError(f"sequence {sequence!r}: {len(masks)} frames of proposals for {len(gt)} GT frames")
    void = gt == VOID
    first = gt[0][~void[0]]
    n_gt = int(first.max()) if first.size else 0
    n_pad = max(max((len(m) for m in masks), default=0), n_gt)
    if n_pad > max_proposals:
        raise ValueError(f"sequence {sequence!r}: {n_pad} proposals in a frame, more than the {max_proposals} "
                         "allowed")
    radius = bound_pix(gt.shape[1:])
    ids = np.arange(1, n_gt + 1)[:, None, None]
    j_out, f_out = np.zeros((n_gt, len(gt))), np.zeros((n_gt, len(gt)))
    for t, props in enumerate(masks):
        if props.shape[1:] != gt.shape[1:]:
            raise ValueError(f"sequence {sequence!r}, frame {t}: proposals {props.shape[1:]} vs GT {gt.shape[1:]}")
        padded = len(props) < n_pad
        if padded:  # all padding proposals are the same empty mask: score one, repeat its row
            props = np.concatenate([props, np.zeros((1, *gt.shape[1:]), bool)])
        j, f = _pair_scores(np.where(void[t], 0, gt[t])[None] == ids, props, void[t], radius)
        if padded:
            rows = np.r_[np.arange(len(props) - 1), np.full(n_pad - len(props) + 1, len(props) - 1)]
            j, f = j[rows], f[rows]
        r, c = linear_sum_assignment(-(j + f))
        j_out[c, t], f_out[c, t] = j[r, c], f[r, c]
    return SequenceScores(sequence, j_out, f_out)


def _npz(c: Candidates, frames: Sequence[str]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, soft=c.soft[c.valid].half().cpu().numpy(), valid=c.valid.cpu().numpy(),
                        frames=np.array(frames))
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ one video

def discover_video(model: SMTC, video: Video, device: torch.device, settings: DiscoverySettings
                   ) -> VideoResult:
    """Discover objects in one DAVIS video (annotations: `Annotations_unsupervised`) and score them.

    Official mode: masks = the proposals' id maps. Paper mode: masks = `candidate_maps` previews, plus the
    candidates as `candidates/<seq>.npz`.
    """
    frames = read_clip(video)
    c = candidates(model, frames, size=settings.size, window=settings.window, iters=settings.iters,
                   seed=video_seed(settings.seed, video.id), batch=settings.batch, device=device)
    gt = read_ground_truth(video)
    out_size = tuple(frames.shape[-2:])
    extra = {}
    if settings.mode == OFFICIAL:
        maps = official_proposals(c, out_size, settings.max_proposals, settings.min_iou, settings.max_gap)
        scores = None if gt is None else score_unsup(gt, np.stack(maps), video.id, video.frames,
                                                     settings.max_proposals)
    else:
        maps = candidate_maps(c, out_size)
        scores = None if gt is None else score_paper(gt, paper_masks(c, out_size), video.id)
        if settings.save_candidates:
            extra[f"candidates/{video.id}.npz"] = _npz(c, video.frames)
    masks = {f: encode_png(m, DAVIS_PALETTE) for f, m in zip(video.frames, maps)}
    return VideoResult(video.id, masks, scores, extra=extra)
