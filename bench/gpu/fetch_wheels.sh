#!/usr/bin/env bash
# Download the wheels bench/gpu_check.sh installs on a GPU machine without a package registry into
# bench/gpu/wheels/: simplejpeg (the CPU decode path), for CPython 3.12 (the GPU machine's) and this machine's
# Python. Everything else the check needs (torch, torchvision, timm, numpy, scipy, pillow, pyarrow, pytest)
# is on that machine already. Other versions: PY_VERSIONS="3.11 3.12 3.13" bash bench/gpu/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
version="$(python3 -c 'import simplejpeg; print(simplejpeg.__version__)' 2>/dev/null || echo 1.9.0)"
here="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
for v in ${PY_VERSIONS:-3.12 $here}; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$v" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d wheels "simplejpeg==$version"
done
ls -l wheels
