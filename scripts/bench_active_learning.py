"""Benchmark: labels chosen by active learning (refit_core.active_learning.select_for_labeling) against the same
number of random labels, on a simulated stream whose concept changes in one region of the feature space after
deployment.

The stream: numeric x1..x4 ~ N(0, 1), a categorical `segment` (a-d). Everywhere outside the shifted region the label
follows logit = 1.5 x1 - x2 + 0.5 x3 before and after the shift. The shifted region is segment d with x4 > 0
(12.5% of the rows). Two scenarios, run side by side:
- "unsure region": before the shift the region's label is a coin flip (the model learns p close to 0.5 there); after
  it, the region follows logit = 3 x4 - 2 x1, a rule the model has never seen. The case active learning is made for:
  the model is unsure where the new concept lives.
- "confident region": before the shift the region follows the global rule (the model is sure there); after it the
  rule is reversed (logit = -(1.5 x1 - x2 + 0.5 x3)). Uncertainty cannot see a region where the model is sure and
  wrong; this shows what active learning costs or gains then.
A model (HistGradientBoostingClassifier, as refit's search trains) is fitted on 4,000 pre-shift rows. From a pool of
10,000 post-shift unlabelled rows, N rows are labelled, chosen by (1) select_for_labeling (margin + diversity),
(2) the same with a quarter of N drawn at random (explore=0.25), (3) the N most uncertain rows (margin only, no
diversity rule) and (4) at random; the model is retrained on the 4,000 original rows + the N labelled ones and
scored (ROC AUC) on 40,000 post-shift test rows. Random labels are also tried at larger N, so that "how many random
labels reach the AUC active learning reaches with N" can be read off the random curve (linear interpolation, made
non-decreasing), the label saving ratio.
Run: .venv/bin/python -m scripts.bench_active_learning [--seeds 8] [--scenario unsure|confident|both]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from refit_core.active_learning import select_for_labeling
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

NUMERIC = ["x1", "x2", "x3", "x4"]
CATEGORICAL = ["segment"]
SEGMENTS = ["a", "b", "c", "d"]
ACTIVE_N = [50, 100, 200, 400, 800]
RANDOM_N = [50, 100, 200, 400, 800, 1600, 3200]
TRAIN_ROWS, POOL_ROWS, TEST_ROWS = 4_000, 10_000, 40_000
EXPLORE = 0.25
ARMS = ("active", "active + 25% random", "margin only", "random")


def stream(rows: int, seed: int, *, shifted: bool, scenario: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Features, labels and the shifted-region mask of `rows` rows, before or after the shift."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({name: rng.normal(0, 1, rows) for name in NUMERIC})
    frame["segment"] = pd.Categorical(rng.choice(SEGMENTS, rows), categories=SEGMENTS)
    region = (frame["segment"] == "d").to_numpy() & (frame["x4"].to_numpy() > 0)
    x1, x2, x3, x4 = (frame[name].to_numpy() for name in NUMERIC)
    logit = 1.5 * x1 - x2 + 0.5 * x3
    if scenario == "unsure":
        logit = np.where(region, 3 * x4 - 2 * x1 if shifted else 0.0, logit)
    else:
        logit = np.where(region & shifted, -logit, logit)
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame, labels, region


def fit(features: pd.DataFrame, labels: np.ndarray, seed: int) -> HistGradientBoostingClassifier:
    model = HistGradientBoostingClassifier(max_iter=100, categorical_features="from_dtype", random_state=seed)
    return model.fit(features, labels)


@dataclass
class Cell:
    auc: float
    in_region: float  # share of the labelled rows that lie in the shifted region


def run_seed(seed: int, scenario: str) -> tuple[float, dict[tuple[str, int], Cell]]:
    base = 1000 * seed
    train_x, train_y, _ = stream(TRAIN_ROWS, base + 1, shifted=False, scenario=scenario)
    pool_x, pool_y, pool_region = stream(POOL_ROWS, base + 2, shifted=True, scenario=scenario)
    test_x, test_y, _ = stream(TEST_ROWS, base + 3, shifted=True, scenario=scenario)
    model = fit(train_x, train_y, seed)
    baseline = roc_auc_score(test_y, model.predict_proba(test_x)[:, 1])
    p = model.predict_proba(pool_x)[:, 1]
    rng = np.random.default_rng(base + 4)
    random_order = rng.permutation(POOL_ROWS)
    cells: dict[tuple[str, int], Cell] = {}
    plan = [(arm, n) for arm in ARMS[:3] for n in ACTIVE_N] + [("random", n) for n in RANDOM_N]
    for arm, n in plan:
        if arm == "active":
            chosen = select_for_labeling(pool_x, p, n, numeric=NUMERIC, categorical=CATEGORICAL, seed=seed)
        elif arm == "active + 25% random":
            chosen = select_for_labeling(
                pool_x, p, n, numeric=NUMERIC, categorical=CATEGORICAL, seed=seed, explore=EXPLORE
            )
        elif arm == "margin only":
            chosen = select_for_labeling(pool_x, p, n, numeric=NUMERIC, categorical=CATEGORICAL, pool_factor=1)
        else:
            chosen = random_order[:n]
        features = pd.concat([train_x, pool_x.iloc[chosen]], ignore_index=True)
        labels = np.concatenate([train_y, pool_y[chosen]])
        retrained = fit(features, labels, seed)
        auc = roc_auc_score(test_y, retrained.predict_proba(test_x)[:, 1])
        cells[(arm, n)] = Cell(auc, float(pool_region[chosen].mean()))
    return baseline, cells


def labels_needed(target: float, grid: list[int], curve: list[float]) -> float:
    """Random labels that reach `target` AUC on the (non-decreasing) random curve; inf when it never does."""
    monotone = np.maximum.accumulate(np.asarray(curve))
    if target > monotone[-1]:
        return float("inf")
    if target <= monotone[0]:
        return float(grid[0])  # no better than the model before any new label
    upper = int(np.argmax(monotone >= target))
    x0, x1, y0, y1 = grid[upper - 1], grid[upper], monotone[upper - 1], monotone[upper]
    return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0)) if y1 > y0 else float(x1)


def report(scenario: str, baselines: list[float], runs: list[dict[tuple[str, int], Cell]]) -> None:
    def mean(arm: str, n: int, field: str = "auc") -> float:
        return float(np.mean([getattr(run[(arm, n)], field) for run in runs]))

    seeds = len(runs)
    grid = [0, *RANDOM_N]
    curve = [float(np.mean(baselines)), *(mean("random", n) for n in RANDOM_N)]

    def versus_random(arm: str, n: int) -> str:
        differences = [run[(arm, n)].auc - run[("random", n)].auc for run in runs]
        se = float(np.std(differences, ddof=1) / np.sqrt(seeds)) if seeds > 1 else float("nan")
        needed = labels_needed(mean(arm, n), grid, curve)
        if needed == 0:
            saving = "no gain over the pre-shift model"
        elif np.isinf(needed):
            saving = f"> {RANDOM_N[-1]:,} (> {RANDOM_N[-1] / n:.1f}×)"
        else:
            saving = f"{needed:,.0f} ({needed / n:.2f}×)"
        return f"{np.mean(differences):+.4f} ± {se:.4f} | {saving}"

    print(f"\n### scenario: {scenario} region ({seeds} seeds; pre-shift model AUC {np.mean(baselines):.4f})")
    print("AUC by arm; for the active arms, the gain over random with its standard error across seeds, and the random")
    print("labels that reach the same AUC (the saving ratio = those / N)")
    print(
        "| N | active | active + 25% random | margin only | random | active − random | random labels for its AUC "
        "| (active + 25%) − random | random labels for its AUC | labels in region: active / +25% / random |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in ACTIVE_N:
        shares = " / ".join(f"{mean(arm, n, 'in_region'):.0%}" for arm in ("active", "active + 25% random", "random"))
        print(
            f"| {n} | {mean('active', n):.4f} | {mean('active + 25% random', n):.4f} | {mean('margin only', n):.4f} "
            f"| {mean('random', n):.4f} | {versus_random('active', n)} | {versus_random('active + 25% random', n)} "
            f"| {shares} |"
        )
    print("random curve: " + ", ".join(f"N={n}: {a:.4f}" for n, a in zip(grid, curve, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--scenario", choices=["unsure", "confident", "both"], default="both")
    args = parser.parse_args()
    scenarios = ["unsure", "confident"] if args.scenario == "both" else [args.scenario]
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    cpu = models[0] if models else platform.processor()
    print(f"machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}", flush=True)
    # One OpenMP thread: on a shared 2-core machine, HistGradientBoosting's spinning threads slow down by 10x when
    # another process holds a core; with one thread a seed takes about the same time, loaded or not.
    threadpool_limits(1)
    started = time.perf_counter()
    results = {}
    for scenario in scenarios:
        baselines, runs = [], []
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            baseline, cells = run_seed(seed, scenario)
            baselines.append(baseline)
            runs.append(cells)
            print(
                f"[{scenario}] seed {seed + 1}/{args.seeds}: pre-shift model {baseline:.4f}, "
                f"N=200 active {cells[('active', 200)].auc:.4f} random {cells[('random', 200)].auc:.4f} "
                f"({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
        results[scenario] = (baselines, runs)
    for scenario, (baselines, runs) in results.items():
        report(scenario, baselines, runs)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
