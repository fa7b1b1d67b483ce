"""What starts a run (schedule, new data, quality alarm; manual starts need nothing) and the canary alarm."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct
from refit_core.canary import CHALLENGER, CHAMPION, error_alarm_limits, error_rate_alarm_expression
from refit_core.config import ModelConfig
from refit_core.metric_names import LIVE_METRIC_ALARM_BOUND, MONITOR_NAMESPACE, higher_is_better
from refit_core.s3uri import SUPPORTED_SUFFIXES

from stacks.storage import Storage

START_RETRY_ATTEMPTS = 8
START_MAX_EVENT_AGE = Duration.hours(24)
COMPARISONS = {
    "LessThanThreshold": cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
    "GreaterThanThreshold": cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
}


class Triggers(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        model: ModelConfig,
        storage: Storage,
        state_machine: sfn.IStateMachine,
        endpoint_name: str,
        canary_alarm_name: str,
        quality_alarm_name: str,
    ) -> None:
        super().__init__(scope, construct_id)
        # A start EventBridge cannot deliver (throttled, the state machine being updated) is retried for a day, then
        # kept in the dead-letter queue, whose alarm notifies the team: no new batch goes unnoticed.
        target = targets.SfnStateMachine(
            state_machine,
            retry_attempts=START_RETRY_ATTEMPTS,
            max_event_age=START_MAX_EVENT_AGE,
            dead_letter_queue=storage.dead_letters,
        )
        self.new_data_rule = events.Rule(
            self,
            "NewData",
            description=f"refit {model.name}: a new .csv, .csv.gz or .parquet batch under s3://<data>/{model.new_data_prefix}",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={
                    "bucket": {"name": [storage.data_bucket.bucket_name]},
                    # Only the objects refit reads: prefix and suffix together need a wildcard (one field's list is
                    # an OR, and a prefix and a suffix filter cannot be combined in one matcher).
                    "object": {
                        "key": [{"wildcard": f"{model.new_data_prefix}*{suffix}"} for suffix in SUPPORTED_SUFFIXES]
                    },
                },
            ),
            targets=[target],
        )
        self.schedule_rule = None
        if model.schedule:
            self.schedule_rule = events.Rule(
                self,
                "Schedule",
                description=f"refit {model.name}: scheduled drift check",
                schedule=events.Schedule.expression(model.schedule),
                targets=[target],
            )
        self.quality_alarm = None
        self.quality_alarm_rule = None
        if model.quality_alarm:
            settings = model.quality_alarm
            maximize = higher_is_better(model.primary_metric)
            self.quality_alarm = cloudwatch.Alarm(
                self,
                "QualityAlarm",
                alarm_name=quality_alarm_name,
                alarm_description=(
                    f"refit {model.name}: the live {model.primary_metric} is confidently "
                    f"{'below' if maximize else 'above'} {settings.threshold} (its whole interval, with at least "
                    f"{model.monitor.min_labelled_rows} labelled rows); starts a retrain"
                ),
                metric=cloudwatch.Metric(
                    namespace=MONITOR_NAMESPACE,
                    metric_name=LIVE_METRIC_ALARM_BOUND,
                    dimensions_map={"Model": model.name, "Variant": CHAMPION},
                    period=Duration.seconds(model.monitor.period_seconds),
                    # Several monitor runs in one period (a manual one besides the schedule): the most favourable
                    # bound decides, so the alarm never fires on one run's evidence that a later run overturned.
                    statistic="Maximum" if maximize else "Minimum",
                ),
                threshold=settings.threshold,
                comparison_operator=COMPARISONS["LessThanThreshold" if maximize else "GreaterThanThreshold"],
                evaluation_periods=settings.evaluation_periods,
                # No labelled rows, or too few: the monitor publishes no bound, and silence is not a breach.
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
            # The alarm starts the retrain (the rule below); the team hears of it too, not only of the run's end.
            self.quality_alarm.add_alarm_action(cloudwatch_actions.SnsAction(storage.topic))
            self.quality_alarm_rule = events.Rule(
                self,
                "QualityAlarmState",
                description=f"refit {model.name}: quality alarm went to ALARM",
                event_pattern=events.EventPattern(
                    source=["aws.cloudwatch"],
                    detail_type=["CloudWatch Alarm State Change"],
                    resources=[self.quality_alarm.alarm_arn],
                    detail={"state": {"value": ["ALARM"]}},
                ),
                targets=[target],
            )
        # The challenger's 5XX rate in a minute over the verdict's `max_error_rate`, judged once it served the
        # verdict's `min_invocations` in that minute (refit_core.canary.error_alarm_limits: one source of the
        # numbers): one error in a hundred requests is not a failed canary, a burst is. A minute without invocations
        # gives no value and does not breach: a quiet canary is caught by the step's invocation floor, not here.
        limits = error_alarm_limits(model)
        challenger = {"EndpointName": endpoint_name, "VariantName": CHALLENGER}
        self.canary_alarm = cloudwatch.Alarm(
            self,
            "CanaryAlarm",
            alarm_name=canary_alarm_name,
            alarm_description=f"refit {model.name}: the challenger variant's 5XX rate is over {limits.max_error_rate} "
            f"in a minute with at least {limits.min_invocations} invocations",
            metric=cloudwatch.MathExpression(
                expression=error_rate_alarm_expression(limits.min_invocations),
                using_metrics={
                    name: cloudwatch.Metric(
                        namespace="AWS/SageMaker",
                        metric_name=metric,
                        dimensions_map=challenger,
                        period=Duration.minutes(1),
                        statistic="Sum",
                    )
                    for name, metric in (("errors", "Invocation5XXErrors"), ("invocations", "Invocations"))
                },
                label="challenger 5XX rate",
                period=Duration.minutes(1),
            ),
            threshold=limits.max_error_rate,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
