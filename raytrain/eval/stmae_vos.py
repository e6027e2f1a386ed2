"""STMAE semi-supervised VOS inference on one video (upstream `eval.py` / `InferenceCore`, XMem-style).

Per frame: resize (shorter side `size`), ImageNet-normalise, pad to a multiple of 16, encode the key; read
coarse masks from the memory (dot product, top-k softmax), mask-encode, decode, aggregate (the model's
`segment`). A frame without a given mask uses those probabilities as they are. In a frame with a given
mask, the given objects' one-hot masks replace the prediction for those objects and the result is
aggregated (as upstream `InferenceCore.step`, which aggregates only there). A frame enters the memory (key
f16, value = soft foreground probabilities at 1/16) when it has a given mask or `mem_every` frames have
passed since the last memory frame, never when it is the last frame. Objects given after frame 0
(YouTube-VOS) join the memory at that frame and read only the memory frames stored since (XMem's object
groups). Predictions are unpadded, resized bilinearly to the original size, argmax-ed and mapped back to
the original ids.

Memory grows by a frame every `mem_every` frames, without bound, as upstream. `max_mem_frames` K bounds it
for long videos: the frames with given masks (frame 0 for DAVIS) stay, and of the others only the newest K,
so memory use and the per-frame readout cost stop growing after about K * mem_every frames.

No Ray here: the evaluation helper fans `propagate_video` out over a cluster.

Deviations from upstream:
- Upstream `InferenceCore.step` crashes as shipped (wrong `encode_value`/`segment` calls); this follows
  its evident intent.
- Top-k softmax subtracts the maximum (upstream overflows to inf/NaN on STMAE's unscaled dot products).
- `amp` uses bf16 autocast (upstream: fp16); the similarity is computed in fp32 either way.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from raytrain.augment import normalize_uint8
from raytrain.models.stmae import STMAE, readout_masks, similarity, softmax_affinity
from raytrain.models.stmae_modules import aggregate

Frame = np.ndarray | str | os.PathLike


class MaskMemory:
    """Memory keys (1, C, N) and soft masks (K, N); object k reads only entries from `starts[k]` on.

    `similarity` is the model's ("dot", upstream, or "l2"; see `raytrain.models.stmae.similarity`).

    With `max_frames` K > 0, only the newest K frames added with `permanent=False` are kept, besides every
    permanent one (frames with given masks): the oldest such frame is dropped when one more arrives.
    """

    def __init__(self, top_k: int | None, max_frames: int = 0, similarity: str = "dot"):
        self.top_k = top_k
        self.similarity = similarity
        self.max_frames = max_frames
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.starts: list[int] = []
        self.frames: list[tuple[int, bool]] = []  # (entries, permanent) of each stored frame, oldest first

    @property
    def num_objects(self) -> int:
        return len(self.starts)

    def add(self, key: torch.Tensor, masks: torch.Tensor, permanent: bool = False) -> None:
        """key (1, C, h, w), masks (K, h, w) for the objects known so far (new ones join here)."""
        key, masks = key.flatten(2).float(), masks.flatten(1).float()
        n = 0 if self.keys is None else self.keys.shape[2]
        self.starts += [n] * (masks.shape[0] - len(self.starts))
        self.frames.append((key.shape[2], permanent))
        if self.keys is None:
            self.keys, self.values = key, masks
            return
        old = F.pad(self.values, (0, 0, 0, masks.shape[0] - self.values.shape[0]))
        self.keys = torch.cat([self.keys, key], 2)
        self.values = torch.cat([old, masks], 1)
        if self.max_frames > 0 and sum(not p for _, p in self.frames) > self.max_frames:
            self._drop(next(i for i, (_, p) in enumerate(self.frames) if not p))

    def _drop(self, index: int) -> None:
        """Remove stored frame `index`; objects that joined later start that many entries earlier."""
        a = sum(size for size, _ in self.frames[:index])
        b = a + self.frames.pop(index)[0]
        self.keys = torch.cat([self.keys[:, :, :a], self.keys[:, :, b:]], 2)
        self.values = torch.cat([self.values[:, :a], self.values[:, b:]], 1)
        self.starts = [s - (b - a) if s >= b else s for s in self.starts]  # objects join at permanent frames

    def read(self, query_key: torch.Tensor) -> torch.Tensor:
        """Coarse masks (1, K, h, w) of the query key (1, C, h, w)."""
        _, _, h, w = query_key.shape
        sim = similarity(self.keys, query_key.flatten(2), self.similarity)
        out = torch.empty(self.num_objects, h * w, device=sim.device)
        for start in sorted(set(self.starts)):
            objs = [k for k, s in enumerate(self.starts) if s == start]
            affinity = softmax_affinity(sim[:, start:], self.top_k)
            out[objs] = readout_masks(affinity, self.values[None, objs, start:])[0]
        return out.view(1, -1, h, w)


def _load_frame(frame: Frame) -> np.ndarray:
    if isinstance(frame, np.ndarray):
        return frame
    with Image.open(frame) as im:
        return np.asarray(im.convert("RGB"))


def _scaled_size(h: int, w: int, size: int) -> tuple[int, int]:
    """Shorter side to `size`, longer side int(size * long / short) (torchvision Resize / XMem)."""
    short = min(h, w)
    return int(h / short * size), int(w / short * size)


def _pad16(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad the last two dims to multiples of 16, split evenly (upstream `pad_divide_by`)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % 16, (-w) % 16
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return F.pad(x, pad), pad


def _unpad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    left, right, top, bottom = pad
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


@torch.inference_mode()
def propagate_video(model: STMAE, frames: Sequence[Frame], first_masks: dict[int, np.ndarray], *,
                    mem_every: int = 5, top_k: int | None = 30, size: int = 480, max_mem_frames: int = 0,
                    device: torch.device | str = "cpu", amp: bool = False) -> list[np.ndarray]:
    """Segment a video from its given masks.

    frames: RGB uint8 HxWx3 arrays or image paths, in order. first_masks: frame index -> HxW uint8 id map
    holding the objects given in that frame (0 = background; frame 0 for DAVIS, later frames too for
    YouTube-VOS). top_k <= 0 or None: full softmax. size <= 0: no resizing. max_mem_frames K > 0: the
    memory keeps the frames with given masks plus the newest K others (0: every memory frame, as upstream).
    Returns one HxW uint8 id map per frame, at the original size, with the original ids.
    """
    device = torch.device(device)
    model.eval()
    n = len(frames)
    ids: list[int] = []  # original id of internal object k + 1, in order of first appearance
    memory = MaskMemory(top_k, max_mem_frames, model.similarity)
    last_mem = 0
    outputs: list[np.ndarray] = []
    for ti in range(n):
        rgb = _load_frame(frames[ti])
        h0, w0 = rgb.shape[:2]
        given = first_masks.get(ti)
        if given is not None:
            given = np.asarray(given)
            if given.shape != (h0, w0):
                raise ValueError(f"mask of frame {ti} is {given.shape}, frame is {(h0, w0)}")
            ids += [int(i) for i in np.unique(given) if i != 0 and int(i) not in ids]
        if not ids:
            outputs.append(np.zeros((h0, w0), np.uint8))
            continue
        hs, ws = _scaled_size(h0, w0, size) if size > 0 else (h0, w0)
        image = normalize_uint8(torch.tensor(rgb, device=device).permute(2, 0, 1))[None]
        if (hs, ws) != (h0, w0):
            image = F.interpolate(image, size=(hs, ws), mode="bilinear", align_corners=False)
        image, pad = _pad16(image)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            f16, f8, f4 = model.encode_key(image)
            given_ids = set() if given is None else {int(i) for i in np.unique(given)} - {0}
            pred = None  # probabilities with background (K_mem + 1, H, W), already soft-aggregated
            if memory.num_objects and not all(i in given_ids for i in ids):
                coarse = memory.read(f16)
                pred = model.decode_coarse(image, f16, f8, f4, coarse)[2][0].float()
        if given is not None:
            g = torch.tensor(given, device=device)[None, None].float()
            g = _pad16(F.interpolate(g, size=(hs, ws), mode="nearest"))[0][0, 0]
            onehot = torch.stack([(g == i).float() for i in ids])
            if pred is not None:
                fg = F.pad(pred[1:], (0, 0, 0, 0, 0, len(ids) - (pred.shape[0] - 1)))
                fg[:, g > 0] = 0
                for k, i in enumerate(ids):
                    if i not in given_ids:
                        onehot[k] = fg[k]
            prob = aggregate(onehot, dim=0)[1]
        else:
            prob = pred  # the model's output as is (aggregating it again would sharpen it twice)
        if (given is not None or ti - last_mem >= mem_every) and ti != n - 1:
            memory.add(f16.float(), F.interpolate(prob[None, 1:], size=f16.shape[-2:], mode="bilinear",
                                                  align_corners=False)[0], permanent=given is not None)
            last_mem = ti
        prob = F.interpolate(_unpad(prob, pad)[None], size=(h0, w0), mode="bilinear", align_corners=False)[0]
        lut = torch.tensor([0] + ids, dtype=torch.uint8, device=device)
        outputs.append(lut[prob.argmax(0)].cpu().numpy())
    return outputs
