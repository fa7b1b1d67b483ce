"""One test per bridge of the local runtime over moto (see scripts/local_aws/bridges.py)."""

from __future__ import annotations

import json
import time

import pytest
from botocore.exceptions import ClientError
from refit_core.champion import metadata_value

from scripts.local_aws.bridges import JOB_WAIT_SECONDS
from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes


@pytest.fixture(scope="module")
def aws(cloud_assembly, tmp_path_factory):
    with LocalRuntime(cloud_assembly, tmp_path_factory.mktemp("bridges"), seed=1) as runtime:
        yield runtime


def prepare_function(aws):
    return next(name for name in aws.stack.functions if "Prepare" in name)


def test_lambda_runs_the_real_handler_and_errors_in_runtime_shape(aws):
    lam = aws.client("lambda")
    ok = lam.invoke(
        FunctionName=prepare_function(aws),
        Payload=json.dumps({"payload": {"force": True}, "execution_name": "bridge-1"}),
    )
    body = json.loads(ok["Payload"].read())
    assert "FunctionError" not in ok and body["run_id"] == "bridge-1" and body["no_data"] is True
    bad = lam.invoke(
        FunctionName=prepare_function(aws), Payload=json.dumps({"payload": {"forse": 1}, "execution_name": "bridge-2"})
    )
    error = json.loads(bad["Payload"].read())
    assert bad["FunctionError"] == "Unhandled"
    assert error["errorType"] == "RunInputError" and "forse: unknown field" in error["errorMessage"]
    lock = aws.client("dynamodb").get_item(TableName=aws.audit_table, Key={"pk": {"S": "churn"}, "sk": {"S": "lock"}})
    assert lock["Item"]["owner"]["S"] == "bridge-1"  # the real handler took the single-flight lock
    aws.client("dynamodb").delete_item(TableName=aws.audit_table, Key={"pk": {"S": "churn"}, "sk": {"S": "lock"}})


def test_events_reach_state_machines_and_schedules_do_not_match_other_events(aws):
    before = {e["executionArn"] for e in aws.executions("churn")}
    aws.put_object(aws.data_bucket, "elsewhere/ignored.csv", b"a\n1\n")
    aws.put_object(aws.data_bucket, "incoming/churn/notes.txt", b"not data")
    arn = aws.land_batch("churn", "first.csv", to_csv_bytes(churn_batch(2000, 1)))
    time.sleep(0.5)
    started = [e["executionArn"] for e in aws.executions("churn") if e["executionArn"] not in before]
    assert started == [arn]  # one S3 rule match; the schedule rule, the other prefix and the .txt start nothing
    # The event as AWS delivers it: the object's ETag is `detail.object.etag` (moto's own event says `eTag`).
    delivered = json.loads(aws.client("stepfunctions").describe_execution(executionArn=arn)["input"])
    etag = aws.client("s3").head_object(Bucket=aws.data_bucket, Key="incoming/churn/first.csv")["ETag"].strip('"')
    assert delivered["detail"]["object"]["etag"] == etag and "eTag" not in delivered["detail"]["object"]
    execution = aws.wait_for(arn)
    assert execution["status"] == "SUCCEEDED"


@pytest.mark.parametrize(
    ("key", "matches"),
    [
        ("incoming/churn/b.csv", True),
        ("incoming/churn/b.csv.gz", True),
        ("incoming/churn/b.parquet", True),
        ("incoming/churn/2026/11/b.csv", True),  # sub-folders, as the prefix filter matched them
        ("incoming/churn/b.txt", False),
        ("incoming/churn/b.csv.txt", False),
        ("incoming/churn/b.CSV", False),  # EventBridge's wildcard is case-sensitive, as refit's reader is
        ("incoming/churn/b.gz", False),
        ("incoming/churn-eu/b.csv", False),  # another model's prefix
        ("elsewhere/incoming/churn/b.csv", False),
    ],
)
def test_the_new_data_rule_matches_as_eventbridge_does(aws, key, matches):
    """The local runtime decides a rule's match with moto's EventPattern (scripts/local_aws/bridges.py route_event);
    it honours the deployed rule's wildcard filters (prefix and suffix together) as EventBridge documents them."""
    from moto.events.models import events_backends

    from scripts.local_aws.runtime import ACCOUNT

    rules = events_backends[ACCOUNT][aws.region].event_buses["default"].rules.values()
    rule = next(r for r in rules if "Object Created" in (r.event_pattern.dump() or ""))
    event = {
        "version": "0",
        "id": "1",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": ACCOUNT,
        "region": aws.region,
        "resources": [],
        "detail": {"bucket": {"name": aws.data_bucket}, "object": {"key": key, "etag": "e"}},
    }
    assert rule.event_pattern.matches_event(event) is matches


def test_training_runs_the_entrypoint_and_reports_seconds_and_metrics(aws):
    sagemaker = aws.client("sagemaker")
    job = sagemaker.describe_training_job(
        TrainingJobName=sagemaker.list_training_jobs()["TrainingJobSummaries"][0]["TrainingJobName"]
    )
    assert job["TrainingJobStatus"] == "Completed"
    assert job["TrainingTimeInSeconds"] >= 1 and job["BillableTimeInSeconds"] >= 1
    assert {m["MetricName"] for m in job["FinalMetricDataList"]} >= {"holdout:roc_auc"}
    bucket, key = job["ModelArtifacts"]["S3ModelArtifacts"].removeprefix("s3://").split("/", 1)
    assert aws.client("s3").head_object(Bucket=bucket, Key=key)["ContentLength"] > 1000


def test_a_training_poll_loop_waits_for_the_job_instead_of_spinning(aws):
    """While a job runs, a Wait lasts until the job ends or JOB_WAIT_SECONDS pass: a Wait that returned at once made
    the first run's poll loop enter "Wait for training" hundreds of times (a DescribeTrainingJob every ~10 ms)."""
    run = min(aws.executions("churn"), key=lambda e: e["startDate"])["executionArn"]  # the first run: it trained
    events = aws.client("stepfunctions").get_execution_history(executionArn=run, maxResults=1000)["events"]
    entered = [e for e in events if e["type"].endswith("StateEntered")]
    waits = [e["timestamp"] for e in entered if e["stateEnteredEventDetails"]["name"] == "Wait for training"]
    assert len(waits) >= 2  # the job was polled while it ran ...
    polled_for = (waits[-1] - waits[0]).total_seconds()
    assert len(waits) <= polled_for / JOB_WAIT_SECONDS + 2  # ... about once a JOB_WAIT_SECONDS, not continuously
    names = [e["stateEnteredEventDetails"]["name"] for e in entered]
    assert "Gate challenger" in names or "Deploy challenger" in names  # and it went on once the job ended


def test_training_reads_its_channels_prefixes_the_pinned_window_and_nothing_beside_them(aws):
    """StartTraining pins the objects a job trains on under job-data/ (refit_core.window); the bridge downloads an
    S3Prefix channel as SageMaker's File mode does, so the job sees exactly those objects (its rows, by file)."""
    from refit_core.training import read_training_outputs

    sagemaker, s3 = aws.client("sagemaker"), aws.client("s3")
    name = sagemaker.list_training_jobs()["TrainingJobSummaries"][0]["TrainingJobName"]
    job = sagemaker.describe_training_job(TrainingJobName=name)
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in job["InputDataConfig"]}
    current = channels["current"]["S3Uri"]
    assert channels["current"]["S3DataType"] == "S3Prefix" and "/job-data/churn/" in current
    bucket, prefix = current.removeprefix("s3://").split("/", 1)
    pinned = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    assert [key[len(prefix) :] for key in pinned] == ["first.csv"]
    evaluation = json.loads(read_training_outputs(s3, job["OutputDataConfig"]["S3OutputPath"], name)["evaluation.json"])
    assert evaluation["inputs"]["rows"] == {"current/first.csv": 2000}


def test_update_endpoint_and_weighted_routing_to_real_serve_processes(aws):
    sagemaker = aws.client("sagemaker")
    endpoint = aws.model("churn").endpoint_name
    current = sagemaker.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    model = sagemaker.describe_endpoint_config(EndpointConfigName=current)["ProductionVariants"][0]["ModelName"]
    variants = [
        {
            "VariantName": name,
            "ModelName": model,
            "InitialInstanceCount": 1,
            "InstanceType": "ml.m5.large",
            "InitialVariantWeight": weight,
        }
        for name, weight in (("champion", 0.5), ("challenger", 0.5))
    ]
    sagemaker.create_endpoint_config(EndpointConfigName=f"{endpoint}-bridge", ProductionVariants=variants)
    sagemaker.update_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-bridge")
    assert sagemaker.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"] == f"{endpoint}-bridge"
    served = [aws.invoke_endpoint("churn", "12.0,70.5,1,48.0,basic,north")["variant"] for _ in range(40)]
    assert 5 < served.count("challenger") < 35
    assert aws.invoke_endpoint("churn", "1,2,3,4,plus,east", target_variant="challenger")["variant"] == "challenger"
    with pytest.raises(aws.client("sagemaker-runtime").exceptions.ModelError):
        aws.invoke_endpoint("churn", "not,a,row")
    errors = 0.0
    for variant in ("champion", "challenger"):
        stats = aws.client("cloudwatch").get_metric_statistics(
            Namespace="AWS/SageMaker",
            MetricName="Invocation4XXErrors",
            Statistics=["Sum"],
            Period=60,
            StartTime=time.time() - 600,
            EndTime=time.time() + 60,
            Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}],
        )
        errors += sum(p["Sum"] for p in stats["Datapoints"])
    assert errors == 1  # the one malformed request, on whichever variant served it
    sagemaker.update_endpoint(EndpointName=endpoint, EndpointConfigName=current)


def test_an_update_made_to_fail_ends_in_that_status_and_a_failed_endpoint_refuses_updates(aws):
    sagemaker = aws.client("sagemaker")
    endpoint = aws.model("churn").endpoint_name
    current = sagemaker.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    variants = sagemaker.describe_endpoint_config(EndpointConfigName=current)["ProductionVariants"]
    other = f"{endpoint}-faulty"
    sagemaker.create_endpoint_config(
        EndpointConfigName=other,
        ProductionVariants=[
            {k: v[k] for k in ("VariantName", "ModelName", "InitialInstanceCount", "InstanceType")}
            | {"InitialVariantWeight": 1.0}
            for v in variants
        ],
    )
    aws.fail_endpoint_update("churn", other, "UpdateRollbackFailed", "both the update and its rollback failed")
    sagemaker.update_endpoint(EndpointName=endpoint, EndpointConfigName=other)
    described = sagemaker.describe_endpoint(EndpointName=endpoint)
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("UpdateRollbackFailed", current)
    assert described["FailureReason"] == "both the update and its rollback failed"
    sagemaker.update_endpoint(EndpointName=endpoint, EndpointConfigName=current)  # allowed, and the fault is spent
    assert sagemaker.describe_endpoint(EndpointName=endpoint)["EndpointStatus"] == "InService"
    aws.fail_endpoint_update("churn")  # the next update, to any config, ends Failed
    sagemaker.update_endpoint(EndpointName=endpoint, EndpointConfigName=other)
    assert sagemaker.describe_endpoint(EndpointName=endpoint)["EndpointStatus"] == "Failed"
    try:
        with pytest.raises(ClientError, match="DeleteEndpoint is the only operation"):
            sagemaker.update_endpoint(EndpointName=endpoint, EndpointConfigName=current)
    finally:  # later tests need the endpoint: put it back as if it had been recreated
        from moto.sagemaker.models import sagemaker_backends

        backend = sagemaker_backends[aws.bridges.account][aws.bridges.region]
        backend.endpoints[endpoint].endpoint_status = "InService"
        backend.endpoints[endpoint].failure_reason = None
    with pytest.raises(ValueError, match="not Failed or UpdateRollbackFailed"):
        aws.fail_endpoint_update("churn", status="InService")


def test_wait_states_do_not_sleep_and_call_their_hook(aws):
    calls = []
    aws.on_wait("Bake canary", lambda state, seconds: calls.append(seconds))
    started = time.monotonic()
    aws.wait_for(aws.land_batch("churn", "drifted.csv", to_csv_bytes(churn_batch(2000, 5, shift=1.0))))
    aws.on_wait("Bake canary", None)
    assert calls == [600] and time.monotonic() - started < 120


def test_update_model_package_keeps_customer_metadata(aws):
    sagemaker = aws.client("sagemaker")
    arn = sagemaker.create_model_package(
        ModelPackageGroupName=aws.model("churn").package_group,
        ModelApprovalStatus="PendingManualApproval",
        InferenceSpecification={
            "Containers": [{"Image": "img", "ModelDataUrl": "s3://b/m.tar.gz"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
        CustomerMetadataProperties={"run_id": "r1", "lineage_uri": "s3://b/l.json"},
    )["ModelPackageArn"]
    sagemaker.update_model_package(
        ModelPackageArn=arn, ModelApprovalStatus="Approved", CustomerMetadataProperties={"approved_by": "me"}
    )
    package = sagemaker.describe_model_package(ModelPackageName=arn)
    assert package["ModelApprovalStatus"] == "Approved"
    assert package["CustomerMetadataProperties"] == {
        "run_id": "r1",
        "lineage_uri": "s3://b/l.json",
        "approved_by": "me",
    }
    # A metadata-only update keeps the status and description (moto sets them to null); keys to remove go.
    sagemaker.update_model_package(ModelPackageArn=arn, ApprovalDescription="checked by me")
    sagemaker.update_model_package(
        ModelPackageArn=arn,
        CustomerMetadataProperties={"refit:serving": "true"},
        CustomerMetadataPropertiesToRemove=["approved_by"],
    )
    package = sagemaker.describe_model_package(ModelPackageName=arn)
    assert (package["ModelApprovalStatus"], package["ApprovalDescription"]) == ("Approved", "checked by me")
    assert package["CustomerMetadataProperties"] == {
        "run_id": "r1",
        "lineage_uri": "s3://b/l.json",
        "refit:serving": "true",
    }
    # SageMaker's pattern for metadata values (letters, spaces, digits, _.:/=+-@) and its 256 characters
    for value in ("rolled back, canary (5XX)", "x" * 257):
        with pytest.raises(ClientError, match="CustomerMetadataProperties.refit:reason"):
            sagemaker.update_model_package(ModelPackageArn=arn, CustomerMetadataProperties={"refit:reason": value})
    sagemaker.update_model_package(
        ModelPackageArn=arn, CustomerMetadataProperties={"refit:reason": metadata_value("rolled back, canary (5XX)")}
    )


def test_image_assets_are_published_under_their_content_hash(aws):
    ecr = aws.client("ecr")
    for asset_hash, image in aws.assembly.assets["dockerImages"].items():
        repository = (
            next(iter(image["destinations"].values()))["repositoryName"]
            .replace("${AWS::AccountId}", "123456789012")
            .replace("${AWS::Region}", aws.region)
        )
        details = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": asset_hash}])["imageDetails"]
        assert details[0]["imageDigest"].startswith("sha256:")


def test_an_asynchronous_invocation_is_answered_at_once_and_runs_after_the_callers(aws):
    """InvocationType Event (Cleanup starting MlflowSync): moto ran the function inside the caller's invocation; here
    the caller gets 202 at once and the function runs in its own thread once the invocation in progress ends."""
    key = {"pk": {"S": "churn"}, "sk": {"S": "lock"}}
    payload = json.dumps({"payload": {"force": True}, "execution_name": "bridge-async"})
    with aws.bridges.invoke_lock:  # as if another function's invocation were in progress
        answer = aws.client("lambda").invoke(
            FunctionName=prepare_function(aws), InvocationType="Event", Payload=payload
        )
        assert answer["StatusCode"] == 202 and answer["Payload"].read() == b""
        assert "Item" not in aws.client("dynamodb").get_item(TableName=aws.audit_table, Key=key)
    deadline = time.monotonic() + 30
    while "Item" not in aws.client("dynamodb").get_item(TableName=aws.audit_table, Key=key):
        assert time.monotonic() < deadline, "the asynchronous invocation never ran"
        time.sleep(0.05)
    item = aws.client("dynamodb").get_item(TableName=aws.audit_table, Key=key)["Item"]
    assert item["owner"]["S"] == "bridge-async"  # the real handler ran, later
    aws.client("dynamodb").delete_item(TableName=aws.audit_table, Key=key)


def test_lambda_output_goes_to_the_functions_log_and_retries_do_not_sleep(aws):
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    function = prepare_function(aws)
    aws.client("lambda").invoke(
        FunctionName=function, Payload=json.dumps({"payload": {"force": True}, "execution_name": "bridge-log"})
    )
    aws.client("dynamodb").delete_item(TableName=aws.audit_table, Key={"pk": {"S": "churn"}, "sk": {"S": "lock"}})
    log = (aws.workdir / "logs" / f"{function}.log").read_text()
    assert "bridge-log" in log  # Powertools logged the event to the function's log, as CloudWatch Logs would hold it
    started = time.monotonic()
    retrier_decl.time.sleep(30)
    assert time.monotonic() - started < 1 and time.sleep is not retrier_decl.time.sleep


def test_a_lambdas_environment_is_seen_only_by_the_thread_running_it():
    """Other threads (a parallel Map branch building a boto3 client, say) iterate os.environ while a Lambda runs;
    they must neither see its variables nor meet one vanishing mid-iteration."""
    import threading

    from scripts.local_aws.bridges import _ThreadLocalEnviron

    base = {"HOME": "/root", "AWS_REGION": "us-east-1"}
    environ = _ThreadLocalEnviron(base)
    seen: dict[str, dict[str, str]] = {}
    inside, release = threading.Event(), threading.Event()

    def invocation():
        with environ.overlaid({"REFIT_MODEL_CONFIG": "{}", "AWS_REGION": "eu-west-1"}):
            del environ["HOME"]
            environ["SET_BY_HANDLER"] = "1"
            seen["lambda"] = dict(environ)
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=invocation)
    thread.start()
    assert inside.wait(5)
    seen["other"] = dict(environ)
    release.set()
    thread.join()
    assert seen["lambda"] == {"AWS_REGION": "eu-west-1", "REFIT_MODEL_CONFIG": "{}", "SET_BY_HANDLER": "1"}
    assert seen["other"] == base and dict(environ) == base and base == {"HOME": "/root", "AWS_REGION": "us-east-1"}


def test_a_training_channel_keeps_its_sub_folders_as_sagemaker_does():
    from scripts.local_aws.bridges import channel_relative_path

    assert channel_relative_path("validation/churn/", "validation/churn/2026/11/part.csv") == "2026/11/part.csv"
    assert channel_relative_path("incoming/churn/first.csv", "incoming/churn/first.csv") == "first.csv"
    assert channel_relative_path("job-data/churn/r/j/train/", "job-data/churn/r/j/train/r1-a.csv") == "r1-a.csv"


def tampered(archive: bytes) -> bytes:
    """`archive` with one byte added to its model.joblib: what someone with write access to the bucket could plant."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as source,
        tarfile.open(fileobj=buffer, mode="w:gz") as target,
    ):
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else b""
            if member.name.endswith("model.joblib"):
                data += b"\x00"
            member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def test_a_tampered_model_is_refused_at_load_by_serve_and_by_a_lambda(aws):
    """The registry's digest is checked where the file is unpickled. A package whose model.tar.gz was swapped after
    Register: the real Deploy Lambda starts a canary with it, the challenger's real `serve` refuses the file, the
    update fails as SageMaker's does and the endpoint stays on its champion, the refusal in FailureReason. The
    champion's own file swapped: the drift check (CheckBatch) refuses it before scoring the batch."""
    from refit_core.champion import find_champion

    sagemaker, s3, lam = aws.client("sagemaker"), aws.client("s3"), aws.client("lambda")
    endpoint = aws.model("churn").endpoint_name
    before = sagemaker.describe_endpoint(EndpointName=endpoint)
    champion = find_champion(sagemaker, endpoint)
    digest = champion["model_sha256"]
    # Every package a run registered records the digest of its archive's model.joblib (Register), the champion's too.
    from refit_core.artifacts import archive_model_sha256

    group = aws.model("churn").package_group
    registered = [
        sagemaker.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
        for summary in sagemaker.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]
    ]
    by_runs = [p for p in registered if "training_job" in p.get("CustomerMetadataProperties", {})]
    assert by_runs and champion["model_package_arn"] in {p["ModelPackageArn"] for p in by_runs}
    for package in by_runs:
        url = package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
        archive = s3.get_object(Bucket=url.split("/")[2], Key=url.split("/", 3)[3])["Body"]
        assert package["CustomerMetadataProperties"]["model_sha256"] == archive_model_sha256(archive), url
    bucket, key = champion["model_data_url"].removeprefix("s3://").split("/", 1)
    original = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    image = sagemaker.describe_model(ModelName=champion["model_name"])["PrimaryContainer"]["Image"]
    swapped = f"training/churn/{endpoint}--tampered--od1/output/model.tar.gz"
    s3.put_object(Bucket=bucket, Key=swapped, Body=tampered(original))
    package = sagemaker.create_model_package(
        ModelPackageGroupName=group,
        ModelApprovalStatus="Approved",
        InferenceSpecification={
            "Containers": [{"Image": image, "ModelDataUrl": f"s3://{bucket}/{swapped}"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
        CustomerMetadataProperties={"model_sha256": digest},  # the file Register saw, not the one there now
    )["ModelPackageArn"]
    deploy = next(name for name in aws.stack.functions if "Deploy" in name)
    started = lam.invoke(
        FunctionName=deploy,
        Payload=json.dumps(
            {
                "action": "start",
                "run_id": "tampered",
                "model_data_url": f"s3://{bucket}/{swapped}",
                "model_package_arn": package,
            }
        ),
    )
    assert "FunctionError" not in started
    after = sagemaker.describe_endpoint(EndpointName=endpoint)
    assert (after["EndpointStatus"], after["EndpointConfigName"]) == ("InService", before["EndpointConfigName"])
    assert f"the model registry records {digest}; refusing to load it" in after["FailureReason"]
    assert aws.invoke_endpoint("churn", "12.0,70.5,1,48.0,basic,north")["variant"] == "champion"
    # The config Deploy created captures with the project key (no IAM condition key covers it: README, Security).
    created = sagemaker.describe_endpoint_config(
        EndpointConfigName=json.loads(started["Payload"].read())["expected_config"]
    )
    kms_key = next(f.environment["REFIT_KMS_KEY_ARN"] for f in aws.stack.functions.values() if "Deploy" in f.name)
    assert (created["DataCaptureConfig"]["KmsKeyId"], created["KmsKeyId"]) == (kms_key, kms_key)

    check = next(name for name in aws.stack.functions if "CheckBatch" in name)
    s3.put_object(Bucket=bucket, Key=key, Body=tampered(original))
    try:
        refused = lam.invoke(
            FunctionName=check,
            Payload=json.dumps({"run_id": "tampered", "data_uri": f"s3://{aws.data_bucket}/incoming/churn/first.csv"}),
        )
    finally:
        s3.put_object(Bucket=bucket, Key=key, Body=original)
    error = json.loads(refused["Payload"].read())
    assert refused["FunctionError"] == "Unhandled" and error["errorType"] == "ArtifactIntegrityError", error
    assert error["errorMessage"].startswith(f"{champion['model_data_url']}: model.joblib has SHA-256 ")
    assert f"the model registry records {digest}; refusing to load it" in error["errorMessage"]
