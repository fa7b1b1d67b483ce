"""A self-contained HTML drift report: a table of every column's test and, for each drifted column, a plot of the
reference against the current distribution (inline SVG, no scripts or external files)."""

from __future__ import annotations

import html
import re
from typing import Any

import numpy as np

from refit_core.batch import BatchStats
from refit_core.profile import numeric_sample

WIDTH, HEIGHT, PAD = 420, 180, 30


def _polyline(xs: np.ndarray, ys: np.ndarray, low: float, high: float, colour: str) -> str:
    span = (high - low) or 1.0
    points = " ".join(
        f"{PAD + (x - low) / span * (WIDTH - 2 * PAD):.1f},{HEIGHT - PAD - y * (HEIGHT - 2 * PAD):.1f}"
        for x, y in zip(xs, ys, strict=True)
    )
    return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'


def _ecdf_points(values: np.ndarray, steps: int = 200) -> tuple[np.ndarray, np.ndarray]:
    values = np.sort(values)
    index = np.linspace(0, values.size - 1, min(steps, values.size)).astype(int)
    return values[index], (index + 1) / values.size


def numeric_plot(reference: np.ndarray, current: np.ndarray) -> str:
    low = float(min(reference.min(), current.min()))
    high = float(max(reference.max(), current.max()))
    lines = [
        _polyline(*_ecdf_points(reference), low, high, "#1f77b4"),
        _polyline(*_ecdf_points(current), low, high, "#d62728"),
    ]
    axis = (
        f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="11">{low:.4g}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" font-size="11" text-anchor="end">{high:.4g}</text>'
    )
    return _svg("".join(lines) + axis, "cumulative share: reference (blue) vs current (red)")


def categorical_plot(reference: dict[str, int], counts: dict[str, int]) -> str:
    categories = sorted(set(reference) | set(counts))[:20]
    ref_total, cur_total = sum(reference.values()) or 1, sum(counts.values()) or 1
    bar = (WIDTH - 2 * PAD) / max(len(categories), 1)
    shapes = []
    for i, name in enumerate(categories):
        for j, (share, colour) in enumerate(
            ((reference.get(name, 0) / ref_total, "#1f77b4"), (counts.get(name, 0) / cur_total, "#d62728"))
        ):
            height = share * (HEIGHT - 2 * PAD)
            x = PAD + i * bar + j * bar / 2
            shapes.append(
                f'<rect x="{x:.1f}" y="{HEIGHT - PAD - height:.1f}" width="{bar / 2 - 2:.1f}" '
                f'height="{height:.1f}" fill="{colour}"/>'
            )
        shapes.append(
            f'<text x="{PAD + i * bar + bar / 2:.1f}" y="{HEIGHT - 10}" font-size="10" '
            f'text-anchor="middle">{html.escape(name[:10])}</text>'
        )
    return _svg("".join(shapes), "share per category: reference (blue) vs current (red)")


def figure(column: str, plot: str) -> str:
    """A column's plot as the drift page carries it; `figures` reads it back."""
    return (
        f"<figure data-column='{html.escape(column, quote=True)}'>"
        f"<figcaption>{html.escape(column)}</figcaption>{plot}</figure>"
    )


# The caption names the column (pages written before `data-column` existed read the same).
_FIGURE = re.compile(r"<figure[^>]*><figcaption>(.*?)</figcaption>(<svg .*?</svg>)</figure>", re.S)


def figures(page: str) -> dict[str, str]:
    """The plots of a drift page `render_html` wrote, by column: the run report shows the plots the check drew,
    without reading the batch again."""
    return {html.unescape(column): svg for column, svg in _FIGURE.findall(page)}


def _svg(body: str, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img">'
        f"<title>{html.escape(title)}</title>"
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fafafa" stroke="#ccc"/>{body}</svg>'
    )


def render_html(report: dict[str, Any], batch: BatchStats, title: str) -> str:
    """The current distribution of a numeric column is drawn from the batch's uniform plot sample (batch.PLOT_ROWS
    rows); the statistics in the table are computed on every row."""
    profile = batch.profile
    rows, plots = [], []
    columns = dict(report["features"])
    if report.get("target"):
        columns[profile.get("target") or "target"] = {**report["target"], "kind": "target"}
    for name, result in columns.items():
        p_value = "n/a" if result.get("p_value") is None else f"{result['p_value']:.3g}"
        measure = {"psi": " PSI", "total_variation": " TV"}.get(result.get("effect_measure", ""), "")
        effect = "n/a" if result.get("effect_size") is None else f"{result['effect_size']:.4f}{measure}"
        flag = "DRIFT" if result["drifted"] else ""
        rows.append(
            f"<tr class='{'drift' if result['drifted'] else ''}'><td>{html.escape(str(name))}</td>"
            f"<td>{result.get('kind', '')}</td><td>{result['test']}</td><td>{result['statistic']:.4f}</td>"
            f"<td>{p_value}</td><td>{effect}</td><td>{flag}</td></tr>"
        )
        spec = profile["columns"].get(name)
        if result["drifted"] and spec is not None and name in (batch.columns or []):
            if name in batch.numeric:
                current, reference = batch.plot_values(name), numeric_sample(spec)
                if not current.size or not reference.size:
                    continue
                plot = numeric_plot(reference, current)
            else:
                plot = categorical_plot(spec["frequencies"], batch.categorical[name].category_counts())
            plots.append(figure(str(name), plot))
    verdict = "Drift detected" if report["drift_detected"] else "No drift"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px}}tr.drift{{background:#fde0dc}}figure{{display:inline-block;margin:1em}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p><b>{verdict}</b>: {len(report.get("drifted_features", []))} drifted feature(s); reference {report["n_reference"]}
rows, current {report["n_current"]} rows; alpha {report["alpha"]} over {report.get("horizon_checks", 1)} check(s),
{report["correction"]} across columns, effect-size floors: PSI {report.get("min_psi")} (numeric), total variation {report["min_effect_size"]}
(categorical).</p>
<table><tr><th>column</th><th>kind</th><th>test</th><th>statistic</th><th>p-value</th><th>effect size</th>
<th></th></tr>{"".join(rows)}</table>
{"".join(plots)}
</body></html>
"""
