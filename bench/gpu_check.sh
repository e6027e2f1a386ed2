#!/usr/bin/env bash
# The GPU check (issue 16), one command on a GPU machine as it comes (torch and timm installed; no Ray, no
# package registry): `pytest -m gpu tests/test_gpu.py`, the SMTC and STMAE step benchmarks at the upstream
# configurations in bf16, STMAE inference frames/s at 480p, JPEG decode throughput on the cores and on the
# GPU, the data wait of the SMTC step with --decode cpu and gpu, and a profile with channels-last and
# torch.compile trials. Within 8 minutes it writes gpu_check.md (the tables) and gpu_check.log to $OUT
# (default: the current folder).
#
#   bash bench/gpu_check.sh              # on the GPU machine; without a GPU it says so and exits 0
#   bash bench/gpu_check.sh --cpu-smoke  # every step at a tiny size on the CPU (CI: tests/test_gpu_check.py)
#
# simplejpeg (the CPU decode path) travels as a wheel in bench/gpu/wheels/: run bench/gpu/fetch_wheels.sh once
# where pip reaches PyPI. PYTHON picks the interpreter (default python3).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1
py="${PYTHON:-python3}"

if ! "$py" -c "import torch" 2>/dev/null; then
    echo "gpu_check: torch is not importable with $py" >&2
    exit 1
fi
if [[ "${1:-}" != "--cpu-smoke" ]] && ! "$py" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing measured."
    echo "gpu_check: bash bench/gpu_check.sh --cpu-smoke runs every step at a tiny size on the CPU."
    exit 0
fi
if ! "$py" -c "import simplejpeg" 2>/dev/null; then
    site="$(mktemp -d)"
    if ! "$py" -m pip install -q --no-index --no-deps --find-links bench/gpu/wheels --target "$site" simplejpeg; then
        echo "gpu_check: simplejpeg is not installed and bench/gpu/wheels/ has no wheel for this Python:" \
             "run bench/gpu/fetch_wheels.sh where pip reaches PyPI, and bring bench/gpu/wheels/ along" >&2
        exit 1
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" bench/gpu/gpu_check.py "$@"
