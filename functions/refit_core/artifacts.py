"""A trained model as refit stores it (model.tar.gz holding model.joblib + metadata.json), loaded the same way by
`serve`, by `train` (to score the champion) and by the drift check (prediction drift and performance)."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"


@dataclass
class ModelArtifact:
    pipeline: Any
    features: list[str]
    problem_type: str
    metadata: dict[str, Any]

    @classmethod
    def load(cls, directory: Path) -> ModelArtifact:
        metadata = json.loads((directory / METADATA_FILE).read_text())
        return cls(joblib.load(directory / MODEL_FILE), metadata["features"], metadata["problem_type"], metadata)

    @classmethod
    def from_archive(cls, archive: bytes | Path, directory: Path) -> ModelArtifact:
        fileobj = io.BytesIO(archive) if isinstance(archive, bytes) else open(archive, "rb")  # noqa: SIM115
        with fileobj, tarfile.open(fileobj=fileobj, mode="r:gz") as source:
            source.extractall(directory, filter="data")
        return cls.load(directory)

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


def load_model_artifact(s3: Any, model_data_url: str) -> ModelArtifact:
    """A model from its model.tar.gz in S3 (no call to the endpoint): the drift check and the monitor score with it
    or read its features."""
    from refit_core.s3uri import S3Uri

    uri = S3Uri.parse(model_data_url)
    archive = s3.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read()
    with tempfile.TemporaryDirectory() as scratch:
        return ModelArtifact.from_archive(archive, Path(scratch))
