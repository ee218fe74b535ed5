"""Delivery: backoff, ordered sending, retries, quarantine, and isolation of destinations."""

from __future__ import annotations

import random
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from pacsguard.daemon.config import DestinationSpec, RetryConfig, load_config_text
from pacsguard.daemon.delivery import DeliveryManager, DestinationWorker, backoff_delay
from pacsguard.daemon.errors import DeliveryError
from pacsguard.daemon.extension import Destination
from pacsguard.daemon.hookspecs import hookimpl
from pacsguard.daemon.item import TransportFacts
from pacsguard.daemon.plugins import collect, get_plugin_manager
from pacsguard.daemon.service import build_runtime
from pacsguard.daemon.spool import Spool

CT = Path(get_testdata_file("CT_small.dcm"))
FACTS = TransportFacts(source="inbound", source_type="folder")
FAST = dict(initial=0.05, factor=2.0, max_delay=1.0, jitter=0)


def wait_until(cond, timeout=10.0, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


# -- backoff ------------------------------------------------------------------------------


def test_backoff_grows_exponentially_up_to_the_cap():
    retry = RetryConfig(initial=0.5, factor=2.0, max_delay=5.0, jitter=0)
    assert [backoff_delay(retry, n) for n in range(1, 8)] == [0.5, 1, 2, 4, 5, 5, 5]
    retry = RetryConfig(initial=1, factor=3.0, max_delay=100, jitter=0)
    assert [backoff_delay(retry, n) for n in range(1, 6)] == [1, 3, 9, 27, 81]
    assert backoff_delay(RetryConfig(initial=2, factor=1.0, max_delay=10, jitter=0), 9) == 2


def test_backoff_jitter_stays_within_its_fraction():
    retry = RetryConfig(initial=1.0, factor=2.0, max_delay=8.0, jitter=0.2)
    rng = random.Random(1234)
    for n in range(1, 8):
        base = min(8.0, 2.0 ** (n - 1))
        delays = [backoff_delay(retry, n, rng) for _ in range(300)]
        assert all(base * 0.8 - 1e-9 <= d <= base * 1.2 + 1e-9 for d in delays), n
        assert min(delays) < base * 0.9 and max(delays) > base * 1.1, "jitter is applied both ways"
    again = random.Random(1234)
    assert backoff_delay(retry, 3, again) == backoff_delay(retry, 3, random.Random(1234))


# -- workers ------------------------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.delivered, self.failed, self.quarantined = [], [], []

    @hookimpl
    def pacsguard_object_delivered(self, job_id, route, destination, attempts, seconds):
        self.delivered.append((job_id, destination, attempts))

    @hookimpl
    def pacsguard_delivery_failed(self, job_id, route, destination, attempt, retry_in):
        self.failed.append((job_id, destination, attempt, retry_in))

    @hookimpl
    def pacsguard_object_quarantined(self, job_id, quarantine_id, reason, where):
        self.quarantined.append((job_id, reason, where))


@pytest.fixture
def rec():
    return Recorder()


@pytest.fixture
def pm(rec):
    return get_plugin_manager(entry_points=False, extra=(rec,))


@pytest.fixture
def spool(tmp_path):
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


@pytest.fixture
def workers():
    """Stops every worker or manager a test started, even when the test fails."""
    started = []
    yield started
    for w in started:
        w.stop(5)


def folder_destination(pm, root: Path, name: str = "out"):
    """A folder destination built from YAML, as the service builds it."""
    registry = collect(pm)
    loaded = load_config_text(textwrap.dedent(f"""\
        destinations:
          {name}:
            type: folder
            path: "{root}"
            retry: {{initial: 50ms, factor: 2, max_delay: 1s, max_attempts: 3, jitter: 0}}
        routes:
          - {{name: r, to: [{name}]}}
        """), registry)
    return build_runtime(loaded, registry).destinations[name]


def spec(**retry) -> DestinationSpec:
    return DestinationSpec(type="test", retry=RetryConfig(**{**FAST, **retry}))


def new_object(tmp_path: Path) -> Path:
    """A copy of CT_small with its own SOP Instance UID (the folder template uses it)."""
    ds = pydicom.dcmread(CT)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    p = tmp_path / f"{uuid.uuid4().hex}.dcm"
    ds.save_as(p, enforce_file_format=True)
    return p


def queue_jobs(spool, tmp_path, n, dests=("out",), reverse=False) -> list[int]:
    """n received jobs routed to ``dests``; with reverse, delivery ids run against job ids."""
    jobs = [spool.ingest_file(new_object(tmp_path), FACTS) for _ in range(n)]
    for job_id in (reversed(jobs) if reverse else jobs):
        spool.route_job(job_id, [("r", d, spool.get_job(job_id).path) for d in dests], None)
    return jobs


class Down(Destination):
    """A peer that refuses every object; records when it was called."""

    name = "test-down"

    def __init__(self, name, options, *, permanent=False, gate: threading.Event | None = None):
        super().__init__(name, options)
        self.calls: list[float] = []
        self.permanent = permanent
        self.gate = gate

    def send(self, path, header):
        self.calls.append(time.monotonic())
        if self.gate is not None:
            self.gate.wait(10)  # a peer that hangs until the test lets go
        raise DeliveryError("association rejected by peer", permanent=self.permanent)


def test_worker_delivers_pending_in_order_of_arrival(spool, pm, rec, tmp_path, workers):
    jobs = queue_jobs(spool, tmp_path, 4, reverse=True)  # routed last-received first
    expected_order = sorted(jobs)  # sent in the order they were received
    dest, dspec = folder_destination(pm, tmp_path / "outbound")
    worker = DestinationWorker("out", dest, dspec, spool, pm.hook)
    workers.append(worker)

    worker.start()
    assert wait_until(lambda: len(rec.delivered) == 4)
    assert worker.stop(5)
    workers.remove(worker)

    assert [j for j, _, _ in rec.delivered] == expected_order
    assert {(d, a) for _, d, a in rec.delivered} == {("out", 1)}
    for job_id in jobs:
        job = spool.get_job(job_id)
        assert job.state == "done"
        h = pydicom.dcmread(job.path, stop_before_pixels=True)
        target = tmp_path / "outbound" / h.StudyInstanceUID / h.SeriesInstanceUID / f"{h.SOPInstanceUID}.dcm"
        assert target.read_bytes() == job.path.read_bytes()
    assert spool.next_delivery("out") is None
    assert rec.failed == [] and rec.quarantined == []


def test_worker_picks_up_deliveries_queued_after_start(spool, pm, rec, tmp_path, workers):
    dest, dspec = folder_destination(pm, tmp_path / "outbound")
    worker = DestinationWorker("out", dest, dspec, spool, pm.hook)
    workers.append(worker)
    worker.start()
    jobs = queue_jobs(spool, tmp_path, 2)
    worker.wake()
    assert wait_until(lambda: len(rec.delivered) == 2, timeout=5)
    assert [j for j, _, _ in rec.delivered] == jobs


def test_failing_destination_backs_off_then_quarantines(spool, pm, rec, tmp_path, workers):
    [job_id] = queue_jobs(spool, tmp_path, 1, dests=("down",))
    down = Down("down", Down.Options())
    worker = DestinationWorker("down", down, spec(max_attempts=4), spool, pm.hook)
    workers.append(worker)

    worker.start()
    assert wait_until(lambda: rec.quarantined, timeout=10)

    assert len(down.calls) == 4
    assert [(j, d, a) for j, d, a, _ in rec.failed] == [(job_id, "down", n) for n in (1, 2, 3)]
    delays = [r for *_, r in rec.failed]
    assert delays == pytest.approx([0.05, 0.1, 0.2])
    gaps = [b - a for a, b in zip(down.calls, down.calls[1:])]
    for gap, delay in zip(gaps, delays):
        assert gap >= delay * 0.9, (gaps, delays)
    [(qjob, reason, where)] = rec.quarantined
    assert (qjob, where) == (job_id, "destination:down")
    assert "association rejected by peer" in reason and "4 attempts" in reason
    [entry] = spool.quarantine_entries()
    assert (entry["job_id"], entry["destination"], entry["attempts"]) == (job_id, "down", 4)
    assert entry["reason"] == reason
    assert spool.get_job(job_id).state == "quarantined"
    assert spool.next_delivery("down") is None
    time.sleep(0.2)  # nothing more is sent once quarantined
    assert len(down.calls) == 4


class Flaky(Destination):
    """Fails its first ``failures`` calls, then accepts; records which job each call sent."""

    name = "test-flaky"

    def __init__(self, name, options, failures):
        super().__init__(name, options)
        self.failures = failures
        self.sent: list[str] = []

    def send(self, path, header):
        self.sent.append(header.SOPInstanceUID)
        if len(self.sent) <= self.failures:
            raise DeliveryError("peer busy")


def test_after_a_failure_the_oldest_delivery_is_retried_first(spool, pm, rec, tmp_path, workers):
    jobs = queue_jobs(spool, tmp_path, 3, dests=("flaky",))
    uids = [pydicom.dcmread(spool.get_job(j).path, stop_before_pixels=True).SOPInstanceUID for j in jobs]
    flaky = Flaky("flaky", Flaky.Options(), failures=2)
    worker = DestinationWorker("flaky", flaky, spec(max_attempts=5), spool, pm.hook)
    workers.append(worker)

    worker.start()
    assert wait_until(lambda: len(rec.delivered) == 3, timeout=10)

    assert flaky.sent == [uids[0], uids[0], uids[0], uids[1], uids[2]]
    assert rec.delivered == [(jobs[0], "flaky", 3), (jobs[1], "flaky", 1), (jobs[2], "flaky", 1)]
    assert [r for *_, r in rec.failed] == pytest.approx([0.05, 0.1])


def test_permanent_failure_is_quarantined_after_one_attempt(spool, pm, rec, tmp_path, workers):
    [job_id] = queue_jobs(spool, tmp_path, 1, dests=("down",))
    down = Down("down", Down.Options(), permanent=True)
    worker = DestinationWorker("down", down, spec(max_attempts=10), spool, pm.hook)
    workers.append(worker)

    worker.start()
    assert wait_until(lambda: rec.quarantined, timeout=5)

    assert len(down.calls) == 1 and rec.failed == []
    assert rec.quarantined == [(job_id, "association rejected by peer", "destination:down")]
    [entry] = spool.quarantine_entries()
    assert (entry["reason"], entry["attempts"]) == ("association rejected by peer", 1)


def test_released_delivery_is_sent_again(spool, pm, rec, tmp_path, workers):
    [job_id] = queue_jobs(spool, tmp_path, 1)
    d = spool.next_delivery("out")
    qid = spool.quarantine(job_id, "peer was down", "destination:out", delivery_id=d.id)
    dest, dspec = folder_destination(pm, tmp_path / "outbound")
    worker = DestinationWorker("out", dest, dspec, spool, pm.hook)
    workers.append(worker)
    worker.start()
    time.sleep(0.1)
    assert rec.delivered == [], "a quarantined delivery is not sent"

    spool.release(qid)
    worker.wake()

    assert wait_until(lambda: rec.delivered, timeout=5)
    assert rec.delivered == [(job_id, "out", 1)]
    assert spool.get_job(job_id).state == "done"


def test_a_hanging_destination_does_not_delay_another(spool, pm, rec, tmp_path, workers):
    jobs = queue_jobs(spool, tmp_path, 5, dests=("down", "out"))
    gate = threading.Event()
    down = Down("down", Down.Options(), gate=gate)
    manager = DeliveryManager(spool, pm.hook)
    workers.append(manager)
    try:
        manager.apply({"down": (down, spec(max_attempts=10, initial=5.0, max_delay=10.0)),
                       "out": folder_destination(pm, tmp_path / "outbound")})
        assert set(manager.workers) == {"down", "out"}

        assert wait_until(lambda: len(rec.delivered) == 5, timeout=5)

        assert [j for j, _, _ in rec.delivered] == jobs
        assert {d for _, d, _ in rec.delivered} == {"out"}
        assert len(down.calls) == 1, "the hanging peer is still busy with its first object"
        assert not gate.is_set()
        assert manager.in_flight == 1
        status = spool.status()["destinations"]
        assert (status["out"]["delivered"], status["down"]["pending"]) == (5, 5)
        assert all(spool.get_job(j).state == "routed" for j in jobs)
    finally:
        gate.set()
    assert manager.stop(5)
    workers.remove(manager)
    assert len(rec.failed) == 1 and rec.failed[0][1] == "down"
    assert spool.next_delivery("down").attempts == 1


class Picky(Destination):
    """Takes every object but one (SOP Instance UID ``bad``), for which it raises ``error``;
    records the SOP Instance UID of each call."""

    name = "test-picky"

    def __init__(self, name, options, bad: str, error: Exception):
        super().__init__(name, options)
        self.bad, self.error = bad, error
        self.sent: list[str] = []

    def send(self, path, header):
        self.sent.append(header.SOPInstanceUID)
        if header.SOPInstanceUID == self.bad:
            raise self.error


@pytest.mark.parametrize("error, why", [
    (lambda: RuntimeError("bug in the plugin"), "destination error (RuntimeError"),
    (lambda: DeliveryError("this object cannot go now", scope="object"), "this object cannot go now"),
], ids=["unexpected-exception", "object-scoped-error"])
def test_one_failing_object_does_not_hold_up_the_others(spool, pm, rec, tmp_path, workers, error, why):
    jobs = queue_jobs(spool, tmp_path, 4, dests=("picky",))
    uids = [pydicom.dcmread(spool.get_job(j).path, stop_before_pixels=True).SOPInstanceUID for j in jobs]
    picky = Picky("picky", Picky.Options(), bad=uids[0], error=error())  # the oldest object fails
    worker = DestinationWorker("picky", picky, spec(max_attempts=3, initial=1.0, factor=1.0), spool, pm.hook)
    workers.append(worker)

    worker.start()
    # the others go out at once, well before the failed object is due again (1 s)
    assert wait_until(lambda: len(rec.delivered) == 3, timeout=0.7), picky.sent
    assert picky.sent == uids
    assert rec.delivered == [(j, "picky", 1) for j in jobs[1:]]
    assert worker._down_until == 0 and worker._failures == 0, "the destination itself is not backed off"

    assert wait_until(lambda: rec.quarantined, timeout=5)
    assert picky.sent == uids + [uids[0], uids[0]]  # the failed object was retried on its own
    assert [(j, a, r) for j, _, a, r in rec.failed] == [(jobs[0], 1, 1.0), (jobs[0], 2, 1.0)]
    [(qjob, reason, where)] = rec.quarantined
    assert (qjob, where) == (jobs[0], "destination:picky")
    assert why in reason and "gave up after 3 attempts" in reason
    [entry] = spool.quarantine_entries()
    assert (entry["job_id"], entry["attempts"]) == (jobs[0], 3)
    assert [spool.get_job(j).state for j in jobs] == ["quarantined", "done", "done", "done"]


def test_an_object_retried_later_does_not_hide_newer_objects(spool, pm, rec, tmp_path, workers):
    """Objects that arrive while an older one waits for its own retry are delivered at once."""
    [old] = queue_jobs(spool, tmp_path, 1, dests=("picky",))
    bad = pydicom.dcmread(spool.get_job(old).path, stop_before_pixels=True).SOPInstanceUID
    picky = Picky("picky", Picky.Options(), bad=bad, error=RuntimeError("bug"))
    worker = DestinationWorker("picky", picky, spec(max_attempts=2, initial=3.0, max_delay=5.0), spool, pm.hook)
    workers.append(worker)
    worker.start()
    assert wait_until(lambda: rec.failed, timeout=5)

    new = queue_jobs(spool, tmp_path, 2, dests=("picky",))
    worker.wake()
    assert wait_until(lambda: len(rec.delivered) == 2, timeout=1.5)
    assert [j for j, _, _ in rec.delivered] == new and picky.sent[0] == bad and len(picky.sent) == 3
    assert spool.get_job(old).state == "routed", "the failed object still waits for its retry"
