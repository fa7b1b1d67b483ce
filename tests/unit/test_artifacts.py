"""`ModelArtifact.load`, the one place a model file is unpickled: only a file whose SHA-256 is the registry's."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from refit_core.artifacts import METADATA_FILE, MODEL_FILE, ArtifactIntegrityError, ModelArtifact, sha256_of


class _Planted:
    """A pickle that runs code when it is loaded: it creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    model_dir, marker = tmp_path / "model", tmp_path / "ran"
    model_dir.mkdir()
    (model_dir / MODEL_FILE).write_bytes(pickle.dumps(_Planted(marker)))
    (model_dir / METADATA_FILE).write_text(json.dumps({"features": ["a"], "problem_type": "regression"}))
    return model_dir, marker


def test_a_model_without_a_recorded_digest_is_refused_naming_its_registry_entry(planted):
    model_dir, marker = planted
    package = "arn:aws:sagemaker:us-east-1:123456789012:model-package/refit-churn/3"
    for digest in (None, ""):
        with pytest.raises(ArtifactIntegrityError, match=f"{package} records no SHA-256 of model.joblib"):
            ModelArtifact.load(model_dir, digest, "s3://art/training/churn/j/output/model.tar.gz", package)
    with pytest.raises(ArtifactIntegrityError, match="its model registry entry records no SHA-256"):
        ModelArtifact.load(model_dir, None)
    assert not marker.exists()  # never unpickled


def test_only_the_recorded_digest_loads_the_file(planted):
    model_dir, marker = planted
    with pytest.raises(ArtifactIntegrityError, match="refusing to load it"):
        ModelArtifact.load(model_dir, "0" * 64)
    assert not marker.exists()
    ModelArtifact.load(model_dir, sha256_of(model_dir / MODEL_FILE))
    assert marker.exists()
