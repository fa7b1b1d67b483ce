"""The local runtime's GetMetricStatistics bridge (scripts/local_aws/metric_statistics.py): percentiles per
datapoint from raw values, and CloudWatch's refusals, which moto 5.2.5 lacks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest import mock

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.cloudwatch.responses import CloudWatchResponse

from scripts.local_aws.bridges import Bridges
from scripts.local_aws.metric_statistics import get_metric_statistics, nearest_rank

DIMENSIONS = [{"Name": "EndpointName", "Value": "ep"}, {"Name": "VariantName", "Value": "challenger"}]


def put_latencies(cloudwatch, values, dimensions=DIMENSIONS):
    for start in range(0, len(values), 500):
        cloudwatch.put_metric_data(
            Namespace="AWS/SageMaker",
            MetricData=[
                {"MetricName": "ModelLatency", "Value": float(v), "Unit": "Microseconds", "Dimensions": dimensions}
                for v in values[start : start + 500]
            ],
        )


def statistics(cloudwatch, dimensions=DIMENSIONS, **asked):
    now = datetime.now(UTC)
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=1)
    return cloudwatch.get_metric_statistics(
        Namespace="AWS/SageMaker",
        MetricName="ModelLatency",
        Dimensions=dimensions,
        StartTime=start,
        EndTime=now + timedelta(minutes=1),
        Period=180,
        **asked,
    )["Datapoints"]


@pytest.fixture
def cloudwatch():
    with mock_aws():
        yield boto3.client("cloudwatch", region_name="us-east-1")


@pytest.fixture
def bridged(cloudwatch):
    with mock.patch.object(CloudWatchResponse, "get_metric_statistics", get_metric_statistics):
        yield cloudwatch


def test_moto_alone_ignores_extended_statistics_and_accepts_both_kinds(cloudwatch):
    """The gap the bridge closes (if moto ever fills it, this test says the bridge can go)."""
    put_latencies(cloudwatch, range(1, 101))
    points = statistics(cloudwatch, ExtendedStatistics=["p99"])
    assert points and "ExtendedStatistics" not in points[0]
    assert statistics(cloudwatch, Statistics=["Sum"], ExtendedStatistics=["p99"])  # CloudWatch refuses this


def test_the_bridge_gives_each_datapoint_its_percentiles_of_the_raw_values(bridged):
    rng = np.random.default_rng(7)
    values = list(np.round(rng.lognormal(8, 0.6, 1000)))
    put_latencies(bridged, values)
    put_latencies(bridged, [10.0**9] * 5, [{"Name": "EndpointName", "Value": "ep"}])  # another series: not counted
    (point,) = statistics(bridged, ExtendedStatistics=["p99", "p50", "p100"])
    expected = {p: float(np.percentile(values, float(p[1:]), method="inverted_cdf")) for p in ("p99", "p50", "p100")}
    assert point["ExtendedStatistics"] == expected and expected["p100"] == max(values)
    assert "Sum" not in point and "SampleCount" not in point
    (plain,) = statistics(bridged, Statistics=["SampleCount", "Sum"])
    assert plain["SampleCount"] == 1000 and plain["Sum"] == pytest.approx(sum(values))
    assert "ExtendedStatistics" not in plain


def test_the_bridge_refuses_what_cloudwatch_refuses(bridged):
    put_latencies(bridged, [1.0, 2.0])
    with pytest.raises(ClientError) as both:
        statistics(bridged, Statistics=["Sum"], ExtendedStatistics=["p99"])
    assert both.value.response["Error"]["Code"] == "InvalidParameterCombination"
    with pytest.raises(ClientError) as bad:
        statistics(bridged, ExtendedStatistics=["p101"])
    assert bad.value.response["Error"]["Code"] == "InvalidParameterValue"


def test_a_statistic_set_hides_its_values_unless_they_are_all_equal(bridged):
    def put_set(count, low, high):
        bridged.put_metric_data(
            Namespace="AWS/SageMaker",
            MetricData=[
                {
                    "MetricName": "ModelLatency",
                    "StatisticValues": {"SampleCount": count, "Sum": count * low, "Minimum": low, "Maximum": high},
                    "Dimensions": DIMENSIONS,
                }
            ],
        )

    put_set(3, 5.0, 5.0)
    (point,) = statistics(bridged, ExtendedStatistics=["p99"])
    assert point["ExtendedStatistics"] == {"p99": 5.0}
    put_set(4, 1.0, 9.0)
    (hidden,) = statistics(bridged, ExtendedStatistics=["p99"])
    assert hidden["ExtendedStatistics"] == {}


def test_nearest_rank_and_negative_values():
    assert nearest_rank([4.0, 1.0, 3.0, 2.0], 50) == 2.0
    assert nearest_rank([4.0, 1.0, 3.0, 2.0], 0) == 1.0
    assert nearest_rank([1.0, -1.0], 99) is None and nearest_rank([], 99) is None


def test_the_runtime_installs_the_bridge():
    """Bridges.install patches CloudWatchResponse.get_metric_statistics with this function (read from its patch list,
    without starting a runtime)."""
    source = Bridges.install.__code__.co_names + Bridges.install.__code__.co_consts
    assert "get_metric_statistics" in source
