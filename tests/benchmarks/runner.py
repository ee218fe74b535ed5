"""One measured run of one contender: start fresh, warm up, send, wait, measure, stop."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from .common import MB, log, percentile
from .contenders import Contender, cleanup
from .corpus import CorpusFile
from .procmon import TreeMonitor, machine_busy
from .senders import RawStoreSCU, SendResult, drop_files, storescu_burst
from .sink import Sink


class RunFailed(Exception):
    pass


def _send(contender: Contender, files_or_groups, cfg: Path, *, rate: float | None, sink_pdu: int,
          cancel: threading.Event | None = None) -> SendResult:
    if contender.kind == "folder":
        files = [f for g in files_or_groups for f in g] if rate is None else files_or_groups
        return drop_files(files, contender.inbound, rate=rate, cancel=cancel)
    if rate is None:
        return storescu_burst(contender.port, contender.called_aet, files_or_groups, cfg, cancel=cancel)
    scu = RawStoreSCU("127.0.0.1", contender.port, contender.called_aet, max_pdu=sink_pdu)
    return scu.send_at_rate(files_or_groups, rate, cancel=cancel)


def measure(contender: Contender, *, shape: str, workdir: Path, files: list[CorpusFile],
            groups: list[list[CorpusFile]] | None, cfg: Path, warmup: list[CorpusFile], sink_pdu: int,
            rate: float | None = None, stall_timeout: float = 60.0, rss_interval: float = 0.05,
            keep_timeline: bool = False) -> dict:
    """Run one load shape ("burst", "rate" or "memory") against a fresh contender."""
    cleanup(workdir)
    workdir.mkdir(parents=True)
    sink = Sink(workdir / "sink", max_pdu=sink_pdu)
    sink.start()
    try:
        try:
            contender.start(workdir / "service", sink)
        except Exception as exc:
            raise RunFailed(f"{contender.key} did not start: {exc}") from exc
        try:
            return _measure(contender, sink, shape=shape, files=files, groups=groups, cfg=cfg, warmup=warmup,
                            sink_pdu=sink_pdu, rate=rate, stall_timeout=stall_timeout,
                            rss_interval=rss_interval, keep_timeline=keep_timeline)
        finally:
            contender.stop()
    finally:
        sink.stop()
        cleanup(workdir)


def _measure(contender, sink, *, shape, files, groups, cfg, warmup, sink_pdu, rate, stall_timeout,
             rss_interval, keep_timeline) -> dict:
    # warm-up: a few small slices through the same path, then an empty sink
    if warmup:
        if contender.kind == "dicom":
            w = storescu_burst(contender.port, contender.called_aet, [warmup], cfg)
        else:
            w = drop_files(warmup, contender.inbound)
        ok, n = sink.wait_for(len(warmup), timeout=60, abort=contender.died)
        if not ok:
            why = contender.died() or "; ".join(w.errors) or f"{n} of {len(warmup)} delivered"
            raise RunFailed(f"warm-up failed ({why})\n{contender.diagnostics()}")
        sink.clear()
    svc = TreeMonitor(contender.service_pid, interval=rss_interval)
    sink_mon = TreeMonitor(sink.pid, interval=0.5)
    svc.start()
    sink_mon.start()
    result: dict = {}
    holder: dict = {}
    cancel = threading.Event()

    def sender():
        try:
            holder["res"] = _send(contender, groups if rate is None else files, cfg, rate=rate, sink_pdu=sink_pdu,
                                  cancel=cancel)
        except Exception as exc:
            holder["error"] = f"{type(exc).__name__}: {exc}"

    t_start = time.time()
    busy0 = machine_busy()
    th = threading.Thread(target=sender, name="sender", daemon=True)
    th.start()
    expected = len(files)
    last_count, last_change = 0, time.monotonic()
    incomplete = None
    try:
        while True:
            count = sink.count()
            mono = time.monotonic()
            if count != last_count:
                last_count, last_change = count, mono
            done = not th.is_alive()
            if done and "res" in holder:
                expected = min(expected, holder["res"].acked)
            if done and (count >= expected or count + contender.quarantined() >= expected):
                break  # every object delivered or quarantined (the service's log says why)
            if contender.died():
                incomplete = contender.died()
                break
            if not sink.alive():
                incomplete = "the sink exited"
                break
            if mono - last_change > stall_timeout:
                incomplete = (f"stalled: {count} of {expected} delivered, nothing new for {stall_timeout:.0f}s"
                              + ("" if done else " (sender cancelled)"))
                break
            time.sleep(0.01)
        sink.wait_for(min(sink.count(), expected), timeout=30)
        cpu = svc.cpu_seconds()
        sink_cpu = sink_mon.cpu_seconds()
        busy1 = machine_busy()
    finally:
        svc.stop()
        sink_mon.stop()
        if th.is_alive():
            cancel.set()
    th.join(timeout=120)
    try:
        log_summary = contender.log_summary()
    except Exception as exc:
        log_summary = {"error": f"{type(exc).__name__}: {exc}"}
    if th.is_alive():
        raise RunFailed(f"the sender did not stop\n{contender.diagnostics()}")
    if "error" in holder:
        raise RunFailed(f"sender failed: {holder['error']}\n{contender.diagnostics()}")
    sent: SendResult = holder["res"]
    arrivals = sink.arrivals()
    result.update(_figures(sent, arrivals, files, t_start, cpu, svc, sink_cpu, shape, rate))
    result["images_quarantined"] = contender.quarantined()
    # how busy the whole machine was (every process, ours and others'): the noise indicator
    total = busy1[1] - busy0[1]
    result["machine_busy_pct"] = round(100 * (busy1[0] - busy0[0]) / total, 1) if total > 0 else None
    if log_summary is not None:
        result["service_log"] = log_summary
    if sent.errors:
        result["sender_errors"] = sent.errors[:5]
    refused = [f"{s.name}: {s.response}"[:160] for s in sent.items if s.status != 0]
    if refused:
        result["refused"] = refused[:20]
        result["refused_count"] = len(refused)
    if incomplete:
        result["incomplete"] = incomplete
        if result.get("latency_matching") == "uid":
            missing = [x.name for x in sent.items if x.status == 0 and x.uid not in arrivals]
            result["missing"] = missing[:20]
            result["incomplete"] += f"; not delivered: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
        result["diagnostics"] = contender.diagnostics()[-2000:]
    if keep_timeline:
        t0 = svc.timeline[0][0] if svc.timeline else t_start
        result["rss_timeline"] = [(round(t - t0, 3), round(r / MB, 1)) for t, r in svc.timeline]
        times = sorted(a[0] for a in arrivals.values())
        step = max(1, len(times) // 400)
        result["delivered_timeline"] = [(round(times[i] - t0, 3), i + 1) for i in range(0, len(times), step)]
        if times:
            result["delivered_timeline"].append((round(times[-1] - t0, 3), len(times)))
    return result


def _figures(sent: SendResult, arrivals: dict, files, t_start, cpu, svc: TreeMonitor, sink_cpu, shape, rate) -> dict:
    uids = {f.sop_instance: f for f in files}
    delivered_by_uid = {u: a for u, a in arrivals.items() if u in uids}
    matching = "uid"
    if len(delivered_by_uid) < 0.9 * len(arrivals) or not delivered_by_uid:
        matching = "order"  # UIDs changed on the way (de-identification): pair k-th ack with k-th delivery
    delivered = len(arrivals)
    first_byte = sent.started_at
    last = max((a[0] for a in arrivals.values()), default=None)
    duration = (last - first_byte) if last else None
    in_bytes = sum(uids[u].size for u in delivered_by_uid) if matching == "uid" else sum(
        s.size for s in sent.items[:delivered])
    out_bytes = sum(a[1] for a in arrivals.values())
    lat = []
    acks = [s for s in sent.items if s.ack_at is not None and s.status == 0]
    if matching == "uid":
        lat = [arrivals[s.uid][0] - s.ack_at for s in acks if s.uid in arrivals]
    else:
        times = sorted(a[0] for a in arrivals.values())
        lat = [t - s.ack_at for s, t in zip(sorted(acks, key=lambda s: s.ack_at), times)]
    # The sink writes the file before it answers, and mtimes are coarse (a few ms): a
    # delivery seen "before" its acknowledgement was simply not later than it.
    lat = [max(0.0, x) for x in lat]
    times_sorted = sorted(a[0] for a in arrivals.values())
    gaps = [b - a for a, b in zip(times_sorted, times_sorted[1:])]
    send_span = None
    if len(sent.items) > 1 and sent.items[0].sent_at and sent.items[-1].sent_at:
        send_span = sent.items[-1].sent_at - sent.items[0].sent_at
    r = {
        "images_sent": len(sent.items),
        "images_acked": sent.acked,
        "images_delivered": delivered,
        "duration_s": _r(duration, 3),
        "images_per_s": _r(delivered / duration, 1) if duration else None,
        "mb_per_s": _r(in_bytes / MB / duration, 1) if duration else None,
        "bytes_in": in_bytes,
        "bytes_delivered": out_bytes,
        "latency_matching": matching,
        "ack_to_delivery_p50_s": _r(percentile(lat, 50), 4),
        "ack_to_delivery_p99_s": _r(percentile(lat, 99), 4),
        "ack_to_delivery_max_s": _r(max(lat), 4) if lat else None,
        "send_to_ack_p50_s": _r(percentile([s.ack_at - s.sent_at for s in acks if s.sent_at], 50), 4),
        "longest_delivery_gap_s": _r(max(gaps), 3) if gaps else None,
        "cpu_s": _r(cpu, 3),
        "cpu_s_per_image": _r(cpu / delivered, 5) if cpu is not None and delivered else None,
        "peak_rss_mb": _r(svc.peak_rss / MB, 1) if svc.pid else None,
        "service_processes": len(svc.processes_seen) if svc.pid else 0,
        "sink_cpu_s_per_image": _r(sink_cpu / delivered, 5) if sink_cpu is not None and delivered else None,
        "sender_duration_s": _r(sent.finished_at - sent.started_at, 3),
    }
    if rate:
        r["offered_rate"] = rate
        r["achieved_send_rate"] = _r((len(sent.items) - 1) / send_span, 1) if send_span else None
    return r


def _r(v, nd):
    return None if v is None else round(v, nd)


def run_shape(contender, **kw) -> dict:
    try:
        return measure(contender, **kw)
    except RunFailed as exc:
        log(f"{contender.key} {kw.get('shape')}: FAILED {str(exc).splitlines()[0]}")
        return {"failed": str(exc)[:3000]}
