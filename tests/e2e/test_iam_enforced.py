"""IAM is enforced on the local runtime: a run whose role misses one grant fails as it would in AWS, naming the call.
Each test takes one grant away from the synthesized policies of one role (in this module's runtime only)."""

from __future__ import annotations

import json

import pytest

from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes

MODEL = "churn"


@pytest.fixture(scope="module")
def aws(cloud_assembly, tmp_path_factory):
    with LocalRuntime(cloud_assembly, tmp_path_factory.mktemp("iam"), seed=5) as runtime:
        yield runtime


def role_of(aws, handler: str) -> str:
    return next(f.role_arn for f in aws.stack.functions.values() if f.handler == handler)


def revoke(aws, role_arn: str, action: str, resource_part: str) -> int:
    """Take `action` on resources containing `resource_part` out of the role's statements; returns how many went."""
    removed = 0
    for statement in aws.iam.policies[role_arn]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if any(a.lower().rstrip("*") in action.lower() for a in actions):
            kept = [r for r in resources if not (isinstance(r, str) and resource_part in r)]
            removed += len(resources) - len(kept)
            statement["Resource"] = kept
    return removed


def test_every_role_a_run_uses_has_its_synthesized_policies(aws):
    for function in aws.stack.functions.values():
        assert aws.iam.policies[function.role_arn], f"{function.name}: no statements read from the template"


def test_start_training_without_read_on_the_new_batch_fails_naming_the_call(aws):
    assert revoke(aws, role_of(aws, "refit_handlers.training.start_handler"), "s3:GetObject", f"incoming/{MODEL}/") > 0
    execution = aws.wait_for(aws.land_batch(MODEL, "first.csv", to_csv_bytes(churn_batch(1500, 1))))
    assert execution["status"] == "FAILED"
    record = next(r for r in aws.audit_records(MODEL) if r["execution"] == execution["executionArn"].rsplit(":", 1)[-1])
    assert record["outcome"] == "failed"
    assert "AccessDenied" in record["message"] and "HeadObject" in record["message"]
    assert (
        f"not authorized to perform: s3:GetObject on resource: arn:aws:s3:::{aws.data_bucket}/incoming/{MODEL}/first.csv"
        in (record["message"])
    )
    assert aws.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []


def test_finalize_without_put_on_the_audit_table_fails_the_run_naming_the_call(aws):
    assert revoke(aws, role_of(aws, "refit_handlers.finalize.handler"), "dynamodb:PutItem", ":table/") > 0
    before = len(aws.audit_records(MODEL))
    execution = aws.wait_for(aws.start_run(MODEL, {"force": True, "reason": "iam test"}))
    assert execution["status"] == "FAILED"
    history = aws.client("stepfunctions").get_execution_history(executionArn=execution["executionArn"])["events"]
    failures = [
        json.dumps(e.get("lambdaFunctionFailedEventDetails") or e.get("taskFailedEventDetails") or {}) for e in history
    ]
    assert any("dynamodb:PutItem" in f and "AccessDenied" in f for f in failures), failures
    assert len(aws.audit_records(MODEL)) == before


def test_the_state_machine_invokes_its_lambdas_as_its_own_role(aws):
    machine_role = aws.client("stepfunctions").describe_state_machine(
        stateMachineArn=aws.model(MODEL).state_machine_arn
    )["roleArn"]
    invokes = [d for d in aws.iam.decisions if d.request.action == "lambda:InvokeFunction"]
    assert invokes and all(d.principal == machine_role and d.allowed for d in invokes)
    assert {d.request.resource for d in invokes} <= {f.arn for f in aws.stack.functions.values()}


def test_what_the_runs_were_allowed_by_a_resource_wildcard_is_only_what_aws_cannot_scope(aws):
    unscoped = {d.request.action for d in aws.iam.wildcard_grants()}
    assert unscoped <= {
        "cloudwatch:PutMetricData",
        "cloudwatch:GetMetricStatistics",
        "cloudwatch:GetMetricData",
        "ecr:GetAuthorizationToken",
    }
