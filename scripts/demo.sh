#!/usr/bin/env bash
# Set everything up and run a demo of the daemon on its embedded default config:
# real DICOM images (pydicom's bundled files) are dropped into ./pacsguard-data/inbound,
# picked up, de-identified, the patient data hidden in the pixels and encrypted, written
# under ./pacsguard-data/outbound, and one is decrypted and re-identified by the "partner" key
# (original name, ID and pixels, bit for bit).
set -euo pipefail
cd "$(dirname "$0")/.."
PACSGUARD_NO_PEERS=1 scripts/setup.sh test,codecs
exec .venv/bin/python scripts/demo.py "$@"
