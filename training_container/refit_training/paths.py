"""SageMaker's /opt/ml layout, with the root overridable (REFIT_OPT_ML) so both entrypoints run as plain processes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OptMl:
    root: Path

    @classmethod
    def from_env(cls) -> OptMl:
        return cls(Path(os.environ.get("REFIT_OPT_ML", "/opt/ml")))

    @property
    def settings(self) -> Path:
        """The job's settings: the `config` input channel's one file (no size cap, unlike a hyperparameter value)."""
        return self.channel("config") / "config.json"

    def channel(self, name: str) -> Path:
        return self.root / "input" / "data" / name

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def output_data(self) -> Path:
        return self.root / "output" / "data"

    @property
    def failure(self) -> Path:
        return self.root / "output" / "failure"

    @property
    def checkpoints(self) -> Path:
        return Path(os.environ.get("REFIT_CHECKPOINT_DIR", str(self.root / "checkpoints")))
