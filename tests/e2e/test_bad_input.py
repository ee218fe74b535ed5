"""Bad input through the whole service: damaged files go to quarantine with a clear
reason, and hostile attribute values never make a folder destination write outside
its root."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset, FileMetaDataset

from e2e_util import (
    PATIENT_ID,
    PATIENT_NAME,
    all_files,
    folder_config,
    make_image,
    settled,
    sop_uid,
    visible_files,
)
from peers import wait_for


def _one_route(tmp_path, template="{SOPInstanceUID}.dcm") -> str:
    return folder_config(
        tmp_path,
        destinations={"out": {"type": "folder", "path": str(tmp_path / "out"), "template": template}},
        routes=[{"name": "all", "to": ["out"]}],
    )


def test_damaged_files_are_quarantined_with_a_reason(tmp_path, service):
    svc = service(_one_route(tmp_path)).start()
    inbound = tmp_path / "in"
    src = tmp_path / "src"
    src.mkdir()
    truncated = Path(get_testdata_file("MR_truncated.dcm"))
    no_uids = src / "no-uids.dcm"
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds = FileDataset(str(no_uids), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName, ds.Modality = PATIENT_NAME, "CT"
    ds.save_as(no_uids, enforce_file_format=True)
    bad = {
        "notes.dcm": (b"This is a text file, not a DICOM object.\n" * 20,
                      "not a DICOM file (no DICM prefix, and the content does not start like a DICOM data set)"),
        "empty.dcm": (b"", "empty file (0 bytes)"),
        "MR_truncated.dcm": (truncated.read_bytes(), "truncated DICOM file"),
        "no-uids.dcm": (no_uids.read_bytes(), "not a DICOM composite object (no SOPClassUID (0008,0016))"),
    }
    for name, (data, _) in bad.items():
        (inbound / name).write_bytes(data)
    wait_for(lambda: settled(svc) == len(bad), 20, "the damaged files in quarantine")
    assert svc.proc.poll() is None

    entries = json.loads(svc.cli("quarantine", "list", "--json").stdout)
    assert len(entries) == len(bad)
    by_size = {}
    for e in entries:
        assert e["place"] == "parse" and e["delivery_id"] is None and e["source"] == "in"
        by_size.setdefault(e["size"], []).append(e)
    qdir = tmp_path / "spool" / "quarantine"
    for name, (data, reason) in bad.items():
        (e,) = by_size[len(data)]
        assert e["reason"].startswith(reason), (name, e["reason"])
        # the object itself is kept, unchanged, beside its record
        assert (qdir / f"{e['id']}.dcm").read_bytes() == data
        assert json.loads((qdir / f"{e['id']}.json").read_text())["reason"] == e["reason"]
    e = by_size[len(bad["MR_truncated.dcm"][0])][0]
    shown = svc.cli("quarantine", "show", str(e["id"])).stdout
    assert f"reason        {e['reason']}" in shown and "place         parse" in shown
    logged = [x for x in svc.log_lines() if x.get("event") == "object quarantined"]
    assert sorted(x["reason"] for x in logged) == sorted(e["reason"] for e in entries)

    # the service keeps going
    good = src / "good.dcm"
    sop = make_image(good, patient=PATIENT_NAME, patient_id=PATIENT_ID)
    (inbound / good.name).write_bytes(good.read_bytes())
    wait_for(lambda: visible_files(tmp_path / "out"), 20, "the good file")
    (delivered,) = visible_files(tmp_path / "out")
    assert delivered.read_bytes() == good.read_bytes() and sop_uid(delivered) == sop
    st = svc.status()
    assert st["jobs"] == {"received": 0, "routed": 0, "done": 1, "quarantined": len(bad)}
    assert [x for x in svc.log_lines() if x.get("level") == "error"] == []
    assert svc.stop() == 0


HOSTILE_TEMPLATE = "{PatientID}/{StudyDescription}/{ImageComments}/{SOPInstanceUID}.dcm"

HOSTILE = [
    {"PatientID": "../../etc", "StudyDescription": "../../../../tmp/pwned"},
    {"PatientID": "/abs", "StudyDescription": "/etc/cron.d", "ImageComments": "/"},
    {"PatientID": "a\0b", "StudyDescription": "..\0/..", "ImageComments": "\0"},
    {"PatientID": "../" * 166 + "x", "ImageComments": "A" * 500},
    {"PatientID": "..", "StudyDescription": ".", "ImageComments": "..."},
    {"PatientID": "..\\..\\..", "StudyDescription": "~", "ImageComments": "\n\t\r"},
    {"PatientID": " ", "StudyDescription": "", "ImageComments": "é/../ü" * 100},
    {"PatientID": "x", "sop": "../../../../tmp/evil-sop"},
]


# every name a hostile value could make the destination create, if it escaped
HOSTILE_NAMES = {part + suffix for attrs in HOSTILE for value in attrs.values()
                 for part in re.split(r"[/\\\0]", value) if part.strip(". ")
                 for suffix in ("", ".dcm")}

SYSTEM_DIRS = (Path("/"), Path("/etc"), Path("/tmp"), Path("/etc/cron.d"))


def _entries(*dirs: Path) -> set[Path]:
    return {d / name for d in dirs if d.is_dir() for name in os.listdir(d)}


def test_hostile_values_never_leave_the_destination_root(tmp_path, service):
    before = _entries(tmp_path.parent, *SYSTEM_DIRS)
    svc = service(_one_route(tmp_path, HOSTILE_TEMPLATE)).start()
    src = tmp_path / "src"
    sops = []
    for i, attrs in enumerate(HOSTILE):
        attrs = dict(attrs)
        path = src / f"hostile{i}.dcm"
        sops.append(make_image(path, instance=i + 1, patient=PATIENT_NAME, sop=attrs.pop("sop", None),
                               patient_id=attrs.pop("PatientID"), **attrs))
        (tmp_path / "in" / path.name).write_bytes(path.read_bytes())

    wait_for(lambda: settled(svc) >= len(HOSTILE), 30, "all hostile objects processed")
    st = svc.status()
    assert st["jobs"]["done"] == len(HOSTILE), svc.cli("quarantine", "list").stdout

    out = (tmp_path / "out").resolve()
    delivered = visible_files(out)
    assert len(delivered) == len(HOSTILE)
    assert sorted(sop_uid(p) for p in delivered) == sorted(sops)
    for p in delivered:
        rel = p.relative_to(out)
        assert len(rel.parts) == 4, rel  # one component per template field, none swallowed
        assert all(part not in ("..", ".", "") and "\0" not in part and len(part.encode()) <= 255
                   for part in rel.parts), rel
        assert p.resolve().is_relative_to(out)

    # nothing anywhere else: walk the whole temp tree and the places the values name
    allowed = [tmp_path / d for d in ("in", "spool", "out", "src", "work")]
    strays = [f for f in all_files(tmp_path) if not any(f.is_relative_to(a) for a in allowed)]
    assert strays == []
    assert all_files(tmp_path / "in") == []
    # beside the test's folder (this session's own), nothing new at all; in the system
    # folders (shared with other processes) nothing named after a hostile value
    new = _entries(tmp_path.parent, *SYSTEM_DIRS) - before
    assert {p for p in new if p.parent == tmp_path.parent} == set()
    assert {p for p in new if p.name in HOSTILE_NAMES} == set()
    assert not Path("/abs").exists() and not Path("/tmp/pwned").exists()
    assert svc.stop() == 0


def test_symlink_in_destination_root_is_not_followed_out(tmp_path, service):
    """A link inside the destination root that points elsewhere (e.g. left by another
    user of a shared folder): an object whose path runs through it must not create
    anything outside the root, not even folders."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    os.symlink(outside, out / "linked")
    svc = service(_one_route(tmp_path, HOSTILE_TEMPLATE)).start()
    path = tmp_path / "src" / "via-link.dcm"
    make_image(path, patient=PATIENT_NAME, patient_id="linked", StudyDescription="deeper",
               ImageComments="deepest")
    (tmp_path / "in" / path.name).write_bytes(path.read_bytes())
    wait_for(lambda: settled(svc) == 1, 20, "the object to be processed")
    created = sorted(str(p.relative_to(outside)) for p in outside.rglob("*"))
    assert created == [], f"written outside the destination root through the link: {created}"
    entries = json.loads(svc.cli("quarantine", "list", "--json").stdout)
    assert [e["reason"] for e in entries] == ["destination path leaves the destination root"]
    assert svc.stop() == 0
