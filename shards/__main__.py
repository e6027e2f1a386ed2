"""`python -m shards pack ...` and `python -m shards check ...` (see shards/pack.py and shards/check.py)."""
from __future__ import annotations

import argparse
import sys

from .check import check
from .errors import DEBUG_HELP, run_cli
from .pack import pack


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shards", description="WebDataset shards of VOS datasets",
                                epilog=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="pack one split of a DAVIS/YouTube-VOS folder into tar shards")
    pk.add_argument("--src", required=True, help="dataset folder or URI")
    pk.add_argument("--layout", choices=("davis", "ytvos"), default=None, help="default: detected from --src")
    pk.add_argument("--split", default="train",
                    help="train, val/valid, test, valid_all_frames (YouTube-VOS), all (DAVIS: every sequence)")
    pk.add_argument("--out", required=True, help="output folder or URI (s3://bucket/prefix)")
    pk.add_argument("--shard-size", default="200MB", help="target shard size (e.g. 200MB, 1GB)")
    pk.add_argument("--resize-short", type=int, default=None,
                    help="resize frames whose short side is larger than this (default: keep the bytes)")
    pk.add_argument("--prefix", default=None, help="shard name prefix (default: <layout>-<split>)")
    ck = sub.add_parser("check", help="read every shard against index.parquet and report problems")
    ck.add_argument("out", help="packed folder or URI")
    a = p.parse_args(argv)
    if a.command == "pack":
        table = pack(a.src, a.out, a.layout, a.split, shard_size=a.shard_size, resize_short=a.resize_short,
                     prefix=a.prefix, verbose=True)
        shards = len(set(table.column("shard").to_pylist()))
        total = sum(table.column("bytes").to_pylist())
        print(f"packed {table.num_rows} videos into {shards} shards ({total / 1e6:.1f} MB) in {a.out}")
        return 0
    report = check(a.out)
    for problem in report.problems:
        print(problem)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m shards"))
