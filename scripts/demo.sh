#!/usr/bin/env bash
# Set everything up and run a demo of the daemon on its embedded default config:
# real DICOM images (pydicom's bundled files) are dropped into ./pacsguard-data/inbound,
# picked up, de-identified and encrypted, written under ./pacsguard-data/outbound,
# and one is decrypted back by the "partner" key.
set -euo pipefail
cd "$(dirname "$0")/.."
PACSGUARD_NO_PEERS=1 scripts/setup.sh test,codecs
exec .venv/bin/python scripts/demo.py "$@"
