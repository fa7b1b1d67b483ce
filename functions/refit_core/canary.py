"""Endpoint layout and the verdict on each canary step.

The endpoint always has a variant called `champion`; during a canary a second variant called
`challenger` takes each share of `canary.steps` in turn. Fixed names let one CloudWatch alarm watch the
challenger across model versions. Promotion replaces the config with the challenger's model under
the name `champion`; rollback returns to the config the endpoint had before the run.

A step is judged against the champion on the same window (`step_verdict`): the challenger's 5XX and 4XX
rates against the champion's (one-sided Fisher exact tests), its p99 ModelLatency over the champion's, its captured
outputs against what its holdout disagreement with the champion predicts (refit_core.divergence), and fixed ceilings
as guards. A window with too little traffic on either variant is never a pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from scipy.stats import fisher_exact

from refit_core.config import CanarySettings, ModelConfig

CHAMPION = "champion"
CHALLENGER = "challenger"


def error_rate_alarm_expression(min_invocations: int) -> str:
    """The stack's canary alarm (metric math over the challenger variant's `invocations` and `errors`, each a Sum per
    period): its 5XX rate where it served at least `min_invocations` requests, else 0 (too few to judge: the step
    verdict's invocation floor speaks for a quiet window). In metric math a missing `errors` point counts as 0 and a
    period without invocations gives no value (missing data)."""
    return f"IF(invocations >= {min_invocations}, errors / invocations, 0)"


def error_alarm_limits(model: ModelConfig) -> CanarySettings:
    """The limits the canary alarm shares with the verdict that reads it: the shadow's in `deploy.mode = "shadow"`,
    else the canary's (variants, ab, guardrails)."""
    return model.deploy.shadow.limits() if model.deploy.mode == "shadow" else model.canary


def variant(
    model_name: str, variant_name: str, weight: float, instance_type: str, instance_count: int = 1
) -> dict[str, Any]:
    return {
        "VariantName": variant_name,
        "ModelName": model_name,
        "InitialInstanceCount": instance_count,
        "InstanceType": instance_type,
        "InitialVariantWeight": weight,
    }


# Content types Data Capture records as text (CSV and JSON); anything else is captured base64-encoded.
CAPTURE_CSV_TYPES = ["text/csv"]
CAPTURE_JSON_TYPES = ["application/json", "application/jsonlines"]


def data_capture(destination: str, sampling_percent: int, kms_key_arn: str) -> dict[str, Any]:
    """The DataCaptureConfig of every endpoint config refit creates: requests and responses, as text, encrypted with
    the project key, under `destination` (SageMaker adds `/<endpoint>/<variant>/yyyy/mm/dd/hh/`)."""
    return {
        "EnableCapture": True,
        "InitialSamplingPercentage": sampling_percent,
        "DestinationS3Uri": destination.rstrip("/"),
        "KmsKeyId": kms_key_arn,
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"CsvContentTypes": CAPTURE_CSV_TYPES, "JsonContentTypes": CAPTURE_JSON_TYPES},
    }


def canary_variants(
    champion_model: str,
    challenger_model: str,
    weight: float,
    instance_type: str,
    champion_count: int = 1,
    challenger_count: int = 1,
) -> list[dict[str, Any]]:
    return [
        variant(champion_model, CHAMPION, round(1 - weight, 6), instance_type, champion_count),
        variant(challenger_model, CHALLENGER, weight, instance_type, challenger_count),
    ]


@dataclass(frozen=True)
class VariantWindow:
    """One variant's CloudWatch numbers over a step's window (latencies in milliseconds; None when no sample)."""

    invocations: float
    errors_4xx: float
    errors_5xx: float
    mean_latency_ms: float | None
    p99_latency_ms: float | None
    latency_samples: float | None = None  # ModelLatency's SampleCount (None: one per invocation)

    @property
    def samples(self) -> float:
        return self.invocations if self.latency_samples is None else self.latency_samples

    def evidence(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "rate_4xx": _rate(self.errors_4xx, self.invocations),
            "rate_5xx": _rate(self.errors_5xx, self.invocations),
        }


def _rate(events: float, invocations: float) -> float | None:
    return round(events / invocations, 6) if invocations else None


def higher_rate_p_value(
    challenger_events: float, challenger_n: float, champion_events: float, champion_n: float
) -> float:
    """One-sided p-value that the challenger's event rate is higher than the champion's (Fisher's exact test on the
    2x2 table of events and non-events; exact at the small error counts a canary sees, where a z-test is not)."""
    c_n, h_n = round(challenger_n), round(champion_n)
    c_events, h_events = min(round(challenger_events), c_n), min(round(champion_events), h_n)
    if c_n == 0 or h_n == 0 or c_events == 0:
        return 1.0
    table = [[c_events, c_n - c_events], [h_events, h_n - h_events]]
    return float(fisher_exact(table, alternative="greater").pvalue)


def tail_threshold_ms(max_ratio: float, champion: VariantWindow) -> float | None:
    """The latency X the p99 rule counts slow requests over: `max_ratio` times the champion's p99 (None without one)."""
    return round(max_ratio * champion.p99_latency_ms, 3) if champion.p99_latency_ms else None


@dataclass(frozen=True)
class LatencyTail:
    """Each variant's requests slower than `threshold_ms` (the ratio's margin over the champion's p99) out of its
    ModelLatency samples on the window, from CloudWatch's percentile rank PR(:X) (refit_handlers.deploy.latency_tail)."""

    threshold_ms: float
    challenger_slow: float
    challenger_samples: float
    champion_slow: float
    champion_samples: float


def p99_regression(
    max_ratio: float, alpha: float, ratio: float | None, tail: LatencyTail | None
) -> tuple[bool, dict[str, Any] | None, str]:
    """The p99 rule, one implementation for the canary's steps, the shadow, the A/B guards and the guarded update's
    judged window: a regression is a p99 over `max_ratio` times the champion's (the practical margin) AND a share of requests
    slower than that margin X significantly higher than the champion's share over the same X (one-sided Fisher exact
    at `alpha`, higher_rate_p_value). A p99 over the margin on noise alone (a handful of slow requests in a hundred)
    is then no regression; a challenger whose requests are slower across the board is. Without the shares (`tail`
    None: CloudWatch reported no percentile rank) the ratio alone decides, as the cautious reading. Returns
    (regressed, the tail's evidence, the words for the reason)."""
    if ratio is None or ratio <= max_ratio:
        return False, None, ""
    if tail is None:
        return True, None, "the share of slow requests not reported"
    p_value = higher_rate_p_value(
        tail.challenger_slow, tail.challenger_samples, tail.champion_slow, tail.champion_samples
    )
    evidence = {
        "threshold_ms": tail.threshold_ms,
        "challenger_slow": tail.challenger_slow,
        "challenger_samples": tail.challenger_samples,
        "challenger_share": _rate(tail.challenger_slow, tail.challenger_samples),
        "champion_slow": tail.champion_slow,
        "champion_samples": tail.champion_samples,
        "champion_share": _rate(tail.champion_slow, tail.champion_samples),
        "p_value": round(p_value, 6),
        "alpha": alpha,
    }
    shares = (
        f"{tail.challenger_slow:.0f} of {tail.challenger_samples:.0f} requests over {tail.threshold_ms:.1f} ms "
        f"against the champion's {tail.champion_slow:.0f} of {tail.champion_samples:.0f} (one-sided Fisher exact "
        f"p = {p_value:.4g}"
    )
    if p_value < alpha:
        return True, evidence, f"{shares} < {alpha})"
    return False, evidence, f"not significantly more slow requests: {shares} >= {alpha})"


def step_verdict(
    settings: CanarySettings,
    challenger: VariantWindow,
    champion: VariantWindow,
    alarm_state: str | None,
    divergence: dict[str, Any] | None = None,
    *,
    quiet_fails: bool = True,
    tail: LatencyTail | None = None,
) -> dict[str, Any]:
    """The verdict on one canary step, from both variants' numbers on the same window.

    Fails on: the canary alarm in ALARM; the challenger's 5XX rate over `max_error_rate` or its mean ModelLatency over
    `max_model_latency_ms` (the fixed guards); a 5XX or 4XX rate significantly higher than the champion's (one-sided,
    level `alpha`). These fail on any amount of traffic: evidence of harm needs no floor. A pass needs
    a window where every comparison could be judged: `min_invocations` on both variants, `min_latency_samples`
    ModelLatency samples on both (a p99 of fewer is the largest value or two), and, where the prediction-divergence
    check ran (`divergence`, refit_core.divergence), enough captured outputs for it. Short of any of these the window
    is quiet: not promoted, said so and marked `quiet`, the only failure more traffic could change
    (refit_core.synthetic). Then both p99 latencies and no p99 regression (p99_regression: the challenger's p99 over
    `max_p99_latency_ratio` times the champion's AND significantly more of its requests slower than that margin, from
    `tail`). `divergence` fails the step when it judged the challenger's outputs diverged; skipped (Data Capture off,
    or no holdout reference) it decides nothing and is named in the reason.
    `quiet_fails=False` (the A/B test's guards, checked while the test runs) asks only whether the challenger harms:
    too little traffic is then no evidence of harm rather than a fail, and an unjudged p99 is named, not failed."""
    p_5xx = higher_rate_p_value(
        challenger.errors_5xx, challenger.invocations, champion.errors_5xx, champion.invocations
    )
    p_4xx = higher_rate_p_value(
        challenger.errors_4xx, challenger.invocations, champion.errors_4xx, champion.invocations
    )
    raw_ratio = (
        challenger.p99_latency_ms / champion.p99_latency_ms
        if challenger.p99_latency_ms is not None and champion.p99_latency_ms
        else None
    )
    ratio = round(raw_ratio, 4) if raw_ratio is not None else None
    p99_judged = min(challenger.samples, champion.samples) >= settings.min_latency_samples
    regressed, tail_evidence, tail_words = p99_regression(
        settings.max_p99_latency_ratio, settings.alpha, raw_ratio, tail
    )
    evidence = {
        "challenger": challenger.evidence(),
        "champion": champion.evidence(),
        "p_value_5xx": round(p_5xx, 6),
        "p_value_4xx": round(p_4xx, 6),
        "p99_latency_ratio": ratio,
        "p99_judged": p99_judged,
        "p99_tail": tail_evidence,
        "alarm_state": alarm_state,
        "divergence": divergence,
    }

    def verdict(healthy: bool, reason: str, quiet: bool = False) -> dict[str, Any]:
        if healthy and divergence is not None and divergence.get("status") != "judged":
            reason = f"{reason}; predictions {divergence['reason']}"
        return {"healthy": healthy, "reason": reason, "quiet": quiet, **evidence}

    rate_5xx = challenger.errors_5xx / challenger.invocations if challenger.invocations else 0.0
    if alarm_state == "ALARM":
        return verdict(False, "the canary alarm is in ALARM")
    if rate_5xx > settings.max_error_rate:
        return verdict(False, f"challenger 5XX error rate {rate_5xx:.2%} is over {settings.max_error_rate:.2%}")
    if challenger.mean_latency_ms is not None and challenger.mean_latency_ms > settings.max_model_latency_ms:
        return verdict(
            False,
            f"challenger mean model latency {challenger.mean_latency_ms:.0f} ms is over "
            f"{settings.max_model_latency_ms:.0f} ms",
        )
    for kind, p_value in (("5XX", p_5xx), ("4XX", p_4xx)):
        if p_value < settings.alpha:
            return verdict(
                False,
                f"challenger {kind} rate is higher than the champion's on the same window "
                f"(one-sided Fisher exact p = {p_value:.4f} < {settings.alpha})",
            )
    if divergence is not None and divergence.get("diverged"):
        return verdict(False, f"prediction divergence: {divergence['reason']}")
    for name, window in (("challenger", challenger), ("champion", champion)):
        if quiet_fails and window.invocations < settings.min_invocations:
            return verdict(
                False,
                f"quiet window: the {name} saw {window.invocations:.0f} invocations during the bake, fewer than the "
                f"{settings.min_invocations} required to judge the step",
                quiet=True,
            )
    if quiet_fails and not p99_judged:
        return verdict(
            False,
            f"quiet window: the challenger's p99 cannot be judged from {challenger.samples:.0f} challenger and "
            f"{champion.samples:.0f} champion ModelLatency samples, fewer than the {settings.min_latency_samples} "
            "required on each",
            quiet=True,
        )
    if not p99_judged:
        return verdict(
            True,
            f"challenger served {challenger.invocations:.0f} requests, no worse than the champion's "
            f"{champion.invocations:.0f}; p99 not judged: fewer than {settings.min_latency_samples} latency samples "
            "on a variant",
        )
    if raw_ratio is None:
        return verdict(False, "p99 ModelLatency of both variants is needed to judge the step and was not reported")
    if regressed:
        return verdict(
            False,
            f"challenger p99 model latency {challenger.p99_latency_ms:.1f} ms is {raw_ratio:.2f} x the champion's "
            f"{champion.p99_latency_ms:.1f} ms, over {settings.max_p99_latency_ratio}, with {tail_words}",
        )
    # After the p99: a judged latency regression is evidence of harm, never topped up as a quiet window.
    if quiet_fails and divergence is not None and divergence.get("status") == "not_judged":
        return verdict(False, f"quiet window: predictions {divergence['reason']}", quiet=True)
    margin = f", over {settings.max_p99_latency_ratio} but {tail_words}" if tail_words else ""
    return verdict(
        True,
        f"challenger served {challenger.invocations:.0f} requests, no worse than the champion's "
        f"{champion.invocations:.0f} (p99 ratio {raw_ratio:.2f}{margin})",
    )
