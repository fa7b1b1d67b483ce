import numpy as np
import pytest
from refit_core.config import GateSettings
from refit_core.gate import GateInputError, decide, delong_test
from scipy import stats


def slow_delong(y, a, b):
    """Structural components straight from DeLong et al. (1988): O(m n)."""
    pos, neg = y == 1, y == 0

    def psi(x, z):
        return (x > z) + 0.5 * (x == z)

    components = []
    for score in (a, b):
        p, n = score[pos], score[neg]
        kernel = psi(p[:, None], n[None, :]).astype(float)
        components.append((kernel.mean(), kernel.mean(axis=1), kernel.mean(axis=0)))
    (auc_a, v10_a, v01_a), (auc_b, v10_b, v01_b) = components
    m, n = pos.sum(), neg.sum()
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    variance = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return auc_a - auc_b, variance


def simulate(rng, n, separation_a, separation_b, correlation=0.8):
    y = (rng.random(n) < 0.4).astype(int)
    shared = rng.normal(size=n)
    noise_a = correlation * shared + np.sqrt(1 - correlation**2) * rng.normal(size=n)
    noise_b = correlation * shared + np.sqrt(1 - correlation**2) * rng.normal(size=n)
    a = 1 / (1 + np.exp(-(separation_a * y + noise_a)))
    b = 1 / (1 + np.exp(-(separation_b * y + noise_b)))
    return y, a, b


def binormal(rng, n, auc_a, auc_b, error_correlation):
    """Two models with known true AUCs (binormal scores) whose errors are correlated as stated."""
    y = (rng.random(n) < 0.5).astype(int)
    shift_a, shift_b = np.sqrt(2) * stats.norm.ppf(auc_a), np.sqrt(2) * stats.norm.ppf(auc_b)
    shared = rng.normal(size=n)
    noise_a = np.sqrt(error_correlation) * shared + np.sqrt(1 - error_correlation) * rng.normal(size=n)
    noise_b = np.sqrt(error_correlation) * shared + np.sqrt(1 - error_correlation) * rng.normal(size=n)
    return y, stats.norm.cdf(shift_a * y + noise_a - shift_a / 2), stats.norm.cdf(shift_b * y + noise_b - shift_b / 2)


def promotion_rate(settings, runs, seed, auc_a, auc_b, correlation, n=2000):
    rng = np.random.default_rng(seed)
    return np.mean(
        [
            decide(
                "binary_classification", "roc_auc", "maximize", settings, *binormal(rng, n, auc_a, auc_b, correlation)
            )["promote"]
            for _ in range(runs)
        ]
    )


def test_delong_matches_structural_components():
    rng = np.random.default_rng(1)
    y, a, b = simulate(rng, 400, 1.2, 1.0)
    a = np.round(a, 2)  # ties exercise the midrank handling
    result = delong_test(y, a, b)
    difference, variance = slow_delong(y, a, b)
    assert abs(result["difference"] - difference) < 1e-9
    z = difference / np.sqrt(variance)
    assert abs(result["z"] - z) < 1e-9


def test_equal_models_are_promoted_at_most_at_the_test_level():
    """Long-run rate is alpha (5.0% over 3,000 runs when measured); 1,000 runs have a standard error of 0.7%."""
    assert promotion_rate(GateSettings(alpha=0.05), 1000, 11, 0.75, 0.75, 0.8) <= 0.05 + 0.02


def test_a_real_gain_of_0_02_auc_is_promoted():
    """Power depends on how correlated the models' errors are: 86% at 0.8, 96% at 0.85, 99% at 0.9 (measured)."""
    assert promotion_rate(GateSettings(alpha=0.05), 500, 12, 0.77, 0.75, 0.85) >= 0.90


def test_a_trivial_gain_under_the_margin_is_not_promoted():
    settings = GateSettings(alpha=0.05, min_improvement=0.005)
    assert promotion_rate(settings, 500, 13, 0.752, 0.75, 0.8) <= 0.05


def test_a_degrading_guard_blocks_a_significant_improvement():
    rng = np.random.default_rng(14)
    y, a, b = binormal(rng, 4000, 0.80, 0.75, 0.8)
    segment = np.where(rng.random(y.size) < 0.3, "south", "north")
    a = np.where(segment == "south", 1 - a, a)  # the challenger is badly wrong in one region only
    y_ok, a_ok, b_ok = y[segment == "north"], a[segment == "north"], b[segment == "north"]
    plain = decide("binary_classification", "roc_auc", "maximize", GateSettings(), y_ok, a_ok, b_ok)
    assert plain["promote"]
    guarded = GateSettings(guards=[{"metric": "roc_auc", "max_degradation": 0.02, "segment_column": "region"}])
    result = decide("binary_classification", "roc_auc", "maximize", guarded, y, a, b, segments={"region": segment})
    assert not result["promote"] and "guard roc_auc in region=south" in result["reason"]
    overall = GateSettings(guards=[{"metric": "recall", "max_degradation": 0.0}])
    y2, a2, b2 = binormal(rng, 4000, 0.80, 0.75, 0.8)
    blocked = decide("binary_classification", "roc_auc", "maximize", overall, y2, a2 * 0.6, b2)
    assert blocked["promote"] is False and blocked["guards"][0]["metric"] == "recall"


def test_margin_and_floor_block_promotion_with_reason():
    rng = np.random.default_rng(3)
    y, a, b = simulate(rng, 2000, 1.6, 1.0)
    big_margin = decide("binary_classification", "roc_auc", "maximize", GateSettings(min_improvement=0.5), y, a, b)
    assert not big_margin["promote"] and "not significantly better by the margin 0.5000" in big_margin["reason"]
    floor = decide("binary_classification", "roc_auc", "maximize", GateSettings(floors={"accuracy": 0.99}), y, a, b)
    assert not floor["promote"] and "floor on accuracy" in floor["reason"]
    first = decide("binary_classification", "roc_auc", "maximize", GateSettings(), y, a, None)
    assert first["promote"] and first["test"] == "floors_only"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda y, a, b: (y, a[:-1], b), "challenger predictions have 1999 rows"),
        (lambda y, a, b: (y, np.where(np.arange(a.size) == 3, np.nan, a), b), "NaN or infinite"),
        (lambda y, a, b: (np.zeros_like(y), a, b), "single class"),
        (lambda y, a, b: (y, a, b * 2), "outside \\[0, 1\\]"),
    ],
)
def test_gate_refuses_bad_evaluation_data(mutate, message):
    y, a, b = simulate(np.random.default_rng(4), 2000, 1.0, 1.0)
    with pytest.raises(GateInputError, match=message):
        decide("binary_classification", "roc_auc", "maximize", GateSettings(), *mutate(y, a, b))


def test_regression_uses_paired_bootstrap():
    rng = np.random.default_rng(5)
    y = rng.normal(size=500)
    result = decide(
        "regression",
        "rmse",
        "minimize",
        GateSettings(bootstrap_samples=300),
        y,
        y + rng.normal(0, 0.5, 500),
        y + rng.normal(0, 1.0, 500),
    )
    assert result["test"] == "paired_bootstrap" and result["promote"]


@pytest.mark.parametrize(("metric", "direction"), [("rmse", "minimize"), ("mae", "minimize"), ("r2", "maximize")])
def test_bootstrap_interval_brackets_the_difference_whichever_way_the_metric_improves(metric, direction):
    """The interval is of the reported difference, challenger minus champion: for lower-is-better metrics it came out
    with ci_low above ci_high (the resampled improvements' quantiles were flipped back in the wrong order)."""
    rng = np.random.default_rng(5)
    y = rng.normal(size=500)
    result = decide(
        "regression",
        metric,
        direction,
        GateSettings(bootstrap_samples=300),
        y,
        y + rng.normal(0, 0.5, 500),
        y + rng.normal(0, 1.0, 500),
    )
    assert result["ci_low"] < result["difference"] < result["ci_high"]
    better_is_lower = direction == "minimize"
    assert (result["ci_high"] < 0) if better_is_lower else (result["ci_low"] > 0)  # the challenger is clearly better


def test_refit_gate_cli_on_holdout_predictions(tmp_path):
    import io
    import json

    import pandas as pd

    from scripts.cli import main

    y, a, b = binormal(np.random.default_rng(21), 2000, 0.80, 0.74, 0.8)
    pd.DataFrame({"row_id": range(y.size), "label": y, "challenger": a, "champion": b}).to_csv(
        tmp_path / "holdout_predictions.csv", index=False
    )
    metrics = {"challenger": {"roc_auc": 0.8}, "champion": {"roc_auc": 0.74}}
    (tmp_path / "evaluation.json").write_text(json.dumps({"metrics": metrics}))
    out, err = io.StringIO(), io.StringIO()
    assert main(["gate", str(tmp_path), "--model", "churn"], out=out, err=err) == 0
    decision = json.loads(out.getvalue())
    assert decision["promote"] is True and decision["test"] == "delong" and decision["reason"]
    pd.DataFrame({"label": y}).to_csv(tmp_path / "holdout_predictions.csv", index=False)
    assert main(["gate", str(tmp_path), "--model", "churn"], out=out, err=err) == 1
    assert "lacks the columns ['challenger']" in err.getvalue()
