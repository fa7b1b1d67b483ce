"""The search's candidate list: families in turn, defaults first, seeded draws after, the same list on every restart."""

import numpy as np
import pytest
from refit_training.search import BLOCK_PARAMETER, DEFAULTS, FAMILY_ORDER, Candidate, candidates, estimator

from scripts.sample_data import churn_batch

ALL = list(FAMILY_ORDER)


def test_a_budget_of_one_trial_per_family_tries_every_family_at_its_defaults():
    chosen = candidates(ALL, 3, seed=42)
    assert [c.family for c in chosen] == ["hgb", "linear", "forest"]
    assert [dict(c.params) for c in chosen] == [DEFAULTS[f] for f in ("hgb", "linear", "forest")]


def test_later_trials_take_turns_and_are_all_different():
    chosen = candidates(ALL, 30, seed=42)
    assert len(chosen) == 30 and len({c.key for c in chosen}) == 30
    assert [c.family for c in chosen[:9]] == ["hgb", "linear", "forest"] * 3
    learning_rates = [dict(c.params)["learning_rate"] for c in chosen if c.family == "hgb"]
    assert min(learning_rates) >= 0.02 and max(learning_rates) <= 0.3 and len(set(learning_rates)) == 10


def test_the_list_depends_on_the_seed_only_and_a_family_not_on_the_others():
    assert candidates(ALL, 12, seed=7) == candidates(ALL, 12, seed=7)  # a resumed job rebuilds the same keys
    assert candidates(ALL, 12, seed=7) != candidates(ALL, 12, seed=8)
    forest_alone = candidates(["forest"], 4, seed=7)
    assert [c for c in candidates(ALL, 12, seed=7) if c.family == "forest"] == forest_alone
    assert candidates(["forest", "hgb"], 4, seed=7) == candidates(["hgb", "forest"], 4, seed=7)


def test_a_budget_larger_than_a_small_space_stops_at_its_distinct_settings():
    assert len(candidates(["linear"], 50, seed=1)) == 50  # continuous C: no repeats
    forest = candidates(["forest"], 50, seed=1)
    assert len(forest) == len(set(forest)) == 50  # 72 combinations in the forest space


@pytest.mark.parametrize("family", ALL)
def test_every_drawn_setting_builds_a_model_that_fits(family):
    frame = churn_batch(300, 5)
    features = frame[["tenure_months", "monthly_charges", "support_calls"]].fillna(0).to_numpy()
    labels = frame["churned"].to_numpy()
    few_stages = {BLOCK_PARAMETER[family]: 3} if family in BLOCK_PARAMETER else {}  # the settings are the point
    for candidate in candidates([family], 6, seed=3):
        assert isinstance(candidate, Candidate)
        model = estimator(candidate, classification=True, seed=3).set_params(**few_stages).fit(features, labels)
        probabilities = model.predict_proba(features)[:, 1]
        assert np.all((probabilities >= 0) & (probabilities <= 1))
        regression = estimator(candidate, classification=False, seed=3).set_params(**few_stages)
        assert np.isfinite(regression.fit(features, labels.astype(float)).predict(features)).all()
