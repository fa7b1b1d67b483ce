"""JudgeAb (`deploy.mode = "ab"`): after each Wait of the A/B test, check that the endpoint still holds the split,
the challenger's error alarm is not in ALARM and the canary's rules on the window since the split began find no harm
(guards) and, once the duration has passed, decide on the live primary metric per variant (refit_core.ab_test)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, Field
from refit_core.ab_test import judge
from refit_core.canary import CHALLENGER, CHAMPION, step_verdict
from refit_core.monitor import Place
from refit_core.steps import AbVerdict

from refit_handlers.common import Settings, client, parse, settings
from refit_handlers.deploy import latency_tail, variant_window, window_divergence

logger = Logger()
tracer = Tracer()
metrics = Metrics()


class JudgeEvent(BaseModel):
    started_at: str  # when the endpoint was first seen InService on the split
    remaining_seconds: int = Field(ge=0)  # of the duration, before the Wait that just ended
    wait_seconds: int = Field(ge=0)  # the Wait that just ended
    checks: int = Field(0, ge=0)
    expected_config: str  # the A/B endpoint config
    gate_uri: str | None = None  # gate.json: the holdout reference of the prediction-divergence guard


def live_guards(
    request: JudgeEvent, config: Settings, cloudwatch: Any, sagemaker: Any, s3: Any, alarm_state: str | None
) -> dict[str, Any]:
    """The canary's rules (refit_core.canary.step_verdict, `canary.*` settings) on the window since the split began,
    asking only whether the challenger harms (the quiet rule off): 5XX/4XX rates against the champion, the p99
    rule (over the ratio and significantly more slow requests), the fixed ceilings, and prediction divergence beyond the holdout's, which is always computed and recorded
    but stops the test only with `deploy.ab.stop_on_divergence` (the A/B test's traffic may come from a market that
    moved away from the holdout, which looks like divergence, and the test judges outcomes directly). The tests run at every check, so their
    level is `canary.alpha` divided by the checks the duration holds (Bonferroni): a harmless challenger is stopped
    by any of them with probability at most about `canary.alpha` per test over the whole duration."""
    model = config.model
    start_time = datetime.fromisoformat(request.started_at)
    end_time = datetime.now(UTC) + timedelta(minutes=1)
    windows = {
        name: variant_window(cloudwatch, config.endpoint_name, name, start_time, end_time)
        for name in (CHALLENGER, CHAMPION)
    }
    looks = max(1, -(-model.deploy.ab.duration_seconds // model.deploy.ab.check_interval_seconds))
    alpha = model.canary.alpha / looks
    divergence = window_divergence(request.gate_uri, alpha, config, sagemaker, s3, start_time, end_time)
    rules = model.canary.model_copy(update={"alpha": alpha})
    acted_on = divergence if model.deploy.ab.stop_on_divergence else None
    tail = latency_tail(
        cloudwatch,
        config.endpoint_name,
        rules.max_p99_latency_ratio,
        *((name, start_time, end_time, windows[name]) for name in (CHALLENGER, CHAMPION)),
    )
    verdict = step_verdict(
        rules, windows[CHALLENGER], windows[CHAMPION], alarm_state, acted_on, quiet_fails=False, tail=tail
    )
    return {
        **verdict,
        "divergence": divergence,  # recorded whether or not it may stop the test (deploy.ab.stop_on_divergence)
        "stop_on_divergence": model.deploy.ab.stop_on_divergence,
        "alpha": alpha,
        "window_start": start_time.replace(second=0, microsecond=0).isoformat(),
    }


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: Any) -> dict:
    config = settings()
    request = parse(JudgeEvent, event)
    cloudwatch, sagemaker, s3 = client("cloudwatch"), client("sagemaker"), client("s3")
    alarms = cloudwatch.describe_alarms(AlarmNames=[config.canary_alarm])["MetricAlarms"]
    alarm_state = alarms[0]["StateValue"] if alarms else None
    result = AbVerdict(
        **judge(
            Place(config.model, config.data_bucket, config.artifact_bucket, config.endpoint_name),
            started_at=request.started_at,
            remaining_seconds=request.remaining_seconds,
            wait_seconds=request.wait_seconds,
            checks=request.checks,
            expected_config=request.expected_config,
            s3=s3,
            sagemaker=sagemaker,
            now=datetime.now(UTC),
            error_alarm=(config.canary_alarm, alarm_state),
            guards=lambda: live_guards(request, config, cloudwatch, sagemaker, s3, alarm_state),
        )
    ).to_state()
    if result["result"] is not None:
        metrics.add_dimension(name="Model", value=config.model.name)
        metrics.add_metric(name=f"AbTest_{result['result']}", unit=MetricUnit.Count, value=1)
    logger.info("A/B check", extra={"result": result})
    return result
