"""`serve`: SageMaker inference contract on port 8080 (GET /ping, POST /invocations).

Loads the model once at start; /ping answers 200 only when it is loaded. Bad requests get a 4xx
with a message naming the problem, never a 500 for the client's mistake.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
from refit_core.artifacts import MODEL_FILE, ModelArtifact

from refit_training.paths import OptMl

MAX_REQUEST_BYTES = 6 * 1024 * 1024  # SageMaker's real-time payload limit
log = logging.getLogger("refit.serve")


class BadRequest(ValueError):
    pass


class LoadedModel:
    def __init__(self, model_dir: Path) -> None:
        archive = model_dir / "model.tar.gz"
        if not (model_dir / MODEL_FILE).exists() and archive.exists():
            self.artifact = ModelArtifact.from_archive(archive, model_dir)
        else:
            self.artifact = ModelArtifact.load(model_dir)
        self.features: list[str] = self.artifact.features
        self.problem_type: str = self.artifact.problem_type

    def frame(self, body: bytes, content_type: str) -> pd.DataFrame:
        if content_type.startswith("text/csv"):
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest("the CSV body is not UTF-8") from None
            first = text.split("\n", 1)[0].split(",")
            has_header = [c.strip() for c in first] == self.features
            try:
                frame = pd.read_csv(io.StringIO(text), header=0 if has_header else None)
            except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
                raise BadRequest(f"malformed CSV: {error}") from None
            if frame.shape[1] != len(self.features):
                raise BadRequest(
                    f"each CSV row needs {len(self.features)} values ({', '.join(self.features)}), got {frame.shape[1]}"
                )
            frame.columns = self.features
            return frame
        if content_type.startswith("application/json"):
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise BadRequest(f"malformed JSON: {error}") from None
            rows = payload.get("instances", payload.get("records")) if isinstance(payload, dict) else payload
            if not isinstance(rows, list) or not rows:
                raise BadRequest('JSON must be {"instances": [...]} or {"records": [...]} with at least one row')
            if all(isinstance(r, dict) for r in rows):
                missing = sorted(set(self.features) - set().union(*rows))
                if missing:
                    raise BadRequest(f"records lack the features {missing}")
                return pd.DataFrame(rows)[self.features]
            if all(isinstance(r, list) and len(r) == len(self.features) for r in rows):
                return pd.DataFrame(rows, columns=self.features)
            raise BadRequest(f"each instance must be a list of {len(self.features)} values or a record object")
        raise BadRequest(f"unsupported content type {content_type!r}; use text/csv or application/json")

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


def render(result: dict[str, list[Any]], accept: str) -> tuple[bytes, str]:
    if "text/csv" in accept and "application/json" not in accept:
        columns = [result["predictions"]] + ([result["probabilities"]] if "probabilities" in result else [])
        lines = [",".join(str(v) for v in row) for row in zip(*columns, strict=True)]
        return ("\n".join(lines) + "\n").encode(), "text/csv"
    return json.dumps(result).encode(), "application/json"


def handle(
    model: LoadedModel, method: str, path: str, content_type: str, accept: str, length: int, read: Any
) -> tuple[int, str, bytes]:
    """One request, whatever server carries it: (status, content type, body)."""

    def error(status: int, message: str) -> tuple[int, str, bytes]:
        return status, "application/json", json.dumps({"error": message}).encode()

    if method == "GET" and path == "/ping":
        return HTTPStatus.OK, "application/json", b'{"status":"ok"}'
    if method != "POST" or path != "/invocations":
        return error(HTTPStatus.NOT_FOUND, f"no route {method} {path}")
    if length > MAX_REQUEST_BYTES:
        return error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_REQUEST_BYTES} bytes")
    body = read(length) if length else b""
    if not body:
        return error(HTTPStatus.BAD_REQUEST, "empty request body")
    try:
        frame = model.frame(body, content_type or "text/csv")
        payload, reply_type = render(model.predict(frame), accept or "application/json")
    except BadRequest as problem:
        return error(HTTPStatus.BAD_REQUEST, str(problem))
    return HTTPStatus.OK, reply_type, payload


def model_directory() -> Path:
    return Path(os.environ.get("SM_MODEL_DIR", str(OptMl.from_env().model)))


def wsgi_app(model_dir: Path | None = None) -> Any:
    """The WSGI application; under gunicorn each worker builds it, so each loads the model once."""
    model = LoadedModel(model_dir or model_directory())

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        status, content_type, body = handle(
            model,
            environ["REQUEST_METHOD"],
            environ.get("PATH_INFO", ""),
            environ.get("CONTENT_TYPE", ""),
            environ.get("HTTP_ACCEPT", ""),
            int(environ.get("CONTENT_LENGTH") or 0),
            environ["wsgi.input"].read,
        )
        start_response(
            f"{int(status)} {HTTPStatus(status).phrase}",
            [("Content-Type", content_type), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


def make_handler(model: LoadedModel) -> type[BaseHTTPRequestHandler]:
    """The single-process standard-library server (REFIT_SERVER=simple), kept as the benchmark's baseline."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            log.info(json.dumps({"client": self.client_address[0], "request": format % args}))

        def _serve(self, method: str) -> None:
            status, content_type, body = handle(
                model,
                method,
                self.path,
                self.headers.get("Content-Type", ""),
                self.headers.get("Accept", ""),
                int(self.headers.get("Content-Length") or 0),
                self.rfile.read,
            )
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

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
            self.cfg.set(
                "access_log_format", '{"client":"%(h)s","request":"%(r)s","status":%(s)s,"bytes":%(B)s,"micros":%(D)s}'
            )

        def load(self) -> Any:
            return wsgi_app()

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
