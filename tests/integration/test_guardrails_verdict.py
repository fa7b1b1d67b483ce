"""refit's verdict on a finished guarded update (deploy.mode guardrails: refit_core.guardrails.bake_verdict through the
Deploy action guardrails_status), read from moto's CloudWatch with the local runtime's GetMetricStatistics and
GetMetricData bridges (percentiles and percentile ranks from raw values): the endpoint's one variant before the UpdateEndpoint is the champion, after it the new
fleet. A challenger slow at p99 whose mean stays far within the latency alarm's ceiling, and a quiet bake, are both
answered with `rollback`; the same bake with the champion's latencies is promoted. No serve process: the metrics are
put as SageMaker publishes them (ModelLatency in microseconds, Invocations per request)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest import mock

import boto3
import numpy as np
import pytest
from moto import mock_aws
from moto.cloudwatch.models import CloudWatchBackend, Statistics
from moto.cloudwatch.responses import CloudWatchResponse
from refit_handlers.deploy import GuardedStatus, guardrails_status

from scripts.local_aws.metric_statistics import extended_statistic, get_metric_data, get_metric_statistics
from tests.conftest import handler_settings
from tests.unit.test_guardrails import RecordingSageMaker, endpoint

DIMENSIONS = [{"Name": "EndpointName", "Value": "e"}, {"Name": "VariantName", "Value": "champion"}]


@pytest.fixture
def cloudwatch():
    with (
        mock_aws(),
        mock.patch.object(CloudWatchResponse, "get_metric_statistics", get_metric_statistics),
        mock.patch.object(Statistics, "get_statistics_for_type", extended_statistic),
        mock.patch.object(CloudWatchBackend, "get_metric_data", get_metric_data),
    ):
        yield boto3.client("cloudwatch", region_name="us-east-1")


def serve(cloudwatch, when: datetime, latencies_ms: list[float]) -> None:
    """One request per latency at `when`, as SageMaker reports them."""
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


def requested_at() -> datetime:
    """The UpdateEndpoint of the update judged: ten minutes before the test (read when it runs, not at import)."""
    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


def status(cloudwatch, requested: datetime) -> dict:
    event = GuardedStatus(
        action="guardrails_status",
        expected_config="e--new",
        previous_config="e--old",
        requested_at=requested.isoformat(timespec="seconds"),
    )
    return guardrails_status(
        event, handler_settings(), RecordingSageMaker(endpoint("InService", "e--new"), []), cloudwatch
    )


def champion_traffic(cloudwatch, rng) -> datetime:
    """300 requests of 5-10 ms twenty minutes before the update; returns the update's time."""
    requested = requested_at()
    serve(cloudwatch, requested - timedelta(minutes=20), list(rng.uniform(5, 10, 300)))
    return requested


def just_now() -> datetime:
    return datetime.now(UTC) - timedelta(seconds=20)


def test_a_challenger_slow_at_p99_is_rolled_back_while_its_mean_stays_within_the_alarms_ceiling(cloudwatch):
    rng = np.random.default_rng(1)
    requested = champion_traffic(cloudwatch, rng)
    bake = list(rng.uniform(5, 10, 290)) + [400.0] * 10  # 3% of requests 40x slower
    serve(cloudwatch, just_now(), bake)
    checked = status(cloudwatch, requested)
    assert checked["next"] == "rollback", checked["reason"]
    assert "but refit rolls it back: p99 model latency in the bakes 400.0 ms" in checked["reason"]
    verdict = checked["bake"]
    assert verdict["p99_judged"] and verdict["p99_latency_ratio"] > 1.3
    assert verdict["bake"]["mean_latency_ms"] < handler_settings().model.deploy.guardrails.max_model_latency_ms / 10
    assert verdict["bake"]["invocations"] == 300 and verdict["champion"]["invocations"] == 300
    # The p99 rule's test: the 10 slow requests over 1.3 x the champion's p99, against none of the champion's 300.
    tail = verdict["p99_tail"]
    assert (tail["challenger_slow"], tail["challenger_samples"], tail["champion_slow"]) == (10, 300, 0)
    assert tail["threshold_ms"] == pytest.approx(1.3 * verdict["champion"]["p99_latency_ms"], abs=1e-3)
    assert tail["p_value"] < 0.05 and "10 of 300 requests over" in checked["reason"]


def test_the_same_bake_with_the_champions_latencies_is_promoted(cloudwatch):
    rng = np.random.default_rng(2)
    requested = champion_traffic(cloudwatch, rng)
    serve(cloudwatch, just_now(), list(rng.uniform(5, 10, 300)))
    checked = status(cloudwatch, requested)
    assert checked["next"] == "promoted" and "p99 ratio" in checked["reason"]


def test_a_quiet_bake_is_rolled_back_though_the_champion_was_busy_before_the_update(cloudwatch):
    requested = champion_traffic(cloudwatch, np.random.default_rng(3))
    serve(cloudwatch, just_now(), [7.0] * 5)
    checked = status(cloudwatch, requested)
    assert checked["next"] == "rollback" and "quiet window: the endpoint saw 5 invocations" in checked["reason"]
