"""`[mlflow]` on the local runtime, against a real `mlflow server` on 127.0.0.1, read back with MLflow's own client.
The first run goes through the deployed state machine (its `Log to MLflow` step runs the deployed Lambda): it is an
MLflow run with its params, metrics and tags, and its challenger, version 1, holds `champion`. Then, without another
training run, two later records (built from the first run's stored record) are logged by the handler's own function
against the same server and audit table: a rolled-back challenger, whose version 2 holds no alias while `champion`
stays on 1, and a redeploy of version 2 (`refit promote`), which moves `champion` to 2. Tests run in order."""

from __future__ import annotations

import json

import pytest
from boto3.dynamodb.types import TypeSerializer
from mlflow import MlflowClient
from refit_core.steps import AuditKey
from refit_handlers.common import to_dynamodb
from refit_handlers.mlflow_sync import log_to_mlflow

from scripts.local_aws.runtime import LocalRuntime, synthesize
from scripts.sample_data import churn_batch, to_csv_bytes
from tests.conftest import config_variant
from tests.mlflow_server import mlflow_server

MODEL = "churn"
EXPERIMENT = "refit/churn"
REGISTERED = "refit-churn"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")

    def synth(uri: str):
        config = config_variant(
            tmp_path_factory,
            "mlflow-config",
            {
                'project = "refit"\n': f'project = "refit"\n\n[mlflow]\ntracking_uri = "{uri}"\ntimeout_seconds = 5\n',
                "max_trials = 3": "max_trials = 1",
            },
        )
        return synthesize(tmp_path_factory.mktemp("cdk-mlflow") / "cdk.out", config)

    with (
        mlflow_server(folder, synth) as (uri, assembly),
        LocalRuntime(assembly, tmp_path_factory.mktemp("runtime-mlflow"), seed=3) as runtime,
    ):
        yield runtime, MlflowClient(uri, uri), uri


@pytest.fixture(scope="module")
def aws(stack):
    return stack[0]


@pytest.fixture(scope="module")
def mlflow(stack):
    return stack[1]


def record_of(aws, execution_arn):
    name = execution_arn.rsplit(":", 1)[-1]
    return next(r for r in aws.audit_records(MODEL) if r["execution"] == name)


def aliases(mlflow):
    """Each version's aliases, as get_model_version reports them (search results carry none)."""
    versions = mlflow.search_model_versions(f"name = '{REGISTERED}'")
    return {v.version: sorted(mlflow.get_model_version(REGISTERED, v.version).aliases) for v in versions}


def test_first_run_is_an_mlflow_run_and_its_version_is_champion(aws, mlflow):
    execution = aws.wait_for(aws.land_batch(MODEL, "first.csv", to_csv_bytes(churn_batch(3000, 1))))
    record = record_of(aws, execution["executionArn"])
    assert (execution["status"], record["outcome"]) == ("SUCCEEDED", "deployed_first"), record["message"]
    assert "error" not in record["mlflow"], record["mlflow"]

    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    [run] = mlflow.search_runs([experiment.experiment_id], f"tags.`refit.run_id` = '{record['run_id']}'")
    assert run.info.run_id == record["mlflow"]["run_id"] and run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["refit.trigger"] == record["trigger"] and tags["refit.outcome"] == "deployed_first"
    assert tags["refit.lineage_uri"] == record["registry"]["lineage_uri"]
    assert tags["refit.audit_record"].endswith(f"/{record['pk']}/{record['sk']}")
    assert tags["refit.model_package_arn"] == record["registry"]["model_package_arn"]
    assert params["search.family"] and params["primary_metric"] == "roc_auc" and int(params["n_holdout"]) > 0
    low, value, high = (metrics[f"holdout.challenger.roc_auc{s}"] for s in (".ci_low", "", ".ci_high"))
    assert 0.5 < low < high <= 1 and 0.5 < value <= 1
    assert metrics["gate.challenger"] == pytest.approx(float(record["gate"]["challenger"]))
    assert metrics["training.estimated_cost_usd"] == pytest.approx(float(record["training"]["estimated_cost_usd"]))
    assert any(key.startswith("cv.") for key in metrics)

    version = mlflow.get_model_version_by_alias(REGISTERED, "champion")
    lineage = json.loads(aws.read_s3(record["registry"]["lineage_uri"]))
    assert (version.version, version.run_id, version.source) == ("1", run.info.run_id, lineage["model_data_url"])
    assert aliases(mlflow) == {"1": ["champion"]}


def sync_stored(aws, uri, record):
    """A run record stored in the runtime's audit table, logged by the handler's own function (what the Lambda runs
    after Finalize), without another training run: the challenger's lineage is the first run's."""
    item = {k: TypeSerializer().serialize(v) for k, v in to_dynamodb(record).items()}
    aws.client("dynamodb").put_item(TableName=aws.audit_table, Item=item)
    environment = {
        "REFIT_AUDIT_TABLE": aws.audit_table,
        "REFIT_MLFLOW_TRACKING_URI": uri,
        "REFIT_MLFLOW_EXPERIMENT": EXPERIMENT,
        "REFIT_MLFLOW_REGISTERED_MODEL": REGISTERED,
    }
    key = AuditKey(pk=record["pk"], sk=record["sk"])
    return log_to_mlflow(key, environment, aws.client("dynamodb"), aws.client("s3"))


def later_run(first, run_id, **changes):
    first = json.loads(json.dumps(first, default=float))  # DynamoDB's Decimals as JSON numbers
    return {**first, "run_id": run_id, "sk": first["sk"].replace(first["run_id"], run_id), "mlflow": None, **changes}


def test_a_rolled_back_challenger_keeps_no_alias_and_champion_stays(aws, mlflow, stack):
    first = next(r for r in aws.audit_records(MODEL) if r["outcome"] == "deployed_first")
    arn = first["registry"]["model_package_arn"].rsplit("/", 1)[0] + "/2"
    registry = {**first["registry"], "model_package_arn": arn, "version": 2, "approval": "Rejected"}
    rolled_back = later_run(first, "r2", outcome="rolled_back", message="canary rolled back: quiet", registry=registry)
    field = sync_stored(aws, stack[2], rolled_back)
    assert field["model_version"] == "2" and field["aliases"] == {"champion": "1", "challenger": None}
    assert aliases(mlflow) == {"1": ["champion"], "2": []}
    assert mlflow.get_run(field["run_id"]).data.tags["refit.outcome"] == "rolled_back"
    stored = next(r for r in aws.audit_records(MODEL) if r["run_id"] == "r2")
    assert stored["mlflow"]["model_version"] == "2" and stored["outcome"] == "rolled_back"  # written into the record


def test_a_redeploy_moves_champion_to_the_version_it_serves(aws, mlflow, stack):
    first = next(r for r in aws.audit_records(MODEL) if r["outcome"] == "deployed_first")
    arn = first["registry"]["model_package_arn"].rsplit("/", 1)[0] + "/2"
    redeploy = {"kind": "promote", "version": 2, "model_package_arn": arn, "requested_by": "someone"}
    promoted = later_run(first, "r3", outcome="redeployed", training=None, gate=None, registry=None, redeploy=redeploy)
    field = sync_stored(aws, stack[2], promoted)
    assert field["run_id"] is None and field["aliases"] == {"champion": "2", "challenger": None}
    assert aliases(mlflow) == {"1": [], "2": ["champion"]}
