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
from moto.cloudwatch.models import CloudWatchBackend, Statistics
from moto.cloudwatch.responses import CloudWatchResponse

from scripts.local_aws.bridges import Bridges
from scripts.local_aws.metric_statistics import (
    extended_statistic,
    get_metric_data,
    get_metric_statistics,
    nearest_rank,
    percentile_rank,
)

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


# --- GetMetricData: percentiles and percentile ranks (the p99 rule's share of slow requests) ------------------------


@pytest.fixture
def data_bridged(cloudwatch):
    with (
        mock.patch.object(Statistics, "get_statistics_for_type", extended_statistic),
        mock.patch.object(CloudWatchBackend, "get_metric_data", get_metric_data),
    ):
        yield cloudwatch


def metric_data(cloudwatch, *stats, dimensions=DIMENSIONS, period=180):
    now = datetime.now(UTC)
    metric = {"Namespace": "AWS/SageMaker", "MetricName": "ModelLatency", "Dimensions": dimensions}
    results = cloudwatch.get_metric_data(
        MetricDataQueries=[
            {"Id": f"q{i}", "MetricStat": {"Metric": metric, "Period": period, "Stat": stat}}
            for i, stat in enumerate(stats)
        ],
        StartTime=now.replace(second=0, microsecond=0) - timedelta(minutes=1),
        EndTime=now + timedelta(minutes=1),
    )["MetricDataResults"]
    return {stats[int(r["Id"][1:])]: r["Values"] for r in results}


def test_moto_alone_cannot_answer_a_percentile_rank(cloudwatch):
    """The gap the bridge closes: moto 5.2.5 computes only the five plain statistics in GetMetricData and fails to
    serialize the null it gives any other (if moto ever answers, this test says the bridge can go)."""
    put_latencies(cloudwatch, range(1, 101))
    with pytest.raises(TypeError):
        metric_data(cloudwatch, "PR(:50)")


def test_get_metric_data_gives_percentile_ranks_and_percentiles_of_the_raw_values(data_bridged):
    rng = np.random.default_rng(11)
    values = [float(v) for v in np.round(rng.lognormal(9, 0.5, 700))]  # microseconds, as SageMaker reports them
    put_latencies(data_bridged, values)
    put_latencies(data_bridged, [10.0**9] * 5, [{"Name": "EndpointName", "Value": "ep"}])  # another series
    x = sorted(values)[600]  # a value that occurs: "X or less" counts it
    got = metric_data(data_bridged, f"PR(:{x:g})", f"PR({x:g}:)", "PR(5000:20000)", "p99", "SampleCount", "Sum")
    assert got[f"PR(:{x:g})"] == [pytest.approx(100 * sum(v <= x for v in values) / 700)]
    assert got[f"PR({x:g}:)"] == [pytest.approx(100 * sum(v > x for v in values) / 700)]  # exclusive below
    assert got["PR(5000:20000)"] == [pytest.approx(100 * sum(5000 < v <= 20000 for v in values) / 700)]
    assert got["p99"] == [float(np.percentile(values, 99, method="inverted_cdf"))]
    assert got["SampleCount"] == [700] and got["Sum"] == [pytest.approx(sum(values))]  # moto's own, unchanged


def test_get_metric_data_gives_no_value_where_the_values_are_hidden_or_negative(data_bridged):
    data_bridged.put_metric_data(
        Namespace="AWS/SageMaker",
        MetricData=[
            {
                "MetricName": "ModelLatency",
                "StatisticValues": {"SampleCount": 4, "Sum": 20.0, "Minimum": 1.0, "Maximum": 9.0},
                "Dimensions": DIMENSIONS,
            }
        ],
    )
    assert metric_data(data_bridged, "PR(:5)", "SampleCount") == {"PR(:5)": [], "SampleCount": [4]}
    assert percentile_rank([1.0, -1.0], None, 5.0) is None and percentile_rank([], None, 5.0) is None


def test_slow_requests_counts_a_variants_requests_over_a_threshold_in_milliseconds(data_bridged):
    """The Deploy handler's reading of the p99 rule's counts (refit_handlers.deploy.slow_requests) against the bridge:
    the threshold in milliseconds becomes PR(:X) in ModelLatency's microseconds; a request at exactly X is not slow."""
    from refit_handlers.deploy import slow_requests

    latencies_us = [8000.0] * 180 + [13000.0] * 10 + [40000.0] * 10
    put_latencies(data_bridged, latencies_us)
    now = datetime.now(UTC)
    window = (now - timedelta(minutes=2), now + timedelta(minutes=1))
    assert slow_requests(data_bridged, "ep", "challenger", *window, threshold_ms=13.0) == (10.0, 200.0)
    assert slow_requests(data_bridged, "ep", "challenger", *window, threshold_ms=12.9995) == (20.0, 200.0)
    assert slow_requests(data_bridged, "ep", "champion", *window, threshold_ms=13.0) is None  # no samples


def test_the_runtime_installs_the_get_metric_data_bridge():
    source = Bridges.install.__code__.co_names + Bridges.install.__code__.co_consts
    assert "get_statistics_for_type" in source and "get_metric_data" in source
