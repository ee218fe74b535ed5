"""Delivery: one queue per destination, retried with exponential backoff and jitter.

Each destination has its own worker thread(s), so a destination that is down never holds
up another. Within a destination, deliveries go out in order of arrival: after a failure
of the destination itself (connection refused, timeout, association rejected) the whole
destination backs off and the same (oldest) delivery is tried again, so objects of a
series arrive in order once the destination is back. A failure of one object (a
``DeliveryError`` with ``scope="object"``, or an unexpected exception from the plugin
while sending it) is that object's alone: it is retried on its own schedule, and the
destination's other deliveries keep flowing meanwhile. A delivery that fails
``max_attempts`` times, or fails permanently, is quarantined with the reason.
"""

from __future__ import annotations

import random
import threading
import time

import structlog

from .config import RetryConfig
from .errors import DeliveryError
from .item import delivery_header
from .pipeline import bug_summary
from .spool import Delivery, Spool

log = structlog.get_logger("pacsguard.delivery")


def backoff_delay(retry: RetryConfig, failures: int, rng: random.Random = random) -> float:
    """Delay before the next attempt after ``failures`` consecutive failures (>= 1)."""
    base = min(retry.max_delay, retry.initial * retry.factor ** max(0, failures - 1))
    if retry.jitter:
        base *= 1 + rng.uniform(-retry.jitter, retry.jitter)
    return max(0.0, min(base, retry.max_delay * (1 + retry.jitter)))


class DestinationWorker:
    """Sends the pending deliveries of one destination."""

    def __init__(self, name: str, destination, spec, spool: Spool, hook):
        self.name = name
        self.destination = destination
        self.spec = spec
        self.spool = spool
        self.hook = hook
        self._wake = threading.Condition()
        self._claimed: set[int] = set()
        self._claim_lock = threading.Lock()
        self._stopping = threading.Event()
        self._down_until = 0.0
        self._failures = 0
        self._threads = [threading.Thread(target=self._run, name=f"deliver-{name}-{i}", daemon=True)
                         for i in range(spec.parallel)]

    def start(self) -> None:
        try:
            self.destination.start()
        except Exception as exc:  # a clean-up problem must not keep the destination from working
            log.error("destination start-up clean-up failed", destination=self.name, error=bug_summary(exc))
        for t in self._threads:
            t.start()

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def stop(self, timeout: float) -> bool:
        self._stopping.set()
        self.wake()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        idle = not any(t.is_alive() for t in self._threads)
        if idle:
            self.destination.close()
        return idle

    def alive(self) -> bool:
        return self._stopping.is_set() or all(t.is_alive() for t in self._threads)

    @property
    def in_flight(self) -> int:
        with self._claim_lock:
            return len(self._claimed)

    def _sleep(self, seconds: float) -> None:
        with self._wake:
            if not self._stopping.is_set():
                self._wake.wait(timeout=max(0.01, seconds))

    def _claim(self) -> Delivery | None:
        """The earliest received delivery that is due (one waiting for its own retry is
        passed over), or None, noting when the next one is due."""
        with self._claim_lock:
            d = self.spool.next_delivery(self.name, self._claimed, due_by=time.time())
            if d is not None:
                self._claimed.add(d.id)
                return d
            self._next_due = self.spool.next_attempt_at(self.name, self._claimed)
            return None

    def _run(self) -> None:
        while not self._stopping.is_set():
            now = time.time()
            if now < self._down_until:
                self._sleep(min(self._down_until - now, 1.0))
                continue
            try:
                d = self._claim()
            except Exception as exc:
                log.error("spool read failed", destination=self.name, error=bug_summary(exc))
                self._sleep(1.0)
                continue
            if d is None:
                due = getattr(self, "_next_due", None)
                self._sleep(min(max(due - now, 0.01), 1.0) if due else 1.0)
                continue
            try:
                self._deliver(d)
            finally:
                with self._claim_lock:
                    self._claimed.discard(d.id)

    def _deliver(self, d: Delivery) -> None:
        attempt = d.attempts + 1
        try:
            header = delivery_header(d.path)
            self.destination.send(d.path, header)
        except DeliveryError as exc:
            self._failed(d, attempt, exc.reason, exc.permanent, exc.scope)
            return
        except Exception as exc:  # a bug in the plugin, met with this object: retry it, never drop
            reason = f"destination error ({bug_summary(exc)})"
            log.error("destination raised an unexpected error", destination=self.name,
                      job=d.job_id, error=bug_summary(exc))
            self._failed(d, attempt, reason, False, "object")
            return
        self.spool.delivered(d.id)
        self._failures = 0
        seconds = time.time() - d.received_at
        log.info("object delivered", job=d.job_id, route=d.route, destination=self.name,
                 attempts=attempt, latency_s=round(seconds, 3))
        self.hook.pacsguard_object_delivered(job_id=d.job_id, route=d.route, destination=self.name,
                                             attempts=attempt, seconds=seconds)

    def _failed(self, d: Delivery, attempt: int, reason: str, permanent: bool, scope: str) -> None:
        """Quarantine ``d``, or schedule its retry: the destination's backoff after a fault
        of the destination, the object's own (by its attempts) after a fault of the object."""
        retry = self.spec.retry
        if permanent or attempt >= retry.max_attempts:
            why = reason if permanent else f"{reason} (gave up after {attempt} attempts)"
            qid = self.spool.quarantine(d.job_id, why, f"destination:{self.name}", delivery_id=d.id)
            log.warning("delivery quarantined", job=d.job_id, destination=self.name, quarantine=qid,
                        attempts=attempt, reason=why)
            self.hook.pacsguard_object_quarantined(job_id=d.job_id, quarantine_id=qid, reason=why,
                                                   where=f"destination:{self.name}")
            return
        if scope == "destination":
            self._failures += 1
            delay = backoff_delay(retry, self._failures)
        else:
            delay = backoff_delay(retry, attempt)
        retry_at = time.time() + delay
        self.spool.delivery_failed(d.id, reason, retry_at)
        if scope == "destination":
            self._down_until = retry_at  # the same moment: the oldest delivery is due when it ends
        log.warning("delivery failed, will retry", job=d.job_id, destination=self.name,
                    attempt=attempt, retry_in_s=round(delay, 3), scope=scope, reason=reason)
        self.hook.pacsguard_delivery_failed(job_id=d.job_id, route=d.route, destination=self.name,
                                            attempt=attempt, retry_in=delay)


class DeliveryManager:
    """The destination workers of the current config."""

    def __init__(self, spool: Spool, hook):
        self.spool = spool
        self.hook = hook
        self.workers: dict[str, DestinationWorker] = {}

    def apply(self, destinations: dict, timeout: float = 30.0) -> None:
        """Start workers for ``destinations`` ({name: (Destination, spec)}), replacing changed ones."""
        for name in list(self.workers):
            worker = self.workers[name]
            new = destinations.get(name)
            if new is None or new[1] != worker.spec or new[0].options != worker.destination.options:
                worker.stop(timeout)
                del self.workers[name]
        for name, (dest, spec) in destinations.items():
            if name in self.workers:
                if self.workers[name].destination is not dest:
                    dest.close()  # unchanged: keep the running instance
                continue
            worker = DestinationWorker(name, dest, spec, self.spool, self.hook)
            self.workers[name] = worker
            worker.start()

    def wake(self, names) -> None:
        for name in names:
            w = self.workers.get(name)
            if w is not None:
                w.wake()

    #: deliveries run in this process's threads: nothing to restart on its own
    restartable = False

    def apply_config(self, loaded, runtime) -> None:
        """After a reload: the destinations of the new runtime."""
        self.apply(runtime.destinations)

    def wake_all(self) -> None:
        for w in self.workers.values():
            w.wake()

    def alive(self) -> bool:
        return all(w.alive() for w in self.workers.values())

    @property
    def in_flight(self) -> int:
        return sum(w.in_flight for w in self.workers.values())

    def stop(self, timeout: float) -> bool:
        for w in self.workers.values():
            w._stopping.set()
            w.wake()
        deadline = time.monotonic() + timeout
        ok = True
        for w in self.workers.values():
            ok &= w.stop(max(0.0, deadline - time.monotonic()))
        return ok
