"""Deliveries in a separate process: real child process, real spool, real folder destination."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from pacsguard.daemon.config import load_config_text
from pacsguard.daemon.worker_process import WorkerProcess, _Relay
from pacsguard.daemon.hookspecs import hookimpl
from pacsguard.daemon.item import TransportFacts
from pacsguard.daemon.plugins import collect, get_plugin_manager
from pacsguard.daemon.spool import Spool

CT = Path(get_testdata_file("CT_small.dcm"))
FACTS = TransportFacts(source="inbound", source_type="folder")


class Recorder:
    def __init__(self):
        self.delivered, self.quarantined, self.routed = [], [], []

    @hookimpl
    def pacsguard_object_routed(self, job_id, routes):
        self.routed.append((job_id, routes))

    @hookimpl
    def pacsguard_object_delivered(self, job_id, route, destination, attempts, seconds):
        self.delivered.append((job_id, route, destination, attempts))

    @hookimpl
    def pacsguard_object_quarantined(self, job_id, quarantine_id, reason, where):
        self.quarantined.append((job_id, where))


def wait_until(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def setup(tmp_path, out: Path):
    text = f"""
destinations:
  out: {{type: folder, path: "{out}", retry: {{initial: 0.05, max_attempts: 2, jitter: 0}}}}
routes: [{{name: all, to: [out]}}]
"""
    rec = Recorder()
    pm = get_plugin_manager(entry_points=False, extra=(rec,))
    loaded = load_config_text(text, collect(pm), path=tmp_path / "pacsguard.yaml")
    spool = Spool(tmp_path / "spool")
    return loaded, spool, pm, rec


def route_one(spool: Spool, tmp_path: Path) -> int:
    src = tmp_path / f"in-{time.monotonic_ns()}.dcm"
    src.write_bytes(CT.read_bytes())
    job = spool.ingest_file(src, FACTS)
    spool.route_job(job, [("all", "out", spool.get_job(job).path)], None)
    return job


def test_child_delivers_and_relays_hooks_to_the_parent(tmp_path):
    out = tmp_path / "out"
    loaded, spool, pm, rec = setup(tmp_path, out)
    proc = WorkerProcess(loaded, spool.root, 0, pm.hook)
    try:
        assert proc.pid != os.getpid() and proc.alive()
        jobs = [route_one(spool, tmp_path) for _ in range(3)]
        proc.wake(["out"])
        assert wait_until(lambda: len(rec.delivered) == 3), rec.delivered
        assert sorted(j for j, *_ in rec.delivered) == jobs
        assert {(r, d, a) for _, r, d, a in rec.delivered} == {("all", "out", 1)}
        assert all(spool.get_job(j).state == "done" for j in jobs)
        files = list(out.rglob("*.dcm"))
        assert len(files) == 1  # the same SOP instance three times: one path, overwritten
        assert pydicom.dcmread(files[0]).SOPInstanceUID == pydicom.dcmread(CT).SOPInstanceUID
    finally:
        assert proc.stop(10) is True
    assert not proc.alive()


def test_quarantine_in_the_child_reaches_the_parent(tmp_path):
    out = tmp_path / "blocked"
    out.write_text("a file where the destination folder should be")
    loaded, spool, pm, rec = setup(tmp_path, out)
    proc = WorkerProcess(loaded, spool.root, 0, pm.hook)
    try:
        job = route_one(spool, tmp_path)
        proc.wake(["out"])
        assert wait_until(lambda: rec.quarantined), "no quarantine relayed"
        assert rec.quarantined == [(job, "destination:out")]
        assert spool.get_job(job).state == "quarantined"
    finally:
        proc.stop(10)


def test_only_hooks_the_parent_observes_cross_the_pipe():
    import multiprocessing
    import threading

    a, b = multiprocessing.Pipe()
    relay = _Relay(a, threading.Lock(), None, observed=["pacsguard_object_delivered"])
    relay.pacsguard_object_routed(job_id=1, routes=["all"])
    relay.pacsguard_stage_finished(job_id=1, route="all", stage="x", seconds=0.1, outcome="ok")
    relay.pacsguard_object_delivered(job_id=1, route="all", destination="out", attempts=1, seconds=0.2)
    assert b.poll(1)
    assert b.recv() == ("hook", "pacsguard_object_delivered",
                        {"job_id": 1, "route": "all", "destination": "out", "attempts": 1, "seconds": 0.2})
    assert not b.poll(0.1)  # routed and stage_finished: nobody listens, nothing was sent
    with pytest.raises(AttributeError):
        relay.pacsguard_not_a_hook


PARENT = """
import sys, time
from pathlib import Path
from pacsguard.daemon.config import load_config_text
from pacsguard.daemon.worker_process import WorkerProcess
from pacsguard.daemon.plugins import collect, get_plugin_manager

if __name__ == "__main__":
    tmp = Path(sys.argv[1])
    pm = get_plugin_manager(entry_points=False)
    text = "destinations: {out: {type: folder, path: '%s'}}\\nroutes: [{name: all, to: [out]}]\\n" % (tmp / "out")
    loaded = load_config_text(text, collect(pm))
    proc = WorkerProcess(loaded, tmp / "spool", 0, pm.hook)
    (tmp / "child.tmp").write_text(str(proc.pid))
    (tmp / "child.tmp").rename(tmp / "child.pid")
    time.sleep(600)
"""


def test_child_exits_when_the_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    Spool(tmp_path / "spool").close()
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: (tmp_path / "child.pid").exists(), 60), "the delivery process did not start"
        child = int((tmp_path / "child.pid").read_text())
        assert _running(child)
        parent.kill()  # kill -9: the child's pipe closes, nothing else tells it
        parent.wait(10)
        assert wait_until(lambda: not _running(child), 15), "orphaned delivery process kept running"
    finally:
        parent.kill()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_to_the_child_stops_it(tmp_path):
    loaded, spool, pm, _ = setup(tmp_path, tmp_path / "out")
    proc = WorkerProcess(loaded, spool.root, 0, pm.hook)
    os.kill(proc.pid, signal.SIGTERM)
    assert wait_until(lambda: not proc.alive(), 15)
    proc.stop(1)


def test_child_processes_what_the_service_received(tmp_path):
    """The service only receives: a submitted job is routed and delivered by the child,
    and the routing hook reaches the parent's plugins."""
    out = tmp_path / "out"
    loaded, spool, pm, rec = setup(tmp_path, out)
    proc = WorkerProcess(loaded, spool.root, 0, pm.hook)
    try:
        src = tmp_path / "in.dcm"
        src.write_bytes(CT.read_bytes())
        job = spool.ingest_file(src, FACTS)
        assert spool.get_job(job).state == "received"
        proc.submit(job)
        assert wait_until(lambda: len(rec.delivered) == 1), rec.delivered
        assert rec.routed == [(job, ["all"])]
        assert spool.get_job(job).state == "done"
        assert [p.name for p in out.iterdir()]
    finally:
        assert proc.stop(10)


def test_a_worker_whose_service_dies_while_it_starts_exits_cleanly(tmp_path, capfd):
    """The service is gone before the worker says it is ready (its pipe is closed): no
    traceback, exit 0, and what was received stays safe in the spool or was processed."""
    import multiprocessing

    from pacsguard.daemon.worker_process import child_main

    out = tmp_path / "out"
    loaded, spool, pm, _ = setup(tmp_path, out)
    src = tmp_path / "in.dcm"
    src.write_bytes(CT.read_bytes())
    job = spool.ingest_file(src, FACTS)
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=child_main, args=(child_end, loaded.text, None, str(spool.root), 0))
    child.start()
    child_end.close()
    parent_end.close()  # the service dies while its worker starts
    child.join(60)
    err = capfd.readouterr().err
    assert child.exitcode == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert spool.get_job(job).state in ("received", "routed", "done")


def test_the_worker_reports_what_it_requeued_at_start(tmp_path):
    out = tmp_path / "out"
    loaded, spool, pm, rec = setup(tmp_path, out)
    jobs = []
    for i in range(3):
        src = tmp_path / f"in{i}.dcm"
        src.write_bytes(CT.read_bytes())
        jobs.append(spool.ingest_file(src, FACTS))
    proc = WorkerProcess(loaded, spool.root, 0, pm.hook)
    try:
        assert proc.requeue_received() == 3  # the count the child found at its start
        assert proc.requeue_received() == 0  # later calls only ask it to look again
        assert wait_until(lambda: len(rec.delivered) == 3), rec.delivered
    finally:
        assert proc.stop(10)
