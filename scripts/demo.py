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
        shutil.rmtree(data)  # (its demo keys too: made again on start)
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
        deadline = time.time() + 90
        while time.time() < deadline:
            st = status()
            if st["jobs"]["done"] + st["jobs"]["quarantined"] >= len(SAMPLES) + 1:
                break
            time.sleep(0.5)
        print("== pacsguard status")
        subprocess.run(PACSGUARD + ["status"], check=True)
        print("== pacsguard quarantine list  (secondary captures may carry burned-in names: held by policy)")
        subprocess.run(PACSGUARD + ["quarantine", "list"], check=True)
        outs = sorted((data / "outbound").rglob("*.dcm"))
        print(f"== {len(outs)} protected objects under {data / 'outbound'}/ (Study/Series/SOP.dcm)")
        original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        protected = next((o for o in outs if pydicom.dcmread(o, stop_before_pixels=True).Modality == "CT"), None)
        if protected is None:
            print("== demo INCOMPLETE: no protected CT image (log: pacsguard-demo.log)")
            return 1
        ds = pydicom.dcmread(protected)
        print(f"   {protected}")
        print(f"   PatientName  {str(original.PatientName)!r} -> {str(ds.PatientName)!r}  (keyed pseudonym)")
        print(f"   PatientID    {original.PatientID!r} -> {ds.PatientID!r}")
        print(f"   ImageComments = {ds.get('ImageComments')!r}")
        print(f"   Encrypted Attributes Sequence items: {len(ds.get('EncryptedAttributesSequence', []))}"
              f"; pixel data equal to the original: {ds.PixelData == original.PixelData}")
        print("== pacsguard inspect (no key needed)")
        subprocess.run(PACSGUARD + ["inspect", str(protected)], check=True)
        back = Path("pacsguard-data") / "revealed.dcm"
        print(f"== the partner decrypts it back: pacsguard decrypt {protected.name} --key demo-partner -o {back}")
        subprocess.run(PACSGUARD + ["decrypt", str(protected), "--key", "demo-partner", "-o", str(back)], check=True)
        rev = pydicom.dcmread(back)
        same_pixels = rev.PixelData == original.PixelData
        print(f"   PatientName {str(rev.PatientName)!r}, PatientID {rev.PatientID!r}; pixels bit-exact: {same_pixels}")
        restored = same_pixels and rev.PatientName == original.PatientName and rev.PatientID == original.PatientID
        # CT, MR, MR (RLE) and the RT plan go out protected; the two secondary captures (burned-in policy)
        # and the text file are quarantined with their reasons
        ok = (st["jobs"]["done"] == 4 == len(outs) and st["jobs"]["quarantined"] == 3 and restored)
        print("== demo", "OK" if ok else "INCOMPLETE", f"(log: pacsguard-demo.log)")
        return 0 if ok else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


if __name__ == "__main__":
    sys.exit(main())
