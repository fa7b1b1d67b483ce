"""A trained model as refit stores it (model.tar.gz holding model.joblib + metadata.json), loaded the same way by
`serve`, by `train` (to score the champion) and by the drift check (prediction drift and performance).

model.joblib is a pickle: loading it runs code. Register records its SHA-256 in the model's registry entry
(`model_sha256`), and every loader is given that digest and refuses a file that does not match it, before
unpickling (`ModelArtifact.load`, the one place a model file is unpickled). A registry entry that records no digest
(registered before digests were, or by hand) is refused the same way: a file nothing vouches for is never loaded."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import joblib
import numpy as np
import pandas as pd

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
MODEL_SHA256_ENV = "REFIT_MODEL_SHA256"  # the serving container's copy of the registry's digest (CreateModel)
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class ArtifactIntegrityError(ValueError):
    """A model file whose SHA-256 is not the one its registry entry records, or whose entry records none: never
    unpickled."""


def sha256_of(data: bytes | Path) -> str:
    digest = hashlib.sha256()
    if isinstance(data, bytes):
        digest.update(data)
    else:
        with open(data, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def archive_model_sha256(archive: bytes | BinaryIO) -> str:
    """The SHA-256 of model.joblib inside a model.tar.gz (the bytes a loader unpickles, wherever they were
    extracted), or ValueError naming what the archive lacks. `archive` may be a stream (S3's StreamingBody): it is
    read once, front to back, in blocks, so a large model is never held in memory whole."""
    stream = io.BytesIO(archive) if isinstance(archive, bytes) else archive
    with tarfile.open(fileobj=stream, mode="r|gz") as source:
        for member in source:
            if member.isfile() and Path(member.name).name == MODEL_FILE:
                digest = hashlib.sha256()
                handle = source.extractfile(member)
                for block in iter(functools.partial(handle.read, 1 << 20), b""):
                    digest.update(block)
                return digest.hexdigest()
    raise ValueError(f"the archive holds no {MODEL_FILE}")


def verify_model_file(path: Path, expected_sha256: str | None, source: str, package: str | None = None) -> None:
    """Raise ArtifactIntegrityError unless `path` has the SHA-256 the registry records (`expected_sha256`); `source`
    names the file (its S3 URI where known), `package` the registry entry (its ARN where known)."""
    if not expected_sha256:
        raise ArtifactIntegrityError(
            f"{source}: {package or 'its model registry entry'} records no SHA-256 of {MODEL_FILE} (model_sha256); "
            "refusing to load a model file nothing vouches for (refit's Register records the digest of every "
            "package it registers: register this model again)"
        )
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ArtifactIntegrityError(
            f"{source}: {MODEL_FILE} has SHA-256 {actual}, but the model registry records {expected_sha256}; "
            "refusing to load it (the file changed after it was registered)"
        )


@dataclass
class ModelArtifact:
    pipeline: Any
    features: list[str]
    problem_type: str
    metadata: dict[str, Any]

    @classmethod
    def load(
        cls, directory: Path, expected_sha256: str | None, source: str | None = None, package: str | None = None
    ) -> ModelArtifact:
        """`expected_sha256`: the registry's digest of model.joblib, checked before it is unpickled (None, or a
        digest that does not match, is refused); `package`: the registry entry, named in the refusal."""
        verify_model_file(directory / MODEL_FILE, expected_sha256, source or str(directory), package)
        metadata = json.loads((directory / METADATA_FILE).read_text())
        return cls(joblib.load(directory / MODEL_FILE), metadata["features"], metadata["problem_type"], metadata)

    @classmethod
    def from_archive(
        cls,
        archive: bytes | Path,
        directory: Path,
        expected_sha256: str | None,
        source: str | None = None,
        package: str | None = None,
    ) -> ModelArtifact:
        fileobj = io.BytesIO(archive) if isinstance(archive, bytes) else open(archive, "rb")  # noqa: SIM115
        with fileobj, tarfile.open(fileobj=fileobj, mode="r:gz") as archived:
            archived.extractall(directory, filter="data")
        return cls.load(
            directory, expected_sha256, source or (str(archive) if isinstance(archive, Path) else None), package
        )

    @property
    def numeric_features(self) -> list[str]:
        """The features the fitted preprocessing treats as numbers (its `numeric` transformer's columns)."""
        preprocess = getattr(self.pipeline, "named_steps", {}).get("preprocess")
        for name, _, columns in getattr(preprocess, "transformers_", None) or []:
            if name == "numeric":
                return [str(column) for column in columns]
        return []

    def scores(self, frame: pd.DataFrame) -> np.ndarray:
        """Positive-class probability for classification, the prediction for regression."""
        features = frame[self.features]
        if self.problem_type == "binary_classification":
            return self.pipeline.predict_proba(features)[:, 1]
        return self.pipeline.predict(features)


def load_model_artifact(
    s3: Any, model_data_url: str, expected_sha256: str | None, package: str | None = None
) -> ModelArtifact:
    """A model from its model.tar.gz in S3 (no call to the endpoint): the drift check and the monitor score with it
    or read its features. `expected_sha256` and `package`: the registry's digest and entry
    (refit_core.champion.find_champion)."""
    from refit_core.s3uri import S3Uri

    uri = S3Uri.parse(model_data_url)
    archive = s3.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read()
    with tempfile.TemporaryDirectory() as scratch:
        return ModelArtifact.from_archive(archive, Path(scratch), expected_sha256, model_data_url, package)
