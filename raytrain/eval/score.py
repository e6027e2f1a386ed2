"""Score a folder of result PNGs against DAVIS-2017 ground truth, as the official davis2017-evaluation does.

`score_folder` reads `<results>/<sequence>/<frame>.png` for the sequences of `ImageSets/2017/<set>.txt`
(`ImageSets/2019` for unsupervised test sets) or the ones given, the frames that have ground truth
(semi-supervised: all but the first and last), and applies `raytrain.eval.davis`'s rules and metrics. It
runs in this process, or with `num_workers > 1` as one Ray task per sequence (one CPU each) on the cluster
Ray is connected to. Either way the per-sequence scores are the same and are combined in set order, so the
numbers are too. Plain tasks rather than `raytrain.eval.distributed`'s actor pool: there is no model to
hold, and tasks start on Ray's idle workers, where the pool first starts actor processes that import torch
(seconds on a small machine, a large share of scoring a DAVIS-sized set).

The model-evaluation jobs score their videos with the same `davis.score_semi` / `score_unsup` on the
actors and finish through `write_results`, so there is one scorer.

The DAVIS root and the results may be local folders or any URI pyarrow understands (`s3://`, `gs://`,
`file://`). Bad input raises an error naming the sequence, frame or file: a sequence without a results
folder or without ground truth, a missing frame, a PNG that is not single-channel or not at the GT size, an
id above the first GT frame's object count (semi-supervised) or above `max_proposals` (unsupervised).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import PurePath
from typing import Callable, Sequence

import pyarrow.fs as pafs

from raytrain.eval import davis
from shards.cluster import cluster_address, init_ray
from shards.errors import NotFound, UsageError, UserError
from shards.fanout import fan_out
from shards.layout import resolve
from shards.paths import local_path, output_entries, prepare_local_folder, probe_uri, refuse_overlap, relation

TASKS = {"semi": davis.SEMI, "semi-supervised": davis.SEMI, "unsup": davis.UNSUP, "unsupervised": davis.UNSUP}


def protocol(task: str) -> str:
    """davis.SEMI or davis.UNSUP from `semi` / `unsup` (or the official names)."""
    if task not in TASKS:
        raise UsageError(f"--task must be semi or unsup (or semi-supervised / unsupervised), got {task!r}")
    return TASKS[task]


@dataclass(frozen=True)
class SequenceJob:
    """One sequence to score: where its ground truth and results are, and the protocol."""

    sequence: str
    davis_root: str
    results: str
    task: str
    max_proposals: int = 20
    gt_bytes: int = 0  # size of its ground-truth PNGs: what the fan-out orders by


CSV_FILE = re.compile(r"\.?(global|per-sequence)_results-.+\.csv(\..+\.tmp)?")  # what `write_csv` writes


def check_output(davis_root: str, results: str, out: str = "") -> None:
    """Where the CSV files go, checked before any scoring. `out` (default: the results folder, as the official
    toolkit) must not be, lie inside or hold the DAVIS root, nor lie inside or hold the results folder. An `out`
    other than the results folder must be new, empty, or hold only this scorer's CSV files; a local one is made
    here and must take a file."""
    if not out:
        how = relation(results, davis_root)
        if how is not None:
            raise UsageError(f"--results {results}: without --out the CSV files go there, and it "
                             f"{'is' if how == 'same' else 'lies inside' if how == 'inside' else 'holds'} --davis "
                             f"{davis_root}, which is never written to: give --out outside it")
        local = local_path(results)
        if local is not None and os.path.isdir(local):
            prepare_local_folder("--results (where the CSV files go without --out)", local)
        elif local is None:
            probe_uri("--results (where the CSV files go without --out)", results)
        return
    refuse_overlap("--out", out, [("--davis", davis_root), ("--results", results)], allow_same=("--results",))
    if relation(out, results) == "same":
        return
    foreign = [e for e in output_entries("--out", out) if not CSV_FILE.fullmatch(e)]
    if foreign:
        raise UserError(f"--out {out}: holds files that are not this scorer's CSV files ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}); give a new or empty folder, or the --results "
                        f"folder")
    local = local_path(out)
    if local is not None:
        prepare_local_folder("--out", local)
    else:
        probe_uri("--out", out)


def score_sequence(job: SequenceJob) -> davis.SequenceScores:
    return davis.per_sequence(job.davis_root, job.results, job.sequence, job.task, max_proposals=job.max_proposals)


def _sizes(uri: str) -> dict[str, int]:
    """Bytes of the PNGs one level below `uri`, per sub-folder (one listing)."""
    fs, base = resolve(uri)
    out: dict[str, int] = {}
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
        rel = info.path[len(base.rstrip("/")) + 1:].split("/")
        if info.type == pafs.FileType.File and len(rel) == 2 and rel[1][-4:].lower() == ".png":
            out[rel[0]] = out.get(rel[0], 0) + info.size
    return out


def _folders(uri: str) -> set[str]:
    fs, base = resolve(uri)
    info = fs.get_file_info(base)
    if info.type != pafs.FileType.Directory:
        raise NotFound(f"{uri}: results folder not found")
    return {i.base_name for i in fs.get_file_info(pafs.FileSelector(base)) if i.type == pafs.FileType.Directory}


def plan(davis_root: str, results: str, task: str, set_name: str = "val", sequences: Sequence[str] | None = None,
         max_proposals: int = 20) -> list[SequenceJob]:
    """The sequences to score, in set order, after checking that each has ground truth and a results folder."""
    task = protocol(task)
    davis_root, results = os.fspath(davis_root), os.fspath(results)
    names = list(sequences) if sequences else davis.read_sequence_list(davis_root, set_name, task)
    if not names:
        raise UserError(f"no sequences to score (set {set_name!r} of {davis_root} is empty)")
    gt = _sizes(davis.annotation_dir(davis_root, task))
    no_gt = [s for s in names if s not in gt]
    if no_gt:
        raise NotFound(f"{davis.annotation_dir(davis_root, task)}: no ground truth for sequence(s) "
                       f"{', '.join(repr(s) for s in no_gt[:5])}")
    present = _folders(results)
    missing = [s for s in names if s not in present]
    if missing:
        raise NotFound(f"{results}: no results folder for sequence(s) "
                       f"{', '.join(repr(s) for s in missing[:5])} (expected <sequence>/<frame>.png)")
    return [SequenceJob(s, davis_root, results, task, max_proposals, gt[s]) for s in names]


RAY_START_S = 10.0  # about what starting a private Ray and its first workers takes on a small machine


def _worth_starting_ray(jobs: Sequence[SequenceJob], first_s: float, num_workers: int,
                        log: Callable[[str], None]) -> bool:
    """Whether the sequences after the first, estimated from its time per GT byte, save more on `num_workers`
    of this machine's idle CPUs (its CPUs less the load other programs put on them) than starting a private
    Ray costs; says why not when not."""
    rest = first_s * sum(j.gt_bytes for j in jobs[1:]) / max(jobs[0].gt_bytes, 1)
    cpus = os.cpu_count() or 1
    idle = max(1, min(cpus, round(cpus - max(os.getloadavg()[0] - 1, 0))))  # this process is one of the load
    usable = min(num_workers, idle)
    saved = rest * (1 - 1 / usable)
    if saved > RAY_START_S:
        return True
    log(f"[score] scoring in this process, not on {num_workers} Ray workers: the other {len(jobs) - 1} sequences "
        f"take about {rest:.1f} s here, and {usable} worker(s) on the {idle} idle CPU(s) of this machine's {cpus} "
        f"would save about {saved:.1f} s, less than starting Ray takes (about {RAY_START_S:.0f} s)")
    return False


def score_jobs(jobs: Sequence[SequenceJob], num_workers: int = 1, log: Callable[[str], None] = print
               ) -> list[davis.SequenceScores]:
    """Per-sequence scores in the order of `jobs`: in this process, or as Ray tasks, `num_workers` at a time.

    With Ray not yet initialised and no cluster to join, a private Ray starts only when it pays: the first
    sequence is scored here, and the rest go to Ray only if they would save more time on the workers than
    Ray's start costs (`RAY_START_S`); otherwise they are scored here too and a line says why. The largest
    sequences (by GT bytes) go out first, so no worker is left with a long one at the end. A task whose
    worker dies is retried (twice); an error a sequence raises (a bad file or id) is raised here as it is.
    """
    if num_workers <= 1 or len(jobs) < 2:
        return [score_sequence(j) for j in jobs]
    import ray

    out: list[davis.SequenceScores | None] = [None] * len(jobs)
    todo = range(len(jobs))
    if not ray.is_initialized():
        if cluster_address() is None:
            start = time.perf_counter()
            out[0] = score_sequence(jobs[0])
            todo = range(1, len(jobs))
            if not _worth_starting_ray(jobs, time.perf_counter() - start, num_workers, log):
                return [out[0], *(score_sequence(j) for j in jobs[1:])]
        init_ray()
    task = ray.remote(num_cpus=1, max_retries=2)(score_sequence)
    rest = list(todo)
    start, finished = time.perf_counter(), [len(jobs) - len(rest)]

    def done(k: int, _: davis.SequenceScores) -> None:
        finished[0] += 1
        log(f"[score] {finished[0]}/{len(jobs)} sequences ({jobs[rest[k]].sequence}), "
            f"{(finished[0] - len(jobs) + len(rest)) / (time.perf_counter() - start):.2f} sequences/s")

    def bad_data(k: int, e: BaseException) -> bool:
        cause = getattr(e, "cause", None)
        if isinstance(cause, (ValueError, FileNotFoundError)):  # a bad file or id, named by the sequence
            raise cause from None
        return False

    scored = fan_out(len(rest), lambda k: task.remote(jobs[rest[k]]), slots=num_workers,
                     cost=lambda k: jobs[rest[k]].gt_bytes, on_result=done, on_error=bad_data, stall_s=600)
    for k, i in enumerate(rest):
        out[i] = scored[k]
    return out  # type: ignore[return-value]


def score_folder(davis_root: str | os.PathLike, results: str | os.PathLike, task: str, *, set_name: str = "val",
                 sequences: Sequence[str] | None = None, num_workers: int = 1, max_proposals: int = 20,
                 out: str | os.PathLike | None = None, log: Callable[[str], None] = print) -> davis.Report:
    """Global and per-object DAVIS numbers of a results folder; with `out`, the official CSVs are written there."""
    jobs = plan(os.fspath(davis_root), os.fspath(results), task, set_name, sequences, max_proposals)
    scores = score_jobs(jobs, num_workers, log)
    return write_results(scores, out, set_name)[0] if out is not None else davis.combine(scores)


def summary_table(report: davis.Report, title: str) -> str:
    """Markdown: the global row, then one row per object."""
    cols = davis.GLOBAL_COLUMNS
    lines = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
             "| " + " | ".join(f"{v:.3f}" for v in report.as_dict().values()) + " |", "",
             "| Sequence | J-Mean | F-Mean |", "|---|---|---|"]
    lines += [f"| {name} | {j:.3f} | {f:.3f} |" for name, j, f in report.objects]
    return "\n".join(lines)


def write_results(scores: Sequence[davis.SequenceScores], out: str | os.PathLike, set_name: str
                  ) -> tuple[davis.Report, tuple[PurePath, PurePath]]:
    """Combine per-sequence scores and write the official CSV files into `out` (a folder or a URI)."""
    report = davis.combine(scores)
    return report, davis.write_csv(report, out, set_name)
