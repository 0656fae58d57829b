#!/usr/bin/env bash
# The GPU check in one command (see benchmarks/gpu_check.py): benchmarks/gpu_check.sh OUT_DIR [--budget S]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--budget S]}" "${@:2}"
