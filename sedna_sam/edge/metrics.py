"""The edge worker's ``/metrics`` (Prometheus text format, through ``prometheus_client``).

What a fleet dashboard needs from each edge node: frames processed and how fast, how many
were flagged by which scorer (flag rate = flagged / frames), how full the local buffer
is, what the shipper has shipped, retried and failed, and which model version is running.
Every series carries the node's name. Served by ``edge run --metrics-port`` (or
``SEDNA_SAM_METRICS_PORT``); the names are what ``manifests/components/monitoring``'s
Grafana dashboard queries (a test keeps them in step).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

# The names a dashboard may query (a test scrapes them and checks the dashboard).
FRAMES = "sedna_sam_edge_frames_total"
FLAGGED = "sedna_sam_edge_flagged_total"
KEPT = "sedna_sam_edge_samples_kept_total"
DROPPED = "sedna_sam_edge_samples_dropped_total"
FRAME_SECONDS = "sedna_sam_edge_frame_seconds"
FPS = "sedna_sam_edge_frames_per_second"
BUFFER_SAMPLES = "sedna_sam_edge_buffer_samples"
BUFFER_BYTES = "sedna_sam_edge_buffer_bytes"
BUFFER_CAPACITY_BYTES = "sedna_sam_edge_buffer_capacity_bytes"
SHIPPED = "sedna_sam_edge_shipped_total"
SHIP_FAILURES = "sedna_sam_edge_ship_failures_total"
SHIP_RETRIES = "sedna_sam_edge_ship_retries_total"
MODEL_INFO = "sedna_sam_edge_model_info"
MODEL_RELOADS = "sedna_sam_edge_model_reloads_total"


class EdgeMetrics:
    """Counters and gauges of one edge worker, in a registry of its own.

    The frame loop calls :meth:`frame`; buffer and shipper numbers are read when scraped
    (``buffer``: a SampleBuffer, ``shipper``: a Shipper, both optional).
    """

    def __init__(self, node: str, buffer: Any = None, shipper: Any = None, ewma_s: float = 30.0) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.node = node
        self.buffer = buffer
        self.shipper = shipper
        self.registry = CollectorRegistry()
        r = self.registry
        self._frames = Counter(
            FRAMES[: -len("_total")],
            "Frames processed, by result (ok, failed).",
            ["node", "result"],
            registry=r,
        )
        self._flagged = Counter(
            FLAGGED[: -len("_total")],
            "Frames flagged as corner cases, by scorer.",
            ["node", "scorer"],
            registry=r,
        )
        self._kept = Counter(
            KEPT[: -len("_total")], "Flagged frames kept in the local buffer.", ["node"], registry=r
        )
        self._dropped = Counter(
            DROPPED[: -len("_total")], "Flagged frames dropped: buffer full.", ["node"], registry=r
        )
        self._seconds = Histogram(
            FRAME_SECONDS,
            "Seconds one frame took (segment, score, write, buffer).",
            ["node"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self._fps = Gauge(
            FPS, f"Frames per second, averaged over about {ewma_s:.0f} s.", ["node"], registry=r
        )
        self._reloads = Counter(
            MODEL_RELOADS[: -len("_total")], "Hot reloads of a new model.", ["node"], registry=r
        )
        self._model = Gauge(
            MODEL_INFO,
            "The model in use (value 1), by version and scorer.",
            ["node", "version", "scorer", "calibrated"],
            registry=r,
        )
        r.register(_BufferAndShipperCollector(self))
        for result in ("ok", "failed"):
            self._frames.labels(node, result)
        self._kept.labels(node)
        self._dropped.labels(node)
        self._ewma_s = ewma_s
        self._rate = 0.0
        self._last: float | None = None
        self._lock = threading.Lock()
        self._model_labels: tuple | None = None
        self._server = None

    # --- what the frame loop reports -----------------------------------------------

    def frame(self, seconds: float, scorer: str, flagged: bool, kept: bool) -> None:
        with self._lock:
            self._frames.labels(self.node, "ok").inc()
            self._seconds.labels(self.node).observe(seconds)
            if flagged:
                self._flagged.labels(self.node, scorer).inc()
                (self._kept if kept else self._dropped).labels(self.node).inc()
            self._tick()

    def failed(self) -> None:
        with self._lock:
            self._frames.labels(self.node, "failed").inc()
            self._tick()

    def model(self, version: str, scorer: str, calibrated: bool) -> None:
        labels = (self.node, version, scorer, str(bool(calibrated)).lower())
        with self._lock:
            if labels == self._model_labels:
                return
            if self._model_labels is not None:
                self._model.remove(*self._model_labels)
                self._reloads.labels(self.node).inc()
            self._model.labels(*labels).set(1)
            self._model_labels = labels

    def _tick(self) -> None:
        """Exponentially weighted frames/s: each frame is one event at its arrival time."""
        now = time.monotonic()
        if self._last is not None:
            dt = max(now - self._last, 1e-6)
            alpha = min(1.0, dt / self._ewma_s)
            self._rate = (1 - alpha) * self._rate + alpha * (1.0 / dt)
            self._fps.labels(self.node).set(self._rate)
        self._last = now

    # --- serving -------------------------------------------------------------------

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``host:port`` in a daemon thread; returns the port."""
        from prometheus_client import start_http_server

        server = start_http_server(port, addr=host, registry=self.registry)
        self._server = server[0] if isinstance(server, tuple) else None
        bound = self._server.server_address[1] if self._server is not None else port
        log.info("edge metrics on http://%s:%d/metrics", host, bound)
        return int(bound)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


class _BufferAndShipperCollector:
    """Buffer and shipper numbers, read when Prometheus scrapes (never stale)."""

    def __init__(self, metrics: EdgeMetrics) -> None:
        self.m = metrics

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        node, buffer = self.m.node, self.m.buffer
        count, size = buffer.usage() if buffer is not None else (0, 0)
        for name, doc, value in (
            (BUFFER_SAMPLES, "Flagged samples waiting in the local buffer (the shipper's backlog).", count),
            (BUFFER_BYTES, "Bytes of flagged samples in the local buffer.", size),
            (BUFFER_CAPACITY_BYTES, "The local buffer's size cap in bytes.", getattr(buffer, "max_bytes", 0)),
        ):
            family = GaugeMetricFamily(name, doc, labels=["node"])
            family.add_metric([node], float(value))
            yield family
        stats = getattr(self.m.shipper, "stats", None)
        for name, doc, attr in (
            (SHIPPED, "Samples the shipper uploaded and verified.", "shipped"),
            (
                SHIP_FAILURES,
                "Sample uploads that failed (the sample stays buffered and is retried).",
                "failed",
            ),
            (SHIP_RETRIES, "Shipper retries while the store was unreachable.", "retries"),
        ):
            family = CounterMetricFamily(name[: -len("_total")], doc, labels=["node"])
            family.add_metric([node], float(getattr(stats, attr, 0) or 0))
            yield family
