"""Prometheus metrics and ``/healthz`` on localhost.

Counters are fed by the observation hooks (this module is an internal plugin); queue
depths are read from the spool at scrape time; what stages measure per object (their
declared ``measures``, e.g. embed's PSNR) becomes one histogram per figure. Labels hold names only, never patient data.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .extension import Measure
from .hookspecs import hookimpl

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Registered on the plugin manager as ``pacsguard.metrics``."""

    def __init__(self, queue_depths: Callable[[], tuple[int, dict]], spool_bytes: Callable[[], int],
                 measures: Mapping[str, Mapping[str, Measure]] | None = None):
        """``measures``: per stage name, the figures it declared (:attr:`Stage.measures`):
        one histogram each, ``pacsguard_<stage>_<name>{route}``."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.measures: dict[tuple[str, str], Histogram] = {}
        for stage, declared in sorted((measures or {}).items()):
            for name, m in sorted(declared.items()):
                metric = f"pacsguard_{stage}_{name}".replace("-", "_")
                self.measures[(stage, name)] = Histogram(metric, m.description, ["route"], registry=r,
                                                         buckets=m.buckets)
        self.received = Counter("pacsguard_received", "Objects received and spooled", ["source"], registry=r)
        self.routed = Counter("pacsguard_routed", "Objects matched to a route", ["route"], registry=r)
        self.delivered = Counter("pacsguard_delivered", "Objects delivered", ["destination"], registry=r)
        self.failed = Counter("pacsguard_delivery_failures", "Failed delivery attempts", ["destination"],
                              registry=r)
        self.quarantined = Counter("pacsguard_quarantined", "Objects or deliveries quarantined", ["where"],
                                   registry=r)
        self.received_bytes = Counter("pacsguard_received_bytes", "Bytes received", ["source"], registry=r)
        self.stage_seconds = Histogram("pacsguard_stage_seconds", "Stage latency", ["stage", "outcome"],
                                       registry=r, buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.delivery_latency = Histogram("pacsguard_delivery_latency_seconds",
                                          "From receipt to delivery", ["destination"], registry=r,
                                          buckets=(.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 3600))
        metrics = self

        class _Depth:
            def collect(self):
                received, pending = queue_depths()
                g = GaugeMetricFamily("pacsguard_queue_depth", "Objects waiting", labels=["queue"])
                g.add_metric(["processing"], received)
                for dest, n in sorted(pending.items()):
                    g.add_metric([f"destination:{dest}"], n)
                yield g
                yield GaugeMetricFamily("pacsguard_spool_bytes", "Bytes held in the spool",
                                        value=spool_bytes())

        r.register(_Depth())
        self._metrics = metrics

    @hookimpl
    def pacsguard_object_received(self, job_id, source, size):
        self.received.labels(source).inc()
        self.received_bytes.labels(source).inc(size)

    @hookimpl
    def pacsguard_object_routed(self, job_id, routes):
        for route in routes:
            self.routed.labels(route).inc()

    @hookimpl
    def pacsguard_stage_finished(self, job_id, route, stage, seconds, outcome):
        self.stage_seconds.labels(stage, outcome).observe(seconds)

    @hookimpl
    def pacsguard_stage_result(self, job_id, route, stage, result):
        for name, value in result.items():
            hist = self.measures.get((stage, name))
            if hist is not None:
                hist.labels(route).observe(value)

    @hookimpl
    def pacsguard_delivery_failed(self, job_id, route, destination, attempt, retry_in):
        self.failed.labels(destination).inc()

    @hookimpl
    def pacsguard_object_delivered(self, job_id, route, destination, attempts, seconds):
        self.delivered.labels(destination).inc()
        self.delivery_latency.labels(destination).observe(seconds)

    @hookimpl
    def pacsguard_object_quarantined(self, job_id, quarantine_id, reason, where):
        self.quarantined.labels(where.split(":")[0]).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """A small HTTP server: ``/metrics`` (Prometheus text) and ``/healthz``."""

    def __init__(self, metrics: Metrics, healthy: Callable[[], tuple[bool, str]], host: str, port: int):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path.split("?")[0] == "/metrics":
                    body, status, ctype = metrics.render(), 200, CONTENT_TYPE
                elif self.path.split("?")[0] == "/healthz":
                    ok, why = healthy()
                    body, status, ctype = (why + "\n").encode(), (200 if ok else 503), "text/plain"
                else:
                    body, status, ctype = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # access logs stay out of the service log
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)
        outer._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
