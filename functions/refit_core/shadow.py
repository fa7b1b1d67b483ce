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
variants: a quiet window is never a pass), then the predictions: the shadow's captured scores against the champion's
on the same window (refit_core.divergence). Then promotion (the challenger becomes the sole production variant) or
drop (the endpoint returns to the config it had: the champion alone).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from refit_core.canary import CHALLENGER, CHAMPION, VariantWindow, step_verdict, variant
from refit_core.capture import window_scores as captured_window_scores
from refit_core.config import ShadowSettings
from refit_core.divergence import two_sample_divergence

SHADOW = CHALLENGER  # the shadow variant's name


def shadow_variants(
    champion_model: str, challenger_model: str, sampling_percent: int, instance_type: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(ProductionVariants, ShadowProductionVariants) of the shadow endpoint config: the champion alone at weight 1,
    the challenger at `sampling_percent` / 100 of it."""
    return (
        [variant(champion_model, CHAMPION, 1.0, instance_type)],
        [variant(challenger_model, SHADOW, round(sampling_percent / 100, 6), instance_type)],
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


def shadow_verdict(
    settings: ShadowSettings,
    shadow: VariantWindow,
    champion: VariantWindow,
    alarm_state: str | None,
    scores: dict[str, list[float]],
) -> dict[str, Any]:
    """The verdict on the shadow after its bake. Traffic and latency first (the canary's rules, with the shadow's
    limits); then predictions: fewer than `min_captured_predictions` captured scores on either variant is not a pass
    (the predictions could not be compared), and a KS distance over `max_prediction_divergence` that is significant
    at `alpha` drops the shadow."""
    verdict = step_verdict(settings.limits(), shadow, champion, alarm_state)
    divergence = two_sample_divergence(scores.get(CHAMPION, []), scores.get(SHADOW, []))
    copied = round(shadow.invocations / champion.invocations, 4) if champion.invocations else None
    verdict = {**verdict, "divergence": divergence, "copied_share": copied}
    if not verdict["healthy"]:
        return verdict
    fewest = min(divergence["n_champion"], divergence["n_challenger"])
    if fewest < settings.min_captured_predictions:
        return {
            **verdict,
            "healthy": False,
            "quiet": True,  # more traffic could change this, as it could a quiet window (refit_core.synthetic)
            "reason": f"predictions not compared: {divergence['n_challenger']} captured shadow and "
            f"{divergence['n_champion']} champion predictions in the window, fewer than the "
            f"{settings.min_captured_predictions} required on each",
        }
    statistic, p_value = divergence["statistic"], divergence["p_value"]
    if statistic > settings.max_prediction_divergence and p_value < settings.alpha:
        return {
            **verdict,
            "healthy": False,
            "reason": f"shadow predictions diverge from the champion's on the same window: KS distance "
            f"{statistic:.3f} > {settings.max_prediction_divergence} (p = {p_value:.2g} < {settings.alpha}; mean score "
            f"{divergence['mean_challenger']:.4f} vs {divergence['mean_champion']:.4f})",
        }
    return {**verdict, "reason": f"{verdict['reason']}; predictions agree (KS distance {statistic:.3f})"}
