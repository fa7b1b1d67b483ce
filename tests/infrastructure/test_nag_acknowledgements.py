"""cdk-nag acknowledgements are exact: each names one finding on the one resource that raises it, and the set of
acknowledgements is the set of cdk-nag's raw findings, resource by resource. A finding nobody listed fails synthesis."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from cdk_nag import AwsSolutionsChecks

from stacks.app_builder import build_app

ROOT = Path(__file__).resolve().parents[2]


def raw_findings(app) -> set[tuple[str, str]]:
    """(construct path, finding id) for every finding cdk-nag reports when nothing is acknowledged."""
    report = AwsSolutionsChecks().validate_scope(app)
    return {(r.construct_path, v.rule_name) for v in report.violations for r in v.violating_resources}


@pytest.fixture(scope="module")
def unacknowledged_findings() -> set[tuple[str, str]]:
    with mock.patch("stacks.refit_stack.acknowledge_findings", lambda *args, **kwargs: None):
        app = build_app(str(ROOT / "refit.toml"))
    return raw_findings(app)


def acknowledgements(cloud_assembly: Path) -> dict[tuple[str, str], str]:
    """(construct path, finding id) -> reason, from the synthesized assembly's metadata."""
    metadata = json.loads((cloud_assembly / "refit.metadata.json").read_text())
    return {
        (path.lstrip("/"), rule.split("::", 1)[1]): reason
        for path, entries in metadata.items()
        for entry in entries
        if entry.get("type") == "aws:cdk:acknowledged-rules"
        for rule, reason in entry["data"].items()
        if rule.split("::", 1)[1].startswith("AwsSolutions-")
    }


def test_the_acknowledgements_are_exactly_the_raw_findings_resource_by_resource(
    cloud_assembly, unacknowledged_findings
):
    acknowledged = acknowledgements(cloud_assembly)
    assert unacknowledged_findings, "cdk-nag found nothing: the comparison would prove nothing"
    assert set(acknowledged) - unacknowledged_findings == set(), "acknowledged, but not raised there"
    assert unacknowledged_findings - set(acknowledged) == set(), "raised, but not acknowledged on that resource"
    # Each one on a CloudFormation resource (what cdk-nag reports on), never on a stack or a construct above it.
    template = json.loads((cloud_assembly / "refit.template.json").read_text())
    resource_paths = {r.get("Metadata", {}).get("aws:cdk:path") for r in template["Resources"].values()}
    assert {path for path, _ in acknowledged} <= resource_paths
    assert [k for k, reason in acknowledged.items() if len(reason) <= 40] == []


def test_synthesis_passes_cdk_nag(cloud_assembly):
    report = json.loads((cloud_assembly / "validation-report.json").read_text())
    assert all(plugin["conclusion"] == "success" for plugin in report["pluginReports"])


def test_a_probe_role_with_delete_and_decrypt_on_everything_fails_synthesis(tmp_path):
    """The review's probe: a role with s3:DeleteObjectVersion and kms:Decrypt on `Resource: "*"`. With stack-wide
    acknowledgements it passed; now its findings are nobody's and synthesis stops."""
    app = build_app(str(ROOT / "refit.toml"), outdir=str(tmp_path / "out"))
    stack = next(child for child in app.node.children if isinstance(child, Stack))
    probe = iam.Role(stack, "Probe", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    probe.add_to_policy(iam.PolicyStatement(actions=["s3:DeleteObjectVersion", "kms:Decrypt"], resources=["*"]))
    assert ("refit/Probe/DefaultPolicy/Resource", "AwsSolutions-IAM5[Resource::*]") in raw_findings(app)
    with pytest.raises(Exception, match="ValidationFailed") as failure:
        app.synth()
    report = str(failure.value)
    assert "refit/Probe/DefaultPolicy/Resource" in report and "AwsSolutions-IAM5[Resource::*]" in report
    assert report.count("aws-cdk-lib.") == 1, report  # the probe's policy is the one resource reported
