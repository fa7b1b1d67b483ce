"""Manual rollback and promotion: the run input, the version checks, the registry's metadata values, and the CLI's
argument validation (no AWS needed: every refusal here happens before a client is made)."""

from __future__ import annotations

import io

import pytest
from refit_core.approvals import withdraw_unserved_package
from refit_core.champion import RedeployRefused, check_redeploy, metadata_value, record_serving
from refit_core.names import model_package_arn
from refit_core.runs import RunInputError, parse_run_input

from scripts.cli import main
from scripts.local_aws.limits import compile_pattern
from scripts.run_commands import _served_before
from tests.conftest import ROOT

PREFIX, BUCKET = "incoming/churn/", "data"
# botocore's service model, sagemaker CustomerMetadataValue
VALUE_PATTERN = compile_pattern("([\\p{L}\\p{Z}\\p{N}_.:\\/=+\\-@]*)${1,256}")


def deploy_input(**fields):
    return parse_run_input({"deploy_version": 2, "requested_by": "ana", **fields}, PREFIX, BUCKET)


def test_deploy_input_becomes_a_manual_request_naming_version_kind_and_who():
    request = deploy_input(kind="rollback", reason="p99 doubled")
    assert request.trigger == "manual" and request.data_uri is None and request.force is False
    assert (request.deploy.deploy_version, request.deploy.kind, request.deploy.requested_by) == (2, "rollback", "ana")
    assert request.reason == "rollback to version 2 requested by ana: p99 doubled"
    assert "forced" in deploy_input(force=True).reason


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"deploy_version": 0}, "deploy_version: Input should be greater than or equal to 1"),
        ({"deploy_version": "2"}, "deploy_version: Input should be a valid integer"),
        ({"deploy_version": True}, "deploy_version: Input should be a valid integer"),
        ({"kind": "revert"}, "kind: Input should be 'rollback' or 'promote'"),
        ({"force": "yes"}, "force: Input should be a valid boolean"),
        ({"data_uri": "s3://data/incoming/churn/a.csv"}, "data_uri: unknown field; allowed: deploy_version, kind"),
        ({"requested_by": ""}, "requested_by: String should have at least 1 character"),
    ],
)
def test_bad_deploy_input_names_the_field(fields, message):
    with pytest.raises(RunInputError, match=message):
        deploy_input(**fields)
    with pytest.raises(RunInputError, match="requested_by: Field required"):
        parse_run_input({"deploy_version": 2}, PREFIX, BUCKET)


def package(status="Approved", arn="arn:aws:sagemaker:us-east-1:1:model-package/refit-churn/2"):
    return {
        "ModelPackageArn": arn,
        "ModelApprovalStatus": status,
        "ApprovalDescription": "rejected by refit run r9 (was Approved): canary rolled back",
        "InferenceSpecification": {"Containers": [{"Image": "img", "ModelDataUrl": "s3://a/m.tar.gz"}]},
    }


def test_a_rejected_version_needs_force_and_a_serving_one_is_refused():
    with pytest.raises(RedeployRefused, match="version 2 is Rejected .*canary rolled back.*pass --force"):
        check_redeploy(package("Rejected"), 2, False, None)
    check_redeploy(package("Rejected"), 2, True, None)
    serving = {"model_package_arn": package()["ModelPackageArn"], "endpoint_config": "cfg"}
    with pytest.raises(RedeployRefused, match="version 2 is already serving"):
        check_redeploy(package(), 2, False, serving)
    with pytest.raises(RedeployRefused, match="no inference container"):
        check_redeploy({**package(), "InferenceSpecification": {"Containers": []}}, 2, False, None)


@pytest.mark.parametrize(
    "text",
    ["canary rolled back: error rate 0.2 > 0.05 (invocations 40, alarm OK); p99 'slow'", "x" * 400, ",,,", "a\tb\nc"],
)
def test_metadata_values_fit_sagemakers_pattern_and_length(text):
    value = metadata_value(text)
    assert 1 <= len(value) <= 256 and VALUE_PATTERN.fullmatch(value) is not None
    assert VALUE_PATTERN.fullmatch(text) is None or len(text) > 256 or value == text


def test_package_arn_is_built_in_the_state_machines_account_and_region():
    machine = "arn:aws-cn:states:cn-north-1:123456789012:stateMachine:refit-churn"
    assert model_package_arn(machine, "Refit-Churn", 7) == (
        "arn:aws-cn:sagemaker:cn-north-1:123456789012:model-package/refit-churn/7"
    )
    with pytest.raises(ValueError, match="not a state machine ARN"):
        model_package_arn("refit-churn", "refit-churn", 7)


def test_the_version_served_before_comes_from_the_newest_run_that_served_another():
    records = [
        {"outcome": "redeployed", "redeploy": {"version": 1}},
        {"outcome": "rolled_back", "registry": {"version": 3}},
        {"outcome": "promoted", "registry": {"version": 2}},
        {"outcome": "deployed_first", "registry": {"version": 1}},
    ]
    assert _served_before(records, 1) == 2
    assert _served_before(records, 2) == 1
    assert _served_before(records[3:], 1) is None


def cli(*arguments):
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(ROOT / "refit.toml"), *arguments], out=out, err=err)
    return code, err.getvalue()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["rollback", "churn", "--to", "0"], "--to: 0 is not a positive number"),
        (["rollback", "churn", "--to", "two"], "invalid _positive value"),
        (["promote", "churn"], "the following arguments are required: version"),
        (["promote", "churn", "-1"], "argument version: -1 is not a positive number"),
    ],
)
def test_rollback_and_promote_refuse_bad_arguments_with_exit_2(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(*arguments)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_model_not_in_the_configuration_is_one_line_and_exit_2():
    code, err = cli("promote", "nope", "2")
    assert code == 2 and err.count("\n") == 1 and "has no model 'nope'" in err


class Registry:
    """A model package registry of one package, recording UpdateModelPackage calls."""

    def __init__(self, status: str) -> None:
        self.status, self.updates = status, []

    def describe_model_package(self, ModelPackageName):  # noqa: N803 (boto3's parameter names)
        return {"ModelPackageArn": ModelPackageName, "ModelApprovalStatus": self.status}

    def update_model_package(self, **request):
        self.updates.append(request)


def test_a_withdrawn_package_carries_the_run_and_reason_in_its_metadata():
    registry = Registry("Approved")
    change = withdraw_unserved_package(registry, "arn:p/2", False, "run-7", "canary rolled back: 5XX rate 0.2 > 0.05")
    assert change.startswith("model package arn:p/2 set Rejected (was Approved)")
    (update,) = registry.updates
    assert update["ModelApprovalStatus"] == "Rejected" and "run-7" in update["ApprovalDescription"]
    metadata = update["CustomerMetadataProperties"]
    assert metadata["refit:rejected_run"] == "run-7"
    assert metadata["refit:rejected_reason"] == "canary rolled back: 5XX rate 0.2 0.05"
    assert all(VALUE_PATTERN.fullmatch(v) for v in metadata.values())


def test_the_serving_mark_moves_to_the_new_champion_and_a_manual_rollback_says_who():
    registry = Registry("Approved")
    changes = record_serving(
        registry,
        "arn:p/1",
        "arn:p/2",
        "rb-1",
        "2026-11-29T05:00:00+00:00",
        previous_version=2,
        requested_by="ana",
        reason="p99, doubled",
        kind="rollback",
    )
    replaced, serving_now = registry.updates
    assert replaced["ModelPackageArn"] == "arn:p/2" and set(replaced["CustomerMetadataPropertiesToRemove"]) == {
        "refit:serving",
        "refit:serving_since",
        "refit:serving_run",
    }
    assert replaced["CustomerMetadataProperties"]["refit:rolled_back_by"] == "ana"
    assert serving_now["CustomerMetadataProperties"]["refit:serving"] == "true"
    assert serving_now["CustomerMetadataProperties"]["refit:previous_version"] == "2"
    assert serving_now["CustomerMetadataProperties"]["refit:deploy_reason"] == "p99 doubled"
    assert changes == ["arn:p/2 no longer serving (rolled back by hand)", "arn:p/1 marked serving"]
