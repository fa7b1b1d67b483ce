"""Every change refit makes to the serving endpoint: create, canary, status, step verdict, shift, promote, roll back,
restore, the guarded update of deploy.mode guardrails (start_guardrails, guardrails_status, judge_guardrails), and the
synthetic traffic that tops up a quiet step (synthetic_traffic, deploy.synthetic_traffic)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, Field
from refit_core import capacity, idempotent, names
from refit_core.artifacts import MODEL_SHA256_ENV
from refit_core.canary import (
    CHALLENGER,
    CHAMPION,
    LatencyTail,
    VariantWindow,
    canary_variants,
    data_capture,
    step_verdict,
    tail_threshold_ms,
    variant,
)
from refit_core.champion import (
    PACKAGE_ENV,
    RedeployRefused,
    check_redeploy,
    container,
    describe_endpoint,
    describe_version,
    find_champion,
    view_of,
)
from refit_core.divergence import live_outputs, prediction_divergence
from refit_core.guardrails import (
    SETTLE_SECONDS,
    alarm_names,
    alarm_reason,
    bake_verdict,
    champion_window,
    deployment_config,
    judge,
    judged_window,
)
from refit_core.network import isolated
from refit_core.s3uri import S3Uri
from refit_core.shadow import SHADOW, shadow_divergence, shadow_variants, shadow_verdict, window_scores
from refit_core.steps import (
    AlarmView,
    CanaryShift,
    CanaryStepVerdict,
    CanaryVerdict,
    DeployStarted,
    EndpointCheck,
    GuardrailsCheck,
    Promotion,
    RedeployStarted,
    Scaling,
    ShadowVerdict,
    Step,
    SyntheticTraffic,
    Variant,
)
from refit_core.steps import Rollback as RollbackStep
from refit_core.synthetic import (
    SyntheticTrafficError,
    describe,
    holdout_rows,
    holdout_rows_key,
    needs_top_up,
    send,
    shadow_top_up,
    top_up,
)

from refit_handlers.common import Settings, client, parse, settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()

FAILED_STATUSES = {"Failed", "UpdateRollbackFailed", "OutOfService"}


class EndpointFailed(RuntimeError):
    """The endpoint is in a state refit cannot change (Failed: SageMaker allows only DeleteEndpoint)."""


class StartDeploy(BaseModel):
    action: Literal["start"]
    run_id: str
    model_data_url: str
    model_package_arn: str
    challenger_share: float | None = Field(None, gt=0, lt=1)  # deploy.mode "ab": the fixed split, not canary.steps


class StartGuarded(BaseModel):
    action: Literal["start_guardrails"]
    run_id: str
    model_data_url: str
    model_package_arn: str


class GuardedStatus(BaseModel):
    action: Literal["guardrails_status"]
    expected_config: str
    previous_config: str


class JudgeGuarded(BaseModel):
    """refit's judgement of a guarded update SageMaker finished: the window guardrails_status planned (only the new
    fleet served it) against the champion's before the UpdateEndpoint made at `requested_at`."""

    action: Literal["judge_guardrails"]
    expected_config: str
    previous_config: str
    requested_at: str  # when start_guardrails called UpdateEndpoint: the champion's window ends before its minute
    judge_from: str
    judge_until: str
    gate_uri: str | None = None  # gate.json: the holdout reference of the prediction-divergence check


class EndpointStatus(BaseModel):
    action: Literal["status"]
    expected_config: str
    challenger_weight: float | None = None  # during a canary: the share the challenger must have taken


class CheckCanary(BaseModel):
    action: Literal["check_canary"]
    canary_started_at: str
    endpoint_weights: list[Variant] = []  # the weights the status check saw when the step began
    history: list[CanaryStepVerdict] = []  # the steps judged before this one
    gate_uri: str | None = None  # gate.json: the holdout reference of the prediction-divergence check
    synthetic: SyntheticTraffic | None = None  # the last top-up of a quiet step (deploy.synthetic_traffic)


class StartShadow(BaseModel):
    action: Literal["start_shadow"]
    run_id: str
    model_data_url: str
    model_package_arn: str


class CheckShadow(BaseModel):
    action: Literal["check_shadow"]
    shadow_started_at: str
    gate_uri: str | None = None  # gate.json: the holdout reference of the prediction-divergence check
    synthetic: SyntheticTraffic | None = None  # the top-up of a quiet bake (deploy.synthetic_traffic)


class SendSynthetic(BaseModel):
    """Top up a quiet step (refit_core.synthetic): `requests` per variant, as the step's check planned them."""

    action: Literal["synthetic_traffic"]
    run_id: str
    step: int = Field(ge=0)
    requests: dict[str, Annotated[int, Field(ge=0)]]


class ShiftCanary(BaseModel):
    action: Literal["shift"]
    step: int = Field(ge=1)


class Promote(BaseModel):
    action: Literal["promote"]
    run_id: str
    challenger_model: str


class Rollback(BaseModel):
    action: Literal["rollback", "restore"]
    previous_config: str | None = None


class ScaleEndpoint(BaseModel):
    action: Literal["scale"]


class Redeploy(BaseModel):
    action: Literal["redeploy"]
    run_id: str
    version: int
    kind: Literal["rollback", "promote"]
    force: bool = False


class DeployEvent(BaseModel):
    request: Annotated[
        StartDeploy
        | EndpointStatus
        | CheckCanary
        | ShiftCanary
        | Promote
        | Rollback
        | Redeploy
        | ScaleEndpoint
        | StartShadow
        | CheckShadow
        | StartGuarded
        | GuardedStatus
        | JudgeGuarded
        | SendSynthetic,
        Field(discriminator="action"),
    ]


def capture(config: Settings) -> dict[str, Any]:
    """Every endpoint config refit creates captures traffic for the monitor (refit_core.monitor)."""
    model = config.model
    return data_capture(
        f"s3://{config.data_bucket}/{model.capture_prefix}", model.monitor.capture_percent, config.kms_key_arn
    )


def model_environment(package: dict[str, Any]) -> dict[str, str]:
    """The serving container's environment from its registry entry (DescribeModelPackage): the entry's ARN, and the
    digest of its model file recorded there, which `serve` checks before unpickling (refit_core.artifacts); an entry
    that records none gets none, and `serve` refuses to load its file, naming the entry."""
    digest = package.get("CustomerMetadataProperties", {}).get("model_sha256")
    return {PACKAGE_ENV: package["ModelPackageArn"], **({MODEL_SHA256_ENV: digest} if digest else {})}


def create_challenger_model(event: StartDeploy | StartGuarded | StartShadow, config: Settings, sagemaker: Any) -> str:
    """The SageMaker model of the run's challenger, with its registry entry in its environment; returns its name."""
    model_name = names.model_name(config.endpoint_name, event.run_id)
    sagemaker.create_model(
        ModelName=model_name,
        ExecutionRoleArn=config.sagemaker_role_arn,
        **isolated(config.vpc_config),
        PrimaryContainer={
            "Image": config.image_uri,
            "ModelDataUrl": event.model_data_url,
            "Environment": model_environment(
                sagemaker.describe_model_package(ModelPackageName=event.model_package_arn)
            ),
        },
        Tags=[{"Key": "refit:model", "Value": config.model.name}, {"Key": "refit:run", "Value": event.run_id}],
    )
    return model_name


def single_variant_config(config: Settings, sagemaker: Any, run_id: str, stage: str, model_name: str) -> str:
    """A new endpoint config (named for the run and `stage`) with `model_name` as the one champion variant on the
    configured fleet, capturing traffic: a first endpoint's, and a guarded update's (a blue/green update keeps the
    variant name and sizes its traffic steps against this fleet). Returns its name."""
    config_name = names.endpoint_config_name(config.endpoint_name, run_id, stage)
    sagemaker.create_endpoint_config(
        EndpointConfigName=config_name,
        ProductionVariants=[
            variant(
                model_name,
                CHAMPION,
                1.0,
                config.model.serving_instance_type,
                config.model.deploy.capacity.instance_count,
            )
        ],
        DataCaptureConfig=capture(config),
        KmsKeyId=config.kms_key_arn,  # the instances' storage volumes
    )
    return config_name


def create_endpoint(config: Settings, sagemaker: Any, run_id: str, model_name: str) -> dict[str, Any]:
    """The first model of a model: a new endpoint with it as the single champion variant."""
    config_name = single_variant_config(config, sagemaker, run_id, "first", model_name)
    sagemaker.create_endpoint(EndpointName=config.endpoint_name, EndpointConfigName=config_name)
    return {"mode": "create", "previous_config": None, "expected_config": config_name, "challenger_model": model_name}


def champion_model_of(sagemaker: Any, config_name: str) -> str:
    """The model of the endpoint config's champion variant."""
    return next(
        v["ModelName"]
        for v in sagemaker.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]
        if v["VariantName"] == CHAMPION
    )


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def start(event: StartDeploy, config: Settings, sagemaker: Any, autoscaling: Any) -> dict[str, Any]:
    model = config.model
    fleet = model.deploy.capacity
    model_name = create_challenger_model(event, config, sagemaker)
    current = describe_endpoint(sagemaker, config.endpoint_name)
    if current is None:
        return create_endpoint(config, sagemaker, event.run_id, model_name)
    previous = current["EndpointConfigName"]
    champion_model = champion_model_of(sagemaker, previous)
    config_name = names.endpoint_config_name(config.endpoint_name, event.run_id, "canary")
    plan = [event.challenger_share] if event.challenger_share is not None else model.canary.plan
    sagemaker.create_endpoint_config(
        EndpointConfigName=config_name,
        ProductionVariants=canary_variants(
            champion_model,
            model_name,
            plan[0],
            model.serving_instance_type,
            champion_count=capacity.initial_count(fleet, capacity.current_counts(current).get(CHAMPION)),
            challenger_count=fleet.instance_count,
        ),
        DataCaptureConfig=capture(config),
        KmsKeyId=config.kms_key_arn,  # the instances' storage volumes
    )
    deregistered = capacity.deregister(autoscaling, config.endpoint_name, current)
    since = now()
    sagemaker.update_endpoint(EndpointName=config.endpoint_name, EndpointConfigName=config_name)
    return {
        "mode": "canary",
        "previous_config": previous,
        "expected_config": config_name,
        "challenger_model": model_name,
        "canary_weight": plan[0],
        "canary_steps": plan,
        "deregistered": deregistered,
        "challenger_instances": fleet.instance_count,
        "instance_type": model.serving_instance_type,
        "price_usd_per_hour": config.serving_prices.get(model.serving_instance_type),
        "challenger_since": since,
    }


def start_shadow(event: StartShadow, config: Settings, sagemaker: Any) -> dict[str, Any]:
    """`deploy.mode = "shadow"`: the champion alone in ProductionVariants, the challenger as the shadow variant at
    `deploy.shadow.sampling_percent` of the champion's weight (refit_core.shadow). A first model creates the endpoint."""
    model = config.model
    model_name = create_challenger_model(event, config, sagemaker)
    current = describe_endpoint(sagemaker, config.endpoint_name)
    if current is None:
        return create_endpoint(config, sagemaker, event.run_id, model_name)
    previous = current["EndpointConfigName"]
    fleet = model.deploy.capacity
    production, shadow = shadow_variants(
        champion_model_of(sagemaker, previous),
        model_name,
        model.deploy.shadow.sampling_percent,
        model.serving_instance_type,
        champion_count=capacity.initial_count(fleet, capacity.current_counts(current).get(CHAMPION)),
        shadow_count=fleet.instance_count,
    )
    config_name = names.endpoint_config_name(config.endpoint_name, event.run_id, "shadow")
    sagemaker.create_endpoint_config(
        EndpointConfigName=config_name,
        ProductionVariants=production,
        ShadowProductionVariants=shadow,
        DataCaptureConfig=capture(config),
        KmsKeyId=config.kms_key_arn,  # the instances' storage volumes
    )
    since = now()
    sagemaker.update_endpoint(EndpointName=config.endpoint_name, EndpointConfigName=config_name)
    return {
        "mode": "shadow",
        "previous_config": previous,
        "expected_config": config_name,
        "challenger_model": model_name,
        "challenger_instances": fleet.instance_count,
        "instance_type": model.serving_instance_type,
        "price_usd_per_hour": config.serving_prices.get(model.serving_instance_type),
        "challenger_since": since,
    }


def start_guardrails(event: StartGuarded, config: Settings, sagemaker: Any) -> dict[str, Any]:
    """deploy.mode guardrails: the challenger as the single `champion` variant of a new endpoint config (a blue/green
    update keeps the variant name), put on the endpoint by UpdateEndpoint with DeploymentConfig, whose rollback alarms
    the stack created for this endpoint (refit_core.guardrails). UpdateEndpoint is the last call: an error before it
    leaves the endpoint untouched."""
    model_name = create_challenger_model(event, config, sagemaker)
    current = describe_endpoint(sagemaker, config.endpoint_name)
    if current is None:
        return create_endpoint(config, sagemaker, event.run_id, model_name)
    previous = current["EndpointConfigName"]
    serving = [
        v["VariantName"] for v in sagemaker.describe_endpoint_config(EndpointConfigName=previous)["ProductionVariants"]
    ]
    if serving != [CHAMPION]:
        raise ValueError(
            f"deploy.mode guardrails updates a single-variant endpoint: {config.endpoint_name} serves {previous} with "
            f"variants {serving}, not just {CHAMPION!r} (a blue/green update must keep the one variant's name)"
        )
    config_name = single_variant_config(config, sagemaker, event.run_id, "guarded", model_name)
    deployment = deployment_config(config.model.deploy.guardrails, alarm_names(config.endpoint_name))
    since = now()
    sagemaker.update_endpoint(
        EndpointName=config.endpoint_name, EndpointConfigName=config_name, DeploymentConfig=deployment
    )
    return {
        "mode": "guardrails",
        "previous_config": previous,
        "expected_config": config_name,
        "challenger_model": model_name,
        "deployment_config": deployment,
        "challenger_since": since,
    }


def guardrails_status(event: GuardedStatus, config: Settings, sagemaker: Any, cloudwatch: Any) -> dict[str, Any]:
    """Where the guarded update stands. Its end is read from the config the endpoint is InService on: SageMaker's
    rollback also ends InService, on the previous config and often without a FailureReason, so the reason is taken
    from the rollback alarms in ALARM when there is one. An update that ended on the new config is not promoted yet:
    `judge` plans the window refit judges it on (refit_core.guardrails.judged_window: from the first whole minute after
    this check, `deploy.guardrails.judge_seconds` long, read SETTLE_SECONDS after it ends, at `judge_at`)."""
    endpoint = describe_endpoint(sagemaker, config.endpoint_name)
    seen_at = datetime.now(UTC)  # after DescribeEndpoint answered: the update had ended by then
    if endpoint is None:
        view: dict[str, Any] = {"name": config.endpoint_name, "status": None, "config": None, "variants": []}
        outcome, reason = "failed", f"endpoint {config.endpoint_name} does not exist"
    else:
        view = view_of(endpoint, config.endpoint_name)
        outcome, reason = judge(view["status"], view["config"], event.expected_config, event.previous_config)
    alarms: list[dict[str, Any]] = []
    plan: dict[str, str] = {}
    if outcome != "wait":
        described = cloudwatch.describe_alarms(AlarmNames=alarm_names(config.endpoint_name))["MetricAlarms"]
        alarms = [
            AlarmView(name=a["AlarmName"], state=a.get("StateValue"), reason=a.get("StateReason")).to_state()
            for a in described
        ]
        why = alarm_reason(described) or view.get("failure_reason")
        if outcome == "promoted":  # SageMaker's alarms did not fire: refit's own judgement of the new fleet is next
            start_time, end_time = judged_window(seen_at, config.model.deploy.guardrails.judge_seconds)
            outcome = "judge"
            reason += f"; refit judges the new fleet alone from {start_time:%H:%M} to {end_time:%H:%M} UTC"
            plan = {
                "judge_from": start_time.isoformat(timespec="seconds"),
                "judge_until": end_time.isoformat(timespec="seconds"),
                "judge_at": (end_time + timedelta(seconds=SETTLE_SECONDS)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        if outcome == "rolled_back":
            reason += f": {why or 'no rollback alarm is in ALARM now and SageMaker gave no FailureReason'}"
        elif outcome == "failed" and why:
            reason += f": {why}"
    return {
        "next": outcome,
        "reason": reason,
        **view,
        "expected_config": event.expected_config,
        "previous_config": event.previous_config,
        "alarms": alarms,
        **plan,
        "checked_at": seen_at.isoformat(timespec="seconds"),
    }


def judge_guardrails(event: JudgeGuarded, config: Settings, sagemaker: Any, cloudwatch: Any, s3: Any) -> dict[str, Any]:
    """refit's verdict on a guarded update SageMaker finished on the new config (refit_core.guardrails.bake_verdict):
    the planned window only the new fleet served against the champion's before the UpdateEndpoint (champion_window),
    on CloudWatch's numbers and on both windows' captured outputs (the canary's divergence test). `promoted`, or
    `rollback` (the run returns the endpoint to the previous config); `failed` when the endpoint no longer serves the
    new config as it did when the window was planned (nothing to judge: its state is recorded)."""
    settings = config.model.deploy.guardrails
    endpoint = describe_endpoint(sagemaker, config.endpoint_name)
    view = (
        view_of(endpoint, config.endpoint_name)
        if endpoint is not None
        else {"name": config.endpoint_name, "status": None, "config": None, "variants": []}
    )
    described = cloudwatch.describe_alarms(AlarmNames=alarm_names(config.endpoint_name))["MetricAlarms"]
    result = {
        **view,
        "expected_config": event.expected_config,
        "previous_config": event.previous_config,
        "alarms": [
            AlarmView(name=a["AlarmName"], state=a.get("StateValue"), reason=a.get("StateReason")).to_state()
            for a in described
        ],
        "judge_from": event.judge_from,
        "judge_until": event.judge_until,
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if (view["status"], view["config"]) != ("InService", event.expected_config):
        return {
            **result,
            "next": "failed",
            "reason": f"the endpoint changed while refit judged the guarded update: {view['status']} on "
            f"{view['config']}, not InService on {event.expected_config}",
        }
    start_time, end_time = datetime.fromisoformat(event.judge_from), datetime.fromisoformat(event.judge_until)
    champion_start, champion_end = champion_window(
        datetime.fromisoformat(event.requested_at), settings.champion_lookback_seconds
    )
    bake = variant_window(cloudwatch, config.endpoint_name, CHAMPION, start_time, end_time)
    champion = variant_window(cloudwatch, config.endpoint_name, CHAMPION, champion_start, champion_end)
    tail = latency_tail(
        cloudwatch,
        config.endpoint_name,
        settings.max_p99_latency_ratio,
        (CHAMPION, start_time, end_time, bake),
        (CHAMPION, champion_start, champion_end, champion),
    )
    divergence = guarded_divergence(
        event.gate_uri, config, sagemaker, s3, (champion_start, champion_end), (start_time, end_time)
    )
    verdict = {
        **bake_verdict(settings, bake, champion, divergence, tail),
        "window_start": event.judge_from,
        "window_end": event.judge_until,
        "champion_window_start": champion_start.isoformat(timespec="seconds"),
        "champion_window_end": champion_end.isoformat(timespec="seconds"),
    }
    done = f"the guarded update finished: InService on {event.expected_config}"
    if verdict["healthy"]:
        return {**result, "next": "promoted", "reason": f"{done}; {verdict['reason']}", "bake": verdict}
    return {
        **result,
        "next": "rollback",
        "reason": f"{done}, but refit rolls it back: {verdict['reason']}",
        "bake": verdict,
    }


def status(event: EndpointStatus, config: Settings, sagemaker: Any) -> dict[str, Any]:
    """`ready` only when InService on the config we asked for: after an automatic rollback SageMaker also
    reports InService, on the old config and often without a FailureReason."""
    endpoint = describe_endpoint(sagemaker, config.endpoint_name)
    if endpoint is None:
        return {"next": "failed", "reason": f"endpoint {config.endpoint_name} does not exist"}
    view = view_of(endpoint, config.endpoint_name)
    if view["status"] in FAILED_STATUSES:
        return {
            "next": "failed",
            "reason": f"endpoint is {view['status']}: {view.get('failure_reason')}",
            **view,
        }
    if view["status"] != "InService":
        return {"next": "wait", **view}
    if view["config"] != event.expected_config:
        return {
            "next": "failed",
            "reason": f"endpoint is InService on {view['config']}, not the requested {event.expected_config} "
            "(SageMaker rolled the update back)",
            **view,
        }
    if event.challenger_weight is not None:
        shares = weight_shares(endpoint.get("ProductionVariants", []))
        if CHALLENGER not in shares:
            return {"next": "failed", "reason": f"endpoint has no {CHALLENGER} variant during the canary", **view}
        current, desired = shares[CHALLENGER]
        if abs(desired - event.challenger_weight) > WEIGHT_TOLERANCE:
            return {
                "next": "failed",
                "reason": f"the {CHALLENGER} variant's desired share is {desired:.4f}, not the requested "
                f"{event.challenger_weight:.4f}",
                **view,
            }
        if abs(current - event.challenger_weight) > WEIGHT_TOLERANCE:
            return {"next": "wait", **view}  # the shift has not taken effect yet
    view["canary_started_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return {"next": "ready", **view}


WEIGHT_TOLERANCE = 1e-4


def weight_shares(variants: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Each variant's (current, desired) share of the traffic from DescribeEndpoint's ProductionVariants: SageMaker
    routes by weight over the sum of weights; DesiredWeight differs from CurrentWeight while a shift is under way (a
    variant without DesiredWeight has reached its weight; moto omits CurrentWeight for a weight of 0)."""
    current = {v["VariantName"]: float(v.get("CurrentWeight", 0.0)) for v in variants}
    desired = {v["VariantName"]: float(v.get("DesiredWeight", current[v["VariantName"]])) for v in variants}
    current_total, desired_total = sum(current.values()) or 1.0, sum(desired.values()) or 1.0
    return {name: (current[name] / current_total, desired[name] / desired_total) for name in current}


def window_period(start_time: datetime, end_time: datetime) -> tuple[datetime, int]:
    """The start as CloudWatch reads it (rounded down to the minute) and one period, a multiple of 60 s, covering the
    whole window."""
    start_time = start_time.replace(second=0, microsecond=0)
    return start_time, max(60, -(-int((end_time - start_time).total_seconds()) // 60) * 60)


def variant_dimensions(endpoint_name: str, variant_name: str) -> list[dict[str, str]]:
    return [{"Name": "EndpointName", "Value": endpoint_name}, {"Name": "VariantName", "Value": variant_name}]


def slow_requests(
    cloudwatch: Any,
    endpoint_name: str,
    variant_name: str,
    start_time: datetime,
    end_time: datetime,
    threshold_ms: float,
) -> tuple[float, float] | None:
    """(requests slower than `threshold_ms`, latency samples) of one variant over [start, end), from GetMetricData's
    percentile rank `PR(:X)` (the percentage of data points with a value of X or less, X in the metric's own unit:
    SageMaker reports ModelLatency in microseconds) and `SampleCount`, per period of window_period. GetMetricData's
    Stat takes any statistic or extended statistic; GetMetricStatistics' ExtendedStatistics only percentiles (p0.0 to
    p100). None when CloudWatch gives no percentile rank (no samples, or a statistic set that hides them)."""
    start_time, period = window_period(start_time, end_time)
    metric = {
        "Namespace": "AWS/SageMaker",
        "MetricName": "ModelLatency",
        "Dimensions": variant_dimensions(endpoint_name, variant_name),
    }
    threshold_us = f"{threshold_ms * 1000:.3f}".rstrip("0").rstrip(".")
    results = {
        r["Id"]: dict(zip(r["Timestamps"], r["Values"], strict=True))
        for r in cloudwatch.get_metric_data(
            MetricDataQueries=[
                {"Id": "rank", "MetricStat": {"Metric": metric, "Period": period, "Stat": f"PR(:{threshold_us})"}},
                {"Id": "samples", "MetricStat": {"Metric": metric, "Period": period, "Stat": "SampleCount"}},
            ],
            StartTime=start_time,
            EndTime=end_time,
        )["MetricDataResults"]
    }
    ranks, counts = results.get("rank", {}), results.get("samples", {})
    judged = [(counts[at], rank) for at, rank in ranks.items() if at in counts]
    if not judged:
        return None
    return float(sum(round(count * (100 - rank) / 100) for count, rank in judged)), float(sum(c for c, _ in judged))


def latency_tail(
    cloudwatch: Any,
    endpoint_name: str,
    max_ratio: float,
    challenger: tuple[str, datetime, datetime, VariantWindow],
    champion: tuple[str, datetime, datetime, VariantWindow],
) -> LatencyTail | None:
    """What refit_core.canary.p99_regression tests when the challenger's p99 is over `max_ratio` times the champion's:
    each variant's requests slower than that margin (slow_requests), `challenger` and `champion` each (variant name,
    start, end, its numbers there). None when the p99 is within the margin (nothing to test) or a share is missing."""
    (c_name, c_start, c_end, c_window), (h_name, h_start, h_end, h_window) = challenger, champion
    threshold = tail_threshold_ms(max_ratio, h_window)
    if threshold is None or not h_window.p99_latency_ms or c_window.p99_latency_ms is None:
        return None
    if c_window.p99_latency_ms / h_window.p99_latency_ms <= max_ratio:
        return None
    over = slow_requests(cloudwatch, endpoint_name, c_name, c_start, c_end, threshold)
    before = slow_requests(cloudwatch, endpoint_name, h_name, h_start, h_end, threshold)
    if over is None or before is None:
        return None
    return LatencyTail(threshold, *over, *before)


def variant_window(
    cloudwatch: Any, endpoint_name: str, variant_name: str, start_time: datetime, end_time: datetime
) -> VariantWindow:
    """One variant's numbers over [start, end) from CloudWatch, in one period covering the whole window (CloudWatch
    rounds a recent StartTime down to the minute), so the p99 is over every request of the window. Statistics and
    ExtendedStatistics cannot be asked for in the same call; SageMaker reports ModelLatency in microseconds."""
    start_time, period = window_period(start_time, end_time)
    dimensions = variant_dimensions(endpoint_name, variant_name)

    def datapoints(metric: str, **statistics: list[str]) -> list[dict[str, Any]]:
        return cloudwatch.get_metric_statistics(
            Namespace="AWS/SageMaker",
            MetricName=metric,
            Dimensions=dimensions,
            StartTime=start_time,
            EndTime=end_time,
            Period=period,
            **statistics,
        )["Datapoints"]

    def total(metric: str) -> float:
        return float(sum(p["Sum"] for p in datapoints(metric, Statistics=["Sum"])))

    latency = datapoints("ModelLatency", Statistics=["Sum", "SampleCount"])
    samples = sum(p["SampleCount"] for p in latency)
    p99s = [
        p["ExtendedStatistics"]["p99"]
        for p in datapoints("ModelLatency", ExtendedStatistics=["p99"])
        if "p99" in p.get("ExtendedStatistics", {})
    ]
    return VariantWindow(
        invocations=total("Invocations"),
        errors_4xx=total("Invocation4XXErrors"),
        errors_5xx=total("Invocation5XXErrors"),
        mean_latency_ms=round(sum(p["Sum"] for p in latency) / samples / 1000, 3) if samples else None,
        latency_samples=float(samples),
        # One period covers the window; were there several, the largest p99 is the cautious one.
        p99_latency_ms=round(max(p99s) / 1000, 3) if p99s else None,
    )


def holdout_reference(s3: Any, gate_uri: str | None) -> dict[str, Any] | None:
    """The gate's holdout reference for the prediction-divergence check (gate.json's `divergence_reference`)."""
    if not gate_uri:
        return None
    where = S3Uri.parse(gate_uri)
    return json.loads(s3.get_object(Bucket=where.bucket, Key=where.key)["Body"].read()).get("divergence_reference")


def capture_destination(sagemaker: Any, endpoint_name: str) -> str | None:
    """Where the endpoint captures now (DescribeEndpoint's DataCaptureConfig DestinationS3Uri), None when capture is
    off (not enabled, or not Started)."""
    endpoint = describe_endpoint(sagemaker, endpoint_name) or {}
    capture_config = endpoint.get("DataCaptureConfig") or {}
    if capture_config.get("EnableCapture") and capture_config.get("CaptureStatus") == "Started":
        return capture_config["DestinationS3Uri"]
    return None


def divergence_check(
    event: CheckCanary, config: Settings, sagemaker: Any, s3: Any, start_time: datetime, end_time: datetime
) -> dict[str, Any]:
    """The prediction-divergence check of a canary step, at level `alpha` / number of steps: Bonferroni over the
    plan's steps, so a challenger that answers as its holdout says is rolled back by this check with probability at
    most `alpha` over the whole canary, not `alpha` at every step."""
    model = config.model
    alpha = model.canary.alpha / len(model.canary.plan)
    return window_divergence(event.gate_uri, alpha, config, sagemaker, s3, start_time, end_time)


def window_divergence(
    gate_uri: str | None,
    alpha: float,
    config: Settings,
    sagemaker: Any,
    s3: Any,
    start_time: datetime,
    end_time: datetime,
) -> dict[str, Any]:
    """The prediction-divergence check (refit_core.divergence) on a window both variants served, at level `alpha`."""
    window = (start_time, end_time)
    return captured_divergence(
        gate_uri,
        alpha,
        config.model.canary.divergence_min_samples,
        config,
        sagemaker,
        s3,
        champion=(CHAMPION, *window),
        challenger=(CHALLENGER, *window),
    )


def guarded_divergence(
    gate_uri: str | None,
    config: Settings,
    sagemaker: Any,
    s3: Any,
    champion: tuple[datetime, datetime],
    challenger: tuple[datetime, datetime],
) -> dict[str, Any]:
    """The prediction-divergence check of a finished guarded update: the one variant's captured outputs in the
    champion's window before the update against those in the window only the new fleet served after it
    (deploy.guardrails.alpha and divergence_min_samples). The windows are adjacent, not the same: see
    refit_core.guardrails.ADJACENT_NOTE."""
    settings = config.model.deploy.guardrails
    return captured_divergence(
        gate_uri,
        settings.alpha,
        settings.divergence_min_samples,
        config,
        sagemaker,
        s3,
        champion=(CHAMPION, *champion),
        challenger=(CHAMPION, *challenger),
    )


def captured_divergence(
    gate_uri: str | None,
    alpha: float,
    min_samples: int,
    config: Settings,
    sagemaker: Any,
    s3: Any,
    *,
    champion: tuple[str, datetime, datetime],
    challenger: tuple[str, datetime, datetime],
) -> dict[str, Any]:
    """The prediction-divergence check (refit_core.divergence): the champion's and the challenger's captured outputs,
    each a (variant, start, end) of the endpoint's Data Capture, against the holdout reference the gate recorded in
    gate.json, at level `alpha`. A window both sides share is read once. Capture off on the endpoint (its
    DataCaptureConfig not Started): skipped, and the verdict says so."""
    model = config.model
    destination = capture_destination(sagemaker, config.endpoint_name)
    reference = holdout_reference(s3, gate_uri)
    sides = {"champion": champion, "challenger": challenger}
    outputs: dict[str, list[float]] = {"champion": [], "challenger": []}
    if destination and reference:
        for window in dict.fromkeys((start, end) for _, start, end in sides.values()):
            wanted = tuple(dict.fromkeys(variant for variant, *span in sides.values() if tuple(span) == window))
            found = live_outputs(s3, destination, config.endpoint_name, wanted, *window, model.problem_type)
            for role, (variant, *span) in sides.items():
                if tuple(span) == window:
                    outputs[role] = found[variant]
    return prediction_divergence(
        reference,
        outputs["champion"],
        outputs["challenger"],
        alpha=alpha,
        min_samples=min_samples,
        capture_enabled=destination is not None,
        seed=model.seed,
    )


def check_canary(event: CheckCanary, config: Settings, cloudwatch: Any, sagemaker: Any, s3: Any) -> dict[str, Any]:
    """Judge the step the endpoint is on (the one after those in `history`) against the champion on the same window,
    and say what comes next: the next step's shift, promotion after the last step, or rollback."""
    plan = config.model.canary.plan
    step = len(event.history)
    if step >= len(plan):
        raise ValueError(f"check_canary: {step} steps already judged, the plan has {len(plan)}")
    start_time = datetime.fromisoformat(event.canary_started_at)
    end_time = datetime.now(UTC) + timedelta(minutes=1)
    windows = {
        name: variant_window(cloudwatch, config.endpoint_name, name, start_time, end_time)
        for name in (CHALLENGER, CHAMPION)
    }
    alarms = cloudwatch.describe_alarms(AlarmNames=[config.canary_alarm])["MetricAlarms"]
    alarm_state = alarms[0]["StateValue"] if alarms else None
    divergence = divergence_check(event, config, sagemaker, s3, start_time, end_time)
    tail = latency_tail(
        cloudwatch,
        config.endpoint_name,
        config.model.canary.max_p99_latency_ratio,
        *((name, start_time, end_time, windows[name]) for name in (CHALLENGER, CHAMPION)),
    )
    verdict = step_verdict(
        config.model.canary, windows[CHALLENGER], windows[CHAMPION], alarm_state, divergence, tail=tail
    )
    synthetic = config.model.deploy.synthetic_traffic
    topped_up = event.synthetic if event.synthetic is not None and event.synthetic.step == step else None
    if needs_top_up(synthetic.enabled, verdict, topped_up is not None):
        requests = top_up(
            {name: windows[name].invocations for name in (CHALLENGER, CHAMPION)},
            config.model.requests_to_judge,
            synthetic.max_requests_per_variant,
        )
        return {
            "healthy": False,
            "reason": f"step {step + 1} of {len(plan)} ({plan[step]:.0%}): {verdict['reason']}; topping it up with "
            "synthetic traffic once",
            "next": "synthetic",
            "synthetic_step": step,
            "synthetic_requests": requests,
            "steps": [s.to_state() for s in event.history],
            "invocations": windows[CHALLENGER].invocations,
            "alarm_state": alarm_state,
        }
    if topped_up is not None:
        verdict = {**verdict, "reason": f"{verdict['reason']}; {describe(topped_up.model_dump())}"}
    judged = CanaryStepVerdict(
        synthetic=topped_up,
        step=step,
        weight=plan[step],
        endpoint_weights=event.endpoint_weights,
        window_start=start_time.replace(second=0, microsecond=0).isoformat(timespec="seconds"),
        window_end=end_time.isoformat(timespec="seconds"),
        **verdict,
    )
    last = step == len(plan) - 1
    challenger = windows[CHALLENGER]
    if not verdict["healthy"]:
        following: dict[str, Any] = {"next": "rollback"}
    elif last:
        following = {"next": "promote"}
    else:
        following = {"next": "shift", "next_step": step + 1, "next_weight": plan[step + 1]}
    return {
        "healthy": verdict["healthy"],
        "reason": f"step {step + 1} of {len(plan)} ({plan[step]:.0%}): {verdict['reason']}",
        **following,
        "steps": [*[s.to_state() for s in event.history], judged.to_state()],
        "invocations": challenger.invocations,
        "errors_5xx": challenger.errors_5xx,
        "error_rate": judged.challenger.rate_5xx if judged.challenger else None,
        "mean_model_latency_ms": challenger.mean_latency_ms,
        "alarm_state": alarm_state,
    }


def check_shadow(event: CheckShadow, config: Settings, cloudwatch: Any, sagemaker: Any, s3: Any) -> dict[str, Any]:
    """Judge the shadow against the champion on the window since the endpoint came InService on the shadow config:
    CloudWatch per variant and the canary alarm (as a canary step), then both variants' captured predictions by the
    canary's prediction-divergence test against the gate's holdout reference (refit_core.shadow)."""
    settings = config.model.deploy.shadow
    start_time = datetime.fromisoformat(event.shadow_started_at)
    end_time = datetime.now(UTC) + timedelta(minutes=1)
    windows = {
        name: variant_window(cloudwatch, config.endpoint_name, name, start_time, end_time)
        for name in (SHADOW, CHAMPION)
    }
    alarms = cloudwatch.describe_alarms(AlarmNames=[config.canary_alarm])["MetricAlarms"]
    alarm_state = alarms[0]["StateValue"] if alarms else None
    window_start = start_time.replace(second=0, microsecond=0)
    scores, problems = window_scores(
        s3,
        config.data_bucket,
        config.model.capture_prefix,
        config.endpoint_name,
        window_start,
        end_time,
        config.model.problem_type,
    )
    divergence = shadow_divergence(
        settings,
        holdout_reference(s3, event.gate_uri),
        scores,
        capture_enabled=capture_destination(sagemaker, config.endpoint_name) is not None,
        seed=config.model.seed,
    )
    tail = latency_tail(
        cloudwatch,
        config.endpoint_name,
        settings.max_p99_latency_ratio,
        *((name, start_time, end_time, windows[name]) for name in (SHADOW, CHAMPION)),
    )
    verdict = shadow_verdict(settings, windows[SHADOW], windows[CHAMPION], alarm_state, divergence, tail)
    synthetic = config.model.deploy.synthetic_traffic
    topped_up = event.synthetic if event.synthetic is not None and event.synthetic.step == 0 else None
    following: dict[str, Any] = {"next": "promote" if verdict["healthy"] else "rollback"}
    if needs_top_up(synthetic.enabled, verdict, topped_up is not None):
        # Requests to the endpoint: the champion serves them and SageMaker copies them to the shadow.
        requests = shadow_top_up(
            windows[CHAMPION].invocations,
            windows[SHADOW].invocations,
            config.model.requests_to_judge,
            synthetic.max_requests_per_variant,
            settings.sampling_percent,
        )
        following = {"next": "synthetic", "synthetic_step": 0, "synthetic_requests": {CHAMPION: requests}}
        verdict = {**verdict, "reason": f"{verdict['reason']}; topping it up with synthetic traffic once"}
    elif topped_up is not None:
        verdict = {**verdict, "reason": f"{verdict['reason']}; {describe(topped_up.model_dump())}"}
    return ShadowVerdict(
        **verdict,
        **following,
        synthetic=topped_up,
        sampling_percent=settings.sampling_percent,
        window_start=window_start.isoformat(timespec="seconds"),
        window_end=end_time.isoformat(timespec="seconds"),
        capture_problems=problems,
    ).to_state()


def synthetic_traffic(event: SendSynthetic, config: Settings, s3: Any, runtime: Any) -> dict[str, Any]:
    """Top up a quiet step once with requests replayed from this run's holdout rows (refit_core.synthetic), each
    marked synthetic in its InferenceId. In deploy.mode variants each request names its variant (TargetVariant); in
    shadow mode it goes to the endpoint, whose champion serves it and SageMaker copies it to the shadow."""
    model = config.model
    settings = model.deploy.synthetic_traffic
    if not settings.enabled:
        raise SyntheticTrafficError(f"synthetic_traffic: deploy.synthetic_traffic is not enabled for {model.name}")
    allowed = {CHALLENGER, CHAMPION} if model.deploy.mode == "variants" else {CHAMPION}
    unknown = sorted(set(event.requests) - allowed)
    if unknown:
        raise SyntheticTrafficError(
            f"synthetic_traffic: variants {unknown} are not topped up in deploy.mode {model.deploy.mode!r} "
            f"(only {sorted(allowed)})"
        )
    over = {name: count for name, count in event.requests.items() if count > settings.max_requests_per_variant}
    if over:
        raise SyntheticTrafficError(
            f"synthetic_traffic: {over} is over deploy.synthetic_traffic.max_requests_per_variant "
            f"({settings.max_requests_per_variant})"
        )
    key = holdout_rows_key(model.name, event.run_id)
    source = f"s3://{config.artifact_bucket}/{key}"
    try:
        body = s3.get_object(Bucket=config.artifact_bucket, Key=key)["Body"]
    except s3.exceptions.NoSuchKey:
        raise SyntheticTrafficError(
            f"synthetic_traffic: {source} does not exist: the run's training job kept no holdout rows to replay"
        ) from None
    rows = holdout_rows(body.iter_lines(), source)
    return send(
        runtime,
        config.endpoint_name,
        {name: count for name, count in event.requests.items() if count},
        rows,
        rows_per_request=settings.rows_per_request,
        run_id=event.run_id,
        step=event.step,
        target_variants=model.deploy.mode == "variants",
    )


def shift(event: ShiftCanary, config: Settings, sagemaker: Any) -> dict[str, Any]:
    """Move the challenger to the next step's share on the same endpoint config; the status loop then waits until
    DescribeEndpoint shows the new weights."""
    plan = config.model.canary.plan
    if event.step >= len(plan):
        raise ValueError(f"shift: step {event.step} is past the plan's {len(plan)} steps")
    weight = plan[event.step]
    current = describe_endpoint(sagemaker, config.endpoint_name)
    if current is None:
        raise ValueError(f"shift: endpoint {config.endpoint_name} does not exist")
    sagemaker.update_endpoint_weights_and_capacities(
        EndpointName=config.endpoint_name,
        DesiredWeightsAndCapacities=[
            {"VariantName": CHAMPION, "DesiredWeight": round(1 - weight, 6)},
            {"VariantName": CHALLENGER, "DesiredWeight": weight},
        ],
    )
    return {"step": event.step, "weight": weight, "expected_config": current["EndpointConfigName"]}


def promote(event: Promote, config: Settings, sagemaker: Any, autoscaling: Any) -> dict[str, Any]:
    """The challenger's model becomes the single `champion` variant, starting at the count the champion serves with
    (capacity.initial_count); the scalable targets go before the UpdateEndpoint and come back after InService. A
    retried call (refit_core.idempotent) reuses the config the first attempt created and, when that attempt already
    asked for the update, returns what it returned (recorded on the config's tags) without asking again."""
    config_name = names.endpoint_config_name(config.endpoint_name, event.run_id, "final")
    current = describe_endpoint(sagemaker, config.endpoint_name)
    if current is not None and idempotent.moving_to(current, config_name):
        earlier = idempotent.recorded(sagemaker, config_name)
        return {
            "expected_config": config_name,
            "requested_at": earlier.get("requested_at"),
            "deregistered": earlier.get("deregistered", []),
        }
    count = capacity.initial_count(config.model.deploy.capacity, capacity.current_counts(current).get(CHAMPION))
    record = {"requested_at": now(), "deregistered": targets_of(autoscaling, config.endpoint_name, current)}
    created = idempotent.create_endpoint_config(
        sagemaker,
        {
            "EndpointConfigName": config_name,
            "ProductionVariants": [
                variant(event.challenger_model, CHAMPION, 1.0, config.model.serving_instance_type, count)
            ],
            "DataCaptureConfig": capture(config),
            "KmsKeyId": config.kms_key_arn,  # the instances' storage volumes
            "Tags": idempotent.record_tags(record),
        },
    )
    if not created:
        record = {**record, **idempotent.recorded(sagemaker, config_name)}
    deregistered = capacity.deregister(autoscaling, config.endpoint_name, current)
    sagemaker.update_endpoint(EndpointName=config.endpoint_name, EndpointConfigName=config_name)
    return {
        "expected_config": config_name,
        "requested_at": record["requested_at"],
        "deregistered": merged(record["deregistered"], deregistered),
    }


def targets_of(autoscaling: Any, endpoint_name: str, endpoint: dict[str, Any] | None) -> list[str]:
    """The endpoint's variants with a scalable target: those an update deregisters (capacity.deregister), known before
    it so the config can record them for a retry."""
    variants = [v["VariantName"] for v in (endpoint or {}).get("ProductionVariants", [])]
    return [t["ResourceId"].rsplit("/", 1)[-1] for t in capacity.scalable_targets(autoscaling, endpoint_name, variants)]


def merged(first: list[str], then: list[str]) -> list[str]:
    """Variant names of both lists, each once, in order."""
    return list(dict.fromkeys([*first, *then]))


def rollback(
    event: Rollback, config: Settings, sagemaker: Any, autoscaling: Any, rescaled: bool | None = None
) -> dict[str, Any]:
    """Cut the challenger's traffic at once, then return the endpoint to the config it had before the run. When a
    registration follows (`rescaled`; by default for a rollback, whose wait for InService registers the champion
    again) every scalable target is deregistered first; otherwise (a restore, the Cleanup function) only the targets
    of variants the old config drops or puts on another instance type, so the champion keeps its scaling
    (DeleteEndpoint deregisters the endpoint's targets itself)."""
    current = describe_endpoint(sagemaker, config.endpoint_name)
    if current is None:
        return {"expected_config": None, "changed": False}
    if event.previous_config is None:
        if event.action == "restore":
            sagemaker.delete_endpoint(EndpointName=config.endpoint_name)
            return {"expected_config": None, "changed": True, "deleted": True, "requested_at": now()}
        return {"expected_config": current["EndpointConfigName"], "changed": False}
    if idempotent.moving_to(current, event.previous_config):  # there already, or a retry after the update
        return {"expected_config": event.previous_config, "changed": False}
    if current["EndpointStatus"] == "Failed":
        raise EndpointFailed(
            f"endpoint {config.endpoint_name} is Failed on {current['EndpointConfigName']} "
            f"({current.get('FailureReason') or 'no FailureReason'}): SageMaker allows only DeleteEndpoint on a failed "
            f"endpoint, so it cannot be returned to {event.previous_config}; it needs a person"
        )
    names = {v["VariantName"] for v in current.get("ProductionVariants", [])}
    if current["EndpointStatus"] == "InService" and names == {CHAMPION, CHALLENGER}:
        sagemaker.update_endpoint_weights_and_capacities(
            EndpointName=config.endpoint_name,
            DesiredWeightsAndCapacities=[
                {"VariantName": CHAMPION, "DesiredWeight": 1.0},
                {"VariantName": CHALLENGER, "DesiredWeight": 0.0},
            ],
        )
    keep = None
    if not (event.action == "rollback" if rescaled is None else rescaled):
        keep = capacity.unchanged_variants(
            sagemaker.describe_endpoint_config(EndpointConfigName=current["EndpointConfigName"])["ProductionVariants"],
            sagemaker.describe_endpoint_config(EndpointConfigName=event.previous_config)["ProductionVariants"],
        )
    deregistered = capacity.deregister(autoscaling, config.endpoint_name, current, keep)
    requested_at = now()
    # The champion keeps the instance count it serves with (autoscaling may have scaled it out), not the count its
    # old config started with; weights come from that config, and Data Capture always does (AWS's VariantProperty
    # documents retaining DataCaptureConfig as not supported, so it is not named here).
    sagemaker.update_endpoint(
        EndpointName=config.endpoint_name,
        EndpointConfigName=event.previous_config,
        RetainAllVariantProperties=True,
        ExcludeRetainedVariantProperties=[{"VariantPropertyType": "DesiredWeight"}],
    )
    return {
        "expected_config": event.previous_config,
        "changed": True,
        "requested_at": requested_at,
        "deregistered": deregistered,
    }


def redeploy(event: Redeploy, config: Settings, sagemaker: Any, autoscaling: Any) -> dict[str, Any]:
    """A manual rollback or promotion: put registered version `event.version` on the endpoint as the single champion
    variant (its own model artifact and image, a `--redeploy` config with Data Capture). The version is checked again
    here (the CLI checked it before starting the run): in the group, not Rejected unless forced, not serving already.
    UpdateEndpoint is the last call, so an error before it leaves the endpoint untouched; the run then waits for
    InService on the new config (the `status` action) and restores `previous_config` if that does not come.

    Retried with the same input (a Lambda timeout or throttle after the first attempt did part of the work), it
    reuses the model and config that attempt created when they are the ones asked for (refit_core.idempotent), and
    when the endpoint is already updating to (or on) the config, it returns the first attempt's result, read from the
    config's tags, without a second UpdateEndpoint: one config, one update, the same answer."""
    current = describe_endpoint(sagemaker, config.endpoint_name)
    if current is None:
        raise RedeployRefused(
            f"endpoint {config.endpoint_name} does not exist: the first model is deployed by a retrain run"
        )
    arn = names.model_package_arn(config.state_machine_arn, config.model_package_group, event.version)
    package = describe_version(sagemaker, arn, event.version, config.model_package_group)
    image = container(package)
    model_name = names.model_name(config.endpoint_name, event.run_id)
    config_name = names.endpoint_config_name(config.endpoint_name, event.run_id, "redeploy")

    def result(record: dict[str, Any], deregistered: list[str]) -> dict[str, Any]:
        return {
            "kind": event.kind,
            "version": event.version,
            "model_package_arn": package["ModelPackageArn"],
            "model_data_url": image["ModelDataUrl"],
            "approval": package.get("ModelApprovalStatus"),
            "forced": event.force and package.get("ModelApprovalStatus") == "Rejected",
            "model_name": model_name,
            "expected_config": config_name,
            "previous_config": record["previous_config"],
            "previous_version": record.get("previous_version"),
            "previous_package_arn": record.get("previous_package_arn"),
            "deregistered": merged(record.get("deregistered", []), deregistered),
        }

    if idempotent.moving_to(current, config_name):  # the first attempt asked for the update: report it
        earlier = idempotent.recorded(sagemaker, config_name)
        if not earlier.get("previous_config"):
            raise idempotent.ExistingResourceDiffers(
                f"endpoint {config.endpoint_name} is on {config_name}, whose tags do not name the config it replaced"
            )
        return result(earlier, [])
    champion = find_champion(sagemaker, config.endpoint_name)
    check_redeploy(package, event.version, event.force, champion)
    idempotent.create_model(
        sagemaker,
        {
            "ModelName": model_name,
            "ExecutionRoleArn": config.sagemaker_role_arn,
            **isolated(config.vpc_config),
            "PrimaryContainer": {
                "Image": image.get("Image") or config.image_uri,
                "ModelDataUrl": image["ModelDataUrl"],
                "Environment": model_environment(package),
            },
            "Tags": [
                {"Key": "refit:model", "Value": config.model.name},
                {"Key": "refit:run", "Value": event.run_id},
            ],
        },
    )
    count = capacity.initial_count(config.model.deploy.capacity, capacity.current_counts(current).get(CHAMPION))
    record = {
        "previous_config": current["EndpointConfigName"],
        "previous_version": champion.get("version") if champion else None,
        "previous_package_arn": champion.get("model_package_arn") if champion else None,
        "deregistered": targets_of(autoscaling, config.endpoint_name, current),
    }
    created = idempotent.create_endpoint_config(
        sagemaker,
        {
            "EndpointConfigName": config_name,
            "ProductionVariants": [variant(model_name, CHAMPION, 1.0, config.model.serving_instance_type, count)],
            "DataCaptureConfig": capture(config),
            "KmsKeyId": config.kms_key_arn,  # the instances' storage volumes
            "Tags": idempotent.record_tags(record),
        },
    )
    if not created:
        earlier = idempotent.recorded(sagemaker, config_name)
        if earlier.get("previous_config") != current["EndpointConfigName"]:
            raise idempotent.ExistingResourceDiffers(
                f"endpoint config {config_name} was created to replace {earlier.get('previous_config')}, but the "
                f"endpoint is on {current['EndpointConfigName']} now: not updating it from a stale request"
            )
        record = {**record, **earlier}
    deregistered = capacity.deregister(autoscaling, config.endpoint_name, current)
    sagemaker.update_endpoint(EndpointName=config.endpoint_name, EndpointConfigName=config_name)
    return result(record, deregistered)


def scale(config: Settings, sagemaker: Any, autoscaling: Any) -> dict[str, Any]:
    """After every wait for InService: the serving variant (`champion`) registered as a scalable target with the
    target-tracking policy (refit_core.capacity). Only built into the state machine when autoscaling is configured."""
    scaling = config.model.deploy.capacity.autoscaling
    if scaling is None:
        return {"registered": False}
    endpoint = describe_endpoint(sagemaker, config.endpoint_name)
    if endpoint is None:
        raise ValueError(f"scale: endpoint {config.endpoint_name} does not exist")
    serving = {v["VariantName"] for v in endpoint.get("ProductionVariants", [])}
    if CHAMPION not in serving:
        raise ValueError(f"scale: endpoint {config.endpoint_name} has no {CHAMPION} variant (it has {sorted(serving)})")
    return {"registered": True, **capacity.register(autoscaling, config.endpoint_name, CHAMPION, scaling)}


OUTPUTS: dict[str, type[Step]] = {
    "start": DeployStarted,
    "status": EndpointCheck,
    "check_canary": CanaryVerdict,
    "shift": CanaryShift,
    "promote": Promotion,
    "rollback": RollbackStep,
    "restore": RollbackStep,
    "redeploy": RedeployStarted,
    "start_shadow": DeployStarted,
    "check_shadow": ShadowVerdict,
    "start_guardrails": DeployStarted,
    "guardrails_status": GuardrailsCheck,
    "judge_guardrails": GuardrailsCheck,
    "scale": Scaling,
    "synthetic_traffic": SyntheticTraffic,
}  # the step contract of each action (refit_core.steps)


def dispatch(request: Any, config: Settings) -> dict[str, Any]:
    if isinstance(request, StartDeploy):
        return start(request, config, client("sagemaker"), client("application-autoscaling"))
    if isinstance(request, EndpointStatus):
        return status(request, config, client("sagemaker"))
    if isinstance(request, CheckCanary):
        return check_canary(request, config, client("cloudwatch"), client("sagemaker"), client("s3"))
    if isinstance(request, ShiftCanary):
        return shift(request, config, client("sagemaker"))
    if isinstance(request, Promote):
        return promote(request, config, client("sagemaker"), client("application-autoscaling"))
    if isinstance(request, Redeploy):
        return redeploy(request, config, client("sagemaker"), client("application-autoscaling"))
    if isinstance(request, ScaleEndpoint):
        return scale(config, client("sagemaker"), client("application-autoscaling"))
    if isinstance(request, StartShadow):
        return start_shadow(request, config, client("sagemaker"))
    if isinstance(request, CheckShadow):
        return check_shadow(request, config, client("cloudwatch"), client("sagemaker"), client("s3"))
    if isinstance(request, StartGuarded):
        return start_guardrails(request, config, client("sagemaker"))
    if isinstance(request, GuardedStatus):
        return guardrails_status(request, config, client("sagemaker"), client("cloudwatch"))
    if isinstance(request, JudgeGuarded):
        return judge_guardrails(request, config, client("sagemaker"), client("cloudwatch"), client("s3"))
    if isinstance(request, SendSynthetic):
        return synthetic_traffic(request, config, client("s3"), client("sagemaker-runtime"))
    return rollback(request, config, client("sagemaker"), client("application-autoscaling"))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: Any) -> dict:
    config = settings()
    request = parse(DeployEvent, {"request": event}).request
    result = OUTPUTS[request.action](**dispatch(request, config)).to_state()
    ended = {"promote": "CanaryPromoted", "rollback": "CanaryRolledBack"}.get(request.action)
    if request.action in ("guardrails_status", "judge_guardrails"):  # a guarded update's end counts as a canary's
        ended = {"promoted": "CanaryPromoted", "rolled_back": "CanaryRolledBack", "rollback": "CanaryRolledBack"}.get(
            result["next"]
        )
    if ended is not None:
        metrics.add_dimension(name="Model", value=config.model.name)
        metrics.add_metric(name=ended, unit=MetricUnit.Count, value=1)
    logger.info("endpoint action", extra={"action": request.action, "result": result})
    return result
