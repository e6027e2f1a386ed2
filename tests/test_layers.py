"""The package's layers point one way: every import (module level or inside a function) goes to the same layer
or a lower one, and the model, loss and training-step code imports nothing of Ray."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module belongs to the layer of the longest prefix that names it.
LAYERS = [
    ("shards",),
    ("raytrain.config", "raytrain.method", "raytrain.runtime", "raytrain.checkpoints", "raytrain.augment",
     "raytrain.matching"),
    ("raytrain.models", "raytrain.losses", "raytrain.data"),
    ("raytrain.train",),
    ("raytrain.eval",),
    ("raytrain.methods",),
    ("raytrain.tune",),
    ("raytrain.cli",),
]
NO_RAY = ("raytrain.models", "raytrain.losses", "raytrain.train.task", "raytrain.train.smtc_task",
          "raytrain.train.stmae_task", "raytrain.augment", "raytrain.matching", "raytrain.config",
          "raytrain.checkpoints", "raytrain.method")


def _layer(module: str) -> int | None:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    return rank


def _modules() -> dict[str, Path]:
    out = {}
    for folder in ("raytrain", "shards"):
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(p for p in parts if p != "__init__")] = path
    return out


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def test_every_module_has_a_layer():
    assert [m for m in _modules() if m not in ("raytrain", "shards") and _layer(m) is None] == []


def test_no_import_points_up():
    upward = []
    for module, path in _modules().items():
        own = _layer(module)
        if own is None:
            continue
        for line, name in _imports(path):
            rank = _layer(name)
            if rank is not None and rank > own:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {name} ({LAYERS[rank][0]} is above "
                              f"{LAYERS[own][0]})")
    assert upward == []


def test_models_losses_and_steps_import_no_ray():
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                 for module, path in _modules().items() if module.startswith(NO_RAY)
                 for line, name in _imports(path) if name == "ray" or name.startswith("ray.")]
    assert offenders == []


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from raytrain.eval.validate import validate\n")
    assert [_layer(name) for _, name in _imports(bad)] == [_layer("raytrain.eval"), _layer("raytrain.eval")]
    assert _layer("raytrain.eval") > _layer("raytrain.train.loop")


METHOD_BRANCH = re.compile(r"""(==|!=)\s*["'](smtc|stmae)["']|["'](smtc|stmae)["']\s*(==|!=|if\b)"""
                           r"""|\bin \(["'](smtc|stmae)["']|\{["'](smtc|stmae)["']\s*:""")


def _method_branches(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if METHOD_BRANCH.search(line)]


def test_no_method_branch_outside_the_method_modules():
    """Method-specific code is asked of the method record (raytrain.methods); nothing else tests a name."""
    found = [f"{path.relative_to(ROOT)}: {line}"
             for folder in ("raytrain", "shards", "jobs") for path in sorted((ROOT / folder).rglob("*.py"))
             if "raytrain/methods" not in path.as_posix() for line in _method_branches(path.read_text())]
    assert found == []


def test_the_method_branch_check_sees_a_branch():
    assert _method_branches('if job == "smtc":\n    x = {"stmae": 1}\nkind = "smtc" if d else "vit"\n') == [
        'if job == "smtc":', 'x = {"stmae": 1}', 'kind = "smtc" if d else "vit"']
    assert _method_branches('METHOD = Method(name="smtc")\nrun_state(source, "smtc")\n') == []
