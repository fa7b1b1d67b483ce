"""Data-quality gate on a new batch, checked against the champion's baseline profile before anything is spent.

It reads a BatchStats (refit_core.batch), so a batch of any size is checked in one streamed pass. Without a champion
there is no baseline: the batch is checked against a profile of its own first chunk (`against_baseline=False`),
which keeps the checks that need no history (rows, all-null, unparseable, infinite, constant, duplicates) and drops
the ones that compare with training (null-rate increase, range, unseen categories).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from refit_core.batch import DUPLICATE_ROWS, BatchStats
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
    stats: BatchStats,
    settings: QualitySettings,
    min_rows: int,
    source: str,
    against_baseline: bool = True,
) -> dict[str, Any]:
    """Every finding names the column, what was seen and the limit; `passed` is False if any finding blocks."""
    findings: list[Finding] = []

    def add(check: str, column: str | None, observed: Any, limit: Any, message: str) -> None:
        blocks = check in settings.block_on or (check == "extra_column" and settings.extra_columns == "block")
        severity = "block" if blocks else "warn"
        findings.append(Finding(check, column, severity, observed, limit, f"{source}: {message}"))

    expected = stats.profile["columns"]
    present = set(stats.columns or [])
    n_rows = stats.n_rows
    if n_rows < min_rows:
        add("too_few_rows", None, n_rows, min_rows, f"{n_rows} rows, at least {min_rows} are needed for a decision")

    for name, spec in expected.items():
        if spec["role"] == "id":
            if name not in present:
                add("missing_column", name, "absent", "present", f"id column {name!r} is missing")
            continue
        if name not in present:
            add("missing_column", name, "absent", "present", f"column {name!r} is missing")
            continue
        column = stats.numeric.get(name) or stats.categorical[name]
        null_rate = column.nulls / n_rows if n_rows else 0.0
        if n_rows and null_rate == 1.0:
            add("all_null_column", name, 1.0, "< 1.0", f"column {name!r} has no values at all")
            continue
        if against_baseline and null_rate - spec["null_rate"] > settings.max_null_rate_increase:
            add(
                "null_rate_increase",
                name,
                round(null_rate, 4),
                round(spec["null_rate"] + settings.max_null_rate_increase, 4),
                f"column {name!r} null rate {null_rate:.1%} vs {spec['null_rate']:.1%} in the baseline",
            )
        if name in stats.numeric:
            numeric = stats.numeric[name]
            if numeric.unparseable:
                example = numeric.first_unparseable
                add(
                    "dtype_change",
                    name,
                    f"{numeric.unparseable} non-numeric values, e.g. {example!r}",
                    "numeric",
                    f"column {name!r} was numeric in the baseline but has {numeric.unparseable} values that are not "
                    f"numbers (first: {example!r})",
                )
                continue
            if numeric.infinite:
                add(
                    "infinite_value",
                    name,
                    numeric.infinite,
                    0,
                    f"column {name!r} has {numeric.infinite} infinite values",
                )
            if against_baseline and numeric.finite and spec["min"] is not None:
                outside = numeric.out_of_range / numeric.finite
                if outside > settings.max_out_of_range_fraction:
                    add(
                        "out_of_range",
                        name,
                        round(outside, 4),
                        settings.max_out_of_range_fraction,
                        f"column {name!r}: {outside:.1%} of values outside the trained range "
                        f"[{spec['min']:.6g}, {spec['max']:.6g}]",
                    )
            varied_before = spec["distinct"] > 1 or not against_baseline
            if numeric.finite > 1 and numeric.minimum == numeric.maximum and varied_before:
                add("constant_column", name, numeric.minimum, "varying", f"column {name!r} is constant")
        elif against_baseline:
            seen = set(spec["frequencies"])
            categorical = stats.categorical[name]
            unseen = sorted(set(categorical.counts) - seen)
            more = " and more" if categorical.unseen_overflow else ""
            if unseen and spec["role"] != "target":
                add(
                    "unseen_category",
                    name,
                    unseen[:5],
                    sorted(seen)[:20],
                    f"column {name!r} has {len(unseen)}{more} categories not seen in training, e.g. {unseen[:3]}",
                )
            elif unseen:
                # Labels the history never had (`yes`/`no` where it has 0/1) would train a different problem, or
                # fail the job: blocked by default, and never kept for training.
                add(
                    "unseen_label",
                    name,
                    unseen[:5],
                    sorted(seen),
                    f"target {name!r} has labels the training history does not have: {unseen[:3]} "
                    f"(known: {sorted(seen)[:10]})",
                )

    extra = [c for c in stats.columns or [] if c not in expected]
    if extra and against_baseline:
        action = "refused (quality.extra_columns = 'block')" if settings.extra_columns == "block" else "dropped"
        add(
            "extra_column",
            ", ".join(map(str, extra)),
            extra,
            [],
            f"columns not in the baseline: {extra}; {action} for training",
        )
    if n_rows and stats.duplicates is not None:
        duplicate = stats.duplicate_fraction()
        if duplicate > settings.max_duplicate_fraction:
            sampled = f" (estimated from a hash sample of {DUPLICATE_ROWS:,} rows)" if stats.duplicates.sampled else ""
            add(
                "duplicate_rows",
                None,
                round(duplicate, 4),
                settings.max_duplicate_fraction,
                f"{duplicate:.1%} of rows are exact duplicates{sampled}",
            )
    blocked = [f for f in findings if f.severity == "block"]
    return {
        "passed": not blocked,
        "n_rows": n_rows,
        "findings": [asdict(f) for f in findings],
        "reason": blocked[0].message if blocked else None,
    }
