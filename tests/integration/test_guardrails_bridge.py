"""The local runtime's deployment-guardrails bridge (scripts/local_aws/bridges.py, start_guarded_update): UpdateEndpoint
with a BlueGreenUpdatePolicy runs as SageMaker's blue/green update does, on the model's real endpoint and the alarms
the guardrails-mode stack created for it. The tests share one runtime and run in order (the 5XX alarm fired by the
rollback test stays in ALARM for the failed-rollback test)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError
from refit_core.artifacts import MODEL_SHA256_ENV, archive_model_sha256

from scripts.local_aws.bridges import JOB_WAIT_SECONDS
from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch
from tests.e2e.helpers import wrap_challenger

MODEL = "guard"  # the modes assembly's guardrails model (tests/assemblies.py)
ROW = "12.0,70.5,1,48.0,basic,north"
TRAINING_CONFIG = {
    "target": "churned",
    "problem_type": "binary_classification",
    "metrics": ["roc_auc"],
    "primary_metric": "roc_auc",
    "categorical_columns": ["plan", "region"],
    "id_column": None,
    "holdout_fraction": 0.5,
    "seed": 1,
    "run_id": "bridge",
}


@pytest.fixture(scope="module")
def aws(modes_assembly, tmp_path_factory):
    with LocalRuntime(modes_assembly, tmp_path_factory.mktemp("guardrails-bridge"), seed=3) as runtime:
        yield runtime


def stack_setting(aws, variable: str) -> str:
    return next(f.environment[variable] for f in aws.stack.functions.values() if variable in f.environment)


@pytest.fixture(scope="module")
def fleet(aws, tmp_path_factory) -> dict[str, Any]:
    """The model's endpoint on config `a` (model A); configs `b` (model B), `b4` (model B on four instances) and
    `c` (model C, whose every answer is a 5XX), each with the one variant `champion`. Artifacts live where guard's
    training jobs write them: what guard's SageMaker role may read."""
    root = tmp_path_factory.mktemp("guardrails-model")
    (root / "input" / "data" / "config").mkdir(parents=True)
    (root / "input" / "data" / "config" / "config.json").write_text(json.dumps(TRAINING_CONFIG))
    (root / "input" / "data" / "current").mkdir(parents=True)
    churn_batch(400, 1).to_csv(root / "input" / "data" / "current" / "batch.csv", index=False)
    env = {**os.environ, "REFIT_OPT_ML": str(root), "OMP_NUM_THREADS": "1"}
    trained = subprocess.run([sys.executable, "-m", "refit_training", "train"], env=env, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for path in sorted((root / "model").iterdir()):
            tar.add(path, arcname=path.name)
    endpoint = aws.model(MODEL).endpoint_name
    sagemaker, s3 = aws.client("sagemaker"), aws.client("s3")
    for model in ("a", "b", "c"):
        key = f"training/guard/refit-guard--guarded-{model}--od1/output/model.tar.gz"
        s3.put_object(Bucket=aws.artifact_bucket, Key=key, Body=archive.getvalue())
        if model == "c":
            wrap_challenger(aws, "5xx", tmp_path_factory.mktemp("faulty"), f"s3://{aws.artifact_bucket}/{key}")
        sagemaker.create_model(
            ModelName=f"{endpoint}--guarded-{model}",
            ExecutionRoleArn=stack_setting(aws, "REFIT_SAGEMAKER_ROLE_ARN"),
            PrimaryContainer={
                "Image": stack_setting(aws, "REFIT_IMAGE_URI"),
                "ModelDataUrl": f"s3://{aws.artifact_bucket}/{key}",
                "Environment": {
                    MODEL_SHA256_ENV: archive_model_sha256(s3.get_object(Bucket=aws.artifact_bucket, Key=key)["Body"])
                },
            },
        )
    configs = {"a": ("a", 1, "champion"), "b": ("b", 1, "champion"), "b4": ("b", 4, "champion")}
    configs |= {"c": ("c", 1, "champion"), "renamed": ("b", 1, "challenger")}
    for config, (model, instances, variant) in configs.items():
        sagemaker.create_endpoint_config(
            EndpointConfigName=f"{endpoint}--guarded-{config}",
            ProductionVariants=[
                {
                    "VariantName": variant,
                    "ModelName": f"{endpoint}--guarded-{model}",
                    "InitialInstanceCount": instances,
                    "InstanceType": "ml.m5.large",
                    "InitialVariantWeight": 1.0,
                }
            ],
        )
    sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}--guarded-a")
    return {"endpoint": endpoint, "config": lambda name: f"{endpoint}--guarded-{name}"}


def deployment(routing: dict[str, Any], alarms: list[str] | None = None, **policy: Any) -> dict[str, Any]:
    return {
        "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing, **policy},
        "AutoRollbackConfiguration": {
            "Alarms": [
                {"AlarmName": n} for n in (alarms or ["refit-guard--guardrails-5xx", "refit-guard--guardrails-latency"])
            ]
        },
    }


def describe(aws, fleet) -> dict[str, Any]:
    return aws.client("sagemaker").describe_endpoint(EndpointName=fleet["endpoint"])


def wait_until_settled(aws, fleet, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (described := describe(aws, fleet))["EndpointStatus"] == "Updating":
        assert time.monotonic() < deadline, "the guarded update did not end"
        time.sleep(0.05)
    return described


def test_an_all_at_once_update_is_updating_for_its_bake_then_serves_the_new_config(aws, fleet):
    sagemaker = aws.client("sagemaker")
    started = time.monotonic()
    sagemaker.update_endpoint(
        EndpointName=fleet["endpoint"],
        EndpointConfigName=fleet["config"]("b"),
        DeploymentConfig=deployment({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 1}),
    )
    during = describe(aws, fleet)
    assert (during["EndpointStatus"], during["EndpointConfigName"]) == ("Updating", fleet["config"]("a"))
    with pytest.raises(ClientError, match="Cannot update in-progress endpoint"):
        sagemaker.update_endpoint(EndpointName=fleet["endpoint"], EndpointConfigName=fleet["config"]("a"))
    pause = time.monotonic()
    aws.bridges.pause_while_updating()  # a Wait of the run's status loop lasts while the update runs
    assert (
        time.monotonic() - pause >= min(JOB_WAIT_SECONDS, 0.5) or describe(aws, fleet)["EndpointStatus"] != "Updating"
    )
    after = wait_until_settled(aws, fleet)
    assert (after["EndpointStatus"], after["EndpointConfigName"]) == ("InService", fleet["config"]("b"))
    assert time.monotonic() - started >= 1.0 and "FailureReason" not in after
    assert json.loads(aws.invoke_endpoint(MODEL, ROW)["body"])["probabilities"]
    pause = time.monotonic()
    aws.bridges.pause_while_updating()
    assert time.monotonic() - pause < 0.1  # no update: a Wait does not pause


def test_linear_steps_shift_the_new_fleets_share_by_instances(aws, fleet):
    shares = []
    aws.client("sagemaker").update_endpoint(
        EndpointName=fleet["endpoint"],
        EndpointConfigName=fleet["config"]("b4"),
        DeploymentConfig=deployment(
            {
                "Type": "LINEAR",
                "WaitIntervalInSeconds": 1,
                "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 25},
            }
        ),
    )
    while (update := aws.bridges.guarded.get(fleet["endpoint"])) is not None:
        if not shares or shares[-1] != update.share:
            shares.append(update.share)
        time.sleep(0.02)
    assert [s for s in shares if s] == [0.25, 0.5, 0.75, 1.0]
    assert wait_until_settled(aws, fleet)["EndpointConfigName"] == fleet["config"]("b4")


def test_an_alarm_in_alarm_during_the_bake_rolls_back_to_the_old_config(aws, fleet):
    started = time.monotonic()
    aws.client("sagemaker").update_endpoint(
        EndpointName=fleet["endpoint"],
        EndpointConfigName=fleet["config"]("c"),
        DeploymentConfig=deployment({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 60}),
    )
    failed = 0
    while describe(aws, fleet)["EndpointStatus"] == "Updating":
        assert time.monotonic() - started < 30, "the 5XX alarm did not roll the update back"
        try:
            aws.invoke_endpoint(MODEL, ROW)
        except ClientError:
            failed += 1  # the new fleet answers every request with a 5XX
    after = describe(aws, fleet)
    assert failed >= 1 and time.monotonic() - started < 30  # rolled back by the alarm, long before the bake's end
    assert (after["EndpointStatus"], after["EndpointConfigName"]) == ("InService", fleet["config"]("b4"))
    assert "FailureReason" not in after  # silent, as SageMaker often is: only the config name tells
    alarm = aws.client("cloudwatch").describe_alarms(AlarmNames=["refit-guard--guardrails-5xx"])["MetricAlarms"][0]
    assert alarm["StateValue"] == "ALARM"
    assert json.loads(aws.invoke_endpoint(MODEL, ROW)["body"])["probabilities"]  # the old fleet serves


def test_a_rollback_that_fails_leaves_update_rollback_failed_until_the_next_update(aws, fleet):
    aws.bridges.fail_guarded_rollbacks = True
    try:
        aws.client("sagemaker").update_endpoint(
            EndpointName=fleet["endpoint"],
            EndpointConfigName=fleet["config"]("c"),
            DeploymentConfig=deployment({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 60}),
        )
        deadline = time.monotonic() + 30
        while (broken := describe(aws, fleet))["EndpointStatus"] == "Updating":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        aws.bridges.fail_guarded_rollbacks = False
    assert broken["EndpointStatus"] == "UpdateRollbackFailed"
    assert "rollback failed" in broken["FailureReason"] and broken["EndpointConfigName"] == fleet["config"]("b4")
    with pytest.raises(ClientError):
        aws.invoke_endpoint(MODEL, ROW)  # the fleets stay mixed: the new one still takes its share
    aws.client("sagemaker").update_endpoint(EndpointName=fleet["endpoint"], EndpointConfigName=fleet["config"]("b"))
    fixed = describe(aws, fleet)
    assert (fixed["EndpointStatus"], fixed["EndpointConfigName"]) == ("InService", fleet["config"]("b"))
    assert json.loads(aws.invoke_endpoint(MODEL, ROW)["body"])["probabilities"]


@pytest.mark.parametrize(
    ("config", "policy", "message"),
    [
        ("renamed", None, "same variant names"),
        ("b4", {"Type": "CANARY", "WaitIntervalInSeconds": 1}, "CANARY needs its size"),
        (
            "b4",
            {"Type": "CANARY", "WaitIntervalInSeconds": 1, "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 3}},
            "at most 50%",
        ),
        (
            "b",
            {"Type": "CANARY", "WaitIntervalInSeconds": 1, "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}},
            "at most 50%",
        ),
        ("b4", "rolling", "only BlueGreenUpdatePolicy"),
        ("b4", "unreadable alarm", "cannot read the AutoRollbackConfiguration alarms"),
    ],
)
def test_updates_sagemaker_would_refuse_are_refused_and_change_nothing(aws, fleet, config, policy, message):
    before = describe(aws, fleet)
    if policy == "rolling":
        request = {
            "RollingUpdatePolicy": {
                "MaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 1},
                "WaitIntervalInSeconds": 1,
            }
        }
    elif policy == "unreadable alarm":  # the canary alarm: guard's SageMaker role may not read it
        request = deployment({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 1}, ["refit-guard--canary"])
    else:
        request = deployment(policy or {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 1})
    with pytest.raises(ClientError, match=message) as refused:
        aws.client("sagemaker").update_endpoint(
            EndpointName=fleet["endpoint"], EndpointConfigName=fleet["config"](config), DeploymentConfig=request
        )
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    after = describe(aws, fleet)
    assert (after["EndpointStatus"], after["EndpointConfigName"]) == (
        before["EndpointStatus"],
        before["EndpointConfigName"],
    )
