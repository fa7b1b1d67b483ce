"""The approver role on the synthesized template: trusted by the account or by the principals `[approval]
approvers` names, and its ARN is an output. The example model (approval auto) has no Approve function; the
two-model template, which has one, is read in tests/infrastructure/test_security.py (same module as the other
two-model checks: one synthesis per test worker)."""

from __future__ import annotations

import json

import pytest
from aws_cdk import App, Stack
from aws_cdk.assertions import Template
from refit_core.config import ApprovalSettings, ConfigError, load_config

from stacks.app_builder import cdk_json_context
from stacks.approvers import ApproverRole
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


def test_without_a_manual_model_there_is_nothing_to_call(template):
    assert "ApproveUrls" not in template["Outputs"]
    assert not [r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Url"]
    assert [as_list(s["Action"]) for s in statements(template, approver_role(template))] == [
        ["cloudformation:DescribeStacks"]
    ]


def test_by_default_the_account_may_assume_it(template):
    trust = template["Resources"][approver_role(template)]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"]["AWS"] for s in trust] == [
        {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":iam::", {"Ref": "AWS::AccountId"}, ":root"]]}
    ]


def test_configured_approvers_are_the_only_principals_trusted():
    leads = "arn:aws:iam::111122223333:role/ml-leads"
    ana = "arn:aws:iam::111122223333:user/ana"
    stack = Stack(App(context=cdk_json_context()), "Approvers")
    ApproverRole(stack, "Approvers", settings=ApprovalSettings(approvers=[leads, ana]), approve_urls={})
    resources = Template.from_stack(stack).to_json()["Resources"]
    (role,) = [r for k, r in resources.items() if r["Type"] == "AWS::IAM::Role" and k.startswith("Approvers")]
    principals = [s["Principal"]["AWS"] for s in role["Properties"]["AssumeRolePolicyDocument"]["Statement"]]
    assert sorted(p for entry in principals for p in as_list(entry)) == sorted([leads, ana])


def test_an_approver_that_is_not_a_principal_arn_stops_synthesis(tmp_path):
    text = (
        (ROOT / "refit.toml")
        .read_text()
        .replace('project = "refit"', 'project = "refit"\n\n[approval]\napprovers = ["ml-leads"]\n')
    )
    (tmp_path / "refit.toml").write_text(text)
    with pytest.raises(ConfigError, match="approval.approvers: .*'ml-leads' is not an IAM principal ARN"):
        load_config(tmp_path / "refit.toml")
