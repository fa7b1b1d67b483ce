"""CloudWatch metric-alarm evaluation, as the CloudWatch User Guide documents it ("Evaluating an alarm", "How alarm
state is evaluated when data is missing"). moto stores alarms and metrics but never evaluates an alarm; the local
runtime's bridge (bridges.py) calls `evaluate_alarm` after every PutMetricData that touches an alarm's metric.

The rules, from the guide:
- The metric is aggregated by the alarm's statistic (Average, Sum, Minimum, Maximum, SampleCount) over period-aligned
  buckets of `Period` seconds. The newest bucket is the one holding `now` (locally a datapoint is available the moment
  it is put; CloudWatch also evaluates data of the period still running).
- CloudWatch retrieves more buckets than `EvaluationPeriods` N: the *evaluation range* (the guide's examples retrieve
  5 for N = 3; here N + 2).
- With at least N real datapoints in the range, the N most recent are evaluated and the missing-data treatment is not
  used. With fewer, missing ones are filled in by the treatment (`breaching`, `notBreaching`) as few times as
  possible, every real datapoint in the range counting; `missing` and `ignore` fill nothing: no datapoint at all
  gives INSUFFICIENT_DATA (`missing`) or keeps the current state (`ignore`), and only-breaching datapoints too few
  to alarm do the same, unless they all lie before the N newest periods (the metric stopped: the last data is
  re-evaluated, and it alarms, as the guide's "X - - - -" row shows).
- ALARM when at least `DatapointsToAlarm` M (default N) of the N evaluated datapoints breach, else OK.

`tests/integration/test_capture_and_alarm_bridges.py` checks every row of the guide's two example tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

COMPARISONS = {
    "GreaterThanOrEqualToThreshold": (lambda value, threshold: value >= threshold, "greater than or equal to"),
    "GreaterThanThreshold": (lambda value, threshold: value > threshold, "greater than"),
    "LessThanThreshold": (lambda value, threshold: value < threshold, "less than"),
    "LessThanOrEqualToThreshold": (lambda value, threshold: value <= threshold, "less than or equal to"),
}
STATISTICS = ("Average", "Sum", "Minimum", "Maximum", "SampleCount")
TREATMENTS = ("missing", "notBreaching", "breaching", "ignore")
STATES = ("OK", "ALARM", "INSUFFICIENT_DATA")


@dataclass(frozen=True)
class AlarmSpec:
    """What evaluating a single-metric alarm needs (PutMetricAlarm's fields)."""

    name: str
    namespace: str
    metric_name: str
    dimensions: dict[str, str]
    statistic: str
    period: int
    evaluation_periods: int
    threshold: float
    comparison: str
    datapoints_to_alarm: int | None = None
    treat_missing_data: str = "missing"
    unit: str | None = None

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"alarm {self.name}: statistic {self.statistic!r} is not one of {STATISTICS}")
        if self.comparison not in COMPARISONS:
            raise ValueError(f"alarm {self.name}: comparison {self.comparison!r} is not one of {list(COMPARISONS)}")
        if self.treat_missing_data not in TREATMENTS:
            raise ValueError(f"alarm {self.name}: TreatMissingData {self.treat_missing_data!r} not in {TREATMENTS}")
        if self.period <= 0 or self.evaluation_periods < 1:
            raise ValueError(f"alarm {self.name}: period and evaluation periods must be positive")
        if not 1 <= self.required <= self.evaluation_periods:
            raise ValueError(f"alarm {self.name}: DatapointsToAlarm must be between 1 and EvaluationPeriods")

    @property
    def required(self) -> int:
        """M of "M out of N": DatapointsToAlarm, EvaluationPeriods when not set."""
        return self.datapoints_to_alarm or self.evaluation_periods

    @classmethod
    def from_description(cls, alarm: dict[str, Any]) -> AlarmSpec:
        """From a DescribeAlarms `MetricAlarms` entry (a single-metric alarm with a standard statistic)."""
        return cls(
            name=alarm["AlarmName"],
            namespace=alarm["Namespace"],
            metric_name=alarm["MetricName"],
            dimensions={d["Name"]: d["Value"] for d in alarm.get("Dimensions", [])},
            statistic=alarm["Statistic"],
            period=int(alarm["Period"]),
            evaluation_periods=int(alarm["EvaluationPeriods"]),
            threshold=float(alarm["Threshold"]),
            comparison=alarm["ComparisonOperator"],
            datapoints_to_alarm=alarm.get("DatapointsToAlarm"),
            treat_missing_data=alarm.get("TreatMissingData") or "missing",
            unit=alarm.get("Unit"),
        )


@dataclass(frozen=True)
class Datapoint:
    """One put value (`Datapoint.of`) or a StatisticSet."""

    timestamp: datetime
    sum: float
    minimum: float
    maximum: float
    sample_count: float

    @classmethod
    def of(cls, timestamp: datetime, value: float) -> Datapoint:
        return cls(timestamp, value, value, value, 1.0)


@dataclass(frozen=True)
class Evaluation:
    state: str  # OK | ALARM | INSUFFICIENT_DATA
    reason: str
    reason_data: dict[str, Any]


def utc(moment: datetime) -> datetime:
    """A datetime in UTC; a naive one (moto's timestamps) is read as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    """CloudWatch's timestamp format in alarm events and reason data: 2019-10-02T17:04:40.989+0000."""
    return utc(moment).strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc(moment).microsecond // 1000:03d}+0000"


def _aggregate(points: list[Datapoint], statistic: str) -> float:
    total = sum(p.sum for p in points)
    count = sum(p.sample_count for p in points)
    return {
        "Sum": total,
        "SampleCount": count,
        "Average": total / count if count else math.nan,
        "Minimum": min(p.minimum for p in points),
        "Maximum": max(p.maximum for p in points),
    }[statistic]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def evaluate_alarm(
    alarm: AlarmSpec, datapoints: list[Datapoint], now: datetime, current_state: str = "INSUFFICIENT_DATA"
) -> Evaluation:
    """The state CloudWatch gives `alarm` at `now` from the metric's `datapoints` (the alarm's metric only), with the
    reason and reason data (JSON object) it records. `current_state` matters for TreatMissingData `ignore` only."""
    period = timedelta(seconds=alarm.period)
    now = utc(now)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    newest = epoch + period * ((now - epoch) // period)
    span = alarm.evaluation_periods + 2  # the evaluation range
    starts = [newest - period * (span - 1 - i) for i in range(span)]
    buckets: dict[int, list[Datapoint]] = {}
    for point in datapoints:
        index = (utc(point.timestamp) - starts[0]) // period
        if 0 <= index < span:
            buckets.setdefault(index, []).append(point)
    present = [(i, _aggregate(buckets[i], alarm.statistic)) for i in sorted(buckets)]
    present = [(i, value) for i, value in present if not math.isnan(value)]
    test, phrase = COMPARISONS[alarm.comparison]
    n, m = alarm.evaluation_periods, alarm.required
    treatment = alarm.treat_missing_data

    if len(present) >= n:
        evaluated = present[-n:]
        filled = 0
        filled_breaching = False
    else:
        evaluated = present
        filled = n - len(present)
        filled_breaching = treatment == "breaching"
    breaching = sum(1 for _, value in evaluated if test(value, alarm.threshold))
    if filled and treatment in ("breaching", "notBreaching"):
        state = "ALARM" if breaching + (filled if filled_breaching else 0) >= m else "OK"
    elif filled and breaching < m and breaching == len(evaluated):
        # Nothing, or only breaching datapoints too few to alarm: nothing to decide OK on.
        stopped = bool(evaluated) and evaluated[-1][0] < span - n
        if treatment == "missing":
            state = "ALARM" if stopped else "INSUFFICIENT_DATA"
        else:  # ignore
            state = current_state
    else:
        state = "ALARM" if breaching >= m else "OK"

    values = [f"{value} ({starts[i].strftime('%d/%m/%y %H:%M:%S')})" for i, value in reversed(evaluated)]
    transition = "OK -> ALARM" if state == "ALARM" else "ALARM -> OK"
    if not evaluated and treatment in ("breaching", "notBreaching"):
        label = "Breaching" if filled_breaching else "NonBreaching"
        reason = (
            f"Threshold Crossed: no datapoints were received for {_plural(n, 'period')} and "
            f"{_plural(filled, 'missing datapoint')} {'was' if filled == 1 else 'were'} treated as [{label}]."
        )
    elif state == "INSUFFICIENT_DATA":
        reason = f"Insufficient Data: {_plural(filled, 'datapoint')} {'was' if filled == 1 else 'were'} unknown."
    elif state == current_state and treatment == "ignore" and filled:
        reason = "Missing data ignored: the alarm keeps its state."
    else:
        counted = breaching if state == "ALARM" else len(evaluated) - breaching
        verb = "was" if counted == 1 else "were"
        reason = (
            f"Threshold Crossed: {counted} out of the last {len(evaluated)} datapoints [{', '.join(values)}]"
            f" {verb} {'' if state == 'ALARM' else 'not '}{phrase} the threshold ({alarm.threshold})"
            f" (minimum {_plural(m, 'datapoint')} for {transition} transition)."
        )
    reason_data = {
        "version": "1.0",
        "queryDate": _iso(now),
        "startDate": _iso(starts[0]),
        "statistic": alarm.statistic,
        "period": alarm.period,
        "recentDatapoints": [value for _, value in present],
        "threshold": alarm.threshold,
        "evaluatedDatapoints": [
            {
                "timestamp": _iso(starts[i]),
                "sampleCount": sum(p.sample_count for p in buckets[i]),
                "value": value,
            }
            for i, value in reversed(evaluated)
        ],
    }
    return Evaluation(state, reason, reason_data)


def alarm_event_time(moment: datetime | None = None) -> str:
    """The timestamp format of an alarm state in its state-change event."""
    return _iso(moment or datetime.now(UTC))
