"""`serve`'s Prometheus metrics (GET /metrics), for teams that run the serving image outside SageMaker (a SageMaker
endpoint routes only /ping and /invocations to the container; there, CloudWatch has the same figures).

Under gunicorn every worker is a process: prometheus-client's multiprocess mode keeps each worker's samples in files
under PROMETHEUS_MULTIPROC_DIR, which `serve` creates empty before the workers start, and /metrics adds them up
whichever worker answers. A worker that exits is marked dead so its gauges stop counting (counters keep its counts).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from refit_core.champion import PACKAGE_ENV

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROW_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


def prepare_multiprocess_dir() -> Path:
    """Called by the gunicorn master before it forks: a fresh, empty directory (stale files from an earlier server
    would be added to this one's counts)."""
    directory = Path(tempfile.mkdtemp(prefix="refit-prometheus-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    atexit.register(shutil.rmtree, directory, True)
    return directory


def model_version() -> str:
    """The registry version this container serves (the last part of its model package ARN), else `unregistered`."""
    match = re.search(r"/(\d+)$", os.environ.get(PACKAGE_ENV, ""))
    return match.group(1) if match else "unregistered"


class ServeMetrics:
    """Requests by path and status, latency, rows per scored request; every series labelled with the model version.
    Import-time work is deferred: prometheus-client reads MULTIPROC_ENV when its metrics are created."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry() if self.multiprocess else CollectorRegistry(auto_describe=True)
        registry = None if self.multiprocess else self.registry  # multiprocess: samples go to the files
        self.version = model_version()
        self.requests = Counter(
            "refit_serve_requests",
            "Requests answered, by path and HTTP status.",
            ["path", "status", "model_version"],
            registry=registry,
        )
        self.latency = Histogram(
            "refit_serve_request_seconds",
            "Time to answer a request, reading the body to writing the reply.",
            ["path", "model_version"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rows = Histogram(
            "refit_serve_payload_rows",
            "Rows in each request that was scored.",
            ["model_version"],
            buckets=ROW_BUCKETS,
            registry=registry,
        )
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(self.registry)

    def observe(self, path: str, status: int, started: float, rows: int | None) -> None:
        known = path if path in ("/ping", "/invocations", "/metrics") else "other"  # bounded label values
        self.requests.labels(known, str(int(status)), self.version).inc()
        self.latency.labels(known, self.version).observe(time.perf_counter() - started)
        if rows is not None:
            self.rows.labels(self.version).observe(rows)

    def exposition(self) -> tuple[str, bytes]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return CONTENT_TYPE_LATEST, generate_latest(self.registry)


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit hook: the worker's live gauges no longer count."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
