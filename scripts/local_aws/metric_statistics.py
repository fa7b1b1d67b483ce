"""GetMetricStatistics as CloudWatch answers it, where moto 5.2.5 does not.

moto accepts `ExtendedStatistics` and ignores it: its datapoints carry no `ExtendedStatistics`, and a call naming
both `Statistics` and `ExtendedStatistics` is answered although CloudWatch refuses it (InvalidParameterCombination,
botocore's service model: "you must specify either Statistics or ExtendedStatistics, but not both"). Here each
datapoint gets the percentiles asked for, computed from the raw values of its period. CloudWatch needs raw values
for percentiles: a statistic set counts only when its SampleCount is 1 or its Minimum equals its Maximum, and no
percentile is given when any value is negative (both from GetMetricStatistics' documentation). CloudWatch does not
document its interpolation; the nearest rank is used (the smallest value with at least p% of the values at or
below it).

GetMetricData's MetricStat takes any statistic or extended statistic as `Stat`; moto 5.2.5 knows only the five plain
ones and answers any other with a null value. Here a percentile (`p99`) and a percentile rank (`PR(n:m)`: the
percentage of the period's values over n and at most m, either bound optional, in the metric's own unit, as
CloudWatch's statistics definitions put it: "exclusive on the lower bound and inclusive on the upper bound") are
computed from the same raw values, under the same rules; a period without one gives no value, as CloudWatch gives no
datapoint.
"""

from __future__ import annotations

import math
import re

from moto.cloudwatch.exceptions import InvalidParameterCombination, InvalidParameterValue
from moto.cloudwatch.models import (
    CloudWatchBackend,
    MetricAggregatedDatum,
    MetricDatum,
    Statistics,
    cloudwatch_backends,
)
from moto.cloudwatch.responses import CloudWatchResponse
from moto.core.responses import ActionResult

PERCENTILE = re.compile(r"p(\d{1,3}(?:\.\d+)?)")
NUMBER = r"(\d+(?:\.\d+)?)"
PERCENTILE_RANK = re.compile(rf"PR\({NUMBER}?:{NUMBER}?\)")
MOTO_STATISTIC = Statistics.get_statistics_for_type
MOTO_GET_METRIC_DATA = CloudWatchBackend.get_metric_data


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


def percentile_rank(values: list[float], lower: float | None, upper: float | None) -> float | None:
    """PR(lower:upper): the percentage of raw values over `lower` and at most `upper` (a missing bound is open); None
    when there are none or any is negative (percentile statistics need raw, non-negative values)."""
    if not values or min(values) < 0:
        return None
    inside = [v for v in values if (lower is None or v > lower) and (upper is None or v <= upper)]
    return 100.0 * len(inside) / len(values)


def extended_statistic(statistics: Statistics, stat: str) -> float | None:
    """GetMetricData's extended statistics over one period's raw values: `pNN` and `PR(n:m)`; any other name is moto's
    to answer (its five plain statistics)."""
    if PERCENTILE.fullmatch(stat):
        return nearest_rank(raw_values(statistics) or [], parse_percentile(stat))
    rank = PERCENTILE_RANK.fullmatch(stat)
    if rank is not None:
        lower, upper = (float(bound) if bound is not None else None for bound in rank.groups())
        return percentile_rank(raw_values(statistics) or [], lower, upper)
    found = MOTO_STATISTIC(statistics, stat)
    return None if found is None else float(found)


def get_metric_data(backend: CloudWatchBackend, *args: object, **kwargs: object) -> list[dict[str, object]]:
    """moto's GetMetricData with extended statistics (extended_statistic); a period whose statistic has no value is
    left out with its timestamp, as CloudWatch leaves it out."""
    results = MOTO_GET_METRIC_DATA(backend, *args, **kwargs)  # type: ignore[arg-type]
    for result in results:
        kept = [
            (at, value) for at, value in zip(result["timestamps"], result["values"], strict=True) if value is not None
        ]
        result["timestamps"], result["values"] = [at for at, _ in kept], [value for _, value in kept]
    return results
