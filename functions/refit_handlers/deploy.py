"""Every change refit makes to the serving endpoint: create, canary, status, step verdict, shift, promote, roll back,
restore."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, Field
from refit_core import names
from refit_core.artifacts import MODEL_SHA256_ENV
from refit_core.canary import (
    CHALLENGER,
    CHAMPION,
    VariantWindow,
    canary_variants,
    data_capture,
    step_verdict,
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
from refit_core.s3uri import S3Uri
from refit_core.steps import (
    CanaryShift,
    CanaryStepVerdict,
    CanaryVerdict,
    DeployStarted,
    EndpointCheck,
    Promotion,
    RedeployStarted,
    Step,
    Variant,
)
from refit_core.steps import Rollback as RollbackStep

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


class Redeploy(BaseModel):
    action: Literal["redeploy"]
    run_id: str
    version: int
    kind: Literal["rollback", "promote"]
    force: bool = False


class DeployEvent(BaseModel):
    request: Annotated[
        StartDeploy | EndpointStatus | CheckCanary | ShiftCanary | Promote | Rollback | Redeploy,
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
    digest of its model file recorded there, which `serve` checks before unpickling (refit_core.artifacts)."""
    digest = package.get("CustomerMetadataProperties", {}).get("model_sha256")
    return {PACKAGE_ENV: package["ModelPackageArn"], **({MODEL_SHA256_ENV: digest} if digest else {})}


def start(event: StartDeploy, config: Settings, sagemaker: Any) -> dict[str, Any]:
    model = config.model
    model_name = names.model_name(config.endpoint_name, event.run_id)
    sagemaker.create_model(
        ModelName=model_name,
        ExecutionRoleArn=config.sagemaker_role_arn,
        PrimaryContainer={
            "Image": config.image_uri,
            "ModelDataUrl": event.model_data_url,
            "Environment": model_environment(
                sagemaker.describe_model_package(ModelPackageName=event.model_package_arn)
            ),
        },
        Tags=[{"Key": "refit:model", "Value": model.name}, {"Key": "refit:run", "Value": event.run_id}],
    )
    current = describe_endpoint(sagemaker, config.endpoint_name)
    if current is None:
        config_name = names.endpoint_config_name(config.endpoint_name, event.run_id, "first")
        sagemaker.create_endpoint_config(
            EndpointConfigName=config_name,
            ProductionVariants=[variant(model_name, CHAMPION, 1.0, model.serving_instance_type)],
            DataCaptureConfig=capture(config),
        )
        sagemaker.create_endpoint(EndpointName=config.endpoint_name, EndpointConfigName=config_name)
        return {
            "mode": "create",
            "previous_config": None,
            "expected_config": config_name,
            "challenger_model": model_name,
        }
    previous = current["EndpointConfigName"]
    champion_model = next(
        v["ModelName"]
        for v in sagemaker.describe_endpoint_config(EndpointConfigName=previous)["ProductionVariants"]
        if v["VariantName"] == CHAMPION
    )
    config_name = names.endpoint_config_name(config.endpoint_name, event.run_id, "canary")
    plan = model.canary.plan
    sagemaker.create_endpoint_config(
        EndpointConfigName=config_name,
        ProductionVariants=canary_variants(champion_model, model_name, plan[0], model.serving_instance_type),
        DataCaptureConfig=capture(config),
    )
    sagemaker.update_endpoint(EndpointName=config.endpoint_name, EndpointConfigName=config_name)
    return {
        "mode": "canary",
        "previous_config": previous,
        "expected_config": config_name,
        "challenger_model": model_name,
        "canary_weight": plan[0],
        "canary_steps": plan,
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


def variant_window(
    cloudwatch: Any, endpoint_name: str, variant_name: str, start_time: datetime, end_time: datetime
) -> VariantWindow:
    """One variant's numbers over [start, end) from CloudWatch, in one period covering the whole window (CloudWatch
    rounds a recent StartTime down to the minute), so the p99 is over every request of the window. Statistics and
    ExtendedStatistics cannot be asked for in the same call; SageMaker reports ModelLatency in microseconds."""
    start_time = start_time.replace(second=0, microsecond=0)
    period = max(60, -(-int((end_time - start_time).total_seconds()) // 60) * 60)
    dimensions = [
        {"Name": "EndpointName", "Value": endpoint_name},
        {"Name": "VariantName", "Value": variant_name},
    ]

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


def divergence_check(
    event: CheckCanary, config: Settings, sagemaker: Any, s3: Any, start_time: datetime, end_time: datetime
) -> dict[str, Any]:
    """The prediction-divergence check of a step (refit_core.divergence): both variants' captured outputs in the
    window against the holdout reference the gate recorded in gate.json, at level `alpha` / number of steps. Capture
    off on the endpoint (its DataCaptureConfig not Started): skipped, and the verdict says so."""
    model = config.model
    endpoint = describe_endpoint(sagemaker, config.endpoint_name) or {}
    capture_config = endpoint.get("DataCaptureConfig") or {}
    capture_on = bool(capture_config.get("EnableCapture")) and capture_config.get("CaptureStatus") == "Started"
    reference = None
    if event.gate_uri:
        where = S3Uri.parse(event.gate_uri)
        reference = json.loads(s3.get_object(Bucket=where.bucket, Key=where.key)["Body"].read()).get(
            "divergence_reference"
        )
    outputs: dict[str, list[float]] = {CHALLENGER: [], CHAMPION: []}
    if capture_on and reference:
        outputs = live_outputs(
            s3,
            capture_config["DestinationS3Uri"],
            config.endpoint_name,
            (CHALLENGER, CHAMPION),
            start_time,
            end_time,
            model.problem_type,
        )
    return prediction_divergence(
        reference,
        outputs[CHAMPION],
        outputs[CHALLENGER],
        # Bonferroni over the plan's steps: a challenger that answers as its holdout says is rolled back by this
        # check with probability at most `alpha` over the whole canary, not `alpha` at every step.
        alpha=model.canary.alpha / len(model.canary.plan),
        min_samples=model.canary.divergence_min_samples,
        capture_enabled=capture_on,
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
    verdict = step_verdict(config.model.canary, windows[CHALLENGER], windows[CHAMPION], alarm_state, divergence)
    judged = CanaryStepVerdict(
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


def promote(event: Promote, config: Settings, sagemaker: Any) -> dict[str, Any]:
    config_name = names.endpoint_config_name(config.endpoint_name, event.run_id, "final")
    sagemaker.create_endpoint_config(
        EndpointConfigName=config_name,
        ProductionVariants=[variant(event.challenger_model, CHAMPION, 1.0, config.model.serving_instance_type)],
        DataCaptureConfig=capture(config),
    )
    sagemaker.update_endpoint(EndpointName=config.endpoint_name, EndpointConfigName=config_name)
    return {"expected_config": config_name}


def rollback(event: Rollback, config: Settings, sagemaker: Any) -> dict[str, Any]:
    """Cut the challenger's traffic at once, then return the endpoint to the config it had before the run."""
    current = describe_endpoint(sagemaker, config.endpoint_name)
    if current is None:
        return {"expected_config": None, "changed": False}
    if event.previous_config is None:
        if event.action == "restore":
            sagemaker.delete_endpoint(EndpointName=config.endpoint_name)
            return {"expected_config": None, "changed": True, "deleted": True}
        return {"expected_config": current["EndpointConfigName"], "changed": False}
    if current["EndpointConfigName"] == event.previous_config:
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
    sagemaker.update_endpoint(EndpointName=config.endpoint_name, EndpointConfigName=event.previous_config)
    return {"expected_config": event.previous_config, "changed": True}


def redeploy(event: Redeploy, config: Settings, sagemaker: Any) -> dict[str, Any]:
    """A manual rollback or promotion: put registered version `event.version` on the endpoint as the single champion
    variant (its own model artifact and image, a `--redeploy` config with Data Capture). The version is checked again
    here (the CLI checked it before starting the run): in the group, not Rejected unless forced, not serving already.
    UpdateEndpoint is the last call, so an error before it leaves the endpoint untouched; the run then waits for
    InService on the new config (the `status` action) and restores `previous_config` if that does not come."""
    current = describe_endpoint(sagemaker, config.endpoint_name)
    if current is None:
        raise RedeployRefused(
            f"endpoint {config.endpoint_name} does not exist: the first model is deployed by a retrain run"
        )
    champion = find_champion(sagemaker, config.endpoint_name)
    arn = names.model_package_arn(config.state_machine_arn, config.model_package_group, event.version)
    package = describe_version(sagemaker, arn, event.version, config.model_package_group)
    check_redeploy(package, event.version, event.force, champion)
    image = container(package)
    model_name = names.model_name(config.endpoint_name, event.run_id)
    sagemaker.create_model(
        ModelName=model_name,
        ExecutionRoleArn=config.sagemaker_role_arn,
        PrimaryContainer={
            "Image": image.get("Image") or config.image_uri,
            "ModelDataUrl": image["ModelDataUrl"],
            "Environment": model_environment(package),
        },
        Tags=[{"Key": "refit:model", "Value": config.model.name}, {"Key": "refit:run", "Value": event.run_id}],
    )
    config_name = names.endpoint_config_name(config.endpoint_name, event.run_id, "redeploy")
    sagemaker.create_endpoint_config(
        EndpointConfigName=config_name,
        ProductionVariants=[variant(model_name, CHAMPION, 1.0, config.model.serving_instance_type)],
        DataCaptureConfig=capture(config),
    )
    sagemaker.update_endpoint(EndpointName=config.endpoint_name, EndpointConfigName=config_name)
    return {
        "kind": event.kind,
        "version": event.version,
        "model_package_arn": package["ModelPackageArn"],
        "model_data_url": image["ModelDataUrl"],
        "approval": package.get("ModelApprovalStatus"),
        "forced": event.force and package.get("ModelApprovalStatus") == "Rejected",
        "model_name": model_name,
        "expected_config": config_name,
        "previous_config": current["EndpointConfigName"],
        "previous_version": champion.get("version") if champion else None,
        "previous_package_arn": champion.get("model_package_arn") if champion else None,
    }


OUTPUTS: dict[str, type[Step]] = {
    "start": DeployStarted,
    "status": EndpointCheck,
    "check_canary": CanaryVerdict,
    "shift": CanaryShift,
    "promote": Promotion,
    "rollback": RollbackStep,
    "restore": RollbackStep,
    "redeploy": RedeployStarted,
}  # the step contract of each action (refit_core.steps)


def dispatch(request: Any, config: Settings) -> dict[str, Any]:
    if isinstance(request, StartDeploy):
        return start(request, config, client("sagemaker"))
    if isinstance(request, EndpointStatus):
        return status(request, config, client("sagemaker"))
    if isinstance(request, CheckCanary):
        return check_canary(request, config, client("cloudwatch"), client("sagemaker"), client("s3"))
    if isinstance(request, ShiftCanary):
        return shift(request, config, client("sagemaker"))
    if isinstance(request, Promote):
        return promote(request, config, client("sagemaker"))
    if isinstance(request, Redeploy):
        return redeploy(request, config, client("sagemaker"))
    return rollback(request, config, client("sagemaker"))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: Any) -> dict:
    config = settings()
    request = parse(DeployEvent, {"request": event}).request
    result = OUTPUTS[request.action](**dispatch(request, config)).to_state()
    if request.action in ("promote", "rollback"):
        metrics.add_dimension(name="Model", value=config.model.name)
        metrics.add_metric(
            name="CanaryPromoted" if request.action == "promote" else "CanaryRolledBack",
            unit=MetricUnit.Count,
            value=1,
        )
    logger.info("endpoint action", extra={"action": request.action, "result": result})
    return result
