"""CPU time and resident memory of a process tree, read from /proc (no psutil needed).

A sampler thread walks the tree below a root pid every ``interval`` seconds and records
the sum of RSS over its processes (peak and a timeline) and each process's user+system
CPU ticks, so the CPU of a child that exits during the run still counts.
"""

from __future__ import annotations

import os
import threading
import time

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def children(pid: int) -> list[int]:
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(x) for x in fh.read().split()]
        except OSError:
            pass
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that exist now."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += children(p)
    return seen


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` (clock ticks), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class TreeMonitor:
    """Sample a process tree; ``cpu_seconds()`` and ``peak_rss`` cover the time since ``mark()``."""

    def __init__(self, pid: int | None, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.timeline: list[tuple[float, int]] = []  # (wall time, RSS bytes)
        self.peak_rss = 0
        self.processes_seen: set[int] = set()
        self._base: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "TreeMonitor":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self.pid is None:
            return
        self.mark()
        self._thread = threading.Thread(target=self._run, name="treemonitor", daemon=True)
        self._thread.start()

    def mark(self) -> None:
        """Start the measuring window now: CPU counted from here, peak RSS reset."""
        if self.pid is None:
            return
        with self._lock:
            self._base = {}
            self._last = {}
            self.timeline = []
            self.peak_rss = 0
            self._sample_locked(baseline=True)

    def sample(self) -> None:
        if self.pid is None:
            return
        with self._lock:
            self._sample_locked()

    def _sample_locked(self, baseline: bool = False) -> None:
        pids = tree(self.pid)
        rss = 0
        for p in pids:
            t = cpu_ticks(p)
            if t is None:
                continue
            if baseline or p not in self._base:
                # a process born after the mark counts from 0 ticks
                self._base.setdefault(p, t if baseline else 0)
            self._last[p] = t
            rss += rss_bytes(p)
            self.processes_seen.add(p)
        self.timeline.append((time.time(), rss))
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # a process vanished between reads: next tick
                pass

    def cpu_seconds(self) -> float | None:
        if self.pid is None:
            return None
        with self._lock:
            self._sample_locked()
            return sum(self._last[p] - self._base.get(p, 0) for p in self._last) / _TICK

    def current_rss(self) -> int:
        if self.pid is None:
            return 0
        return sum(rss_bytes(p) for p in tree(self.pid))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / _TICK, total / _TICK
