"""Data-quality gate on a new batch, checked against the champion's baseline profile before anything is spent."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from refit_core.config import QualitySettings


@dataclass(frozen=True)
class Finding:
    check: str
    column: str | None
    severity: str  # "block" | "warn"
    observed: Any
    limit: Any
    message: str


def check_quality(
    frame: pd.DataFrame, profile: dict[str, Any], settings: QualitySettings, min_rows: int, source: str
) -> dict[str, Any]:
    """Every finding names the column, what was seen and the limit; `passed` is False if any finding blocks."""
    findings: list[Finding] = []

    def add(check: str, column: str | None, observed: Any, limit: Any, message: str) -> None:
        severity = "block" if check in settings.block_on else "warn"
        findings.append(Finding(check, column, severity, observed, limit, f"{source}: {message}"))

    expected = profile["columns"]
    n_rows = len(frame)
    if n_rows < min_rows:
        add(
            "too_few_rows",
            None,
            n_rows,
            min_rows,
            f"{n_rows} rows, at least {min_rows} are needed for a decision",
        )

    for name, spec in expected.items():
        if spec["role"] == "id":
            continue
        if name not in frame.columns:
            add("missing_column", name, "absent", "present", f"column {name!r} is missing")
            continue
        series = frame[name]
        null_rate = float(series.isna().mean()) if n_rows else 0.0
        if n_rows and null_rate == 1.0:
            add("all_null_column", name, 1.0, "< 1.0", f"column {name!r} has no values at all")
            continue
        if null_rate - spec["null_rate"] > settings.max_null_rate_increase:
            add(
                "null_rate_increase",
                name,
                round(null_rate, 4),
                round(spec["null_rate"] + settings.max_null_rate_increase, 4),
                f"column {name!r} null rate {null_rate:.1%} vs {spec['null_rate']:.1%} in the baseline",
            )
        if spec["kind"] == "numeric":
            numbers = pd.to_numeric(series, errors="coerce")
            unparseable = int((numbers.isna() & series.notna()).sum())
            if unparseable:
                example = series[numbers.isna() & series.notna()].iloc[0]
                add(
                    "dtype_change",
                    name,
                    f"{unparseable} non-numeric values, e.g. {example!r}",
                    "numeric",
                    f"column {name!r} was numeric in the baseline but has {unparseable} values that are not numbers "
                    f"(first: {example!r})",
                )
                continue
            values = numbers.to_numpy(dtype=float)
            infinite = int(np.isinf(values).sum())
            if infinite:
                add("infinite_value", name, infinite, 0, f"column {name!r} has {infinite} infinite values")
            finite = values[np.isfinite(values)]
            if finite.size and spec["min"] is not None:
                outside = float(((finite < spec["min"]) | (finite > spec["max"])).mean())
                if outside > settings.max_out_of_range_fraction:
                    add(
                        "out_of_range",
                        name,
                        round(outside, 4),
                        settings.max_out_of_range_fraction,
                        f"column {name!r}: {outside:.1%} of values outside the trained range "
                        f"[{spec['min']:.6g}, {spec['max']:.6g}]",
                    )
            if finite.size > 1 and np.unique(finite).size == 1 and spec["distinct"] > 1:
                add("constant_column", name, float(finite[0]), "varying", f"column {name!r} is constant")
        else:
            seen = set(spec["frequencies"])
            values = series.dropna().astype(str)
            unseen = sorted(set(values.unique()) - seen)
            if unseen and spec["role"] != "target":
                add(
                    "unseen_category",
                    name,
                    unseen[:5],
                    sorted(seen)[:20],
                    f"column {name!r} has {len(unseen)} categories not seen in training, e.g. {unseen[:3]}",
                )
            elif unseen:
                add(
                    "unseen_category",
                    name,
                    unseen[:5],
                    sorted(seen),
                    f"target {name!r} has unseen labels {unseen[:3]}",
                )

    extra = [c for c in frame.columns if c not in expected]
    if extra:
        add("extra_column", ", ".join(map(str, extra)), extra, [], f"columns not in the baseline: {extra}")
    if n_rows:
        duplicate = float(frame.duplicated().mean())
        if duplicate > settings.max_duplicate_fraction:
            add(
                "duplicate_rows",
                None,
                round(duplicate, 4),
                settings.max_duplicate_fraction,
                f"{duplicate:.1%} of rows are exact duplicates",
            )
    blocked = [f for f in findings if f.severity == "block"]
    return {
        "passed": not blocked,
        "n_rows": n_rows,
        "findings": [asdict(f) for f in findings],
        "reason": blocked[0].message if blocked else None,
    }
