"""The long-running service: sources -> spool -> processor -> delivery, plus lifecycle.

Signal handlers only queue the signal; the main loop acts. SIGTERM/SIGINT: stop intake,
let in-flight work finish up to ``shutdown_timeout``, leave the rest in the spool, exit 0.
SIGHUP or a change of the config file: validate the new config first and swap it in
atomically; an invalid file keeps the running config and logs every error.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from pathlib import Path

import structlog

from . import config as configmod
from .errors import ConfigError
from .logs import configure_logging, set_level
from .memory import tune_allocator
from .metrics import Metrics, MetricsServer
from .notify import Notifier
from .parsing import ParseLimits
from .pipeline import Processor, bug_summary
from .runtime import Runtime, build_destinations, build_runtime  # noqa: F401 (re-exported)
from .plugins import collect, get_plugin_manager
from .spool import Spool, SpoolFull

log = structlog.get_logger("pacsguard.service")

TICK = 0.5


class Intake:
    """What sources use to hand objects over. Durable before it returns a job id."""

    def __init__(self, service: "Service"):
        self._service = service
        self.spool = service.spool
        self._waiting: list[tuple[Path, object]] = []  # secured, not recorded yet
        self._waiting_lock = threading.Lock()

    def has_room(self) -> bool:
        return self.spool.has_room()

    @property
    def accepting(self) -> bool:
        return not self._service.stopping

    def ingest_file(self, src: Path, facts) -> int:
        """Move a complete file into the spool; FileNotFoundError if already taken,
        SpoolFull if over the limit."""
        job_id = self.spool.ingest_file(Path(src), facts)
        self._service._received(job_id, facts)
        return job_id

    def new_partial(self, facts) -> Path:
        if not self.spool.has_room():
            raise SpoolFull()
        return self.spool.new_partial(facts)

    def commit_partial(self, partial: Path, facts) -> int:
        """Secure and record a fully written partial file (see secure/record)."""
        return self.record(self.secure(partial, facts), facts)

    def secure(self, partial: Path, facts) -> Path:
        """Make a fully written partial file durable; return its final path. The source
        may acknowledge the object now, and hand the path to :meth:`record` after."""
        return self.spool.secure_partial(Path(partial))

    def record(self, path: Path, facts) -> int | None:
        """Record a secured file as a received job and start its processing. Never raises:
        when the spool's database refuses, the file waits (it is durable) and is recorded
        by :meth:`record_waiting`, which the service calls every second."""
        try:
            job_id = self.spool.record(Path(path), facts)
        except Exception as exc:
            with self._waiting_lock:
                self._waiting.append((Path(path), facts))
            log.error("received object not recorded yet; it is safe in the spool and will be recorded"
                      " when the spool's database answers", source=facts.source, error=bug_summary(exc))
            return None
        self._service._received(job_id, facts)
        return job_id

    def record_waiting(self) -> int:
        """Record the secured files that could not be recorded before; returns how many."""
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, []
        done = 0
        for i, (path, facts) in enumerate(waiting):
            try:
                job_id = self.spool.record(path, facts)
            except Exception:
                with self._waiting_lock:
                    self._waiting[:0] = waiting[i:]
                break
            self._service._received(job_id, facts)
            done += 1
        if done:
            log.info("received objects recorded after a delay", objects=done)
        return done


class Service:
    def __init__(self, config_path: Path | None = None, *, pm=None, log_stream=None):
        self.config_path = Path(config_path) if config_path else None
        # A plugin manager handed in (embedding, tests) may hold plugins that a separate
        # delivery process could not rebuild: deliveries then run in this process.
        self._own_pm = pm is None
        self.pm = pm or get_plugin_manager()
        self.registry = collect(self.pm)
        self.log_stream = log_stream
        self.stopping = False
        self._signals: "queue.SimpleQueue[int]" = queue.SimpleQueue()
        self.sources: dict[str, object] = {}
        self._source_specs: dict[str, tuple] = {}
        self._config_stat = None
        self._pending_stat = None
        self.metrics_server = None
        self.notifier = Notifier()

    # -- start-up ------------------------------------------------------------------------
    def load(self) -> configmod.Loaded:
        return configmod.load_config(self.config_path, self.registry)

    def run(self) -> int:
        loaded = self.load()  # raises ConfigError: the CLI prints every error, exit 1
        tune_allocator()
        cfg = loaded.config
        configure_logging(cfg.logging.level, cfg.logging.format, self.log_stream)
        self.loaded = loaded
        self.runtime = build_runtime(loaded, self.registry)
        self.spool = Spool(cfg.spool.path, cfg.spool.max_size)
        source_types = {name: c.cls for name, c in self.registry.sources.items()}
        stats = self.spool.recover(
            lambda source_type, path: source_types[source_type].orphan_facts(path)
            if source_type in source_types else None)
        self.intake = Intake(self)
        if cfg.metrics.enabled:  # before the worker process starts: it relays what this observes
            self.metrics = Metrics(self.spool.queue_depths, lambda: self.spool.used_bytes,
                                   {n: c.cls.measures for n, c in self.registry.stages.items()})
            self.pm.register(self.metrics, name="pacsguard.metrics")
        for job_id, facts in self.spool.adopted:  # received before the stop, never announced
            self._announce(job_id, facts, adopted=True)
        self.delivery = self._start_delivery(loaded)
        self.processor = self._processor()
        if cfg.metrics.enabled:
            self.metrics_server = MetricsServer(self.metrics, self.health, cfg.metrics.host, cfg.metrics.port)
        self._install_signals()
        self.processor.start()
        requeued = self.processor.requeue_received()
        try:
            self._apply_sources(loaded)
        except Exception as exc:  # e.g. the DICOM port is taken: say so, stop cleanly, exit 1
            log.error("a source could not start; stopping", error=f"{type(exc).__name__}: {exc}")
            self._shutdown()
            return 1
        self._remember_config_stat()
        log.info("pacsguard started", config=str(self.config_path or "<embedded default>"),
                 spool=str(cfg.spool.path), routes=[r.name for r in self.runtime.routes],
                 destinations=sorted(self.runtime.destinations), sources=sorted(self.sources),
                 metrics_port=self.metrics_server.port if self.metrics_server else None,
                 delivery_pid=getattr(self.delivery, "pid", None), requeued=requeued, **stats)
        for warning in loaded.warnings:
            log.warning("configuration", warning=warning)
        self.notifier.notify(ready=1, status=self._status_line())
        try:
            self._main_loop()
        finally:
            self._shutdown()
        return 0

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: self._signals.put(signum))

    def request(self, signum: int) -> None:
        """Queue a signal (for embedding and tests)."""
        self._signals.put(signum)

    # -- main loop ---------------------------------------------------------------------
    def _main_loop(self) -> None:
        watchdog = self.notifier.watchdog_interval()
        last = {"ping": 0.0, "poll": 0.0, "clean": 0.0, "status": 0.0}
        while True:
            try:
                signum = self._signals.get(timeout=TICK)
            except queue.Empty:
                signum = None
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("stop requested", signal=signal.Signals(signum).name)
                return
            if signum == signal.SIGHUP:
                self.reload("SIGHUP")
            now = time.monotonic()
            if now - last["poll"] >= 1.0:
                last["poll"] = now
                if self._config_changed():
                    self.reload("config file changed")
                self.intake.record_waiting()
                self.processor.requeue_received()  # retries from the CLI
                self._check_delivery()
                self.delivery.wake_all()
            if now - last["clean"] >= 5.0:
                last["clean"] = now
                try:
                    removed = self.spool.cleanup(self.loaded.config.spool.retention)
                    if removed:
                        log.info("spool cleaned", removed_jobs=removed)
                except Exception as exc:
                    log.error("spool clean-up failed", error=bug_summary(exc))
            healthy, _ = self.health()
            if watchdog and healthy and now - last["ping"] >= watchdog:
                last["ping"] = now
                self.notifier.notify(watchdog=1)
            if now - last["status"] >= 5.0:
                last["status"] = now
                self.notifier.notify(status=self._status_line())

    def _processor(self):
        """The worker process processes too; otherwise threads of this process do."""
        if getattr(self.delivery, "processes", False):
            return self.delivery
        cfg = self.loaded.config.processing
        return Processor(self.spool, self.pm.hook, lambda: self.runtime, workers=cfg.workers,
                         batch_size=cfg.batch_size, on_routed=lambda dests: self.delivery.wake(dests),
                         limits=ParseLimits(max_inflated=cfg.max_inflated))

    def _start_delivery(self, loaded: configmod.Loaded):
        if self._own_pm and loaded.config.processing.worker_process:
            from .worker_process import WorkerProcess

            return WorkerProcess(loaded, self.spool.root, self.spool.max_size, self.pm.hook,
                                   on_grew=self.spool.add_used)
        from .delivery import DeliveryManager

        manager = DeliveryManager(self.spool, self.pm.hook)
        manager.apply(self.runtime.destinations)
        return manager

    def _check_delivery(self) -> None:
        """A delivery process that died is started again (its work is safe in the spool)."""
        if self.stopping or not self.delivery.restartable or self.delivery.alive():
            return
        log.error("worker process died; starting it again")
        try:
            self.delivery = self._start_delivery(self.loaded)
        except RuntimeError as exc:
            log.error("worker process could not be restarted", error=str(exc))
            return
        if getattr(self.delivery, "processes", False):
            self.processor = self.delivery  # it finds the jobs left 'received' itself

    def health(self) -> tuple[bool, str]:
        problems = []
        if self.processor is self.delivery:
            if not self.delivery.alive():
                problems.append("worker process died")
        else:
            if not self.processor.alive():
                problems.append("processing worker died")
            if not self.delivery.alive():
                problems.append("delivery worker died")
        try:
            self.spool.queue_depths()
        except Exception as exc:
            problems.append(f"spool database unavailable ({type(exc).__name__})")
        return (not problems, "; ".join(problems) or "ok")

    def _status_line(self) -> str:
        try:
            received, pending = self.spool.queue_depths()
        except Exception:
            return "spool unavailable"
        return f"queued for processing: {received}; awaiting delivery: {sum(pending.values())}"

    # -- intake ------------------------------------------------------------------------
    def _received(self, job_id: int, facts) -> None:
        self._announce(job_id, facts)
        self.processor.submit(job_id)

    def _announce(self, job_id: int, facts, *, adopted: bool = False) -> None:
        """Log and tell the observers (metrics, audit) that an object is in the spool."""
        job = self.spool.get_job(job_id)
        size = job.size if job else 0
        if adopted:
            log.info("object received", job=job_id, source=facts.source, size=size,
                     adopted_at_start=True)
        else:
            log.info("object received", job=job_id, source=facts.source, size=size)
        self.pm.hook.pacsguard_object_received(job_id=job_id, source=facts.source, size=size)

    def _apply_sources(self, loaded: configmod.Loaded, *, reloading: bool = False) -> None:
        """Start, stop or restart sources to match ``loaded``. At start-up a source that
        cannot start is fatal; on reload it is logged and the others keep running."""
        wanted = {s.name: s for s in loaded.sources}
        for name in list(self.sources):
            spec = wanted.get(name)
            if spec is None or self._source_specs[name] != (spec.cls, spec.options):
                self.sources.pop(name).stop()
                del self._source_specs[name]
            elif reloading and hasattr(self.sources[name], "reload_tls"):
                try:
                    self.sources[name].reload_tls()  # renewed certificates take effect now
                except Exception as exc:
                    log.error("TLS certificates not reloaded; the previous ones stay in use",
                              source=name, error=str(exc))
        for name, spec in wanted.items():
            if name in self.sources:
                continue
            source = spec.cls(name, spec.options, self.intake)
            try:
                source.start()
            except Exception as exc:
                if not reloading:
                    raise
                log.error("source could not start", source=name, error=f"{type(exc).__name__}: {exc}")
                continue
            self.sources[name] = source
            self._source_specs[name] = (spec.cls, spec.options)

    # -- reload ------------------------------------------------------------------------
    def _stat(self):
        if self.config_path is None:
            return None
        try:
            st = os.stat(self.config_path)
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return None

    def _remember_config_stat(self) -> None:
        self._config_stat = self._stat()

    def _config_changed(self) -> bool:
        """True once the file changed and then stayed the same for one poll: an editor that
        saves in several writes is not caught half-way (an empty file is a valid config)."""
        st = self._stat()
        if st is None or st == self._config_stat:
            self._pending_stat = None
            return False
        if st != self._pending_stat:
            self._pending_stat = st
            return False
        self._pending_stat = None
        self._config_stat = st
        try:
            return Path(self.config_path).read_text() != self.loaded.text
        except OSError:
            return False

    def reload(self, why: str) -> bool:
        self._remember_config_stat()  # this version of the file is decided now, either way
        try:
            loaded = self.load()
            runtime = build_runtime(loaded, self.registry, self.runtime.generation + 1)
        except ConfigError as exc:
            log.error("config reload refused; the running config stays in force", trigger=why,
                      errors=exc.errors)
            return False
        old = self.loaded.config
        if loaded.config.spool != old.spool or loaded.config.metrics != old.metrics \
                or loaded.config.processing != old.processing:
            log.warning("spool, processing and metrics settings take effect at the next restart")
        self.runtime = runtime  # one reference swap: workers pick it up with their next batch
        self.loaded = loaded
        self.delivery.apply_config(loaded, runtime)
        self._apply_sources(loaded, reloading=True)
        set_level(loaded.config.logging.level)
        log.info("config reloaded", trigger=why, generation=runtime.generation,
                 routes=[r.name for r in runtime.routes], destinations=sorted(runtime.destinations))
        return True

    # -- shutdown ----------------------------------------------------------------------
    def _shutdown(self) -> None:
        self.stopping = True
        self.notifier.notify(stopping=1, status="stopping: finishing in-flight work")
        timeout = self.loaded.config.shutdown_timeout
        deadline = time.monotonic() + timeout
        for source in self.sources.values():
            try:
                source.stop()
            except Exception as exc:
                log.error("source did not stop cleanly", error=bug_summary(exc))
        self.intake.record_waiting()  # (what still cannot be recorded is adopted at the next start)
        processed = self.processor.stop(max(0.0, deadline - time.monotonic()))
        delivered = self.delivery.stop(max(0.0, deadline - time.monotonic()))
        try:
            received, pending = self.spool.queue_depths()
        except Exception:
            received, pending = -1, {}
        log.info("pacsguard stopped", drained=processed and delivered,
                 left_for_processing=received, left_for_delivery=sum(pending.values()))
        if self.metrics_server:
            self.metrics_server.close()
        self.spool.close()
