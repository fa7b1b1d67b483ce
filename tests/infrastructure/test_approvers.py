"""The approver role on the synthesized template: no wildcard action, every resource scoped to this project's
approvals, packages, key and stack (the one `*` is SendTaskSuccess, which has no resource type), trusted by the
account or by the principals `[approval] approvers` names, and its ARN an output."""

from __future__ import annotations

import json

import pytest
from aws_cdk import App, Stack
from aws_cdk.assertions import Template
from refit_core.config import ApprovalSettings, ConfigError, RetentionSettings, load_config

from stacks.app_builder import cdk_json_context
from stacks.approvers import ApproverRole
from stacks.storage import Storage
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def template(cloud_assembly):
    return json.loads((cloud_assembly / "refit.template.json").read_text())


def approver_role(template) -> str:
    (output,) = [o for k, o in template["Outputs"].items() if "ApproverRoleArn" in k]
    return output["Value"]["Fn::GetAtt"][0]


def statements(template, role: str) -> list[dict]:
    return [
        statement
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::IAM::Policy" and {"Ref": role} in resource["Properties"]["Roles"]
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]
    ]


def as_list(value):
    return value if isinstance(value, list) else [value]


def test_the_approver_role_may_only_decide_this_projects_approvals(template):
    role = approver_role(template)
    granted = statements(template, role)
    assert template["Resources"][role]["Properties"].get("Policies") is None  # nothing inline
    assert all(s["Effect"] == "Allow" for s in granted)
    by_action = {action: s for s in granted for action in as_list(s["Action"])}
    assert set(by_action) == {
        "dynamodb:GetItem",
        "dynamodb:DeleteItem",
        "sagemaker:UpdateModelPackage",
        "states:SendTaskSuccess",
        "kms:Decrypt",
        "kms:DescribeKey",
        "cloudformation:DescribeStacks",
    }
    assert not any("*" in action for action in by_action)
    # `*` only where AWS offers no resource type
    assert [a for a, s in by_action.items() if "*" in as_list(s["Resource"])] == ["states:SendTaskSuccess"]
    table = by_action["dynamodb:GetItem"]
    assert table is by_action["dynamodb:DeleteItem"]
    assert table["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["approval#churn"]}}
    assert as_list(table["Resource"]) == [{"Fn::GetAtt": [table["Resource"]["Fn::GetAtt"][0], "Arn"]}]
    assert template["Resources"][table["Resource"]["Fn::GetAtt"][0]]["Type"] == "AWS::DynamoDB::Table"
    (packages,) = as_list(by_action["sagemaker:UpdateModelPackage"]["Resource"])
    assert json.dumps(packages).endswith(':model-package/refit-churn/*"]]}')
    (key,) = as_list(by_action["kms:Decrypt"]["Resource"])
    assert template["Resources"][key["Fn::GetAtt"][0]]["Type"] == "AWS::KMS::Key"
    assert by_action["cloudformation:DescribeStacks"]["Resource"] == {"Ref": "AWS::StackId"}


def test_by_default_the_account_may_assume_it(template):
    trust = template["Resources"][approver_role(template)]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"]["AWS"] for s in trust] == [
        {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":iam::", {"Ref": "AWS::AccountId"}, ":root"]]}
    ]


def test_configured_approvers_are_the_only_principals_trusted():
    leads = "arn:aws:iam::111122223333:role/ml-leads"
    ana = "arn:aws:iam::111122223333:user/ana"
    stack = Stack(App(context=cdk_json_context()), "Approvers")
    storage = Storage(stack, "Storage", notification_email=None, retention=RetentionSettings())
    ApproverRole(
        stack,
        "Approvers",
        settings=ApprovalSettings(approvers=[leads, ana]),
        storage=storage,
        models={"churn": "refit-churn", "fraud": "refit-fraud"},
    )
    resources = Template.from_stack(stack).to_json()["Resources"]
    (role,) = [r for k, r in resources.items() if r["Type"] == "AWS::IAM::Role" and k.startswith("Approvers")]
    principals = [s["Principal"]["AWS"] for s in role["Properties"]["AssumeRolePolicyDocument"]["Statement"]]
    assert sorted(p for entry in principals for p in as_list(entry)) == sorted([leads, ana])
    (policy,) = [r for k, r in resources.items() if r["Type"] == "AWS::IAM::Policy" and k.startswith("Approvers")]
    leading = [s["Condition"] for s in policy["Properties"]["PolicyDocument"]["Statement"] if "Condition" in s]
    assert leading == [{"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["approval#churn", "approval#fraud"]}}]


def test_an_approver_that_is_not_a_principal_arn_stops_synthesis(tmp_path):
    text = (
        (ROOT / "refit.toml")
        .read_text()
        .replace('project = "refit"', 'project = "refit"\n\n[approval]\napprovers = ["ml-leads"]\n')
    )
    (tmp_path / "refit.toml").write_text(text)
    with pytest.raises(ConfigError, match="approval.approvers: .*'ml-leads' is not an IAM principal ARN"):
        load_config(tmp_path / "refit.toml")
