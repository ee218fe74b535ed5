"""Encryption across two pacsguard nodes, with real peers on both ends:

    storescu --> pacsguard A (encrypt pixels for the partner's public key) --> pacsguard B
             (decrypt with the partner's private key) --> dcmtk storescp

once with an RSA recipient and once with a PQ-hybrid (ML-KEM-768 + X25519) one, keys made
by ``pacsguard keys generate``. What storescp gets equals what storescu sent; what A sent
(also written to a folder) is encrypted for the partner's key; a copy of it with one byte
of its pixel data flipped, sent straight to B, is quarantined by ``decrypt`` with the
authentication reason and never forwarded.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pydicom
import pytest

import crypto_util as cu
from e2e_util import PATIENT_NAME, visible_files
from peers import Pacsguard, Storescp, free_port, storescu, wait_for

AUTH_FAILED = ("stage decrypt: authentication failed: pixel data or its context (SOP Instance UID, geometry, "
               "transfer syntax) was changed after encryption")


def _done(svc: Pacsguard, n: int):
    st = svc.status()
    return st if st["jobs"]["done"] + st["jobs"]["quarantined"] >= n else None


@pytest.fixture(scope="module", params=["rsa", "pq-hybrid"])
def chain(request, tmp_path_factory):
    """The chain above, the corpus sent through it and delivered."""
    tmp = tmp_path_factory.mktemp(f"chain-{request.param}")
    key = cu.generate_key("partner", request.param, tmp / "keys")
    files = cu.corpus(tmp / "corpus")
    sink = Storescp(tmp / "sink", aet="SINK").start()
    b_port, a_port = free_port(), free_port()
    b = Pacsguard(tmp / "b", cu.node_config(
        tmp / "b", aet="PGB", port=b_port, keys={"partner": key.private_entry()},
        destinations={"sink": cu.dicom_destination("SINK", sink.port)},
        pipeline=[{"decrypt": {"scope": "pixels", "key": "partner"}}]))
    a = Pacsguard(tmp / "a", cu.node_config(
        tmp / "a", aet="PGA", port=a_port, keys={"partner": {"public": str(key.public)}},
        destinations={"b": cu.dicom_destination("PGB", b_port),
                      "copy": {"type": "folder", "path": str(tmp / "copy"), "template": "{SOPInstanceUID}.dcm"}},
        pipeline=[{"encrypt": {"scope": "pixels", "recipients": ["partner"]}}]))
    try:
        b.start()
        a.start()
        cu.send(a_port, files, called="PGA")
        n = len(files)
        st_a = wait_for(lambda: _done(a, n), 60, f"A to process all {n} objects", interval=0.3)
        st_b = wait_for(lambda: _done(b, n), 60, f"B to process all {n} objects", interval=0.3)
        yield SimpleNamespace(tmp=tmp, key=key, files=files, sink=sink, a=a, b=b, b_port=b_port,
                              st_a=st_a, st_b=st_b)
    finally:
        for svc in (a, b):
            if svc.proc is not None:
                svc.stop(timeout=30)
        sink.stop()
        for svc in (a, b):  # as the ``service`` fixture checks: no patient data in any log line
            for marker in (PATIENT_NAME, PATIENT_NAME.replace("^", " "), "PID-0001"):
                assert marker not in svc.log_text(), f"patient data in {svc.log_path}"


def test_decrypted_objects_equal_the_originals(chain):
    sent = cu.by_uid(chain.files)
    assert len(sent) == len(chain.files) == 14
    for st in (chain.st_a, chain.st_b):
        assert st["jobs"]["quarantined"] == 0 and st["quarantine"]["entries"] == 0, st

    # what A sent is pixel-encrypted for the partner's key ID, not the plain pixels
    copies = cu.by_uid(visible_files(chain.tmp / "copy"))
    assert set(copies) == set(sent)
    for uid, ds in sent.items():
        cu.assert_encrypted(ds, copies[uid], chain.key.key_id)

    # what storescp got from B is the original again
    got = cu.by_uid(chain.sink.files())
    assert set(got) == set(sent)
    for uid, ds in sent.items():
        cu.assert_restored(ds, got[uid])
    with_notes = [uid for uid, ds in sent.items() if "ImageComments" in ds]
    assert with_notes and all(got[u].ImageComments == sent[u].ImageComments for u in with_notes)


def _flip_pixel_byte(src, dst) -> None:
    data = bytearray(src.read_bytes())
    cipher = bytes(pydicom.dcmread(src).PixelData)
    at = data.rfind(cipher)
    assert at > 0 and data.find(cipher) == at
    data[at + len(cipher) // 2] ^= 0x01
    dst.write_bytes(bytes(data))


def test_a_tampered_object_is_quarantined_by_decrypt(chain):
    copy = next(p for p in visible_files(chain.tmp / "copy")
                if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CT")
    tampered = chain.tmp / "tampered.dcm"
    _flip_pixel_byte(copy, tampered)
    uid = str(pydicom.dcmread(tampered, stop_before_pixels=True).SOPInstanceUID)
    delivered = next(p for p in chain.sink.files() if p.name.endswith("." + uid))  # storescp: CT.<uid>
    before = (delivered.read_bytes(), delivered.stat().st_mtime_ns)
    n = len(chain.files)

    res = storescu(chain.b_port, [tampered], called="PGB")
    assert res.returncode == 0, res.stderr
    st = wait_for(lambda: _done(chain.b, n + 1), 30, "B to finish the tampered object", interval=0.3)
    assert st["jobs"]["quarantined"] == 1 and st["destinations"]["sink"]["delivered"] == n, st
    [entry] = json.loads(chain.b.cli("quarantine", "list", "--json").stdout)
    assert (entry["place"], entry["reason"]) == ("stage:decrypt", AUTH_FAILED), entry
    held = chain.tmp / "b" / "spool" / "quarantine" / f"{entry['id']}.dcm"
    assert pydicom.dcmread(held).PixelData == pydicom.dcmread(tampered).PixelData, "not the tampered object"
    time.sleep(0.5)  # nothing may follow
    assert len(chain.sink.files()) == n
    assert (delivered.read_bytes(), delivered.stat().st_mtime_ns) == before, "the tampered object was forwarded"
