"""`deploy.mode = "shadow"` on the local runtime, end to end through the synthesized state machine: the challenger
runs as the endpoint's shadow variant and receives a copy of every request (sampling_percent = 100) during the bake,
while callers only ever get the champion's replies; it is then judged against the champion on the same window and
promoted (a healthy challenger) or dropped: a bake without traffic (quiet, never a pass), one whose predictions
diverge beyond what its holdout disagreement predicts, one slow at p99 against the champion while its mean is far
within the fixed ceiling, one whose model raises (callers never saw a 5XX). The champion keeps serving and the registry
and audit record agree with the endpoint. The tests share one runtime and run in order: the first deploys the
champion, and the order keeps each bake's window free of what would decide it for another reason (CloudWatch starts a
window on a whole minute and runs here are seconds apart: the quiet bake comes before any request, the diverging
shadow before the slow one, and the 5XX shadow after every shadow judged on latency or predictions). The synthesized template is checked here too: the deploy
branch is the shadow's, its paths are in the step contract, and the Deploy role gains only the capture prefix (cdk-nag
and cfn-lint on the e2e assembly: tests/infrastructure/test_stack.py)."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes
from tests.assemblies import SHADOW_MIN_LATENCY_SAMPLES
from tests.e2e.helpers import TAIL_SLOW_SECONDS, FaultAfterTraining, alarm_state
from tests.infrastructure.test_step_contract import contract_problems, load

MODEL = "shadow"  # deploy.mode shadow, sampling_percent 100, bake_seconds 5 (tests/assemblies.py)
PER_BAKE = 100  # over SHADOW_MIN_LATENCY_SAMPLES: each bake's p99 is judged, from more than its largest value


@pytest.fixture(scope="module")
def aws(modes_assembly, tmp_path_factory):
    with LocalRuntime(modes_assembly, tmp_path_factory.mktemp("runtime-shadow"), seed=13) as runtime:
        yield runtime


class Traffic:
    """Requests during the bake, as callers see them; the endpoint as DescribeEndpoint shows it then."""

    def __init__(self, aws) -> None:
        self.aws = aws
        self.replies: dict[str, int] = {}
        self.errors = 0
        self.endpoint: dict | None = None

    def __call__(self, state: str, seconds: int) -> None:
        name = self.aws.model(MODEL).endpoint_name
        self.endpoint = self.aws.client("sagemaker").describe_endpoint(EndpointName=name)
        rows = churn_batch(PER_BAKE, 200, shift=1.0).drop(columns=["churned"])
        for line in rows.to_csv(index=False, header=False).splitlines():
            try:
                reply = self.aws.invoke_endpoint(MODEL, line)
                assert "probabilities" in json.loads(reply["body"])
                self.replies[reply["variant"]] = self.replies.get(reply["variant"], 0) + 1
            except ClientError:
                self.errors += 1
        self.aws.flush_capture()  # SageMaker delivers capture within minutes; the bake on AWS must be longer


def run_with(
    aws, batch_name: str, seed: int, shift: float, traffic: Traffic | None, fault_scratch=None, fault: str = "5xx"
) -> tuple[dict, dict]:
    """A run on a new batch; `traffic` during the bake (None: a quiet bake), the challenger wrapped with `fault`."""
    if traffic is not None:
        aws.on_wait("Bake shadow", traffic)
    if fault_scratch is not None:
        aws.on_wait("Wait for training", FaultAfterTraining(aws, fault, fault_scratch))
    try:
        execution = aws.wait_for(
            aws.land_batch(MODEL, batch_name, to_csv_bytes(churn_batch(3000, seed, shift=shift))), timeout=600
        )
    finally:
        aws.on_wait("Bake shadow", None)
        aws.on_wait("Wait for training", None)
    name = execution["executionArn"].rsplit(":", 1)[-1]
    record = next(r for r in aws.audit_records(MODEL) if r["execution"] == name)
    return execution, json.loads(json.dumps(record, default=float))


def describe(aws) -> dict:
    return aws.client("sagemaker").describe_endpoint(EndpointName=aws.model(MODEL).endpoint_name)


def assert_champion_alone(aws, record, config: str) -> None:
    endpoint = describe(aws)
    assert endpoint["EndpointConfigName"] == config == record["endpoint"]["config"]
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0} and "ShadowProductionVariants" not in endpoint
    assert aws.invoke_endpoint(MODEL, "12.0,70.5,1,48.0,basic,north")["variant"] == "champion"


def assert_shadowed_during_the_bake(traffic: Traffic, shadow: dict, earlier: bool = False) -> None:
    """`earlier`: the previous run's last requests may be in this window, which CloudWatch starts on a whole minute
    (runs are seconds apart here; on AWS minutes). They had no shadow errors; nothing is waited out for them."""
    assert [v["VariantName"] for v in traffic.endpoint["ProductionVariants"]] == ["champion"]
    assert [v["VariantName"] for v in traffic.endpoint["ShadowProductionVariants"]] == ["challenger"]
    assert traffic.replies == {"champion": PER_BAKE} and traffic.errors == 0  # callers only saw the champion
    if earlier:
        assert shadow["champion"]["invocations"] >= shadow["challenger"]["invocations"] >= PER_BAKE
    else:
        assert shadow["champion"]["invocations"] == shadow["challenger"]["invocations"] == PER_BAKE
        assert shadow["copied_share"] == 1.0
    assert shadow["sampling_percent"] == 100


# ---------------------------------------------------------------- the template
def reachable(definition: dict, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        state = definition["States"][name]
        todo += [state[k] for k in ("Next", "Default") if k in state]
        todo += [c["Next"] for c in state.get("Choices", []) + state.get("Catch", [])]
    return seen


def test_the_deploy_branch_is_the_shadows_and_its_paths_are_in_the_step_contract(modes_assembly):
    definition, handlers = load(modes_assembly, MODEL)
    assert contract_problems(definition, handlers) == []
    states = reachable(definition, definition["StartAt"])
    assert {"Deploy shadow challenger", "Bake shadow", "Check shadow", "Shadow verdict?"} <= states
    assert not {"Deploy challenger", "Bake canary", "Check canary", "Shift canary"} & set(definition["States"])
    assert states == set(definition["States"])  # Step Functions refuses a state nothing reaches
    assert definition["States"]["Bake shadow"]["Seconds"] == 5
    assert definition["States"]["Deploy shadow challenger"]["Parameters"]["action"] == "start_shadow"
    verdict = definition["States"]["Shadow verdict?"]
    assert [c["Next"] for c in verdict["Choices"]] == ["Promote challenger"]
    assert verdict["Default"] == "Roll back canary"
    assert definition["States"]["Check shadow"]["Catch"][0]["Next"] == "Roll back canary"


def test_deploy_reads_its_capture_and_reports_prefixes_with_the_key_and_nothing_else_new(modes_assembly):
    template = json.loads((modes_assembly / "refit.template.json").read_text())
    policy = next(
        r["Properties"]["PolicyDocument"]["Statement"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::IAM::Policy"
        and r.get("Metadata", {}).get("aws:cdk:path", "").startswith(f"refit/Model-{MODEL}/Functions/DeployRole/")
    )
    reads = [s for s in policy if "s3:GetObject*" in s["Action"]]
    assert len(reads) == 1
    objects = [r for r in reads[0]["Resource"] if "Fn::Join" in r]
    # Captured outputs (the shadow's comparison, and in every mode the canary's prediction divergence) and the gate's
    # holdout reference (reports/<model>/*/gate.json): this model's prefixes only.
    assert sorted(r["Fn::Join"][1][-1] for r in objects) == [f"/capture/{MODEL}/*", f"/reports/{MODEL}/*"]
    assert any(
        a.startswith("kms:Decrypt")
        for s in policy
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    )
    assert not any("s3:PutObject" in s["Action"] for s in policy)


# ---------------------------------------------------------------- the runs
def test_the_first_batch_deploys_the_champion(aws):
    execution = aws.wait_for(aws.land_batch(MODEL, "first.csv", to_csv_bytes(churn_batch(3000, 1))), timeout=600)
    assert execution["status"] == "SUCCEEDED"
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}


def test_a_quiet_bake_is_not_promoted_and_the_endpoint_is_left_as_it_was(aws):
    """Second, before any request has reached the endpoint: a bake nobody calls is quiet, never a pass. The shadow is
    dropped (the registry and the audit record say quiet) and the endpoint is back on the champion's config. Nothing
    is invoked after it: the next test counts its window's requests exactly, and its champion answers them all."""
    before = describe(aws)["EndpointConfigName"]
    execution, record = run_with(aws, "quiet.csv", 11, 1.0, None)
    assert (execution["status"], record["outcome"]) == ("SUCCEEDED", "rolled_back"), record["message"]
    shadow = record["shadow"]
    assert not shadow["healthy"] and shadow["quiet"] and shadow["next"] == "rollback"
    assert record["message"].startswith("shadow dropped: quiet window: the challenger saw 0 invocations")
    assert shadow["challenger"]["invocations"] == shadow["champion"]["invocations"] == 0
    assert not shadow["p99_judged"] and shadow["p99_latency_ratio"] is None
    assert shadow["divergence"]["status"] == "not_judged"
    endpoint = describe(aws)
    assert endpoint["EndpointStatus"] == record["endpoint"]["status"] == "InService"
    assert endpoint["EndpointConfigName"] == before == record["endpoint"]["config"]
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0} and "ShadowProductionVariants" not in endpoint
    assert [(v["name"], v["weight"]) for v in record["endpoint"]["variants"]] == [("champion", 1.0)]
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=record["registry"]["model_package_arn"])
    assert package["ModelApprovalStatus"] == "Rejected" and "quiet window" in package["ApprovalDescription"]
    assert not record.get("serving_update")


def test_a_healthy_shadow_is_promoted(aws):
    before = describe(aws)["EndpointConfigName"]
    traffic = Traffic(aws)
    execution, record = run_with(aws, "healthy.csv", 8, 1.0, traffic)
    assert (execution["status"], record["outcome"]) == ("SUCCEEDED", "promoted"), record["message"]
    shadow = record["shadow"]
    assert shadow["healthy"] and shadow["next"] == "promote" and "predictions agree" in shadow["reason"]
    assert_shadowed_during_the_bake(traffic, shadow)
    divergence = shadow["divergence"]  # the canary's holdout-conditional test, on every copied request
    assert divergence["status"] == "judged" and not divergence["diverged"]
    assert divergence["champion_samples"] == divergence["challenger_samples"] == PER_BAKE
    assert shadow["p99_judged"] and shadow["p99_latency_ratio"] <= 3.0  # judged: PER_BAKE samples on each variant
    assert record["endpoint"]["config"] != before
    assert_champion_alone(aws, record, record["endpoint"]["config"])
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=record["registry"]["model_package_arn"])
    assert package["ModelApprovalStatus"] == "Approved"
    assert record["serving_update"]  # the registry marks the promoted version as the one serving


def test_a_shadow_whose_predictions_diverge_is_dropped_and_callers_never_see_them(aws, tmp_path):
    """After the healthy shadow (its requests may share this window's first minute: they answered alike). The shadow
    reads tenure in years: it answers at once and without errors, but not as its holdout disagreement with the
    champion predicts."""
    before = describe(aws)["EndpointConfigName"]
    traffic = Traffic(aws)
    execution, record = run_with(aws, "diverge.csv", 12, 2.0, traffic, fault_scratch=tmp_path, fault="diverge")
    assert (execution["status"], record["outcome"]) == ("SUCCEEDED", "rolled_back"), record["message"]
    shadow = record["shadow"]
    assert not shadow["healthy"] and not shadow["quiet"] and shadow["next"] == "rollback"
    assert record["message"].startswith("shadow dropped: shadow predictions diverge: ")
    assert_shadowed_during_the_bake(traffic, shadow, earlier=True)
    divergence = shadow["divergence"]
    assert divergence["status"] == "judged" and divergence["diverged"] and divergence["p_value"] < 0.01
    assert divergence["challenger_samples"] >= PER_BAKE and divergence["champion_samples"] >= PER_BAKE
    # No error, latency or alarm rule stopped it: the predictions did.
    assert shadow["challenger"]["errors_5xx"] == 0 and shadow["p_value_4xx"] == 1.0 and shadow["alarm_state"] != "ALARM"
    assert shadow["p99_judged"] and shadow["p99_latency_ratio"] <= 3.0
    assert_champion_alone(aws, record, before)
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=record["registry"]["model_package_arn"])
    assert (
        package["ModelApprovalStatus"] == "Rejected" and "shadow predictions diverge" in package["ApprovalDescription"]
    )
    assert not record.get("serving_update")


def test_a_shadow_slow_at_p99_is_dropped_while_its_mean_is_within_the_ceiling(aws, tmp_path):
    """The shadow sleeps TAIL_SLOW_SECONDS on one request in ten (10 of the bake's 100): its p99 is many times the
    champion's on the same window while its mean stays far under max_model_latency_ms (1000 ms), which alone would
    pass it. Callers only ever got the champion's answers. After the diverging shadow, whose copies may share this
    window's first minute: the latency rules are judged before the predictions, so the p99 decides."""
    before = describe(aws)["EndpointConfigName"]
    traffic = Traffic(aws)
    execution, record = run_with(aws, "slow.csv", 13, 2.0, traffic, fault_scratch=tmp_path, fault="slow_tenth")
    assert (execution["status"], record["outcome"]) == ("SUCCEEDED", "rolled_back"), record["message"]
    shadow = record["shadow"]
    assert not shadow["healthy"] and not shadow["quiet"] and shadow["next"] == "rollback"
    assert (
        record["message"].startswith("shadow dropped: challenger p99 model latency ") and "over 3.0" in shadow["reason"]
    )
    assert_shadowed_during_the_bake(traffic, shadow, earlier=True)
    challenger, champion = shadow["challenger"], shadow["champion"]
    assert (
        shadow["p99_judged"] and min(challenger["invocations"], champion["invocations"]) >= SHADOW_MIN_LATENCY_SAMPLES
    )
    assert challenger["p99_latency_ms"] >= TAIL_SLOW_SECONDS * 1000 and shadow["p99_latency_ratio"] > 3.0
    assert champion["p99_latency_ms"] * shadow["p99_latency_ratio"] == pytest.approx(challenger["p99_latency_ms"], 1e-3)
    assert challenger["mean_latency_ms"] < challenger["p99_latency_ms"] / 2  # the mean hides it
    assert challenger["errors_5xx"] == 0 and shadow["alarm_state"] != "ALARM"
    tail = shadow["p99_tail"]  # the p99 rule's significance: more of the shadow's requests over the margin
    assert tail["challenger_slow"] >= 10 > tail["champion_slow"] and tail["p_value"] < 0.01, tail
    assert_champion_alone(aws, record, before)
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=record["registry"]["model_package_arn"])
    assert package["ModelApprovalStatus"] == "Rejected" and "p99 model latency" in package["ApprovalDescription"]
    assert not record.get("serving_update")


def test_a_shadow_that_answers_5xx_is_dropped_and_callers_never_see_it(aws, tmp_path):
    before = describe(aws)["EndpointConfigName"]
    traffic = Traffic(aws)
    execution, record = run_with(
        aws, "errors.csv", 9, 2.0, traffic, fault_scratch=tmp_path
    )  # drifted from the new champion
    assert (execution["status"], record["outcome"]) == ("SUCCEEDED", "rolled_back"), record["message"]
    shadow = record["shadow"]
    assert not shadow["healthy"] and shadow["next"] == "rollback"
    assert record["message"].startswith("shadow dropped: ")
    assert_shadowed_during_the_bake(traffic, shadow, earlier=True)
    assert shadow["challenger"]["errors_5xx"] == PER_BAKE and shadow["champion"]["errors_5xx"] == 0
    assert "the canary alarm is in ALARM" in shadow["reason"]  # the stack's alarm on the challenger variant fires
    assert_champion_alone(aws, record, before)
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=record["registry"]["model_package_arn"])
    assert package["ModelApprovalStatus"] == "Rejected" and "shadow dropped" in package["ApprovalDescription"]


def test_a_drop_whose_rollback_fails_ends_the_run_failed_with_the_endpoints_true_state(aws, tmp_path):
    """Last in the module: it leaves the endpoint Failed. The shadow answers 5XX and is dropped; the rollback's
    UpdateEndpoint back to the champion's config ends Failed, and SageMaker then allows only DeleteEndpoint, so the
    run cannot restore it: it ends FAILED (what the run-failed alarm counts), the audit record holds the endpoint as it
    is (Failed, still on the shadow config), and the registry does not say the dropped version serves."""
    before = describe(aws)["EndpointConfigName"]
    aws.fail_endpoint_update(MODEL, before, "Failed", "simulated: the champion's instances did not start")
    runs_failed = aws.model(MODEL).runs_failed_alarm
    aws.set_alarm_state(runs_failed, "OK", "before the failing run")  # ALARM afterwards is this run's
    execution, record = run_with(aws, "rollback-fails.csv", 10, 2.0, Traffic(aws), fault_scratch=tmp_path)
    assert (execution["status"], record["status"], record["outcome"]) == ("FAILED", "FAILED", "failed")
    assert alarm_state(aws, runs_failed, "ALARM") == "ALARM"  # alarmed: Step Functions' ExecutionsFailed
    assert record["message"].startswith("EndpointUpdateFailed: endpoint is Failed: simulated: the champion's")
    assert "restoring the endpoint failed too" in record["message"] and "it needs a person" in record["message"]
    assert not record["shadow"]["healthy"] and record["shadow"]["next"] == "rollback"
    described = describe(aws)
    assert described["EndpointStatus"] == record["endpoint"]["status"] == "Failed"
    assert described["EndpointConfigName"] == record["endpoint"]["config"] != before  # still the shadow's config
    assert record["endpoint"]["failure_reason"] == described["FailureReason"]
    assert [v["VariantName"] for v in described["ShadowProductionVariants"]] == ["challenger"]
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=record["registry"]["model_package_arn"])
    assert package["ModelApprovalStatus"] == "Rejected"
    assert not record.get("serving_update")  # the registry still names the champion as serving
