#!/usr/bin/env python3
"""CDK entry point: reads the model configuration file (refit.toml, or $REFIT_CONFIG) and builds the refit stack."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
for folder in ("functions", "training_container"):
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))

from stacks.app_builder import synthesize_app  # noqa: E402  (path set up above for a plain `python app.py`)


def main() -> None:
    synthesize_app(os.environ.get("REFIT_CONFIG", str(ROOT / "refit.toml")))


if __name__ == "__main__":
    main()
