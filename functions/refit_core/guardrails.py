"""`deploy.mode = "guardrails"`: SageMaker's blue/green deployment guardrails on a single-variant endpoint.

The challenger's endpoint config keeps the one variant `champion` (a blue/green update must keep the variant name) and
goes on the endpoint with UpdateEndpoint(DeploymentConfig=...): SageMaker brings up the new fleet, shifts traffic to it
in the configured steps, bakes after each, and rolls back when one of the alarms named in AutoRollbackConfiguration
(created by the stack for this endpoint, `alarm_names`) is in ALARM during a bake. After an automatic rollback the
endpoint is InService again, on the *old* EndpointConfigName and often with no FailureReason, so the outcome is read
from the config name (`judge`), never from InService alone. `UpdateRollbackFailed` (the update and its rollback both
failed: a mixed fleet) ends the run FAILED with the endpoint's state recorded; refit does not touch such an endpoint
again on its own (SageMaker's remedy, another UpdateEndpoint, is an operator's decision).

An update SageMaker finished on the new config is then judged by refit (bake_verdict) on a window only the new fleet
served (judged_window: from the first whole minute after the end, `judge_seconds` long) against the champion's window
before the UpdateEndpoint (champion_window): quiet, p99 ModelLatency ratio, and the canary's prediction-divergence test
on both windows' captured outputs. A fail is rolled back by a second UpdateEndpoint to the previous config.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from refit_core import names
from refit_core.canary import LatencyTail, VariantWindow, higher_rate_p_value, p99_regression
from refit_core.config import GUARDRAILS_SETTLE_SECONDS, GuardrailsSettings, ModelConfig

ALARM_PURPOSES = ("guardrails-5xx", "guardrails-latency")
# Updating: the update is under way; SystemUpdating and RollingBack: SageMaker is still moving the fleet.
IN_PROGRESS = {"Updating", "SystemUpdating", "RollingBack", "Creating"}
FAILED = {"Failed", "UpdateRollbackFailed", "OutOfService", "Deleting"}
# Instance families deployment guardrails cannot serve: the update silently falls back to all-at-once with no bake
# (SageMaker developer guide, "Exclusions"). Marketplace containers and Elastic Inference are the other exclusions;
# refit deploys neither (its own image, no accelerator).
EXCLUDED_INSTANCE_PREFIXES = ("ml.inf1.",)


def alarm_names(endpoint_name: str) -> list[str]:
    """The alarms SageMaker watches during a guarded update of `endpoint_name` (the stack creates them; the Deploy
    function names them in AutoRollbackConfiguration and reads them for the outcome's reason)."""
    return [names.alarm_name(endpoint_name, purpose) for purpose in ALARM_PURPOSES]


def step_instances(settings: GuardrailsSettings, count: int) -> int:
    """Instances the new fleet turns on per traffic step (the canary, or each linear step) in a fleet of `count`: a
    CapacitySize in instances, or a percentage of the fleet rounded up (at least one instance)."""
    if settings.size is None:
        return count
    if settings.size_type == "INSTANCE_COUNT":
        return settings.size
    return max(1, -(-count * settings.size // 100))


def refusals(model: ModelConfig) -> list[str]:
    """Why deployment guardrails cannot serve this model's endpoint as configured (empty: they can). Checked at synth,
    so `cdk synth` stops with the reason instead of SageMaker refusing, or silently not guarding, the first update.
    The endpoint refit builds in this mode has one variant of `deploy.capacity.instance_count` instances and is not
    serverless (the guide's exclusions for rolling updates), so the checks left are the excluded instance families
    and the fleet size the traffic steps need (TrafficRoutingConfig: CanarySize at most 50% of the variant's
    instances, LinearStepSize 10-50% of them; a fleet of one instance can therefore only be updated ALL_AT_ONCE),
    and, for LINEAR steps in instances, the maximum execution timeout against the bakes that fleet takes."""
    settings = model.deploy.guardrails
    reasons = []
    if model.serving_instance_type.startswith(EXCLUDED_INSTANCE_PREFIXES):
        reasons.append(
            f"serving_instance_type {model.serving_instance_type} (Inferentia Inf1) is excluded from deployment "
            "guardrails: SageMaker would update it all at once with no bake and no alarm rollback"
        )
    count = model.deploy.capacity.instance_count
    kind = settings.traffic_routing
    if kind == "ALL_AT_ONCE":
        return reasons
    instances = step_instances(settings, count)
    low = 0.1 if kind == "LINEAR" else 0.0
    if not low * count <= instances <= 0.5 * count:
        what = "the canary" if kind == "CANARY" else "each linear step"
        bounds = "at most 50%" if kind == "CANARY" else "10-50%"
        reasons.append(
            f"deploy.guardrails {kind} with size {settings.size} ({settings.size_type}) puts {instances} of the "
            f"endpoint's {count} instance(s) (deploy.capacity.instance_count) on {what}; SageMaker requires {bounds} "
            f"of the fleet: change size or instance_count (a fleet of one instance can only be updated ALL_AT_ONCE, "
            "whose one bake still rolls back on the alarms)"
        )
    elif kind == "LINEAR" and settings.size_type == "INSTANCE_COUNT":
        bakes = bake_count(settings, count)
        waits = bakes * settings.wait_interval_seconds + settings.termination_wait_seconds
        if settings.max_execution_timeout_seconds <= waits:
            reasons.append(
                f"deploy.guardrails LINEAR steps of {instances} instance(s) on {count} take {bakes} bakes: "
                f"max_execution_timeout_seconds = {settings.max_execution_timeout_seconds} must be larger than "
                f"their waits ({waits} s)"
            )
    return reasons


def deployment_config(settings: GuardrailsSettings, alarms: list[str]) -> dict[str, Any]:
    """UpdateEndpoint's DeploymentConfig: a blue/green update with the configured traffic routing, rolled back
    automatically when any of `alarms` goes to ALARM."""
    routing: dict[str, Any] = {
        "Type": settings.traffic_routing,
        "WaitIntervalInSeconds": settings.wait_interval_seconds,
    }
    if settings.traffic_routing != "ALL_AT_ONCE":
        key = "CanarySize" if settings.traffic_routing == "CANARY" else "LinearStepSize"
        routing[key] = {"Type": settings.size_type, "Value": settings.size}
    return {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": settings.termination_wait_seconds,
            "MaximumExecutionTimeoutInSeconds": settings.max_execution_timeout_seconds,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": name} for name in alarms]},
    }


Outcome = Literal["wait", "promoted", "rolled_back", "failed"]


def judge(status: str, config: str, expected: str, previous: str) -> tuple[Outcome, str]:
    """What a DescribeEndpoint during a guarded update says: still under way, the new config serving (promoted), the
    old one serving again (SageMaker rolled back, silently or not), or a failure that needs a person."""
    if status in IN_PROGRESS:
        return "wait", f"the update is under way ({status})"
    if status in FAILED:
        return "failed", f"endpoint is {status} on {config}"
    if status != "InService":
        return "failed", f"endpoint is in an unexpected state {status} on {config}"
    if config == expected:
        return "promoted", f"the guarded update finished: InService on {expected}"
    if config == previous:
        return "rolled_back", f"SageMaker rolled the update back: InService on the previous config {previous}"
    return "failed", f"endpoint is InService on {config}, neither the requested {expected} nor the previous {previous}"


def alarm_reason(alarms: list[dict[str, Any]]) -> str | None:
    """The reason from the rollback alarms that are in ALARM (DescribeAlarms' MetricAlarms), or None."""
    firing = [f"{a['AlarmName']}: {a.get('StateReason', 'in ALARM')}" for a in alarms if a.get("StateValue") == "ALARM"]
    return "; ".join(firing) if firing else None


def bake_count(settings: GuardrailsSettings, count: int) -> int:
    """The traffic steps (each followed by a bake) of a guarded update of a fleet of `count` instances."""
    if settings.traffic_routing == "ALL_AT_ONCE":
        return 1
    if settings.traffic_routing == "CANARY":
        return 2
    return -(-count // step_instances(settings, count))


# The judged window is read this long after it ends (a request read too early is missing from the counts, never added).
SETTLE_SECONDS = GUARDRAILS_SETTLE_SECONDS
ADJACENT_NOTE = (
    "adjacent windows, not the same one: the new fleet's after the update, the champion's before it (a change in the "
    "traffic between them is read as the model's)"
)


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def judged_window(ended_by: datetime, judge_seconds: int) -> tuple[datetime, datetime]:
    """The window refit judges a finished guarded update on: from the first whole minute after `ended_by` (a time the
    update was known to have ended on the new config: after the DescribeEndpoint that saw it InService there), for
    `judge_seconds` (a whole number of minutes, GuardrailsSettings). Only the new fleet served it: both fleets report
    under the one variant name, and CloudWatch keeps SageMaker's endpoint metrics per minute (a datapoint covers the
    minute its timestamp starts), so a window starting on a whole minute after the end holds none of the old fleet's
    requests, where one starting at the end itself would take in its minute from the start. Data Capture dates each
    record to the millisecond (`inferenceTime`); the same bounds are used for it, so both sources judge the same
    requests."""
    start = _minute(ended_by) + timedelta(minutes=1)
    return start, start + timedelta(seconds=judge_seconds)


def champion_window(requested_at: datetime, lookback_seconds: int) -> tuple[datetime, datetime]:
    """The champion's window: the whole minutes of the `lookback_seconds` before the minute of the UpdateEndpoint
    (`requested_at`). That minute itself is left out: the new fleet may take traffic in it, and its CloudWatch
    datapoint would mix the fleets."""
    end = _minute(requested_at)
    return _minute(end - timedelta(seconds=lookback_seconds)), end


def bake_verdict(
    settings: GuardrailsSettings,
    bake: VariantWindow,
    champion: VariantWindow,
    divergence: dict[str, Any] | None = None,
    tail: LatencyTail | None = None,
) -> dict[str, Any]:
    """refit's judgement of a guarded update SageMaker finished on the new config (its alarms did not fire), on a
    window only the new fleet served (`bake`, judged_window) against the champion's before the update (`champion`,
    champion_window). A quiet window is not a pass (SageMaker treats missing data as not breaching, so a bake without
    traffic completes): fewer than `min_invocations`, fewer than `min_latency_samples` ModelLatency samples on either
    window (a p99 that cannot be judged), or a divergence test `not_judged` for too few captured outputs. The p99 is
    judged by the canary's p99 rule (refit_core.canary.p99_regression: over `max_p99_latency_ratio` and significantly
    more requests over that margin than the champion had, from `tail`, at `alpha`), before divergence, as it is a
    measurement where divergence is a test. `divergence` (refit_core.divergence on both windows' captured outputs)
    fails the update when it judged the new fleet's outputs beyond what the holdout predicts given the champion's;
    skipped (capture off, no holdout reference) it decides nothing and the reason names it. 5XX and mean latency are
    the rollback alarms' (SageMaker's) to judge during the bakes; in the judged window after them, a 5XX or 4XX rate
    significantly higher than the champion's before the update fails it. The two windows are adjacent, not the same
    (ADJACENT_NOTE): the record says so."""
    raw_ratio = (
        bake.p99_latency_ms / champion.p99_latency_ms
        if bake.p99_latency_ms is not None and champion.p99_latency_ms
        else None
    )
    p99_judged = min(bake.samples, champion.samples) >= settings.min_latency_samples and raw_ratio is not None
    regressed, tail_evidence, tail_words = p99_regression(
        settings.max_p99_latency_ratio, settings.alpha, raw_ratio, tail
    )
    evidence = {
        "bake": bake.evidence(),
        "champion": champion.evidence(),
        "p99_latency_ratio": round(raw_ratio, 4) if raw_ratio is not None else None,
        "p99_judged": p99_judged,
        "p99_tail": tail_evidence,
        "divergence": divergence,
        "windows": ADJACENT_NOTE,
    }

    def verdict(healthy: bool, reason: str) -> dict[str, Any]:
        if healthy and divergence is not None and divergence.get("status") != "judged":
            reason = f"{reason}; predictions {divergence['reason']}"
        return {"healthy": healthy, "reason": reason, **evidence}

    if bake.invocations < settings.min_invocations:
        return verdict(
            False,
            f"quiet window: the endpoint saw {bake.invocations:.0f} invocations in the judged window after the "
            f"update, fewer than the {settings.min_invocations} required to judge the new model",
        )
    # SageMaker's 5XX alarm watched the bakes; once it has finished nothing does, so the judged window's error rates
    # are held against the champion's before the update (one-sided Fisher exact, as a canary step's).
    for kind, events, before in (
        ("5XX", bake.errors_5xx, champion.errors_5xx),
        ("4XX", bake.errors_4xx, champion.errors_4xx),
    ):
        p_value = higher_rate_p_value(events, bake.invocations, before, champion.invocations)
        if p_value < settings.alpha:
            return verdict(
                False,
                f"{kind} rate after the update ({events:.0f} of {bake.invocations:.0f}) is higher than the "
                f"champion's before it ({before:.0f} of {champion.invocations:.0f}; one-sided Fisher exact "
                f"p = {p_value:.4g} < {settings.alpha})",
            )
    if not p99_judged:
        return verdict(
            False,
            f"quiet window: the p99 cannot be judged from {bake.samples:.0f} ModelLatency samples after the update "
            f"against the champion's {champion.samples:.0f} before it, fewer than the {settings.min_latency_samples} "
            "required on each",
        )
    if regressed:
        return verdict(
            False,
            f"p99 model latency after the update {bake.p99_latency_ms} ms is {raw_ratio:.2f} x the "
            f"champion's {champion.p99_latency_ms} ms before it, over {settings.max_p99_latency_ratio}, with "
            f"{tail_words}",
        )
    if divergence is not None and divergence.get("diverged"):
        return verdict(False, f"prediction divergence ({ADJACENT_NOTE}): {divergence['reason']}")
    if divergence is not None and divergence.get("status") == "not_judged":
        return verdict(False, f"quiet window: predictions {divergence['reason']}")
    margin = f", over {settings.max_p99_latency_ratio} but {tail_words}" if tail_words else ""
    return verdict(
        True,
        f"the new fleet served {bake.invocations:.0f} requests (p99 ratio {raw_ratio:.2f} against the "
        f"champion{margin})",
    )
