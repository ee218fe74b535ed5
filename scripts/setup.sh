#!/usr/bin/env bash
# Set up everything pacsguard needs on a fresh Debian/Ubuntu machine:
# system peers used by the tests (installed with apt when missing) and a virtual
# environment in .venv with pacsguard installed in editable mode.
# Usage: scripts/setup.sh [extras]   (default extras: test,codecs)
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-test,codecs}"

# System tools the tests talk to. In CI a missing peer is a failure, so install them.
need_pkgs=()
command -v systemd-analyze >/dev/null 2>&1 || need_pkgs+=(systemd)
command -v chattr >/dev/null 2>&1 || need_pkgs+=(e2fsprogs)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing system packages: ${need_pkgs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
echo "setup: installing pacsguard[$EXTRAS] into .venv"
log=$(mktemp)
if ! .venv/bin/python -m pip install -q -e ".[$EXTRAS]" >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
fi
rm -f "$log"
echo "setup: done ($(.venv/bin/pacsguard --version))"
