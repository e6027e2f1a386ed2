"""SMTC training frames decoded on the training device (`--decode gpu`).

The data tasks (`raytrain.data.pipeline`) check each JPEG's header and ship the planned bytes as they are:
a clip is one binary value (its T JPEGs back to back) plus their sizes. The training worker decodes a whole
batch in one `torchvision.io.decode_jpeg(..., device=...)` call (nvJPEG on CUDA, libjpeg-turbo on the CPU),
then resizes on the device with the CPU path's filter (bilinear, antialiased; aspect ignored, as upstream).
`device_batches` decodes one batch ahead, in a thread and on a CUDA stream of its own, while the training
step runs. SMTC's photometric augmentation already runs on the device (`raytrain.augment`).

Against the CPU path (`decode.smtc_frame`) frames differ only by the decoders and the resize arithmetic:
- every frame is decoded at full size (the CPU path decodes at 1/2, 1/4 or 1/8 scale where the source is at
  least twice the training size);
- on CUDA the resize runs in float32 and rounds (on the CPU it is torchvision's uint8 kernel, as there);
- nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's.
The measured differences are stated in tests/test_device_decode.py (CPU) and tests/test_gpu.py (CUDA).

Imports nothing of Ray: it runs in the Train worker and in the GPU checks (`bench/gpu_check.sh`).
"""
from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

BYTES_KEYS = ("jpegs", "jpeg_sizes", "video")  # columns of an encoded batch that do not become tensors
OnError = Callable[[str, Exception], None]  # (clip name, error) of a clip dropped from its batch


def decode_frames(jpegs: Sequence[torch.Tensor], size: int, device: torch.device | str) -> torch.Tensor:
    """JPEGs (1-D uint8 CPU tensors) -> RGB uint8 N x 3 x size x size on `device`, decoded in one batch.
    Frames of the same source size are resized together."""
    device = torch.device(device)
    images = decode_jpeg(list(jpegs), mode=ImageReadMode.RGB, device=device)
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=device)
    groups: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    for i, im in enumerate(images):
        groups[tuple(im.shape[-2:])].append(i)
    for hw, idx in groups.items():
        x = torch.stack([images[i] for i in idx])
        if hw != (size, size):
            x = TF.resize(x, [size, size], InterpolationMode.BILINEAR, antialias=True)
        out[idx] = x
    return out


def split_jpegs(jpegs: np.ndarray, sizes: np.ndarray) -> list[torch.Tensor]:
    """The N x T JPEGs of an encoded batch ("jpegs": N clips' bytes, "jpeg_sizes": N x T), clip by clip, as
    1-D uint8 views of one buffer."""
    buf = torch.frombuffer(bytearray(b"".join(jpegs)), dtype=torch.uint8)
    return list(torch.split(buf, sizes.reshape(-1).tolist()))


def smtc_batch(batch: dict[str, np.ndarray], size: int, device: torch.device | str,
               on_error: OnError | None = None) -> dict[str, torch.Tensor]:
    """An encoded SMTC batch (numpy columns from the stream) -> the CPU stream's batch, on `device`:
    "frames" uint8 B x T x 3 x size x size and the other columns as tensors. A clip whose JPEGs fail to decode
    is dropped from the batch (and passed to `on_error`), so the batch can be shorter."""
    n, t = batch["jpeg_sizes"].shape
    jpegs = split_jpegs(batch["jpegs"], batch["jpeg_sizes"])
    keep = list(range(n))
    try:
        frames = decode_frames(jpegs, size, device)
    except RuntimeError:  # find the clips at fault
        parts, keep = [], []
        for i in range(n):
            try:
                parts.append(decode_frames(jpegs[i * t:(i + 1) * t], size, device))
                keep.append(i)
            except RuntimeError as e:
                if on_error is not None:
                    on_error(f"{batch['video'][i]} frames {batch['frame_idx'][i].tolist()}", e)
        frames = torch.cat(parts) if parts else torch.empty((0, 3, size, size), dtype=torch.uint8, device=device)
    out = {"frames": frames.view(len(keep), t, 3, size, size)}
    for key, value in batch.items():
        if key not in BYTES_KEYS:
            out[key] = torch.as_tensor(value[keep]).to(device)
    return out


def _prefetched(items: Iterable[Any], fn: Callable[[Any], Any], depth: int) -> Iterator[Any]:
    """fn(item) for each item, computed `depth` items ahead in one worker thread."""
    it, end = iter(items), object()

    def work() -> Any:
        item = next(it, end)
        return end if item is end else fn(item)

    with ThreadPoolExecutor(1, thread_name_prefix="device-decode") as pool:
        pending = collections.deque(pool.submit(work) for _ in range(depth))
        while (out := pending.popleft().result()) is not end:
            pending.append(pool.submit(work))
            yield out


def device_batches(batches: Iterable[dict[str, np.ndarray]], size: int, device: torch.device | str,
                   on_error: OnError | None = None, depth: int = 1) -> Iterator[dict[str, torch.Tensor]]:
    """`smtc_batch` of each encoded batch, decoded `depth` batches ahead of the consumer; batches whose clips
    all failed are left out. On CUDA the decode runs on a stream of its own, and the consumer's stream waits
    for it before using the frames."""
    device = torch.device(device)
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def decode(b: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], Any]:
        if stream is None:
            return smtc_batch(b, size, device, on_error), None
        with torch.cuda.stream(stream):
            out = smtc_batch(b, size, device, on_error)
            done = torch.cuda.Event()
            done.record(stream)
        return out, done

    for out, done in _prefetched(batches, decode, depth):
        if done is not None:
            current = torch.cuda.current_stream(device)
            current.wait_event(done)
            for v in out.values():
                v.record_stream(current)  # its memory is not reused before the consumer's work on it is done
        if len(out["frames"]):
            yield out
