"""A real `mlflow server` on 127.0.0.1 for the tests (sqlite backend in a temporary folder, a free port).

The full `mlflow` package cannot share the project's environment (it requires gunicorn<27; refit pins 27.0.1 for
`serve`), so `make install` puts it in its own environment, `.venv-mlflow` (constraints-mlflow.txt); the project's
environment has only `mlflow-skinny`, the client the Lambda uses. Without `.venv-mlflow` the MLflow tests skip, except
under CI, where they fail."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER = Path(os.environ.get("REFIT_MLFLOW_SERVER", ROOT / ".venv-mlflow" / "bin" / "mlflow"))
START_SECONDS = 90


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def mlflow_server(folder: Path, while_starting: Callable[[str], Any] | None = None) -> Iterator[tuple[str, Any]]:
    """Yields (the server's URI, what `while_starting` returned) once /health answers; stops the server on exit.
    `while_starting(uri)` runs while the server imports and migrates its database (a synth, say)."""
    if not SERVER.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{SERVER} is missing: `make install` creates it")
        pytest.skip(f"{SERVER} is missing (`make install` creates .venv-mlflow)")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = (folder / "mlflow-server.log").open("wb")
    process = subprocess.Popen(
        [
            str(SERVER),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--default-artifact-root",
            str(folder / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        meanwhile = while_starting(uri) if while_starting is not None else None
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(folder / 'mlflow-server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield uri, meanwhile
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
