"""Distributed evaluation: checkpoints are read and checked on the driver; on a real local Ray runtime 2 actors
give the serial numbers, a video whose actor dies is resubmitted to a fresh actor, and errors name the video."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
import torch

from raytrain.config import to_dict
from raytrain.config import SMTCConfig, STMAEConfig
from raytrain.eval import davis
from raytrain.eval.distributed import EvalPool, item_cost
from raytrain.eval.video_io import VideoResult
from raytrain.cli.evaluate import main_smtc
from raytrain.config import EvalSMTCConfig, EvalSTMAEConfig
from raytrain.eval.models import build_model
from raytrain.methods.smtc import eval_model as smtc_spec
from raytrain.methods.stmae import eval_model as stmae_spec
from raytrain.models.stmae import SIMILARITIES, STMAE
from raytrain.train.smtc_task import SMTCTask

# Functions of this module run inside Ray workers, where the tests folder is not importable.
ray.cloudpickle.register_pickle_by_value(__import__(__name__))


def test_checkpoints_are_read_on_the_driver(tmp_path, one_thread):
    cfg = SMTCConfig(num_slots=4, num_instance=2, resolution=64)
    task = SMTCTask(cfg, "cpu")
    (tmp_path / "run").mkdir()
    torch.save({"task": task.state_dict(), "step": 5, "config": to_dict(cfg), "job": "smtc"},
               tmp_path / "run" / "state.pt")
    torch.save({"model_state_dict": task.model.state_dict()}, tmp_path / "released.pth")
    torch.save(task.model.encoder.state_dict(), tmp_path / "dino.pth")
    student = task.model.state_dict()

    run = smtc_spec(EvalSMTCConfig(task="discovery", checkpoint=str(tmp_path / "run")))  # architecture from the run
    assert run.arch == {"num_slots": 4, "num_instances": 2, "resolution": 64, "instance_mask": "logit"}
    assert not run.random
    assert all(torch.equal(v, student[k]) for k, v in build_model(run, "cpu").state_dict().items())
    for spec in (smtc_spec(EvalSMTCConfig(checkpoint=str(tmp_path / "run" / "state.pt"))),
                 smtc_spec(EvalSMTCConfig(dino_path=str(tmp_path / "dino.pth"), preset="dino"))):
        assert spec.kind == "vit"
        assert all(torch.equal(v, student[f"encoder.{k}"]) for k, v in spec.weights.items())
    released = EvalSMTCConfig(task="discovery", checkpoint=str(tmp_path / "released.pth"))
    with pytest.raises(ValueError, match="shape mismatch for slot_attention.slots_mu"):
        smtc_spec(released)  # the defaults describe the released 16 x 4 model
    assert smtc_spec(dataclasses.replace(released, num_slots=4, num_instance=2, resolution=64)).kind == "smtc"
    with pytest.raises(ValueError, match="discovery needs SMTC"):
        smtc_spec(EvalSMTCConfig(task="discovery", dino_path=str(tmp_path / "dino.pth")))
    with pytest.raises(ValueError, match="'smtc' training checkpoint, expected 'stmae'"):
        stmae_spec(EvalSTMAEConfig(checkpoint=str(tmp_path / "run")))
    with pytest.raises(FileNotFoundError, match="without state.pt"):
        smtc_spec(EvalSMTCConfig(checkpoint=str(tmp_path)))
    assert smtc_spec(EvalSMTCConfig()).random


def test_the_instance_mask_a_run_was_trained_with_is_the_one_it_is_evaluated_with(tmp_path, one_thread):
    for mode in ("logit", "softmax"):
        cfg = SMTCConfig(num_slots=4, num_instance=2, resolution=64, instance_mask=mode)
        task = SMTCTask(cfg, "cpu")
        assert task.model.slot_attention.instance_mask == mode
        run = tmp_path / mode
        run.mkdir()
        torch.save({"task": task.state_dict(), "step": 1, "config": to_dict(cfg), "job": "smtc"}, run / "state.pt")
        # The eval flag describes released files only: a run checkpoint carries its own choice.
        other = "softmax" if mode == "logit" else "logit"
        spec = smtc_spec(EvalSMTCConfig(task="discovery", checkpoint=str(run), instance_mask=other))
        assert spec.arch["instance_mask"] == mode
        assert build_model(spec, "cpu").slot_attention.instance_mask == mode
    # A run checkpoint from before the option was trained with the softmax mask.
    state = torch.load(tmp_path / "logit" / "state.pt", weights_only=True)
    del state["config"]["instance_mask"]
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / "state.pt")
    old = smtc_spec(EvalSMTCConfig(task="discovery", checkpoint=str(tmp_path / "old")))
    assert build_model(old, "cpu").slot_attention.instance_mask == "softmax"
    # A released file: upstream's raw-logit mask unless told otherwise.
    torch.save({"model_state_dict": state["task"]["model"]}, tmp_path / "released.pth")
    released = EvalSMTCConfig(task="discovery", checkpoint=str(tmp_path / "released.pth"), num_slots=4,
                              num_instance=2, resolution=64)
    assert build_model(smtc_spec(released), "cpu").slot_attention.instance_mask == "logit"
    soft = dataclasses.replace(released, instance_mask="softmax")
    assert build_model(smtc_spec(soft), "cpu").slot_attention.instance_mask == "softmax"
    with pytest.raises(ValueError, match="--instance_mask must be one of logit, softmax"):
        SMTCTask(SMTCConfig(num_slots=4, num_instance=2, resolution=64, instance_mask="hard"), "cpu")


def test_the_key_similarity_a_stmae_run_was_trained_with_is_the_one_it_is_evaluated_with(tmp_path):
    weights = STMAE(value_dim=64).state_dict()
    for mode in SIMILARITIES:
        run = tmp_path / mode
        run.mkdir()
        config = to_dict(STMAEConfig(similarity=mode))
        torch.save({"task": {"model": weights}, "step": 1, "config": config, "job": "stmae"}, run / "state.pt")
        other = "l2" if mode == "dot" else "dot"
        spec = stmae_spec(EvalSTMAEConfig(checkpoint=str(run), similarity=other))
        assert spec.arch["similarity"] == mode
        assert build_model(spec, "cpu").similarity == mode
    state = torch.load(tmp_path / "l2" / "state.pt", weights_only=True)
    del state["config"]["similarity"]  # a run from before the option: dot products
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / "state.pt")
    assert build_model(stmae_spec(EvalSTMAEConfig(checkpoint=str(tmp_path / "old"))), "cpu").similarity == "dot"
    torch.save(weights, tmp_path / "released.pth")  # a released file: the flag, upstream's dot by default
    for mode in SIMILARITIES:
        spec = stmae_spec(EvalSTMAEConfig(checkpoint=str(tmp_path / "released.pth"), similarity=mode))
        assert build_model(spec, "cpu").similarity == mode
    assert stmae_spec(EvalSTMAEConfig(similarity="l2")).arch["similarity"] == "l2"  # random weights too


@pytest.mark.slow
def test_two_actors_give_the_serial_numbers(ray_local, synth_davis, tmp_path, capsys, one_thread):
    common = ["--data", str(synth_davis), "--split", "all", "--overlays", "1", "--overlay_format", "png"]
    serial = main_smtc([*common, "--serial", "--out", str(tmp_path / "serial")])  # 1 thread, as in each actor
    parallel = main_smtc([*common, "--num_actors", "2", "--out", str(tmp_path / "ray")])
    out = capsys.readouterr().out
    assert "2 actor(s) ready on cpu" in out and "[eval] 4/4 videos" in out

    assert parallel["videos"] == serial["videos"] == 4
    assert parallel["global_results"] == serial["global_results"]
    assert parallel["objects"] == serial["objects"]
    seqs = sorted(p.name for p in (synth_davis / "JPEGImages" / "480p").iterdir())
    for seq in seqs:  # identical masks
        for png in (tmp_path / "serial" / seq).glob("*.png"):
            assert png.read_bytes() == (tmp_path / "ray" / seq / png.name).read_bytes()
    # ... and the written masks give the same numbers with the DAVIS evaluator.
    report = davis.evaluate_semi(synth_davis, tmp_path / "ray", sequences=seqs, write=False)
    assert parallel["global_results"] == pytest.approx(report.as_dict())
    assert (tmp_path / "ray" / "global_results-all.csv").read_text() == \
        (tmp_path / "serial" / "global_results-all.csv").read_text()
    assert (tmp_path / "ray" / "overlays" / f"{seqs[0]}.png").is_file()


@dataclass
class Job:
    id: str
    marker: str = ""  # the first actor to run this job dies, after leaving this file behind
    broken: bool = False  # the job raises an error (bad data)
    frames: tuple[str, ...] = ()
    height: int = 0
    width: int = 0


def _build(spec: int, device: torch.device) -> int:
    return spec


def _work(model: int, item: Job, device: torch.device) -> VideoResult:
    if item.broken:
        raise ValueError("corrupt frame")
    if item.marker and not os.path.exists(item.marker):
        Path(item.marker).write_text(str(os.getpid()))
        os._exit(1)
    return VideoResult(item.id, {"00000": f"{model}-{item.id}-{os.getpid()}".encode()}, None)


@pytest.mark.slow
def test_dead_actors_video_is_resubmitted_and_errors_name_the_video(ray_local, tmp_path):
    marker = tmp_path / "died"
    logs: list[str] = []
    pool = EvalPool(_build, 7, _work, num_actors=2, max_restarts=0, max_task_retries=0, log=logs.append)
    try:
        results = pool.map([Job("a"), Job("b", str(marker)), Job("c")])
        assert [r.name for r in results] == ["a", "b", "c"]
        assert all(r.masks["00000"].startswith(f"7-{r.name}-".encode()) for r in results)
        dead = marker.read_text()
        assert results[1].masks["00000"].decode().split("-")[-1] != dead  # finished in another process
        assert any("resubmitting" in line for line in logs)
        assert any(line.startswith("[eval] 3/3 videos") for line in logs)
        with pytest.raises(RuntimeError, match="video 'x'.*corrupt frame"):  # not retried: bad data stays bad
            pool.map([Job("x", broken=True)])
    finally:
        pool.shutdown()


def test_the_largest_videos_go_out_first_and_results_keep_the_input_order(ray_local):
    jobs = [Job("short", frames=("0",) * 5, height=10, width=10), Job("long", frames=("0",) * 50, height=10, width=10),
            Job("wide", frames=("0",) * 5, height=10, width=200), Job("none")]
    assert [item_cost(j) for j in jobs] == [500, 5000, 10000, 0]
    arrived: list[str] = []
    pool = EvalPool(_build, 1, _work, num_actors=1, log=lambda line: None)
    try:
        results = pool.map(jobs, on_result=lambda i, r: arrived.append(r.name))
    finally:
        pool.shutdown()
    assert arrived == ["wide", "long", "short", "none"]
    assert [r.name for r in results] == ["short", "long", "wide", "none"]
