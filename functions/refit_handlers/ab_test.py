"""JudgeAb (`deploy.mode = "ab"`): after each Wait of the A/B test, check that the endpoint still holds the split and
the challenger's error alarm is not in ALARM and, once the duration has passed, decide on the live primary metric per
variant (refit_core.ab_test)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, Field
from refit_core.ab_test import judge
from refit_core.monitor import Place
from refit_core.steps import AbVerdict

from refit_handlers.common import client, parse, settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()


class JudgeEvent(BaseModel):
    started_at: str  # when the endpoint was first seen InService on the split
    remaining_seconds: int = Field(ge=0)  # of the duration, before the Wait that just ended
    wait_seconds: int = Field(ge=0)  # the Wait that just ended
    checks: int = Field(0, ge=0)
    expected_config: str  # the A/B endpoint config


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: Any) -> dict:
    config = settings()
    request = parse(JudgeEvent, event)
    cloudwatch = client("cloudwatch")
    alarms = cloudwatch.describe_alarms(AlarmNames=[config.canary_alarm])["MetricAlarms"]
    result = AbVerdict(
        **judge(
            Place(config.model, config.data_bucket, config.artifact_bucket, config.endpoint_name),
            started_at=request.started_at,
            remaining_seconds=request.remaining_seconds,
            wait_seconds=request.wait_seconds,
            checks=request.checks,
            expected_config=request.expected_config,
            s3=client("s3"),
            sagemaker=client("sagemaker"),
            now=datetime.now(UTC),
            error_alarm=(config.canary_alarm, alarms[0]["StateValue"] if alarms else None),
        )
    ).to_state()
    if result["result"] is not None:
        metrics.add_dimension(name="Model", value=config.model.name)
        metrics.add_metric(name=f"AbTest_{result['result']}", unit=MetricUnit.Count, value=1)
    logger.info("A/B check", extra={"result": result})
    return result
