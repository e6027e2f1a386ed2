"""Run a script or a module with `ray` unimportable, as on the GPU machine (which has no Ray).

    python bench/gpu/without_ray.py SCRIPT [ARGS...]
    python bench/gpu/without_ray.py -m MODULE [ARGS...]

Any `import ray` (or `ray.*`) in what runs raises ImportError, so a GPU-side import chain that reaches Ray
fails here as it would there. bench/gpu_check.sh runs every step through it.
"""
from __future__ import annotations

import runpy
import sys


def main() -> None:
    if len(sys.argv) < 2 or (sys.argv[1] == "-m" and len(sys.argv) < 3):
        sys.exit(__doc__)
    sys.modules["ray"] = None  # type: ignore[assignment]
    if sys.argv[1] == "-m":
        module = sys.argv[2]
        sys.argv = [module, *sys.argv[3:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
