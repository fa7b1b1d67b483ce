"""Bootstrap metrics from draw counts equal the metrics of the resampled rows themselves."""

import numpy as np
import pytest
from refit_core.metric_names import CLASSIFICATION_METRICS, REGRESSION_METRICS
from refit_core.metrics import Resampler, bootstrap_counts, compute_metric


def resampled_pairs(y_true, y_score, resamples=25, seed=3):
    rng_counts, rng_index = np.random.default_rng(seed), np.random.default_rng(seed)
    resampler = Resampler(y_true, y_score)
    for _ in range(resamples):
        counts = bootstrap_counts(rng_counts, y_true.size)
        index = rng_index.integers(0, y_true.size, y_true.size)  # the same draws, as rows
        assert np.array_equal(counts, np.bincount(index, minlength=y_true.size))
        yield resampler, counts, index


@pytest.mark.parametrize("metric", sorted(CLASSIFICATION_METRICS))
def test_classification_metrics_of_a_resample_match_the_resampled_rows(metric):
    rng = np.random.default_rng(1)
    y_true = (rng.random(3000) < 0.3).astype(float)
    y_score = np.round(np.clip(0.25 * y_true + 0.75 * rng.random(3000), 0, 1), 2)  # rounded: many ties
    y_score[:50] = 0.5  # on the threshold
    for resampler, counts, index in resampled_pairs(y_true, y_score):
        expected = compute_metric(metric, y_true[index], y_score[index])
        assert resampler.metric(metric, counts) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("metric", sorted(REGRESSION_METRICS))
def test_regression_metrics_of_a_resample_match_the_resampled_rows(metric):
    rng = np.random.default_rng(2)
    y_true = rng.normal(100, 20, 2000)
    y_score = y_true + rng.normal(0, 5, 2000)
    for resampler, counts, index in resampled_pairs(y_true, y_score):
        expected = compute_metric(metric, y_true[index], y_score[index])
        assert resampler.metric(metric, counts) == pytest.approx(expected, rel=1e-12)


def test_a_resample_of_one_class_is_recognised_and_has_no_auc():
    y_true = np.array([0.0, 0.0, 1.0])
    resampler = Resampler(y_true, np.array([0.1, 0.4, 0.9]))
    only_negatives = np.array([2, 1, 0])
    assert not resampler.varies(only_negatives) and resampler.varies(np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="one class"):
        resampler.metric("roc_auc", only_negatives)
    assert resampler.metric("precision", only_negatives) == 0.0  # nothing predicted positive: 0, as scikit-learn


def test_a_regression_resample_varies_unless_every_drawn_label_is_the_same():
    resampler = Resampler(np.array([3.5, 3.5, 7.25]), np.array([3.0, 4.0, 7.0]))
    assert resampler.varies(np.array([1, 0, 1])) and not resampler.varies(np.array([2, 1, 0]))
