"""`deploy.mode = "shadow"` at synth: the state machine's deploy branch is the shadow's (start_shadow, one bake,
check_shadow, promote or drop), every path it reads is in the step contract, the Deploy role may read only the capture
prefix besides what it had, and the template passes cdk-nag and cfn-lint."""

from __future__ import annotations

import json

import pytest

from scripts.local_aws.runtime import synthesize
from tests.conftest import config_variant
from tests.infrastructure.test_stack import CFN_LINT_ACCEPTED, cfn_lint
from tests.infrastructure.test_step_contract import contract_problems, load

SHADOW = '[models.deploy]\nmode = "shadow"\n\n[models.deploy.shadow]\nsampling_percent = 50\nbake_seconds = 300\n\n'


@pytest.fixture(scope="module")
def assembly(tmp_path_factory):
    config = config_variant(tmp_path_factory, "shadow-stack", {"[models.monitor]": SHADOW + "[models.monitor]"})
    return synthesize(tmp_path_factory.mktemp("cdk-shadow") / "cdk.out", config)


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


def test_the_deploy_branch_is_the_shadows_and_its_paths_are_in_the_step_contract(assembly):
    definition, handlers = load(assembly)
    assert contract_problems(definition, handlers) == []
    states = reachable(definition, definition["StartAt"])
    assert {"Deploy shadow challenger", "Bake shadow", "Check shadow", "Shadow verdict?"} <= states
    assert not {"Deploy challenger", "Bake canary", "Check canary", "Shift canary"} & states
    assert definition["States"]["Bake shadow"]["Seconds"] == 300
    assert definition["States"]["Deploy shadow challenger"]["Parameters"]["action"] == "start_shadow"
    verdict = definition["States"]["Shadow verdict?"]
    assert [c["Next"] for c in verdict["Choices"]] == ["Promote challenger"]
    assert verdict["Default"] == "Roll back canary"
    assert definition["States"]["Check shadow"]["Catch"][0]["Next"] == "Roll back canary"


def test_deploy_reads_the_capture_prefix_with_the_key_and_nothing_else_new(assembly):
    template = json.loads((assembly / "refit.template.json").read_text())
    policy = next(
        r["Properties"]["PolicyDocument"]["Statement"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::IAM::Policy" and "DeployRole" in r.get("Metadata", {}).get("aws:cdk:path", "")
    )
    reads = [s for s in policy if "s3:GetObject*" in s["Action"]]
    assert len(reads) == 1
    objects = [r for r in reads[0]["Resource"] if "Fn::Join" in r]
    assert [r["Fn::Join"][1][-1] for r in objects] == ["/capture/churn/*"]
    assert any(
        a.startswith("kms:Decrypt")
        for s in policy
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    )
    assert not any("s3:PutObject" in s["Action"] for s in policy)


def test_the_shadow_template_passes_cdk_nag_and_cfn_lint(assembly):
    report = json.loads((assembly / "validation-report.json").read_text())
    assert all(plugin["conclusion"] == "success" for plugin in report["pluginReports"])
    result = cfn_lint(assembly / "refit.template.json", *sorted(CFN_LINT_ACCEPTED))
    assert result.returncode == 0, result.stdout + result.stderr
