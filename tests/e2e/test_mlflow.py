"""`[mlflow]` on the local runtime, against a real `mlflow server` on 127.0.0.1, read back with MLflow's own client:
the first run (deployed first) is an MLflow run with its params, metrics and tags, and its challenger version 1 holds
`champion`; a drifted batch whose canary gets no traffic is rolled back: its version 2 holds no alias and `champion`
stays on version 1; `refit promote churn 2 --force` moves `champion` to version 2 through the MLflow step of the
redeploy run. The step runs in the deployed state machine, as the deployed Lambda. Tests share one runtime and run in
order."""

from __future__ import annotations

import io
import json

import pytest
from mlflow import MlflowClient

from scripts.cli import main
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
                "bake_seconds = 600": "bake_seconds = 1",
            },
        )
        return config, synthesize(tmp_path_factory.mktemp("cdk-mlflow") / "cdk.out", config)

    with (
        mlflow_server(folder, synth) as (uri, (config, assembly)),
        LocalRuntime(assembly, tmp_path_factory.mktemp("runtime-mlflow"), seed=3) as runtime,
    ):
        yield runtime, MlflowClient(uri, uri), config


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
    return {v.version: sorted(v.aliases) for v in mlflow.search_model_versions(f"name = '{REGISTERED}'")}


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
    assert 0.5 < low <= value <= high <= 1
    assert metrics["gate.challenger"] == pytest.approx(record["gate"]["challenger"])
    assert metrics["training.estimated_cost_usd"] == pytest.approx(record["training"]["estimated_cost_usd"])
    assert any(key.startswith("cv.") for key in metrics)

    version = mlflow.get_model_version_by_alias(REGISTERED, "champion")
    lineage = json.loads(aws.read_s3(record["registry"]["lineage_uri"]))
    assert (version.version, version.run_id, version.source) == ("1", run.info.run_id, lineage["model_data_url"])
    assert aliases(mlflow) == {"1": ["champion"]}


def test_a_rolled_back_challenger_keeps_no_alias_and_champion_stays(aws, mlflow):
    execution = aws.wait_for(aws.land_batch(MODEL, "drifted.csv", to_csv_bytes(churn_batch(3000, 6, shift=1.0))))
    record = record_of(aws, execution["executionArn"])
    assert record["outcome"] == "rolled_back", record["message"]  # no traffic in the bake: a quiet canary
    assert record["mlflow"]["model_version"] == "2"
    assert aliases(mlflow) == {"1": ["champion"], "2": []}
    run = mlflow.get_run(record["mlflow"]["run_id"])
    assert run.data.tags["refit.outcome"] == "rolled_back" and run.data.metrics["drift.detected"] == 1.0


def test_promote_by_hand_moves_champion(aws, mlflow, stack, tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(aws.outputs))
    out, err = io.StringIO(), io.StringIO()
    arguments = ["promote", MODEL, "2", "--force", "--reason", "judged by hand", "--follow"]
    code = main(["--config", str(stack[2]), *arguments, "--stack-outputs", str(outputs), "--json"], out=out, err=err)
    assert code == 0, err.getvalue()
    record = next(r for r in aws.audit_records(MODEL) if r["outcome"] == "redeployed")
    assert record["mlflow"]["aliases"] == {"champion": "2", "challenger": None}
    assert aliases(mlflow) == {"1": [], "2": ["champion"]}
