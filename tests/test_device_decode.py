"""`--decode gpu` on the CPU: `device_decode` with device "cpu" against the CPU pipeline's frames, the encoded
batches the data tasks ship, corrupt clips, the one-batch-ahead prefetch, and STMAE's refusal.

Measured here (synthetic DAVIS frames, quality 90), device "cpu" against `decode.smtc_frame`:
- where the CPU path decodes at full scale (480p sources at 256², or sources at the training size): identical;
- where it decodes at 1/2 scale (720p at 256², 64 px at 32²): max |Δ| 29 and 26 grey levels, mean 0.88 and
  1.68, 99th percentile 5 and 13 — the reduced-scale decode, not the decoder (docs/faithfulness.md, "Frame decoding").
On CUDA, nvJPEG and the float resize add their own differences (tests/test_gpu.py states the bound).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raytrain.config import SMTCConfig, STMAEConfig, flag_problems
from raytrain.data import decode, device_decode, pipeline
from raytrain.data.plan import StreamConfig
from shards.synth import write_davis


def _jpegs(root: Path, height: int, videos: int = 2, frames: int = 4) -> list[bytes]:
    write_davis(root, num_videos=videos, num_frames=frames, height=height, num_val=1)
    return [f.read_bytes() for f in sorted(root.glob("JPEGImages/480p/*/*.jpg"))]


def _tensors(jpegs: list[bytes]) -> list[torch.Tensor]:
    return [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]


def _diff(jpegs: list[bytes], size: int) -> np.ndarray:
    ref = np.stack([decode.smtc_frame(b, size) for b in jpegs]).astype(int)
    got = device_decode.decode_frames(_tensors(jpegs), size, "cpu").permute(0, 2, 3, 1).numpy().astype(int)
    return np.abs(ref - got)


@pytest.mark.parametrize("height,size", [(480, 256), (64, 64)])
def test_full_scale_frames_equal_the_cpu_pipeline(tmp_path, height, size):
    assert _diff(_jpegs(tmp_path, height), size).max() == 0


@pytest.mark.parametrize("height,size,mean,p99", [(720, 256, 1.2, 8), (64, 32, 2.2, 16)])
def test_half_scale_cpu_frames_differ_by_the_reduced_decode_only(tmp_path, height, size, mean, p99):
    d = _diff(_jpegs(tmp_path, height), size)
    assert d.mean() < mean and np.percentile(d, 99) <= p99


def _clips(jpegs: list[bytes], t: int) -> list[dict]:
    """Clip dicts as `pipeline.read_item` makes them."""
    return [{"jpgs": [memoryview(b) for b in jpegs[i:i + t]], "frame_idx": np.arange(t), "position": i // t,
             "step": 0, "seed": i, "video_ordinal": i // t, "video": f"v{i // t}"} for i in range(0, len(jpegs), t)]


def test_encoded_batch_decodes_to_the_cpu_batch(tmp_path):
    jpegs = _jpegs(tmp_path, 64, videos=3)
    scfg = StreamConfig(sampler="gap", seed=0, rank=0, world_size=1, batch_size=3, steps=1, clips_per_video=1,
                        num_frames=4, size=64, decode="gpu")
    clips = _clips(jpegs, 4)
    cpu = pipeline.decode_clips(clips, scfg)
    encoded = pipeline.encoded_clips(clips, scfg)
    assert encoded["jpegs"].dtype == object and encoded["jpeg_sizes"].shape == (3, 4)
    batch = device_decode.smtc_batch(encoded, 64, "cpu")
    assert batch.keys() == {"frames", "frame_idx", "position", "video_ordinal"}
    assert torch.equal(batch["frames"], torch.from_numpy(cpu["frames"]).permute(0, 1, 4, 2, 3))
    for key in ("frame_idx", "position", "video_ordinal"):
        assert torch.equal(batch[key], torch.from_numpy(cpu[key]))


def test_corrupt_clips_are_dropped_and_named(tmp_path):
    jpegs = _jpegs(tmp_path, 64, videos=3)
    jpegs[1] = jpegs[1][:20] + bytes(len(jpegs[1]) - 20)  # clip 0: header garbled -> dropped by the data task
    jpegs[9] = jpegs[9][: len(jpegs[9]) // 2]  # clip 2: truncated body -> dropped on the device
    scfg = StreamConfig(sampler="gap", seed=0, rank=0, world_size=1, batch_size=3, steps=1, clips_per_video=1,
                        num_frames=4, size=32, decode="gpu")
    encoded = pipeline.encoded_clips(_clips(jpegs, 4), scfg)
    assert encoded["video"].tolist() == ["v1", "v2"]
    errors: list[str] = []
    batch = device_decode.smtc_batch(encoded, 32, "cpu", lambda name, e: errors.append(name))
    assert batch["video_ordinal"].tolist() == [1] and batch["frames"].shape == (1, 4, 3, 32, 32)
    assert errors == ["v2 frames [0, 1, 2, 3]"]


def test_device_batches_keep_order_and_skip_empty_batches(tmp_path):
    jpegs = _jpegs(tmp_path, 64, videos=3)
    jpegs[4:8] = [b[: len(b) // 2] for b in jpegs[4:8]]  # the only clip of batch 1 fails on the device
    scfg = StreamConfig(sampler="gap", seed=0, rank=0, world_size=1, batch_size=1, steps=1, clips_per_video=1,
                        num_frames=4, size=32, decode="gpu")
    encoded = [pipeline.encoded_clips([c], scfg) for c in _clips(jpegs, 4)]
    out = list(device_decode.device_batches(iter(encoded), 32, "cpu", depth=2))
    assert [int(b["position"][0]) for b in out] == [0, 2]


def test_stmae_refuses_gpu_decode():
    with pytest.raises(ValueError, match="clips without masks only"):
        StreamConfig(sampler="max_skip", seed=0, rank=0, world_size=1, batch_size=1, steps=1, clips_per_video=1,
                     num_frames=4, size=32, decode="gpu")
    assert any(p.startswith("--decode must be cpu for STMAE") for p in flag_problems(STMAEConfig(decode="gpu")))
    assert not any("--decode" in p for p in flag_problems(SMTCConfig(decode="gpu")))
    assert any(p.startswith("--decode must be one of cpu, gpu") for p in flag_problems(SMTCConfig(decode="nvjpeg")))
