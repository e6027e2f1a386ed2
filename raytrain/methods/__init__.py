"""The methods raytrain trains, one module each, and the registry the front-ends ask by name.

Adding a method: write its config (and sweep config) in `raytrain.config`, its training task (a class with
`start`, `train_step`, `state_dict`, `load_state_dict` and `model`, knowing nothing of Ray) in `raytrain.train`,
its validation in `raytrain.eval.validate` and its evaluation model in `raytrain.eval.models`; then a module
here holding its `Method` record, listed in `METHODS`, and a `jobs/train_<name>.py` (docs/usage.md, "Adding a
method").
"""
from __future__ import annotations

from raytrain.method import Method
from raytrain.methods import smtc, stmae

METHODS: dict[str, Method] = {m.name: m for m in (smtc.METHOD, stmae.METHOD)}


def get(name: str) -> Method:
    """The method registered as `name`."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r} (one of {', '.join(METHODS)})")
    return METHODS[name]
