#!/usr/bin/env bash
# Set up everything pacsguard needs on a fresh Debian/Ubuntu machine:
# system peers used by the tests (installed with apt when missing) and a virtual
# environment in .venv with pacsguard installed in editable mode.
# Usage: scripts/setup.sh [extras]   (default extras: test,codecs)
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-test,codecs}"

# Real peers the tests talk to (dcmtk, Orthanc, dicom3tools, openssl, systemd-analyze,
# chattr). In CI a missing peer is a failure, so install what is missing. The demo needs
# none of them: scripts/demo.sh sets PACSGUARD_NO_PEERS=1.
need_pkgs=()
if [ -z "${PACSGUARD_NO_PEERS:-}" ]; then
    for pair in storescu:dcmtk storescp:dcmtk echoscu:dcmtk dcmdump:dcmtk Orthanc:orthanc \
                dciodvfy:dicom3tools openssl:openssl systemd-analyze:systemd chattr:e2fsprogs; do
        tool=${pair%%:*} pkg=${pair#*:}
        if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
            case " ${need_pkgs[*]-} " in *" $pkg "*) ;; *) need_pkgs+=("$pkg") ;; esac
        fi
    done
fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing system packages: ${need_pkgs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
    # The orthanc package may start a system-wide Orthanc; the tests start their own.
    if command -v invoke-rc.d >/dev/null 2>&1; then $SUDO invoke-rc.d orthanc stop >/dev/null 2>&1 || true; fi
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
