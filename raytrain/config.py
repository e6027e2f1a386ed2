"""Config dataclasses as command-line flags: one dataclass per job, one flag per field."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


def _field_type(cls: type, field: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    tp = hints[field.name]
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "types.UnionType":  # Optional[X] -> X
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    return tp


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--name` flag per dataclass field (bools become `--name / --no-name`)."""
    for f in dataclasses.fields(cls):
        tp = _field_type(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        flag = f"--{f.name}"
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(tp) in (list, tuple):
            (item,) = set(typing.get_args(tp)) - {Ellipsis}
            parser.add_argument(flag, type=item, nargs="+", default=default, help=help_text)
        else:
            parser.add_argument(flag, type=tp, default=default, help=help_text)


def parse(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None) -> T:
    """Parse `argv` into an instance of the config dataclass `cls`."""
    parser = argparse.ArgumentParser(description=description or cls.__doc__,
                                     allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser, cls)
    ns = parser.parse_args(argv)
    return cls(**vars(ns))


def given_fields(cls: type, argv: Sequence[str] | None) -> set[str]:
    """Names of the fields whose flags appear in `argv` (to tell user choices from defaults)."""
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS, allow_abbrev=False, add_help=False)
    add_arguments(parser, cls)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    ns, _ = parser.parse_known_args(argv)
    return set(vars(ns))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """Build `cls` from a dict, ignoring keys that are not fields (e.g. Tune bookkeeping)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})
