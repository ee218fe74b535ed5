"""End to end through a watched folder: 200 objects, two routes, two folder destinations.

``pacsguard run`` is a real subprocess. Objects are dropped the ways modalities and
copy tools drop them: written directly under the final name (quickly, or slowly in
chunks with the file held open), written under a temp name and renamed in, into a
sub-folder, and as a whole folder moved in. A pass-through route must deliver them
byte-identical; a set-attributes route must change exactly what it is configured to.
"""

from __future__ import annotations

import os
import shutil
import time

import pydicom

from e2e_util import (
    PATIENT_ID,
    PATIENT_NAME,
    bundled_images,
    drop_copy,
    drop_rename,
    folder_config,
    settled,
    slow_writers,
    sop_uid,
    visible_files,
    write_ct_series,
)
from peers import wait_for

SET = {"InstitutionName": "E2E Hospital", "StationName": "PGSTATION"}
SET_IF_MISSING = {"BodyPartExamined": "HEAD"}
REMOVE = ["StudyDescription"]


def _config(tmp_path, **kw) -> str:
    return folder_config(
        tmp_path,
        destinations={
            "ct-out": {"type": "folder", "path": str(tmp_path / "out-ct")},  # default template
            "pass-out": {"type": "folder", "path": str(tmp_path / "out-pass"),
                         "template": "{Modality}/{SOPInstanceUID}.dcm"},
        },
        routes=[
            {"name": "ct-fixup", "match": {"Modality": "CT"},
             "pipeline": [{"set-attributes": {"set": SET, "set_if_missing": SET_IF_MISSING, "remove": REMOVE}}],
             "to": ["ct-out"], "final": True},
            {"name": "pass", "to": ["pass-out"]},
        ],
        **kw,
    )


def _expected_after_stage(src) -> pydicom.Dataset:
    """The source dataset with exactly the configured set-attributes changes applied."""
    ds = pydicom.dcmread(src)
    for k, v in SET.items():
        setattr(ds, k, v)
    for k, v in SET_IF_MISSING.items():
        if k not in ds or ds[k].value in (None, "", []):
            setattr(ds, k, v)
    for k in REMOVE:
        if k in ds:
            delattr(ds, k)
    return ds


def _differences(expected: pydicom.Dataset, got: pydicom.Dataset) -> list[str]:
    out = []
    # Group length elements (gggg,0000) are retired (PS3.5 7.2) and pydicom drops them when
    # it writes a changed dataset; they would be wrong after a change anyway.
    exp_tags = {t for t in expected.keys() if t.element != 0}
    got_tags = {t for t in got.keys() if t.element != 0}
    for tag in sorted(exp_tags - got_tags):
        out.append(f"{tag} {expected[tag].keyword}: missing from the delivered object")
    for tag in sorted(got_tags - exp_tags):
        out.append(f"{tag} {got[tag].keyword}: not expected in the delivered object")
    for tag in sorted(exp_tags & got_tags):
        e, g = expected[tag], got[tag]
        if e.VR != g.VR or e.value != g.value:
            out.append(f"{tag} {e.keyword}: expected {e.VR} {str(e.value)[:60]!r}, got {g.VR} {str(g.value)[:60]!r}")
    if expected.file_meta.TransferSyntaxUID != got.file_meta.TransferSyntaxUID:
        out.append(f"transfer syntax changed: {expected.file_meta.TransferSyntaxUID} -> "
                   f"{got.file_meta.TransferSyntaxUID}")
    if got.file_meta.get("MediaStorageSOPInstanceUID") != expected.SOPInstanceUID:
        out.append("file meta MediaStorageSOPInstanceUID does not match the SOP Instance UID")
    return out


def test_200_objects_routed_modified_and_delivered(tmp_path, service):
    bundled = bundled_images()
    assert len(bundled) >= 50, "pydicom's bundled test files are missing"
    src = tmp_path / "src"
    bundled_copies = []
    for i, p in enumerate(bundled):  # unique names (two data sources may share a name)
        dest = src / "bundled" / f"b{i:03d}_{p.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dest)
        bundled_copies.append(dest)
    cts = write_ct_series(src / "ct", 200 - len(bundled), patient=PATIENT_NAME, patient_id=PATIENT_ID, seed=1)
    # Some slices already have BodyPartExamined: set_if_missing must leave those alone.
    for p in cts[:5]:
        ds = pydicom.dcmread(p)
        ds.BodyPartExamined = "CHEST"
        ds.save_as(p)
    sources = bundled_copies + cts
    by_sop = {sop_uid(p): p for p in sources}
    assert len(by_sop) == 200
    modality = {sop: pydicom.dcmread(p, stop_before_pixels=True).get("Modality") for sop, p in by_sop.items()}
    ct_sops = {s for s, m in modality.items() if m == "CT"}
    assert len(ct_sops) >= 140  # the generated slices plus the bundled CTs

    svc = service(_config(tmp_path)).start()
    inbound = tmp_path / "in"

    # 1. slow writers: final name, file held open the whole time
    slow = cts[5:9] + [p for p in bundled_copies if p.name.endswith("MR_small.dcm")]
    # pauses of 1.2 s: longer than `settle` (0.2 s) and than the rescan interval (1 s), so
    # periodic scans surely happen while these files are open and unchanged
    writers = slow_writers([(p, inbound / p.name) for p in slow], chunks=3, pause=1.2)
    rest = [p for p in sources if p not in slow]
    # 2. a whole folder moved in
    moved = rest[0:10]
    stage = tmp_path / "stage" / "batch-folder"
    stage.mkdir(parents=True)
    for p in moved:
        shutil.copyfile(p, stage / p.name)
    # 3. a sub-folder of the watched folder
    sub = rest[10:20]
    # 4. temp name + rename; 5. plain quick copy under the final name
    renamed = rest[20::2]
    copied = rest[21::2]
    for p in sub:
        drop_copy(p, inbound / "sub")
    os.rename(stage, inbound / "batch-folder")
    for a, b in zip(renamed, copied + [None]):
        drop_rename(a, inbound)
        if b is not None:
            drop_copy(b, inbound)
    for t in writers:
        t.join(30)
    assert not writers[0].errors

    out_ct, out_pass = tmp_path / "out-ct", tmp_path / "out-pass"

    wait_for(lambda: settled(svc) >= 200, 120, "200 objects delivered or quarantined")
    time.sleep(0.5)  # nothing more may arrive (no duplicates or extra files)

    st = svc.status()
    assert st["quarantine"]["entries"] == 0, \
        f"objects quarantined: {svc.cli('quarantine', 'list').stdout}"
    assert st["jobs"] == {"received": 0, "routed": 0, "done": 200, "quarantined": 0}, st
    assert st["destinations"]["ct-out"]["delivered"] == len(ct_sops)
    assert st["destinations"]["pass-out"]["delivered"] == 200 - len(ct_sops)
    assert visible_files(inbound) == [], "files left in the inbound folder"
    assert [p for p in inbound.rglob("*") if p.is_file()] == [], "temp files left in the inbound folder"

    delivered_ct = {sop_uid(p): p for p in visible_files(out_ct)}
    delivered_pass = {sop_uid(p): p for p in visible_files(out_pass)}
    assert len(delivered_ct) == len(visible_files(out_ct))
    assert len(delivered_pass) == len(visible_files(out_pass))
    assert set(delivered_ct) == ct_sops
    assert set(delivered_pass) == set(by_sop) - ct_sops

    # pass-through: byte-identical
    for sop, path in delivered_pass.items():
        assert path.read_bytes() == by_sop[sop].read_bytes(), f"{by_sop[sop].name} changed on a pass-through route"
        assert path.relative_to(out_pass).parts[0] == (modality[sop] or "UNKNOWN")

    # set-attributes: exactly the configured changes, everything else (PixelData too) unchanged
    problems = {}
    for sop, path in delivered_ct.items():
        got = pydicom.dcmread(path)
        source = by_sop[sop]
        orig = pydicom.dcmread(source)
        assert got.InstitutionName == "E2E Hospital" and got.StationName == "PGSTATION"
        assert "StudyDescription" not in got
        if orig.get("BodyPartExamined"):
            assert got.BodyPartExamined == orig.BodyPartExamined
        else:
            assert got.BodyPartExamined == "HEAD"
        if "PixelData" in orig:
            assert got.PixelData == orig.PixelData, f"{source.name}: pixel data changed"
        diff = _differences(_expected_after_stage(source), got)
        if diff:
            problems[source.name] = diff
    assert not problems, f"set-attributes changed more than configured: {problems}"
    for p in cts[:5]:
        assert pydicom.dcmread(delivered_ct[sop_uid(p)], stop_before_pixels=True).BodyPartExamined == "CHEST"

    # the log tells the same story: 200 received, 200 delivered, no errors
    lines = svc.log_lines()
    assert sum(1 for x in lines if x.get("event") == "object received") == 200
    assert sum(1 for x in lines if x.get("event") == "object delivered") == 200
    assert [x for x in lines if x.get("level") in ("error", "critical")] == []
    assert svc.stop() == 0


def test_slow_writer_is_taken_only_once_closed(tmp_path, service):
    """A writer that pauses longer than `settle` between chunks (a slow network copy)
    still holds the file open: the folder source must not take the file before close."""
    cts = write_ct_series(tmp_path / "src", 3, patient=PATIENT_NAME, patient_id=PATIENT_ID, seed=2)
    svc = service(_config(tmp_path)).start()
    inbound = tmp_path / "in"
    # pause 1.5 s > settle (0.2 s) and > rescan interval (1 s): periodic scans happen
    # while the file is open and unchanged.
    writers = slow_writers([(p, inbound / p.name) for p in cts], chunks=3, pause=1.5)
    for t in writers:
        t.join(30)
    assert not writers[0].errors
    wait_for(lambda: settled(svc) >= 3, 30, "the 3 slowly written files to be processed")
    time.sleep(0.5)
    st = svc.status()
    entries = svc.cli("quarantine", "list", "--json").stdout
    assert st["jobs"]["quarantined"] == 0, f"partially written files were taken and quarantined: {entries}"
    assert st["jobs"]["done"] == 3, st
    out = {sop_uid(p): p for p in visible_files(tmp_path / "out-ct")}
    for p in cts:
        got = pydicom.dcmread(out[sop_uid(p)])
        assert got.PixelData == pydicom.dcmread(p).PixelData
    assert sum(1 for x in svc.log_lines() if x.get("event") == "object received") == 3
