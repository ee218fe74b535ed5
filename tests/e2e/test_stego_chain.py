"""Steganographic re-identification end to end, the header stripped on the way:

    storescu --> pacsguard (deidentify + embed) --> Orthanc
    Orthanc's own anonymization (REST /instances/ID/anonymize) rewrites the header again;
    its result, stored in Orthanc and downloaded, goes to ``pacsguard reveal --key``.

A real 512x512 CT slice (pydicom-data ``693_UNCI.dcm``): the revealed file names the
original patient again (PatientName, PatientID, the original UIDs) and its pixels are the
original ones, SHA-256-equal; the pixels Orthanc stores and anonymizes carry the patient
data, never in clear.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import warnings

import pydicom
import yaml

import crypto_util as cu
from e2e_util import bundled_images
from peers import PACSGUARD, Orthanc, free_port, storescu, wait_for

IDENTITY = ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def _read(src):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 693_UNCI.dcm mixes implicit VR into explicit VR
        return pydicom.dcmread(src)


def _pixels_sha(ds) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = ds.pixel_array
    return hashlib.sha256(arr.astype(arr.dtype.newbyteorder("<")).tobytes()).hexdigest()


def test_reveal_restores_identity_and_pixels_after_orthanc_anonymizes(tmp_path, service):
    ct = next(p for p in bundled_images() if p.name == "693_UNCI.dcm")
    original = _read(ct)
    assert (original.Rows, original.Columns, original.BitsAllocated) == (512, 512, 16)
    site = cu.generate_key("site", "secret", tmp_path / "keys")
    reid = cu.generate_key("reid", "x25519", tmp_path / "keys")
    port = free_port()
    with Orthanc(tmp_path / "orthanc") as orthanc:
        svc = service(yaml.safe_dump({
            "node": {"ae_title": "PGS", "port": port},
            "spool": {"path": str(tmp_path / "spool")},
            "keys": {"site": {"secret": str(site.private)}, "reid": {"public": str(reid.public)}},
            "destinations": {"pacs": cu.dicom_destination(orthanc.aet, orthanc.dicom_port)},
            "routes": [{"name": "research", "to": ["pacs"],
                        "pipeline": [{"deidentify": {"key": "site"}}, {"embed": {"recipients": ["reid"]}}]}],
            "logging": {"level": "info", "format": "json"},
            "metrics": {"enabled": False},
            "shutdown_timeout": "10s",
        }, sort_keys=False)).start()
        assert storescu(port, [ct], called="PGS").returncode == 0
        st = wait_for(lambda: (lambda s: s if s["jobs"]["done"] + s["jobs"]["quarantined"] >= 1 else None)(
            svc.status()), 60, "the slice delivered", interval=0.3)
        assert st["jobs"]["done"] == 1, (st, svc.log_tail())
        (received,) = orthanc.instances()
        stored = _read(io.BytesIO(orthanc.instance_file(received)))
        assert str(stored.PatientName).startswith("ANON-") and stored.SOPInstanceUID != original.SOPInstanceUID
        assert _pixels_sha(stored) != _pixels_sha(original)  # the carrier is in the pixels
        # Orthanc's own anonymization, kept in Orthanc as a new instance, then downloaded
        anonymized = orthanc.post(f"/instances/{received}/anonymize", json.dumps({"Force": True}).encode())
        new_id = orthanc.post("/instances", anonymized, "application/dicom")["ID"]
        assert new_id != received
        downloaded = tmp_path / "from-orthanc.dcm"
        downloaded.write_bytes(orthanc.instance_file(new_id))
        assert svc.stop() == 0

    rewritten = _read(downloaded)
    assert str(rewritten.PatientName) != str(stored.PatientName)  # Orthanc rewrote what pacsguard had written
    assert rewritten.SOPInstanceUID not in (stored.SOPInstanceUID, original.SOPInstanceUID)
    assert "DeidentificationMethodCodeSequence" in rewritten or "PatientIdentityRemoved" in rewritten
    for keyword in ("PatientName", "PatientID"):
        assert str(original.get(keyword)) not in downloaded.read_bytes().decode("latin-1")

    partner = tmp_path / "partner.yaml"
    partner.write_text(yaml.safe_dump({
        "keys": {"reid": {"private": str(reid.private)}},
        "destinations": {"out": {"type": "folder", "path": str(tmp_path / "unused")}},
        "routes": [{"name": "none", "to": ["out"]}],
    }))
    revealed = tmp_path / "revealed.dcm"
    res = subprocess.run(PACSGUARD + ["reveal", str(downloaded), "-o", str(revealed), "--key", "reid",
                                      "--config", str(partner)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pixels restored" in res.stdout and reid.key_id in res.stdout
    back = _read(revealed)
    for keyword in IDENTITY:
        assert back.get(keyword) == original.get(keyword), keyword
    for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "AccessionNumber"):
        if keyword in original:
            assert back.get(keyword) == original.get(keyword), keyword
    assert _pixels_sha(back) == _pixels_sha(original)
