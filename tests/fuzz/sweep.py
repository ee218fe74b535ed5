"""A fuzz sweep against the real service: mutated objects in through a watched folder and
over the network (C-STORE), while C-ECHO is asked every half second; then every
acknowledged object must end delivered (to a real dcmtk storescp) or quarantined with a
reason an administrator can read, the worker's memory must stay bounded, and a good
object sent afterwards must be delivered.

Used by ``tests/e2e/test_fuzz.py`` (a few hundred mutations) and by ``python -m tests.fuzz``
(the long sweep, thousands).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydicom.data import get_testdata_file

from tests.fuzz.mutations import Mutation
from tests.peers import Pacsguard, Storescp, configure_pynetdicom, echoscu, free_port, storescu, wait_for

GOOD = Path(get_testdata_file("CT_small.dcm"))


@dataclass
class Report:
    sent_folder: int = 0
    sent_network: int = 0
    acknowledged_network: int = 0
    refused_network: int = 0
    echoes: int = 0
    echo_failures: list[str] = field(default_factory=list)
    worker_rss_peak_mib: float = 0.0
    settle_seconds: float = 0.0
    jobs: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)  # reason -> count
    unreadable_reasons: list[str] = field(default_factory=list)
    good_delivered: bool = False

    def summary(self) -> str:
        top = sorted(self.reasons.items(), key=lambda kv: -kv[1])[:12]
        lines = [f"sent: {self.sent_folder} via folder, {self.sent_network} via network "
                 f"({self.acknowledged_network} acknowledged, {self.refused_network} refused)",
                 f"C-ECHO: {self.echoes} asked, {len(self.echo_failures)} failed",
                 f"worker peak RSS: {self.worker_rss_peak_mib:.0f} MiB; settled in {self.settle_seconds:.1f} s",
                 f"jobs: {self.jobs}", "most frequent quarantine reasons:"]
        lines += [f"  {n:5d}  {reason}" for reason, n in top]
        lines.append(f"good object afterwards delivered: {self.good_delivered}")
        return "\n".join(lines)


def config(tmp: Path, port: int, sink_port: int) -> str:
    return yaml.safe_dump({
        "node": {"ae_title": "PACSGUARD", "host": "127.0.0.1", "port": port, "max_associations": 4,
                 "acse_timeout": "5s", "dimse_timeout": "10s"},
        "watch": [{"name": "in", "path": str(tmp / "in"), "settle": "0.2s", "rescan_interval": "1s"}],
        "spool": {"path": str(tmp / "spool")},
        "processing": {"workers": 2, "batch_size": 8},
        "destinations": {"sink": {"type": "dicom", "ae_title": "STORESCP", "host": "127.0.0.1", "port": sink_port,
                                  "retry": {"initial": "0.2s", "max_attempts": 3, "max_delay": "1s"}}},
        "routes": [{"name": "all", "pipeline": [{"set-attributes": {"set": {"InstitutionName": "FUZZ"}}}],
                    "to": ["sink"]}],
        "logging": {"level": "info", "format": "json"},
        "metrics": {"enabled": False},
        "shutdown_timeout": "10s",
    }, sort_keys=False)


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _worker_pid(svc: Pacsguard) -> int | None:
    for line in svc.log_lines():
        if line.get("event") == "pacsguard started":
            return line.get("delivery_pid")
    return None


def _send_network(port: int, paths: list[Path], report: Report) -> None:
    """C-STORE each file as it is (pynetdicom streams the data set after the meta)."""
    from pydicom.filereader import read_file_meta_info
    from pynetdicom import AE, build_context

    configure_pynetdicom()
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for batch_start in range(0, len(paths), 20):
        batch = paths[batch_start:batch_start + 20]
        contexts = {}  # one presentation context per (SOP class, the file's own transfer syntax)
        for p in batch:
            try:
                meta = read_file_meta_info(p)
                contexts.setdefault((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)), None)
            except Exception:
                continue
        ctx = [build_context(cls, [ts]) for cls, ts in contexts] or [build_context("1.2.840.10008.5.1.4.1.1.2")]
        assoc = ae.associate("127.0.0.1", port, ae_title="PACSGUARD", contexts=ctx)
        if not assoc.is_established:
            report.refused_network += len(batch)
            report.sent_network += len(batch)
            continue
        for p in batch:
            report.sent_network += 1
            try:
                status = assoc.send_c_store(p)
                ok = status is not None and getattr(status, "Status", None) == 0
            except Exception:
                ok = False
            if ok:
                report.acknowledged_network += 1
            else:
                report.refused_network += 1
            if not assoc.is_established:
                break
        if assoc.is_established:
            assoc.release()


def run_sweep(tmp: Path, mutations: list[Mutation], *, network_share: float = 0.3,
              settle_timeout: float = 300.0, log=print) -> Report:
    tmp = Path(tmp)
    report = Report()
    port, sink_port = free_port(), free_port()
    (tmp / "in").mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=tmp, prefix="staging-"))
    sink = Storescp(tmp / "sink", aet="STORESCP", port=sink_port).start()
    svc = Pacsguard(tmp / "work", config(tmp, port, sink_port)).start(timeout=60)
    worker = _worker_pid(svc)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            out = echoscu(port)
            report.echoes += 1
            if out.returncode != 0:
                report.echo_failures.append(f"{time.strftime('%H:%M:%S')}: {out.stderr.strip()[-200:]}")
            if worker:
                report.worker_rss_peak_mib = max(report.worker_rss_peak_mib, _rss_mib(worker))
            stop.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        network, folder = [], []
        every = max(1, round(1 / network_share)) if network_share else len(mutations) + 1
        for i, m in enumerate(mutations):
            (network if m.network and i % every == 0 else folder).append((i, m))
        # network: files written to a staging folder, sent as they are
        paths = []
        for i, m in network:
            p = staging / f"{i:06d}-{m.kind}.dcm"
            p.write_bytes(m.data)
            paths.append(p)
        sender = threading.Thread(target=_send_network, args=(port, paths, report), daemon=True)
        sender.start()
        for i, m in folder:  # written under an ignored name, then renamed in
            tmp_name = tmp / "in" / f".{i:06d}.tmp"
            tmp_name.write_bytes(m.data)
            os.rename(tmp_name, tmp / "in" / f"{i:06d}-{m.kind}.dcm")
            report.sent_folder += 1
            if i % 50 == 0:
                time.sleep(0.1)  # let the watcher breathe; a modality does not write 1000 files at once
        sender.join(timeout=settle_timeout)
        log(f"sent {report.sent_folder} via folder, {report.sent_network} via network; waiting for them to settle")
        expected = report.sent_folder + report.acknowledged_network
        t0 = time.monotonic()

        def settled() -> bool:
            jobs = svc.status()["jobs"]
            report.jobs = jobs
            return sum(jobs.values()) >= expected and jobs["received"] == 0 and jobs["routed"] == 0

        wait_for(settled, settle_timeout, f"{expected} objects to be delivered or quarantined", interval=2.0)
        report.settle_seconds = time.monotonic() - t0
        entries = json.loads(svc.cli("quarantine", "list", "--json").stdout)
        for e in entries:
            reason = e["reason"]
            report.reasons[reason] = report.reasons.get(reason, 0) + 1
            if not reason or ".py:" in reason or "Traceback" in reason:
                report.unreadable_reasons.append(reason)
        # and afterwards, a good object goes through
        import pydicom
        from pydicom.uid import generate_uid

        good = pydicom.dcmread(GOOD)
        good.SOPInstanceUID = good.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        good_path = staging / "good.dcm"
        good.save_as(good_path)
        before = len(sink.files())
        out = storescu(port, [good_path])
        report.good_delivered = out.returncode == 0 and bool(
            wait_for(lambda: len(sink.files()) > before, 30, "the good object at the sink"))
    finally:
        stop.set()
        watcher.join(5)
        svc.stop(timeout=30)
        sink.stop()
    return report
