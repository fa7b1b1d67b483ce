"""`deploy.mode = "shadow"` on the local runtime, end to end through the synthesized state machine: the challenger
runs as the endpoint's shadow variant and receives a copy of every request (sampling_percent = 100) during the bake,
while callers only ever get the champion's replies; it is then judged against the champion on the same window and
promoted (a healthy challenger) or dropped (one whose model raises: callers never saw a 5XX). The champion keeps
serving and the registry and audit record agree with the endpoint. Diverging predictions and a quiet window are judged
by the same check_shadow action in tests/integration/test_shadow_check.py (no training needed there). The tests share
one runtime and run in order: the first deploys the champion. The synthesized template is checked here too: the deploy
branch is the shadow's, its paths are in the step contract, and the Deploy role gains only the capture prefix (cdk-nag
and cfn-lint on the e2e assembly: tests/infrastructure/test_stack.py)."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes
from tests.e2e.helpers import FaultAfterTraining
from tests.infrastructure.test_step_contract import contract_problems, load

MODEL = "shadow"  # deploy.mode shadow, sampling_percent 100, bake_seconds 5 (tests/assemblies.py)
PER_BAKE = 60


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


def run_with(aws, batch_name: str, seed: int, shift: float, traffic: Traffic, fault_scratch=None) -> tuple[dict, dict]:
    aws.on_wait("Bake shadow", traffic)
    if fault_scratch is not None:
        aws.on_wait("Wait for training", FaultAfterTraining(aws, "5xx", fault_scratch))
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
    assert record["endpoint"]["config"] != before
    assert_champion_alone(aws, record, record["endpoint"]["config"])
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=record["registry"]["model_package_arn"])
    assert package["ModelApprovalStatus"] == "Approved"
    assert record["serving_update"]  # the registry marks the promoted version as the one serving


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
    execution, record = run_with(aws, "rollback-fails.csv", 10, 2.0, Traffic(aws), fault_scratch=tmp_path)
    assert (execution["status"], record["status"], record["outcome"]) == ("FAILED", "FAILED", "failed")
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
