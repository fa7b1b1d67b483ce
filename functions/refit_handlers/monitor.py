"""The monitor Lambda: run by the model's monitor schedule (EventBridge), or by hand with an empty event."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from pydantic import BaseModel, ConfigDict
from refit_core.monitor import Place, run_monitor

from refit_handlers.common import client, parse, settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()


class MonitorEvent(BaseModel):
    """A scheduled event (its `id` names the run) or a manual invocation; both may carry anything else."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    id: str | None = None


def run_name(event: MonitorEvent, request_id: str, now: datetime) -> str:
    source = event.id or request_id
    return f"{now:%Y%m%dT%H%M%S}-{re.sub(r'[^A-Za-z0-9-]', '-', source)[:36]}"


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: Any) -> dict:
    config = settings()
    now = datetime.now(UTC)
    parsed = parse(MonitorEvent, event if isinstance(event, dict) else {})
    place = Place(config.model, config.data_bucket, config.artifact_bucket, config.endpoint_name, config.quality_alarm)
    report = run_monitor(
        place,
        run_id=run_name(parsed, getattr(context, "aws_request_id", "manual"), now),
        now=now,
        s3=client("s3"),
        sagemaker=client("sagemaker"),
        cloudwatch=client("cloudwatch"),
    )
    logger.info(
        "monitor run",
        extra={
            "decision": report["decision"],
            "variants": list(report["variants"]),
            "report": report.get("report_uri"),
            "alarm": report.get("alarm"),
        },
    )
    return {
        "run_id": report["run_id"],
        "decision": report["decision"],
        "alarm": report.get("alarm"),
        "report_uri": report.get("report_uri"),
        "report_html_uri": report.get("report_html_uri"),
        "variants": {
            name: {"live": v["live"], "labelled_rows": v["labelled_rows"], "estimated": v["estimated"]}
            for name, v in report["variants"].items()
        },
    }
