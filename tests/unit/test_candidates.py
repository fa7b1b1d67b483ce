"""Parallel candidates: which job goes to the gate, and what the run records it paid."""

import pytest
from pydantic import ValidationError
from refit_core.config import SearchSettings
from refit_core.names import training_job_name
from refit_core.training import choose_candidate, job_settings, training_job_request


def summary(family, next_step="done", cost=0.01, billable=100, training=300, **extra):
    return {
        "family": family,
        "job_name": f"churn-r1-{family}-s1",
        "status": {"done": "Completed", "failed": "Failed"}.get(next_step),
        "next": next_step,
        "spot": True,
        "estimated_cost_usd": cost,
        "billable_seconds": billable,
        "training_seconds": training,
        "output_path": "s3://art/training/churn/",
        **extra,
    }


def test_best_cross_validated_score_wins_and_costs_add_up():
    candidates = [summary("hgb", cost=0.02), summary("linear", cost=0.01), summary("forest", "failed", cost=0.005)]
    scores = {"churn-r1-hgb-s1": 0.81, "churn-r1-linear-s1": 0.84}
    chosen = choose_candidate(candidates, scores, higher_is_better=True)
    assert chosen["chosen"] == "linear" and chosen["job_name"] == "churn-r1-linear-s1" and chosen["next"] == "done"
    assert chosen["estimated_cost_usd"] == pytest.approx(0.035) and chosen["billable_seconds"] == 300
    assert chosen["savings_percent"] == pytest.approx(66.7)
    assert [c["cv_score"] for c in chosen["candidates"]] == [0.81, 0.84, None]
    assert choose_candidate(candidates, scores, higher_is_better=False)["chosen"] == "hgb"  # e.g. rmse


def test_no_finished_candidate_fails_the_run_naming_each_family():
    candidates = [
        summary("hgb", "failed", failure_reason="AlgorithmError: out of memory"),
        summary("linear", "refused", reason="training budget"),
    ]
    result = choose_candidate(candidates, {}, higher_is_better=True)
    assert result["next"] == "failed"
    assert (
        "hgb: AlgorithmError: out of memory" in result["failure_reason"]
        and "linear: training budget" in (result["failure_reason"])
    )
    refused = choose_candidate(
        [summary("hgb", "refused", reason="cap"), summary("linear", "refused", reason="cap")], {}, True
    )
    assert refused["next"] == "refused" and refused["reason"] == "cap"


def test_each_candidate_job_has_its_own_name_checkpoints_and_family():
    from pathlib import Path

    from refit_core.config import load_config

    model = load_config(Path(__file__).resolve().parents[2] / "refit.toml").model("churn")
    request = training_job_request(
        model=model,
        name_prefix="refit-churn",
        run_id="r1",
        attempt=2,
        spot=False,
        image_uri="img",
        role_arn="role",
        batch_uri="s3://d/incoming/churn/b.csv",
        earlier_data_uri=None,
        champion_model_uri=None,
        artifact_bucket="art",
        kms_key_arn="arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000",
        family="forest",
    )
    name = training_job_name("refit-churn", "r1", 2, False, "forest")
    assert request["TrainingJobName"] == name == "refit-churn--r1--forest-od2"
    assert request["CheckpointConfig"]["S3Uri"] == "s3://art/checkpoints/churn/r1/forest/"
    assert job_settings(model, "r1", "forest")["families"] == ["forest"]
    config_channel = next(c for c in request["InputDataConfig"] if c["ChannelName"] == "config")
    assert config_channel["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://art/reports/churn/r1/inputs/{name}/"


def test_parallel_jobs_need_two_families():
    with pytest.raises(ValidationError, match="parallel_jobs trains one job per family"):
        SearchSettings(families=["hgb"], parallel_jobs=True)
    assert SearchSettings(families=["hgb", "linear"], parallel_jobs=True).parallel_jobs
