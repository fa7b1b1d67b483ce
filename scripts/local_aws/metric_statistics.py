"""GetMetricStatistics as CloudWatch answers it, where moto 5.2.5 does not.

moto accepts `ExtendedStatistics` and ignores it: its datapoints carry no `ExtendedStatistics`, and a call naming
both `Statistics` and `ExtendedStatistics` is answered although CloudWatch refuses it (InvalidParameterCombination,
botocore's service model: "you must specify either Statistics or ExtendedStatistics, but not both"). Here each
datapoint gets the percentiles asked for, computed from the raw values of its period. CloudWatch needs raw values
for percentiles: a statistic set counts only when its SampleCount is 1 or its Minimum equals its Maximum, and no
percentile is given when any value is negative (both from GetMetricStatistics' documentation). CloudWatch does not
document its interpolation; the nearest rank is used (the smallest value with at least p% of the values at or
below it).
"""

from __future__ import annotations

import math
import re

from moto.cloudwatch.exceptions import InvalidParameterCombination, InvalidParameterValue
from moto.cloudwatch.models import MetricAggregatedDatum, MetricDatum, Statistics, cloudwatch_backends
from moto.cloudwatch.responses import CloudWatchResponse
from moto.core.responses import ActionResult

PERCENTILE = re.compile(r"p(\d{1,3}(?:\.\d+)?)")


def parse_percentile(name: str) -> float:
    """`p99` -> 99.0; anything but p0.0 .. p100 is refused as CloudWatch refuses it."""
    match = PERCENTILE.fullmatch(name)
    if match is None or not 0 <= float(match.group(1)) <= 100:
        raise InvalidParameterValue(f"The value {name} for parameter ExtendedStatistics is not supported.")
    return float(match.group(1))


def nearest_rank(values: list[float], percent: float) -> float | None:
    """The nearest-rank percentile of raw values; None when there are none or any is negative."""
    if not values or min(values) < 0:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def raw_values(statistics: Statistics) -> list[float] | None:
    """The period's values as raw samples, or None when a statistic set hides them."""
    values: list[float] = []
    for datum in statistics.metric_data:
        if isinstance(datum, MetricDatum):
            values.append(float(datum.value))
        elif isinstance(datum, MetricAggregatedDatum):
            if datum.sample_count != 1 and datum.min != datum.max:
                return None
            values += [float(datum.min)] * int(datum.sample_count)
    return values


def get_metric_statistics(response: CloudWatchResponse) -> ActionResult:
    statistics = response._get_param("Statistics", [])
    extended = response._get_param("ExtendedStatistics", [])
    if statistics and extended:
        raise InvalidParameterCombination("Must specify either Statistics or ExtendedStatistics, but not both")
    if not statistics and not extended:
        raise InvalidParameterCombination("Must specify either Statistics or ExtendedStatistics")
    percents = {name: parse_percentile(name) for name in extended}
    backend = cloudwatch_backends[response.current_account][response.region]
    datapoints = backend.get_metric_statistics(
        response._get_param("Namespace"),
        response._get_param("MetricName"),
        response._get_param("StartTime"),
        response._get_param("EndTime"),
        response._get_int_param("Period"),
        statistics,
        unit=response._get_param("Unit"),
        dimensions=response._get_param("Dimensions", []),
    )
    for point in datapoints:
        if percents:
            values = raw_values(point) or []
            found = {name: nearest_rank(values, percent) for name, percent in percents.items()}
            point.extended_statistics = {name: value for name, value in found.items() if value is not None}  # type: ignore[attr-defined]
    return ActionResult({"Label": response._get_param("MetricName"), "Datapoints": datapoints})
