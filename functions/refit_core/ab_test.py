"""The A/B test of `deploy.mode = "ab"`: champion and challenger serve a fixed split of the live traffic for a set
duration; then, once, the live primary metric of each variant on its own labelled rows decides.

- The rows are the monitor's: captured requests joined with ground truth by inference id (`refit_core.monitor`'s
  `window_labels` and `scan_window`, the same join the live metric uses), for both variants since the split began.
  Requests active learning picked for labelling are left out as the monitor leaves them out: they are not a sample.
- The variants served different requests, so the test is for two *independent* samples: for ROC AUC, DeLong's
  variance of each variant's AUC (placement values, `refit_core.live_metrics.roc_auc_from_counts`) added, and a
  one-sided z-test of the difference; for every other metric a bootstrap of the difference, each variant resampled
  on its own (`refit_core.metrics.Resampler`).
- Promoted only when the challenger is better by more than `min_effect` at level `alpha` (H0: improvement <=
  min_effect), with at least `min_labelled_rows` labelled rows on each variant. Fewer rows by the end of the
  duration is no promotion; a difference seen before the end is never acted on (the run only waits until then).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from scipy import stats
from threadpoolctl import threadpool_limits

from refit_core.canary import CHALLENGER, CHAMPION
from refit_core.champion import describe_endpoint
from refit_core.config import AbSettings
from refit_core.live_metrics import metric_interval, roc_auc_from_counts
from refit_core.metric_names import higher_is_better
from refit_core.metrics import Resampler, bootstrap_counts, compute_metric
from refit_core.monitor import Place, labeling_picks, scan_window, window_labels


class AbTestError(RuntimeError):
    """The endpoint no longer holds the A/B split the run set up: the test cannot be judged."""


@dataclass
class Sample:
    """One variant's labelled rows over the test: labels, the scores it served for them, and how many rows it
    served in all (labelled or not)."""

    labels: np.ndarray
    scores: np.ndarray
    captured: int = 0

    @property
    def n(self) -> int:
        return int(self.labels.size)


def _auc_and_variance(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    _, group = np.unique(scores, return_inverse=True)
    auc, variance = roc_auc_from_counts(np.bincount(group, labels), np.bincount(group, 1 - labels))
    return float(auc), float(variance)


def two_sample_test(
    metric: str,
    champion: Sample,
    challenger: Sample,
    *,
    min_effect: float = 0.0,
    alpha: float = 0.05,
    replicates: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Is the challenger's metric better than the champion's by more than `min_effect`, the variants being
    independent samples? Returns both values, the difference challenger - champion with its two-sided (1 - 2 alpha)
    interval (its end on the champion's side is the one-sided test's bound), `p_value` (H0: improvement <=
    min_effect) and `p_value_worse` (H0: the challenger is not worse). Both variants need rows, and for roc_auc both
    classes."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    if metric == "roc_auc":
        auc_a, var_a = _auc_and_variance(champion.labels, champion.scores)
        auc_b, var_b = _auc_and_variance(challenger.labels, challenger.scores)
        difference = auc_b - auc_a
        improvement = sign * difference
        se = float(np.sqrt(var_a + var_b))
        if se > 0:
            p_value = float(stats.norm.sf((improvement - min_effect) / se))
            p_worse = float(stats.norm.cdf(improvement / se))
        else:  # both variants separate their classes perfectly (or identically): no spread to test against
            p_value = 0.0 if improvement > min_effect else 1.0
            p_worse = 0.0 if improvement < 0 else 1.0
        z = float(stats.norm.ppf(1 - alpha))
        return {
            "test": "delong_independent",
            "champion_value": auc_a,
            "challenger_value": auc_b,
            "difference": difference,
            "ci_low": difference - z * se,
            "ci_high": difference + z * se,
            "p_value": p_value,
            "p_value_worse": p_worse,
        }
    rng = np.random.default_rng(seed)
    old, new = Resampler(champion.labels, champion.scores), Resampler(challenger.labels, challenger.scores)
    draws = np.empty(replicates)
    # A resample is a few dot products: BLAS threads only spin (see refit_core.live_metrics.metric_interval).
    with threadpool_limits(1, user_api="blas"):
        for index in range(replicates):
            draws[index] = new.metric(metric, bootstrap_counts(rng, challenger.n)) - old.metric(
                metric, bootstrap_counts(rng, champion.n)
            )
    improvements = sign * draws
    value_a = compute_metric(metric, champion.labels, champion.scores)
    value_b = compute_metric(metric, challenger.labels, challenger.scores)
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return {
        "test": "bootstrap_independent",
        "champion_value": float(value_a),
        "challenger_value": float(value_b),
        "difference": float(value_b - value_a),
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": float((np.count_nonzero(improvements <= min_effect) + 1) / (replicates + 1)),
        "p_value_worse": float((np.count_nonzero(improvements >= 0) + 1) / (replicates + 1)),
    }


def _variant(metric: str, sample: Sample, confidence: float, seed: int) -> dict[str, Any]:
    interval = metric_interval(metric, sample.labels, sample.scores, confidence=confidence, seed=seed)
    return {
        "captured_rows": sample.captured,
        "labelled_rows": sample.n,
        "value": interval.get("value"),
        "lower": interval.get("lower"),
        "upper": interval.get("upper"),
        "reason": interval.get("reason"),
    }


def decide(
    settings: AbSettings,
    metric: str,
    champion: Sample,
    challenger: Sample,
    *,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The decision at the end of the test: `result` `won` (promote), `lost`, `undecided` or `too_few_labels` (roll
    back), the reason in one sentence, both variants' live metric with its interval, and the test's evidence."""
    evidence: dict[str, Any] = {
        "metric": metric,
        "alpha": settings.alpha,
        "min_effect": settings.min_effect,
        "min_labelled_rows": settings.min_labelled_rows,
        "champion": _variant(metric, champion, confidence, seed),
        "challenger": _variant(metric, challenger, confidence, seed),
    }
    counts = f"challenger {challenger.n:,}, champion {champion.n:,} labelled rows"
    if min(champion.n, challenger.n) < settings.min_labelled_rows:
        return {
            "result": "too_few_labels",
            "reason": f"not enough labels by the end of the A/B test: {counts}, at least "
            f"{settings.min_labelled_rows:,} per variant needed",
            **evidence,
        }
    for name in ("challenger", "champion"):
        if evidence[name]["value"] is None:
            return {
                "result": "undecided",
                "reason": f"live {metric} of the {name} is undefined: {evidence[name]['reason']}",
                **evidence,
            }
    test = two_sample_test(
        metric,
        champion,
        challenger,
        min_effect=settings.min_effect,
        alpha=settings.alpha,
        replicates=settings.bootstrap_samples,
        seed=seed,
    )
    level = f"{(1 - 2 * settings.alpha) * 100:g}%"
    said = (
        f"live {metric} challenger {test['challenger_value']:.4f} vs champion {test['champion_value']:.4f} "
        f"({counts}), difference {test['difference']:+.4f} ({level} CI {test['ci_low']:+.4f} to "
        f"{test['ci_high']:+.4f})"
    )
    if test["p_value"] < settings.alpha:
        result = "won"
        reason = f"challenger better: {said}; {test['test']} p = {test['p_value']:.3g} < {settings.alpha:g}"
    elif test["p_value_worse"] < settings.alpha:
        result = "lost"
        reason = f"challenger worse: {said}; {test['test']} p = {test['p_value_worse']:.3g} < {settings.alpha:g}"
    else:
        result = "undecided"
        reason = (
            f"challenger not better by more than {settings.min_effect:g}: {said}; {test['test']} "
            f"p = {test['p_value']:.3g} >= {settings.alpha:g}"
        )
    evidence.update({key: test[key] for key in ("test", "difference", "ci_low", "ci_high", "p_value")})
    evidence["p_value_worse"] = test["p_value_worse"]
    return {"result": result, "reason": reason, **evidence}


def verify_split(sagemaker: Any, endpoint_name: str, expected_config: str) -> None:
    """The endpoint still serves the A/B config with both variants; anything else (a change by hand, an update under
    way, a failure) ends the test: the run then rolls back to the champion's config."""
    endpoint = describe_endpoint(sagemaker, endpoint_name)
    if endpoint is None:
        raise AbTestError(f"A/B test: endpoint {endpoint_name} no longer exists")
    status, config = endpoint.get("EndpointStatus"), endpoint.get("EndpointConfigName")
    variants = {v["VariantName"] for v in endpoint.get("ProductionVariants", [])}
    if status != "InService" or config != expected_config or not {CHAMPION, CHALLENGER} <= variants:
        raise AbTestError(
            f"A/B test: endpoint {endpoint_name} is {status} on {config} with variants {sorted(variants)}, not "
            f"InService on {expected_config} with {CHAMPION} and {CHALLENGER}; the test cannot be judged"
        )


def variant_samples(s3: Any, place: Place, since: datetime, now: datetime) -> dict[str, Sample]:
    """Each variant's labelled rows served since `since`, joined by the monitor's own code from the parts its runs
    keep (captured requests and labels, labels uploaded since `since`); the picks of active learning left out."""
    labels, _ = window_labels(s3, place, now, [], Counter(), since=since)
    window = scan_window(
        s3,
        place,
        start=since,
        variant_since={CHAMPION: since, CHALLENGER: since},
        labels=labels,
        new_label_keys=set(),
        new_parts=set(),
        profile=None,
        features=[],
        asked=labeling_picks(s3, place, since, now),
    )
    samples = {}
    for name in (CHAMPION, CHALLENGER):
        rows = window.variants.get(name)
        if rows is None:
            samples[name] = Sample(np.empty(0), np.empty(0), 0)
            continue
        joined = [np.concatenate(parts) if parts else np.empty(0) for parts in (rows.labels, rows.scores)]
        samples[name] = Sample(joined[0], joined[1], rows.captured)
    return samples


def judge(
    place: Place,
    *,
    started_at: str,
    remaining_seconds: int,
    wait_seconds: int,
    checks: int,
    expected_config: str,
    s3: Any,
    sagemaker: Any,
    now: datetime,
    error_alarm: tuple[str, str | None] | None = None,
    guards: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One check of the running test, after a Wait of `wait_seconds` (of the `remaining_seconds` that were left).
    The endpoint must still hold the split. A challenger whose error alarm (`error_alarm`: the stack's canary alarm,
    any challenger 5XX in a minute, with its state) is in ALARM ends the test at once: real users must not get
    errors for the rest of the duration; the guards' evidence (both variants' numbers) is kept with it. Before the duration has passed: wait again (at most
    `check_interval_seconds`), reading no traffic at all. Then: the decision (`decide`), with `next` `promote` or
    `rollback`. `guards` (the canary's rules on the window since the split began: 5XX/4XX against the champion,
    the p99 ratio, prediction divergence, the fixed ceilings; refit_core.canary.step_verdict with the quiet rule
    off) is asked at every check after the alarm: a challenger that harms users ends the test at once (result
    `harmed`, with the guards' evidence), before any A/B decision."""
    settings = place.model.deploy.ab
    verify_split(sagemaker, place.endpoint_name, expected_config)
    remaining = max(0, remaining_seconds - wait_seconds)
    base: dict[str, Any] = {"started_at": started_at, "checks": checks + 1}
    if error_alarm is not None and error_alarm[1] == "ALARM":
        if guards is not None:  # the numbers behind the alarm (both variants' 5XX on the window), for the record
            base["guards"] = guards()
        return {
            "next": "rollback",
            "remaining_seconds": remaining,
            "wait_seconds": 0,
            "result": "errors",
            "reason": f"the challenger's error alarm {error_alarm[0]} is in ALARM: the test ends {remaining:,} s early",
            "decided_at": now.isoformat(timespec="seconds"),
            **base,
        }
    if guards is not None:
        guarded = guards()
        if not guarded["healthy"]:
            return {
                "next": "rollback",
                "remaining_seconds": remaining,
                "wait_seconds": 0,
                "result": "harmed",
                "reason": f"the challenger harms users on the live window: {guarded['reason']}; the test ends "
                f"{remaining:,} s early",
                "guards": guarded,
                "decided_at": now.isoformat(timespec="seconds"),
                **base,
            }
        base["guards"] = guarded
    if remaining > 0:
        wait = min(settings.check_interval_seconds, remaining)
        return {"next": "wait", "remaining_seconds": remaining, "wait_seconds": wait, **base}
    samples = variant_samples(s3, place, datetime.fromisoformat(started_at), now)
    decision = decide(
        settings,
        place.model.primary_metric,
        samples[CHAMPION],
        samples[CHALLENGER],
        confidence=place.model.monitor.confidence,
        seed=place.model.seed,
    )
    return {
        "next": "promote" if decision["result"] == "won" else "rollback",
        "remaining_seconds": 0,
        "wait_seconds": 0,
        "decided_at": now.isoformat(timespec="seconds"),
        **decision,
        **base,
    }
