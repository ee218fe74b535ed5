#!/usr/bin/env bash
# Set everything up and run the whole test suite (the command CI runs).
# Extra arguments go to pytest, e.g. scripts/test.sh -k router -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test,codecs,bench,gpu,gpudecode
export TCP_NODELAY=1
exec .venv/bin/python -m pytest "$@"
