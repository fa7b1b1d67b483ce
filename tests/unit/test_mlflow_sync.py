"""`[mlflow]` settings (clear errors naming the field) and what a run sends to MLflow (refit_core.mlflow_sync), as
plain logic; the server side is tests/e2e/test_mlflow.py, the bad-input handler tests/integration/test_mlflow_errors.py."""

from __future__ import annotations

import json
import tomllib

import pytest
from refit_core.config import ConfigError, parse_config
from refit_core.mlflow_sync import (
    MlflowCredentialsError,
    credentials_from_secret,
    run_contents,
    sync_run,
    trained_challenger,
)

from tests.conftest import ROOT

ARN = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/team-server"


def config_with(**mlflow):
    data = tomllib.loads((ROOT / "refit.toml").read_text())
    return parse_config({**data, "mlflow": mlflow}, "refit.toml")


def test_http_uri_and_managed_server_arn_are_accepted_with_default_names():
    http = config_with(tracking_uri="https://mlflow.example.com/")
    assert http.mlflow.tracking_uri == "https://mlflow.example.com" and http.mlflow.server_arn is None
    assert http.mlflow.names("refit", "churn") == ("refit/churn", "refit-churn")
    managed = config_with(tracking_uri=ARN, experiment="team/{model}", registered_model="{model}")
    assert managed.mlflow.server_arn == ARN and managed.mlflow.names("refit", "churn") == ("team/churn", "churn")
    assert parse_config(tomllib.loads((ROOT / "refit.toml").read_text())).mlflow is None  # opt-in


@pytest.mark.parametrize(
    ("settings", "field", "says"),
    [
        ({"tracking_uri": "mlflow.example.com"}, "mlflow.tracking_uri", "not an http(s) URI"),
        ({"tracking_uri": "file:///tmp/mlruns"}, "mlflow.tracking_uri", "not an http(s) URI"),
        ({"tracking_uri": ARN.replace("123456789012", "1234")}, "mlflow.tracking_uri", "not a SageMaker MLflow"),
        ({"tracking_uri": ARN.replace("mlflow-tracking-server", "mlflow-app")}, "mlflow.tracking_uri", "not a"),
        ({"tracking_uri": "http://x", "registered_model": "team/{model}"}, "mlflow.registered_model", "'/' or ':'"),
        ({"tracking_uri": "http://x", "registered_model": "..{model}"}, "mlflow.registered_model", "start with '..'"),
        ({"tracking_uri": "http://x", "registered_model": "."}, "mlflow.registered_model", "are '.'"),
        ({"tracking_uri": "http://x", "experiment": "{run_id}"}, "mlflow.experiment", "only {project} and {model}"),
        ({"tracking_uri": "http://x", "experiment": " "}, "mlflow.experiment", "must name something"),
        ({"tracking_uri": "http://x", "timeout_seconds": 0}, "mlflow.timeout_seconds", "greater than or equal"),
        ({"tracking_uri": "http://x", "tracking_url": "http://y"}, "mlflow.tracking_url", "unknown field"),
        ({}, "mlflow.tracking_uri", "required field is missing"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(settings, field, says):
    with pytest.raises(ConfigError) as refused:
        config_with(**settings)
    line = next(line for line in str(refused.value).splitlines() if field in line)
    assert says in line


RECORD = {
    "pk": "churn",
    "sk": "run#t#r7",
    "run_id": "r7",
    "model": "churn",
    "status": "SUCCEEDED",
    "outcome": "rolled_back",
    "message": "canary rolled back: quiet",
    "trigger": "s3",
    "trigger_reason": "new batch",
    "drift": {
        "detected": True,
        "drifted_features": ["tenure", "plan"],
        "n_drifted_features": 2,
        "report_uri": "s3://r",
    },
    "training": {"job_name": "j", "spot": True, "training_seconds": 30.0, "estimated_cost_usd": 0.002},
    "gate": {"promote": True, "reason": "better", "p_value": 0.01, "challenger": 0.81, "champion": 0.78},
    "registry": {"model_package_arn": "arn:p/2", "version": 2, "approval": "Approved", "lineage_uri": "s3://l"},
}
LINEAGE = {
    "hyperparameters": {"primary_metric": "roc_auc", "window": {"description": "all"}, "seed": 42},
    "gate": {"ci_low": 0.01, "ci_high": 0.05},
    "evaluation_uri": "s3://e",
    "model_data_url": "s3://art/m.tar.gz",
}
EVALUATION = {
    "metrics": {"challenger": {"roc_auc": 0.81, "log_loss": float("nan")}, "champion": {"roc_auc": 0.78}},
    "intervals": {"challenger": {"roc_auc": [0.77, 0.85]}, "champion": None},
    "search": {
        "family": "hgb",
        "best": "hgb-0",
        "cv_scores": {"hgb-0": 0.8, "hgb:depth=3,rate=0.1": 0.79},
        "params": {"max_depth": 3},
    },
    "n_holdout": 1500,
}


def test_run_contents_carry_settings_metrics_with_intervals_evidence_drift_cost_and_links():
    contents = run_contents(RECORD, LINEAGE, EVALUATION, "refit-audit")
    assert contents.params["primary_metric"] == "roc_auc" and contents.params["window.description"] == "all"
    assert contents.params["chosen.max_depth"] == "3" and contents.params["search.family"] == "hgb"
    metrics = contents.metrics
    assert (metrics["holdout.challenger.roc_auc.ci_low"], metrics["holdout.challenger.roc_auc.ci_high"]) == (0.77, 0.85)
    assert "holdout.challenger.log_loss" not in metrics  # NaN: MLflow would store it, the gate never used it
    assert metrics["cv.hgb:depth_3_rate_0.1"] == 0.79  # MLflow refuses '=' and ',' in a key
    assert metrics["cv.best"] == 0.8 and metrics["gate.ci_low"] == 0.01 and metrics["gate.promote"] == 1.0
    assert metrics["drift.n_drifted_features"] == 2 and metrics["training.estimated_cost_usd"] == 0.002
    tags = contents.tags
    assert tags["refit.audit_record"] == "dynamodb://refit-audit/churn/run#t#r7"
    assert tags["refit.lineage_uri"] == "s3://l" and tags["refit.drift.drifted_features"] == "tenure, plan"
    assert tags["refit.trigger_reason"] == "new batch" and tags["refit.outcome"] == "rolled_back"


def test_a_run_without_a_challenger_or_redeploy_sends_nothing():
    class NoCalls:
        def __getattr__(self, name):
            raise AssertionError(f"MLflow was called: {name}")

    quiet = {**RECORD, "outcome": "no_drift", "training": None, "gate": None, "registry": None}
    assert not trained_challenger(quiet)
    assert sync_run(NoCalls(), quiet, None, None, "e", "m", "t") is None


class Aliases:
    """The registry's aliases, as MLflow keeps them (one version per alias), for follow_deployment."""

    def __init__(self, versions, aliases):
        self.versions, self.aliases = versions, dict(aliases)

    def set_registered_model_alias(self, name, alias, version):
        self.aliases[alias] = version

    def delete_registered_model_alias(self, name, alias):
        del self.aliases[alias]

    def get_model_version_by_alias(self, name, alias):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        if alias not in self.aliases:
            raise MlflowException("no alias", error_code=INVALID_PARAMETER_VALUE)  # what the server answers
        return type("Version", (), {"version": self.aliases[alias]})

    def search_model_versions(self, query):
        return [type("Version", (), {"version": v, "tags": {"refit.model_package_arn": a}}) for v, a in self.versions]


@pytest.mark.parametrize(
    ("outcome", "after"),
    [("promoted", {"champion": "2"}), ("deployed_first", {"champion": "2"}), ("rolled_back", {"champion": "1"})],
)
def test_the_runs_version_is_champion_only_when_it_serves(outcome, after):
    from refit_core.mlflow_sync import follow_deployment

    client = Aliases([("1", "arn:p/1"), ("2", "arn:p/2")], {"champion": "1", "challenger": "2"})
    follow_deployment(client, "m", {**RECORD, "outcome": outcome}, "2")
    assert client.aliases == after


def test_a_redeploy_moves_champion_or_removes_it_when_mlflow_never_saw_the_package():
    from refit_core.mlflow_sync import follow_deployment

    client = Aliases([("1", "arn:p/1"), ("2", "arn:p/2")], {"champion": "2"})
    redeploy = {**RECORD, "outcome": "redeployed", "registry": None, "redeploy": {"model_package_arn": "arn:p/1"}}
    assert follow_deployment(client, "m", redeploy, None) == {"champion": "1", "challenger": None}
    unknown = {**redeploy, "redeploy": {"model_package_arn": "arn:p/0"}}  # registered before [mlflow]
    assert follow_deployment(client, "m", unknown, None) == {"champion": None, "challenger": None}


@pytest.mark.parametrize(
    ("status", "ended"),
    [("SUCCEEDED", "FINISHED"), ("SKIPPED", "FINISHED"), ("FAILED", "FAILED"), ("TIMED_OUT", "FAILED")]
    + [("ABORTED", "KILLED"), (None, "FAILED")],
)
def test_the_mlflow_run_ends_as_the_refit_run_ended(status, ended):
    from refit_core.mlflow_sync import run_end_status

    assert run_end_status({"status": status}) == ended


def test_a_run_logged_before_its_outcome_carries_no_outcome_yet():
    running = {**RECORD, "status": "RUNNING", "outcome": None, "message": None}
    tags = run_contents(running, LINEAGE, EVALUATION, "refit-audit").tags
    assert "refit.outcome" not in tags and "mlflow.note.content" not in tags and tags["refit.status"] == "RUNNING"
    assert run_contents(RECORD, LINEAGE, EVALUATION, "t").tags["mlflow.note.content"].startswith("rolled_back: ")


def test_the_audit_record_keeps_what_the_step_after_register_did_or_its_caught_error():
    from refit_core.audit import summarize_run

    run = {"run_id": "r7", "trigger": "s3"}
    logged = {"logged": True, "error": None, "run_id": "m1", "model_version": "3", "aliases": {"challenger": "3"}}
    record = summarize_run({"run": run, "mlflow_challenger": logged}, "churn", "e", "t0", "t1", None)
    assert record["mlflow_challenger"] == logged and not record["problems"]
    caught = {"Error": "Lambda.ServiceException", "Cause": '{"errorMessage": "throttled"}'}
    record = summarize_run({"run": run, "mlflow_challenger": caught}, "churn", "e", "t0", "t1", None)
    assert record["mlflow_challenger"] == {"logged": False, "error": "Lambda.ServiceException: throttled"}
    assert summarize_run({"run": run}, "churn", "e", "t0", "t1", None)["mlflow_challenger"] is None


SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:team/mlflow-bot-Ab12Cd"


def test_a_credentials_secret_is_accepted_beside_an_http_server():
    assert config_with(tracking_uri="https://mlflow.example.com", credentials_secret=SECRET).mlflow.credentials_secret
    assert config_with(tracking_uri="https://mlflow.example.com").mlflow.credentials_secret is None


@pytest.mark.parametrize(
    ("secret", "tracking_uri", "says"),
    [
        (SECRET[: -len("-Ab12Cd")], "http://x", "not the full ARN of a Secrets Manager secret"),  # no random suffix
        ("team/mlflow-bot", "http://x", "not the full ARN"),
        (SECRET.replace("secretsmanager", "ssm"), "http://x", "not the full ARN"),
        (SECRET.replace("123456789012", "1234"), "http://x", "not the full ARN"),
        (SECRET, ARN, "a SageMaker managed tracking server takes no credentials secret"),
    ],
)
def test_a_bad_credentials_secret_is_refused_naming_the_field(secret, tracking_uri, says):
    with pytest.raises(ConfigError) as refused:
        config_with(tracking_uri=tracking_uri, credentials_secret=secret)
    line = next(line for line in str(refused.value).splitlines() if "mlflow.credentials_secret" in line)
    assert says in line


class Secrets:
    """Secrets Manager's GetSecretValue answering one stored response (the moto-backed handler test is
    tests/integration/test_mlflow_errors.py)."""

    def __init__(self, response):
        self.response = response

    def get_secret_value(self, SecretId):  # noqa: N803 - boto3's parameter name
        return {"ARN": SecretId, **self.response}


def test_credentials_become_mlflows_own_variables():
    basic = Secrets({"SecretString": json.dumps({"username": "bot", "password": "pw", "note": "kept out"})})
    assert credentials_from_secret(basic, SECRET) == {
        "MLFLOW_TRACKING_USERNAME": "bot",
        "MLFLOW_TRACKING_PASSWORD": "pw",
    }
    bearer = Secrets({"SecretString": json.dumps({"token": "tk"})})
    assert credentials_from_secret(bearer, SECRET) == {"MLFLOW_TRACKING_TOKEN": "tk"}


@pytest.mark.parametrize(
    ("response", "says"),
    [
        ({"SecretBinary": b"hunter2"}, "holds binary data"),
        ({"SecretString": "hunter2"}, "its SecretString is not JSON"),
        ({"SecretString": json.dumps(["hunter2"])}, "must be a JSON object, not list"),
        ({"SecretString": json.dumps({"user": "bot", "password": "hunter2"})}, "username and password must both"),
        ({"SecretString": json.dumps({"username": "bot", "password": ""})}, "username and password must both"),
        ({"SecretString": json.dumps({"token": ""})}, "token must be a non-empty string"),
        ({"SecretString": json.dumps({"token": "hunter2", "username": "b", "password": "c"})}, "both username"),
        ({"SecretString": json.dumps({"api_key": "hunter2"})}, '{"token": ...} (its keys: api_key)'),
    ],
)
def test_a_secret_without_credentials_is_refused_naming_it_and_what_is_wrong_but_no_value(response, says):
    with pytest.raises(MlflowCredentialsError) as refused:
        credentials_from_secret(Secrets(response), SECRET)
    assert str(refused.value).startswith(f"mlflow.credentials_secret {SECRET}") and says in str(refused.value)
    assert "hunter2" not in str(refused.value)
