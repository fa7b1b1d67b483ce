"""The local runtime's shadow-variant bridge (scripts/local_aws/bridges.py): moto drops CreateEndpointConfig's
ShadowProductionVariants; here they are kept, refused as SageMaker refuses them, described, started with the fleet,
and sent a copy of each sampled request whose reply never reaches the caller; the shadow's metrics and capture are
under its own variant name."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from botocore.exceptions import ClientError
from refit_core.artifacts import MODEL_SHA256_ENV, archive_model_sha256
from refit_core.audit import canary_step_line
from refit_core.canary import canary_variants, data_capture
from refit_core.capture import read_capture
from refit_core.config import CanarySettings, DeploySettings, ShadowSettings, SyntheticTrafficSettings
from refit_core.divergence import holdout_reference
from refit_core.shadow import shadow_variants
from refit_core.steps import SyntheticTraffic
from refit_core.synthetic import SyntheticTrafficError, holdout_rows_key, inference_id, replay_lines
from refit_handlers.deploy import CheckCanary, CheckShadow, SendSynthetic, check_canary, check_shadow, synthetic_traffic

from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch
from tests.conftest import handler_settings
from tests.e2e.helpers import wrap_challenger
from tests.integration.test_capture_and_alarm_bridges import MODEL_KEY, ROW, TRAINING_CONFIG, captured, stack_setting
from tests.unit.test_capture import BINARY, FEATURES

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
    return totals_of(aws, ENDPOINT, variant, since)


def totals_of(aws, endpoint: str, variant: str, since: datetime) -> dict[str, float]:
    def total(metric: str) -> float:
        points = aws.client("cloudwatch").get_metric_statistics(
            Namespace="AWS/SageMaker",
            MetricName=metric,
            Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}],
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


# ---------------------------------------------------------------- synthetic traffic for a quiet step
# The Deploy handler's check and `synthetic_traffic` action (refit_core.synthetic) called directly against this
# module's runtime and models: the requests reach the variants' real serve processes (TargetVariant, or the shadow's
# copies), CloudWatch counts them per variant, Data Capture records their marked InferenceId, and the monitor's
# capture reader leaves them out.
SYNTH_ENDPOINT = "refit-synthetic-bridge"
SYNTH_RUN = "20261129T110000Z-5e7a11"


def synthetic_settings(aws, endpoint: str, **deploy):
    """Floors of 20 (invocations, p99 samples, captured outputs): the top-up's mechanics, on little traffic."""
    floors = {"min_invocations": 20, "min_latency_samples": 20}
    config = handler_settings(
        canary=CanarySettings(steps=[0.5], divergence_min_samples=20, **floors),
        deploy=DeploySettings(
            synthetic_traffic=SyntheticTrafficSettings(enabled=True),
            shadow=ShadowSettings(min_captured_predictions=20, **floors),
            **deploy,
        ),
    )
    rows = replay_lines(churn_batch(60, 3), ["churned"], 60, 1)
    aws.client("s3").put_object(
        Bucket=aws.artifact_bucket, Key=holdout_rows_key("churn", SYNTH_RUN), Body=rows.encode()
    )
    return dataclasses.replace(
        config, endpoint_name=endpoint, artifact_bucket=aws.artifact_bucket, data_bucket=aws.data_bucket
    )


def captured_ids(aws, endpoint: str, before: int) -> dict[str, list[str | None]]:
    """Each variant's captured inference ids in the capture files written since `before` files."""
    aws.flush_capture()
    ids: dict[str, list[str | None]] = {}
    for uri in aws.bridges.capture_files[before:]:
        if f"/{endpoint}/" not in uri:
            continue
        variant = uri.split(f"/{endpoint}/", 1)[1].split("/", 1)[0]
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        for line in aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].iter_lines():
            if line.strip():
                ids.setdefault(variant, []).append(json.loads(line)["eventMetadata"].get("inferenceId"))
    return ids


def test_a_quiet_canary_step_is_topped_up_per_variant_and_judged_on_it(aws, models):
    config = synthetic_settings(aws, SYNTH_ENDPOINT)
    sagemaker, cloudwatch, s3 = aws.client("sagemaker"), aws.client("cloudwatch"), aws.client("s3")
    sagemaker.create_endpoint_config(
        EndpointConfigName=f"{SYNTH_ENDPOINT}-canary",
        ProductionVariants=canary_variants(models["champion"], models["healthy"], 0.5, "ml.m5.large"),
        DataCaptureConfig=data_capture(
            f"s3://{aws.data_bucket}/capture/churn/", 100, stack_setting(aws, "REFIT_KMS_KEY_ARN")
        ),
    )
    sagemaker.create_endpoint(EndpointName=SYNTH_ENDPOINT, EndpointConfigName=f"{SYNTH_ENDPOINT}-canary")
    aws.flush_capture()
    files = len(aws.bridges.capture_files)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    for _ in range(2):  # a trickle of live traffic, all to the challenger
        aws.client("sagemaker-runtime").invoke_endpoint(
            EndpointName=SYNTH_ENDPOINT, Body=ROW, ContentType="text/csv", TargetVariant="challenger"
        )
    before = SyntheticTraffic(step=-1)
    quiet = check_canary(
        CheckCanary(action="check_canary", canary_started_at=started, synthetic=before),
        config,
        cloudwatch,
        sagemaker,
        s3,
    )
    assert quiet["next"] == "synthetic" and quiet["steps"] == [] and "quiet window" in quiet["reason"]
    assert (quiet["synthetic_step"], quiet["synthetic_requests"]) == (0, {"challenger": 18, "champion": 20})

    sent = SyntheticTraffic(
        **synthetic_traffic(
            SendSynthetic(action="synthetic_traffic", run_id=SYNTH_RUN, step=0, requests=quiet["synthetic_requests"]),
            config,
            s3,
            aws.client("sagemaker-runtime"),
        )
    )
    assert {name: (v.answered, v.served_by) for name, v in sent.variants.items()} == {
        "challenger": (18, {"challenger": 18}),
        "champion": (20, {"champion": 20}),
    }
    window = datetime.fromisoformat(started) - timedelta(minutes=1)
    assert totals_of(aws, SYNTH_ENDPOINT, "challenger", window)["Invocations"] == 20
    assert totals_of(aws, SYNTH_ENDPOINT, "champion", window)["Invocations"] == 20
    ids = captured_ids(aws, SYNTH_ENDPOINT, files)
    assert sorted(map(str, ids["challenger"])) == sorted(
        ["None", "None", *(inference_id(SYNTH_RUN, 0, n) for n in range(18))]
    )
    assert ids["champion"] == [inference_id(SYNTH_RUN, 0, n) for n in range(18, 38)]
    # What the monitor reads of these captures: the two live requests only.
    monitored = 0
    for uri in aws.bridges.capture_files[files:]:
        if f"/{SYNTH_ENDPOINT}/" in uri:
            bucket, key = uri.removeprefix("s3://").split("/", 1)
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].iter_lines()
            monitored += len(read_capture(body, source=uri, variant="x", features=FEATURES, problem_type=BINARY).frame)
    assert monitored == 2

    judged = check_canary(
        CheckCanary(action="check_canary", canary_started_at=started, synthetic=sent), config, cloudwatch, sagemaker, s3
    )
    assert judged["healthy"] and judged["next"] == "promote", judged["reason"]
    step = judged["steps"][0]
    assert step["synthetic"]["requests"] == {"challenger": 18, "champion": 20}
    assert "judged with synthetic traffic" in canary_step_line(step)  # the summary's and run report's step line
    assert (
        "judged with synthetic traffic" in judged["reason"] and "18 to challenger, 20 to champion" in judged["reason"]
    )


def test_a_quiet_shadow_bake_is_topped_up_through_the_champion_and_the_shadow_gets_the_copies(aws, models):
    endpoint = f"{SYNTH_ENDPOINT}-shadow"  # its own metrics: the window starts at the minute, as CloudWatch rounds it
    config = synthetic_settings(aws, endpoint, mode="shadow")
    sagemaker, cloudwatch, s3 = aws.client("sagemaker"), aws.client("cloudwatch"), aws.client("s3")
    sagemaker.create_endpoint(
        EndpointName=endpoint, EndpointConfigName=shadow_config(aws, models, "synthetic", "healthy", 100)
    )
    aws.flush_capture()
    files = len(aws.bridges.capture_files)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    # The gate's holdout reference: the shadow is the champion's own artifact, so both score the holdout alike.
    scores = np.linspace(0.01, 0.99, 400)
    gate_key = f"reports/churn/{SYNTH_RUN}/gate.json"
    s3.put_object(
        Bucket=aws.artifact_bucket,
        Key=gate_key,
        Body=json.dumps({"divergence_reference": holdout_reference(scores, scores)}).encode(),
    )
    gate_uri = f"s3://{aws.artifact_bucket}/{gate_key}"
    quiet = check_shadow(
        CheckShadow(
            action="check_shadow", shadow_started_at=started, gate_uri=gate_uri, synthetic=SyntheticTraffic(step=-1)
        ),
        config,
        cloudwatch,
        sagemaker,
        s3,
    )
    assert quiet["next"] == "synthetic" and quiet["synthetic_requests"] == {"champion": 20}
    with pytest.raises(
        SyntheticTrafficError, match=r"variants \['challenger'\] are not topped up in deploy.mode 'shadow'"
    ):
        synthetic_traffic(
            SendSynthetic(action="synthetic_traffic", run_id=SYNTH_RUN, step=0, requests={"challenger": 5}),
            config,
            s3,
            aws.client("sagemaker-runtime"),
        )
    sent = SyntheticTraffic(
        **synthetic_traffic(
            SendSynthetic(action="synthetic_traffic", run_id=SYNTH_RUN, step=0, requests=quiet["synthetic_requests"]),
            config,
            s3,
            aws.client("sagemaker-runtime"),
        )
    )
    assert sent.variants["champion"].served_by == {"champion": 20} and sent.target_variants is False
    ids = captured_ids(aws, endpoint, files)
    marked = [inference_id(SYNTH_RUN, 0, n) for n in range(20)]
    assert ids == {"champion": marked, "challenger": marked}  # the copies carry the caller's InferenceId
    judged = check_shadow(
        CheckShadow(action="check_shadow", shadow_started_at=started, gate_uri=gate_uri, synthetic=sent),
        config,
        cloudwatch,
        sagemaker,
        s3,
    )
    assert judged["healthy"] and judged["next"] == "promote", judged["reason"]
    assert judged["synthetic"]["requests"] == {"champion": 20} and "judged with synthetic traffic" in judged["reason"]
