"""Prediction divergence: does the challenger's live output distribution differ from the champion's on the same window
by more than their disagreement on the holdout predicts?

Two models that disagree on the holdout also disagree live, so "the live distributions differ" is no evidence of
harm; the question is whether they differ *more* than the holdout says they should. The holdout gives the joint
behaviour of the pair on the same rows (champion score h, challenger score c; the gate's holdout_predictions.csv);
live, each request reaches one variant, so the window gives two independent samples: the champion's outputs on its
requests and the challenger's on its own (both drawn from the same traffic, split at random by weight).

The holdout says what the challenger answers *given* what the champion answers: for a champion score, the challenger
scores of the ~sqrt(n) holdout rows whose champion scores are nearest. Applied to the champion's live outputs, that
gives the challenger's live output distribution as the holdout predicts it (a few draws per champion output). The
statistic D is the Kolmogorov-Smirnov distance between the challenger's captured outputs and that predicted
distribution: a one-sample question ("does the challenger answer the live traffic as its holdout behaviour says?")
that sees direction too (an inverted challenger can sit as far from the champion as the healthy one, on the other
side). Its distribution if the challenger behaves as on the holdout comes from a bootstrap of both estimates, in
each of `resamples` replicates:
  1. a challenger sample of the live size `m`: the original holdout's conditional applied to `m` champion outputs
     drawn from the live ones (the live traffic as the champion saw it),
  2. the predicted side: the holdout resampled (its own sampling spread), its conditional applied to the live
     champion outputs resampled,
  3. D* of the two.
The p-value is (1 + #replicates with D* >= D) / (1 + resamples): a one-sided Monte Carlo test at level `alpha`
(calibration and power: tests/unit/test_divergence.py). Conditioning on the champion's live outputs, rather than
drawing both sides from the holdout, keeps the null right when the live inputs have drifted along what both models
see: both move, and only a change in how the challenger answers given the champion's answer counts. What it cannot
see: a challenger whose relation to the champion changes only where the holdout has no rows, or drift in a feature
only the challenger reads (that moves its outputs as a fault would, and fails the step: a conservative error).
The record also carries the plain challenger-vs-champion live KS distance and the one the prediction expects.

Below `min_samples` outputs on either variant the check is not judged (a KS distance of a few dozen values is
noise); without Data Capture it is skipped. Neither is a pass, and the verdict says which.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

from refit_core.capture import window_scores
from refit_core.s3uri import S3Uri

RESAMPLES = 999
MAX_REFERENCE_ROWS = 5000  # holdout pairs kept in the reference (gate.json): enough for the null, small in state
TEST_NAME = "ks_conditional_monte_carlo"


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov distance (largest gap between the empirical CDFs)."""
    a, b = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    if a.size == 0 or b.size == 0:
        raise ValueError("ks_distance needs two non-empty samples")
    points = np.concatenate([a, b])
    gap = np.searchsorted(a, points, side="right") / a.size - np.searchsorted(b, points, side="right") / b.size
    return float(np.max(np.abs(gap)))


def holdout_reference(champion: np.ndarray, challenger: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """What the canary compares live outputs against, recorded at Gate time: the two models' holdout scores on the
    same rows (at most MAX_REFERENCE_ROWS, a seeded sample), their KS distance and its bootstrap spread, and the mean
    absolute score difference."""
    champion, challenger = np.asarray(champion, dtype=float), np.asarray(challenger, dtype=float)
    if champion.shape != challenger.shape or champion.ndim != 1:
        raise ValueError(f"holdout scores must be two arrays of one length: {champion.shape} vs {challenger.shape}")
    finite = np.isfinite(champion) & np.isfinite(challenger)
    champion, challenger = champion[finite], challenger[finite]
    rng = np.random.default_rng(seed)
    if champion.size > MAX_REFERENCE_ROWS:
        keep = np.sort(rng.choice(champion.size, MAX_REFERENCE_ROWS, replace=False))
        champion, challenger = champion[keep], challenger[keep]
    n = champion.size
    spread = None
    if n >= 2:
        draws = rng.integers(0, n, size=(200, n))
        spread = float(np.std([ks_distance(champion[d], challenger[d]) for d in draws], ddof=1))
    return {
        "rows": int(n),
        "ks_distance": round(ks_distance(champion, challenger), 6) if n else None,
        "ks_distance_sd": round(spread, 6) if spread is not None else None,
        "mean_abs_difference": round(float(np.mean(np.abs(champion - challenger))), 6) if n else None,
        "champion": [round(float(v), 6) for v in champion],
        "challenger": [round(float(v), 6) for v in challenger],
    }


def _ks_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ks_distance of each row of `a` (R x m) against the same row of `b` (R x k), in one sort."""
    m, k = a.shape[1], b.shape[1]
    values = np.concatenate([a, b], axis=1)
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    gap = np.cumsum(np.where(order < m, 1.0 / m, -1.0 / k), axis=1)
    last_of_ties = np.ones(ordered.shape, dtype=bool)
    last_of_ties[:, :-1] = ordered[:, 1:] != ordered[:, :-1]
    return np.max(np.abs(np.where(last_of_ties, gap, 0.0)), axis=1)


class _Conditional:
    """The challenger's output given the champion's, as the holdout shows it: for a champion score, the challenger
    score of a random holdout row among the `neighbours` whose champion scores are nearest (by rank; all rows with
    that very score when more of them tie)."""

    def __init__(self, champion: np.ndarray, challenger: np.ndarray) -> None:
        order = np.argsort(champion, kind="stable")
        self.champion, self.challenger = champion[order], challenger[order]
        self.neighbours = max(1, int(np.ceil(np.sqrt(champion.size))))

    def draw(self, given: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        low = np.searchsorted(self.champion, given, side="left")
        high = np.searchsorted(self.champion, given, side="right")
        return self.challenger[_neighbour(low, high, self.neighbours, self.champion.size, rng)]


def _neighbour(low: np.ndarray, high: np.ndarray, neighbours: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random row position among the neighbours of a champion score whose equal values span [low, high) of the
    sorted holdout: uniform over the tied rows when there are at least `neighbours` of them (tree ensembles answer
    few distinct values, and a window at the block's edge would be biased), else over `neighbours` rows centred on
    them."""
    width = np.maximum(high - low, neighbours)
    start = (low + high - width) // 2
    return np.clip(start + np.floor(rng.random(low.shape) * width).astype(np.int64), 0, n - 1)


def _predicted_size(champion_size: int) -> int:
    """Draws of the predicted challenger distribution: a few per live champion output (at most 2,000 unless the
    champion alone has more)."""
    return champion_size * max(1, min(5, 2000 // max(champion_size, 1)))


def _null_distances(
    holdout_champion: np.ndarray,
    holdout_challenger: np.ndarray,
    live_champion: np.ndarray,
    challenger_size: int,
    resamples: int,
    rng: np.random.Generator,
    chunk: int = 50,
) -> np.ndarray:
    """D* of `resamples` replicates (see the module's docstring), `chunk` replicates per vectorized batch."""
    n, k, predicted = holdout_champion.size, live_champion.size, _predicted_size(live_champion.size)
    truth = _Conditional(holdout_champion, holdout_challenger)
    low = float(min(holdout_champion.min(), live_champion.min()))
    span = float(max(holdout_champion.max(), live_champion.max())) - low + 1.0
    distances = []
    for first in range(0, resamples, chunk):
        r = min(chunk, resamples - first)
        challenger_side = truth.draw(live_champion[rng.integers(0, k, size=(r, challenger_size))], rng)
        # The predicted side from a resampled holdout each: rows sorted by champion score, and a row-wise
        # searchsorted in one call (each row offset by its index times the scores' span).
        rows = rng.integers(0, n, size=(r, n))
        order = np.argsort(holdout_champion[rows], axis=1, kind="stable")
        sorted_rows = np.take_along_axis(rows, order, axis=1)
        offset = np.arange(r)[:, None] * span
        champions = live_champion[rng.integers(0, k, size=(r, k))]
        given = np.tile(champions, (1, predicted // k))
        flat, needles = (holdout_champion[sorted_rows] - low + offset).ravel(), (given - low + offset).ravel()
        first_row = np.arange(r)[:, None] * n
        lows = np.searchsorted(flat, needles, side="left").reshape(r, predicted) - first_row
        highs = np.searchsorted(flat, needles, side="right").reshape(r, predicted) - first_row
        position = _neighbour(lows, highs, truth.neighbours, n, rng)
        predicted_side = holdout_challenger[np.take_along_axis(sorted_rows, position, axis=1)]
        distances.append(_ks_rows(challenger_side, predicted_side))
    return np.concatenate(distances)


def prediction_divergence(
    reference: dict[str, Any] | None,
    live_champion: np.ndarray | list[float],
    live_challenger: np.ndarray | list[float],
    *,
    alpha: float,
    min_samples: int,
    capture_enabled: bool = True,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """The divergence check on one canary step. `reference` is `holdout_reference(...)` from the gate (None: the
    champion was not scored on the holdout); `live_*` are each variant's captured outputs in the step's window.

    Returns `status` (`judged` | `not_judged` | `skipped`), `diverged` (True/False when judged, else None), `reason`,
    the live and holdout KS distances, the p-value, both sample sizes, the test's name and its level."""
    champion = np.asarray(live_champion, dtype=float)
    challenger = np.asarray(live_challenger, dtype=float)
    champion, challenger = champion[np.isfinite(champion)], challenger[np.isfinite(challenger)]
    result: dict[str, Any] = {
        "status": "skipped",
        "diverged": None,
        "test": TEST_NAME,
        "alpha": alpha,
        "min_samples": min_samples,
        "champion_samples": int(champion.size),
        "challenger_samples": int(challenger.size),
        "live_ks_distance": None,
        "holdout_ks_distance": reference.get("ks_distance") if reference else None,
        "p_value": None,
    }
    if not capture_enabled:
        return {**result, "reason": "not checked: Data Capture is off on the endpoint, no live outputs to compare"}
    if not reference or not reference.get("rows"):
        return {
            **result,
            "reason": "not checked: no holdout reference (the champion was not scored on the challenger's holdout)",
        }
    if min(champion.size, challenger.size) < min_samples:
        return {
            **result,
            "status": "not_judged",
            "reason": f"not judged: {challenger.size} challenger and {champion.size} champion outputs captured in the "
            f"window, fewer than the {min_samples} needed on each",
        }
    holdout_champion = np.asarray(reference["champion"], dtype=float)
    holdout_challenger = np.asarray(reference["challenger"], dtype=float)
    rng = np.random.default_rng(seed)
    predicted = _Conditional(holdout_champion, holdout_challenger).draw(
        np.resize(champion, _predicted_size(champion.size)), rng
    )
    observed = ks_distance(challenger, predicted)
    null = _null_distances(holdout_champion, holdout_challenger, champion, challenger.size, resamples, rng)
    p_value = float((1 + np.sum(null >= observed - 1e-12)) / (1 + resamples))
    diverged = p_value < alpha
    live = ks_distance(challenger, champion)
    expected = ks_distance(predicted, champion)
    reason = (
        f"the challenger's live outputs are beyond what its holdout disagreement with the champion predicts: KS "
        f"distance {observed:.3f} from the predicted distribution (Monte Carlo p = {p_value:.4f} < {alpha}); "
        f"challenger vs champion live {live:.3f}, expected about {expected:.3f}"
        if diverged
        else f"the challenger's live outputs are within what the holdout predicts: KS distance {observed:.3f} from the "
        f"predicted distribution (p = {p_value:.4f}); challenger vs champion live {live:.3f}, expected about "
        f"{expected:.3f}"
    )
    return {
        **result,
        "status": "judged",
        "diverged": diverged,
        "ks_to_predicted": round(observed, 6),
        "live_ks_distance": round(live, 6),
        "expected_ks_distance": round(expected, 6),
        "p_value": round(p_value, 6),
        "resamples": resamples,
        "reason": reason,
    }


def live_outputs(
    s3: Any,
    destination: str,
    endpoint_name: str,
    variants: tuple[str, ...],
    start: datetime,
    end: datetime,
    problem_type: str,
) -> dict[str, list[float]]:
    """Each variant's captured scores with an inferenceTime in [start, end), from the endpoint's Data Capture
    destination (`s3://bucket/prefix`, as DescribeEndpoint's DataCaptureConfig names it). Only files of the window's
    hours are listed; records without a time are left out (they cannot be placed in the window)."""
    where = S3Uri.parse(destination.rstrip("/") + "/")
    found, _ = window_scores(s3, where.bucket, where.key, endpoint_name, variants, start, end, problem_type)
    return found
