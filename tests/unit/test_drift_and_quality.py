import numpy as np
import pandas as pd
import pytest
from refit_core.batch import BatchStats, KsCounts
from refit_core.config import DriftSettings, QualitySettings
from refit_core.drift import chi_square_test, detect_drift, ks_p_value
from refit_core.profile import ProfileError, build_profile, dumps_profile, loads_profile
from refit_core.quality import check_quality
from scipy import stats


def frame(rows, seed, shift=0.0, plan_shift=0.0):
    rng = np.random.default_rng(seed)
    columns = {f"x{i}": rng.normal(0, 1, rows) for i in range(10)}
    columns["x0"] = columns["x0"] + shift
    columns["plan"] = rng.choice(["a", "b", "c"], rows, p=[0.4 - plan_shift, 0.3, 0.3 + plan_shift])
    columns["y"] = (rng.random(rows) < 0.3).astype(int)
    return pd.DataFrame(columns)


def ks_test(reference_sorted, current):
    """KS statistic and p-value the streamed check computes for these values (one chunk)."""
    counts = KsCounts(reference_sorted)
    counts.add(current[np.isfinite(current)])
    statistic = counts.statistic()
    return statistic, ks_p_value(statistic, counts.m, counts.n)


def detect(batch, profile, settings, scorer=None, chunk_rows=None):
    """The drift report of a batch held in memory, optionally fed in chunks as the streamed check does."""
    step = chunk_rows or len(batch)
    chunks = (batch.iloc[start : start + step] for start in range(0, len(batch), step))
    return detect_drift(BatchStats.of(chunks, profile, scorer=scorer, duplicates=False), settings)


def test_ks_agrees_with_scipy():
    rng = np.random.default_rng(0)
    a, b = np.sort(rng.normal(size=800)), rng.normal(0.1, 1, size=700)
    statistic, p_value = ks_test(a, b)
    expected = stats.ks_2samp(a, b)
    assert abs(statistic - expected.statistic) < 1e-9
    assert abs(p_value - expected.pvalue) < 1e-9


def test_chi_square_total_variation():
    statistic, p_value, tv = chi_square_test({"a": 50, "b": 50}, {"a": 80, "b": 20})
    assert tv == pytest.approx(0.3)
    assert p_value < 1e-4
    assert statistic > 0


def test_profile_is_byte_stable_and_versioned():
    data = frame(500, 1)
    first = dumps_profile(build_profile(data, target="y", categorical=["plan"]))
    assert first == dumps_profile(build_profile(data.copy(), target="y", categorical=["plan"]))
    with pytest.raises(ProfileError, match="format 'refit.profile/1' is not supported"):
        loads_profile(first.replace("refit.profile/2", "refit.profile/1"), "old.json")


def test_drift_flags_a_single_shifted_feature_and_not_noise():
    profile = build_profile(frame(1000, 1), target="y", categorical=["plan", "y"])
    shifted = detect(frame(1000, 2, shift=0.5), profile, DriftSettings())
    assert shifted["drift_detected"] and shifted["drifted_features"] == ["x0"]
    assert set(shifted["features"]["x0"]) >= {"kind", "test", "statistic", "p_value", "effect_size", "drifted"}
    assert shifted["target"]["test"] == "chi_square"
    same = detect(frame(1000, 3), profile, DriftSettings())
    assert not same["drift_detected"]


def test_false_positive_rate_is_controlled_across_columns():
    """200 no-drift pairs at 1,000 rows, 12 tested columns: dataset-level false positives within alpha + 0.02."""
    alarms = 0
    for seed in range(200):
        profile = build_profile(frame(1000, 1000 + seed), target="y", categorical=["plan", "y"])
        alarms += detect(frame(1000, 5000 + seed), profile, DriftSettings(alpha=0.05))["drift_detected"]
    assert alarms / 200 <= 0.05 + 0.02


def test_a_total_variation_shift_of_0_1_in_a_categorical_column_is_detected():
    detected = 0
    for seed in range(100):
        profile = build_profile(frame(1000, 50_000 + seed), target="y", categorical=["plan", "y"])
        detected += detect(frame(1000, 60_000 + seed, plan_shift=0.1), profile, DriftSettings())["features"]["plan"][
            "drifted"
        ]
    assert detected / 100 >= 0.9


def test_categorical_shift_detected():
    profile = build_profile(frame(1000, 1), target="y", categorical=["plan", "y"])
    report = detect(frame(1000, 2, plan_shift=0.15), profile, DriftSettings())
    assert report["features"]["plan"]["drifted"]


def test_quality_findings_name_column_value_and_limit():
    base = frame(300, 1)
    profile = build_profile(base, target="y", categorical=["plan"])
    bad = base.drop(columns=["x1"]).assign(x2=["oops"] + list(base["x2"][1:]), x3=np.inf, plan="zzz")
    report = check_quality(BatchStats.of([bad], profile), QualitySettings(), min_rows=100, source="s3://b/k.csv")
    checks = {(f["check"], f["column"]): f for f in report["findings"]}
    assert not report["passed"]
    assert checks[("missing_column", "x1")]["severity"] == "block"
    assert "first: 'oops'" in checks[("dtype_change", "x2")]["message"]
    assert checks[("infinite_value", "x3")]["observed"] == 300
    assert checks[("unseen_category", "plan")]["severity"] == "warn"
    assert report["reason"].startswith("s3://b/k.csv:")


@pytest.mark.parametrize(("n1", "n2"), [(300, 450), (5000, 9000), (20000, 30000), (1000, 1000)])
def test_fast_ks_agrees_with_scipy_exact_and_asymptotic(n1, n2):
    rng = np.random.default_rng(n1 + n2)
    reference = np.sort(np.round(rng.normal(size=n1), 2))  # ties included
    current = np.round(rng.normal(0.05, 1.1, size=n2), 2)
    statistic, p_value = ks_test(reference, current)
    expected = stats.ks_2samp(reference, current)
    assert abs(statistic - expected.statistic) < 1e-12
    assert abs(p_value - expected.pvalue) < 1e-9


def test_alpha_spending_keeps_the_false_retrain_rate_over_the_horizon():
    """200 streams of 14 no-drift batches against one baseline: without spending about 40% of streams raise a false
    alarm at 5% a check (statistics-facts); with the budget spread over 14 checks at most alpha + 0.02."""
    horizon, alarms = 14, 0
    settings = DriftSettings(alpha=0.05, horizon_checks=horizon)

    def small(rows, seed):
        return frame(rows, seed)[["x0", "x1", "x2", "plan"]]

    for stream in range(200):
        profile = build_profile(small(300, 10_000 + stream), categorical=["plan"])
        alarms += any(
            detect(small(300, 20_000 + stream * horizon + check), profile, settings)["drift_detected"]
            for check in range(horizon)
        )
    assert alarms / 200 <= 0.05 + 0.02


def test_power_for_a_0_2_sd_shift_in_one_of_ten_features():
    detected = 0
    for run in range(60):
        profile = build_profile(frame(1000, 30_000 + run), target="y", categorical=["plan", "y"])
        detected += detect(frame(1000, 40_000 + run, shift=0.2), profile, DriftSettings())["drift_detected"]
    assert detected / 60 >= 0.8


def test_fast_ks_statistic_on_heavy_ties_and_disjoint_samples():
    rng = np.random.default_rng(7)
    for reference, current in [
        (rng.integers(0, 5, 700).astype(float), rng.integers(0, 6, 50_000).astype(float)),
        (np.arange(100.0), np.arange(1000.0, 5000.0)),
        (np.full(30, 2.0), rng.normal(2, 1, 2000)),
    ]:
        statistic, _ = ks_test(np.sort(reference), current)
        assert abs(statistic - stats.ks_2samp(reference, current).statistic) < 1e-12


def test_concept_drift_is_seen_by_the_performance_and_prediction_paths():
    """Features unchanged, labelling rule changed: feature tests stay quiet, the labelled performance test flags it."""
    from refit_core.metrics import compute_metric
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)

    def batch(rows, flip):
        x = rng.normal(size=(rows, 3))
        signal = x[:, 0] - 0.5 * x[:, 1] if not flip else -x[:, 0] - 0.5 * x[:, 1]
        frame = pd.DataFrame(x, columns=["a", "b", "c"])
        frame["y"] = (rng.random(rows) < 1 / (1 + np.exp(-2 * signal))).astype(int)
        return frame

    train, holdout = batch(2000, False), batch(1000, False)
    model = LogisticRegression().fit(train[["a", "b", "c"]], train["y"])
    holdout_scores = model.predict_proba(holdout[["a", "b", "c"]])[:, 1]
    profile = build_profile(holdout, target="y", categorical=["y"])
    profile["prediction"] = {**build_profile(pd.DataFrame({"p": holdout_scores}))["columns"]["p"]}
    profile["holdout"] = {
        "metric": "roc_auc",
        "value": compute_metric("roc_auc", holdout["y"], holdout_scores),
        "standard_error": 0.012,
        "rows": 1000,
    }
    same, shifted = batch(1000, False), batch(1000, True)

    def scorer(chunk):
        return model.predict_proba(chunk[["a", "b", "c"]])[:, 1]

    quiet = detect(same, profile, DriftSettings(), scorer)
    assert not quiet["drift_detected"] and quiet["performance"]["drifted"] is False
    report = detect(shifted, profile, DriftSettings(), scorer, chunk_rows=128)
    assert report["drifted_features"] == [] and report["performance"]["drifted"]
    assert report["drift_detected"] and report["performance"]["current"] < 0.5 < report["performance"]["baseline"]


def test_psi_on_reference_deciles_is_exact_from_the_streamed_counts_and_finite_with_empty_bins():

    def direct(reference, current, bins=10):
        reference = np.sort(reference)
        edges = np.unique(reference[np.ceil(reference.size * np.arange(1, bins) / bins).astype(int) - 1])
        edges = edges[edges < reference[-1]]
        expected = np.diff(np.concatenate(([0], np.searchsorted(reference, edges, "right"), [reference.size])))
        actual = np.diff(np.concatenate(([0], np.searchsorted(np.sort(current), edges, "right"), [current.size])))
        e = (expected + 0.5) / (reference.size + 0.5 * expected.size)
        a = (actual + 0.5) / (current.size + 0.5 * actual.size)
        return float(np.sum((a - e) * np.log(a / e)))

    rng = np.random.default_rng(21)
    for reference, current in [
        (rng.normal(size=2000), rng.normal(0.3, 1, size=3000)),
        (rng.integers(0, 3, 900).astype(float), rng.integers(0, 6, 700).astype(float)),  # ties; bins the batch misses
        (rng.normal(size=500), rng.normal(10, 1, size=500)),  # every batch value in the top bin
    ]:
        counts = KsCounts(np.sort(reference))
        for part in np.array_split(current, 7):
            counts.add(part)
        assert counts.psi() == pytest.approx(direct(reference, current), abs=1e-12)
        assert np.isfinite(counts.psi())


def test_a_huge_batch_does_not_flag_a_trivial_shift_but_flags_a_real_one():
    rng = np.random.default_rng(8)
    reference = pd.DataFrame({"a": rng.normal(size=300_000), "b": rng.normal(size=300_000)})
    profile = build_profile(reference)
    trivial = pd.DataFrame({"a": rng.normal(0.04, 1, 300_000), "b": rng.normal(size=300_000)})
    report = detect(trivial, profile, DriftSettings(), chunk_rows=100_000)
    assert report["features"]["a"]["p_value"] < 0.01 and report["features"]["a"]["effect_size"] < 0.01
    assert not report["drift_detected"]
    real = pd.DataFrame({"a": rng.normal(0.3, 1, 300_000), "b": rng.normal(size=300_000)})
    assert detect(real, profile, DriftSettings(), chunk_rows=100_000)["drifted_features"] == ["a"]
