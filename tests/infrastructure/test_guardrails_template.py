"""The guardrails-mode template (deploy.mode guardrails): the rollback alarms SageMaker watches, who may read them, the
state machine's guarded branch, cdk-nag and cfn-lint; and the configurations guardrails cannot serve refused at synth
with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stacks.app_builder import build_app
from tests.assemblies import GUARDRAILS_MAX_MODEL_LATENCY_MS, GUARDRAILS_SETTINGS
from tests.infrastructure.test_step_contract import load

ROOT = Path(__file__).resolve().parents[2]
MODEL = "guard"  # the modes assembly's guardrails model
ALARMS = {"refit-guard--guardrails-5xx", "refit-guard--guardrails-latency"}


@pytest.fixture(scope="module")
def template(modes_assembly):
    return json.loads((modes_assembly / "refit.template.json").read_text())


def resources(template, kind, model: str | None = None):
    """The resources of a type; with `model`, only that model's (logical ids start with Model<name>)."""
    prefix = f"Model{model.replace('-', '')}" if model else ""
    return {k: v["Properties"] for k, v in template["Resources"].items() if v["Type"] == kind and k.startswith(prefix)}


def alarm_arn(name: str) -> dict:
    return {
        "Fn::Join": [
            "",
            ["arn:", {"Ref": "AWS::Partition"}, ":cloudwatch:", {"Ref": "AWS::Region"}, ":", {"Ref": "AWS::AccountId"}]
            + [f":alarm:{name}"],
        ]
    }


def test_the_rollback_alarms_watch_the_endpoints_one_variant(template):
    alarms = {p.get("AlarmName"): p for p in resources(template, "AWS::CloudWatch::Alarm").values()}
    assert set(alarms) >= ALARMS
    dimensions = [{"Name": "EndpointName", "Value": "refit-guard"}, {"Name": "VariantName", "Value": "champion"}]
    errors, latency = alarms["refit-guard--guardrails-5xx"], alarms["refit-guard--guardrails-latency"]
    assert (errors["MetricName"], errors["Statistic"], errors["Threshold"]) == ("Invocation5XXErrors", "Sum", 1)
    # max_model_latency_ms of the test model (tests/assemblies.py), in ModelLatency's microseconds
    threshold = GUARDRAILS_MAX_MODEL_LATENCY_MS * 1000
    assert (latency["MetricName"], latency["Statistic"], latency["Threshold"]) == ("ModelLatency", "Average", threshold)
    for alarm in (errors, latency):
        assert alarm["Namespace"] == "AWS/SageMaker" and alarm["Dimensions"] == dimensions
        assert (alarm["Period"], alarm["EvaluationPeriods"], alarm["TreatMissingData"]) == (60, 1, "notBreaching")


def test_only_the_deploy_function_and_the_models_sagemaker_role_read_them_and_only_them(template):
    readers = {}
    for logical, policy in resources(template, "AWS::IAM::Policy").items():
        for statement in policy["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources_ = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            if any("guardrails" in json.dumps(r) for r in resources_):
                assert actions == ["cloudwatch:DescribeAlarms"] or actions == "cloudwatch:DescribeAlarms"
                readers[logical] = resources_
    assert sorted(readers) == [
        next(k for k in readers if "FunctionsDeployRole" in k),
        next(k for k in readers if "SageMakerRole" in k),
    ]
    for granted in readers.values():
        assert [r for r in granted if "guardrails" in json.dumps(r)] == [alarm_arn(n) for n in sorted(ALARMS)]


def test_the_state_machine_has_the_guarded_branch_and_not_the_variants_canary(template):
    (machine,) = resources(template, "AWS::StepFunctions::StateMachine", MODEL).values()
    text = "".join(p for p in machine["DefinitionString"]["Fn::Join"][1] if isinstance(p, str))
    for state in ("Deploy challenger (guardrails)", "Wait for guarded update", "Guarded update status"):
        assert f'"{state}"' in text
    for state in ("Bake canary", "Shift canary", "Roll back canary", "Promote challenger"):
        assert f'"{state}"' not in text  # a state no path reaches is refused by Step Functions


def test_an_error_judging_the_update_restores_the_champions_config(modes_assembly):
    """Not Finalize alone: a challenger SageMaker finished deploying must not keep serving unjudged."""
    definition, _ = load(modes_assembly, MODEL)
    states = definition["States"]
    assert [c["Next"] for c in states["Guarded update status"]["Catch"]] == ["Restore endpoint"]
    assert states["Restore endpoint"]["Parameters"] == {
        "action": "restore",
        "previous_config.$": "$.check.champion_config",
    }


def test_a_canary_guardrails_cannot_serve_stops_synthesis_with_the_reason(tmp_path, capsys):
    """`cdk synth` (build_app, as app.py calls it) exits 2 with the reason, as for a wrong field, not a traceback."""
    text = (ROOT / "refit.toml").read_text()
    for old, new in GUARDRAILS_SETTINGS.items():
        text = text.replace(old, new)
    bad = tmp_path / "refit.toml"
    bad.write_text(text.replace('traffic_routing = "ALL_AT_ONCE"', 'traffic_routing = "CANARY"\nsize = 10'))
    with pytest.raises(SystemExit) as stopped:
        build_app(str(bad), outdir=str(tmp_path / "out"))
    assert stopped.value.code == 2
    stderr = capsys.readouterr().err
    assert "model churn: deploy.mode 'guardrails' refused: deploy.guardrails CANARY with size 10" in stderr
    assert "a fleet of one instance can only be updated ALL_AT_ONCE" in stderr


def test_a_finished_update_waits_for_its_judged_window_then_is_judged_and_an_error_judging_restores(modes_assembly):
    """The status check's `judge` leads to a Wait on the planned timestamp and the judge_guardrails action, whose
    rollback is the second UpdateEndpoint; an error judging restores the champion's config, as for the status check."""
    definition, _ = load(modes_assembly, MODEL)
    states = definition["States"]
    done = states["Guarded update done?"]["Choices"]
    assert {c["StringEquals"]: c["Next"] for c in done}["judge"] == "Wait for judged window"
    assert states["Wait for judged window"] == {
        "Type": "Wait",
        "TimestampPath": "$.guardrails.judge_at",
        "Next": "Judge guarded update",
    }
    judge = states["Judge guarded update"]
    assert judge["Parameters"]["action"] == "judge_guardrails"
    assert judge["Parameters"]["requested_at.$"] == "$.deploy.challenger_since"
    assert judge["ResultPath"] == "$.guardrails"
    assert [c["Next"] for c in judge["Catch"]] == ["Restore endpoint"]
    judged = {c["StringEquals"]: c["Next"] for c in states[judge["Next"]]["Choices"]}
    assert judged == {"rollback": "Roll back guarded update", "failed": "Guarded update failed"}
