"""The built-in synthetic data sets of the default runs, generated on first use into the cache
(`$RAYTRAIN_CACHE`, default `~/.cache/raytrain`) and reused after that.

- `synthetic_videos(layout)`: a YouTube-VOS- or DAVIS-layout set; `synthetic_shards(layout, split)`: one of
  its splits packed into shards (training). The training jobs validate on the val split of the DAVIS one.
- `synthetic_davis` / `synthetic_vos`: small DAVIS-2016/2017 and YouTube-VOS roots (evaluation).
- `synthetic_val`: a DAVIS-layout root whose val split the training jobs validate on.

A set is written to a temp folder and renamed, so a job never sees a half-written one.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from shards.pack import pack, read_index
from shards.synth import write_davis, write_davis2016, write_ytvos

CACHE = Path(os.environ.get("RAYTRAIN_CACHE", "~/.cache/raytrain")).expanduser()


def cache_dir() -> Path:
    return CACHE / "synthetic"


def _once(root: Path, make: Callable[[Path], Any]) -> str:
    """Generate a data set into `root` unless a complete one is there (written to a temp folder, then renamed)."""
    if not root.is_dir():
        print(f"generating a synthetic data set in {root} ...", flush=True)
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        make(tmp)
        try:
            tmp.rename(root)
        except OSError:  # another job made it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return str(root)


# The default runs' sets: 12 train and 4 val videos of 16 frames, 128 px high (small enough that validating
# STMAE on the CPU at every checkpoint takes seconds, not minutes).
SYNTHETIC_SET = dict(num_videos=16, num_frames=16, height=128, num_val=4)


def synthetic_videos(layout: str, seed: int = 0) -> str:
    """A small synthetic `layout` set (`SYNTHETIC_SET`)."""
    write = write_davis if layout == "davis" else write_ytvos
    return _once(cache_dir() / f"{layout}-{SYNTHETIC_SET['height']}p-s{seed}" / "videos",
                 lambda p: write(p, seed=seed, **SYNTHETIC_SET))


def synthetic_shards(layout: str, split: str, seed: int = 0) -> str:
    """The `split` of `synthetic_videos(layout, seed)`, packed into shards on first use.

    A cached set packed by an older version is re-indexed (its shards are kept).
    """
    videos = synthetic_videos(layout, seed)
    out = Path(videos).parent / "shards"
    try:
        read_index(str(out))
        return str(out)
    except FileNotFoundError:
        pass
    except ValueError as e:  # packed by an older version
        print(f"re-indexing {out}: {e}", flush=True)
    pack(videos, str(out), layout=layout, split=split)
    return str(out)


def synthetic_davis(seed: int = 0, root: Path | None = None) -> str:
    """DAVIS-2017 layout (both annotation folders): 6 sequences (3 val) x 10 frames, 96 x 171."""
    return _once(root or cache_dir() / f"eval-davis-s{seed}",
                 lambda p: write_davis(p, num_videos=6, num_frames=10, height=96, num_val=3, seed=seed))


def synthetic_vos(dataset: str, seed: int = 0, root: Path | None = None) -> str:
    """A small synthetic set in the layout of `dataset` (D16, D17, Y18/Y19)."""
    if dataset == "D17":
        return synthetic_davis(seed, root)
    if dataset == "D16":
        return _once(root or cache_dir() / f"eval-davis2016-s{seed}",
                     lambda p: write_davis2016(p, seed=seed, num_videos=6, num_frames=10, height=96, num_val=3))
    return _once(root or cache_dir() / f"eval-ytvos-s{seed}",
                 lambda p: write_ytvos(p, num_videos=5, num_frames=6, height=96, num_val=2, seed=seed))


def synthetic_val(seed: int = 0) -> str:
    """A small synthetic DAVIS-layout validation set (2 val videos, 8 frames, 64 px high)."""
    return _once(cache_dir() / f"davis-val-s{seed}",
                 lambda p: write_davis(p, num_videos=3, num_frames=8, height=64, num_val=2, seed=seed + 1))


# The benchmark sets' built-in synthetic sizes: (videos, frames).
SYNTHETIC_BENCHMARKS = {"jhmdb": (3, 8), "vip": (2, 6), "davis2016": (2, 6), "segtrackv2": (3, 6), "fbms": (2, 22)}


def synthetic_benchmark(dataset: str, seed: int = 0) -> str:
    """A small synthetic set in `dataset`'s layout (`shards.bench_synth`), generated once into the cache."""
    from .bench_synth import write_benchmark

    videos, frames = SYNTHETIC_BENCHMARKS[dataset]
    if dataset == "davis2016":
        return _once(cache_dir() / f"eval-{dataset}-s{seed}",
                     lambda p: write_davis2016(p, num_videos=videos, num_frames=frames, height=64, num_val=videos,
                                               seed=seed))
    return _once(cache_dir() / f"eval-{dataset}-s{seed}",
                 lambda p: write_benchmark(dataset, p, num_videos=videos, num_frames=frames, seed=seed))
