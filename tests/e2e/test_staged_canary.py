"""The staged canary on the local runtime (`canary.steps = [0.2, 0.5]`): every step is judged against the champion on
the same window from the real serve processes' CloudWatch metrics. A quiet window, a challenger that answers 5XX
and one that is slow at p99 (its mean within `max_model_latency_ms`; the p99 rule at the example's margin, 3.0 x the
champion's p99 with significantly more requests over it) are each rolled back at the first step; a
challenger whose predictions diverge from what its holdout disagreement with the champion predicts is rolled back at
the first step too; a healthy one is promoted through both steps. The faulty challengers are test-side wrappers of the model artifact the run
trained (a first pipeline step that raises or sleeps), written over its model.tar.gz the moment its training job ends,
before Register records the model file's SHA-256: as if training had produced the faulty model (a file changed after
registration is refused at load, refit_core.artifacts).
In every case the champion keeps serving and the audit record agrees with the endpoint. The tests share one runtime
and run in order: the first deploys the champion every later run is judged against."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes
from tests.e2e.helpers import LAST_TRAFFIC, SLOW_SECONDS, FaultAfterTraining, Traffic, alarm_state, separate_windows

MODEL = "staged"  # steps [0.2, 0.5] (tests/assemblies.py)


@pytest.fixture(scope="module")
def aws(modes_assembly, tmp_path_factory):
    with LocalRuntime(modes_assembly, tmp_path_factory.mktemp("runtime-staged"), spot_discount=0.7, seed=5) as runtime:
        yield runtime


def run_with(aws, batch_name: str, seed: int, traffic: Traffic | None, shift: float = 1.0) -> tuple[dict, dict]:
    aws.on_wait("Wait for endpoint (deploy)", separate_windows)
    if traffic is not None:
        aws.on_wait("Bake canary", traffic)
        if traffic.fault:
            aws.on_wait("Wait for training", FaultAfterTraining(aws, traffic.fault, traffic.scratch))
    try:
        execution = aws.wait_for(
            aws.land_batch(MODEL, batch_name, to_csv_bytes(churn_batch(3000, seed, shift=shift))), timeout=600
        )
    finally:
        aws.on_wait("Bake canary", None)
        aws.on_wait("Wait for training", None)
        aws.on_wait("Wait for endpoint (deploy)", None)
        if traffic is not None:
            LAST_TRAFFIC["at"] = traffic.last_request
    name = execution["executionArn"].rsplit(":", 1)[-1]
    record = next(r for r in aws.audit_records(MODEL) if r["execution"] == name)
    return execution, json.loads(json.dumps(record, default=float))  # DynamoDB numbers are Decimals


def endpoint_config(aws) -> str:
    return aws.client("sagemaker").describe_endpoint(EndpointName=aws.model(MODEL).endpoint_name)["EndpointConfigName"]


def assert_champion_serves(aws, record, expected_config: str) -> None:
    """The endpoint is on `expected_config` with the champion alone, answers, and the audit record says so."""
    assert endpoint_config(aws) == expected_config == record["endpoint"]["config"]
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}
    assert [(v["name"], v["weight"]) for v in record["endpoint"]["variants"]] == [("champion", 1.0)]
    reply = aws.invoke_endpoint(MODEL, "12.0,70.5,1,48.0,basic,north")
    assert reply["variant"] == "champion" and "probabilities" in json.loads(reply["body"])
    LAST_TRAFFIC["at"] = datetime.now(UTC)


def assert_rolled_back_at_first_step(aws, record, reason: str, before: str) -> dict:
    assert record["outcome"] == "rolled_back", (record["outcome"], record["message"])
    canary = record["canary"]
    assert canary["next"] == "rollback" and len(canary["steps"]) == 1
    step = canary["steps"][0]
    assert step["step"] == 0 and step["weight"] == 0.2 and not step["healthy"]
    assert {v["name"]: v["weight"] for v in step["endpoint_weights"]} == {"champion": 0.8, "challenger": 0.2}
    assert reason in step["reason"] and reason in record["message"]
    assert_champion_serves(aws, record, before)
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=record["registry"]["model_package_arn"])
    assert package["ModelApprovalStatus"] == "Rejected"
    return step


def p99_regressed(step: dict) -> bool:
    """The p99 rule's outcome on a judged step: within the margin, or over it without significantly more slow
    requests, is no regression (its test's p-value is in the evidence whenever the ratio is over the margin)."""
    return step["p99_tail"] is not None and step["p99_tail"]["p_value"] < step["p99_tail"]["alpha"]


def test_the_first_batch_deploys_the_champion(aws):
    execution = aws.wait_for(aws.land_batch(MODEL, "first.csv", to_csv_bytes(churn_batch(3000, 1))), timeout=600)
    assert execution["status"] == "SUCCEEDED"
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}


def test_a_quiet_window_is_not_promoted(aws):
    before = endpoint_config(aws)
    execution, record = run_with(aws, "quiet.csv", 5, None)
    step = assert_rolled_back_at_first_step(aws, record, "quiet window: the challenger saw 0 invocations", before)
    assert step["challenger"]["invocations"] == 0 and step["p99_latency_ratio"] is None


def test_a_5xx_burst_is_rolled_back_at_the_first_step(aws, tmp_path):
    before = endpoint_config(aws)
    # 300 requests: ~60 reach the challenger at 20%, so a minute holds at least the alarm's min_invocations (20) of
    # them even when the bake straddles a minute boundary.
    traffic = Traffic(aws, MODEL, 300, "5xx", tmp_path)
    execution, record = run_with(aws, "errors.csv", 6, traffic)
    # The stack's canary alarm (the challenger's 5XX rate in a minute, over max_error_rate with at least
    # min_invocations), evaluated from the router's metrics, is the first rule to fail the step; on a loaded machine
    # the bake can spread its ~60 challenger requests over minutes that each hold fewer than min_invocations, and the
    # step's own 5XX ceiling fails it instead. Either way the step's evidence has both variants' numbers.
    alarmed = record["canary"]["steps"][0]["alarm_state"] == "ALARM"
    reason = "the canary alarm is in ALARM" if alarmed else "challenger 5XX error rate 100.00% is over 1.00%"
    step = assert_rolled_back_at_first_step(aws, record, reason, before)
    assert step["challenger"]["rate_5xx"] == 1.0
    assert traffic.bakes == 1 and "challenger" not in traffic.variants  # every challenger request failed
    assert step["challenger"]["errors_5xx"] == step["challenger"]["invocations"] == traffic.errors > 0
    assert step["champion"]["errors_5xx"] == 0 and step["champion"]["invocations"] == traffic.variants["champion"]


def test_a_p99_regression_against_the_champion_is_rolled_back_while_the_mean_is_within_its_limit(aws, tmp_path):
    before = endpoint_config(aws)
    traffic = Traffic(aws, MODEL, 700, "slow", tmp_path, clients=1)
    execution, record = run_with(aws, "slow.csv", 7, traffic)
    step = assert_rolled_back_at_first_step(aws, record, "challenger p99 model latency", before)
    challenger, champion = step["challenger"], step["champion"]
    assert challenger["invocations"] == traffic.variants["challenger"] >= 100 and step["p99_judged"]
    assert SLOW_SECONDS * 1000 <= challenger["mean_latency_ms"] < 1000  # the old mean-latency limit passes it
    assert challenger["p99_latency_ms"] >= SLOW_SECONDS * 1000 and step["p99_latency_ratio"] > 3.0
    assert champion["p99_latency_ms"] * step["p99_latency_ratio"] == pytest.approx(challenger["p99_latency_ms"], 1e-3)
    # Most slowed requests are over the margin (3.0 x the champion's p99; under load the champion's p99 nears the
    # injected 0.4 s), significantly more than the champion's, counted over the same samples as the window's.
    tail = step["p99_tail"]
    assert tail["challenger_samples"] == challenger["latency_samples"] and tail["challenger_share"] > 0.5
    assert tail["champion_samples"] == champion["latency_samples"] and tail["p_value"] < 0.01
    assert "requests over" in step["reason"]


def test_a_challenger_whose_predictions_diverge_is_rolled_back_at_the_first_step(aws, tmp_path):
    before = endpoint_config(aws)
    traffic = Traffic(aws, MODEL, 700, "diverge", tmp_path)
    execution, record = run_with(aws, "diverge.csv", 9, traffic)
    step = assert_rolled_back_at_first_step(aws, record, "prediction divergence: the challenger's live outputs", before)
    divergence = step["divergence"]
    assert divergence["status"] == "judged" and divergence["diverged"] and divergence["p_value"] < 0.01 / 2
    # Judged on the captured outputs of this step's window, every request of each variant (capture_percent = 100).
    assert divergence["challenger_samples"] == traffic.variants["challenger"] >= 100
    assert divergence["champion_samples"] == traffic.variants["champion"]
    # No error, latency or alarm rule would have stopped it.
    assert step["challenger"]["errors_5xx"] == 0 and step["p_value_4xx"] == 1.0 and step["alarm_state"] != "ALARM"
    assert step["p99_judged"] and not p99_regressed(step)


def test_a_healthy_challenger_is_promoted_through_every_step(aws):
    before = endpoint_config(aws)
    traffic = Traffic(aws, MODEL, 700)
    execution, record = run_with(aws, "healthy.csv", 8, traffic)
    assert (execution["status"], record["outcome"]) == ("SUCCEEDED", "promoted"), record["message"]
    steps = record["canary"]["steps"]
    assert [s["step"] for s in steps] == [0, 1] and [s["weight"] for s in steps] == [0.2, 0.5]
    assert [{v["name"]: v["weight"] for v in s["endpoint_weights"]} for s in steps] == [
        {"champion": 0.8, "challenger": 0.2},
        {"champion": 0.5, "challenger": 0.5},
    ]
    assert all(s["healthy"] for s in steps) and traffic.bakes == 2
    for s in steps:
        assert s["challenger"]["invocations"] >= 100 and s["champion"]["invocations"] >= 100
        assert s["p99_judged"] and not p99_regressed(s) and s["p_value_5xx"] == 1.0
        assert s["divergence"]["status"] == "judged" and s["divergence"]["diverged"] is False
    assert record["canary"]["next"] == "promote"
    assert record["endpoint"]["config"] != before
    assert_champion_serves(aws, record, record["endpoint"]["config"])


def test_a_rollback_that_fails_ends_the_run_failed_with_the_endpoints_true_state(aws):
    """Last in the module: it leaves the endpoint Failed. The canary is rolled back (a quiet window) and the rollback's
    UpdateEndpoint back to the champion's config ends Failed; SageMaker then allows only DeleteEndpoint, so the run
    cannot restore it: it ends FAILED (what the run-failed alarm counts) and the audit record holds the endpoint as
    it is, not as the run wanted it."""
    before = endpoint_config(aws)
    aws.fail_endpoint_update(MODEL, before, "Failed", "simulated: the champion's instances did not start")
    runs_failed = aws.model(MODEL).runs_failed_alarm
    aws.set_alarm_state(runs_failed, "OK", "before the run whose rollback fails")  # ALARM below is this run's doing
    # Shifted further than any earlier batch: it drifts from whichever champion serves (run alone or after the rest).
    execution, record = run_with(aws, "rollback-fails.csv", 10, None, shift=2.0)
    assert (execution["status"], record["status"], record["outcome"]) == ("FAILED", "FAILED", "failed")
    assert record["message"].startswith("EndpointUpdateFailed: endpoint is Failed: simulated: the champion's")
    assert "restoring the endpoint failed too" in record["message"] and "it needs a person" in record["message"]
    assert "quiet window" in record["canary"]["reason"] and record["canary"]["next"] == "rollback"
    # Alarmed: the runtime publishes Step Functions' ExecutionsFailed for the run, and the run-failed alarm fires on it.
    assert alarm_state(aws, runs_failed, "ALARM") == "ALARM"
    described = aws.client("sagemaker").describe_endpoint(EndpointName=aws.model(MODEL).endpoint_name)
    assert described["EndpointStatus"] == record["endpoint"]["status"] == "Failed"
    assert described["EndpointConfigName"] == record["endpoint"]["config"] != before  # still the canary's config
    assert record["endpoint"]["failure_reason"] == described["FailureReason"]
    # The rollback cut the challenger's traffic before its UpdateEndpoint failed: the champion takes it all.
    assert {v["name"]: v["weight"] for v in record["endpoint"]["variants"]} == aws.endpoint_weights(MODEL)
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0, "challenger": 0.0}
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=record["registry"]["model_package_arn"])
    assert package["ModelApprovalStatus"] == "Rejected"
