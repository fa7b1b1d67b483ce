"""The pure decisions of a run that only the e2e suite exercised before: the audit record's outcome, the lineage diff
and the champion lookup (the canary step verdict is in test_canary_steps.py)."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws
from refit_core.audit import summarize_run
from refit_core.canary import CHALLENGER, CHAMPION, canary_variants, variant
from refit_core.champion import PACKAGE_ENV, endpoint_view, find_champion
from refit_core.lineage import diff


# --- endpoint layout -----------------------------------------------------------------------------------------------
def test_canary_variants_split_the_traffic_under_the_fixed_names():
    variants = canary_variants("m-old", "m-new", 0.1, "ml.m5.large")
    assert [(v["VariantName"], v["ModelName"], v["InitialVariantWeight"]) for v in variants] == [
        (CHAMPION, "m-old", 0.9),
        (CHALLENGER, "m-new", 0.1),
    ]
    assert sum(v["InitialVariantWeight"] for v in variants) == pytest.approx(1.0)


# --- audit outcome --------------------------------------------------------------------------------------------------
RUN = {"run_id": "r1", "trigger": "s3", "reason": "new data", "data_uri": "s3://d/incoming/churn/a.csv"}
TRAINED = {"next": "done", "job_name": "job-1"}
PROMOTE = {"promote": True, "reason": "better"}
REGISTERED = {
    "model_package_arn": "arn:aws:sagemaker:us-east-1:1:model-package/g/2",
    "version": 2,
    "approval": "Approved",
}
CANARY_STARTED = {"mode": "canary", "expected_config": "c2", "challenger_model": "m2", "previous_config": "c1"}
ROLLED_BACK = {
    "healthy": False,
    "reason": "5XX",
    "next": "rollback",
    "steps": [{"step": 0, "weight": 0.1, "healthy": False, "reason": "5XX"}],
}


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({}, ("FAILED", "incomplete")),
        ({"run": RUN, "error": {"Error": "States.TaskFailed", "Cause": "boom"}}, ("FAILED", "failed")),
        ({"run": {**RUN, "proceed": False, "reason": "another run holds the lock"}}, ("SKIPPED", "skipped")),
        ({"run": RUN, "check": {"decision": {"action": "fail", "reason": "bad"}}}, ("FAILED", "bad_data")),
        (
            {"run": RUN, "check": {"decision": {"action": "stop", "outcome": "no_drift", "reason": "none"}}},
            ("SUCCEEDED", "no_drift"),
        ),
        ({"run": RUN, "check": {"decision": {"action": "stop"}}}, ("SUCCEEDED", "no_drift")),
        ({"run": RUN, "training": {"next": "refused", "reason": "budget"}}, ("SKIPPED", "budget_exceeded")),
        (
            {"run": RUN, "training": {"next": "failed", "job_name": "j", "failure_reason": "OOM"}},
            ("FAILED", "training_failed"),
        ),
        (
            {"run": RUN, "training": TRAINED, "gate": {"promote": False, "reason": "worse"}},
            ("SUCCEEDED", "not_promoted"),
        ),
        (
            {"run": RUN, "training": TRAINED, "gate": PROMOTE, "approval": {"approved": False, "by": "timeout"}},
            ("SUCCEEDED", "approval_timed_out"),
        ),
        (
            {"run": RUN, "training": TRAINED, "gate": PROMOTE, "approval": {"approved": False, "by": "ana"}},
            ("SUCCEEDED", "not_approved"),
        ),
        (
            {
                "run": RUN,
                "training": TRAINED,
                "gate": PROMOTE,
                "deploy": {"mode": "create", "expected_config": "c", "challenger_model": "m"},
            },
            ("SUCCEEDED", "deployed_first"),
        ),
        (
            {"run": RUN, "gate": PROMOTE, "deploy": CANARY_STARTED, "canary": {"healthy": True, "reason": "ok"}},
            ("SUCCEEDED", "promoted"),
        ),
        (
            {"run": RUN, "gate": PROMOTE, "deploy": CANARY_STARTED, "canary": ROLLED_BACK},
            ("SUCCEEDED", "rolled_back"),
        ),
        ({"run": RUN, "gate": PROMOTE, "deploy": CANARY_STARTED}, ("FAILED", "incomplete")),
    ],
)
def test_the_audit_outcome_of_each_way_a_run_ends(state, expected):
    record = summarize_run(state, "churn", "exec-1", "2026-11-28T00:00:00+00:00", "2026-11-28T00:05:00+00:00", None)
    assert (record["status"], record["outcome"]) == expected
    assert record["message"]


def test_an_error_outranks_what_the_run_did_before_it():
    """A run that failed after its canary was judged is recorded as failed with the error, not as promoted."""
    state = {
        "run": RUN,
        "canary": {"healthy": True, "reason": "ok"},
        "error": {"Error": "Lambda.Unknown", "Cause": '{"errorMessage": "endpoint update failed"}'},
    }
    record = summarize_run(state, "churn", "exec-1", "t0", "t1", None)
    assert (record["outcome"], record["message"]) == ("failed", "Lambda.Unknown: endpoint update failed")


def test_a_malformed_section_is_reported_not_raised():
    record = summarize_run({"run": RUN, "gate": {"promote": "perhaps"}}, "churn", "exec-1", "t0", "t1", None)
    assert record["outcome"] == "incomplete" and any("state.gate.promote" in p for p in record["problems"])
    assert record["run_id"] == "r1" and record["sk"] == "run#t0#r1"


# --- lineage diff ---------------------------------------------------------------------------------------------------
def lineage(version, inputs, code="abc", hyperparameters=None, metrics=None):
    return {
        "version": version,
        "inputs": [{"uri": u, "version_id": v, "etag": e} for u, v, e in inputs],
        "code_version": code,
        "image_uri": "img:1",
        "image_digest": "sha256:1",
        "hyperparameters": hyperparameters or {},
        "metrics": {"challenger": metrics or {}},
    }


def test_lineage_diff_groups_data_code_settings_and_metrics():
    old = lineage(
        1,
        [("s3://d/a.csv", "v1", "e1"), ("s3://d/b.csv", "v1", "e1")],
        hyperparameters={"run_id": "r1", "search": {"max_trials": 3}, "seed": 1},
        metrics={"roc_auc": 0.8},
    )
    new = lineage(
        2,
        [("s3://d/b.csv", "v2", "e2"), ("s3://d/c.csv", "v1", "e1")],
        code="def",
        hyperparameters={"run_id": "r2", "search": {"max_trials": 5}, "seed": 1},
        metrics={"roc_auc": 0.85, "recall": 0.7},
    )
    result = diff(old, new)
    assert (result["from_version"], result["to_version"]) == (1, 2)
    assert result["data"] == {"added": ["s3://d/c.csv"], "removed": ["s3://d/a.csv"], "changed": ["s3://d/b.csv"]}
    assert result["code"] == {"code_version": {"from": "abc", "to": "def"}}
    assert result["settings"] == {"search.max_trials": {"from": 3, "to": 5}}  # run ids always differ: not a change
    assert result["metrics"] == {"recall": {"from": None, "to": 0.7}, "roc_auc": {"from": 0.8, "to": 0.85}}


def test_lineage_diff_of_identical_documents_is_empty_but_for_metrics():
    same = lineage(3, [("s3://d/a.csv", "v1", "e1")], metrics={"rmse": 1.5})
    result = diff(same, same)
    assert result["data"] == {"added": [], "removed": [], "changed": []}
    assert result["code"] == {} and result["settings"] == {}
    assert result["metrics"] == {"rmse": {"from": 1.5, "to": 1.5}}


def test_lineage_diff_tolerates_documents_without_metrics_or_inputs():
    result = diff({"version": 1, "metrics": None}, {"version": 2})
    assert result["data"] == {"added": [], "removed": [], "changed": []} and result["metrics"] == {}


# --- champion lookup ------------------------------------------------------------------------------------------------
@pytest.fixture
def sagemaker():
    with mock_aws():
        yield boto3.client("sagemaker", region_name="us-east-1")


def make_model(sagemaker, name, package_arn=None):
    environment = {PACKAGE_ENV: package_arn} if package_arn else {}
    sagemaker.create_model(
        ModelName=name,
        ExecutionRoleArn="arn:aws:iam::123456789012:role/sm",
        PrimaryContainer={
            "Image": "img:1",
            "ModelDataUrl": f"s3://art/models/{name}.tar.gz",
            "Environment": environment,
        },
    )


def make_endpoint(sagemaker, config, variants):
    sagemaker.create_endpoint_config(EndpointConfigName=config, ProductionVariants=variants)
    sagemaker.create_endpoint(EndpointName="ep", EndpointConfigName=config)


def test_no_endpoint_means_no_champion(sagemaker):
    assert find_champion(sagemaker, "ep") is None and endpoint_view(sagemaker, "ep") is None


def test_the_champion_is_the_champion_variant_with_its_package_and_baseline(sagemaker):
    sagemaker.create_model_package_group(ModelPackageGroupName="g")
    package = sagemaker.create_model_package(
        ModelPackageGroupName="g",
        ModelApprovalStatus="Approved",
        CustomerMetadataProperties={"baseline_uri": "s3://art/reports/churn/baseline.json", "model_sha256": "ab" * 32},
        InferenceSpecification={
            "Containers": [{"Image": "img:1", "ModelDataUrl": "s3://art/models/m-old.tar.gz"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
    )["ModelPackageArn"]
    make_model(sagemaker, "m-old", package)
    make_model(sagemaker, "m-new")
    make_endpoint(sagemaker, "c1", canary_variants("m-old", "m-new", 0.2, "ml.m5.large"))
    champion = find_champion(sagemaker, "ep")
    assert champion == {
        "endpoint_config": "c1",
        "model_name": "m-old",
        "model_data_url": "s3://art/models/m-old.tar.gz",
        "model_package_arn": package,
        "version": 1,
        "baseline_uri": "s3://art/reports/churn/baseline.json",
        "model_sha256": "ab" * 32,
    }


def test_a_champion_without_a_package_has_no_version(sagemaker):
    make_model(sagemaker, "m-hand")
    make_endpoint(sagemaker, "c1", [variant("m-hand", CHAMPION, 1.0, "ml.m5.large")])
    champion = find_champion(sagemaker, "ep")
    assert champion["model_name"] == "m-hand" and champion["model_package_arn"] is None
    assert champion["version"] is None and champion["baseline_uri"] is None


def test_an_endpoint_without_a_champion_variant_is_an_error_naming_the_variants(sagemaker):
    make_model(sagemaker, "m-x")
    make_endpoint(sagemaker, "c1", [variant("m-x", "AllTraffic", 1.0, "ml.m5.large")])
    with pytest.raises(RuntimeError, match=r"endpoint ep has no 'champion' variant \(variants: \['AllTraffic'\]\)"):
        find_champion(sagemaker, "ep")
