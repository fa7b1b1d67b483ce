"""deploy.mode guardrails on the local runtime: the retrain run updates the single-variant endpoint with UpdateEndpoint's
DeploymentConfig (all at once, a bake of a few seconds, the stack's 5XX and latency alarms) and reads the outcome from
the config the endpoint ends InService on; an update that ended on the new config is then judged by refit on a window
only the new fleet served (from the first whole minute after the end, judge_seconds = 60) against the champion's
window before the UpdateEndpoint's minute. A healthy challenger is promoted; one that answers 5XX is rolled back by
SageMaker's (the bridge's) alarm rollback, which the run records; a rollback that itself fails ends the run FAILED
with the endpoint's true state in the audit record; a quiet window, a challenger slow at p99 (its mean within the
alarm's limit) and one whose predictions diverge are rolled back by refit with a second UpdateEndpoint. In every case
the registry agrees with the endpoint. The faulty challengers and the traffic are those of the staged-canary tests.
The tests share one runtime and run in order: the 5XX runs come last, as their 5XX keep the alarm in ALARM for
minutes (as CloudWatch would) and a bake then would be rolled back by SageMaker, not judged by refit. The champion's window is the two minutes before the update's minute
(tests/assemblies.py): each judged test sends the champion's traffic in it."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from refit_core.champion import find_champion, find_serving_package
from refit_core.guardrails import SETTLE_SECONDS, alarm_names

from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes
from tests.assemblies import GUARDRAILS_JUDGE_SECONDS, GUARDRAILS_MAX_MODEL_LATENCY_MS
from tests.e2e.helpers import SLOW_SECONDS, FaultAfterTraining, Traffic, alarm_state

MODEL = "guard"  # deploy.mode guardrails, all at once (tests/assemblies.py)
ROW = "12.0,70.5,1,48.0,basic,north"


@pytest.fixture(scope="module")
def aws(modes_assembly, tmp_path_factory):
    with LocalRuntime(modes_assembly, tmp_path_factory.mktemp("runtime-guardrails"), seed=11) as runtime:
        yield runtime


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


class AfterTraining:
    """A "Wait for training" hook: the fault wrapped into the challenger once its training ends, then the UpdateEndpoint
    kept out of the minute of the champion's last request (the champion's window ends before the update's minute),
    sleeping through the training where it can."""

    def __init__(self, champion: Traffic | None, fault: FaultAfterTraining | None) -> None:
        self.champion, self.fault = champion, fault

    def __call__(self, state: str, seconds: int) -> None:
        if self.fault is not None:
            self.fault(state, seconds)
        if self.champion is not None:
            sleep_until(self.champion.last_request.replace(second=0, microsecond=0) + timedelta(minutes=1, seconds=0.2))


class JudgedWindow:
    """A "Wait for judged window" hook: the local runtime's Waits do not wait, so this one waits for the window the
    status check planned (a whole minute: the Wait's timestamp less the settle and the window, to the second) and then
    sends `traffic`'s requests in it."""

    def __init__(self, traffic: Traffic) -> None:
        self.traffic, self.start = traffic, None

    def __call__(self, state: str, seconds: int) -> None:
        estimate = datetime.now(UTC) + timedelta(seconds=seconds - SETTLE_SECONDS - GUARDRAILS_JUDGE_SECONDS + 30)
        self.start = estimate.replace(second=0, microsecond=0)
        sleep_until(self.start + timedelta(seconds=0.2))
        self.traffic(state, seconds)


def run_with(
    aws,
    batch_name: str,
    seed: int,
    traffic: Traffic | None,
    shift: float = 1.0,
    *,
    champion: Traffic | None = None,
    judged: Traffic | None = None,
) -> tuple[dict, dict]:
    """A run on a drifted batch (`shift` away from the first batch's distribution), with `traffic` during each poll of
    the guarded update, `champion` requests before the run (in a minute before the UpdateEndpoint's), `judged`
    requests in the window refit judges after the update, and the fault of either wrapped into the challenger."""
    faulty = next((t for t in (traffic, judged) if t is not None and t.fault), None)
    fault = FaultAfterTraining(aws, faulty.fault, faulty.scratch) if faulty is not None else None
    if champion is not None:
        champion("champion window", 0)
    if traffic is not None:
        aws.on_wait("Wait for guarded update", traffic)
    if judged is not None:
        aws.on_wait("Wait for judged window", JudgedWindow(judged))
    if fault is not None or champion is not None:
        aws.on_wait("Wait for training", AfterTraining(champion, fault))
    try:
        execution = aws.wait_for(
            aws.land_batch(MODEL, batch_name, to_csv_bytes(churn_batch(3000, seed, shift=shift))), timeout=600
        )
    finally:
        for state in ("Wait for guarded update", "Wait for training", "Wait for judged window"):
            aws.on_wait(state, None)
    name = execution["executionArn"].rsplit(":", 1)[-1]
    record = next(r for r in aws.audit_records(MODEL) if r["execution"] == name)
    return execution, json.loads(json.dumps(record, default=float))  # DynamoDB numbers are Decimals


def describe(aws) -> dict:
    return aws.client("sagemaker").describe_endpoint(EndpointName=aws.model(MODEL).endpoint_name)


def package(aws, record) -> dict:
    return aws.client("sagemaker").describe_model_package(ModelPackageName=record["registry"]["model_package_arn"])


def assert_serves(aws, record, config: str) -> None:
    """InService on `config` with the one variant, answering, and the audit record says the same."""
    endpoint = describe(aws)
    assert (endpoint["EndpointStatus"], endpoint["EndpointConfigName"]) == ("InService", config)
    assert (record["endpoint"]["status"], record["endpoint"]["config"]) == ("InService", config)
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}
    assert "probabilities" in json.loads(aws.invoke_endpoint(MODEL, ROW)["body"])
    assert_registry_agrees(aws)


def assert_registry_agrees(aws) -> None:
    """The package the registry alone marks serving is the one the endpoint's model names."""
    sagemaker = aws.client("sagemaker")
    serving = find_serving_package(sagemaker, aws.model(MODEL).package_group)
    assert serving["model_package_arn"] == find_champion(sagemaker, aws.model(MODEL).endpoint_name)["model_package_arn"]


def test_the_first_batch_creates_the_endpoint(aws):
    execution = aws.wait_for(aws.land_batch(MODEL, "first.csv", to_csv_bytes(churn_batch(3000, 1))), timeout=600)
    assert execution["status"] == "SUCCEEDED"
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}


def test_a_healthy_challenger_is_promoted_by_the_guarded_update(aws):
    before = describe(aws)["EndpointConfigName"]
    traffic = Traffic(aws, MODEL, 20)
    # One client where latency is judged: a local serve process has one worker, and concurrent requests queue.
    champion, judged = Traffic(aws, MODEL, 100, clients=1), Traffic(aws, MODEL, 100, clients=1)
    execution, record = run_with(aws, "healthy.csv", 8, traffic, champion=champion, judged=judged)
    assert (execution["status"], record["outcome"]) == ("SUCCEEDED", "promoted"), record["message"]
    guarded = record["guardrails"]
    verdict = guarded["bake"]
    assert verdict["healthy"] and verdict["p99_judged"] and "the new fleet served 100 requests" in guarded["reason"]
    # The judged window is the planned one, from a whole minute; the new fleet's requests in it and the champion's
    # before the update's minute are counted, and those made while the update ran (both fleets) count for neither.
    assert (
        guarded["judge_from"] == verdict["window_start"] and datetime.fromisoformat(guarded["judge_from"]).second == 0
    )
    assert verdict["bake"]["invocations"] == judged.variants["champion"] == 100
    assert verdict["champion"]["invocations"] == champion.variants["champion"] == 100
    divergence = verdict["divergence"]
    assert divergence["status"] == "judged" and not divergence["diverged"], divergence["reason"]
    assert divergence["challenger_samples"] == divergence["champion_samples"] == 100
    assert guarded["next"] == "promoted" and guarded["previous_config"] == before
    assert guarded["config"] == guarded["expected_config"] == record["endpoint"]["config"] != before
    policy = guarded["deployment_config"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"] == {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 3}
    # Requests sent while the update ran (each poll of the run's status loop) were all served.
    assert traffic.bakes >= 1 and traffic.errors == 0 and traffic.variants == {"champion": 20 * traffic.bakes}
    assert_serves(aws, record, guarded["expected_config"])
    serving = find_serving_package(aws.client("sagemaker"), aws.model(MODEL).package_group)
    assert serving["model_package_arn"] == record["registry"]["model_package_arn"]  # the run's package serves
    assert package(aws, record)["ModelApprovalStatus"] == "Approved"


def test_a_quiet_bake_is_not_promoted_refit_rolls_the_finished_update_back(aws):
    """SageMaker's alarms treat missing data as not breaching, so a bake without traffic completes on the new config;
    refit's bake verdict then finds fewer than min_invocations and returns the endpoint to the previous config with a
    second UpdateEndpoint. Registry and audit record agree with the endpoint."""
    before = describe(aws)["EndpointConfigName"]
    # The earlier 5XX bursts left the rollback alarms in ALARM, and the local runtime evaluates an alarm only when its
    # metric gets data, which a quiet bake never gives; CloudWatch evaluates every period and would be back to OK once
    # the burst left the evaluation range (missing data is not breaching). Evaluating them a few minutes ahead stands
    # in for that wait.
    # (The judged window starts on the first whole minute after the update ended, so no earlier request can count:
    # no wait for the clock to pass a minute is needed.)
    ahead = datetime.now(UTC) + timedelta(minutes=4)
    aws.bridges.evaluate_alarms(now=ahead, names=set(alarm_names(aws.model(MODEL).endpoint_name)))
    assert {
        a["StateValue"]
        for a in aws.client("cloudwatch").describe_alarms(AlarmNames=alarm_names(aws.model(MODEL).endpoint_name))[
            "MetricAlarms"
        ]
    } == {"OK"}
    execution, record = run_with(aws, "quiet.csv", 12, None, shift=2.0)  # no traffic during the update
    assert (execution["status"], record["outcome"]) == ("SUCCEEDED", "rolled_back"), record["message"]
    guarded = record["guardrails"]
    assert guarded["next"] == "rollback" and guarded["config"] == guarded["expected_config"] != before
    assert "quiet window" in guarded["reason"] and "quiet window" in record["message"]
    assert guarded["bake"]["healthy"] is False and guarded["bake"]["bake"]["invocations"] == 0
    assert_serves(aws, record, before)  # the champion serves again, on its own config
    rejected = package(aws, record)
    assert rejected["ModelApprovalStatus"] == "Rejected" and "quiet window" in rejected["ApprovalDescription"]


def rollback_alarms_ok(aws) -> None:
    """Poll until the rollback alarms are OK at the wall clock: the earlier tests' 5XX keep the 5XX alarm in ALARM for
    the minute they fall in (as CloudWatch would), and a bake then would be rolled back by SageMaker, not judged by
    refit."""
    names = set(alarm_names(aws.model(MODEL).endpoint_name))
    deadline = time.monotonic() + 150
    while True:
        aws.bridges.evaluate_alarms(names=names)
        alarms = aws.client("cloudwatch").describe_alarms(AlarmNames=sorted(names))["MetricAlarms"]
        if all(a["StateValue"] != "ALARM" for a in alarms):
            return
        assert time.monotonic() < deadline, alarms
        time.sleep(1)


def assert_rolled_back_by_refit(aws, execution, record, before: str, reason: str) -> dict:
    """SageMaker finished the update on the new config, refit's judgement failed it with `reason`, and the second
    UpdateEndpoint put the champion back: endpoint, audit record and registry (Rejected with the reason) agree."""
    assert (execution["status"], record["outcome"]) == ("SUCCEEDED", "rolled_back"), record["message"]
    guarded = record["guardrails"]
    assert guarded["next"] == "rollback" and guarded["config"] == guarded["expected_config"] != before
    assert reason in guarded["reason"] and reason in record["message"]
    assert_serves(aws, record, before)  # the champion serves again, on its own config
    rejected = package(aws, record)
    assert rejected["ModelApprovalStatus"] == "Rejected" and reason in rejected["ApprovalDescription"]
    return guarded["bake"]


def test_a_challenger_slow_at_p99_is_rolled_back_by_refit_while_its_mean_is_within_the_alarms_limit(aws, tmp_path):
    """SageMaker's latency alarm (mean ModelLatency over a minute) lets a challenger 0.8 s slower pass the bake; refit's
    p99 against the champion's window before the update rolls it back. One client: a local serve process has one
    worker, and concurrent requests would queue in front of the slow challenger."""
    before = describe(aws)["EndpointConfigName"]
    rollback_alarms_ok(aws)
    champion, judged = Traffic(aws, MODEL, 200, clients=1), Traffic(aws, MODEL, 25, "slower", tmp_path, clients=1)
    execution, record = run_with(aws, "slow.csv", 13, None, shift=2.0, champion=champion, judged=judged)
    verdict = assert_rolled_back_by_refit(aws, execution, record, before, "p99 model latency after the update")
    assert verdict["p99_judged"] and verdict["p99_latency_ratio"] > 3.0
    assert verdict["bake"]["invocations"] == judged.variants["champion"] == 25 and judged.errors == 0
    mean = verdict["bake"]["mean_latency_ms"]
    assert 2 * SLOW_SECONDS * 1000 <= mean < GUARDRAILS_MAX_MODEL_LATENCY_MS  # the latency alarm's mean passes it
    assert verdict["champion"]["invocations"] >= champion.variants["champion"] == 200


def test_a_challenger_whose_predictions_diverge_is_rolled_back_by_refit(aws, tmp_path):
    """A feature-pipeline bug (tenure read in years) answers without errors or delay: no alarm and no latency rule
    stops it; the divergence test on the captured outputs of the two windows does."""
    before = describe(aws)["EndpointConfigName"]
    rollback_alarms_ok(aws)
    champion = Traffic(aws, MODEL, 200, clients=1)
    judged = Traffic(aws, MODEL, 200, "diverge", tmp_path, clients=1)
    warm = Traffic(aws, MODEL, 5)  # while the update runs: the new fleet's first (cold) requests are not judged
    execution, record = run_with(aws, "diverge.csv", 14, warm, shift=2.0, champion=champion, judged=judged)
    verdict = assert_rolled_back_by_refit(aws, execution, record, before, "prediction divergence (adjacent windows")
    divergence = verdict["divergence"]
    assert divergence["status"] == "judged" and divergence["diverged"] and divergence["p_value"] < 0.01
    assert divergence["challenger_samples"] == judged.variants["champion"] == 200 and judged.errors == 0
    assert divergence["champion_samples"] >= champion.variants["champion"] and verdict["bake"]["errors_5xx"] == 0


def test_a_5xx_burst_is_rolled_back_by_the_alarm_and_the_run_records_it(aws, tmp_path):
    before = describe(aws)["EndpointConfigName"]
    traffic = Traffic(aws, MODEL, 30, "5xx", tmp_path)
    execution, record = run_with(aws, "errors.csv", 6, traffic, shift=2.0)  # drifted from the new champion
    assert (execution["status"], record["outcome"]) == ("SUCCEEDED", "rolled_back"), record["message"]
    guarded = record["guardrails"]
    assert guarded["next"] == "rolled_back" and guarded["config"] == before != guarded["expected_config"]
    assert "refit-guard--guardrails-5xx" in guarded["reason"] and "refit-guard--guardrails-5xx" in record["message"]
    assert {a["name"]: a["state"] for a in guarded["alarms"]}["refit-guard--guardrails-5xx"] == "ALARM"
    assert traffic.errors > 0  # the new fleet took the traffic and failed it
    assert_serves(aws, record, before)  # the champion serves again
    rejected = package(aws, record)
    assert rejected["ModelApprovalStatus"] == "Rejected" and "guardrails-5xx" in rejected["ApprovalDescription"]


def test_a_rollback_that_fails_ends_the_run_failed_with_the_endpoints_true_state(aws, tmp_path):
    before = describe(aws)["EndpointConfigName"]
    traffic = Traffic(aws, MODEL, 30, "5xx", tmp_path)
    runs_failed = aws.model(MODEL).runs_failed_alarm
    aws.set_alarm_state(runs_failed, "OK", "before the failing run")  # ALARM afterwards is this run's
    aws.bridges.fail_guarded_rollbacks = True
    try:
        execution, record = run_with(aws, "broken.csv", 9, traffic, shift=2.0)
    finally:
        aws.bridges.fail_guarded_rollbacks = False
    assert (execution["status"], record["status"], record["outcome"]) == ("FAILED", "FAILED", "failed")
    assert alarm_state(aws, runs_failed, "ALARM") == "ALARM"  # alarmed: Step Functions' ExecutionsFailed
    assert "GuardedUpdateFailed" in record["error"] and "UpdateRollbackFailed" in record["error"]
    true_state = describe(aws)
    assert true_state["EndpointStatus"] == "UpdateRollbackFailed"
    for seen in (record["guardrails"], record["endpoint"]):  # as the status check saw it and as Finalize read it
        assert (seen["status"], seen["config"]) == ("UpdateRollbackFailed", true_state["EndpointConfigName"])
        assert seen["variants"] == [{"name": "champion", "weight": 1.0}]
        assert "rollback failed" in seen["failure_reason"]
    assert package(aws, record)["ModelApprovalStatus"] == "Rejected"
    # SageMaker's remedy is another UpdateEndpoint, an operator's call: it puts the champion back.
    aws.client("sagemaker").update_endpoint(EndpointName=aws.model(MODEL).endpoint_name, EndpointConfigName=before)
    assert describe(aws)["EndpointStatus"] == "InService"
    assert "probabilities" in json.loads(aws.invoke_endpoint(MODEL, ROW)["body"])
    assert_registry_agrees(aws)  # the champion the run left marked is the one serving again
