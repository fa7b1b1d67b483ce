"""Checkpoints of finished work in /opt/ml/checkpoints (synced to S3 by SageMaker, restored on restart).

`progress.json` holds every finished (trial, fold) score; it is written atomically (temporary file, fsync, rename)
with a SHA-256 of its body and the fingerprint of the data and settings it belongs to. A file that fails any of
those checks is ignored (and reported in the log), never trusted and never fatal. `events.jsonl` is an
append-only log of what each process did, which is how the tests see that no finished fold was repeated.

`partial.joblib` + `partial.json` hold the fold being fitted when a SIGTERM arrived in the middle of it (the
boosting stages or trees fitted so far), with the same checks plus the fold's key; the files are refit's own,
written to the job's KMS-encrypted checkpoint prefix, and are deleted once the fold finishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import joblib

FORMAT = "refit.checkpoint/1"


class CheckpointStore:
    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.directory = directory
        self.fingerprint = fingerprint
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "progress.json"
        self.scores: dict[str, float] = {}

    def log(self, event: str, **fields: Any) -> None:
        with (self.directory / "events.jsonl").open("a") as handle:
            handle.write(
                json.dumps({"time": round(time.time(), 3), "pid": os.getpid(), "event": event, **fields}) + "\n"
            )

    def load(self) -> dict[str, float]:
        """Finished work from an earlier attempt, or nothing when there is none or it cannot be trusted."""
        if not self.path.exists():
            return {}
        try:
            document = json.loads(self.path.read_text())
            body = json.dumps(document["body"], sort_keys=True)
            if document["format"] != FORMAT or hashlib.sha256(body.encode()).hexdigest() != document["sha256"]:
                raise ValueError("checksum or format mismatch")
            if document["body"]["fingerprint"] != self.fingerprint:
                self.log("checkpoint_ignored", reason="different data or settings")
                return {}
            self.scores = {k: float(v) for k, v in document["body"]["scores"].items()}
        except (OSError, ValueError, KeyError, TypeError) as error:
            self.log("checkpoint_ignored", reason=f"corrupt: {type(error).__name__}: {error}")
            print(f"refit: ignoring an unreadable checkpoint ({error})", flush=True)
            return {}
        self.log("resumed", finished=sorted(self.scores))
        return dict(self.scores)

    def record(self, key: str, score: float) -> None:
        self.scores[key] = score
        body = {"fingerprint": self.fingerprint, "scores": self.scores}
        text = json.dumps(
            {
                "format": FORMAT,
                "sha256": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest(),
                "body": body,
            },
            sort_keys=True,
        )
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        self.log("fold_done", key=key, score=score)

    def _write_atomically(self, path: Path, data: bytes) -> None:
        temporary = path.with_suffix(path.suffix + ".tmp")
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)

    def save_partial(self, key: str, model: Any, done: int) -> None:
        """The part of a fold fitted so far (written before exiting on SIGTERM)."""
        model_path = self.directory / "partial.joblib"
        temporary = self.directory / "partial.joblib.tmp"
        joblib.dump(model, temporary)
        digest = hashlib.sha256(temporary.read_bytes()).hexdigest()
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, model_path)
        meta = {"format": FORMAT, "fingerprint": self.fingerprint, "key": key, "done": done, "sha256": digest}
        self._write_atomically(self.directory / "partial.json", json.dumps(meta, sort_keys=True).encode())
        self.log("partial_saved", key=key, done=done)

    def load_partial(self, key: str) -> tuple[Any, int] | None:
        """The saved part of this fold, or None when there is none or it cannot be trusted."""
        meta_path, model_path = self.directory / "partial.json", self.directory / "partial.joblib"
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if (meta["format"], meta["fingerprint"], meta["key"]) != (FORMAT, self.fingerprint, key):
                return None
            if hashlib.sha256(model_path.read_bytes()).hexdigest() != meta["sha256"]:
                raise ValueError("checksum mismatch")
            model = joblib.load(model_path)
        except (OSError, ValueError, KeyError, TypeError, EOFError) as error:
            self.log("partial_ignored", key=key, reason=f"{type(error).__name__}: {error}")
            return None
        self.log("partial_resumed", key=key, done=int(meta["done"]))
        return model, int(meta["done"])

    def clear_partial(self) -> None:
        for name in ("partial.json", "partial.joblib"):
            (self.directory / name).unlink(missing_ok=True)
