"""Baseline profile of a dataset: the one implementation used in training, the drift Lambda and the CLI.

Format `refit.profile/2` (JSON). Numeric columns keep their non-null finite values, sorted: every value when
there are at most MAX_EXACT_SAMPLE of them, otherwise a seeded simple random sample of MAX_EXACT_SAMPLE values.
They are stored as base64 of little-endian float64 (at most 20,000 values, 213 KB of JSON, per column), which
loads about ten times faster than JSON number literals. Two-sample KS against the stored
values is then an exact test with n_reference = the stored count. The JSON is byte-stable for the same data:
keys sorted, fixed seed, no timestamps.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pandas as pd

from refit_core.datasets import is_numeric

PROFILE_FORMAT = "refit.profile/2"
MAX_EXACT_SAMPLE = 20_000


class ProfileError(ValueError):
    """A profile file that cannot be used."""


def categorical_columns(configured: list[str], target: str, problem_type: str) -> list[str]:
    """Columns profiled as categories: the configured ones, plus a classification target (label balance is a
    question about category shares, not a numeric distribution)."""
    return list(configured) + ([target] if problem_type == "binary_classification" else [])


def column_kind(series: pd.Series, name: str, categorical: set[str]) -> str:
    return "categorical" if name in categorical or not is_numeric(series) else "numeric"


def numeric_summary(values: pd.Series) -> dict[str, Any]:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    finite = np.sort(numbers[np.isfinite(numbers)])
    if finite.size > MAX_EXACT_SAMPLE:
        chosen = np.random.default_rng(0).choice(finite.size, MAX_EXACT_SAMPLE, replace=False)
        sample, exact = np.sort(finite[chosen]), False
    else:
        sample, exact = finite, True
    return {
        "min": float(finite[0]) if finite.size else None,
        "max": float(finite[-1]) if finite.size else None,
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std(ddof=1)) if finite.size > 1 else None,
        "distinct": int(np.unique(finite).size),
        "sample": base64.b64encode(np.ascontiguousarray(sample, dtype="<f8").tobytes()).decode("ascii"),
        "sample_encoding": "f64le-base64",
        "sample_is_exact": exact,
    }


def _categorical_summary(values: pd.Series) -> dict[str, Any]:
    counts = values.dropna().astype(str).value_counts()
    return {"frequencies": {str(k): int(v) for k, v in sorted(counts.items())}, "distinct": int(counts.size)}


def build_profile(
    frame: pd.DataFrame,
    target: str | None = None,
    categorical: list[str] | tuple[str, ...] = (),
    id_column: str | None = None,
) -> dict[str, Any]:
    categorical_set = set(categorical)
    if target is not None and target not in frame.columns:
        raise ProfileError(f"target column {target!r} is not in the data (columns: {list(frame.columns)})")
    columns: dict[str, Any] = {}
    for name in frame.columns:
        series = frame[name]
        role = "target" if name == target else "id" if name == id_column else "feature"
        kind = column_kind(series, name, categorical_set)
        entry: dict[str, Any] = {
            "role": role,
            "kind": kind,
            "dtype": str(series.dtype),
            "count": int(series.size),
            "nulls": int(series.isna().sum()),
        }
        entry["null_rate"] = entry["nulls"] / entry["count"] if entry["count"] else 0.0
        entry.update(numeric_summary(series) if kind == "numeric" else _categorical_summary(series))
        columns[str(name)] = entry
    return {"format": PROFILE_FORMAT, "n_rows": int(len(frame)), "target": target, "columns": columns}


def dumps_profile(profile: dict[str, Any]) -> str:
    return json.dumps(profile, sort_keys=True, separators=(",", ":"), allow_nan=False)


def loads_profile(text: str | bytes, source: str = "<profile>") -> dict[str, Any]:
    try:
        profile = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProfileError(f"{source}: not a refit profile (invalid JSON: {error})") from None
    if not isinstance(profile, dict) or profile.get("format") != PROFILE_FORMAT:
        found = profile.get("format") if isinstance(profile, dict) else type(profile).__name__
        raise ProfileError(f"{source}: profile format {found!r} is not supported; this refit reads {PROFILE_FORMAT!r}")
    if not isinstance(profile.get("columns"), dict) or not profile["columns"]:
        raise ProfileError(f"{source}: profile has no columns")
    return profile


def numeric_sample(spec: dict[str, Any]) -> np.ndarray:
    """The stored sorted values of a numeric column."""
    return np.frombuffer(base64.b64decode(spec["sample"]), dtype="<f8")
