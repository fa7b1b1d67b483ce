"""Models are isolated from each other on the local runtime with IAM enforced: two models whose names prefix each
other (churn, churn-eu), each with its own SageMaker role. A training job of churn that is told to write its output
under churn-eu's prefix runs, and SageMaker's upload with churn's role is refused; churn's role may not read, list or
write anything of churn-eu, and may not overwrite or delete what a run of its own relies on."""

from __future__ import annotations

import json
import time

import pytest
from botocore.exceptions import ClientError
from refit_core.config import ModelConfig
from refit_core.training import job_settings, settings_prefix, training_job_request

from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes

A, B = "churn", "churn-eu"


@pytest.fixture(scope="module")
def aws(two_models_assembly, tmp_path_factory):
    with LocalRuntime(two_models_assembly, tmp_path_factory.mktemp("isolation"), seed=3) as runtime:
        yield runtime


def model_settings(aws, model: str) -> dict[str, str]:
    """The environment of one of the model's functions (its SageMaker role, image, model config)."""
    return next(
        f.environment
        for f in aws.stack.functions.values()
        if json.loads(f.environment["REFIT_MODEL_CONFIG"])["name"] == model
    )


def denied(call, *args, **kwargs) -> str:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    assert caught.value.response["Error"]["Code"] == "AccessDenied"
    return caught.value.response["Error"]["Message"]


def test_each_model_runs_sagemaker_as_its_own_role(aws):
    roles: dict[str, set[str]] = {}
    for function in aws.stack.functions.values():
        model = json.loads(function.environment["REFIT_MODEL_CONFIG"])["name"]
        roles.setdefault(model, set()).add(function.environment["REFIT_SAGEMAKER_ROLE_ARN"])
    assert set(roles) == {A, B} and all(len(arns) == 1 for arns in roles.values())
    assert roles[A] != roles[B]


def test_a_models_role_reaches_nothing_of_another_model(aws):
    """What SageMaker does with churn's role (channels, output upload, checkpoint sync, Data Capture, the endpoint's
    artifact download), tried on churn-eu's prefixes and on churn's own."""
    art, data = aws.artifact_bucket, aws.data_bucket
    aws.put_object(art, f"training/{B}/other-{B}--r1--od1/output/model.tar.gz", b"B's model")
    s3 = aws.bridges.role_client("s3", model_settings(aws, A)["REFIT_SAGEMAKER_ROLE_ARN"], "isolation-test")

    for bucket, key in (
        (art, f"training/{B}/other-{B}--r1--od1/output/model.tar.gz"),
        (art, f"checkpoints/{B}/r1/state.json"),
        (data, f"capture/{B}/other-{B}/champion/2026/01/01/00/x.jsonl"),
    ):
        message = denied(s3.put_object, Bucket=bucket, Key=key, Body=b"planted")
        assert f"s3:PutObject on resource: arn:aws:s3:::{bucket}/{key}" in message
    assert "s3:GetObject" in denied(
        s3.get_object, Bucket=art, Key=f"training/{B}/other-{B}--r1--od1/output/model.tar.gz"
    )
    assert "explicit deny" in denied(s3.list_objects_v2, Bucket=art, Prefix=f"training/{B}/")
    assert "explicit deny" in denied(s3.list_objects_v2, Bucket=data, Prefix=f"validation/{B}/")
    assert aws.read_s3(f"s3://{art}/training/{B}/other-{B}--r1--od1/output/model.tar.gz") == b"B's model"

    # Its own prefixes: output, checkpoints (also deleted) and Data Capture; models/ and reports/ are written once.
    s3.put_object(Bucket=art, Key=f"training/{A}/other-{A}--r1--od1/output/model.tar.gz", Body=b"A's model")
    s3.put_object(Bucket=art, Key=f"checkpoints/{A}/r1/state.json", Body=b"{}")
    s3.delete_object(Bucket=art, Key=f"checkpoints/{A}/r1/state.json")
    s3.put_object(Bucket=data, Key=f"capture/{A}/other-{A}/champion/2026/01/01/00/x.jsonl", Body=b"{}")
    assert s3.list_objects_v2(Bucket=art, Prefix=f"training/{A}/")["KeyCount"] == 1
    for key in (f"models/{A}/r1/lineage.json", f"reports/{A}/r1/gate.json"):
        assert "explicit deny" in denied(s3.put_object, Bucket=art, Key=key, Body=b"rewritten")
        assert "explicit deny" in denied(s3.delete_object, Bucket=art, Key=key)
    assert "explicit deny" in denied(
        s3.delete_object, Bucket=art, Key=f"training/{A}/other-{A}--r1--od1/output/model.tar.gz"
    )


def test_the_refusal_comes_from_the_roles_scope(aws):
    """The control: with the shared role's old grant (put anywhere under training/) added to churn's role, the same
    put into churn-eu's prefix goes through."""
    role = model_settings(aws, A)["REFIT_SAGEMAKER_ROLE_ARN"]
    key = f"training/{B}/other-{B}--r2--od1/output/model.tar.gz"
    s3 = aws.bridges.role_client("s3", role, "isolation-test")
    denied(s3.put_object, Bucket=aws.artifact_bucket, Key=key, Body=b"planted")
    widened = {
        "Effect": "Allow",
        "Action": "s3:PutObject",
        "Resource": f"arn:aws:s3:::{aws.artifact_bucket}/training/*",
    }
    aws.iam.policies[role].append(widened)
    try:
        s3.put_object(Bucket=aws.artifact_bucket, Key=key, Body=b"planted")
    finally:
        aws.iam.policies[role].remove(widened)
    assert aws.read_s3(f"s3://{aws.artifact_bucket}/{key}") == b"planted"


def test_a_training_job_of_one_model_cannot_write_into_another_models_prefix(aws):
    """A full training job (the `train` process on its channels) of churn, with churn's role, whose output path is
    churn-eu's: it trains, and the upload of its model.tar.gz is refused, so nothing lands under churn-eu."""
    settings = model_settings(aws, A)
    model = ModelConfig.model_validate_json(settings["REFIT_MODEL_CONFIG"])
    model = model.model_copy(
        update={"search": model.search.model_copy(update={"families": ["linear"], "max_trials": 1, "cv_folds": 2})}
    )
    art = aws.artifact_bucket
    request = training_job_request(
        model=model,
        name_prefix=f"other-{A}",
        run_id="isolation",
        attempt=1,
        spot=False,
        image_uri=settings["REFIT_IMAGE_URI"],
        role_arn=settings["REFIT_SAGEMAKER_ROLE_ARN"],
        batch_uri=f"s3://{art}/job-data/{A}/isolation/current/",
        earlier_data_uri=None,
        champion_model_uri=None,
        artifact_bucket=art,
        kms_key_arn=settings["REFIT_KMS_KEY_ARN"],
    )
    job = request["TrainingJobName"]
    aws.put_object(art, f"job-data/{A}/isolation/current/batch.csv", to_csv_bytes(churn_batch(400, 2)))
    aws.put_object(
        art,
        settings_prefix(A, "isolation", job) + "config.json",
        json.dumps(job_settings(model, "isolation")).encode(),
    )
    assert request["OutputDataConfig"]["S3OutputPath"] == f"s3://{art}/training/{A}/"
    request["OutputDataConfig"]["S3OutputPath"] = f"s3://{art}/training/{B}/"

    sagemaker = aws.client("sagemaker")
    sagemaker.create_training_job(**request)
    deadline = time.monotonic() + 180
    while (described := sagemaker.describe_training_job(TrainingJobName=job))["TrainingJobStatus"] == "InProgress":
        assert time.monotonic() < deadline, "the training job did not end"
        time.sleep(0.5)
    assert described["TrainingJobStatus"] == "Failed"
    reason = described["FailureReason"]
    assert "AccessDenied" in reason, reason
    assert f"s3:PutObject on resource: arn:aws:s3:::{art}/training/{B}/{job}/output/model.tar.gz" in reason
    assert aws.client("s3").list_objects_v2(Bucket=art, Prefix=f"training/{B}/{job}/")["KeyCount"] == 0
