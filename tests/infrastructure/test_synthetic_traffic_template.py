"""The template with deploy.synthetic_traffic on (deploy.mode variants, a two-step plan): the quiet step's top-up loop
(Check canary -> Send synthetic traffic -> Settle -> Check canary) within the step contract, the Deploy role's
InvokeEndpoint on this model's endpoint only (cdk-nag and cfn-lint: tests/infrastructure/test_stack.py); and the
default template without any of it.
The staged-canary end-to-end module's configuration has synthetic traffic off (its quiet case is "not promoted") and
its fixtures are shared, so the path through the running state machine is covered here and by the handler-level
integration test (tests/integration/test_shadow_bridge.py)."""

from __future__ import annotations

import json

import pytest

from tests.assemblies import SYNTHETIC_SETTLE_SECONDS as SETTLE_SECONDS
from tests.infrastructure.test_step_contract import contract_problems, load

MODEL = "synth"  # the modes project's model with synthetic traffic on (tests/assemblies.py)


@pytest.fixture(scope="module")
def assembly(modes_assembly):
    return modes_assembly


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
    definition, handlers = load(assembly, MODEL)
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
    assert list(grants) == [next(k for k in grants if k.startswith(f"Model{MODEL}FunctionsDeployRole"))]
    (resource,) = next(iter(grants.values()))
    assert json.dumps(resource).endswith(f':endpoint/refit-{MODEL}"]]}}')
    assert invoke_grants(cloud_assembly) == {}  # off by default: no grant, no states
    default, _ = load(cloud_assembly)
    assert not [name for name in default["States"] if "ynthetic" in name]
