"""Pixel-scope output is valid DICOM to a real PACS:

    storescu --> pacsguard (encrypt pixels for an RSA key) --> Orthanc
                                                           \\-> folder (what was sent)

Orthanc stores every object and returns it over REST unchanged (every element, the
private block and the encrypted Pixel Data bytes included; the data set byte for byte); dcmdump reads what Orthanc
returns without an error; and the key holder decrypts Orthanc's copy back to the
original with ``pacsguard decrypt --key-file ... --cert ...``.
"""

from __future__ import annotations

import io
import subprocess

import pydicom

import crypto_util as cu
from e2e_util import visible_files
from peers import Orthanc, PACSGUARD, free_port, require, tool_env, wait_for


def _same_elements(sent: pydicom.Dataset, got: pydicom.Dataset) -> None:
    """Every element, private ones included (group lengths aside: writers recompute them)."""
    uid = sent.SOPInstanceUID
    tags = sorted(t for t in sent.keys() if t.element != 0)
    assert tags == sorted(t for t in got.keys() if t.element != 0), uid
    for tag in tags:
        assert sent[tag].value == got[tag].value, f"{uid}: {tag} differs"
    assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID, uid


def _data_set_bytes(path) -> bytes:
    """The file after its File Meta Information (preamble, DICM, the (0002,0000) element of
    12 bytes and the group length it gives): what went over the wire."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    return path.read_bytes()[132 + 12 + int(meta.FileMetaInformationGroupLength):]


def test_orthanc_stores_encrypted_objects_unchanged(tmp_path, service):
    key = cu.generate_key("partner", "rsa", tmp_path / "keys")
    files = cu.corpus(tmp_path / "corpus", ct=4)
    port = free_port()
    with Orthanc(tmp_path / "orthanc") as orthanc:
        svc = service(cu.node_config(
            tmp_path, aet="PGA", port=port, keys={"partner": {"public": str(key.public)}},
            destinations={"pacs": cu.dicom_destination(orthanc.aet, orthanc.dicom_port),
                          "copy": {"type": "folder", "path": str(tmp_path / "copy"),
                                   "template": "{SOPInstanceUID}.dcm"}},
            pipeline=[{"encrypt": {"scope": "pixels", "recipients": ["partner"]}}])).start()
        cu.send(port, files, called="PGA")
        n = len(files)
        st = wait_for(lambda: (lambda s: s if s["jobs"]["done"] + s["jobs"]["quarantined"] >= n else None)(
            svc.status()), 60, f"all {n} objects delivered", interval=0.3)
        assert st["jobs"]["quarantined"] == 0 and st["destinations"]["pacs"]["delivered"] == n, st

        returned = tmp_path / "returned"
        returned.mkdir()
        for oid in orthanc.instances():
            data = orthanc.instance_file(oid)
            uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
            (returned / f"{uid}.dcm").write_bytes(data)
        assert svc.stop() == 0  # before Orthanc, which waits for open associations to end

    sent = cu.by_uid(files)
    copies = cu.by_uid(visible_files(tmp_path / "copy"))
    from_pacs = cu.by_uid(visible_files(returned))
    assert set(copies) == set(from_pacs) == set(sent)
    for uid, enc in copies.items():
        cu.assert_encrypted(sent[uid], enc, key.key_id)
        _same_elements(enc, from_pacs[uid])
        assert cu.sha(from_pacs[uid].PixelData) == cu.sha(enc.PixelData), f"{uid}: Orthanc changed the ciphertext"
        # byte for byte: each writer makes its own File Meta Information, the data set is the same
        assert _data_set_bytes(returned / f"{uid}.dcm") == _data_set_bytes(tmp_path / "copy" / f"{uid}.dcm"), uid

    for path in visible_files(returned):
        res = subprocess.run([require("dcmdump"), str(path)], capture_output=True, text=True,
                             env=tool_env(), timeout=30)
        assert res.returncode == 0 and "E:" not in res.stderr and "W:" not in res.stderr, (path.name, res.stderr)
        assert "PACSGUARD 1" in res.stdout and "PACSGUARD ENCRYPTED" in res.stdout, path.name

    # the key holder opens Orthanc's copy
    res = subprocess.run(PACSGUARD + ["decrypt", str(returned), "-o", str(tmp_path / "plain"), *key.cli_args()],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    plain = cu.by_uid(visible_files(tmp_path / "plain"))
    assert set(plain) == set(sent)
    for uid, ds in sent.items():
        cu.assert_restored(ds, plain[uid])
