"""`deploy.mode = "ab"` on the local runtime, from the synthesized template: the challenger serves half of the traffic
for the test's duration (two Waits: the run re-checks the endpoint once before deciding), and the live ROC AUC of each
variant on its own labelled rows — captured traffic joined with ground truth by the monitor, labels fed as
tests/e2e/test_closed_loop.py feeds them — decides. The first batch deploys a champion trained on the old market; every
later batch comes from the shifted market (the rule changed), so each challenger passes the gate and is tried live:
- too few labels by the end of the test: not promoted;
- traffic from a market that moved the other way (light users churn all the more), where the champion's rule holds
  and the challenger's does not: rolled back;
- traffic from a market that moved further the challenger's way, where it is better: promoted.
In every case the champion keeps serving (or the winner takes all the traffic), and the registry and audit record
agree with the endpoint. The tests share one runtime and run in order."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes
from tests.assemblies import AB_MIN_LABELLED_ROWS as MIN_LABELLED_ROWS
from tests.e2e.helpers import SLOW_SECONDS, FaultAfterTraining, Traffic, alarm_state
from tests.infrastructure.test_step_contract import contract_problems, load

MODEL = "abtest"  # deploy.mode ab, half the traffic, one linear trial (tests/assemblies.py)
ROWS_PER_REQUEST = 20


@pytest.fixture(scope="module")
def aws(runs_assembly, tmp_path_factory):
    with LocalRuntime(runs_assembly, tmp_path_factory.mktemp("runtime-ab"), spot_discount=0.7, seed=5) as runtime:
        yield runtime


class LiveTest:
    """A "Wait AB test" hook: during the first Wait, requests (one variant each, `ROWS_PER_REQUEST` rows), then labels
    for `labelled` of their rows, then a monitor run, which reads both; the later Wait only passes time."""

    def __init__(
        self, aws: LocalRuntime, tag: str, seed: int, rows: int, shift: float, labelled: int | None = None
    ) -> None:
        self.aws, self.tag, self.seed, self.rows, self.shift, self.labelled = aws, tag, seed, rows, shift, labelled
        self.waits = 0
        self.served: dict[str, int] = {}
        self.weights: dict[str, float] = {}

    def __call__(self, state: str, seconds: int) -> None:
        self.waits += 1
        if self.waits > 1:
            return
        self.weights = self.aws.endpoint_weights(MODEL)  # the split, while the test runs
        frame = churn_batch(self.rows, self.seed, shift=self.shift)
        keys, variants = [], []
        for start in range(0, self.rows, ROWS_PER_REQUEST):
            part = frame.iloc[start : start + ROWS_PER_REQUEST]
            inference_id = f"{self.tag}-{start // ROWS_PER_REQUEST:05d}"
            reply = self.aws.invoke_endpoint(
                MODEL, part.drop(columns=["churned"]).to_csv(index=False, header=False), inference_id=inference_id
            )
            keys += [f"{inference_id}:{i}" for i in range(len(part))]
            variants += [reply["variant"]] * len(part)
        self.aws.flush_capture()
        frame = frame.assign(inference_id=keys, variant=variants).iloc[: self.labelled]
        self.served = frame["variant"].value_counts().to_dict()
        hour = datetime.now(UTC).strftime("%Y/%m/%d/%H")
        body = frame[["inference_id", "churned"]].rename(columns={"churned": "label"}).to_csv(index=False).encode()
        self.aws.put_object(self.aws.data_bucket, f"ground-truth/{MODEL}/{hour}/{self.tag}.csv", body)
        self.aws.run_monitor(MODEL)


def run_with(
    aws: LocalRuntime,
    batch: str,
    seed: int,
    live: Callable[[str, int], None],
    shift: float = 1.0,
    fault: FaultAfterTraining | None = None,
) -> tuple[dict, dict]:
    aws.on_wait("Wait AB test", live)
    if fault is not None:
        aws.on_wait("Wait for training", fault)
    try:
        execution = aws.wait_for(
            aws.land_batch(MODEL, batch, to_csv_bytes(churn_batch(1500, seed, shift=shift))), timeout=600
        )
    finally:
        aws.on_wait("Wait AB test", None)
        aws.on_wait("Wait for training", None)
    name = execution["executionArn"].rsplit(":", 1)[-1]
    record = next(r for r in aws.audit_records(MODEL) if r["execution"] == name)
    return execution, json.loads(json.dumps(record, default=float))  # DynamoDB numbers are Decimals


def endpoint_config(aws: LocalRuntime) -> str:
    return aws.client("sagemaker").describe_endpoint(EndpointName=aws.model(MODEL).endpoint_name)["EndpointConfigName"]


def package(aws: LocalRuntime, arn: str) -> dict:
    return aws.client("sagemaker").describe_model_package(ModelPackageName=arn)


def assert_tested_and_rolled_back(aws: LocalRuntime, record: dict, live: LiveTest, result: str, before: str) -> dict:
    """The test ran its two Waits, was decided `result`, rolled back: the champion alone serves on its old config, the
    record says so, and the registry marks the challenger Rejected with the test's reason."""
    ab = record["ab"]
    assert (record["status"], record["outcome"], ab["result"], ab["next"]) == (
        "SUCCEEDED",
        "rolled_back",
        result,
        "rollback",
    ), record["message"]
    assert live.waits == 2 and ab["checks"] == 2 and ab["remaining_seconds"] == 0
    assert live.weights == {"champion": 0.5, "challenger": 0.5}
    assert_rolled_back(aws, record, result, before)
    return ab


def assert_rolled_back(aws: LocalRuntime, record: dict, result: str, before: str) -> None:
    """The run says the test ended `result` and rolled back; the champion alone serves on its old config and
    answers, as the record says; the registry marks the challenger Rejected with the test's reason."""
    ab = record["ab"]
    assert record["message"].startswith(f"A/B test {result.replace('_', ' ')}, rolled back: ") and ab["reason"]
    assert endpoint_config(aws) == before == record["endpoint"]["config"]
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}
    assert [(v["name"], v["weight"]) for v in record["endpoint"]["variants"]] == [("champion", 1.0)]
    rejected = package(aws, record["registry"]["model_package_arn"])
    assert rejected["ModelApprovalStatus"] == "Rejected"
    assert ab["reason"][:100] in rejected["ApprovalDescription"]
    assert rejected["CustomerMetadataProperties"]["refit:rejected_run"] == record["run_id"]
    reply = aws.invoke_endpoint(MODEL, "12.0,70.5,1,48.0,basic,north")
    assert reply["variant"] == "champion" and "probabilities" in json.loads(reply["body"])


def test_the_ab_branch_is_built_and_its_paths_are_in_the_step_contract(runs_assembly):
    definition, handlers = load(runs_assembly, MODEL)
    states = definition["States"]
    assert {"Start AB test", "Wait AB test", "Judge AB test", "AB verdict?", "Promote challenger"} <= set(states)
    assert not [name for name in states if "anary" in name and name != "Roll back canary"]  # no unreachable state
    assert states["Deploy challenger"]["Parameters"]["challenger_share"] == 0.5
    assert contract_problems(definition, handlers) == []


def test_the_first_batch_deploys_the_champion(aws):
    execution = aws.wait_for(aws.land_batch(MODEL, "first.csv", to_csv_bytes(churn_batch(1500, 1))), timeout=600)
    assert execution["status"] == "SUCCEEDED"
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}


def test_too_few_labels_by_the_end_of_the_test_is_no_promotion(aws):
    before = endpoint_config(aws)
    live = LiveTest(aws, "few", 201, rows=300, shift=1.0, labelled=150)
    execution, record = run_with(aws, "few.csv", 5, live)
    ab = assert_tested_and_rolled_back(aws, record, live, "too_few_labels", before)
    counts = (ab["challenger"]["labelled_rows"], ab["champion"]["labelled_rows"])
    assert counts == (live.served.get("challenger", 0), live.served.get("champion", 0)) and sum(counts) == 150
    assert ab["p_value"] is None and ab["test"] is None  # never tested, whatever the difference
    assert ab["challenger"]["captured_rows"] + ab["champion"]["captured_rows"] == 300
    assert f"at least {MIN_LABELLED_ROWS} per variant needed" in ab["reason"]


def test_a_challenger_worse_on_live_labels_is_rolled_back(aws):
    """Traffic from a market that moved the other way (`shift` -1), where the champion's rule holds."""
    before = endpoint_config(aws)
    live = LiveTest(aws, "back", 202, rows=2000, shift=-1.0)
    execution, record = run_with(aws, "worse.csv", 6, live)
    ab = assert_tested_and_rolled_back(aws, record, live, "lost", before)
    assert ab["test"] == "delong_independent" and ab["p_value_worse"] < 0.05 and ab["difference"] < 0
    assert ab["challenger"]["labelled_rows"] == live.served["challenger"] >= MIN_LABELLED_ROWS
    assert ab["champion"]["labelled_rows"] == live.served["champion"] >= MIN_LABELLED_ROWS


def test_a_challenger_better_on_live_labels_is_promoted(aws):
    """Traffic from a market that moved further the way the challenger learned (`shift` 1.5)."""
    before = endpoint_config(aws)
    champion_arn = package(aws, _serving_package(aws))["ModelPackageArn"]
    live = LiveTest(aws, "further", 203, rows=2000, shift=1.5)
    execution, record = run_with(aws, "better.csv", 7, live)
    ab = record["ab"]
    assert (execution["status"], record["outcome"], ab["result"], ab["next"]) == (
        "SUCCEEDED",
        "promoted",
        "won",
        "promote",
    ), record["message"]
    assert record["message"].startswith("A/B test won, challenger promoted: challenger better: live roc_auc")
    assert ab["p_value"] < 0.05 and ab["ci_low"] > 0 and ab["checks"] == 2
    assert live.weights == {"champion": 0.5, "challenger": 0.5}
    assert ab["challenger"]["labelled_rows"] == live.served["challenger"] >= MIN_LABELLED_ROWS
    assert ab["champion"]["labelled_rows"] == live.served["champion"] >= MIN_LABELLED_ROWS
    # The winner takes all the traffic; the registry and the record agree with the endpoint.
    config = endpoint_config(aws)
    assert config != before and config == record["endpoint"]["config"]
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}
    assert _serving_package(aws) == record["registry"]["model_package_arn"]
    winner = package(aws, record["registry"]["model_package_arn"])
    assert (
        winner["ModelApprovalStatus"] == "Approved" and winner["CustomerMetadataProperties"]["refit:serving"] == "true"
    )
    loser = package(aws, champion_arn)["CustomerMetadataProperties"]
    assert "refit:serving" not in loser and loser["refit:replaced_by_run"] == record["run_id"]
    assert loser["refit:replaced_reason"].startswith("lost the A/B test: challenger better: live roc_auc")


def _serving_package(aws: LocalRuntime) -> str:
    """The package the endpoint's champion variant serves (its model's environment names it)."""
    sagemaker = aws.client("sagemaker")
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint_config(aws))
    model = next(v["ModelName"] for v in config["ProductionVariants"] if v["VariantName"] == "champion")
    return sagemaker.describe_model(ModelName=model)["PrimaryContainer"]["Environment"]["REFIT_MODEL_PACKAGE_ARN"]


# The harmful challengers below are test-side wrappers of the model artifact the run trained, written over its
# model.tar.gz the moment its training job ends (tests/e2e/helpers.py, as in the staged canary's module). Their batches
# are shifted further than any earlier one (2.0): they drift from the champion, whichever earlier test promoted it.


def test_a_challenger_slow_at_p99_ends_the_test_at_once_while_its_mean_is_within_the_limit(aws, tmp_path):
    """One request in ten sleeps (TAIL_EVERY; at one in twenty the p99 rule's significance at the guards' level was
    borderline and a loaded run needed a second check): the guards at the first check find its p99 over
    max_p99_latency_ratio (3.0 here)
    times the champion's on the window since the split began, its mean far under max_model_latency_ms; the test
    ends (`harmed`) without waiting for the duration or reading a label, and the run rolls back."""
    before = endpoint_config(aws)
    # One caller: concurrent requests would queue behind a slow one (a local serve process has one worker). 260
    # requests give each variant at least min_latency_samples (100) at the 50% split.
    traffic = Traffic(aws, MODEL, 260, clients=1)
    execution, record = run_with(
        aws, "slow.csv", 8, traffic, shift=2.0, fault=FaultAfterTraining(aws, "slow_tail", tmp_path)
    )
    ab = record["ab"]
    assert (execution["status"], record["status"], record["outcome"], ab["result"], ab["next"]) == (
        "SUCCEEDED",
        "SUCCEEDED",
        "rolled_back",
        "harmed",
        "rollback",
    ), record["message"]
    assert traffic.bakes == 1 and ab["checks"] == 1 and ab["remaining_seconds"] == 1  # the first of two Waits
    assert "challenger p99 model latency" in ab["reason"] and ab["reason"].endswith("the test ends 1 s early")
    assert ab["p_value"] is None and ab["challenger"] is None  # no A/B decision was taken
    guards = ab["guards"]
    challenger, champion = guards["challenger"], guards["champion"]
    assert not guards["healthy"] and guards["p99_judged"] and guards["p99_latency_ratio"] > 3.0
    assert traffic.errors == 0 and challenger["errors_5xx"] == 0 and guards["alarm_state"] != "ALARM"
    # The window holds this run's requests (and any of earlier runs in the split's first minute).
    assert challenger["latency_samples"] >= traffic.variants["challenger"] >= 100
    assert champion["latency_samples"] >= traffic.variants["champion"] >= 100
    assert challenger["p99_latency_ms"] >= SLOW_SECONDS * 1000 > challenger["mean_latency_ms"]
    assert challenger["mean_latency_ms"] < 1000  # canary.max_model_latency_ms: the old mean-latency limit passes it
    assert champion["p99_latency_ms"] * guards["p99_latency_ratio"] == pytest.approx(challenger["p99_latency_ms"], 1e-3)
    assert guards["divergence"]["status"] in ("judged", "not_judged")  # recorded; it decides nothing by default
    assert_rolled_back(aws, record, "harmed", before)


def test_a_5xx_burst_ends_the_test_at_once_and_a_rollback_that_fails_ends_the_run_failed(aws, tmp_path):
    """Last in the module: it leaves the endpoint Failed. A challenger that answers 5XX fires the canary alarm (the
    challenger's 5XX rate in a minute, from the router's metrics) and the first check ends the test (`errors`),
    the guards' numbers kept with it; the rollback's UpdateEndpoint back to the champion's config ends Failed, and
    SageMaker then allows only DeleteEndpoint, so the run cannot restore it: it ends FAILED (what the run-failed
    alarm counts), the audit record holds the endpoint as it is, and the registry marks the challenger Rejected."""
    before = endpoint_config(aws)
    aws.fail_endpoint_update(MODEL, before, "Failed", "simulated: the champion's instances did not start")
    # 120 requests: ~60 reach the challenger, so a minute holds at least the alarm's min_invocations (20) of them
    # even when the burst straddles a minute boundary.
    traffic = Traffic(aws, MODEL, 120)
    runs_failed = aws.model(MODEL).runs_failed_alarm
    aws.set_alarm_state(runs_failed, "OK", "before the failing run")  # ALARM afterwards is this run's
    execution, record = run_with(
        aws, "errors.csv", 9, traffic, shift=2.0, fault=FaultAfterTraining(aws, "5xx", tmp_path)
    )
    assert (execution["status"], record["status"], record["outcome"]) == ("FAILED", "FAILED", "failed")
    assert alarm_state(aws, runs_failed, "ALARM") == "ALARM"  # alarmed: Step Functions' ExecutionsFailed
    assert record["message"].startswith("EndpointUpdateFailed: endpoint is Failed: simulated: the champion's")
    assert "restoring the endpoint failed too" in record["message"] and "it needs a person" in record["message"]
    ab = record["ab"]
    assert (ab["result"], ab["next"], ab["checks"], ab["remaining_seconds"]) == ("errors", "rollback", 1, 1)
    assert ab["reason"].startswith("the challenger's error alarm ") and "is in ALARM" in ab["reason"]
    guards = ab["guards"]
    assert guards["alarm_state"] == "ALARM" and not guards["healthy"]
    assert traffic.bakes == 1 and "challenger" not in traffic.variants  # every challenger request failed
    # The window may also hold the previous run's healthy requests of the split's first minute: no 5XX among them.
    assert guards["challenger"]["invocations"] >= guards["challenger"]["errors_5xx"] == traffic.errors > 0
    assert guards["champion"]["errors_5xx"] == 0 and guards["champion"]["invocations"] >= traffic.variants["champion"]
    described = aws.client("sagemaker").describe_endpoint(EndpointName=aws.model(MODEL).endpoint_name)
    assert described["EndpointStatus"] == record["endpoint"]["status"] == "Failed"
    assert described["EndpointConfigName"] == record["endpoint"]["config"] != before  # still the A/B config
    assert record["endpoint"]["failure_reason"] == described["FailureReason"]
    # The rollback cut the challenger's traffic before its UpdateEndpoint failed: the champion takes it all.
    assert {v["name"]: v["weight"] for v in record["endpoint"]["variants"]} == aws.endpoint_weights(MODEL)
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0, "challenger": 0.0}
    rejected = package(aws, record["registry"]["model_package_arn"])
    assert rejected["ModelApprovalStatus"] == "Rejected"
    assert rejected["CustomerMetadataProperties"]["refit:rejected_run"] == record["run_id"]
    assert rejected["ApprovalDescription"].startswith(f"rejected by refit run {record['run_id']}"), rejected
    assert not record.get("serving_update")  # the registry still names the champion as serving
    # The run's summary goes to the topic the run-failed alarm notifies, saying what the test saw.
    summary = next(s for s in aws.published_summaries() if record["run_id"] in s["message"])
    assert summary["subject"] == f"refit {MODEL}: FAILED (failed)"
    assert "A/B test: errors after 1 check(s) - the challenger's error alarm" in summary["message"]
