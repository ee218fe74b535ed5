"""Processing and delivery in a worker process, so that they do not contend with
receiving for one GIL.

The service (parent) keeps the sources: it only receives, makes each object durable and
answers. A child process runs the :class:`~pacsguard.daemon.pipeline.Processor` (parse,
route, stages) and the :class:`~pacsguard.daemon.delivery.DeliveryManager` on the same
spool (SQLite in WAL mode is made for several processes). They talk over one pipe:

- parent -> child: ``("submit", job_id)`` an object was received, ``("requeue",)`` look
  for jobs put back to 'received' (``pacsguard quarantine retry``), ``("wake", names)``,
  ``("wake_all",)``, ``("apply", config_text, config_path)`` after a reload,
  ``("stop", timeout)``;
- child -> parent: ``("ready", requeued)`` (how many jobs it found left to process), ``("hook", name, kwargs)`` for the observation hooks
  (routed, stage finished, stage result, delivered, delivery failed, quarantined), which the parent
  calls on its own plugin manager so metrics and audit plugins see them exactly once,
  ``("grew", bytes)`` when processing wrote files into the spool (its size limit is
  enforced by the receiving side), ``("stopped", drained)``, ``("error", reason)`` when
  the child cannot start.

If the parent dies (kill -9), the child sees the pipe close, lets in-flight sends finish
for a few seconds and exits: what it had not sent stays pending in the spool.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from pathlib import Path

import structlog

log = structlog.get_logger("pacsguard.delivery")

#: How long a child whose parent vanished waits for in-flight sends.
ORPHAN_GRACE = 5.0

_RELAYED = ("pacsguard_object_routed", "pacsguard_stage_finished", "pacsguard_stage_result",
            "pacsguard_object_delivered", "pacsguard_delivery_failed", "pacsguard_object_quarantined")


class WorkerProcess:
    """Parent-side handle of the worker process, with the interfaces of the Processor and
    of the DeliveryManager that the service uses."""

    #: the service hands received jobs to this process instead of processing them itself
    processes = True

    def __init__(self, loaded, spool_root: Path, spool_max: int, hook, *, start_timeout: float = 60.0,
                 on_grew=None):
        self.hook = hook
        self._on_grew = on_grew or (lambda n: None)
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._send_lock = threading.Lock()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._drained = False
        self._error: str | None = None
        self._requeued_at_start: int | None = None
        # Only the observation hooks that something here implements cross the pipe.
        observed = [name for name in _RELAYED if getattr(hook, name).get_hookimpls()]
        self._proc = ctx.Process(
            target=child_main, name="pacsguard-delivery", daemon=True,
            args=(child_conn, loaded.text, str(loaded.path) if loaded.path else None, str(spool_root), spool_max,
                  observed),
        )
        self._proc.start()
        child_conn.close()
        self._reader = threading.Thread(target=self._read, name="delivery-events", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + start_timeout
        while not self._ready.is_set():
            if self._error or not self._proc.is_alive() or time.monotonic() > deadline:
                self._proc.kill()
                raise RuntimeError(f"delivery process did not start: {self._error or 'no answer'}")
            self._ready.wait(0.05)

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def _read(self) -> None:
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                return
            kind = msg[0]
            if kind == "hook":
                _, name, kwargs = msg
                try:
                    getattr(self.hook, name)(**kwargs)
                except Exception as exc:  # an observer's bug must not stop the relay
                    log.error("observation hook failed", hook=name, error=type(exc).__name__)
            elif kind == "grew":
                self._on_grew(int(msg[1]))
            elif kind == "ready":
                self._requeued_at_start = int(msg[1]) if len(msg) > 1 else 0
                self._ready.set()
            elif kind == "stopped":
                self._drained = bool(msg[1])
                self._stopped.set()
            elif kind == "error":
                self._error = msg[1]

    def _send(self, *msg) -> None:
        with self._send_lock:
            try:
                self._conn.send(msg)
            except (OSError, ValueError):
                pass  # the child is gone: alive() says so, the service restarts it

    # -- the Processor interface --------------------------------------------------------
    def start(self) -> None:
        """(The child's processing workers started with it.)"""

    def submit(self, job_id: int) -> None:
        self._send("submit", job_id)

    def requeue_received(self) -> int:
        """Let the child look for jobs in state 'received'. The first call answers how many
        the child queued when it started (the jobs left 'received' by the last run); later
        calls answer 0 (the child logs what it finds)."""
        if self._requeued_at_start is not None:
            n, self._requeued_at_start = self._requeued_at_start, None
            return n
        self._send("requeue")
        return 0

    # -- the DeliveryManager interface ------------------------------------------------
    #: a child that died is started again by the service
    restartable = True

    def apply_config(self, loaded, runtime=None) -> None:
        """After a reload: the child builds the new config's destinations itself."""
        self._send("apply", loaded.text, str(loaded.path) if loaded.path else None)

    def wake(self, names) -> None:
        self._send("wake", sorted(names))

    def wake_all(self) -> None:
        self._send("wake_all")

    def alive(self) -> bool:
        return self._proc.is_alive()

    def stop(self, timeout: float) -> bool:
        """Ask the child to stop (processing, then delivery); True if it drained in time.
        Called a second time, it answers the first time's result."""
        if self._stopped.is_set() or self._conn.closed:
            return self._drained
        if self._proc.is_alive():
            self._send("stop", timeout)
            self._stopped.wait(timeout + 5.0)
            self._proc.join(2.0)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(5.0)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._conn.close()
        return self._drained


class _Relay:
    """Stands in for the plugin manager's hook caller inside the child: observation hooks
    go to the parent, the others (pixel decoding) are called here."""

    def __init__(self, conn, lock: threading.Lock, local=None, observed=_RELAYED):
        self._conn = conn
        self._lock = lock
        self._local = local
        self._observed = frozenset(observed)

    def send(self, *msg) -> None:
        with self._lock:
            try:
                self._conn.send(msg)
            except (OSError, ValueError):
                pass

    def __getattr__(self, name: str):
        if name not in _RELAYED:
            if self._local is not None and name.startswith("pacsguard_"):
                return getattr(self._local, name)
            raise AttributeError(name)
        if name not in self._observed:
            return _ignore

        def call(**kwargs):
            with self._lock:
                try:
                    self._conn.send(("hook", name, kwargs))
                except (OSError, ValueError):
                    pass

        return call


def _ignore(**kwargs) -> None:
    """An observation hook that nothing in the service process implements."""


def child_main(conn, config_text: str, config_path: str | None, spool_root: str, spool_max: int,
               observed=_RELAYED) -> None:
    """Entry point of the worker process."""
    # The parent handles the signals; a terminal's Ctrl-C or a reload is not for us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    terminate = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: terminate.set())

    from .config import load_config_text
    from .delivery import DeliveryManager
    from .memory import tune_allocator
    from .logs import configure_logging
    from .parsing import ParseLimits
    from .pipeline import Processor
    from .plugins import collect, get_plugin_manager
    from .runtime import build_runtime
    from .spool import Spool

    tune_allocator()
    lock = threading.Lock()

    def tell(*msg) -> bool:
        """Send to the service; False when it is gone (it died, or was killed, meanwhile)."""
        with lock:
            try:
                conn.send(msg)
                return True
            except (OSError, ValueError):
                return False

    try:
        pm = get_plugin_manager()
        registry = collect(pm)
        path = Path(config_path) if config_path else None
        loaded = load_config_text(config_text, registry, path=path, label=str(path or "<embedded default>"))
        configure_logging(loaded.config.logging.level, loaded.config.logging.format)
        relay = _Relay(conn, lock, pm.hook, observed)
        spool = Spool(Path(spool_root), spool_max, on_grew=lambda n: relay.send("grew", n))
        state = {"runtime": build_runtime(loaded, registry)}
        manager = DeliveryManager(spool, relay)
        manager.apply(state["runtime"].destinations)
        cfg = loaded.config.processing
        processor = Processor(spool, relay, lambda: state["runtime"], workers=cfg.workers,
                              batch_size=cfg.batch_size, on_routed=manager.wake,
                              limits=ParseLimits(max_inflated=cfg.max_inflated))
        processor.start()
        requeued = processor.requeue_received()
    except Exception as exc:
        tell("error", f"{type(exc).__name__}: {exc}")
        return
    if not tell("ready", requeued):
        # The service died while this process started: finish what was taken, leave the
        # rest in the spool for the next start.
        log.warning("service process went away while the worker process started; it stops",
                    in_flight=manager.in_flight)
        processor.stop(ORPHAN_GRACE)
        manager.stop(ORPHAN_GRACE)
        return
    log.info("worker process started", destinations=sorted(manager.workers), requeued=requeued)

    while True:
        if terminate.is_set():
            processor.stop(0.0)
            manager.stop(0.0)
            return
        try:
            ready = conn.poll(0.5)
            msg = conn.recv() if ready else None
        except (EOFError, OSError):
            log.warning("service process went away; worker process stops", in_flight=manager.in_flight)
            processor.stop(ORPHAN_GRACE)
            manager.stop(ORPHAN_GRACE)
            return
        if msg is None:
            continue
        kind = msg[0]
        if kind == "submit":
            processor.submit(msg[1])
        elif kind == "requeue":  # every second from the service's main loop
            processor.requeue_received()
        elif kind == "wake":
            manager.wake(msg[1])
        elif kind == "wake_all":
            manager.wake_all()
        elif kind == "apply":
            try:
                new = load_config_text(msg[1], registry, path=Path(msg[2]) if msg[2] else None)
                runtime = build_runtime(new, registry, state["runtime"].generation + 1)
                manager.apply(runtime.destinations)
                state["runtime"] = runtime  # one reference swap: workers pick it up with their next batch
            except Exception as exc:  # the parent validated it; say why if it still fails
                log.error("worker process could not apply the new config", error=type(exc).__name__)
        elif kind == "stop":
            deadline = time.monotonic() + float(msg[1])
            processed = processor.stop(float(msg[1]))
            drained = manager.stop(max(0.0, deadline - time.monotonic())) and processed
            tell("stopped", drained)
            spool.close()
            return
