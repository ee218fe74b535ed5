"""End to end: the real service forwards dropped files to DICOM destinations (dcmtk
storescp, Orthanc), keeps them intact, waits out a destination that is down, and the
``pacsguard echo`` / ``send`` commands work against real peers."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pydicom

from conftest import bundled_images, write_ct_series
from e2e_util import drop_rename, events, folder_config, visible_files
from peers import Orthanc, Pacsguard, Storescp, free_port, wait_for
from pacsguard.daemon.spool import Spool


def drop_all(tmp: Path, files, gap: float = 0.0) -> None:
    """Into the watched folder ``tmp/in``: write under a temp name, then rename."""
    for i, src in enumerate(files):
        drop_rename(src, tmp / "in", f"{i:04d}_{Path(src).name}")
        if gap:
            time.sleep(gap)


def settled(svc: Pacsguard, expected: dict[str, int]):
    """The destinations' status once each has finished ``expected[name]`` deliveries."""
    st = svc.status()["destinations"]
    for name, n in expected.items():
        d = st.get(name, {})
        if d.get("pending", 1) or d.get("delivered", 0) + d.get("quarantined", 0) != n:
            return None
    return st


def same_object(sent: pydicom.Dataset, got: pydicom.Dataset) -> None:
    """Every attribute and every pixel byte. Not compared: the file meta (each writer has
    its own) and group lengths (gggg,0000), retired elements that writers recompute."""
    uid = sent.SOPInstanceUID
    tags = sorted(t for t in sent.keys() if t.element != 0)
    assert tags == sorted(t for t in got.keys() if t.element != 0), uid
    for tag in tags:
        assert sent[tag].value == got[tag].value, f"{tag} differs in {uid}"
    if "PixelData" in sent:
        assert sent.PixelData == got.PixelData, uid


def dicom(aet: str, port: int, **extra) -> dict:
    return {"type": "dicom", "ae_title": aet, "host": "127.0.0.1", "port": port, **extra}


def test_pass_through_to_storescp_and_orthanc(tmp_path, service):
    files = bundled_images() + write_ct_series(tmp_path / "ct", 20)
    sent = {}
    for f in files:
        ds = pydicom.dcmread(f)
        sent[ds.SOPInstanceUID] = ds
    assert len(sent) == len(files) >= 50
    # Orthanc refuses objects without these, with 0xA700: they must end in quarantine.
    refused = {uid for uid, ds in sent.items() if not (ds.get("StudyInstanceUID") and ds.get("SeriesInstanceUID"))}
    assert 0 < len(refused) < 10

    with Storescp(tmp_path / "scp", args=("+xa",)) as scp, Orthanc(tmp_path / "orthanc") as orthanc:
        svc = service(folder_config(tmp_path, destinations={
            "scp": dicom(scp.aet, scp.port),
            "orthanc": dicom(orthanc.aet, orthanc.dicom_port, parallel=2,
                             retry={"initial": 0.1, "factor": 2, "max_delay": 0.4, "max_attempts": 3}),
        }, routes=[{"name": "pass-through", "to": ["scp", "orthanc"]}])).start()
        drop_all(tmp_path, files)
        st = wait_for(lambda: settled(svc, {"scp": len(files), "orthanc": len(files)}), 120,
                      "every delivery to finish", interval=0.5)
        assert st["scp"]["delivered"] == len(files)
        svc.stop()  # releases its associations: the peers then stop at once

        # What Orthanc refused is quarantined with the status and its meaning: not lost.
        spool = Spool(tmp_path / "spool", readonly=True)
        quarantined = {}
        for e in spool.quarantine_entries():
            assert e["place"] == "destination:orthanc"
            ds = pydicom.dcmread(spool.quarantine_dir / f"{e['id']}.dcm", stop_before_pixels=True)
            quarantined[ds.SOPInstanceUID] = e["reason"]
        assert len(quarantined) == st["orthanc"]["quarantined"]
        assert refused <= set(quarantined) and len(quarantined) <= len(refused) + 2
        for uid, reason in quarantined.items():
            assert re.search(r"ORTHANC@127\.0\.0\.1:\d+ .* status 0x[0-9A-F]{4} \(\w[^)]*\)", reason), reason
            if uid in refused:
                assert "0xA700 (Refused: Out of Resources) (gave up after 3 attempts)" in reason

        # storescp (+B: bit-preserving) holds every object, attribute for attribute.
        got = {}
        for p in scp.files():
            ds = pydicom.dcmread(p)
            got[ds.SOPInstanceUID] = ds
        assert set(got) == set(sent)
        for uid, ds in sent.items():
            same_object(ds, got[uid])

        # Orthanc holds all the others, identical too.
        assert orthanc.sop_instance_uids() == set(sent) - set(quarantined)
        for oid in orthanc.instances():
            ds = pydicom.dcmread(io.BytesIO(orthanc.instance_file(oid)))
            same_object(sent[ds.SOPInstanceUID], ds)

    # Associations are reused: one per sending thread (3), plus one more only when an
    # object needs a presentation context not proposed yet (a new SOP class / transfer
    # syntax pair: this corpus is as mixed as it gets). No UID in the log.
    kinds = {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in sent.values()}
    opened = len(events(svc, "association opened"))
    assert 3 <= opened <= 3 * len(kinds)
    log = svc.log_text()
    assert not any(uid in log for uid in sent)


def test_destination_down_then_back_gets_everything_in_order(tmp_path, service):
    port = free_port()
    svc = service(folder_config(tmp_path, destinations={
        "pacs": dicom("STORESCP", port,
                      retry={"initial": 0.2, "factor": 1.5, "max_delay": 0.5, "max_attempts": 1000}),
        "copy": {"type": "folder", "path": str(tmp_path / "copy")},
    }, routes=[{"name": "all", "to": ["pacs", "copy"]}],
        # Two processing workers may route job n+1 before job n: delivery still follows arrival.
        processing={"workers": 2, "batch_size": 1})).start()
    series = write_ct_series(tmp_path / "ct", 12, size=128)
    drop_all(tmp_path, series, gap=0.05)

    # The folder destination is not held up while the DICOM one is down.
    wait_for(lambda: len(visible_files(tmp_path / "copy")) == 12, 30, "the folder destination to get all 12")
    st = svc.status()["destinations"]["pacs"]
    assert st["pending"] == 12 and st["delivered"] == 0
    reasons = [e["reason"] for e in events(svc, "delivery failed, will retry") if e.get("destination") == "pacs"]
    assert reasons and all("connection refused" in r for r in reasons)

    with Storescp(tmp_path / "scp", port=port, args=("+xa", "-d")) as scp:
        wait_for(lambda: len(scp.files()) == 12, 30, "storescp to get all 12 once it is up")
        wait_for(lambda: settled(svc, {"pacs": 12, "copy": 12}), 10, "the deliveries to be recorded")
        log = scp.log_path.read_text()
        number = {ds.SOPInstanceUID: int(ds.InstanceNumber)
                  for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in series)}
        arrival = re.findall(r"Affected SOP Instance UID\s*: (\S+)", log)
        assert [number[uid] for uid in arrival] == list(range(1, 13))  # in order of arrival, no repeats
        assert log.count("Association Acknowledged") == 1


def test_echo_and_send_commands(tmp_path):
    with Storescp(tmp_path / "scp", args=("+xa",)) as scp:
        pg = Pacsguard(tmp_path / "pg", folder_config(tmp_path, destinations={
            "pacs": dicom(scp.aet, scp.port),
            "nowhere": dicom("NOWHERE", free_port()),
        }, routes=[{"name": "all", "to": ["pacs"]}]))  # the service itself is not started

        out = pg.cli("echo", "pacs")
        assert f"C-ECHO to STORESCP@127.0.0.1:{scp.port} succeeded, round trip" in out.stdout

        out = pg.cli("echo", "nowhere", check=False)
        assert out.returncode == 1 and "connection refused" in out.stderr

        folder = tmp_path / "batch"
        write_ct_series(folder / "a", 3, size=64)
        write_ct_series(folder / "b" / "c", 2, size=64, seed=1)
        out = pg.cli("send", str(folder), "--to", "pacs")
        assert "pacs: sent 5, failed 0" in out.stdout
        assert len(scp.files()) == 5

        (folder / "notes.txt").write_text("not DICOM")
        out = pg.cli("send", str(folder), "--to", "nowhere", check=False)
        assert out.returncode == 1 and "nowhere: sent 0, failed 6" in out.stdout
        assert "connection refused" in out.stderr and "notes.txt" in out.stderr
