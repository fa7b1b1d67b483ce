"""`[mlflow]` with a SageMaker managed tracking server ARN, synthesized (cdk-nag passes: synthesis would stop on a
finding nobody acknowledged): the MlflowSync function's sagemaker-mlflow actions are scoped to that one server, it
runs after Register (the challenger, on the way to any deploy mode) and after Finalize, each with a Catch that lets the
run go on as it would have, it reads only its run documents and the audit record, the run-end Cleanup may invoke it
and no other function, and an alarm watches MlflowErrors. Without `[mlflow]` none of it exists (the default assembly)."""

from __future__ import annotations

import json

import pytest
from refit_core.mlflow_sync import CREDENTIALS_SECRET_ENV

from stacks.app_builder import build_app
from stacks.retrain_functions import MLFLOW_ACTIONS
from tests.conftest import config_variant
from tests.infrastructure.test_step_contract import contract_problems, load

ARN = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/team"


@pytest.fixture(scope="module")
def assembly(tmp_path_factory):
    config = config_variant(
        tmp_path_factory,
        "mlflow-arn",
        {'project = "refit"\n': f'project = "refit"\n\n[mlflow]\ntracking_uri = "{ARN}"\n'},
    )
    out = tmp_path_factory.mktemp("mlflow-out")
    build_app(str(config), outdir=str(out)).synth()
    return out


@pytest.fixture(scope="module")
def template(assembly):
    return json.loads((assembly / "refit.template.json").read_text())


def resources(template, kind):
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def mlflow_function(template):
    [(name, function)] = [
        (k, v)
        for k, v in resources(template, "AWS::Lambda::Function").items()
        if "REFIT_MLFLOW_TRACKING_URI" in v["Properties"].get("Environment", {}).get("Variables", {})
    ]
    return name, function


def test_the_managed_server_actions_are_scoped_to_that_server(template):
    _, function = mlflow_function(template)
    variables = function["Properties"]["Environment"]["Variables"]
    assert variables["REFIT_MLFLOW_TRACKING_URI"] == ARN
    assert (variables["REFIT_MLFLOW_EXPERIMENT"], variables["REFIT_MLFLOW_REGISTERED_MODEL"]) == (
        "refit/churn",
        "refit-churn",
    )
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    [policy] = [
        p for p in resources(template, "AWS::IAM::Policy").values() if {"Ref": role} in p["Properties"]["Roles"]
    ]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    mlflow = [s for s in statements if any(a.startswith("sagemaker-mlflow:") for a in _list(s["Action"]))]
    assert [(sorted(s["Action"]), s["Effect"], s["Resource"]) for s in mlflow] == [
        (sorted(MLFLOW_ACTIONS), "Allow", ARN)
    ]
    dynamodb = [s for s in statements if any(a.startswith("dynamodb:") for a in _list(s["Action"]))]
    assert [sorted(_list(s["Action"])) for s in dynamodb] == [["dynamodb:GetItem", "dynamodb:UpdateItem"]]
    everything = {a for s in statements if s["Effect"] == "Allow" for a in _list(s["Action"])}
    assert not any(a.startswith(("s3:Put", "s3:Delete", "sagemaker:", "sns:", "states:")) for a in everything)


def definition(template):
    [machine] = resources(template, "AWS::StepFunctions::StateMachine").values()
    parts = machine["Properties"]["DefinitionString"]["Fn::Join"][1]
    return json.loads("".join(p if isinstance(p, str) else "X" for p in parts))  # refs sit inside strings


def test_it_runs_after_finalize_and_its_failure_ends_the_run_as_recorded(template):
    states = definition(template)["States"]
    assert states["Finalize"]["Next"] == "Log to MLflow"
    log = states["Log to MLflow"]
    assert log["Next"] == "Run status?" and log["ResultPath"] == "$.mlflow"
    assert log["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.mlflow_error", "Next": "Run status?"}]
    assert log["Parameters"] == {"audit_key.$": "$.final.audit_key"}


def test_the_challenger_is_logged_after_register_on_the_way_to_every_deploy_mode_and_never_fails_the_run(template):
    """Between the gate's promote branch and the approval choice, which every deploy mode's deployment follows."""
    states = definition(template)["States"]
    assert states["Register challenger"]["Next"] == "Promote?"
    [promote] = states["Promote?"]["Choices"]
    assert promote["Next"] == "Log challenger to MLflow" and states["Promote?"]["Default"] == "Finalize"
    step = states["Log challenger to MLflow"]
    assert step["Next"] == "Approval needed?" and step["ResultPath"] == "$.mlflow_challenger"
    assert step["Catch"] == [
        {"ErrorEquals": ["States.ALL"], "ResultPath": "$.mlflow_challenger", "Next": "Approval needed?"}
    ]
    assert step["Parameters"] == {
        "stage": "challenger",
        "state.$": "$",
        "execution_name.$": "$$.Execution.Name",
        "execution_started_at.$": "$$.Execution.StartTime",
    }


def test_the_run_end_cleanup_may_start_this_mlflow_sync_and_nothing_else(template):
    name, _ = mlflow_function(template)
    [cleanup] = [
        f
        for f in resources(template, "AWS::Lambda::Function").values()
        if f["Properties"].get("Environment", {}).get("Variables", {}).get("POWERTOOLS_SERVICE_NAME")
        == "refit-churn-cleanup"
    ]
    assert cleanup["Properties"]["Environment"]["Variables"]["REFIT_MLFLOW_FUNCTION"] == {"Ref": name}
    role = cleanup["Properties"]["Role"]["Fn::GetAtt"][0]
    statements = [
        s
        for p in resources(template, "AWS::IAM::Policy").values()
        if {"Ref": role} in p["Properties"]["Roles"]
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    invoke = [s for s in statements if any(a.startswith("lambda:") for a in _list(s["Action"]))]
    assert [(s["Action"], s["Resource"]) for s in invoke] == [("lambda:InvokeFunction", {"Fn::GetAtt": [name, "Arn"]})]


def test_an_alarm_watches_mlflow_errors(template):
    alarms = [a["Properties"] for a in resources(template, "AWS::CloudWatch::Alarm").values()]
    [alarm] = [a for a in alarms if a.get("MetricName") == "MlflowErrors"]
    assert alarm["Namespace"] == "Refit" and alarm["Threshold"] == 1 and alarm["AlarmName"] == "refit-churn--mlflow"
    assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == {
        "Model": "churn",
        "service": "refit-churn-mlflowsync",
    }
    assert alarm["AlarmActions"]


def test_without_mlflow_there_is_no_step_function_or_alarm(cloud_assembly):
    text = (cloud_assembly / "refit.template.json").read_text()
    assert "Log to MLflow" not in text and "MlflowErrors" not in text and "REFIT_MLFLOW" not in text


def _list(value):
    return value if isinstance(value, list) else [value]


def test_every_path_of_the_mlflow_definition_is_in_the_step_contract(assembly):
    definition, handlers = load(assembly)
    assert {"Log challenger to MLflow", "Log to MLflow"} <= set(definition["States"])
    assert contract_problems(definition, handlers) == []


def test_a_credentials_secret_is_read_by_mlflow_sync_alone_and_only_that_secret():
    """`credentials_secret` beside an http(s) server, on a function of its own small stack (a second synthesis of the
    whole app would cost 20-40 s): MlflowSync's grants as `_grant_mlflow_sync` adds them, the audit table and
    documents left to the stand-ins (their grants are the test above's)."""
    from types import SimpleNamespace

    import aws_cdk as cdk
    from aws_cdk import aws_lambda as lambda_
    from aws_cdk.assertions import Template
    from refit_core.config import MlflowSettings

    from stacks.retrain_functions import RetrainFunctions

    secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:team/mlflow-bot-Ab12Cd"
    stack = cdk.Stack(cdk.App(), "MlflowCredentials")
    function = lambda_.Function(
        stack,
        "MlflowSync",
        runtime=lambda_.Runtime.PYTHON_3_12,
        handler="x.handler",
        code=lambda_.Code.from_inline("pass"),
    )
    settings = MlflowSettings(tracking_uri="https://mlflow.example.com", credentials_secret=secret)
    storage = SimpleNamespace(grant_audit=lambda *args: None, artifact_bucket=None)
    RetrainFunctions._grant_mlflow_sync(function, SimpleNamespace(name="churn"), storage, settings, lambda *args: None)
    template = Template.from_stack(stack).to_json()
    [(_, properties)] = [
        (k, v["Properties"]) for k, v in template["Resources"].items() if v["Type"] == "AWS::IAM::Policy"
    ]
    assert properties["PolicyDocument"]["Statement"] == [
        {"Action": "secretsmanager:GetSecretValue", "Effect": "Allow", "Resource": secret}
    ]
    [lambda_function] = [v for v in template["Resources"].values() if v["Type"] == "AWS::Lambda::Function"]
    assert lambda_function["Properties"]["Environment"]["Variables"] == {CREDENTIALS_SECRET_ENV: secret}


def test_without_a_credentials_secret_no_secret_is_readable(template):
    _, function = mlflow_function(template)
    assert CREDENTIALS_SECRET_ENV not in function["Properties"]["Environment"]["Variables"]
    assert "secretsmanager" not in json.dumps(template)
