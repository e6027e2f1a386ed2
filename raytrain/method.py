"""What a training method is to the rest of raytrain: one `Method` record per method.

The records live in `raytrain.methods` (one module each: `smtc.py`, `stmae.py`), which the job front-ends, the
sweeps and the evaluation jobs ask by name (`raytrain.methods.get`). The layers below them (the data plan, the
Ray Train loop) are handed a record and read its fields; nothing else branches on a method's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Method:
    """Everything method-specific: configs, defaults of the small synthetic runs, the training task, its clips,
    its checks, its validation and its evaluation model."""

    name: str  # run folders, checkpoints ("job") and log lines carry it
    config: type  # training config (a `raytrain.config.RunConfig`)
    sweep_config: type  # its sweep (`SweepOptions` + the config, searched flags as lists; see `searched`)
    eval_config: type  # its evaluation job's config (a `raytrain.config.EvalConfig`)
    task: Callable[..., Any]  # task(cfg, device): `start(batch)`, `train_step(batch, step)`, `state_dict()`, `model`
    clip: Callable[[Any], dict[str, Any]]  # cfg -> the method's `raytrain.data.plan.StreamConfig` fields
    synthetic: tuple[str, str]  # (layout, split) of the synthetic set the default run trains on
    loss_terms: tuple[str, ...]  # the loss parts and diagnostics every report holds besides "loss"
    val_metrics: tuple[str, ...]  # what `validate` returns (with --val_data)
    # (task, cfg, (i, n)) -> the scores of the i-th of n shares of the val videos, on the task's device
    val_scores: Callable[[Any, Any, tuple[int, int]], Any]
    val_join: Callable[[list[Any]], dict[str, float]]  # the shares' scores, in share order -> metrics
    check_weights: Callable[[Any], None]  # cfg -> None; raises a UserError naming the weights flag
    advice: Callable[[Any], list[str]]  # cfg -> warnings: what about the run is likely not what the user meant
    eval_model: Callable[[Any], Any]  # evaluation config -> `raytrain.eval.models.ModelSpec`
    small: dict[str, Any] = field(default_factory=dict)  # the default run's overrides (no --data)
    small_sweep: dict[str, Any] = field(default_factory=dict)
    small_eval: dict[str, Any] = field(default_factory=dict)

    def validate(self, task: Any, cfg: Any) -> dict[str, float]:
        """The validation metrics of `task.model` on all of `cfg`'s val videos (one share)."""
        return self.val_join([self.val_scores(task, cfg, (0, 1))])

    @property
    def searched(self) -> tuple[str, ...]:
        """The flags a sweep searches (the sweep config's `SEARCHED`)."""
        return self.sweep_config.SEARCHED
