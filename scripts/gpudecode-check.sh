#!/usr/bin/env bash
# gpu-decode on a machine with a CUDA GPU: the GPU comparison test and the benchmark.
# Usage: scripts/gpudecode-check.sh [OUT_DIR]   (default: .)  writes gpudecode-tests.txt
# and gpudecode.json there. Needs .venv (scripts/setup.sh) and the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
mkdir -p "$out"
.venv/bin/pip install -q -e ".[test,codecs,gpudecode]"
nvidia-smi -L || true
# -rs: a skipped GPU comparison says why (it is skipped, never passed, without a GPU)
TCP_NODELAY=1 .venv/bin/python -m pytest tests/plugins/test_gpudecode.py -q -rs -s -p no:cacheprovider \
    2>&1 | tee "$out/gpudecode-tests.txt"
.venv/bin/python -m tests.benchmarks.gpudecode --json "$out/gpudecode.json"
