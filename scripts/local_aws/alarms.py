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

Metric-math alarms (PutMetricAlarm with `Metrics`: metric queries and one expression with ReturnData) are evaluated
the same way over the expression's value per bucket (`MathAlarmSpec`), with the metric-math rules of the guide
("Metric math syntax and functions"): arithmetic between two time series treats a value missing in one as 0 (over the
timestamps either has), and a division by zero drops the data point; comparisons and AND/OR between two series treat
a missing value as 0 and give 1 or 0; `IF(condition, a, b)` is computed at the condition's data points (a missing
`a` point gives 0 when true, a missing or omitted `b` drops the point when false); `FILL(series, value)` gives every
bucket of the range a value. A bucket the expression gives no value is missing data, as for a single metric.
Functions beyond IF, FILL and ABS are refused (ValueError), so an alarm the bridge cannot evaluate faithfully is left
alone rather than misjudged.

`tests/integration/test_capture_and_alarm_bridges.py` checks every row of the guide's two example tables, and the
metric-math rules on the guide's examples.
"""

from __future__ import annotations

import math
import re
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
class MetricQuery:
    """One `MetricStat` query of a metric-math alarm."""

    id: str
    namespace: str
    metric_name: str
    dimensions: dict[str, str]
    statistic: str
    period: int
    unit: str | None = None

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"metric query {self.id}: statistic {self.statistic!r} is not one of {STATISTICS}")


@dataclass(frozen=True)
class MathAlarmSpec:
    """A metric-math alarm: its metric queries, its expressions (id -> text) and the one whose value is compared
    (`returned`), with the thresholds of a metric alarm. The period is the metric queries' (one for all)."""

    name: str
    metrics: tuple[MetricQuery, ...]
    expressions: dict[str, str]
    returned: str
    evaluation_periods: int
    threshold: float
    comparison: str
    datapoints_to_alarm: int | None = None
    treat_missing_data: str = "missing"
    statistic = None  # no single statistic: the reason data leaves it out

    def __post_init__(self) -> None:
        if not self.metrics:
            raise ValueError(f"alarm {self.name}: a metric-math alarm needs at least one metric query")
        if len({q.period for q in self.metrics}) != 1:
            raise ValueError(f"alarm {self.name}: metric queries of different periods are not evaluated locally")
        if self.returned not in self.expressions:
            raise ValueError(f"alarm {self.name}: the returned query {self.returned!r} is not an expression")
        if self.comparison not in COMPARISONS:
            raise ValueError(f"alarm {self.name}: comparison {self.comparison!r} is not one of {list(COMPARISONS)}")
        if self.treat_missing_data not in TREATMENTS:
            raise ValueError(f"alarm {self.name}: TreatMissingData {self.treat_missing_data!r} not in {TREATMENTS}")
        if self.evaluation_periods < 1 or not 1 <= self.required <= self.evaluation_periods:
            raise ValueError(f"alarm {self.name}: DatapointsToAlarm must be between 1 and EvaluationPeriods")
        for text in self.expressions.values():
            _parse(text)  # refuses what is not evaluated locally

    @property
    def period(self) -> int:
        return self.metrics[0].period

    @property
    def required(self) -> int:
        return self.datapoints_to_alarm or self.evaluation_periods

    @classmethod
    def from_description(cls, alarm: dict[str, Any]) -> MathAlarmSpec:
        """From a DescribeAlarms `MetricAlarms` entry with `Metrics`."""
        metrics, expressions, returned = [], {}, []
        for query in alarm["Metrics"]:
            if "Expression" in query:
                expressions[query["Id"]] = query["Expression"]
            else:
                stat = query["MetricStat"]
                metrics.append(
                    MetricQuery(
                        id=query["Id"],
                        namespace=stat["Metric"]["Namespace"],
                        metric_name=stat["Metric"]["MetricName"],
                        dimensions={d["Name"]: d["Value"] for d in stat["Metric"].get("Dimensions", [])},
                        statistic=stat["Stat"],
                        period=int(stat["Period"]),
                        unit=stat.get("Unit"),
                    )
                )
            if query.get("ReturnData", True):
                returned.append(query["Id"])
        if len(returned) != 1:
            raise ValueError(f"alarm {alarm['AlarmName']}: exactly one query must return data, not {returned}")
        return cls(
            name=alarm["AlarmName"],
            metrics=tuple(metrics),
            expressions=expressions,
            returned=returned[0],
            evaluation_periods=int(alarm["EvaluationPeriods"]),
            threshold=float(alarm["Threshold"]),
            comparison=alarm["ComparisonOperator"],
            datapoints_to_alarm=alarm.get("DatapointsToAlarm"),
            treat_missing_data=alarm.get("TreatMissingData") or "missing",
        )

    def values(self, series: dict[str, dict[int, float]], buckets: int) -> dict[int, float]:
        """The returned expression's value per bucket index (absent: no data), from each metric query's values per
        bucket over `buckets` buckets."""
        done: dict[str, Any] = dict(series)
        result = _Expression(self.expressions, done, range(buckets)).value(self.returned)
        if not isinstance(result, dict):
            raise ValueError(f"alarm {self.name}: expression {self.returned} gives a number, not a time series")
        return result


Scalar = float
Series = dict[int, float]
_TOKENS = re.compile(
    r"\s*(?:(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)|([A-Za-z_][A-Za-z0-9_]*)|(==|!=|<=|>=|&&|\|\||[-+*/^<>(),]))"
)
_FUNCTIONS = ("IF", "FILL", "ABS")


def _tokens(text: str) -> list[tuple[str, str]]:
    out, position = [], 0
    while position < len(text.rstrip()):
        match = _TOKENS.match(text, position)
        if not match or match.end() == position:
            raise ValueError(f"metric math {text!r}: cannot read from {text[position:]!r}")
        number, name, operator = match.groups()
        out.append(("number", number) if number else ("name", name) if name else ("op", operator))
        position = match.end()
    return out


def _parse(text: str) -> Any:
    """The expression's tree: ("number", x) | ("id", name) | (operator, left, right) | ("neg", x) | (FUNCTION, args)."""
    tokens = _tokens(text)
    position = 0

    def peek() -> tuple[str, str] | None:
        return tokens[position] if position < len(tokens) else None

    def take(expected: str | None = None) -> tuple[str, str]:
        nonlocal position
        token = peek()
        if token is None or (expected is not None and token[1] != expected):
            raise ValueError(f"metric math {text!r}: expected {expected or 'more'} at token {position}")
        position += 1
        return token

    def binary(next_level: Any, operators: tuple[str, ...]) -> Any:
        def level() -> Any:
            left = next_level()
            while (token := peek()) is not None and token[1] in operators:
                take()
                left = ({"&&": "AND", "||": "OR"}.get(token[1], token[1]), left, next_level())
            return left

        return level

    def unary() -> Any:
        token = peek()
        if token is not None and token[1] == "-":
            take()
            return ("neg", unary())
        return power()

    def power() -> Any:
        base = atom()
        if (token := peek()) is not None and token[1] == "^":
            take()
            return ("^", base, unary())
        return base

    def atom() -> Any:
        kind, value = take()
        if kind == "number":
            return ("number", float(value))
        if kind == "op" and value == "(":
            inner = logical()
            take(")")
            return inner
        if kind == "name" and peek() is not None and peek()[1] == "(":
            if value not in _FUNCTIONS:
                raise ValueError(f"metric math {text!r}: {value} is not evaluated locally (only {_FUNCTIONS})")
            take("(")
            args = [logical()]
            while peek() is not None and peek()[1] == ",":
                take()
                args.append(logical())
            take(")")
            return (value, args)
        if kind == "name" and value.upper() in ("AND", "OR") or kind == "op":
            raise ValueError(f"metric math {text!r}: unexpected {value!r}")
        return ("id", value)

    product = binary(unary, ("*", "/"))
    total = binary(product, ("+", "-"))
    comparison = binary(total, ("==", "!=", "<=", ">=", "<", ">"))

    def conjunction() -> Any:
        left = comparison()
        while (token := peek()) is not None and (token[1] == "&&" or token[1].upper() == "AND"):
            take()
            left = ("AND", left, comparison())
        return left

    def logical() -> Any:
        left = conjunction()
        while (token := peek()) is not None and (token[1] == "||" or token[1].upper() == "OR"):
            take()
            left = ("OR", left, conjunction())
        return left

    tree = logical()
    if position != len(tokens):
        raise ValueError(f"metric math {text!r}: unexpected {tokens[position][1]!r}")
    return tree


_ARITHMETIC = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "^": lambda a, b: a**b,
}
_LOGIC = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "AND": lambda a, b: bool(a) and bool(b),
    "OR": lambda a, b: bool(a) or bool(b),
}


class _Expression:
    """Evaluates expressions by id over the bucket indices `buckets`, with the metric queries' values in `done`."""

    def __init__(self, expressions: dict[str, str], done: dict[str, Any], buckets: range) -> None:
        self.expressions, self.done, self.buckets, self.busy = expressions, done, buckets, set()

    def value(self, name: str) -> Scalar | Series:
        if name not in self.done:
            if name not in self.expressions or name in self.busy:
                raise ValueError(f"metric math: {name!r} is not a query of the alarm (or refers to itself)")
            self.busy.add(name)
            self.done[name] = self.evaluate(_parse(self.expressions[name]))
        return self.done[name]

    def evaluate(self, node: Any) -> Scalar | Series:
        kind = node[0]
        if kind == "number":
            return node[1]
        if kind == "id":
            return self.value(node[1])
        if kind == "neg":
            inner = self.evaluate(node[1])
            return {t: -v for t, v in inner.items()} if isinstance(inner, dict) else -inner
        if kind in _ARITHMETIC or kind in _LOGIC:
            return self.binary(kind, self.evaluate(node[1]), self.evaluate(node[2]))
        args = [self.evaluate(arg) for arg in node[1]]
        if kind == "ABS" and len(args) == 1:
            return {t: abs(v) for t, v in args[0].items()} if isinstance(args[0], dict) else abs(args[0])
        if kind == "FILL" and len(args) == 2 and isinstance(args[0], dict) and not isinstance(args[1], dict):
            return {t: args[0].get(t, args[1]) for t in self.buckets}
        if kind == "IF" and len(args) in (2, 3):
            return self.when(*args)
        raise ValueError(f"metric math: {kind} with these arguments is not evaluated locally")

    @staticmethod
    def binary(operator: str, left: Scalar | Series, right: Scalar | Series) -> Scalar | Series:
        logic = operator in _LOGIC

        def apply(a: float, b: float) -> float | None:
            if logic:
                return 1.0 if _LOGIC[operator](a, b) else 0.0
            if operator == "/" and b == 0:
                return None  # "the data point is dropped"
            return float(_ARITHMETIC[operator](a, b))

        if not isinstance(left, dict) and not isinstance(right, dict):
            result = apply(left, right)
            if result is None:
                raise ValueError("metric math: division by zero")
            return result
        if isinstance(left, dict) and isinstance(right, dict):
            pairs = {t: (left.get(t, 0.0), right.get(t, 0.0)) for t in sorted(left.keys() | right.keys())}
        elif isinstance(left, dict):
            pairs = {t: (v, right) for t, v in left.items()}
        else:
            pairs = {t: (left, v) for t, v in right.items()}
        out = {t: apply(a, b) for t, (a, b) in pairs.items()}
        return {t: v for t, v in out.items() if v is not None}

    def when(self, condition: Scalar | Series, true: Scalar | Series, false: Scalar | Series | None = None) -> Series:
        if not isinstance(condition, dict):
            chosen = true if condition else false
            if chosen is None:
                return {}
            return chosen if isinstance(chosen, dict) else {t: chosen for t in self.buckets}
        out: Series = {}
        for t, value in condition.items():
            if value:
                out[t] = true.get(t, 0.0) if isinstance(true, dict) else true
            elif isinstance(false, dict):
                if t in false:
                    out[t] = false[t]
            elif false is not None:
                out[t] = false
        return out


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


def _bucketed(points: list[Datapoint], starts: list[datetime], period: timedelta) -> dict[int, list[Datapoint]]:
    buckets: dict[int, list[Datapoint]] = {}
    for point in points:
        index = (utc(point.timestamp) - starts[0]) // period
        if 0 <= index < len(starts):
            buckets.setdefault(index, []).append(point)
    return buckets


def _values(buckets: dict[int, list[Datapoint]], statistic: str) -> dict[int, float]:
    values = {i: _aggregate(buckets[i], statistic) for i in sorted(buckets)}
    return {i: value for i, value in values.items() if not math.isnan(value)}


def evaluate_alarm(
    alarm: AlarmSpec | MathAlarmSpec,
    datapoints: list[Datapoint] | dict[str, list[Datapoint]],
    now: datetime,
    current_state: str = "INSUFFICIENT_DATA",
) -> Evaluation:
    """The state CloudWatch gives `alarm` at `now` from the metric's `datapoints` (the alarm's metric only; for a
    metric-math alarm, each metric query's by its id), with the reason and reason data (JSON object) it records.
    `current_state` matters for TreatMissingData `ignore` only."""
    period = timedelta(seconds=alarm.period)
    now = utc(now)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    newest = epoch + period * ((now - epoch) // period)
    span = alarm.evaluation_periods + 2  # the evaluation range
    starts = [newest - period * (span - 1 - i) for i in range(span)]
    if isinstance(alarm, MathAlarmSpec):
        by_query = datapoints if isinstance(datapoints, dict) else {}
        series = {q.id: _values(_bucketed(by_query.get(q.id, []), starts, period), q.statistic) for q in alarm.metrics}
        values = alarm.values(series, span)
        buckets: dict[int, list[Datapoint]] = {}
    else:
        buckets = _bucketed(list(datapoints), starts, period)
        values = _values(buckets, alarm.statistic)
    present = sorted(values.items())
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
        **({"statistic": alarm.statistic} if alarm.statistic else {}),
        "period": alarm.period,
        "recentDatapoints": [value for _, value in present],
        "threshold": alarm.threshold,
        "evaluatedDatapoints": [
            {
                "timestamp": _iso(starts[i]),
                **({"sampleCount": sum(p.sample_count for p in buckets[i])} if i in buckets else {}),
                "value": value,
            }
            for i, value in reversed(evaluated)
        ],
    }
    return Evaluation(state, reason, reason_data)


def alarm_event_time(moment: datetime | None = None) -> str:
    """The timestamp format of an alarm state in its state-change event."""
    return _iso(moment or datetime.now(UTC))
