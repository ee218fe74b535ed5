"""The demo: run pacsguard on its embedded default config and push real images through.

Started by scripts/demo.sh after set-up. Works in ./pacsguard-data (inbound, spool,
outbound), like the daemon's default config. At the end the partner decrypts one
protected CT image and reveals the patient data hidden in its pixels: the original name
and ID and the original pixels, bit for bit (checked).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

# Real images with distinct SOP Instance UIDs: native, RLE and JPEG compressed, an RT plan;
# a 512x512 CT slice (pydicom-data) is the one re-identified at the end (CT_small's
# de-identification record, with its 200 private elements, does not fit its 128x128
# pixels: it goes into an Encrypted Attributes Sequence instead, on_no_capacity: attributes).
SAMPLES = ["CT_small.dcm", "MR_small.dcm", "emri_small_RLE.dcm", "rtplan.dcm", "SC_rgb.dcm",
           "SC_rgb_jpeg_dcmtk.dcm", "693_UNCI.dcm"]
REVEALED = "693_UNCI.dcm"
PACSGUARD = [sys.executable, "-m", "pacsguard.daemon.cli"]


def _sha(ds) -> str:
    """SHA-256 of the decoded pixels (native little endian)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = ds.pixel_array
    return hashlib.sha256(arr.astype(arr.dtype.newbyteorder("<")).tobytes()).hexdigest()


def _read(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 693_UNCI.dcm mixes implicit VR into explicit VR: pydicom warns
        return pydicom.dcmread(path, **kw)


def _is_slice(ds) -> bool:
    return ds.get("Modality") == "CT" and ds.get("Rows") == 512


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
        original = _read(get_testdata_file(REVEALED))
        protected = next((o for o in outs if _is_slice(_read(o, stop_before_pixels=True))), None)
        if protected is None:
            print("== demo INCOMPLETE: no protected 512x512 CT image (log: pacsguard-demo.log)")
            return 1
        ds = _read(protected)
        print(f"   {protected}")
        print(f"   PatientName  {str(original.PatientName)!r} -> {str(ds.PatientName)!r}  (keyed pseudonym)")
        print(f"   PatientID    {original.PatientID!r} -> {ds.PatientID!r}")
        print(f"   Encrypted Attributes Sequence items: {len(ds.get('EncryptedAttributesSequence', []))}"
              f" (the original values are hidden in the pixels); pixel data equal to the original: "
              f"{ds.PixelData == original.PixelData}")
        print("== pacsguard inspect (no key needed)")
        subprocess.run(PACSGUARD + ["inspect", str(protected)], check=True)
        plain, back = data / "decrypted.dcm", data / "revealed.dcm"
        print(f"== the partner decrypts the pixels: pacsguard decrypt {protected.name} --key demo-partner -o {plain}")
        subprocess.run(PACSGUARD + ["decrypt", str(protected), "--key", "demo-partner", "-o", str(plain)], check=True)
        mid = _read(plain)
        print(f"   still de-identified: PatientName {str(mid.PatientName)!r}; the pixels carry the original values")
        subprocess.run(PACSGUARD + ["reveal", str(plain), "--inspect"], check=True)
        print(f"== and re-identifies it: pacsguard reveal {plain} --key demo-partner -o {back}")
        subprocess.run(PACSGUARD + ["reveal", str(plain), "--key", "demo-partner", "-o", str(back)], check=True)
        rev = _read(back)
        same_pixels = _sha(rev) == _sha(original)
        print(f"   PatientName {str(rev.PatientName)!r}, PatientID {rev.PatientID!r}; pixels bit-exact "
              f"(SHA-256 of the decoded pixels equal to the original's): {same_pixels}")
        restored = same_pixels and rev.PatientName == original.PatientName and rev.PatientID == original.PatientID
        # the CTs, MR, MR (RLE) and the RT plan go out protected; the two secondary captures (burned-in
        # policy) and the text file are quarantined with their reasons
        ok = (st["jobs"]["done"] == 5 == len(outs) and st["jobs"]["quarantined"] == 3 and restored
              and "EncryptedAttributesSequence" not in mid)
        print("== demo", "OK" if ok else "INCOMPLETE", "(log: pacsguard-demo.log)")
        return 0 if ok else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


if __name__ == "__main__":
    sys.exit(main())
