"""The contract between a model's training code and the Ray Train loop (`raytrain.train.loop`).

A task owns its model(s), optimizer and schedule and runs one optimizer step on a batch. It knows nothing
about Ray: it runs in a plain process (tests, benchmarks) or inside a Ray Train worker, where
`torch.distributed` is already initialised and the task wraps its trainable model in DDP itself.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch


class TrainTask(Protocol):
    def start(self, batch: dict[str, torch.Tensor]) -> None:
        """Called once, on every rank, with the first batch of a run that starts from step 0 (not on resume),
        before the step-0 validation and the first step."""

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """One optimizer step on `batch` (tensors already on the task's device). `step` counts from 0 and
        drives the lr schedule. Returns scalar metrics (at least "loss"), already `.item()`-ed."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (weights, teacher, optimizer), loadable with torch.load(weights_only=True)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
