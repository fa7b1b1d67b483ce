"""`[mlflow]` on the local runtime, against a real `mlflow server` on 127.0.0.1, read back with MLflow's own client.
The first run goes through the deployed state machine (its `Log to MLflow` step runs the deployed Lambda): it is an
MLflow run with its params, metrics and tags, and its challenger, version 1, holds `champion`. Then, without another
training run, two later records (built from the first run's stored record) are logged by the handler's own function
against the same server and audit table: a rolled-back challenger, whose version 2 holds no alias while `champion`
stays on 1, and a redeploy of version 2 (`refit promote`), which moves `champion` to 2. Then, still without training:
the first run's `Log challenger to MLflow` step held `challenger` on version 1 until Finalize moved it; the deployed
MlflowSync function's step after Register on a challenger awaiting approval (a second package) gives its version
`challenger`; Cleanup's handler for that run stopped (ABORTED) starts MlflowSync, which ends the same MLflow run KILLED
and takes `challenger` away; and a registered model name the server refuses is recorded and counted. Tests run in
order."""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal

import pytest
from boto3.dynamodb.types import TypeSerializer
from mlflow import MlflowClient
from refit_core.steps import AuditKey
from refit_handlers import cleanup, mlflow_sync
from refit_handlers.common import to_dynamodb
from refit_handlers.mlflow_sync import log_to_mlflow, start_sync

from scripts.local_aws.bridges import LambdaContext
from scripts.local_aws.runtime import LocalRuntime, synthesize
from scripts.sample_data import churn_batch, to_csv_bytes
from tests.conftest import config_variant
from tests.integration.test_mlflow_errors import emitted_metrics
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


def first_record(aws):
    return next(r for r in aws.audit_records(MODEL) if r["outcome"] == "deployed_first")


def state_after(aws, execution_name, state_name):
    """The run's state as `state_name` left it, from the execution's history."""
    [execution] = [e for e in aws.executions(MODEL) if e["name"] == execution_name]
    events = aws.client("stepfunctions").get_execution_history(
        executionArn=execution["executionArn"], maxResults=1000, includeExecutionData=True
    )["events"]
    [output] = [
        e["stateExitedEventDetails"]["output"]
        for e in events
        if e["type"].endswith("StateExited") and e["stateExitedEventDetails"]["name"] == state_name
    ]
    return json.loads(output)


def function_named(aws, part):
    return next(name for name in aws.stack.functions if part in name)


def syncs_ended(aws, count, timeout=60):
    """Wait until the MlflowSync function has ended `count` invocations in this runtime."""
    deadline = time.monotonic() + timeout
    while sum("MlflowSync" in name for name, _ in aws.bridges.invocations) < count:
        assert time.monotonic() < deadline, f"MlflowSync did not end {count} invocations"
        time.sleep(0.1)


def test_the_first_run_held_challenger_from_register_until_its_finalize(aws):
    record = first_record(aws)
    logged = state_after(aws, record["execution"], "Log challenger to MLflow")["mlflow_challenger"]
    assert logged["logged"] is True and logged["error"] is None
    assert (logged["model_version"], logged["aliases"]) == ("1", {"champion": None, "challenger": "1"})
    assert logged["run_id"] == record["mlflow"]["run_id"]  # the step after Finalize completed the same MLflow run
    assert record["mlflow_challenger"]["aliases"] == {"champion": None, "challenger": "1"}  # kept in the record


PARKED = {}  # the run parked in manual approval, shared by the next two tests (they run in order)


def test_a_challenger_awaiting_approval_holds_challenger_in_mlflow(aws, mlflow):
    first = first_record(aws)
    sagemaker = aws.client("sagemaker")
    package = sagemaker.describe_model_package(ModelPackageName=first["registry"]["model_package_arn"])
    arn = sagemaker.create_model_package(
        ModelPackageGroupName=package["ModelPackageGroupName"],
        InferenceSpecification=package["InferenceSpecification"],
        ModelApprovalStatus="PendingManualApproval",
    )["ModelPackageArn"]
    registered = state_after(aws, first["execution"], "Register challenger")
    state = {
        **registered,
        "run": {**registered["run"], "run_id": "a1", "claimed_batch": False},
        "registry": {
            **registered["registry"],
            "model_package_arn": arn,
            "version": 2,
            "approval": "PendingManualApproval",
        },
    }
    champion_before = mlflow.get_model_version_by_alias(REGISTERED, "champion").version
    event = {"stage": "challenger", "state": state, "execution_name": "a1", "execution_started_at": first["started_at"]}
    answer = aws.client("lambda").invoke(FunctionName=function_named(aws, "MlflowSync"), Payload=json.dumps(event))
    logged = json.loads(answer["Payload"].read())
    assert "FunctionError" not in answer and logged["logged"] is True, logged

    version = mlflow.get_model_version_by_alias(REGISTERED, "challenger")
    assert version.version == logged["model_version"] and version.run_id == logged["run_id"]
    assert mlflow.get_model_version_by_alias(REGISTERED, "champion").version == champion_before
    run = mlflow.get_run(logged["run_id"])
    assert run.info.status == "RUNNING" and "refit.outcome" not in run.data.tags  # the run goes on
    assert run.data.tags["refit.registry_approval"] == "PendingManualApproval"
    assert run.data.metrics["gate.challenger"] == pytest.approx(float(first["gate"]["challenger"]))
    PARKED.update(state={**state, "mlflow_challenger": logged}, logged=logged, package=arn)


def test_a_run_stopped_while_awaiting_approval_loses_challenger_through_the_cleanup(aws, mlflow, monkeypatch):
    """Cleanup's own handler (in-process, as the account's administrator: its role may read only its state machine's
    histories, and the history here is a one-state machine's whose output is the parked run's state)."""
    sfn = aws.client("stepfunctions")
    model_machine = aws.model(MODEL).state_machine_arn
    machine = sfn.create_state_machine(
        name="parked-history",
        roleArn=sfn.describe_state_machine(stateMachineArn=model_machine)["roleArn"],
        # moto's ASL parser refuses a number in exponent form (a p-value such as 5e-05 in the state), which Step
        # Functions takes as JSON: written out positionally.
        definition=re.sub(
            r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?[eE][-+]?\d+',  # a string (left as it is) or such a number
            lambda token: token.group() if token.group().startswith('"') else format(Decimal(token.group()), "f"),
            json.dumps(
                {
                    "StartAt": "Await approval",
                    "States": {"Await approval": {"Type": "Pass", "Result": PARKED["state"], "End": True}},
                }
            ),
        ),
    )["stateMachineArn"]
    execution = aws.wait_for(sfn.start_execution(stateMachineArn=machine, name="a1")["executionArn"])
    for name, value in aws.stack.functions[function_named(aws, "Cleanup")].environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cleanup.metrics.provider, "namespace", "Refit")
    cleanup.client.cache_clear()
    event = {
        "source": "aws.states",
        "detail-type": "Step Functions Execution Status Change",
        "detail": {
            "executionArn": execution["executionArn"],
            "stateMachineArn": model_machine,
            "name": "a1",
            "status": "ABORTED",
            "startDate": int(execution["startDate"].timestamp() * 1000),
            "cause": "stopped by an operator",
        },
    }
    syncs = sum("MlflowSync" in name for name, _ in aws.bridges.invocations)
    try:
        result = cleanup.handler(
            event, LambdaContext("refit-churn--Cleanup", 512, "arn:aws:lambda:us-east-1:1:function:c")
        )
    finally:
        cleanup.client.cache_clear()
    assert (result["action"], result["outcome"], result["mlflow_error"]) == ("recorded", "aborted", None)

    syncs_ended(aws, syncs + 1)  # MlflowSync runs asynchronously, after the cleanup
    record = next(r for r in aws.audit_records(MODEL) if r["run_id"] == "a1")
    assert "error" not in record["mlflow"], record["mlflow"]
    logged = PARKED["logged"]
    assert (record["mlflow"]["run_id"], record["mlflow"]["model_version"]) == (
        logged["run_id"],
        logged["model_version"],
    )
    assert record["mlflow"]["aliases"]["challenger"] is None and record["mlflow_challenger"]["logged"] is True
    assert aliases(mlflow)[logged["model_version"]] == []
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    [run] = mlflow.search_runs([experiment.experiment_id], "tags.`refit.run_id` = 'a1'")  # one MLflow run, not two
    assert run.info.status == "KILLED" and run.data.tags["refit.outcome"] == "aborted"
    assert "stopped before Finalize" in run.data.tags["refit.message"]
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=PARKED["package"])
    assert package["ModelApprovalStatus"] == "Rejected"

    # The deployed Cleanup's role may start it (the local IAM checks the call against the synthesized policy), and a
    # second sync of the same record changes nothing.
    function = aws.stack.functions[function_named(aws, "Cleanup")]
    as_cleanup = aws.bridges.role_client("lambda", function.role_arn, function.name)
    key = AuditKey(pk=record["pk"], sk=record["sk"])
    target = function.environment["REFIT_MLFLOW_FUNCTION"]
    assert start_sync(as_cleanup, aws.client("dynamodb"), aws.audit_table, target, key) is None
    syncs_ended(aws, syncs + 2)
    assert "error" not in next(r for r in aws.audit_records(MODEL) if r["run_id"] == "a1")["mlflow"]
    assert len(mlflow.search_runs([experiment.experiment_id], "tags.`refit.run_id` = 'a1'")) == 1
    assert aliases(mlflow)[logged["model_version"]] == []


def test_a_registered_model_name_the_server_refuses_is_recorded_and_counted(aws, mlflow, stack, capsys, monkeypatch):
    """A name past the configuration's check (which refuses '..churn' at synth) as the server would refuse it."""
    first = first_record(aws)
    rolled_back = later_run(first, "r4", outcome="rolled_back", message="canary rolled back: 5XX")
    item = {k: TypeSerializer().serialize(v) for k, v in to_dynamodb(rolled_back).items()}
    aws.client("dynamodb").put_item(TableName=aws.audit_table, Item=item)
    environment = {
        "REFIT_AUDIT_TABLE": aws.audit_table,
        "REFIT_MLFLOW_TRACKING_URI": stack[2],
        "REFIT_MLFLOW_EXPERIMENT": EXPERIMENT,
        "REFIT_MLFLOW_REGISTERED_MODEL": "..churn",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(mlflow_sync.metrics.provider, "namespace", "Refit")
    mlflow_sync.client.cache_clear()
    capsys.readouterr()
    try:
        result = mlflow_sync.handler(
            {"audit_key": {"pk": rolled_back["pk"], "sk": rolled_back["sk"]}},
            LambdaContext("refit-churn--MlflowSync", 512, "arn:aws:lambda:us-east-1:1:function:m"),
        )
    finally:
        mlflow_sync.client.cache_clear()
    assert result["logged"] is False and "Names may be treated as files" in result["error"]
    stored = next(r for r in aws.audit_records(MODEL) if r["run_id"] == "r4")
    assert (stored["status"], stored["outcome"]) == ("SUCCEEDED", "rolled_back")
    assert stored["mlflow"]["error"] == result["error"] and stored["mlflow"]["registered_model"] == "..churn"
    assert emitted_metrics(capsys.readouterr().out)["MlflowErrors"][0] == 1.0
