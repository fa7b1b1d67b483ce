"""A SIGTERM in the middle of a fold: the stages fitted so far are saved, and the restart ends with the model an
uninterrupted search fits."""

import json

import numpy as np
import pandas as pd
import pytest
from refit_training.checkpoints import CheckpointStore
from refit_training.search import Interrupted, fingerprint, search

from scripts.sample_data import churn_batch

CONFIG = {
    "target": "churned",
    "problem_type": "binary_classification",
    "primary_metric": "roc_auc",
    "categorical_columns": ["plan", "region"],
    "seed": 42,
    "families": ["hgb", "forest"],
    "max_trials": 2,
    "cv_folds": 2,
}


class Quiet:
    raised = False


class TermAfter:
    """SIGTERM arriving after the flag has been looked at `checks` times (stand-in for TermFlag's signal handler)."""

    def __init__(self, checks: int) -> None:
        self.left = checks

    @property
    def raised(self) -> bool:
        self.left -= 1
        return self.left < 0


@pytest.fixture(scope="module")
def data():
    frame = churn_batch(1500, 3)
    return frame, [c for c in frame.columns if c != "churned"]


def run(directory, data, term):
    frame, features = data
    store = CheckpointStore(directory, fingerprint(CONFIG, frame))
    return search(CONFIG, frame, features, "churned", store, term)


def events(directory):
    return [json.loads(line) for line in (directory / "events.jsonl").read_text().splitlines()]


# The flag is read before each fold and after each block but the last. These folds are fast, so each is fitted in
# two blocks (25 stages, then the rest): 2 reads per fold, the 2nd read falls inside the first boosting fold and
# the 6th inside the first forest fold (after two boosting folds).
@pytest.mark.parametrize(
    ("checks", "family"), [(1, "hgb"), (5, "forest")], ids=["inside-a-boosting-fold", "inside-a-forest-fold"]
)
def test_a_fold_interrupted_between_blocks_resumes_from_its_stages(tmp_path, data, checks, family):
    plain_model, plain_summary = run(tmp_path / "plain", data, Quiet())
    with pytest.raises(Interrupted):
        run(tmp_path / "cut", data, TermAfter(checks))
    saved = [e for e in events(tmp_path / "cut") if e["event"] == "partial_saved"]
    assert len(saved) == 1 and saved[0]["done"] > 0 and saved[0]["key"].startswith(f"{family}:")
    model, summary = run(tmp_path / "cut", data, Quiet())
    resumed = [e for e in events(tmp_path / "cut") if e["event"] == "partial_resumed"]
    assert [(e["key"], e["done"]) for e in resumed] == [(saved[0]["key"], saved[0]["done"])]
    assert summary == plain_summary  # same fold scores, same choice
    frame, features = data
    assert np.array_equal(model.predict_proba(frame[features]), plain_model.predict_proba(frame[features]))
    assert not (tmp_path / "cut" / "partial.json").exists()  # cleared once the fold finished


def test_a_corrupt_partial_fold_is_refitted_from_scratch(tmp_path, data):
    with pytest.raises(Interrupted):
        run(tmp_path, data, TermAfter(1))
    (tmp_path / "partial.joblib").write_bytes(b"not a model")
    _, summary = run(tmp_path, data, Quiet())
    _, plain_summary = run(tmp_path / "plain", data, Quiet())
    assert summary == plain_summary
    assert [e["event"] for e in events(tmp_path) if e["event"].startswith("partial_")] == [
        "partial_saved",
        "partial_ignored",
    ]


def test_candidates_are_scored_on_the_new_batchs_rows_when_the_history_outnumbers_it(tmp_path):
    """After a concept change in a new market, the history's favourite (the linear model) cannot learn the market's
    rule; scored on the new batch's rows, the search picks a model that can."""
    history = churn_batch(9000, 1, shift=1.0)
    new = churn_batch(1000, 5, shift=1.0, new_market=0.6)
    frame = pd.concat([history, new], ignore_index=True)
    features = [c for c in frame.columns if c != "churned"]
    config = {**CONFIG, "families": ["linear", "hgb"], "max_trials": 2, "cv_folds": 3}
    chosen = {}
    for name, scored in (("all", None), ("new", np.r_[np.zeros(len(history), bool), np.ones(len(new), bool)])):
        store = CheckpointStore(tmp_path / name, fingerprint(config, frame))
        _, summary = search(config, frame, features, "churned", store, Quiet(), scored_rows=scored)
        chosen[name] = summary["family"]
        assert summary["scored_on"] == ("all rows" if scored is None else "the new batch's 1000 rows")
    assert chosen == {"all": "linear", "new": "hgb"}
