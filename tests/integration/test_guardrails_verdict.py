"""refit's verdict on a finished guarded update (deploy.mode guardrails: the Deploy action judge_guardrails, through
refit_core.guardrails.bake_verdict), read from moto's CloudWatch with the local runtime's GetMetricStatistics bridge
(percentiles from raw values) and from Data Capture files in moto's S3: the endpoint's one variant in the champion's
window before the UpdateEndpoint's minute is the champion, in the planned window after the update ended the new fleet
alone. A challenger slow at p99 whose mean stays far within the latency alarm's ceiling, one whose captured outputs
diverge from what the gate's holdout predicts, and a quiet window are all answered with `rollback`; the same window
with the champion's latencies and behaviour is promoted; requests outside both windows (the minute of the update,
where both fleets serve) count for neither. No serve process: metrics and records are put as SageMaker writes them
(ModelLatency in microseconds, Invocations per request, Data Capture's JSON Lines)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from unittest import mock

import boto3
import numpy as np
import pytest
from moto import mock_aws
from moto.cloudwatch.models import CloudWatchBackend, Statistics
from moto.cloudwatch.responses import CloudWatchResponse
from refit_core.canary import data_capture
from refit_core.config import DeploySettings, GuardrailsSettings
from refit_core.divergence import holdout_reference
from refit_handlers.deploy import JudgeGuarded, judge_guardrails

from scripts.local_aws.data_capture import capture_key, capture_record, capture_summary
from scripts.local_aws.metric_statistics import extended_statistic, get_metric_data, get_metric_statistics
from tests.conftest import handler_settings

DIMENSIONS = [{"Name": "EndpointName", "Value": "e"}, {"Name": "VariantName", "Value": "champion"}]
CAPTURE = data_capture("s3://data/capture/churn", 100, "k")
GATE_URI = "s3://art/reports/churn/r1/gate.json"
SETTINGS = handler_settings(
    deploy=DeploySettings(mode="guardrails", guardrails=GuardrailsSettings(divergence_min_samples=50, alpha=0.01))
)


def challenger_of(champion, rng, shift: float = 0.0):
    """The challenger's answers given the champion's: honestly different (another calibration, its own noise)."""
    return np.clip(0.7 * np.asarray(champion) + 0.12 + rng.normal(0, 0.04, len(champion)) + shift, 0, 1)


class Endpoint:
    """DescribeEndpoint: InService on the new config, capturing (as the local runtime summarizes it)."""

    def describe_endpoint(self, EndpointName: str) -> dict:  # noqa: N803 (boto3's names)
        return {
            "EndpointName": "e",
            "EndpointConfigName": "e--new",
            "EndpointStatus": "InService",
            "ProductionVariants": [{"VariantName": "champion", "CurrentWeight": 1.0}],
            "DataCaptureConfig": capture_summary(CAPTURE),
        }


@pytest.fixture
def aws():
    with (
        mock_aws(),
        mock.patch.object(CloudWatchResponse, "get_metric_statistics", get_metric_statistics),
        mock.patch.object(Statistics, "get_statistics_for_type", extended_statistic),
        mock.patch.object(CloudWatchBackend, "get_metric_data", get_metric_data),
    ):
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="data")
        s3.create_bucket(Bucket="art")
        holdout = np.random.default_rng(0).beta(2, 5, 2000)
        reference = holdout_reference(holdout, challenger_of(holdout, np.random.default_rng(1)))
        s3.put_object(
            Bucket="art", Key=GATE_URI.removeprefix("s3://art/"), Body=json.dumps({"divergence_reference": reference})
        )
        yield s3, boto3.client("cloudwatch", region_name="us-east-1")


def serve(aws, when: datetime, latencies_ms: list[float], scores=None) -> None:
    """One request per latency at `when`, as SageMaker reports them; with `scores`, their captured outputs."""
    s3, cloudwatch = aws
    for start in range(0, len(latencies_ms), 500):
        chunk = latencies_ms[start : start + 500]
        cloudwatch.put_metric_data(
            Namespace="AWS/SageMaker",
            MetricData=[
                {"MetricName": "ModelLatency", "Value": ms * 1000, "Dimensions": DIMENSIONS, "Timestamp": when}
                for ms in chunk
            ]
            + [
                {"MetricName": name, "Value": value, "Dimensions": DIMENSIONS, "Timestamp": when}
                for name, value in (("Invocations", len(chunk)), ("Invocation5XXErrors", 0), ("Invocation4XXErrors", 0))
            ],
        )
    if scores is not None:
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
            for p in scores
        ]
        bucket, key = capture_key(CAPTURE["DestinationS3Uri"], "e", "champion", when)
        s3.put_object(Bucket=bucket, Key=key, Body="\n".join(json.dumps(r) for r in records).encode())


class Times:
    """An update requested 40 minutes ago (30 s into its minute), ended within that minute; the window judged from the
    next whole minute for ten minutes (read when the test runs, not at import)."""

    def __init__(self) -> None:
        self.requested = datetime.now(UTC).replace(second=30, microsecond=0) - timedelta(minutes=40)
        self.judge_from = self.requested.replace(second=0) + timedelta(minutes=1)
        self.judge_until = self.judge_from + timedelta(minutes=10)

    def champion(self) -> datetime:
        return self.requested - timedelta(minutes=20)

    def after(self) -> datetime:
        return self.judge_from + timedelta(minutes=3)


def judged(aws, times: Times) -> dict:
    event = JudgeGuarded(
        action="judge_guardrails",
        expected_config="e--new",
        previous_config="e--old",
        requested_at=times.requested.isoformat(),
        judge_from=times.judge_from.isoformat(),
        judge_until=times.judge_until.isoformat(),
        gate_uri=GATE_URI,
    )
    s3, cloudwatch = aws
    return judge_guardrails(event, SETTINGS, Endpoint(), cloudwatch, s3)


def champion_traffic(aws, times: Times, rng) -> np.ndarray:
    """300 requests of 5-10 ms twenty minutes before the update, captured; returns the champion's scores."""
    scores = rng.beta(2, 5, 300)
    serve(aws, times.champion(), list(rng.uniform(5, 10, 300)), scores)
    return scores


def test_a_challenger_slow_at_p99_is_rolled_back_while_its_mean_stays_within_the_alarms_ceiling(aws):
    rng, times = np.random.default_rng(1), Times()
    scores = champion_traffic(aws, times, rng)
    bake = list(rng.uniform(5, 10, 290)) + [400.0] * 10  # 3% of requests 40x slower
    serve(aws, times.after(), bake, challenger_of(scores, rng))
    checked = judged(aws, times)
    assert checked["next"] == "rollback", checked["reason"]
    assert "but refit rolls it back: p99 model latency after the update 400.0 ms" in checked["reason"]
    verdict = checked["bake"]
    assert verdict["p99_judged"] and verdict["p99_latency_ratio"] > 1.3
    assert verdict["bake"]["mean_latency_ms"] < SETTINGS.model.deploy.guardrails.max_model_latency_ms / 10
    assert verdict["bake"]["invocations"] == 300 and verdict["champion"]["invocations"] == 300
    # The p99 rule's test: the 10 slow requests over 1.3 x the champion's p99, against none of the champion's 300.
    tail = verdict["p99_tail"]
    assert (tail["challenger_slow"], tail["challenger_samples"], tail["champion_slow"]) == (10, 300, 0)
    assert tail["threshold_ms"] == pytest.approx(1.3 * verdict["champion"]["p99_latency_ms"], abs=1e-3)
    assert tail["p_value"] < 0.05 and "10 of 300 requests over" in checked["reason"]


def test_the_same_window_with_the_champions_latencies_and_behaviour_is_promoted(aws):
    rng, times = np.random.default_rng(2), Times()
    scores = champion_traffic(aws, times, rng)
    serve(aws, times.after(), list(rng.uniform(5, 10, 300)), challenger_of(rng.beta(2, 5, 300), rng))
    checked = judged(aws, times)
    assert checked["next"] == "promoted" and "p99 ratio" in checked["reason"], checked["reason"]
    divergence = checked["bake"]["divergence"]
    assert divergence["status"] == "judged" and not divergence["diverged"]
    assert divergence["champion_samples"] == divergence["challenger_samples"] == len(scores)
    assert "adjacent windows, not the same one" in checked["bake"]["windows"]


def test_diverging_outputs_are_rolled_back_and_the_minute_of_the_update_counts_for_neither_window(aws):
    rng, times = np.random.default_rng(4), Times()
    champion_traffic(aws, times, rng)
    # Both fleets serve in the minute of the UpdateEndpoint and the one it ended in: slow, agreeing requests there
    # would pass the challenger on divergence and fail it on p99 if they were counted on either side.
    serve(aws, times.requested + timedelta(seconds=10), [900.0] * 200, rng.beta(2, 5, 200))
    serve(aws, times.after(), list(rng.uniform(5, 10, 300)), challenger_of(rng.beta(2, 5, 300), rng, shift=0.3))
    checked = judged(aws, times)
    assert checked["next"] == "rollback", checked["reason"]
    assert "but refit rolls it back: prediction divergence (adjacent windows" in checked["reason"]
    verdict = checked["bake"]
    divergence = verdict["divergence"]
    assert divergence["status"] == "judged" and divergence["diverged"] and divergence["p_value"] < 0.01
    assert divergence["champion_samples"] == divergence["challenger_samples"] == 300
    assert verdict["bake"]["invocations"] == verdict["champion"]["invocations"] == 300
    assert verdict["p99_judged"] and verdict["p99_latency_ratio"] < 1.3


def test_a_quiet_window_is_rolled_back_though_the_champion_was_busy_before_the_update(aws):
    rng, times = np.random.default_rng(3), Times()
    champion_traffic(aws, times, rng)
    serve(aws, times.after(), [7.0] * 5)
    checked = judged(aws, times)
    assert checked["next"] == "rollback" and "quiet window: the endpoint saw 5 invocations" in checked["reason"]
