"""The demo: run pacsguard on its embedded default config and push real images through.

Started by scripts/demo.sh after set-up. Works in ./pacsguard-data (inbound, spool,
outbound), like the daemon's default config.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

# Real images with distinct SOP Instance UIDs: native, RLE and JPEG compressed, an RT plan.
SAMPLES = ["CT_small.dcm", "MR_small.dcm", "emri_small_RLE.dcm", "rtplan.dcm", "SC_rgb.dcm",
           "SC_rgb_jpeg_dcmtk.dcm"]
PACSGUARD = [sys.executable, "-m", "pacsguard.daemon.cli"]


def status() -> dict:
    out = subprocess.run(PACSGUARD + ["status", "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> int:
    data = Path("pacsguard-data")
    if data.exists():
        shutil.rmtree(data)
    print("== starting: pacsguard run (embedded default config, ./pacsguard-data)")
    log = open("pacsguard-demo.log", "w")
    proc = subprocess.Popen(PACSGUARD + ["run"], stdout=log, stderr=subprocess.STDOUT)
    try:
        inbound = data / "inbound"
        for _ in range(100):
            if inbound.is_dir():
                break
            time.sleep(0.1)
        print(f"== dropping {len(SAMPLES)} real DICOM images and one text file into {inbound}/")
        for name in SAMPLES:
            shutil.copy(get_testdata_file(name), inbound / f".{name}.tmp")
            (inbound / f".{name}.tmp").rename(inbound / name)  # renamed in: complete
        (inbound / "not-an-image.txt").write_text("scanned consent form\n")
        deadline = time.time() + 60
        while time.time() < deadline:
            st = status()
            if st["jobs"]["done"] + st["jobs"]["quarantined"] >= len(SAMPLES) + 1:
                break
            time.sleep(0.5)
        print("== pacsguard status")
        subprocess.run(PACSGUARD + ["status"], check=True)
        print("== pacsguard quarantine list")
        subprocess.run(PACSGUARD + ["quarantine", "list"], check=True)
        outs = sorted((data / "outbound").rglob("*.dcm"))
        print(f"== {len(outs)} protected images under {data / 'outbound'}/ (Study/Series/SOP.dcm), e.g.")
        ds = pydicom.dcmread(outs[0], stop_before_pixels=True)
        print(f"   {outs[0]}")
        print(f"   ImageComments = {ds.get('ImageComments')!r}  (set by the set-attributes stage)")
        ok = st["jobs"]["done"] == len(SAMPLES) == len(outs) and st["jobs"]["quarantined"] == 1
        print("== demo", "OK" if ok else "INCOMPLETE", f"(log: pacsguard-demo.log)")
        return 0 if ok else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


if __name__ == "__main__":
    sys.exit(main())
