"""The local runtime's shadow-variant bridge (scripts/local_aws/bridges.py): moto drops CreateEndpointConfig's
ShadowProductionVariants; here they are kept, refused as SageMaker refuses them, described, started with the fleet,
and sent a copy of each sampled request whose reply never reaches the caller; the shadow's metrics and capture are
under its own variant name."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError
from refit_core.artifacts import MODEL_SHA256_ENV, archive_model_sha256
from refit_core.canary import data_capture
from refit_core.shadow import shadow_variants

from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch
from tests.e2e.test_staged_canary import wrap_challenger
from tests.integration.test_capture_and_alarm_bridges import MODEL_KEY, ROW, TRAINING_CONFIG, captured, stack_setting

ENDPOINT = "refit-shadow-bridge"
FAULTY_KEY = MODEL_KEY.replace("--od1/", "--od2/")


@pytest.fixture(scope="module")
def aws(cloud_assembly, tmp_path_factory):
    with LocalRuntime(cloud_assembly, tmp_path_factory.mktemp("shadow-bridge"), seed=11) as runtime:
        yield runtime


@pytest.fixture(scope="module")
def models(aws, tmp_path_factory):
    """Three models of one trained artifact: the champion, a healthy shadow, and a shadow whose model raises (500)."""
    root = tmp_path_factory.mktemp("shadow-model")
    (root / "input" / "data" / "config").mkdir(parents=True)
    (root / "input" / "data" / "config" / "config.json").write_text(json.dumps(TRAINING_CONFIG))
    (root / "input" / "data" / "current").mkdir(parents=True)
    churn_batch(400, 1).to_csv(root / "input" / "data" / "current" / "batch.csv", index=False)
    env = {**os.environ, "REFIT_OPT_ML": str(root), "OMP_NUM_THREADS": "1"}
    trained = subprocess.run([sys.executable, "-m", "refit_training", "train"], env=env, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for path in sorted((root / "model").iterdir()):
            tar.add(path, arcname=path.name)
    s3 = aws.client("s3")
    for key in (MODEL_KEY, FAULTY_KEY):
        s3.put_object(Bucket=aws.artifact_bucket, Key=key, Body=archive.getvalue())
    wrap_challenger(aws, "5xx", tmp_path_factory.mktemp("faulty"), f"s3://{aws.artifact_bucket}/{FAULTY_KEY}")
    sagemaker = aws.client("sagemaker")
    names = {"champion": MODEL_KEY, "healthy": MODEL_KEY, "faulty": FAULTY_KEY}
    for name, key in names.items():
        sagemaker.create_model(
            ModelName=f"{ENDPOINT}-{name}",
            ExecutionRoleArn=stack_setting(aws, "REFIT_SAGEMAKER_ROLE_ARN"),
            PrimaryContainer={
                "Image": stack_setting(aws, "REFIT_IMAGE_URI"),
                "ModelDataUrl": f"s3://{aws.artifact_bucket}/{key}",
                "Environment": {
                    MODEL_SHA256_ENV: archive_model_sha256(s3.get_object(Bucket=aws.artifact_bucket, Key=key)["Body"])
                },
            },
        )
    return {name: f"{ENDPOINT}-{name}" for name in names}


def shadow_config(aws, models: dict, name: str, shadow: str, percent: int) -> str:
    production, shadows = shadow_variants(models["champion"], models[shadow], percent, "ml.m5.large")
    aws.client("sagemaker").create_endpoint_config(
        EndpointConfigName=f"{ENDPOINT}-{name}",
        ProductionVariants=production,
        ShadowProductionVariants=shadows,
        DataCaptureConfig=data_capture(
            f"s3://{aws.data_bucket}/capture/churn/", 100, stack_setting(aws, "REFIT_KMS_KEY_ARN")
        ),
    )
    return f"{ENDPOINT}-{name}"


def totals(aws, variant: str, since: datetime) -> dict[str, float]:
    def total(metric: str) -> float:
        points = aws.client("cloudwatch").get_metric_statistics(
            Namespace="AWS/SageMaker",
            MetricName=metric,
            Dimensions=[{"Name": "EndpointName", "Value": ENDPOINT}, {"Name": "VariantName", "Value": variant}],
            StartTime=since,
            EndTime=datetime.now(UTC) + timedelta(minutes=1),
            Period=3600,
            Statistics=["Sum"],
        )["Datapoints"]
        return sum(p["Sum"] for p in points)

    return {m: total(m) for m in ("Invocations", "Invocation5XXErrors", "Invocation4XXErrors")}


def invoke(aws, n: int) -> list[str]:
    runtime = aws.client("sagemaker-runtime")
    replies = []
    for _ in range(n):
        reply = runtime.invoke_endpoint(EndpointName=ENDPOINT, Body=ROW, ContentType="text/csv")
        assert "probabilities" in json.loads(reply["Body"].read())
        replies.append(reply["ResponseMetadata"]["HTTPHeaders"]["x-amzn-invoked-production-variant"])
    return replies


def by_variant(aws, before: int) -> dict[str, int]:
    """Records per variant in the capture files written since `before` files (the background flush writes some)."""
    aws.flush_capture()
    counts: dict[str, int] = {}
    for uri in aws.bridges.capture_files[before:]:
        variant = uri.split(f"/{ENDPOINT}/", 1)[1].split("/", 1)[0]
        counts[variant] = counts.get(variant, 0) + len(captured(aws, [uri]))
    return counts


def test_configs_sagemaker_refuses_are_refused(aws, models):
    sagemaker = aws.client("sagemaker")
    production, shadows = shadow_variants(models["champion"], models["healthy"], 50, "ml.m5.large")
    with pytest.raises(ClientError, match="exactly one variant in ProductionVariants"):
        sagemaker.create_endpoint_config(
            EndpointConfigName=f"{ENDPOINT}-two",
            ProductionVariants=[*production, {**production[0], "VariantName": "other"}],
            ShadowProductionVariants=shadows,
        )
    with pytest.raises(ClientError, match="unique"):
        sagemaker.create_endpoint_config(
            EndpointConfigName=f"{ENDPOINT}-same",
            ProductionVariants=production,
            ShadowProductionVariants=[{**shadows[0], "VariantName": "champion"}],
        )
    with pytest.raises(ClientError, match="ml.t3.medium"):
        sagemaker.create_endpoint_config(
            EndpointConfigName=f"{ENDPOINT}-type",
            ProductionVariants=production,
            ShadowProductionVariants=[{**shadows[0], "InstanceType": "ml.t3.medium"}],
        )
    names = [c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs(MaxResults=100)["EndpointConfigs"]]
    assert not [n for n in names if n.startswith(f"{ENDPOINT}-")]


def test_a_shadow_gets_every_request_at_100_percent_and_callers_never_see_its_5xx(aws, models):
    sagemaker = aws.client("sagemaker")
    first = shadow_config(aws, models, "faulty", "faulty", 100)
    described = sagemaker.describe_endpoint_config(EndpointConfigName=first)
    assert [v["VariantName"] for v in described["ShadowProductionVariants"]] == ["challenger"]
    sagemaker.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName=first)
    endpoint = sagemaker.describe_endpoint(EndpointName=ENDPOINT)
    assert [v["VariantName"] for v in endpoint["ProductionVariants"]] == ["champion"]
    assert [(v["VariantName"], v["CurrentWeight"]) for v in endpoint["ShadowProductionVariants"]] == [
        ("challenger", 1.0)
    ]
    aws.flush_capture()
    files = len(aws.bridges.capture_files)
    since = datetime.now(UTC) - timedelta(minutes=1)
    assert invoke(aws, 30) == ["champion"] * 30  # every reply is the champion's, none an error
    assert totals(aws, "champion", since) == {"Invocations": 30, "Invocation5XXErrors": 0, "Invocation4XXErrors": 0}
    assert totals(aws, "challenger", since) == {"Invocations": 30, "Invocation5XXErrors": 30, "Invocation4XXErrors": 0}
    assert by_variant(aws, files) == {"champion": 30}  # failed shadow replies are not captured
    with pytest.raises(ClientError, match="no variant challenger"):
        aws.client("sagemaker-runtime").invoke_endpoint(
            EndpointName=ENDPOINT, Body=ROW, ContentType="text/csv", TargetVariant="challenger"
        )


def test_the_shadow_weight_samples_the_copies_and_their_replies_are_captured_under_the_shadow(aws, models):
    sagemaker = aws.client("sagemaker")
    sagemaker.update_endpoint(
        EndpointName=ENDPOINT, EndpointConfigName=shadow_config(aws, models, "half", "healthy", 50)
    )
    aws.flush_capture()
    files = len(aws.bridges.capture_files)
    since = datetime.now(UTC) - timedelta(minutes=1)
    before = totals(aws, "challenger", since)
    assert invoke(aws, 200) == ["champion"] * 200
    copies = totals(aws, "challenger", since)["Invocations"] - before["Invocations"]
    assert 65 <= copies <= 135, copies  # binomial(200, 0.5): mean 100, sd 7.1; 5 sd either side
    assert totals(aws, "challenger", since)["Invocation5XXErrors"] == before["Invocation5XXErrors"]
    assert by_variant(aws, files) == {"champion": 200, "challenger": copies}
    # Back to the champion alone: no more copies, and DescribeEndpoint lists no shadow.
    plain = f"{ENDPOINT}-plain"
    sagemaker.create_endpoint_config(
        EndpointConfigName=plain,
        ProductionVariants=shadow_variants(models["champion"], models["healthy"], 50, "ml.m5.large")[0],
    )
    sagemaker.update_endpoint(EndpointName=ENDPOINT, EndpointConfigName=plain)
    assert "ShadowProductionVariants" not in sagemaker.describe_endpoint(EndpointName=ENDPOINT)
    invoke(aws, 5)
    assert totals(aws, "challenger", since)["Invocations"] == before["Invocations"] + copies
