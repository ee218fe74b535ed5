"""Meta-tests that guard the hook surface (as datasette does), then one test per hook that
drives the real code path and checks what an observing plugin saw."""

from __future__ import annotations

import inspect
import io
import json
import logging
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import structlog
from pydicom.data import get_testdata_file
from structlog.testing import capture_logs

from pacsguard.daemon import hookspecs
from pacsguard.daemon.config import load_config_text
from pacsguard.daemon.delivery import DestinationWorker
from pacsguard.daemon.errors import DeliveryError, QuarantineError
from pacsguard.daemon.extension import Destination, Measure, Stage
from pacsguard.daemon.hookspecs import hookimpl
from pacsguard.daemon.item import Item, TransportFacts
from pacsguard.daemon.pipeline import Processor
from pacsguard.daemon.plugins import collect, get_plugin_manager
from pacsguard.daemon.service import Service, build_runtime
from pacsguard.daemon.spool import Spool
from pacsguard.plugins.folder import FolderDestination, FolderSource
from pacsguard.plugins.setattrs import SetAttributes

REPO = Path(__file__).resolve().parents[2]
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
HOOKS = sorted(n for n, f in vars(hookspecs).items()
               if n.startswith("pacsguard_") and hasattr(f, "pacsguard_spec"))


# --- meta-tests ------------------------------------------------------------------------


def test_every_hook_has_a_test():
    assert len(HOOKS) == 12, HOOKS  # the scan below must not pass vacuously
    pattern = re.compile(r"^\s*(?:async\s+)?def\s+test_hook_(pacsguard_\w+)\s*\(", re.MULTILINE)
    tested = set()
    for path in (REPO / "tests").rglob("*.py"):
        tested.update(pattern.findall(path.read_text()))
    assert [h for h in HOOKS if h not in tested] == []


def _signature(name: str) -> str:
    params = inspect.signature(getattr(hookspecs, name)).parameters
    return f"{name}({', '.join(params)})"


def test_every_hook_is_documented():
    readme = (REPO / "README.md").read_text()
    assert [_signature(h) for h in HOOKS if _signature(h) not in readme] == []


# --- helpers ---------------------------------------------------------------------------


class Observer:
    """A plugin that records every hook call it sees and contributes what it is given."""

    def __init__(self, *, stages=(), destinations=()):
        self.__name__ = "observer"
        self.lock = threading.Lock()
        self.calls: list[tuple[str, dict]] = []
        self.stages, self.destinations = stages, destinations

    def _rec(self, name: str, kw: dict) -> None:
        with self.lock:
            self.calls.append((name, {k: v for k, v in kw.items() if k != "self"}))

    def seen(self, name: str) -> list[dict]:
        with self.lock:
            return [kw for n, kw in self.calls if n == name]

    @hookimpl
    def pacsguard_register_stages(self, register):
        self._rec("pacsguard_register_stages", locals())
        for cls in self.stages:
            register(cls)

    @hookimpl
    def pacsguard_register_destinations(self, register):
        self._rec("pacsguard_register_destinations", locals())
        for cls in self.destinations:
            register(cls)

    @hookimpl
    def pacsguard_register_sources(self, register):
        self._rec("pacsguard_register_sources", locals())

    @hookimpl
    def pacsguard_decode_pixels(self, item):
        self._rec("pacsguard_decode_pixels", locals())  # returns None: the next one decides

    @hookimpl
    def pacsguard_object_received(self, job_id, source, size):
        self._rec("pacsguard_object_received", locals())

    @hookimpl
    def pacsguard_object_routed(self, job_id, routes):
        self._rec("pacsguard_object_routed", locals())

    @hookimpl
    def pacsguard_stage_finished(self, job_id, route, stage, seconds, outcome):
        self._rec("pacsguard_stage_finished", locals())

    @hookimpl
    def pacsguard_stage_result(self, job_id, route, stage, result):
        self._rec("pacsguard_stage_result", locals())

    @hookimpl
    def pacsguard_delivery_failed(self, job_id, route, destination, attempt, retry_in):
        self._rec("pacsguard_delivery_failed", locals())

    @hookimpl
    def pacsguard_object_delivered(self, job_id, route, destination, attempts, seconds):
        self._rec("pacsguard_object_delivered", locals())

    @hookimpl
    def pacsguard_object_quarantined(self, job_id, quarantine_id, reason, where):
        self._rec("pacsguard_object_quarantined", locals())


class Reject(Stage):
    """Quarantines every object."""
    name = "acme-reject"

    def process(self, item):
        raise QuarantineError("no thanks")


class Crash(Stage):
    """A buggy stage."""
    name = "acme-crash"

    def process(self, item):
        raise RuntimeError(f"cannot handle {item.header.PatientName}")  # PHI in the message


class Measuring(Stage):
    """Reports a declared figure (and one it did not declare, which is dropped)."""
    name = "acme-measure"
    measures = {"rows": Measure("rows of the image", (64, 128, 256, 512))}

    def process(self, item):
        return item

    def measured(self, item):
        return {"rows": item.header.Rows, "secret": 1, "none": None}


class Flaky(Destination):
    """Fails the first attempt, then accepts."""
    name = "acme-flaky"

    def __init__(self, name, options):
        super().__init__(name, options)
        self.sent = []

    def send(self, path, header):
        self.sent.append(header.SOPInstanceUID)
        if len(self.sent) == 1:
            raise DeliveryError("peer down")


@pytest.fixture
def restore_logging():
    """Service.run() configures logging for the process: put it back afterwards."""
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


def wait_for(predicate, timeout: float = 15.0, alive=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if alive is not None and not alive():
            break
        time.sleep(0.02)
    return predicate()


class Setup:
    """A real spool, a runtime built from YAML, and a processor that uses the real hooks."""

    def __init__(self, tmp_path: Path, routes: str, destinations: str | None = None, observer=None):
        self.tmp = tmp_path
        self.observer = observer or Observer(stages=(Reject, Crash), destinations=(Flaky,))
        self.pm = get_plugin_manager(extra=(self.observer,))
        self.registry = collect(self.pm)
        self.out = tmp_path / "out"
        destinations = destinations or f"  out: {{type: folder, path: {self.out}}}\n"
        text = f"destinations:\n{destinations}routes:\n{routes}"
        self.runtime = build_runtime(load_config_text(text, self.registry), self.registry)
        self.spool = Spool(tmp_path / "spool")
        self.processor = Processor(self.spool, self.pm.hook, lambda: self.runtime, workers=1)

    def ingest(self, source: str = "drop", data: bytes | None = None) -> int:
        drop = self.tmp / "drop"
        drop.mkdir(exist_ok=True)
        path = drop / f"{source}-{time.monotonic_ns()}.dcm"
        path.write_bytes(CT_SMALL.read_bytes() if data is None else data)
        return self.spool.ingest_file(path, TransportFacts(source=source, source_type="folder"))

    def deliver(self, name: str, until, timeout: float = 15.0) -> bool:
        dest, spec = self.runtime.destinations[name]
        worker = DestinationWorker(name, dest, spec, self.spool, self.pm.hook)
        worker.start()
        try:
            return wait_for(until, timeout)
        finally:
            assert worker.stop(5)


# --- contribution hooks ----------------------------------------------------------------


def test_hook_pacsguard_register_stages():
    observer = Observer(stages=(Reject,))
    registry = collect(get_plugin_manager(extra=(observer,)))
    assert registry.stages["set-attributes"].cls is SetAttributes
    assert registry.stages["set-attributes"].plugin == "pacsguard.plugins.setattrs"
    assert registry.stages["acme-reject"].plugin == "observer"
    calls = observer.seen("pacsguard_register_stages")
    assert len(calls) == 1 and callable(calls[0]["register"])


def test_hook_pacsguard_register_destinations():
    observer = Observer(destinations=(Flaky,))
    registry = collect(get_plugin_manager(extra=(observer,)))
    assert registry.destinations["folder"].cls is FolderDestination
    assert registry.destinations["folder"].plugin == "pacsguard.plugins.folder"
    assert registry.destinations["acme-flaky"].plugin == "observer"
    assert len(observer.seen("pacsguard_register_destinations")) == 1


def test_hook_pacsguard_register_sources():
    observer = Observer()
    registry = collect(get_plugin_manager(extra=(observer,)))
    assert registry.sources["folder"].cls is FolderSource
    assert registry.sources["folder"].plugin == "pacsguard.plugins.folder"
    assert registry.sources["dicom"].plugin == "pacsguard.plugins.dicom"
    assert set(registry.sources) == {"folder", "dicom"}
    assert len(observer.seen("pacsguard_register_sources")) == 1


# --- pixel decoding --------------------------------------------------------------------


def test_hook_pacsguard_decode_pixels(tmp_path):
    path = tmp_path / "ct.dcm"
    shutil.copyfile(CT_SMALL, path)
    facts = TransportFacts(source="t", source_type="folder")
    observer = Observer()
    pm = get_plugin_manager(extra=(observer,))
    item = Item(1, path, facts)
    pixels = pm.hook.pacsguard_decode_pixels(item=item)
    assert pixels.shape == (128, 128)
    assert (pixels == pydicom.dcmread(CT_SMALL).pixel_array).all()
    assert [kw["item"] for kw in observer.seen("pacsguard_decode_pixels")] == [item]
    # Item.pixels() goes through the same hook
    via_item = Item(2, path, facts, decode_pixels=pm.hook.pacsguard_decode_pixels).pixels()
    assert via_item.shape == (128, 128) and len(observer.seen("pacsguard_decode_pixels")) == 2

    sentinel = np.full((2, 2), 7, dtype=np.int16)

    class Gpu:
        @hookimpl(tryfirst=True)
        def pacsguard_decode_pixels(self, item):
            return sentinel
    observer2 = Observer()
    pm2 = get_plugin_manager(extra=(observer2, Gpu()))
    assert pm2.hook.pacsguard_decode_pixels(item=Item(3, path, facts)) is sentinel
    assert observer2.seen("pacsguard_decode_pixels") == []  # firstresult: nobody else asked


def test_default_decoder_fails_closed_with_a_reason(tmp_path):
    ds = pydicom.dcmread(CT_SMALL)
    ds.PixelData = ds.PixelData[:1001]  # too short for 128x128x16 bits
    path = tmp_path / "short.dcm"
    ds.save_as(path)
    pm = get_plugin_manager()
    with pytest.raises(QuarantineError, match=r"cannot decode pixel data \(Explicit VR Little Endian\): it does not match Rows"):
        pm.hook.pacsguard_decode_pixels(item=Item(1, path, TransportFacts(source="t", source_type="folder")))


# --- observation hooks -----------------------------------------------------------------

ROUTES = """\
  - {name: ct, match: {Modality: CT, source: ok}, pipeline: [{set-attributes: {set: {InstitutionName: X}}}], to: [out]}
  - {name: all, match: {source: ok}, to: [out]}
  - {name: rejecting, match: {source: reject}, pipeline: [{acme-reject: {}}], to: [out]}
  - {name: crashing, match: {source: crash}, pipeline: [{acme-crash: {}}], to: [out]}
"""


def test_hook_pacsguard_object_routed(tmp_path):
    s = Setup(tmp_path, ROUTES)
    job, unrouted = s.ingest("ok"), s.ingest("nobody")
    s.processor.process([job, unrouted])
    assert s.observer.seen("pacsguard_object_routed") == [{"job_id": job, "routes": ["ct", "all"]}]
    assert s.spool.get_job(job).state == "routed"
    assert s.spool.get_job(unrouted).state == "quarantined"  # no route: not reported as routed


def test_hook_pacsguard_stage_finished(tmp_path):
    s = Setup(tmp_path, ROUTES)
    jobs = {src: s.ingest(src) for src in ("ok", "reject", "crash")}
    with capture_logs() as logs:
        s.processor.process(list(jobs.values()))
    calls = s.observer.seen("pacsguard_stage_finished")
    got = sorted((c["job_id"], c["route"], c["stage"], c["outcome"]) for c in calls)
    assert got == sorted([(jobs["ok"], "ct", "set-attributes", "ok"),
                          (jobs["reject"], "rejecting", "acme-reject", "quarantined"),
                          (jobs["crash"], "crashing", "acme-crash", "error")])
    assert all(isinstance(c["seconds"], float) and 0 <= c["seconds"] < 10 for c in calls)
    (bug,) = [e for e in logs if e["event"] == "stage raised an unexpected error"]
    assert (bug["job"], bug["route"], bug["stage"]) == (jobs["crash"], "crashing", "acme-crash")
    assert bug["error"].startswith("RuntimeError at test_hooks.py:")
    assert "CompressedSamples" not in repr(bug)  # exception messages may hold patient data


def test_hook_pacsguard_stage_result(tmp_path):
    routes = ROUTES + "  - {name: measuring, match: {source: measure}, pipeline: [{acme-measure: {}}], to: [out]}\n"
    s = Setup(tmp_path, routes, observer=Observer(stages=(Reject, Crash, Measuring)))
    jobs = {src: s.ingest(src) for src in ("ok", "measure", "reject")}
    s.processor.process(list(jobs.values()))
    # only the stage that declared measures reports, with its declared figures, as numbers
    assert s.observer.seen("pacsguard_stage_result") == [
        {"job_id": jobs["measure"], "route": "measuring", "stage": "acme-measure", "result": {"rows": 128.0}}]


def test_hook_pacsguard_object_quarantined(tmp_path):
    s = Setup(tmp_path, ROUTES)
    jobs = {src: s.ingest(src) for src in ("nobody", "reject", "crash")}
    jobs["garbage"] = s.ingest("ok", data=b"this is not DICOM" * 20)
    with capture_logs():
        s.processor.process(list(jobs.values()))
    seen = {c["job_id"]: c for c in s.observer.seen("pacsguard_object_quarantined")}
    assert set(seen) == set(jobs.values())
    assert seen[jobs["nobody"]]["where"] == "route" and seen[jobs["nobody"]]["reason"] == "no route matched"
    assert seen[jobs["reject"]]["where"] == "stage:acme-reject"
    assert seen[jobs["reject"]]["reason"] == "stage acme-reject: no thanks"
    assert seen[jobs["crash"]]["where"] == "stage:acme-crash"
    assert "RuntimeError" in seen[jobs["crash"]]["reason"] and "Compressed" not in seen[jobs["crash"]]["reason"]
    assert seen[jobs["garbage"]]["where"] == "parse" and seen[jobs["garbage"]]["reason"].startswith("not a DICOM file")
    entries = {e["id"]: e for e in s.spool.quarantine_entries()}
    for c in seen.values():
        entry = entries[c["quarantine_id"]]
        assert (entry["job_id"], entry["reason"], entry["place"]) == (c["job_id"], c["reason"], c["where"])
    assert all(s.spool.get_job(j).state == "quarantined" for j in jobs.values())


def test_hook_pacsguard_object_delivered(tmp_path):
    s = Setup(tmp_path, ROUTES)
    job = s.ingest("ok")
    s.processor.process([job])
    assert s.deliver("out", lambda: len(s.observer.seen("pacsguard_object_delivered")) == 2)
    calls = sorted(s.observer.seen("pacsguard_object_delivered"), key=lambda c: c["route"])
    assert [(c["job_id"], c["route"], c["destination"], c["attempts"]) for c in calls] == \
        [(job, "all", "out", 1), (job, "ct", "out", 1)]
    assert all(0 <= c["seconds"] < 60 for c in calls)
    assert s.observer.seen("pacsguard_delivery_failed") == []
    uid = pydicom.dcmread(CT_SMALL).SOPInstanceUID
    written = list(s.out.rglob(f"{uid}.dcm"))
    assert len(written) == 1  # both routes render the same path: the second overwrote the first
    assert s.spool.get_job(job).state == "done"


def test_hook_pacsguard_delivery_failed(tmp_path):
    flaky = "  flaky: {type: acme-flaky, retry: {initial: 50ms, max_delay: 1s, jitter: 0, max_attempts: 3}}\n"
    s = Setup(tmp_path, "  - {name: all, to: [flaky]}\n", destinations=flaky)
    job = s.ingest("ok")
    s.processor.process([job])
    assert s.deliver("flaky", lambda: s.observer.seen("pacsguard_object_delivered"))
    assert s.observer.seen("pacsguard_delivery_failed") == [
        {"job_id": job, "route": "all", "destination": "flaky", "attempt": 1, "retry_in": 0.05}]
    (delivered,) = s.observer.seen("pacsguard_object_delivered")
    assert (delivered["job_id"], delivered["attempts"]) == (job, 2)
    assert len(s.runtime.destinations["flaky"][0].sent) == 2
    names = [n for n, _ in s.observer.calls]
    assert names.index("pacsguard_delivery_failed") < names.index("pacsguard_object_delivered")


def test_folder_destination_below_a_file_is_retried_or_quarantined(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"a file, not a folder")
    dests = f"  out: {{type: folder, path: {blocker / 'root'}, retry: {{initial: 50ms, max_delay: 1s, jitter: 0, max_attempts: 2}}}}\n"
    s = Setup(tmp_path, "  - {name: all, to: [out]}\n", destinations=dests)
    job = s.ingest("ok")
    s.processor.process([job])
    assert s.deliver("out", lambda: s.observer.seen("pacsguard_object_quarantined"))
    failed = s.observer.seen("pacsguard_delivery_failed")
    assert [c["attempt"] for c in failed] in ([], [1])  # retried once, or refused at once as permanent
    (q,) = s.observer.seen("pacsguard_object_quarantined")
    assert q["job_id"] == job and q["where"] == "destination:out"
    assert q["reason"].startswith("cannot write to destination folder")
    assert s.observer.seen("pacsguard_object_delivered") == []
    assert s.spool.get_job(job).state == "quarantined"
    assert blocker.read_bytes() == b"a file, not a folder"


def test_hook_pacsguard_object_received(tmp_path, restore_logging):
    inbound, out = tmp_path / "inbound", tmp_path / "out"
    config = tmp_path / "pacsguard.yaml"
    config.write_text(f"""
watch: [{{name: inbound, path: {inbound}, settle: 100ms, rescan_interval: 1s}}]
spool: {{path: {tmp_path / "spool"}, max_size: 1GiB, retention: 1h}}
destinations: {{out: {{type: folder, path: {out}}}}}
routes: [{{name: all, to: [out]}}]
metrics: {{enabled: false}}
logging: {{level: warning, format: json}}
shutdown_timeout: 5s
""")
    observer = Observer()
    service = Service(config, pm=get_plugin_manager(extra=(observer,)), log_stream=io.StringIO())
    result: dict = {}

    def run():
        try:
            result["rc"] = service.run()
        except BaseException as exc:  # surfaced by the assertions below
            result["error"] = exc
    thread = threading.Thread(target=run, name="service", daemon=True)
    thread.start()
    try:
        staged = tmp_path / "staging.dcm"
        shutil.copyfile(CT_SMALL, staged)
        inbound.mkdir(parents=True, exist_ok=True)
        staged.rename(inbound / "ct.dcm")  # moved in complete, as modalities should
        assert wait_for(lambda: observer.seen("pacsguard_object_delivered"), 20, thread.is_alive), result
        (received,) = observer.seen("pacsguard_object_received")
        assert received == {"job_id": 1, "source": "inbound", "size": CT_SMALL.stat().st_size}
        assert observer.seen("pacsguard_object_routed") == [{"job_id": 1, "routes": ["all"]}]
        names = [n for n, _ in observer.calls]
        assert names.index("pacsguard_object_received") < names.index("pacsguard_object_routed")
        assert not (inbound / "ct.dcm").exists()
    finally:
        service.request(signal.SIGTERM)
        thread.join(15)
    assert not thread.is_alive()
    assert result == {"rc": 0}



def test_hook_pacsguard_object_received_for_objects_adopted_at_start(tmp_path, restore_logging):
    """An object made durable but not recorded before a stop (kill -9 between the answer
    and the row, or a file moved in from a watched folder) is adopted at the next start:
    it is announced like any received object (log line and hook), then processed."""
    spool_root, out = tmp_path / "spool", tmp_path / "out"
    orphan = spool_root / "incoming" / "folder.inbound" / "0123456789abcdef.dcm"
    orphan.parent.mkdir(parents=True)
    shutil.copyfile(CT_SMALL, orphan)
    Spool(spool_root).close()  # the database exists; the file has no row
    config = tmp_path / "pacsguard.yaml"
    config.write_text(f"""
spool: {{path: {spool_root}}}
destinations: {{out: {{type: folder, path: {out}}}}}
routes: [{{name: all, to: [out]}}]
metrics: {{enabled: false}}
logging: {{level: info, format: json}}
shutdown_timeout: 5s
""")
    observer = Observer()
    log = io.StringIO()
    service = Service(config, pm=get_plugin_manager(extra=(observer,)), log_stream=log)
    thread = threading.Thread(target=service.run, name="service", daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: observer.seen("pacsguard_object_delivered"), 20, thread.is_alive)
        (received,) = observer.seen("pacsguard_object_received")
        assert received == {"job_id": 1, "source": "inbound", "size": CT_SMALL.stat().st_size}
        lines = [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("{")]
        (announced,) = [line for line in lines if line["event"] == "object received"]
        assert announced["adopted_at_start"] is True
        (started,) = [line for line in lines if line["event"] == "pacsguard started"]
        assert started["orphans_adopted"] == 1 and started["requeued"] == 1
    finally:
        service.request(signal.SIGTERM)
        thread.join(15)
    assert not thread.is_alive()
