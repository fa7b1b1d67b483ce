"""The local runtime's AWS limits (scripts/local_aws/limits.py): what the service refuses and botocore's client does
not, and SageMaker's unique names, which moto overwrites."""

from __future__ import annotations

import json

import boto3
import botocore.session
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from scripts.local_aws import limits
from scripts.local_aws.limits import compile_pattern, enforce_aws_rules, enforce_limits, enforce_unique_names

ROLE = "arn:aws:iam::123456789012:role/r"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/refit:1"
# Every service refit's product code, state machine or local runtime calls.
SERVICES = (
    "sagemaker",
    "sagemaker-runtime",
    "s3",
    "dynamodb",
    "sns",
    "cloudwatch",
    "stepfunctions",
    "events",
    "ecr",
    "cloudformation",
    "lambda",
    "sts",
    "iam",
    "kms",
    "ssm",
    "logs",
)


@pytest.fixture
def sagemaker():
    with mock_aws():
        yield boto3.client("sagemaker", region_name="us-east-1")


def variant(model: str = "m1", instance: str = "ml.m5.large") -> list[dict]:
    return [{"VariantName": "champion", "ModelName": model, "InitialInstanceCount": 1, "InstanceType": instance}]


def training_job(name: str, **changes) -> dict:
    request = {
        "TrainingJobName": name,
        "RoleArn": ROLE,
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        "OutputDataConfig": {"S3OutputPath": "s3://b/o/"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 60},
    }
    return {**request, **changes}


def refused(call, *fragments: str) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response["Error"]
    assert error["Code"] == "ValidationException", error
    for fragment in fragments:
        assert fragment in error["Message"], error["Message"]
    return error["Message"]


def test_over_max_length_names_the_operation_parameter_and_length(sagemaker):
    name = "a" * 64
    create = lambda: sagemaker.create_endpoint_config(EndpointConfigName=name, ProductionVariants=variant())  # noqa: E731
    sagemaker.create_model(ModelName="m1", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    with enforce_limits():
        refused(create, "sagemaker CreateEndpointConfig", "EndpointConfigName: length 64", "maximum 63")
        sagemaker.create_endpoint_config(EndpointConfigName="b" * 63, ProductionVariants=variant())
    create()  # outside the context botocore and moto accept it again: the patch is undone


def test_pattern_must_match_the_whole_value(sagemaker):
    """`^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}` matches the start of `churn_eu`; SageMaker refuses the name."""
    with enforce_limits():
        refused(
            lambda: sagemaker.create_model(
                ModelName="churn_eu", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE}
            ),
            "CreateModel",
            "ModelName: value 'churn_eu' does not match the pattern",
        )


def test_enum_list_map_and_number_maxima(sagemaker):
    with enforce_limits():
        refused(
            lambda: sagemaker.create_endpoint_config(
                EndpointConfigName="c", ProductionVariants=variant(instance="ml.huge")
            ),
            "ProductionVariants[0].InstanceType: value 'ml.huge' is not one of",
        )
        refused(
            lambda: sagemaker.create_training_job(**training_job("t", HyperParameters={"config": "x" * 2501})),
            "CreateTrainingJob",
            "HyperParameters.config: length 2501 is over the maximum 2500",
        )
        refused(
            lambda: sagemaker.create_training_job(
                **training_job("t", HyperParameters={f"k{i}": "v" for i in range(101)})
            ),
            "HyperParameters: 101 entries, more than the maximum 100",
        )
        refused(
            lambda: sagemaker.create_model(
                ModelName="m",
                ExecutionRoleArn=ROLE,
                PrimaryContainer={"Image": IMAGE},
                Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(51)],
            ),
            "Tags: 51 items, more than the maximum 50",
        )
        refused(
            lambda: sagemaker.create_training_job(**training_job("t", RetryStrategy={"MaximumRetryAttempts": 31})),
            "RetryStrategy.MaximumRetryAttempts: 31 is over the maximum 30",
        )
        sagemaker.create_training_job(**training_job("t", HyperParameters={"config": "x" * 2500}))


def test_java_patterns_compile_and_keep_their_meaning():
    """Java syntax Python's `re` refuses: \\p{...} classes, \\z, and UTF-16 surrogate pairs in a range."""
    tag_value = compile_pattern(r"^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$")
    assert tag_value.fullmatch("Zürich 2026/ü") and not tag_value.fullmatch("a;b")
    printable = compile_pattern(r"\A\S[\p{Print}]*\z")
    assert printable.fullmatch("text/csv") and not printable.fullmatch(" x") and not printable.fullmatch("x\n")
    any_xml_char = compile_pattern("[\\u0020-\\uD7FF\\uE000-\\uFFFD\\uD800\\uDC00-\\uDBFF\\uDFFF\\t]*")
    assert any_xml_char.fullmatch("emoji \U0001f600 ok") and not any_xml_char.fullmatch("bell \x07")


def test_every_pattern_of_the_services_refit_calls_compiles():
    session = botocore.session.get_session()
    for service in SERVICES:
        model = session.get_service_model(service)
        for shape_name in model.shape_names:
            pattern = model.shape_for(shape_name).metadata.get("pattern")
            if pattern is not None:
                compile_pattern(pattern)
    assert limits.UNCOMPILED == {}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda sm: sm.create_model(ModelName="m1", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE}),
            'Cannot create already existing model "arn:aws:sagemaker:us-east-1:123456789012:model/m1".',
        ),
        (
            lambda sm: sm.create_endpoint_config(EndpointConfigName="c1", ProductionVariants=variant()),
            "Cannot create already existing endpoint configuration",
        ),
        (
            lambda sm: sm.create_endpoint(EndpointName="e1", EndpointConfigName="c1"),
            "Cannot create already existing endpoint",
        ),
    ],
)
def test_sagemaker_refuses_an_existing_name(sagemaker, call, message):
    sagemaker.create_model(ModelName="m1", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    sagemaker.create_endpoint_config(EndpointConfigName="c1", ProductionVariants=variant())
    sagemaker.create_endpoint(EndpointName="e1", EndpointConfigName="c1")
    call(sagemaker)  # moto alone overwrites
    with enforce_unique_names():
        refused(lambda: call(sagemaker), message)
    call(sagemaker)


def test_training_job_names_are_unique(sagemaker):
    with enforce_aws_rules():
        sagemaker.create_training_job(**training_job("t1"))
        with pytest.raises(ClientError) as caught:
            sagemaker.create_training_job(**training_job("t1"))
        assert caught.value.response["Error"]["Code"] == "ResourceInUse"
        assert "training-job/t1" in caught.value.response["Error"]["Message"]
        sagemaker.create_training_job(**training_job("t2"))


def test_a_wide_model_config_reaches_training_within_the_request_limits():
    """About 86 categorical columns of 20 characters pass a hyperparameter value's 2,500 characters: the job's
    settings go to its `config` channel instead, and the CreateTrainingJob request stays within every limit."""
    from refit_core.config import load_config
    from refit_core.training import job_settings, training_job_request

    from tests.conftest import ROOT

    columns = [f"category_column_{i:04d}" for i in range(150)]
    model = load_config(ROOT / "refit.toml").model("churn").model_copy(update={"categorical_columns": columns})
    assert len(json.dumps(job_settings(model, "r1"))) > 2500
    request = training_job_request(
        model=model,
        name_prefix="refit-churn",
        run_id="0f8fad5b-d9cb-469f-a165-70867728950e",
        attempt=1,
        spot=True,
        image_uri=IMAGE,
        role_arn=ROLE,
        batch_uri="s3://d/incoming/churn/b.csv",
        earlier_data_uri="s3://d/training/churn/",
        champion_model_uri="s3://a/m.tar.gz",
        artifact_bucket="art",
        kms_key_arn="arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000",
        family="forest",
    )
    operation = botocore.session.get_session().get_service_model("sagemaker").operation_model("CreateTrainingJob")
    limits.check_request(request, operation)
    with pytest.raises(ClientError, match="HyperParameters.config: length"):
        limits.check_request(
            {**request, "HyperParameters": {"config": json.dumps(job_settings(model, "r1"))}}, operation
        )


def test_the_local_runtime_enforces_both_and_names_handles_from_the_project(cloud_assembly, tmp_path):
    from scripts.local_aws.runtime import LocalRuntime

    with LocalRuntime(cloud_assembly, tmp_path) as aws:
        handles = aws.model("churn")
        assert (handles.endpoint_name, handles.package_group) == ("refit-churn", "refit-churn")
        assert (handles.canary_alarm, handles.quality_alarm) == ("refit-churn--canary", "refit-churn--quality")
        assert handles.state_machine_arn.endswith(":stateMachine:refit-churn")
        sagemaker = aws.client("sagemaker")
        refused(
            lambda: sagemaker.create_model(
                ModelName="m" * 64, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE}
            ),
            "CreateModel",
            "ModelName: length 64",
        )
        sagemaker.create_model(ModelName="m1", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
        refused(
            lambda: sagemaker.create_model(ModelName="m1", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE}),
            "Cannot create already existing model",
        )
    # After the runtime, botocore and moto are as they were.
    assert limits.ParamValidationDecorator.serialize_to_request is limits._original


STEP_ROLE = "arn:aws:iam::123456789012:role/step"


def test_step_functions_refuses_unreachable_states_and_missing_targets():
    """Step Functions' static check, which moto skips: CDK renders every state it was given, so a branch built for
    another mode but reached by nothing would be refused by CreateStateMachine in AWS, whatever the local tests do."""
    good = {
        "StartAt": "A",
        "States": {
            "A": {"Type": "Choice", "Choices": [{"Variable": "$.x", "IsPresent": True, "Next": "B"}], "Default": "C"},
            "B": {
                "Type": "Parallel",
                "Branches": [{"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}],
                "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "C"}],
                "Next": "C",
            },
            "C": {"Type": "Succeed"},
        },
    }
    unreachable = {**good, "States": {**good["States"], "Orphan": {"Type": "Pass", "Next": "C"}}}
    missing = {**good, "States": {**good["States"], "C": {"Type": "Pass", "Next": "Nowhere"}}}
    branch = json.loads(json.dumps(good))
    branch["States"]["B"]["Branches"][0]["States"]["Q"] = {"Type": "Pass", "End": True}
    with mock_aws(), enforce_aws_rules():
        client = boto3.client("stepfunctions", region_name="us-east-1")
        arn = client.create_state_machine(name="ok", definition=json.dumps(good), roleArn=STEP_ROLE)["stateMachineArn"]
        for name, definition, message in (
            ("orphan", unreachable, 'MISSING_TRANSITION_TARGET: State "Orphan" is not reachable. at /States/Orphan'),
            ("missing", missing, "MISSING_TRANSITION_TARGET: Missing 'Next' target: Nowhere at /States/C/Next"),
            ("branch", branch, 'State "Q" is not reachable. at /States/B/Branches[0]/States/Q'),
        ):
            with pytest.raises(ClientError) as refused:
                client.create_state_machine(name=name, definition=json.dumps(definition), roleArn=STEP_ROLE)
            assert refused.value.response["Error"]["Code"] == "InvalidDefinition"
            assert message in refused.value.response["Error"]["Message"]
        with pytest.raises(ClientError, match="Orphan"):
            client.update_state_machine(stateMachineArn=arn, definition=json.dumps(unreachable))


def test_patched_puts_every_original_back_even_when_a_wrapper_fails():
    """The one patch-and-restore of the rules above: nested patches of one method unwind in order, and a wrapper that
    raises part-way leaves no method patched."""

    class Backend:
        def create(self) -> str:
            return "moto"

    original = Backend.create

    def louder(method):
        return lambda backend: method(backend).upper()

    with limits.patched([(Backend, "create", louder)]):
        with limits.patched([(Backend, "create", lambda method: lambda backend: method(backend) + "!")]):
            assert Backend().create() == "MOTO!"
        assert Backend().create() == "MOTO"
    assert Backend.create is original

    def broken(method):
        raise RuntimeError("cannot wrap")

    with (
        pytest.raises(RuntimeError, match="cannot wrap"),
        limits.patched([(Backend, "create", louder), (Backend, "create", broken)]),
    ):
        pass
    assert Backend.create is original and Backend().create() == "moto"
