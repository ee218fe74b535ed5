"""De-identification end to end, with real peers:

- storescu -> pacsguard (deidentify) -> Orthanc: Orthanc's REST API shows the pseudonymised
  patient and one study per original study, and no original identifier;
- a 50-image series through two runs of the service (restart between) and a second
  instance sharing the key: one consistent set of new Study / Series / Frame of Reference
  UIDs, references intact; a second key gives different ones.
"""

from __future__ import annotations

import pydicom
import yaml

import crypto_util as cu
from conftest import write_ct_series
from e2e_util import PATIENT_ID, PATIENT_NAME
from peers import Orthanc, free_port, storescu, wait_for


def secret(tmp, name: str) -> str:
    return str(cu.generate_key(name, "secret", tmp / "keys").private)


def config(tmp, port: int, key_file: str, destinations: dict) -> str:
    return yaml.safe_dump({
        "node": {"ae_title": "PGD", "port": port},
        "spool": {"path": str(tmp / "spool")},
        "keys": {"site": {"secret": key_file}},
        "destinations": destinations,
        "routes": [{"name": "research", "pipeline": [{"deidentify": {"key": "site"}}], "to": list(destinations)}],
        "logging": {"level": "info", "format": "json"},
        "metrics": {"enabled": False},
        "shutdown_timeout": "10s",
    }, sort_keys=False)


def settle(svc, n: int) -> dict:
    return wait_for(lambda: (lambda s: s if s["jobs"]["done"] + s["jobs"]["quarantined"] >= n else None)(
        svc.status()), 90, f"{n} objects delivered", interval=0.3)


def test_orthanc_sees_the_pseudonymised_patient_and_one_study_per_original(tmp_path, service):
    studies = [write_ct_series(tmp_path / f"study{i}", 3, size=64, patient=PATIENT_NAME, patient_id=PATIENT_ID,
                               seed=i) for i in range(2)]
    files = [p for s in studies for p in s]
    port = free_port()
    with Orthanc(tmp_path / "orthanc") as orthanc:
        svc = service(config(tmp_path, port, secret(tmp_path, "site"),
                             {"pacs": cu.dicom_destination(orthanc.aet, orthanc.dicom_port)}),
                      workdir=tmp_path / "work").start()
        assert storescu(port, files, called="PGD").returncode == 0
        st = settle(svc, len(files))
        assert st["jobs"]["done"] == len(files), st
        patients = orthanc.get("/patients?expand")
        assert len(patients) == 1
        tags = patients[0]["MainDicomTags"]
        assert tags["PatientID"].startswith("ANON-") and tags["PatientName"].startswith("ANON-")
        assert PATIENT_NAME not in str(patients) and PATIENT_ID not in str(patients)
        assert len(orthanc.get("/studies")) == 2  # one study per original study
        originals = {pydicom.dcmread(p).StudyInstanceUID for p in files}
        seen = {s["MainDicomTags"]["StudyInstanceUID"] for s in orthanc.get("/studies?expand")}
        assert len(seen) == 2 and not seen & originals
        for oid in orthanc.instances():
            data = orthanc.instance_file(oid)
            assert PATIENT_NAME.encode() not in data and PATIENT_ID.encode() not in data


def _uids(folder) -> dict:
    out = {}
    by_number = {}
    for p in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        by_number[int(ds.InstanceNumber)] = ds
        out.setdefault("study", set()).add(ds.StudyInstanceUID)
        out.setdefault("series", set()).add(ds.SeriesInstanceUID)
        out.setdefault("frame", set()).add(ds.FrameOfReferenceUID)
        out.setdefault("patient", set()).add(ds.PatientID)
    # references intact: each slice's reference is the new UID of the slice before it
    for n, ds in by_number.items():
        if "ReferencedImageSequence" in ds:
            assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == by_number[n - 1].SOPInstanceUID
    out["referencing"] = {n for n, ds in by_number.items() if "ReferencedImageSequence" in ds}
    return out


def test_a_series_gets_one_consistent_set_of_uids_across_restarts_and_instances(tmp_path, service):
    series = write_ct_series(tmp_path / "series", 50, size=32, patient=PATIENT_NAME, patient_id=PATIENT_ID)
    frame = pydicom.uid.generate_uid()
    previous = None
    for path in series:  # one frame of reference; each slice refers to the one before
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = frame
        if previous is not None:
            ref = pydicom.Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = previous.SOPClassUID, previous.SOPInstanceUID
            ds.ReferencedImageSequence = [ref]
        ds.save_as(path, enforce_file_format=True)
        previous = ds
    key = secret(tmp_path, "site")
    out = {name: tmp_path / name for name in ("a", "b", "other-key")}

    def run(name: str, key_file: str, parts: list[list]) -> None:
        port = free_port()
        svc = service(config(tmp_path / f"spool-{name}", port, key_file,
                             {"out": {"type": "folder", "path": str(out[name])}}), workdir=tmp_path / f"work-{name}")
        done = 0
        for part in parts:  # one run of the service per part, restarted in between
            svc.start()
            assert storescu(port, part, called="PGD").returncode == 0
            done += len(part)
            settle(svc, done)
            svc.stop()

    run("a", key, [series[:25], series[25:]])          # two runs of one instance
    run("b", key, [series])                            # a second instance, same key
    run("other-key", secret(tmp_path, "other"), [series])
    a, b, other = _uids(out["a"]), _uids(out["b"]), _uids(out["other-key"])
    for kind in ("study", "series", "frame", "patient"):
        assert len(a[kind]) == 1, (kind, a[kind])      # one consistent set across the restart
        assert a[kind] == b[kind]                      # and across instances sharing the key
        assert not a[kind] & other[kind]               # unlinkable with another key
    assert len(a["referencing"]) == 49
    original = pydicom.dcmread(series[0])
    assert original.StudyInstanceUID not in a["study"] and original.FrameOfReferenceUID not in a["frame"]
