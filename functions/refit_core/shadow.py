"""`deploy.mode = "shadow"`: the challenger as the endpoint's shadow variant, judged against the champion.

During the bake the endpoint's config has the champion alone in ProductionVariants and the challenger in
ShadowProductionVariants (SageMaker allows exactly one of each then). SageMaker copies a sample of the champion's
requests to the shadow (the shadow's InitialVariantWeight relative to the production variant's: 0.25 against 1.0
copies a quarter) and never returns the shadow's responses to callers; it publishes the shadow's CloudWatch metrics
under its own VariantName and, with Data Capture on, captures its requests and responses under its own variant folder.
The shadow keeps the fixed name `challenger`, so the stack's canary alarm and every per-variant query watch it as they
watch a canary.

After the bake (`shadow_verdict`): the canary's rules on the same window (refit_core.canary.step_verdict: the alarm,
fixed ceilings, one-sided 4XX/5XX tests against the champion, the p99 ModelLatency ratio, an invocation floor on both
variants: a quiet window is never a pass), then the predictions (`shadow_divergence`): the canary's test
(refit_core.divergence.prediction_divergence): are the shadow's captured outputs what its holdout disagreement with the
champion predicts, given the champion's outputs in the same window? Two honest models disagree; only a disagreement
beyond the holdout's counts. The shadow's copies are the champion's own requests (all of them, or a random
`sampling_percent` of them), so the test's premise, both samples drawn from the same traffic, holds more tightly than
in a canary's split. (A paired test on per-request differences would use the pairing too, but it needs each copy
joined to its original, and Data Capture gives a shadow record no documented key to its production record:
`inferenceId` only when callers send one.) Predictions not compared (capture off, no holdout reference, or fewer than
`min_captured_predictions` on either variant) are not a pass. Then promotion (the challenger becomes the sole
production variant) or drop (the endpoint returns to the config it had: the champion alone).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from refit_core.canary import CHALLENGER, CHAMPION, LatencyTail, VariantWindow, step_verdict, variant
from refit_core.capture import window_scores as captured_window_scores
from refit_core.config import ShadowSettings
from refit_core.divergence import prediction_divergence

SHADOW = CHALLENGER  # the shadow variant's name


def shadow_variants(
    champion_model: str,
    challenger_model: str,
    sampling_percent: int,
    instance_type: str,
    champion_count: int = 1,
    shadow_count: int = 1,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(ProductionVariants, ShadowProductionVariants) of the shadow endpoint config: the champion alone at weight 1
    on the instances it serves with (an UpdateEndpoint without RetainAllVariantProperties starts each variant at its
    InitialInstanceCount), the challenger at `sampling_percent` / 100 of it on `shadow_count` instances."""
    return (
        [variant(champion_model, CHAMPION, 1.0, instance_type, champion_count)],
        [variant(challenger_model, SHADOW, round(sampling_percent / 100, 6), instance_type, shadow_count)],
    )


def window_scores(
    s3: Any,
    bucket: str,
    prefix: str,
    endpoint: str,
    start: datetime,
    end: datetime,
    problem_type: str,
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """The champion's and the shadow's captured scores in [start, end), and the unreadable records by kind."""
    return captured_window_scores(s3, bucket, prefix, endpoint, (CHAMPION, SHADOW), start, end, problem_type)


def shadow_divergence(
    settings: ShadowSettings,
    reference: dict[str, Any] | None,
    scores: dict[str, list[float]],
    *,
    capture_enabled: bool,
    seed: int,
) -> dict[str, Any]:
    """The prediction-divergence test on the bake's captured scores (`scores` by variant), against the gate's holdout
    reference, at the shadow's `alpha` (one judgment, no correction) from `min_captured_predictions` outputs each."""
    return prediction_divergence(
        reference,
        scores.get(CHAMPION, []),
        scores.get(SHADOW, []),
        alpha=settings.alpha,
        min_samples=settings.min_captured_predictions,
        capture_enabled=capture_enabled,
        seed=seed,
    )


def shadow_verdict(
    settings: ShadowSettings,
    shadow: VariantWindow,
    champion: VariantWindow,
    alarm_state: str | None,
    divergence: dict[str, Any],
    tail: LatencyTail | None = None,
) -> dict[str, Any]:
    """The verdict on the shadow after its bake. Traffic and latency first (the canary's rules, with the shadow's
    limits, `tail` for its p99 rule); then predictions (`divergence`: shadow_divergence's result): not judged is not a pass (the predictions
    were the point of the shadow), and outputs beyond what the holdout predicts drop the shadow."""
    verdict = step_verdict(settings.limits(), shadow, champion, alarm_state, tail=tail)
    copied = round(shadow.invocations / champion.invocations, 4) if champion.invocations else None
    verdict = {**verdict, "divergence": divergence, "copied_share": copied}
    if not verdict["healthy"]:
        return verdict
    if divergence["status"] != "judged":
        # Too few captured outputs: more traffic could change this, as it could a quiet window (refit_core.synthetic).
        quiet = {"quiet": True} if divergence["status"] == "not_judged" else {}
        return {**verdict, **quiet, "healthy": False, "reason": f"predictions not compared: {divergence['reason']}"}
    if divergence["diverged"]:
        return {**verdict, "healthy": False, "reason": f"shadow predictions diverge: {divergence['reason']}"}
    return {**verdict, "reason": f"{verdict['reason']}; predictions agree: {divergence['reason']}"}
