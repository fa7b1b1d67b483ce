"""The template with deploy.synthetic_traffic on (deploy.mode variants, a two-step plan): the quiet step's top-up loop
(Check canary -> Send synthetic traffic -> Settle -> Check canary) within the step contract, the Deploy role's
InvokeEndpoint on this model's endpoint only, cdk-nag and cfn-lint; and the default template without any of it.
The staged-canary end-to-end module's configuration has synthetic traffic off (its quiet case is "not promoted") and
its fixtures are shared, so the path through the running state machine is covered here and by the handler-level
integration test (tests/integration/test_shadow_bridge.py)."""

from __future__ import annotations

import json

import pytest

from scripts.local_aws.runtime import synthesize
from tests.conftest import config_variant
from tests.infrastructure.test_stack import CFN_LINT_ACCEPTED, cfn_lint
from tests.infrastructure.test_step_contract import contract_problems, load

SETTLE_SECONDS = 45


@pytest.fixture(scope="module")
def assembly(tmp_path_factory):
    config = config_variant(
        tmp_path_factory,
        "synthetic-traffic",
        {
            "weight = 0.2": "steps = [0.2, 0.5]",
            "[models.monitor]": "[models.deploy.synthetic_traffic]\nenabled = true\n"
            f"max_requests_per_variant = 50\nsettle_seconds = {SETTLE_SECONDS}\n\n[models.monitor]",
        },
    )
    return synthesize(tmp_path_factory.mktemp("cdk-synthetic") / "cdk.out", config)


def invoke_grants(directory) -> dict[str, list]:
    """Every sagemaker:InvokeEndpoint grant of the template, by policy."""
    template = json.loads((directory / "refit.template.json").read_text())
    grants: dict[str, list] = {}
    for logical, resource in template["Resources"].items():
        if resource["Type"] != "AWS::IAM::Policy":
            continue
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if any(a in ("sagemaker:InvokeEndpoint", "sagemaker:*", "*") for a in actions):
                grants.setdefault(logical, []).append(statement["Resource"])
    return grants


def test_a_quiet_step_loops_through_one_top_up_within_the_step_contract(assembly):
    definition, handlers = load(assembly)
    states = definition["States"]
    assert contract_problems(definition, handlers) == []
    verdict = states["Canary verdict?"]
    assert {"Variable": "$.canary.next", "StringEquals": "synthetic", "Next": "Send synthetic traffic"} in verdict[
        "Choices"
    ]
    send = states["Send synthetic traffic"]
    assert send["Parameters"] == {
        "action": "synthetic_traffic",
        "run_id.$": "$.run.run_id",
        "step.$": "$.canary.synthetic_step",
        "requests.$": "$.canary.synthetic_requests",
    }
    assert send["ResultPath"] == "$.synthetic" and send["Catch"][0]["Next"] == "Roll back canary"
    assert send["Next"] == "Settle synthetic traffic"
    assert states["Settle synthetic traffic"] == {"Type": "Wait", "Seconds": SETTLE_SECONDS, "Next": "Check canary"}
    assert states["Check canary"]["Parameters"]["synthetic.$"] == "$.synthetic"
    assert states["No synthetic traffic yet"]["Result"] == {"step": -1}
    assert states["No synthetic traffic yet"]["Next"] == "Start canary"


def test_only_the_deploy_function_may_invoke_and_only_this_models_endpoint(assembly, cloud_assembly):
    grants = invoke_grants(assembly)
    assert list(grants) == [next(k for k in grants if "FunctionsDeployRole" in k)]
    (resource,) = next(iter(grants.values()))
    assert json.dumps(resource).endswith(':endpoint/refit-churn"]]}')
    assert invoke_grants(cloud_assembly) == {}  # off by default: no grant, no states
    default, _ = load(cloud_assembly)
    assert not [name for name in default["States"] if "ynthetic" in name]


def test_the_synthetic_traffic_template_passes_cdk_nag_and_cfn_lint(assembly):
    report = json.loads((assembly / "validation-report.json").read_text())
    assert all(plugin["conclusion"] == "success" for plugin in report["pluginReports"])
    result = cfn_lint(assembly / "refit.template.json", *sorted(CFN_LINT_ACCEPTED))
    assert result.returncode == 0, result.stdout + result.stderr
