#!/usr/bin/env bash
# Create .venv with Python 3.11 and install seqops with its dev tools. Idempotent: a second
# run with unchanged pyproject.toml / requirements does nothing but check.
#
# torch: on a machine without an NVIDIA GPU the CPU build (requirements/torch-cpu.txt) is
# installed *first*, so the project's own `torch` range is already satisfied and pip never
# downloads CUDA wheels. With `nvidia-smi` present the default (CUDA) build is used.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
      PYTHON=$candidate; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "setup: Python 3.11 not found (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.seqops-installed
inputs="pyproject.toml requirements/torch-cpu.txt scripts/setup.sh"
if [ -f "$stamp" ] && [ -z "$(find $inputs -newer "$stamp" 2>/dev/null)" ] \
   && .venv/bin/python -c 'import torch, ray, mlflow, great_expectations, pipelines' 2>/dev/null; then
  echo "setup: .venv is up to date"
  exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: NVIDIA GPU found, installing the default (CUDA) torch build"
  .venv/bin/python -m pip install -q "torch>=2.4,<3"
else
  echo "setup: no GPU, installing the CPU build of torch"
  .venv/bin/python -m pip install -q -r requirements/torch-cpu.txt
fi
.venv/bin/python -m pip install -q -e ".[dev]"
touch "$stamp"
echo "setup: done"
