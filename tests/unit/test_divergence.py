"""The prediction-divergence statistic (refit_core.divergence) on simulated model pairs: two models that disagree on
the holdout as much as live raise no more false alarms than the level allows (where a plain two-sample KS test on the
live outputs alarms on most windows), also when the live inputs have drifted along what both models see; a challenger
whose live outputs shift, or are inverted, is caught; too few outputs are not judged and capture off is skipped."""

from __future__ import annotations

from datetime import UTC, datetime

import boto3
import numpy as np
import pytest
from moto import mock_aws
from refit_core.divergence import holdout_reference, ks_distance, live_outputs, prediction_divergence
from scipy.stats import ks_2samp

from tests.unit.test_capture import ROW, ROW2, record

ALPHA = 0.05
RESAMPLES = 99  # the product uses 999; 99 keeps the simulations fast and the test's conclusions the same


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _scores(x: np.ndarray, tied: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(champion, challenger): the challenger also reads a feature the champion ignores, so they disagree. `tied`:
    the champion answers 9 distinct values, as a small tree ensemble does."""
    champion = _sigmoid(1.5 * x[:, 0])
    return np.round(champion * 8) / 8 if tied else champion, _sigmoid(1.0 * x[:, 0] + 0.8 * x[:, 1] + 0.6)


def _window(
    seed: int,
    *,
    drift: float = 0.0,
    tied: bool = False,
    fault=None,
    holdout: int = 600,
    share: float = 0.2,
    live: int = 900,
):
    """A holdout reference and one canary window: the champion serves 1 - share of `live` requests, the challenger
    the rest; `drift` moves the feature both models read; `fault` alters the challenger's live outputs only."""
    rng = np.random.default_rng(seed)
    reference = holdout_reference(*_scores(rng.normal(size=(holdout, 2)), tied), seed=seed)
    requests = rng.normal(size=(live, 2)) + np.array([drift, 0.0])
    to_challenger = rng.random(live) < share
    champion = _scores(requests[~to_challenger], tied)[0]
    challenger = _scores(requests[to_challenger], tied)[1]
    if fault is not None:
        challenger = fault(challenger)
    return reference, champion, challenger


def _judge(reference, champion, challenger, seed: int, min_samples: int = 100) -> dict:
    return prediction_divergence(
        reference, champion, challenger, alpha=ALPHA, min_samples=min_samples, resamples=RESAMPLES, seed=seed
    )


def test_ks_distance_is_scipys():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=137), rng.normal(0.3, size=211)
    assert ks_distance(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)
    ties_a, ties_b = rng.integers(0, 4, size=50).astype(float), rng.integers(0, 4, size=70).astype(float)
    assert ks_distance(ties_a, ties_b) == pytest.approx(ks_2samp(ties_a, ties_b).statistic, abs=1e-12)


def test_the_reference_records_the_holdout_disagreement_and_its_spread():
    reference, _, _ = _window(3)
    champion, challenger = np.array(reference["champion"]), np.array(reference["challenger"])
    assert reference["rows"] == champion.size == challenger.size == 600
    assert reference["ks_distance"] == pytest.approx(ks_2samp(champion, challenger).statistic, abs=1e-6)
    assert reference["ks_distance"] > 0.05 and 0 < reference["ks_distance_sd"] < reference["ks_distance"]
    assert reference["mean_abs_difference"] == pytest.approx(np.mean(np.abs(champion - challenger)), abs=1e-6)


@pytest.mark.parametrize(
    ("drift", "tied"),
    [(0.0, False), (0.7, False), (0.0, True)],
    # With ties, neighbours taken at the edge of a block of equal champion scores alarmed on 6 of these 30 windows.
    ids=["same-inputs", "drifted-inputs", "champion-answers-few-values"],
)
def test_models_that_disagree_live_as_on_the_holdout_raise_no_more_false_alarms_than_the_level(drift, tied):
    windows = [_window(seed, drift=drift, tied=tied) for seed in range(30)]
    alarms = sum(_judge(*window, seed=seed)["diverged"] for seed, window in enumerate(windows))
    naive = sum(ks_2samp(champion, challenger).pvalue < ALPHA for _, champion, challenger in windows)
    assert alarms <= 4  # 30 windows at 5%: 1.5 expected; P(more than 4) < 2% under a calibrated test
    # "The live distributions differ" alarms on most windows: the disagreement is real, and no evidence of harm.
    assert naive >= (25 if drift == 0 else 12)


@pytest.mark.parametrize(
    "fault",
    [lambda s: np.clip(s + 0.1, 0, 1), lambda s: 1 - s],
    ids=["outputs-shifted-by-0.1", "outputs-inverted"],
)
def test_a_challenger_whose_live_outputs_change_is_caught(fault):
    caught = [_judge(*_window(seed, fault=fault, live=1200), seed=seed) for seed in range(10)]
    assert sum(result["diverged"] for result in caught) >= 8
    result = next(r for r in caught if r["diverged"])
    assert result["status"] == "judged" and result["p_value"] < ALPHA
    assert result["ks_to_predicted"] > 0.1
    assert "beyond what its holdout disagreement with the champion predicts" in result["reason"]


def test_too_few_outputs_are_not_judged_and_capture_off_is_skipped():
    reference, champion, challenger = _window(4)
    few = _judge(reference, champion, challenger[:99], seed=0)
    assert (few["status"], few["diverged"], few["challenger_samples"]) == ("not_judged", None, 99)
    assert "fewer than the 100 needed" in few["reason"]
    off = prediction_divergence(reference, champion, challenger, alpha=ALPHA, min_samples=100, capture_enabled=False)
    assert (off["status"], off["diverged"]) == ("skipped", None) and "Data Capture is off" in off["reason"]
    none = prediction_divergence(None, champion, challenger, alpha=ALPHA, min_samples=100)
    assert none["status"] == "skipped" and "no holdout reference" in none["reason"]


@mock_aws
def test_live_outputs_are_each_variants_scores_inside_the_window_of_this_endpoint_only():
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="data")
    hour = "capture/churn/refit-churn/{variant}/2026/11/29/01/00-00-000-{name}.jsonl"

    def put(key: str, *lines: bytes) -> None:
        s3.put_object(Bucket="data", Key=key, Body=b"\n".join(lines))

    two_rows = {"predictions": [1, 0], "probabilities": [0.9, 0.2]}
    put(
        hour.format(variant="challenger", name="a"),
        record(reply={"predictions": [1], "probabilities": [0.7]}, time="2026-11-29T01:10:00Z"),
        record(body=f"{ROW}\n{ROW2}", reply=two_rows, event_id="ev-2", time="2026-11-29T01:10:30Z"),
        record(reply={"predictions": [1], "probabilities": [0.6]}, time="2026-11-29T01:04:59Z"),  # before the window
        b'{"captureData": {"endpointOutput": {"encoding": "CSV"}}, "eventMetadata": {"eventId": "x"}}',  # skipped
    )
    put(hour.format(variant="champion", name="b"), record(reply={"predictions": [0], "probabilities": [0.3]}))
    put(hour.format(variant="shadow", name="c"), record())  # not a variant asked for
    put("capture/churn/refit-churn-old/champion/2026/11/29/01/00-00-000-d.jsonl", record())  # another endpoint
    found = live_outputs(
        s3,
        "s3://data/capture/churn",
        "refit-churn",
        ("challenger", "champion"),
        datetime(2026, 11, 29, 1, 5, tzinfo=UTC),
        datetime(2026, 11, 29, 1, 30, tzinfo=UTC),
        "binary_classification",
    )
    assert found == {"challenger": [0.7, 0.9, 0.2], "champion": []}  # the champion's record is at 01:02:03
