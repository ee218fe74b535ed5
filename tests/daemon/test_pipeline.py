"""Processing: parse, route, run stages, queue deliveries, quarantine with clear reasons.

Drives ``Processor.process`` directly (no worker threads) with a real spool, real plugin
manager and runtimes built from YAML (or from hand-built routes for test stages).
"""

from __future__ import annotations

import io
import logging
import shutil
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pydicom
import pytest
import structlog
from pydicom.data import get_testdata_file

from pacsguard.daemon.config import load_config_text
from pacsguard.daemon.errors import QuarantineError
from pacsguard.daemon.extension import BatchOptions, Stage
from pacsguard.daemon.hookspecs import hookimpl
from pacsguard.daemon.item import TransportFacts
from pacsguard.daemon.logs import configure_logging
from pacsguard.daemon.pipeline import Processor, Runtime
from pacsguard.daemon.plugins import collect, get_plugin_manager
from pacsguard.daemon.router import Route
from pacsguard.daemon.service import build_runtime
from pacsguard.daemon.spool import Spool

CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))
MR_TRUNCATED = Path(get_testdata_file("MR_truncated.dcm"))
FACTS = TransportFacts(source="inbound", source_type="folder")


class Recorder:
    """A plugin observing the processing hooks."""

    def __init__(self):
        self.routed, self.stages, self.quarantined = [], [], []

    @hookimpl
    def pacsguard_object_routed(self, job_id, routes):
        self.routed.append((job_id, list(routes)))

    @hookimpl
    def pacsguard_stage_finished(self, job_id, route, stage, seconds, outcome):
        self.stages.append((job_id, route, stage, outcome))

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


def runtime_from(yaml_text: str, pm, tmp_path: Path) -> Runtime:
    dests = textwrap.dedent(f"""\
        destinations:
          a: {{type: folder, path: "{tmp_path / 'dest-a'}"}}
          b: {{type: folder, path: "{tmp_path / 'dest-b'}"}}
        """)
    registry = collect(pm)
    loaded = load_config_text(dests + textwrap.dedent(yaml_text), registry)
    return build_runtime(loaded, registry)


def processor(spool, pm, runtime, woken=None):
    return Processor(spool, pm.hook, lambda: runtime, workers=1,
                     on_routed=lambda d: woken.append(set(d)) if woken is not None else None)


def ingest(spool, tmp_path, src: Path = CT, data: bytes | None = None) -> int:
    p = tmp_path / f"{uuid.uuid4().hex}.dcm"
    if data is None:
        shutil.copyfile(src, p)
    else:
        p.write_bytes(data)
    return spool.ingest_file(p, FACTS)


def deliveries(spool, destination):
    out, seen = [], set()
    while (d := spool.next_delivery(destination, seen)) is not None:
        out.append(d)
        seen.add(d.id)
    return out


# -- routes from YAML ---------------------------------------------------------------------


def test_route_without_stages_delivers_the_original_file(spool, pm, rec, tmp_path):
    runtime = runtime_from("""\
        routes:
          - {name: plain, to: [a]}
        """, pm, tmp_path)
    job_id = ingest(spool, tmp_path)
    woken = []
    proc = processor(spool, pm, runtime, woken)

    proc.process([job_id])

    job = spool.get_job(job_id)
    assert job.state == "routed"
    [d] = deliveries(spool, "a")
    assert (d.job_id, d.route, d.path) == (job_id, "plain", job.path)
    assert d.path.read_bytes() == CT.read_bytes()
    assert [p for p in spool.out.rglob("*") if p.is_file()] == []
    assert job.size == CT.stat().st_size
    assert rec.routed == [(job_id, ["plain"])]
    assert rec.quarantined == []
    assert woken == [{"a"}]
    proc.process([job_id])  # no longer 'received': not processed twice
    assert len(deliveries(spool, "a")) == 1


def test_set_attributes_writes_exactly_the_changes(spool, pm, rec, tmp_path):
    original = pydicom.dcmread(CT)
    assert "StationName" in original and "Manufacturer" in original
    assert "BodyPartExamined" not in original
    runtime = runtime_from("""\
        routes:
          - name: coerce
            pipeline:
              - set-attributes:
                  set: {ImageComments: "via pacsguard"}
                  set_if_missing: {Manufacturer: "OTHER VENDOR", BodyPartExamined: "HEAD"}
                  remove: [StationName]
            to: [a]
        """, pm, tmp_path)
    job_id = ingest(spool, tmp_path)

    processor(spool, pm, runtime).process([job_id])

    job = spool.get_job(job_id)
    [d] = deliveries(spool, "a")
    assert d.path == spool.out_path(job_id, "coerce")
    assert d.path.parent == spool.out
    assert job.path.read_bytes() == CT.read_bytes(), "the received object is never changed"
    assert job.size == CT.stat().st_size + d.path.stat().st_size
    written = pydicom.dcmread(d.path)
    assert written.ImageComments == "via pacsguard"
    assert written.Manufacturer == original.Manufacturer
    assert written.BodyPartExamined == "HEAD"
    assert "StationName" not in written
    changed = {"ImageComments", "BodyPartExamined", "StationName"}
    want = {e.tag for e in original if e.keyword not in changed}
    have = {e.tag for e in written if e.keyword not in changed}
    assert have == want
    for tag in want:
        assert written[tag].VR == original[tag].VR, tag
        assert written[tag].value == original[tag].value, tag
    assert written.PixelData == original.PixelData
    for kw in ("TransferSyntaxUID", "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"):
        assert written.file_meta[kw].value == original.file_meta[kw].value
    assert rec.stages == [(job_id, "coerce", "set-attributes", "ok")]


def test_a_batch_of_written_objects_syncs_the_folder_once_before_routing(spool, pm, rec, tmp_path, monkeypatch):
    """Each processed file is fsync'd; the folder holding their names once per batch, and
    before any of the jobs counts as routed. The header each delivery gets is the written one."""
    from pacsguard.daemon import pipeline as pipeline_mod
    from pacsguard.daemon.item import HEADERS

    runtime = runtime_from("""\
        routes:
          - name: coerce
            pipeline:
              - set-attributes: {set: {ImageComments: "via pacsguard"}}
            to: [a]
        """, pm, tmp_path)
    jobs = [ingest(spool, tmp_path) for _ in range(4)]
    synced, states = [], []
    real = pipeline_mod.fsync_dir

    def counting(folder):
        states.append([spool.get_job(j).state for j in jobs])
        synced.append(folder)
        real(folder)

    monkeypatch.setattr(pipeline_mod, "fsync_dir", counting)
    processor(spool, pm, runtime).process(jobs)

    assert synced == [spool.out]
    assert states == [["received"] * 4]
    assert [spool.get_job(j).state for j in jobs] == ["routed"] * 4
    for d in deliveries(spool, "a"):
        header = HEADERS.take(d.path)
        assert header is not None and header.ImageComments == "via pacsguard"
        assert "PixelData" not in header  # the item's dataset, its pixel data dropped
        assert header.SOPInstanceUID == pydicom.dcmread(d.path).SOPInstanceUID


def test_every_matching_route_fires_until_a_final_one(spool, pm, rec, tmp_path):
    runtime = runtime_from("""\
        routes:
          - {name: ct-to-a, match: {Modality: CT}, to: [a]}
          - {name: all-to-b, final: true, to: [b]}
          - {name: after-final, to: [a]}
        """, pm, tmp_path)
    ct, mr = ingest(spool, tmp_path, CT), ingest(spool, tmp_path, MR)
    woken = []

    processor(spool, pm, runtime, woken).process([ct, mr])

    assert [(d.job_id, d.route) for d in deliveries(spool, "a")] == [(ct, "ct-to-a")]
    assert [(d.job_id, d.route) for d in deliveries(spool, "b")] == [(ct, "all-to-b"), (mr, "all-to-b")]
    assert rec.routed == [(ct, ["ct-to-a", "all-to-b"]), (mr, ["all-to-b"])]
    assert woken == [{"a", "b"}]


def test_no_matching_route_is_quarantined(spool, pm, rec, tmp_path):
    runtime = runtime_from("""\
        routes:
          - {name: mr-only, match: {Modality: MR}, to: [a]}
        """, pm, tmp_path)
    job_id = ingest(spool, tmp_path, CT)

    processor(spool, pm, runtime).process([job_id])

    assert spool.get_job(job_id).state == "quarantined"
    [entry] = spool.quarantine_entries()
    assert (entry["job_id"], entry["reason"], entry["place"]) == (job_id, "no route matched", "route")
    assert rec.quarantined == [(job_id, "no route matched", "route")]
    assert rec.routed == [] and deliveries(spool, "a") == []


@pytest.mark.parametrize("src, data, reason", [
    (None, b"This is a plain text note, not an image.\n" * 10, "not a DICOM file"),
    (None, b"", "empty file"),
    (MR_TRUNCATED, None, "truncated"),
], ids=["text", "empty", "truncated"])
def test_damaged_input_is_quarantined_with_a_clear_reason(spool, pm, rec, tmp_path, src, data, reason):
    runtime = runtime_from("routes:\n  - {name: all, to: [a]}\n", pm, tmp_path)
    good = ingest(spool, tmp_path, CT)
    bad = ingest(spool, tmp_path, src, data)

    processor(spool, pm, runtime).process([bad, good])

    assert spool.get_job(bad).state == "quarantined"
    [entry] = spool.quarantine_entries()
    assert entry["job_id"] == bad and entry["place"] == "parse"
    assert reason in entry["reason"]
    assert [(j, w) for j, _, w in rec.quarantined] == [(bad, "parse")]
    assert spool.get_job(good).state == "routed", "a neighbour in the batch is unaffected"
    assert [d.job_id for d in deliveries(spool, "a")] == [good]


# -- stages defined here ------------------------------------------------------------------


class Refuse(Stage):
    """Refuses MR objects the proper way."""

    name = "test-refuse"

    def process(self, item):
        if item.header.Modality == "MR":
            raise QuarantineError("unsupported pixel format for this stage")
        return item


class Crash(Stage):
    """A buggy stage whose exception message holds patient data."""

    name = "test-crash"
    PATIENT = "DOE^JOHN born 19700101"  # kept off the raise line: tracebacks quote it

    def process(self, item):
        if item.header.Modality == "MR":
            raise RuntimeError(f"cannot handle patient {self.PATIENT}")
        return item


def hand_built(*stages) -> Runtime:
    return Runtime(routes=[Route("custom", [], stages=list(stages), to=["a"])])


def test_stage_quarantine_error_quarantines_with_its_reason(spool, pm, rec, tmp_path):
    ct, mr = ingest(spool, tmp_path, CT), ingest(spool, tmp_path, MR)

    processor(spool, pm, hand_built(Refuse(Refuse.Options()))).process([mr, ct])

    assert spool.get_job(mr).state == "quarantined"
    [entry] = spool.quarantine_entries()
    assert entry["job_id"] == mr
    assert "unsupported pixel format for this stage" in entry["reason"]
    assert "test-refuse" in entry["reason"]
    assert entry["place"] == "stage:test-refuse"
    assert rec.quarantined == [(mr, entry["reason"], "stage:test-refuse")]
    assert sorted(rec.stages) == sorted([(mr, "custom", "test-refuse", "quarantined"),
                                         (ct, "custom", "test-refuse", "ok")])
    assert spool.get_job(ct).state == "routed"


def test_stage_bug_quarantines_without_leaking_the_message(spool, pm, rec, tmp_path):
    ct, mr = ingest(spool, tmp_path, CT), ingest(spool, tmp_path, MR)

    with structlog.testing.capture_logs() as logs:
        processor(spool, pm, hand_built(Crash(Crash.Options()))).process([ct, mr])

    assert spool.get_job(mr).state == "quarantined"
    [entry] = spool.quarantine_entries()
    reason = entry["reason"]
    assert "test-crash" in reason and "RuntimeError" in reason
    assert "DOE^JOHN" not in reason and "19700101" not in reason
    assert "DOE^JOHN" not in (spool.quarantine_dir / f"{entry['id']}.json").read_text()
    assert rec.quarantined == [(mr, reason, "stage:test-crash")]
    assert (mr, "custom", "test-crash", "error") in rec.stages
    assert spool.get_job(ct).state == "routed"
    [err] = [e for e in logs if e["log_level"] == "error"]
    assert err["job"] == mr and "RuntimeError" in err["error"]
    assert "DOE^JOHN" not in repr(logs)


@pytest.fixture
def console_logging():
    """The service's own console log set-up (used on a TTY), restored afterwards."""
    root = logging.getLogger()
    handlers, level, old = list(root.handlers), root.level, structlog.get_config()
    buf = io.StringIO()
    configure_logging("info", "console", buf)
    yield buf
    structlog.configure(**old)
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_stage_bug_is_logged_in_console_format(spool, pm, tmp_path, console_logging):
    mr = ingest(spool, tmp_path, MR)

    processor(spool, pm, hand_built(Crash(Crash.Options()))).process([mr])

    assert spool.get_job(mr).state == "quarantined"
    assert "stage raised an unexpected error" in console_logging.getvalue()


class Batcher(Stage):
    """Records the batches it gets; refuses the jobs listed in ``bad``."""

    name = "test-batch"
    batching = True

    def __init__(self, options):
        super().__init__(options)
        self.batches: list[list[int]] = []
        self.singles: list[int] = []
        self.bad: set[int] = set()

    def process_batch(self, items):
        self.batches.append(sorted(i.job_id for i in items))
        if any(i.job_id in self.bad for i in items):
            raise RuntimeError("one item in the batch broke the kernel")
        for i in items:
            i.results[self.name] = "batched"
        return items

    def process(self, item):
        self.singles.append(item.job_id)
        if item.job_id in self.bad:
            raise QuarantineError("pixel data cannot be processed")
        item.results[self.name] = "single"
        return item


def test_batching_stage_gets_items_grouped_by_geometry(spool, pm, rec, tmp_path):
    stage = Batcher(Batcher.Options())
    cts = [ingest(spool, tmp_path, CT) for _ in range(3)]  # 128 x 128
    mrs = [ingest(spool, tmp_path, MR) for _ in range(2)]  # 64 x 64

    processor(spool, pm, hand_built(stage)).process([cts[0], mrs[0], cts[1], mrs[1], cts[2]])

    assert sorted(stage.batches) == sorted([cts, mrs])
    assert stage.singles == []
    assert all(spool.get_job(j).state == "routed" for j in cts + mrs)
    assert sorted(j for j, *_ in rec.stages) == sorted(cts + mrs)
    assert {o for *_, o in rec.stages} == {"ok"}


def test_failed_batch_is_retried_item_by_item(spool, pm, rec, tmp_path):
    stage = Batcher(Batcher.Options())
    cts = [ingest(spool, tmp_path, CT) for _ in range(3)]
    stage.bad = {cts[1]}

    processor(spool, pm, hand_built(stage)).process(cts)

    assert stage.batches == [cts]
    assert sorted(stage.singles) == cts
    assert [spool.get_job(j).state for j in cts] == ["routed", "quarantined", "routed"]
    [entry] = spool.quarantine_entries()
    assert entry["job_id"] == cts[1] and "pixel data cannot be processed" in entry["reason"]
    assert [j for j, *_ in rec.quarantined] == [cts[1]]
    assert [d.job_id for d in deliveries(spool, "a")] == [cts[0], cts[2]]


class Stamper(Stage):
    """Appends a mark to ImageComments in place; the batch kernel breaks on ``bad``."""

    name = "test-stamp"
    batching = True

    def __init__(self, options):
        super().__init__(options)
        self.bad: set[int] = set()

    def _stamp(self, item):
        if item.job_id in self.bad:
            raise QuarantineError("pixel data cannot be processed")
        item.dataset.ImageComments = f"{item.dataset.get('ImageComments', '')}+stamp"
        return item

    def process_batch(self, items):
        return [self._stamp(i) for i in items]  # items before the bad one are already changed

    def process(self, item):
        return self._stamp(item)


def test_failed_batch_retry_starts_from_the_received_object(spool, pm, tmp_path):
    stage = Stamper(Stamper.Options())
    cts = [ingest(spool, tmp_path, CT) for _ in range(3)]
    stage.bad = {cts[2]}  # the batch fails after the first two were stamped

    processor(spool, pm, hand_built(stage)).process(cts)

    assert spool.get_job(cts[2]).state == "quarantined"
    original = pydicom.dcmread(CT).ImageComments
    for job_id in cts[:2]:
        [d] = [d for d in deliveries(spool, "a") if d.job_id == job_id]
        assert pydicom.dcmread(d.path).ImageComments == f"{original}+stamp"


# -- micro-batching -----------------------------------------------------------------------


class Gathered(Stage):
    """A batching stage with the host's batch options; records every call it gets."""

    name = "test-gathered"
    batching = True
    Options = BatchOptions

    def __init__(self, options):
        super().__init__(options)
        self.calls: list[tuple[float, list[int], set]] = []  # (when, job ids, geometries)
        self._lock = threading.Lock()

    def _record(self, items):
        with self._lock:
            self.calls.append((time.monotonic(), sorted(i.job_id for i in items), {i.geometry() for i in items}))

    def process_batch(self, items):
        self._record(items)
        return items

    def process(self, item):
        self._record([item])
        return item


def run_threads(spool, pm, stage, jobs, *, workers=2, pause=0.0) -> float:
    """Submit ``jobs`` (``pause`` seconds apart) to real worker threads taking one job at a
    time on their own; the time of the first submit once all are routed."""
    proc = Processor(spool, pm.hook, lambda: hand_built(stage), workers=workers, batch_size=1)
    proc.start()
    t0 = time.monotonic()
    try:
        for j in jobs:
            proc.submit(j)
            time.sleep(pause)
        deadline = time.monotonic() + 20
        while spool.received_jobs() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        proc.stop(5)
    assert all(spool.get_job(j).state == "routed" for j in jobs)
    return t0


def test_mixed_geometries_are_batched_only_with_their_own_kind(spool, pm, tmp_path):
    stage = Gathered(BatchOptions(batch_size=4, max_wait_ms=300))
    cts = [ingest(spool, tmp_path, CT) for _ in range(5)]  # 128 x 128
    mrs = [ingest(spool, tmp_path, MR) for _ in range(3)]  # 64 x 64
    mixed = [cts[0], mrs[0], cts[1], mrs[1], cts[2], cts[3], mrs[2], cts[4]]

    run_threads(spool, pm, stage, mixed)

    assert all(len(geometries) == 1 for _, _, geometries in stage.calls), stage.calls
    assert all(len(jobs) <= 4 for _, jobs, _ in stage.calls)
    assert any(len(jobs) > 1 for _, jobs, _ in stage.calls)  # the workers took 1 each: gathered
    done = sorted(j for _, jobs, _ in stage.calls for j in jobs)
    assert done == sorted(mixed)  # each object once


def test_a_lone_object_is_processed_within_max_wait_ms(spool, pm, tmp_path):
    stage = Gathered(BatchOptions(batch_size=8, max_wait_ms=300))
    job = ingest(spool, tmp_path, CT)

    t0 = run_threads(spool, pm, stage, [job])

    [(when, jobs, _)] = stage.calls
    assert jobs == [job]
    assert 0.25 <= when - t0 < 0.3 + 0.2  # it waited for company, and no longer than allowed


def test_an_object_arriving_within_max_wait_ms_joins_the_batch(spool, pm, tmp_path):
    stage = Gathered(BatchOptions(batch_size=8, max_wait_ms=400))
    cts = [ingest(spool, tmp_path, CT) for _ in range(2)]

    run_threads(spool, pm, stage, cts, pause=0.1)

    assert [jobs for _, jobs, _ in stage.calls] == [cts]


def test_without_a_batching_stage_a_worker_does_not_wait(spool, pm, tmp_path):
    stage = Gathered(BatchOptions(batch_size=8, max_wait_ms=2000))
    stage.batching = False  # the same stage, not batching: its wait does not apply
    job = ingest(spool, tmp_path, CT)

    t0 = run_threads(spool, pm, stage, [job])

    [(when, _, _)] = stage.calls
    assert when - t0 < 0.5


def test_a_batching_stage_gets_at_most_its_batch_size(spool, pm, tmp_path):
    stage = Gathered(BatchOptions(batch_size=2, max_wait_ms=0))
    cts = [ingest(spool, tmp_path, CT) for _ in range(5)]

    processor(spool, pm, hand_built(stage)).process(cts)

    assert [jobs for _, jobs, _ in stage.calls] == [cts[0:2], cts[2:4], cts[4:5]]
    assert all(spool.get_job(j).state == "routed" for j in cts)
