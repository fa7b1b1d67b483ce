"""`serve`: SageMaker inference contract on port 8080 (GET /ping, POST /invocations), and GET /metrics for
Prometheus (refit_training.prometheus).

Loads the model once at start; /ping answers 200 only when it is loaded. Bad requests get a 4xx
with a message naming the problem, never a 500 for the client's mistake.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
from refit_core.artifacts import MODEL_FILE, MODEL_SHA256_ENV, ModelArtifact
from refit_core.champion import PACKAGE_ENV
from refit_core.payloads import (
    CSV,
    JSON,
    OUTPUT_TYPES,
    PayloadError,
    UnsupportedContentType,
    parse_request,
    render_reply,
)

from refit_training.paths import OptMl
from refit_training.prometheus import ServeMetrics, prepare_multiprocess_dir, worker_exited

MAX_REQUEST_BYTES = 6 * 1024 * 1024  # SageMaker's real-time payload limit
log = logging.getLogger("refit.serve")


class BadRequest(ValueError):
    """A client's mistake: answered with `status` and a message naming the problem."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


WILDCARDS = {"*/*": JSON, "application/*": JSON, "text/*": CSV}


def reply_type(accept: str) -> str:
    """The first type the client accepts that serve can write, in the client's order of preference (q values, q=0
    refused); no Accept header means JSON. Raises 406 naming what is supported."""
    offers = []
    for position, part in enumerate(accept.split(",")):
        kind, *parameters = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if kind and quality > 0:
            offers.append((-quality, position, kind.lower()))
    if not offers:
        return JSON
    for _, _, kind in sorted(offers):
        if kind in OUTPUT_TYPES:
            return kind
        if kind in WILDCARDS:
            return WILDCARDS[kind]
    raise BadRequest(f"cannot answer in {accept!r}; Accept one of {', '.join(OUTPUT_TYPES)}", HTTPStatus.NOT_ACCEPTABLE)


class LoadedModel:
    def __init__(self, model_dir: Path, expected_sha256: str | None = None) -> None:
        """`expected_sha256`: the registry's digest of model.joblib, which refit's Deploy puts in the model's
        environment (REFIT_MODEL_SHA256) with the registry entry's ARN (REFIT_MODEL_PACKAGE_ARN); a file that does
        not match, or a model with no digest, is refused before it is unpickled."""
        expected = expected_sha256 or os.environ.get(MODEL_SHA256_ENV) or None
        package = os.environ.get(PACKAGE_ENV) or None
        archive = model_dir / "model.tar.gz"
        if not (model_dir / MODEL_FILE).exists() and archive.exists():
            self.artifact = ModelArtifact.from_archive(archive, model_dir, expected, package=package)
        else:
            self.artifact = ModelArtifact.load(model_dir, expected, package=package)
        self.features: list[str] = self.artifact.features
        self.numeric: list[str] = self.artifact.numeric_features
        self.problem_type: str = self.artifact.problem_type

    def frame(self, body: bytes, content_type: str) -> pd.DataFrame:
        try:
            return parse_request(body, content_type, self.features, self.numeric)
        except UnsupportedContentType as error:
            raise BadRequest(str(error), HTTPStatus.UNSUPPORTED_MEDIA_TYPE) from None
        except PayloadError as error:
            raise BadRequest(str(error)) from None

    def predict(self, frame: pd.DataFrame) -> dict[str, list[Any]]:
        try:
            if self.problem_type == "binary_classification":
                probabilities = self.artifact.scores(frame)
                return {
                    "predictions": [int(p >= 0.5) for p in probabilities],
                    "probabilities": [float(p) for p in probabilities],
                }
            return {"predictions": [float(v) for v in self.artifact.scores(frame)]}
        except (ValueError, TypeError) as error:
            raise BadRequest(f"the rows cannot be scored: {error}") from None


class TooLarge(Exception):
    pass


def read_limited(read: Any, length: int | None) -> bytes:
    """The body: Content-Length bytes, or, without one (Transfer-Encoding: chunked), everything `read` yields until
    it is exhausted; over MAX_REQUEST_BYTES either way is refused."""
    if length is not None:
        if length > MAX_REQUEST_BYTES:
            raise TooLarge
        return read(length) if length else b""
    parts, size = [], 0
    while True:
        part = read(min(65536, MAX_REQUEST_BYTES + 1 - size))
        if not part:
            return b"".join(parts)
        parts.append(part)
        size += len(part)
        if size > MAX_REQUEST_BYTES:
            raise TooLarge


def handle(
    model: LoadedModel,
    method: str,
    path: str,
    content_type: str,
    accept: str,
    length: int | None,
    read: Any,
    metrics: ServeMetrics | None = None,
) -> tuple[int, str, bytes]:
    """One request, whatever server carries it: (status, content type, body), counted in `metrics`. `length` None:
    no Content-Length (a chunked body, which `read` returns decoded)."""
    started = time.perf_counter()
    scored: list[int] = []
    status, reply_kind, body = _answer(model, method, path, content_type, accept, length, read, metrics, scored)
    if metrics is not None:
        metrics.observe(path, status, started, scored[0] if scored else None)
    return status, reply_kind, body


def _answer(
    model: LoadedModel,
    method: str,
    path: str,
    content_type: str,
    accept: str,
    length: int | None,
    read: Any,
    metrics: ServeMetrics | None,
    scored: list[int],
) -> tuple[int, str, bytes]:
    def error(status: int, message: str) -> tuple[int, str, bytes]:
        return status, JSON, json.dumps({"error": message}).encode()

    if method == "GET" and path == "/metrics" and metrics is not None:
        return (HTTPStatus.OK, *metrics.exposition())
    if method == "GET" and path == "/ping":
        return HTTPStatus.OK, JSON, b'{"status":"ok"}'
    if method != "POST" or path != "/invocations":
        return error(HTTPStatus.NOT_FOUND, f"no route {method} {path}")
    try:
        kind = reply_type(accept)
        body = read_limited(read, length)
    except BadRequest as problem:
        return error(problem.status, str(problem))
    except TooLarge:
        return error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_REQUEST_BYTES} bytes")
    if not body:
        return error(HTTPStatus.BAD_REQUEST, "empty request body")
    try:
        frame = model.frame(body, content_type or CSV)
        payload = render_reply(model.predict(frame), kind)
        scored.append(len(frame))
    except BadRequest as problem:
        return error(problem.status, str(problem))
    return HTTPStatus.OK, kind, payload


def model_directory() -> Path:
    return Path(os.environ.get("SM_MODEL_DIR", str(OptMl.from_env().model)))


def wsgi_app(model_dir: Path | None = None) -> Any:
    """The WSGI application; under gunicorn each worker builds it, so each loads the model once."""
    model = LoadedModel(model_dir or model_directory())
    metrics = ServeMetrics()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        status, content_type, body = handle(
            model,
            environ["REQUEST_METHOD"],
            environ.get("PATH_INFO", ""),
            environ.get("CONTENT_TYPE", ""),
            environ.get("HTTP_ACCEPT", ""),
            int(environ["CONTENT_LENGTH"]) if environ.get("CONTENT_LENGTH") else None,
            environ["wsgi.input"].read,  # gunicorn decodes a chunked body here
            metrics,
        )
        start_response(
            f"{int(status)} {HTTPStatus(status).phrase}",
            [("Content-Type", content_type), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


def make_handler(model: LoadedModel) -> type[BaseHTTPRequestHandler]:
    """The single-process standard-library server (REFIT_SERVER=simple), kept as the benchmark's baseline."""
    metrics = ServeMetrics()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            log.info(json.dumps({"client": self.client_address[0], "request": format % args}))

        def _serve(self, method: str) -> None:
            length = self.headers.get("Content-Length")
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            status, content_type, body = handle(
                model,
                method,
                self.path,
                self.headers.get("Content-Type", ""),
                self.headers.get("Accept", ""),
                None if chunked or length is None else int(length),
                self._chunked_reader() if chunked else self.rfile.read,
                metrics,
            )
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _chunked_reader(self) -> Any:
            """read(n) over a chunked body, decoded (the standard library's server leaves that to the handler)."""
            pending = bytearray()
            done = False

            def read(size: int) -> bytes:
                nonlocal done
                while len(pending) < size and not done:
                    line = self.rfile.readline(65537)
                    chunk_size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                    if chunk_size == 0:
                        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        done = True
                        break
                    pending.extend(self.rfile.read(chunk_size))
                    self.rfile.readline(3)  # the CRLF after the chunk
                taken = bytes(pending[:size])
                del pending[:size]
                return taken

            return read

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802 - stdlib naming
            self._serve("POST")

    return Handler


def run_gunicorn(host: str, port: int, workers: int) -> None:
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("timeout", 60)
            self.cfg.set("accesslog", "-")
            self.cfg.set("child_exit", lambda server, worker: worker_exited(worker.pid))
            self.cfg.set(
                "access_log_format", '{"client":"%(h)s","request":"%(r)s","status":%(s)s,"bytes":%(B)s,"micros":%(D)s}'
            )

        def load(self) -> Any:
            return wsgi_app()

    prepare_multiprocess_dir()  # before the workers fork: each writes its samples there
    Server().run()


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    port = int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
    host = os.environ.get("REFIT_SERVE_HOST", "0.0.0.0")
    if os.environ.get("REFIT_SERVER", "gunicorn") == "simple":
        server = ThreadingHTTPServer((host, port), make_handler(LoadedModel(model_directory())))
        print(f"refit-serve (simple) listening on {host}:{server.server_address[1]}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        return 0
    workers = int(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS", str(os.cpu_count() or 1)))
    print(f"refit-serve (gunicorn, {workers} workers) listening on {host}:{port}", flush=True)
    run_gunicorn(host, port, workers)
    return 0
