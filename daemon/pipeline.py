"""Processing: parse, route and run each matched route's stages, then queue deliveries.

Workers take jobs in small batches. Stages that want batches (``batching = True``) get
the items of one route with the same geometry together, at most their ``batch_size`` at a
time; while the config has such a stage, the worker taking jobs waits up to the stage's
``max_wait_ms`` for more to fill a batch (one worker takes at a time, so that the others
do not split a batch), and a lone object is held up no longer than that. A batch that
fails is retried item by item, so one bad object cannot take its neighbours to quarantine.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from typing import Callable, Mapping

import structlog

from .errors import QuarantineError, bug_summary
from .fileio import fsync_dir
from .item import HEADERS, Item
from .parsing import DEFAULT_LIMITS, ParseLimits, check_integrity, complete_file_meta, object_fault, read_header
from .router import Route, select_routes
from .runtime import Runtime  # noqa: F401 (re-exported)
from .spool import Job, Spool

log = structlog.get_logger("pacsguard.pipeline")


class _Work:
    """One job on its way through one route."""

    __slots__ = ("job", "route", "item", "keys", "pixels", "failed", "complete_meta")

    def __init__(self, job: Job, route: Route, keys: Mapping, complete_meta: bool = False, pixels=None):
        self.job, self.route, self.complete_meta = job, route, complete_meta
        self.keys = keys  # of the route's config generation, for a fresh item on retry
        self.pixels = pixels  # the generation's ``pixels:`` section
        self.item: Item | None = None
        self.failed: tuple[str, str] | None = None  # (reason, place)


class Processor:
    """A pool of worker threads that turn received jobs into pending deliveries."""

    def __init__(self, spool: Spool, hook, get_runtime: Callable[[], Runtime], *,
                 workers: int = 2, batch_size: int = 8, on_routed: Callable[[set], None] = lambda d: None,
                 limits: ParseLimits = DEFAULT_LIMITS):
        self.spool = spool
        self.limits = limits
        self.hook = hook
        self.get_runtime = get_runtime
        self.batch_size = batch_size
        self.on_routed = on_routed
        self._queue: "queue.Queue[int]" = queue.Queue()
        self._queued: set[int] = set()
        self._busy = 0
        self._lock = threading.Lock()
        self._taking = threading.Lock()  # one worker fills its batch at a time
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"worker-{i}", daemon=True)
                         for i in range(workers)]

    # -- control -------------------------------------------------------------------------
    def start(self) -> None:
        for t in self._threads:
            t.start()

    def submit(self, job_id: int) -> None:
        with self._lock:
            if job_id in self._queued:
                return
            self._queued.add(job_id)
        self._queue.put(job_id)

    def requeue_received(self) -> int:
        """Queue every job in state 'received' (at start, and for retries from the CLI)."""
        n = 0
        for job_id in self.spool.received_jobs():
            with self._lock:
                known = job_id in self._queued
            if not known:
                self.submit(job_id)
                n += 1
        return n

    @property
    def depth(self) -> int:
        with self._lock:
            return len(self._queued)

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads) or self._stopping.is_set()

    def stop(self, timeout: float) -> bool:
        """Stop taking work; wait up to ``timeout`` for in-flight batches. True if idle."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    # -- work ----------------------------------------------------------------------------
    def _take_batch(self) -> list[int]:
        with self._taking:
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                return []
            wanted, wait = self.get_runtime().gather()
            wanted = max(wanted, self.batch_size)
            deadline = time.monotonic() + wait
            batch = [first]
            while len(batch) < wanted:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except queue.Empty:
                    pass
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping.is_set():
                    break
                try:  # a batching stage waits a little for company
                    batch.append(self._queue.get(timeout=min(left, 0.05)))
                except queue.Empty:
                    continue
            return batch

    def _run(self) -> None:
        while not self._stopping.is_set():
            batch = self._take_batch()
            if not batch:
                continue
            if self._stopping.is_set():
                return  # left 'received' in the spool: re-queued at next start
            try:
                self.process(batch)
            except Exception as exc:
                # Per-object faults are handled inside process(); what reaches here is
                # the batch's (the spool's database, a bug in the host). Take the jobs one
                # by one, so that one object can never hold up the others.
                log.error("batch failed; processing its objects one by one", error=bug_summary(exc),
                          jobs=batch)
                self._one_by_one(batch)
            finally:
                with self._lock:
                    self._queued.difference_update(batch)

    def _one_by_one(self, batch: list[int]) -> None:
        for job_id in batch:
            try:
                self.process([job_id])
            except Exception as exc:
                self._object_failed(job_id, None, exc, "cannot process the object", "parse")

    def process(self, job_ids: list[int]) -> None:
        runtime = self.get_runtime()
        works: list[_Work] = []
        for job_id in job_ids:
            job = self.spool.get_job(job_id)
            if job is None or job.state != "received":
                continue
            header = None
            try:
                header = read_header(job.path, self.limits)
                check_integrity(job.path, header)
                complete_meta = complete_file_meta(header)
                routes = select_routes(runtime.routes, header, job.facts)
            except QuarantineError as exc:
                self._quarantine(job.id, exc.reason, "parse")
                continue
            except Exception as exc:  # the object's fault (a broken element), never the batch's
                self._object_failed(job.id, header, exc, "cannot route the object", "route")
                continue
            if not routes:
                self._quarantine(job.id, "no route matched", "route")
                continue
            self.hook.pacsguard_object_routed(job_id=job.id, routes=[r.name for r in routes])
            for i, route in enumerate(routes):
                w = _Work(job, route, runtime.keys, complete_meta, runtime.pixels)
                w.item = self._new_item(w)
                if i == 0:
                    w.item._header = header  # parsed once; later routes re-read their own copy
                works.append(w)
        self._run_stages(works)
        self._finish(works)

    def _new_item(self, w: "_Work") -> Item:
        """A fresh item for ``w``'s job, as it was received, with its generation's keys
        (and File Meta Information completed when it came without)."""
        item = Item(w.job.id, w.job.path, w.job.facts, keys=w.keys, decode_pixels=self.hook.pacsguard_decode_pixels,
                    decode_batch=self.hook.pacsguard_decode_pixels_batch, pixels=w.pixels)
        if w.complete_meta:
            complete_file_meta(item.dataset)  # (taking the dataset: it is written out again)
        return item

    def _object_failed(self, job_id: int, ds, exc: BaseException, doing: str, place: str) -> None:
        """An unexpected failure on one object: quarantine it with a reason about the object."""
        reason = object_fault(ds, exc, doing)
        log.error("object failed unexpectedly; quarantined", job=job_id, place=place, error=bug_summary(exc),
                  reason=reason)
        try:
            self._quarantine(job_id, reason, place)
        except Exception as again:  # the spool itself fails: the job stays 'received' for later
            log.error("cannot quarantine the object; it stays queued in the spool", job=job_id,
                      error=bug_summary(again))

    def _run_stages(self, works: list[_Work]) -> None:
        by_route: dict[str, list[_Work]] = {}
        for w in works:
            by_route.setdefault(w.route.name, []).append(w)
        for group in by_route.values():
            route = group[0].route
            for k, stage in enumerate(route.stages):
                live = [w for w in group if w.failed is None]
                if not live:
                    break
                if stage.batching and len(live) > 1:
                    by_geometry: dict[tuple, list[_Work]] = {}
                    for w in live:
                        try:
                            key = w.item.geometry()
                        except QuarantineError as exc:
                            w.failed = (exc.reason, f"stage:{stage.name}")
                            continue
                        except Exception as exc:
                            w.failed = (object_fault(w.item.header, exc, f"stage {stage.name}"),
                                        f"stage:{stage.name}")
                            continue
                        by_geometry.setdefault(key, []).append(w)
                    size = stage.batch_size or len(live)
                    for same in by_geometry.values():
                        for at in range(0, len(same), size):
                            self._run_batch(stage, route, same[at:at + size], route.stages[:k])
                else:
                    for w in live:
                        self._run_one(stage, route, w)

    def _run_batch(self, stage, route: Route, batch: list[_Work], earlier: list) -> None:
        t0 = time.perf_counter()
        try:
            results = stage.process_batch([w.item for w in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"process_batch returned {len(results)} items for {len(batch)}")
        except Exception:
            # Isolate the culprit. The failed batch may have changed some items already, so
            # each one starts again from the received object through the earlier stages.
            for w in batch:
                w.item = self._new_item(w)
                for prior in [*earlier, stage]:
                    self._run_one(prior, route, w)
                    if w.failed is not None:
                        break
            return
        per = (time.perf_counter() - t0) / len(batch)
        for w, item in zip(batch, results):
            w.item = item
            self.hook.pacsguard_stage_finished(job_id=w.job.id, route=route.name, stage=stage.name,
                                               seconds=per, outcome="ok")
            self._report(stage, route, w)

    def _run_one(self, stage, route: Route, w: _Work) -> None:
        t0 = time.perf_counter()
        outcome = "ok"
        try:
            result = stage.process(w.item)
            if result is not None:
                w.item = result
        except QuarantineError as exc:
            outcome = "quarantined"
            w.failed = (f"stage {stage.name}: {exc.reason}", f"stage:{stage.name}")
        except Exception as exc:
            outcome = "error"
            summary = bug_summary(exc)
            log.error("stage raised an unexpected error", job=w.job.id, route=route.name,
                      stage=stage.name, error=summary,
                      frames=[f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}"
                             for f in traceback.extract_tb(exc.__traceback__)])
            w.failed = (object_fault(w.item._dataset if w.item._dataset is not None else w.item._header, exc, f"stage {stage.name}"),
                        f"stage:{stage.name}")
        self.hook.pacsguard_stage_finished(job_id=w.job.id, route=route.name, stage=stage.name,
                                           seconds=time.perf_counter() - t0, outcome=outcome)
        if outcome == "ok":
            self._report(stage, route, w)

    def _report(self, stage, route: Route, w: _Work) -> None:
        """``pacsguard_stage_result`` with what the stage measured on the object (its
        declared measures only, as numbers). A failing ``measured`` is the stage's bug: it
        is logged, the object goes on (the figures are observations, not its protection)."""
        if not stage.measures:
            return
        try:
            got = stage.measured(w.item) or {}
            result = {k: float(v) for k, v in got.items() if k in stage.measures and v is not None}
        except Exception as exc:
            log.error("stage could not report its measures", job=w.job.id, route=route.name, stage=stage.name,
                      error=bug_summary(exc))
            return
        if result:
            self.hook.pacsguard_stage_result(job_id=w.job.id, route=route.name, stage=stage.name, result=result)

    def _finish(self, works: list[_Work]) -> None:
        by_job: dict[int, list[_Work]] = {}
        for w in works:
            by_job.setdefault(w.job.id, []).append(w)
        ready, dirs = [], set()
        for job_id, ws in by_job.items():
            failed = next((w.failed for w in ws if w.failed), None)
            if failed:
                self._quarantine(job_id, *failed)
                continue
            deliveries, extra = [], 0
            try:
                uid = ws[0].item.sop_uid_hash  # of the processed object (before its dataset goes)
                for w in ws:
                    path = w.job.path
                    if w.item.modified:
                        path = self.spool.out_path(job_id, w.route.name, w.item.output_suffix)
                        extra += w.item.write(path, dirs, sync=self.spool.sync_outputs)
                        header = w.item.written_header() if len(ws) == 1 and len(w.route.to) == 1 else None
                        if header is not None:
                            HEADERS.put(path, header)  # what was written: its delivery need not parse it
                    elif w.item._header is not None and len(ws) == 1 and len(w.route.to) == 1:
                        HEADERS.put(path, w.item._header)  # its one delivery need not parse it again
                    deliveries.extend((w.route.name, dest, path) for dest in w.route.to)
            except QuarantineError as exc:
                self._quarantine(job_id, exc.reason, "write")
                continue
            except Exception as exc:
                ds = next((w.item._dataset for w in ws if w.item._dataset is not None), None)
                self._object_failed(job_id, ds, exc, "cannot write the processed object", "write")
                continue
            ready.append((job_id, ws, deliveries, uid, extra))
        try:
            for folder in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
                fsync_dir(folder)  # the batch's new names on disk, once per folder, before they count
        except Exception as exc:
            for job_id, *_ in ready:
                self._object_failed(job_id, None, exc, "cannot write the processed object", "write")
            return
        destinations: set[str] = set()
        for job_id, ws, deliveries, uid, extra in ready:
            self.spool.route_job(job_id, deliveries, uid, extra)
            destinations.update(d for _, d, _ in deliveries)
            log.info("object routed", job=job_id, routes=[w.route.name for w in ws],
                     sop=uid, deliveries=len(deliveries))
        if destinations:
            self.on_routed(destinations)

    def _quarantine(self, job_id: int, reason: str, place: str) -> None:
        qid = self.spool.quarantine(job_id, reason, place)
        log.warning("object quarantined", job=job_id, quarantine=qid, reason=reason, place=place)
        self.hook.pacsguard_object_quarantined(job_id=job_id, quarantine_id=qid, reason=reason, where=place)
