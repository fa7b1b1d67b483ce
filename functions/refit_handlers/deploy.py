"""Every change refit makes to the serving endpoint: create, canary, status, verdict, promote, roll back, restore."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, Field
from refit_core import names
from refit_core.artifacts import MODEL_SHA256_ENV
from refit_core.canary import CHALLENGER, CHAMPION, canary_variants, canary_verdict, data_capture, variant
from refit_core.champion import (
    PACKAGE_ENV,
    RedeployRefused,
    check_redeploy,
    container,
    describe_endpoint,
    describe_version,
    endpoint_view,
    find_champion,
)
from refit_core.steps import CanaryVerdict, DeployStarted, EndpointCheck, Promotion, RedeployStarted, Step
from refit_core.steps import Rollback as RollbackStep

from refit_handlers.common import Settings, client, parse, settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()

FAILED_STATUSES = {"Failed", "UpdateRollbackFailed", "OutOfService"}


class StartDeploy(BaseModel):
    action: Literal["start"]
    run_id: str
    model_data_url: str
    model_package_arn: str


class EndpointStatus(BaseModel):
    action: Literal["status"]
    expected_config: str


class CheckCanary(BaseModel):
    action: Literal["check_canary"]
    canary_started_at: str


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
        StartDeploy | EndpointStatus | CheckCanary | Promote | Rollback | Redeploy, Field(discriminator="action")
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
    sagemaker.create_endpoint_config(
        EndpointConfigName=config_name,
        ProductionVariants=canary_variants(
            champion_model, model_name, model.canary.weight, model.serving_instance_type
        ),
        DataCaptureConfig=capture(config),
    )
    sagemaker.update_endpoint(EndpointName=config.endpoint_name, EndpointConfigName=config_name)
    return {
        "mode": "canary",
        "previous_config": previous,
        "expected_config": config_name,
        "challenger_model": model_name,
        "canary_weight": model.canary.weight,
    }


def status(event: EndpointStatus, config: Settings, sagemaker: Any) -> dict[str, Any]:
    """`ready` only when InService on the config we asked for: after an automatic rollback SageMaker also
    reports InService, on the old config and often without a FailureReason."""
    view = endpoint_view(sagemaker, config.endpoint_name)
    if view is None:
        return {"next": "failed", "reason": f"endpoint {config.endpoint_name} does not exist"}
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
    view["canary_started_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return {"next": "ready", **view}


def check_canary(event: CheckCanary, config: Settings, cloudwatch: Any) -> dict[str, Any]:
    start_time = datetime.fromisoformat(event.canary_started_at) - timedelta(minutes=1)
    end_time = datetime.now(UTC) + timedelta(minutes=1)
    dimensions = [
        {"Name": "EndpointName", "Value": config.endpoint_name},
        {"Name": "VariantName", "Value": CHALLENGER},
    ]

    def datapoints(metric: str, *stats: str) -> list[dict[str, float]]:
        return cloudwatch.get_metric_statistics(
            Namespace="AWS/SageMaker",
            MetricName=metric,
            Dimensions=dimensions,
            StartTime=start_time,
            EndTime=end_time,
            Period=60,
            Statistics=list(stats),
        )["Datapoints"]

    invocations = sum(p["Sum"] for p in datapoints("Invocations", "Sum"))
    errors = sum(p["Sum"] for p in datapoints("Invocation5XXErrors", "Sum"))
    latency = datapoints("ModelLatency", "Sum", "SampleCount")  # SageMaker reports ModelLatency in microseconds
    samples = sum(p["SampleCount"] for p in latency)
    mean_latency_ms = sum(p["Sum"] for p in latency) / samples / 1000 if samples else None
    alarms = cloudwatch.describe_alarms(AlarmNames=[config.canary_alarm])["MetricAlarms"]
    alarm_state = alarms[0]["StateValue"] if alarms else None
    return canary_verdict(config.model.canary, invocations, errors, mean_latency_ms, alarm_state)


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
        return check_canary(request, config, client("cloudwatch"))
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
