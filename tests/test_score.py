"""`python -m raytrain.eval score`: the CLI, the library, the per-object reference of bench/score.py, bad results
folders, pyarrow URIs and the Ray fan-out all give the same numbers or an error naming sequence and frame."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raytrain.eval import davis, score
from shards.palettes import DAVIS_PALETTE
from shards.synth import write_davis

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_score", ROOT / "bench" / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8))
    im.putpalette(DAVIS_PALETTE)
    im.save(path)


def _results(root: Path, task: str, out: Path) -> Path:
    """GT with objects shifted, one dropped now and then and, unsupervised, ids in 1..20 plus a spurious box."""
    rng = np.random.default_rng(0)
    for seq in davis.read_sequence_list(root, "val"):
        gt, frames = davis.read_gt(davis.annotation_dir(root, task), seq)
        gt = np.where(gt == davis.VOID, 0, gt)
        ids = np.arange(256)
        if task == davis.UNSUP:
            ids[1:gt.max() + 1] = rng.choice(np.arange(1, 21), int(gt.max()), replace=False)
        n = int(gt.max())
        for t, (label, frame) in enumerate(zip(gt, frames)):
            pred = ids[np.roll(label, (int(rng.integers(-2, 3)), int(rng.integers(-3, 4))), axis=(0, 1))]
            if t % 3 == 0:
                pred[pred == ids[1 + t % n]] = 0
            if task == davis.UNSUP and t > 1:
                pred[2:9, 2:12] = np.setdiff1d(np.arange(1, 21), ids[1:n + 1])[-1]
            _save(out / seq / f"{frame}.png", pred)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("score")
    write_davis(root / "davis", num_videos=3, num_frames=6, height=64, max_objects=3, num_val=3, seed=1)
    _results(root / "davis", davis.SEMI, root / "semi")
    _results(root / "davis", davis.UNSUP, root / "unsup")
    return root


def _csv(folder: Path, name: str) -> list[list[str]]:
    return [line.split(",") for line in (folder / name).read_text().splitlines()]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "raytrain.eval", "score", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


@pytest.mark.parametrize("task", ["semi", "unsup"])
def test_cli_library_and_reference_agree(data, tmp_path, task):
    results = data / task
    run = _cli("--davis", str(data / "davis"), "--results", str(results), "--task", task, "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr
    library = score.score_folder(data / "davis", results, task)
    names = davis.read_sequence_list(data / "davis", "val")
    reference = _bench().reference(data / "davis", results, names, score.protocol(task))
    assert library == reference  # bit for bit
    assert 0.1 < library.jf_mean < 0.95
    assert _csv(tmp_path, "global_results-val.csv") == [list(davis.GLOBAL_COLUMNS),
                                                         ["%.3f" % v for v in library.as_dict().values()]]
    rows = _csv(tmp_path, "per-sequence_results-val.csv")
    assert rows[1:] == [[name, "%.3f" % j, "%.3f" % f] for name, j, f in library.objects]
    assert "| J&F-Mean |" in run.stdout and f"| {'%.3f' % library.jf_mean} |" in run.stdout


def test_results_csvs_go_into_the_results_folder_by_default(data, tmp_path):
    for png in (data / "semi").rglob("*.png"):
        _save(tmp_path / png.relative_to(data / "semi"), np.asarray(Image.open(png)))
    run = _cli("--davis", str(data / "davis"), "--results", str(tmp_path), "--task", "semi",
               "--sequences", davis.read_sequence_list(data / "davis", "val")[0])
    assert run.returncode == 0, run.stderr
    assert len(_csv(tmp_path, "global_results-val.csv")) == 2


def _bad_copy(data: Path, dst: Path, task: str, edit) -> tuple[str, str]:
    """A copy of the results of `task` with one file edited by `edit(path)`; returns (sequence, frame)."""
    for png in (data / task).rglob("*.png"):
        _save(dst / png.relative_to(data / task), np.asarray(Image.open(png)))
    seq = davis.read_sequence_list(data / "davis", "val")[1]
    frame = sorted(p.stem for p in (dst / seq).glob("*.png"))[2]
    edit(dst / seq / f"{frame}.png")
    return seq, frame


def test_bad_results_fail_naming_sequence_and_frame(data, tmp_path):
    root = data / "davis"
    seq, frame = _bad_copy(data, tmp_path / "gone", "semi", lambda p: p.unlink())
    with pytest.raises(FileNotFoundError, match=rf"sequence '{seq}', frame {frame}: .* not found"):
        score.score_folder(root, tmp_path / "gone", "semi")

    def high_id(path: Path) -> None:
        ids = np.asarray(Image.open(path)).copy()
        ids[0, 0] = 9
        _save(path, ids)

    seq, frame = _bad_copy(data, tmp_path / "id", "semi", high_id)
    with pytest.raises(ValueError, match=rf"sequence '{seq}', frame {frame}: predicted id 9 is higher than the"):
        score.score_folder(root, tmp_path / "id", "semi")
    seq, frame = _bad_copy(data, tmp_path / "size", "unsup",
                           lambda p: _save(p, np.asarray(Image.open(p))[:, :-2]))
    with pytest.raises(ValueError, match=rf"sequence '{seq}', frame {frame}: .*112x64 \(WxH\) but the ground truth "
                                         r"is 114x64"):
        score.score_folder(root, tmp_path / "size", "unsup")
    seq, _ = _bad_copy(data, tmp_path / "noseq", "semi", lambda p: None)
    for png in (tmp_path / "noseq" / seq).iterdir():
        png.unlink()
    (tmp_path / "noseq" / seq).rmdir()
    with pytest.raises(FileNotFoundError, match=rf"no results folder for sequence\(s\) '{seq}'"):
        score.score_folder(root, tmp_path / "noseq", "semi")
    with pytest.raises(FileNotFoundError, match=r"no ground truth for sequence\(s\) 'nope'"):
        score.score_folder(root, data / "semi", "semi", sequences=["nope"])
    seq, frame = _bad_copy(data, tmp_path / "cli", "semi", lambda p: p.unlink())
    run = _cli("--davis", str(root), "--results", str(tmp_path / "cli"), "--task", "semi")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(f"python -m raytrain.eval score: error: sequence "
                                                          f"'{seq}', frame {frame}: ")
    run = _cli("--results", str(data / "semi"))
    assert run.returncode == 2 and "--davis is required" in run.stderr


def test_upper_case_png_suffixes_score_as_lower_case(data, tmp_path):
    """Every other GT and result file saved as `.PNG` scores as with `.png`; a frame under both is refused."""
    root = tmp_path / "davis"
    shutil.copytree(data / "davis", root)
    for png in sorted(Path(davis.annotation_dir(root, davis.SEMI)).rglob("*.png"))[::2]:
        png.rename(png.with_suffix(".PNG"))
    for i, png in enumerate(sorted((data / "semi").rglob("*.png"))):
        dst = tmp_path / "semi" / png.relative_to(data / "semi")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, dst.with_suffix(".PNG") if i % 2 else dst)
    assert len(list((tmp_path / "semi").rglob("*.PNG"))) > 5
    expected = score.score_folder(data / "davis", data / "semi", "semi")
    assert score.score_folder(root, tmp_path / "semi", "semi") == expected
    seq = davis.read_sequence_list(root, "val")[0]
    upper = sorted((tmp_path / "semi" / seq).glob("*.PNG"))[0]
    shutil.copy(upper, upper.with_suffix(".png"))
    with pytest.raises(ValueError, match=rf"{seq}: frame {upper.stem} is there twice \({upper.stem}.png and "
                                         rf"{upper.stem}.PNG\)|{seq}: frame {upper.stem} is there twice "
                                         rf"\({upper.stem}.PNG and {upper.stem}.png\)"):
        score.score_folder(root, tmp_path / "semi", "semi")


def test_num_workers_starts_ray_only_when_it_pays(data, tmp_path, monkeypatch):
    """A set too small to repay a private Ray's start is scored in this process, with a line saying why."""
    run = _cli("--davis", str(data / "davis"), "--results", str(data / "semi"), "--task", "semi", "--num_workers",
               "2", "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert "[score] scoring in this process, not on 2 Ray workers: the other 2 sequences take about" in run.stdout
    assert "less than starting Ray takes" in run.stdout and "Started a local Ray" not in run.stdout + run.stderr

    jobs = score.plan(data / "davis", data / "semi", "semi")
    serial = davis.combine(score.score_jobs(jobs))
    monkeypatch.setattr(score, "cluster_address", lambda: None)
    monkeypatch.setattr("ray.is_initialized", lambda: False)

    def no_ray() -> None:
        raise AssertionError("Ray started")

    monkeypatch.setattr(score, "init_ray", no_ray)
    lines: list[str] = []
    assert davis.combine(score.score_jobs(jobs, 2, lines.append)) == serial
    assert len(lines) == 1 and "less than starting Ray takes" in lines[0]
    monkeypatch.setattr(score, "RAY_START_S", -1.0)  # a start that always pays, on an idle machine
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    with pytest.raises(AssertionError, match="Ray started"):
        score.score_jobs(jobs, 2, lines.append)


def test_pyarrow_file_uris(data, tmp_path):
    expected = score.score_folder(data / "davis", data / "unsup", "unsup")
    got = score.score_folder(f"file://{data / 'davis'}", f"file://{data / 'unsup'}", "unsup",
                             out=f"file://{tmp_path / 'csv'}")
    assert got == expected
    assert _csv(tmp_path / "csv", "global_results-val.csv")[1][0] == "%.3f" % expected.jf_mean


@pytest.mark.slow
def test_ray_fan_out_gives_the_serial_numbers(ray_local, data, tmp_path):
    for task in ("semi", "unsup"):
        serial = score.score_folder(data / "davis", data / task, task)
        assert score.score_folder(data / "davis", data / task, task, num_workers=2, log=lambda s: None) == serial
    seq, frame = _bad_copy(data, tmp_path / "gone", "semi", lambda p: p.unlink())
    with pytest.raises(FileNotFoundError, match=rf"sequence '{seq}', frame {frame}: .* not found"):
        score.score_folder(data / "davis", tmp_path / "gone", "semi", num_workers=2, log=lambda s: None)
