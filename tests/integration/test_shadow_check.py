"""The Deploy action `check_shadow` on moto: both variants' CloudWatch numbers and Data Capture files of the window
decide, the predictions judged against the gate's holdout reference (gate.json) as the canary's are; captured
predictions that diverge drop the shadow, a quiet window never passes, records outside the window do not count, and a
healthy shadow is promoted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from unittest import mock

import boto3
import numpy as np
import pytest
from moto import mock_aws
from moto.cloudwatch.responses import CloudWatchResponse
from refit_core.canary import data_capture
from refit_core.config import DeploySettings, ShadowSettings
from refit_core.divergence import holdout_reference
from refit_handlers.deploy import CheckShadow, check_shadow

from scripts.local_aws.data_capture import capture_key, capture_record, capture_summary
from scripts.local_aws.metric_statistics import get_metric_statistics
from tests.conftest import handler_settings

SETTINGS = handler_settings(
    deploy=DeploySettings(
        mode="shadow", shadow=ShadowSettings(min_invocations=20, min_captured_predictions=20, min_latency_samples=20)
    )
)
CAPTURE = data_capture("s3://data/capture/churn", 100, "k")
RNG = np.random.default_rng(3)
GATE_URI = "s3://art/reports/churn/r1/gate.json"


def challenger_of(champion, shift: float = 0.0):
    """The challenger's answers given the champion's: honestly different (another calibration, its own noise)."""
    return np.clip(0.7 * np.asarray(champion) + 0.12 + RNG.normal(0, 0.04, len(champion)) + shift, 0, 1)


HOLDOUT = RNG.beta(2, 5, 2000)
GATE = json.dumps({"divergence_reference": holdout_reference(HOLDOUT, challenger_of(HOLDOUT))}).encode()


class Endpoint:
    """DescribeEndpoint of the endpoint on the shadow config, its capture as SageMaker summarizes it (the local
    runtime's capture_summary): check_shadow reads only whether capture is on."""

    def describe_endpoint(self, EndpointName: str) -> dict:  # noqa: N803 (boto3's names)
        return {"EndpointConfigName": "c", "EndpointStatus": "InService", "DataCaptureConfig": capture_summary(CAPTURE)}


@pytest.fixture
def aws():
    # CloudWatch's percentiles as the local runtime answers them (moto ignores ExtendedStatistics): the p99 is judged.
    with mock_aws(), mock.patch.object(CloudWatchResponse, "get_metric_statistics", get_metric_statistics):
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="data")
        s3.create_bucket(Bucket="art")
        s3.put_object(Bucket="art", Key=GATE_URI.removeprefix("s3://art/"), Body=GATE)
        yield s3, boto3.client("cloudwatch", region_name="us-east-1")


def traffic(cloudwatch, variant: str, invocations: int, errors_5xx: int = 0) -> None:
    dimensions = [{"Name": "EndpointName", "Value": "e"}, {"Name": "VariantName", "Value": variant}]
    cloudwatch.put_metric_data(
        Namespace="AWS/SageMaker",
        MetricData=[
            {"MetricName": "Invocations", "Value": invocations, "Dimensions": dimensions},
            {"MetricName": "Invocation4XXErrors", "Value": 0, "Dimensions": dimensions},
            {"MetricName": "Invocation5XXErrors", "Value": errors_5xx, "Dimensions": dimensions},
            *[
                {"MetricName": "ModelLatency", "Value": 5000.0, "Unit": "Microseconds", "Dimensions": dimensions}
                for _ in range(min(invocations, 50))
            ],
        ],
    )


def captured(s3, variant: str, probabilities, when: datetime) -> None:
    records = [
        capture_record(
            CAPTURE,
            request=b"12.0,70.5,1,48.0,basic,north",
            request_type="text/csv",
            response=json.dumps({"predictions": [int(p > 0.5)], "probabilities": [float(p)]}).encode(),
            response_type="application/json",
            inference_id=None,
            when=when,
        )
        for p in probabilities
    ]
    bucket, key = capture_key(CAPTURE["DestinationS3Uri"], "e", variant, when)
    s3.put_object(Bucket=bucket, Key=key, Body="\n".join(json.dumps(r) for r in records).encode())


def judge(s3, cloudwatch, started: datetime) -> dict:
    request = CheckShadow(action="check_shadow", shadow_started_at=started.isoformat(), gate_uri=GATE_URI)
    return check_shadow(request, SETTINGS, cloudwatch, Endpoint(), s3)


def test_a_shadow_with_the_champions_behaviour_is_promoted(aws):
    s3, cloudwatch = aws
    started = datetime.now(UTC) - timedelta(seconds=5)
    traffic(cloudwatch, "champion", 60)
    traffic(cloudwatch, "challenger", 60)
    scores = RNG.beta(2, 5, 60)
    captured(s3, "champion", scores, datetime.now(UTC))
    captured(s3, "challenger", challenger_of(scores), datetime.now(UTC))
    verdict = judge(s3, cloudwatch, started)
    assert verdict["next"] == "promote" and verdict["healthy"], verdict["reason"]
    divergence = verdict["divergence"]
    assert divergence["status"] == "judged" and not divergence["diverged"]
    assert divergence["champion_samples"] == divergence["challenger_samples"] == 60
    assert verdict["copied_share"] == 1.0 and verdict["sampling_percent"] == 100


def test_diverging_predictions_drop_the_shadow_and_records_before_the_window_do_not_count(aws):
    s3, cloudwatch = aws
    started = datetime.now(UTC) - timedelta(seconds=5)
    traffic(cloudwatch, "champion", 60)
    traffic(cloudwatch, "challenger", 60)
    scores = RNG.beta(2, 5, 60)
    captured(s3, "champion", scores, datetime.now(UTC))
    captured(s3, "challenger", challenger_of(scores, shift=0.35), datetime.now(UTC))
    # an earlier hour's agreeing shadow records are outside the window
    captured(s3, "challenger", challenger_of(scores), started - timedelta(hours=2))
    verdict = judge(s3, cloudwatch, started)
    assert verdict["next"] == "rollback" and "shadow predictions diverge" in verdict["reason"]
    assert verdict["divergence"]["challenger_samples"] == 60 and verdict["divergence"]["p_value"] < 0.05


def test_a_quiet_window_is_not_promoted(aws):
    s3, cloudwatch = aws
    started = datetime.now(UTC) - timedelta(seconds=5)
    traffic(cloudwatch, "champion", 3)
    verdict = judge(s3, cloudwatch, started)
    assert verdict["next"] == "rollback" and "quiet window: the challenger saw 0 invocations" in verdict["reason"]


def test_a_shadow_without_captured_predictions_is_not_promoted(aws):
    s3, cloudwatch = aws
    started = datetime.now(UTC) - timedelta(seconds=5)
    traffic(cloudwatch, "champion", 60)
    traffic(cloudwatch, "challenger", 60)
    captured(s3, "champion", RNG.beta(2, 5, 60), datetime.now(UTC))
    verdict = judge(s3, cloudwatch, started)
    assert verdict["next"] == "rollback" and "predictions not compared: not judged: 0 challenger" in verdict["reason"]
