"""The durable spool: intake, crash recovery, deliveries, quarantine, clean-up, status."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from pacsguard.daemon.item import TransportFacts
from pacsguard.daemon import spool as spool_mod
from pacsguard.daemon.spool import Spool, SpoolFull

CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))
FACTS = TransportFacts(source="inbound", source_type="folder", calling_ae="MODALITY1",
                       called_ae="PACSGUARD", calling_host="10.0.0.5")


@pytest.fixture
def spool(tmp_path):
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


def drop(tmp_path: Path, src: Path = CT) -> Path:
    """A copy of a real DICOM file in a drop folder (ingest moves it)."""
    folder = tmp_path / "drop"
    folder.mkdir(exist_ok=True)
    p = folder / f"{uuid.uuid4().hex}.dcm"
    shutil.copyfile(src, p)
    return p


def ingest(spool: Spool, tmp_path: Path, src: Path = CT, facts: TransportFacts | None = None) -> int:
    """A job received now (FACTS' own received_at is the time this module was imported)."""
    facts = facts or dataclasses.replace(FACTS, received_at=time.time())
    return spool.ingest_file(drop(tmp_path, src), facts)


def routed(spool: Spool, tmp_path: Path, dests=("a",), src: Path = CT) -> int:
    job_id = ingest(spool, tmp_path, src)
    job = spool.get_job(job_id)
    spool.route_job(job_id, [("r", d, job.path) for d in dests], "uidhash")
    return job_id


def deliveries_of(spool: Spool, destination: str) -> list:
    out, seen = [], set()
    while (d := spool.next_delivery(destination, seen)) is not None:
        out.append(d)
        seen.add(d.id)
    return out


# -- intake -------------------------------------------------------------------------------


def test_ingest_moves_file_and_records_received_job(spool, tmp_path):
    src = drop(tmp_path)
    size = src.stat().st_size
    before = spool.used_bytes

    job_id = spool.ingest_file(src, FACTS)

    assert not src.exists(), "ingest must move, not copy"
    job = spool.get_job(job_id)
    assert job.state == "received"
    assert job.size == size
    assert job.path.parent == spool.incoming / "folder.inbound"
    assert job.path.read_bytes() == CT.read_bytes()
    assert (job.facts.source, job.facts.source_type, job.facts.calling_ae, job.facts.called_ae,
            job.facts.calling_host) == ("inbound", "folder", "MODALITY1", "PACSGUARD", "10.0.0.5")
    assert spool.used_bytes == before + size
    assert spool.received_jobs() == [job_id]
    assert spool.queue_depths() == (1, {})


def test_ingest_of_missing_file_raises_and_records_nothing(spool, tmp_path):
    with pytest.raises(FileNotFoundError):
        spool.ingest_file(tmp_path / "gone.dcm", FACTS)
    assert spool.received_jobs() == []
    assert spool.used_bytes == 0


def test_ingest_refused_when_spool_is_full(tmp_path):
    spool = Spool(tmp_path / "spool", max_size=CT.stat().st_size)
    assert spool.has_room()
    ingest(spool, tmp_path)  # under the limit when it arrived: accepted; now at the limit
    src = drop(tmp_path)
    assert not spool.has_room()
    with pytest.raises(SpoolFull):
        spool.ingest_file(src, FACTS)
    assert src.exists(), "a refused file stays where it was"
    assert len(spool.received_jobs()) == 1


def test_used_bytes_survive_reopening(spool, tmp_path):
    ingest(spool, tmp_path)
    ingest(spool, tmp_path, MR)
    again = Spool(spool.root)
    assert again.used_bytes == spool.used_bytes == CT.stat().st_size + MR.stat().st_size


def test_partial_then_commit_makes_a_job(spool):
    partial = spool.new_partial(FACTS)
    assert partial.name.endswith(".dcm.part")
    assert partial.parent == spool.incoming / "folder.inbound"
    partial.write_bytes(MR.read_bytes())

    job_id = spool.commit_partial(partial, FACTS)

    job = spool.get_job(job_id)
    assert not partial.exists()
    assert job.path == partial.with_name(partial.name[: -len(".part")])
    assert job.path.read_bytes() == MR.read_bytes()
    assert (job.state, job.size) == ("received", MR.stat().st_size)


# -- recovery -----------------------------------------------------------------------------


def test_recover_drops_partials_and_adopts_or_drops_orphans(spool, tmp_path):
    known = ingest(spool, tmp_path)
    partial = spool.new_partial(FACTS)
    partial.write_bytes(b"half an object")
    out_tmp = spool.out / "7" / "r.dcm.part"
    out_tmp.parent.mkdir(parents=True)
    out_tmp.write_bytes(b"x")
    # the crash window: file renamed into incoming/, job row not committed yet
    moved = spool.incoming / "folder.inbound" / "orphan1.dcm"
    shutil.copyfile(MR, moved)
    streamed = spool.incoming / "dicom.net" / "orphan2.dcm"
    streamed.parent.mkdir()
    shutil.copyfile(MR, streamed)
    asked = []

    def adopt(source_type, path):
        asked.append(source_type)
        return {} if source_type == "folder" else None

    stats = spool.recover(adopt)

    assert stats == {"partial_removed": 1, "orphans_adopted": 1, "orphans_removed": 1, "reprocessed_after_reboot": 0}
    assert sorted(set(asked)) == ["dicom", "folder"]
    assert not partial.exists() and not out_tmp.exists()
    assert not streamed.exists(), "an orphan its source says was never acknowledged"
    assert moved.exists()
    jobs = spool.received_jobs()
    assert len(jobs) == 2 and jobs[0] == known
    adopted = spool.get_job(jobs[1])
    assert adopted.path == moved
    assert (adopted.state, adopted.size) == ("received", MR.stat().st_size)
    assert (adopted.facts.source_type, adopted.facts.source) == ("folder", "inbound")
    assert spool.get_job(known).path.exists()
    # a second start finds nothing left to do
    assert spool.recover(adopt) == {"partial_removed": 0, "orphans_adopted": 0, "orphans_removed": 0,
                                    "reprocessed_after_reboot": 0}


# -- deliveries ---------------------------------------------------------------------------


def test_route_job_creates_pending_deliveries(spool, tmp_path):
    job_id = ingest(spool, tmp_path)
    job = spool.get_job(job_id)
    out = spool.out_path(job_id, "r2")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"processed")
    used = spool.used_bytes

    spool.route_job(job_id, [("r1", "a", job.path), ("r2", "b", out)], "h", extra_bytes=9)

    assert spool.get_job(job_id).state == "routed"
    assert spool.get_job(job_id).size == job.size + 9
    assert spool.used_bytes == used + 9
    assert spool.received_jobs() == []
    a, b = spool.next_delivery("a"), spool.next_delivery("b")
    assert (a.job_id, a.route, a.destination, a.path, a.attempts) == (job_id, "r1", "a", job.path, 0)
    assert (b.route, b.path) == ("r2", out)
    assert a.next_attempt_at <= time.time()
    assert spool.queue_depths() == (0, {"a": 1, "b": 1})


def test_next_delivery_is_earliest_received_and_honours_exclude(spool, tmp_path):
    jobs = [ingest(spool, tmp_path) for _ in range(3)]
    for job_id in reversed(jobs):  # routed in the reverse order of arrival
        spool.route_job(job_id, [("r", "a", spool.get_job(job_id).path)], None)

    first = spool.next_delivery("a")
    assert first.job_id == jobs[0]
    second = spool.next_delivery("a", exclude={first.id})
    third = spool.next_delivery("a", exclude={first.id, second.id})
    assert [second.job_id, third.job_id] == [jobs[1], jobs[2]]
    assert first.id > second.id > third.id  # delivery ids follow routing, not arrival
    assert spool.next_delivery("a", exclude={first.id, third.id}).id == second.id
    assert spool.next_delivery("a", exclude={first.id, second.id, third.id}) is None
    assert spool.next_delivery("other") is None
    # not due yet is still the first (deliveries go out in order)
    spool.delivery_failed(first.id, "down", time.time() + 3600)
    assert spool.next_delivery("a").id == first.id


def test_next_delivery_due_by_passes_over_one_waiting_for_its_retry(spool, tmp_path):
    jobs = [ingest(spool, tmp_path) for _ in range(3)]
    for job_id in jobs:
        spool.route_job(job_id, [("r", "a", spool.get_job(job_id).path)], None)
    first = spool.next_delivery("a")
    now = time.time()
    assert spool.next_delivery("a", due_by=now).id == first.id  # in order of arrival while due
    spool.delivery_failed(first.id, "this object failed", now + 60)
    second = spool.next_delivery("a", due_by=now)
    assert second.job_id == jobs[1]
    third = spool.next_delivery("a", exclude={second.id}, due_by=now)
    assert third.job_id == jobs[2]
    assert spool.next_delivery("a", due_by=now + 61).id == first.id  # once due, the oldest again
    assert spool.next_attempt_at("a") <= now
    assert spool.next_attempt_at("a", exclude={second.id, third.id}) == pytest.approx(now + 60)
    assert spool.next_attempt_at("other") is None


def test_job_is_done_only_when_every_delivery_is_delivered(spool, tmp_path):
    job_id = routed(spool, tmp_path, dests=("a", "b"))
    da, db = spool.next_delivery("a"), spool.next_delivery("b")

    spool.delivered(da.id)
    assert spool.get_job(job_id).state == "routed"
    assert spool.next_delivery("a") is None

    spool.delivered(db.id)
    assert spool.get_job(job_id).state == "done"
    assert spool.queue_depths() == (0, {})


def test_delivery_failed_counts_attempts_and_stores_next_attempt(spool, tmp_path):
    routed(spool, tmp_path)
    d = spool.next_delivery("a")
    at1, at2 = time.time() + 10, time.time() + 30
    spool.delivery_failed(d.id, "connection refused", at1)
    after = spool.next_delivery("a")
    assert (after.id, after.attempts, after.next_attempt_at) == (d.id, 1, pytest.approx(at1))
    spool.delivery_failed(d.id, "connection refused", at2)
    after = spool.next_delivery("a")
    assert (after.attempts, after.next_attempt_at) == (2, pytest.approx(at2))
    assert spool.status()["destinations"]["a"]["max_attempts_pending"] == 2


# -- quarantine ---------------------------------------------------------------------------


def test_quarantine_job_links_object_and_writes_record(spool, tmp_path):
    job_id = ingest(spool, tmp_path)
    job = spool.get_job(job_id)

    qid = spool.quarantine(job_id, "no route matched", "route")

    assert spool.get_job(job_id).state == "quarantined"
    assert spool.received_jobs() == []
    link = spool.quarantine_dir / f"{qid}.dcm"
    assert link.exists() and os.path.samefile(link, job.path)
    record = json.loads((spool.quarantine_dir / f"{qid}.json").read_text())
    assert record["id"] == qid and record["job"] == job_id and record["delivery"] is None
    assert (record["reason"], record["place"]) == ("no route matched", "route")
    [entry] = spool.quarantine_entries()
    assert (entry["id"], entry["job_id"], entry["reason"], entry["delivery_id"]) == (
        qid, job_id, "no route matched", None)


def test_quarantine_delivery_links_the_delivered_file(spool, tmp_path):
    job_id = ingest(spool, tmp_path)
    job = spool.get_job(job_id)
    out = spool.out_path(job_id, "r")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"processed object")
    spool.route_job(job_id, [("r", "a", out), ("r", "b", out)], None, 16)
    da = spool.next_delivery("a")

    qid = spool.quarantine(job_id, "peer refused", "destination:a", delivery_id=da.id)

    assert spool.next_delivery("a") is None
    assert spool.get_job(job_id).state == "routed", "b is still pending"
    assert os.path.samefile(spool.quarantine_dir / f"{qid}.dcm", out)
    assert not os.path.samefile(out, job.path)
    record = json.loads((spool.quarantine_dir / f"{qid}.json").read_text())
    assert (record["delivery"], record["reason"], record["place"]) == (da.id, "peer refused", "destination:a")
    entry = spool.quarantine_entry(qid)
    assert (entry["destination"], entry["attempts"], entry["last_error"]) == ("a", 1, "peer refused")

    spool.delivered(spool.next_delivery("b").id)
    assert spool.get_job(job_id).state == "quarantined", "never 'done' with a held delivery"


def test_release_job_puts_it_back_to_received(spool, tmp_path):
    job_id = ingest(spool, tmp_path)
    qid = spool.quarantine(job_id, "no route matched", "route")

    assert spool.release(qid) == "job"

    assert spool.get_job(job_id).state == "received"
    assert spool.received_jobs() == [job_id]
    assert not (spool.quarantine_dir / f"{qid}.dcm").exists()
    assert not (spool.quarantine_dir / f"{qid}.json").exists()
    assert spool.get_job(job_id).path.exists()
    assert spool.quarantine_entries() == []
    [entry] = spool.quarantine_entries(include_released=True)
    assert entry["released_at"] is not None
    with pytest.raises(ValueError):
        spool.release(qid)
    with pytest.raises(KeyError):
        spool.release(qid + 100)


def test_release_delivery_makes_it_pending_with_fresh_attempts(spool, tmp_path):
    job_id = routed(spool, tmp_path)
    d = spool.next_delivery("a")
    for _ in range(3):
        spool.delivery_failed(d.id, "down", time.time() + 3600)
    qid = spool.quarantine(job_id, "down (gave up after 4 attempts)", "destination:a", delivery_id=d.id)
    assert spool.get_job(job_id).state == "quarantined"

    assert spool.release(qid) == "delivery"

    again = spool.next_delivery("a")
    assert (again.id, again.attempts) == (d.id, 0)
    assert again.next_attempt_at <= time.time()
    assert spool.get_job(job_id).state == "routed"
    assert list(spool.quarantine_dir.iterdir()) == []
    with pytest.raises(ValueError):
        spool.release(qid)
    spool.delivered(d.id)
    assert spool.get_job(job_id).state == "done"


# -- clean-up -----------------------------------------------------------------------------


def test_cleanup_removes_only_done_jobs_past_retention(spool, tmp_path):
    done = ingest(spool, tmp_path)
    out = spool.out_path(done, "r")  # a stage changed it: its delivery sends the processed file
    out.write_bytes(b"processed")
    spool.route_job(done, [("r", "a", out)], "uidhash")
    old_layout = spool.out / str(done) / "r.dcm"  # how processed files were laid out before
    old_layout.parent.mkdir()
    old_layout.write_bytes(b"processed")
    spool.delivered(spool.next_delivery("a").id)
    pending = routed(spool, tmp_path, dests=("b",))
    held = ingest(spool, tmp_path)
    qid = spool.quarantine(held, "no route matched", "route")
    held_delivery = routed(spool, tmp_path, dests=("c",))
    spool.quarantine(held_delivery, "refused", "destination:c", delivery_id=spool.next_delivery("c").id)
    paths = {j: spool.get_job(j).path for j in (done, pending, held, held_delivery)}
    used = spool.used_bytes

    assert spool.cleanup(retention=3600, now=time.time()) == 0, "too recent"
    assert spool.get_job(done).state == "done"

    assert spool.cleanup(retention=3600, now=time.time() + 7200) == 1

    assert spool.get_job(done) is None
    assert not paths[done].exists() and not out.exists() and not old_layout.parent.exists()
    assert spool.out.is_dir()
    assert spool.used_bytes == used - CT.stat().st_size
    for j in (pending, held, held_delivery):
        assert spool.get_job(j) is not None and paths[j].exists()
    assert (spool.quarantine_dir / f"{qid}.dcm").exists()
    assert len(spool.quarantine_entries()) == 2
    assert spool.next_delivery("b").job_id == pending


# -- status -------------------------------------------------------------------------------


def test_status_counts_states_destinations_and_quarantine(spool, tmp_path):
    old = TransportFacts(source="inbound", source_type="folder", received_at=time.time() - 100)
    received = spool.ingest_file(drop(tmp_path), old)
    routed_job = routed(spool, tmp_path, dests=("a", "b"))
    spool.delivered(spool.next_delivery("b").id)
    held = ingest(spool, tmp_path, MR)
    spool.quarantine(held, "not a DICOM file", "parse")
    done = routed(spool, tmp_path, dests=("a",))
    d = [x for x in deliveries_of(spool, "a") if x.job_id == done][0]
    spool.delivered(d.id)
    assert spool.get_job(routed_job).state == "routed" and spool.get_job(received).state == "received"

    st = spool.status()

    assert st["jobs"] == {"received": 1, "routed": 1, "done": 1, "quarantined": 1}
    a, b = st["destinations"]["a"], st["destinations"]["b"]
    assert (a["pending"], a["delivered"], a["quarantined"]) == (1, 1, 0)
    assert 0 <= a["oldest_pending_age_s"] < 60
    assert a["max_attempts_pending"] == 0
    assert (b["pending"], b["delivered"], b["quarantined"]) == (0, 1, 0)
    assert "oldest_pending_age_s" not in b
    assert 100 <= st["oldest_pending_age_s"] < 160
    assert st["quarantine"] == {"entries": 1, "bytes": MR.stat().st_size}
    assert st["spool_bytes"] == spool.used_bytes
    assert st["spool"] == str(spool.root)


def test_status_of_empty_spool(spool):
    st = spool.status()
    assert st["jobs"] == {"received": 0, "routed": 0, "done": 0, "quarantined": 0}
    assert st["destinations"] == {} and st["oldest_pending_age_s"] is None
    assert st["quarantine"] == {"entries": 0, "bytes": 0}


# -- read-only ----------------------------------------------------------------------------


def test_readonly_spool_needs_an_existing_spool(tmp_path):
    with pytest.raises(FileNotFoundError):
        Spool(tmp_path / "nowhere", readonly=True)
    assert not (tmp_path / "nowhere").exists(), "a read-only open creates nothing"


def test_readonly_spool_reads_what_the_service_wrote(spool, tmp_path):
    ingest(spool, tmp_path)
    ro = Spool(spool.root, readonly=True)
    try:
        assert ro.status()["jobs"]["received"] == 1
        assert ro.used_bytes == spool.used_bytes
    finally:
        ro.close()


# -- size limit: what counts --------------------------------------------------------------

def delivered(spool: Spool, tmp_path: Path, src: Path = CT) -> int:
    job_id = routed(spool, tmp_path, src=src)
    for d in deliveries_of(spool, "a"):
        if d.job_id == job_id:
            spool.delivered(d.id)
    return job_id


def test_delivered_objects_kept_for_retention_never_refuse_intake(tmp_path):
    """A spool full of delivered objects (kept for their retention) keeps accepting: the
    oldest delivered ones are evicted first, undelivered and quarantined ones never."""
    size = CT.stat().st_size
    spool = Spool(tmp_path / "spool", max_size=10 * size)
    quarantined = ingest(spool, tmp_path)
    spool.quarantine(quarantined, "bad", "parse")
    pending = routed(spool, tmp_path)
    done = [delivered(spool, tmp_path) for _ in range(8)]
    assert spool.used_bytes == 10 * size
    for _ in range(30):  # far more than the limit, with nothing pending beyond one object
        assert spool.has_room()
        job = ingest(spool, tmp_path)
        spool.route_job(job, [("r", "a", spool.get_job(job).path)], "uidhash")
        for d in deliveries_of(spool, "a"):
            if d.job_id != pending:
                spool.delivered(d.id)
    assert spool.used_bytes <= 10 * size
    assert spool.evicted >= 28
    gone = [j for j in done if spool.get_job(j) is None]
    assert gone == done  # the oldest delivered went first
    assert spool.get_job(quarantined).state == "quarantined"
    assert spool.get_job(pending).state == "routed"
    assert spool.get_job(pending).path.exists()
    spool.close()


def test_undelivered_work_fills_the_spool(tmp_path):
    size = CT.stat().st_size
    spool = Spool(tmp_path / "spool", max_size=3 * size)
    delivered(spool, tmp_path)
    routed(spool, tmp_path)
    routed(spool, tmp_path)
    assert spool.has_room() is True  # the delivered one made room
    ingest(spool, tmp_path)
    assert spool.has_room() is False  # three undelivered objects: full
    with pytest.raises(SpoolFull):
        spool.ingest_file(drop(tmp_path), FACTS)
    spool.close()


# -- processed outputs and reboots --------------------------------------------------------

def _set_boot(spool: Spool, value: str) -> None:
    spool._conn().execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('outputs_boot', ?)", (value,))


def _processed(spool: Spool, tmp_path: Path, dests=("a", "b")) -> tuple[int, Path]:
    job_id = ingest(spool, tmp_path)
    out = spool.out_path(job_id, "r")
    out.write_bytes(b"processed output")
    spool.route_job(job_id, [("r", d, out) for d in dests], "h", extra_bytes=out.stat().st_size)
    return job_id, out


needs_boot_id = pytest.mark.skipif(spool_mod.boot_id() is None, reason="the OS does not tell its boot id")


@needs_boot_id
def test_outputs_are_synced_until_recover_records_this_boot(spool, tmp_path):
    assert spool.sync_outputs  # nothing recorded: fsync
    spool.recover(lambda *_: None)
    assert not spool.sync_outputs
    again = Spool(spool.root)  # another process (the worker) on the same spool
    assert not again.sync_outputs
    _set_boot(spool, "another boot")
    assert Spool(spool.root).sync_outputs  # a boot not recorded: fsync
    again.close()


@needs_boot_id
def test_after_a_reboot_undelivered_outputs_are_processed_again(spool, tmp_path):
    spool.recover(lambda *_: None)
    kept, kept_out = _processed(spool, tmp_path)  # both deliveries done: left alone
    for d in ("a", "b"):
        spool.delivered(spool.next_delivery(d).id)
    half, half_out = _processed(spool, tmp_path)  # a delivered, b pending
    spool.delivered(spool.next_delivery("a").id)
    pending, pending_out = _processed(spool, tmp_path)  # nothing delivered
    plain = routed(spool, tmp_path)  # delivers its received file: not an output
    received_size = spool.get_job(pending).size - pending_out.stat().st_size

    assert spool.recover(lambda *_: None)["reprocessed_after_reboot"] == 0  # the same boot: nothing
    _set_boot(spool, "the boot before")
    stats = spool.recover(lambda *_: None)
    assert stats["reprocessed_after_reboot"] == 2
    assert sorted(spool.received_jobs()) == sorted([half, pending])
    assert spool.get_job(kept).state == "done" and spool.get_job(plain).state == "routed"
    assert not half_out.exists() and not pending_out.exists() and kept_out.exists()
    assert spool.get_job(pending).size == received_size
    assert spool.queue_depths() == (2, {"a": 1})  # plain's delivery stays
    assert not spool.sync_outputs

    # processed again: the delivered destination is not sent to again
    for job_id in (half, pending):
        out = spool.out_path(job_id, "r")
        out.write_bytes(b"processed again")
        spool.route_job(job_id, [("r", d, out) for d in ("a", "b")], "h", extra_bytes=15)
    assert spool.queue_depths() == (0, {"a": 2, "b": 2})
    assert {d.job_id for d in deliveries_of(spool, "a")} == {plain, pending}
    assert {d.job_id for d in deliveries_of(spool, "b")} == {half, pending}


@needs_boot_id
def test_a_job_all_of_whose_deliveries_were_settled_is_settled_when_processed_again(spool, tmp_path):
    spool.recover(lambda *_: None)
    job_id, out = _processed(spool, tmp_path, dests=("a",))
    _set_boot(spool, "the boot before")
    spool.recover(lambda *_: None)
    # (cannot happen through recover, which resets only jobs with a pending output; route_job
    # on its own must still not leave a job routed without pending deliveries)
    spool.route_job(job_id, [("r", "a", out)], "h")
    spool.delivered(spool.next_delivery("a").id)
    spool._conn().execute("UPDATE jobs SET state='received' WHERE id=?", (job_id,))
    spool.route_job(job_id, [("r", "a", out)], "h")
    assert spool.get_job(job_id).state == "done"
    assert spool.next_delivery("a") is None
