"""The production half of one model's loop: the monitor's schedule and the model's CloudWatch dashboard."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct
from refit_core.canary import CHALLENGER, CHAMPION
from refit_core.config import ModelConfig
from refit_core.metric_names import (
    DRIFTED_FEATURES,
    ESTIMATED_METRIC,
    INPUT_DRIFT,
    LABELLED_ROWS,
    LIVE_METRIC,
    LIVE_METRIC_ALARM_BOUND,
    LIVE_METRIC_LOWER,
    LIVE_METRIC_UPPER,
    MONITOR_NAMESPACE,
    PREDICTION_DRIFT,
)


class MonitorSchedule(Construct):
    """Runs the model's monitor Lambda on `monitor.schedule` (none: run it by hand), and tells the team when the
    monitor itself fails: the quality alarm treats silence as no breach, so a broken monitor must not look healthy."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        model: ModelConfig,
        monitor: lambda_.IFunction,
        topic: sns.ITopic,
        alarm_name: str,
        dead_letters: sqs.IQueue,
    ) -> None:
        super().__init__(scope, construct_id)
        self.failures = cloudwatch.Alarm(
            self,
            "Failures",
            alarm_name=alarm_name,
            alarm_description=f"refit {model.name}: the monitor failed (its log says why); no live metric meanwhile",
            metric=monitor.metric_errors(period=Duration.hours(1), statistic="Sum"),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.failures.add_alarm_action(cloudwatch_actions.SnsAction(topic))
        self.rule = None
        if model.monitor.schedule:
            self.rule = events.Rule(
                self,
                "Schedule",
                description=f"refit {model.name}: monitor the served model (captured traffic, labels, live metric)",
                schedule=events.Schedule.expression(model.monitor.schedule),
                # A missed hour is made up by the next run (it reads the window); an event older than the schedule's
                # period is stale, and one EventBridge could not deliver goes to the dead-letter queue.
                targets=[
                    targets.LambdaFunction(
                        monitor,
                        retry_attempts=2,
                        max_event_age=Duration.hours(1),
                        dead_letter_queue=dead_letters,
                    )
                ],
            )


class ModelDashboard(Construct):
    """One dashboard per model: runs and outcomes, drift, the live and estimated metric against the alarm threshold,
    labelled rows, spend and canary results. Metrics the Lambdas emit through Powertools carry a `service`
    dimension too, so those are found with SEARCH; the monitor's are named exactly."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        model: ModelConfig,
        dashboard_name: str,
        endpoint_name: str,
        alarms: list[cloudwatch.IAlarm],
    ) -> None:
        super().__init__(scope, construct_id)
        period = Duration.seconds(model.monitor.period_seconds)

        def live(name: str, variant: str, label: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace=MONITOR_NAMESPACE,
                metric_name=name,
                dimensions_map={"Model": model.name, "Variant": variant},
                period=period,
                statistic="Average",
                label=label,
            )

        def search(terms: str, statistic: str, label: str, hours: int = 1) -> cloudwatch.MathExpression:
            return cloudwatch.MathExpression(
                expression=f"SEARCH('{{Refit,Model,service}} Model=\"{model.name}\" {terms}', '{statistic}', "
                f"{hours * 3600})",
                label=label,
                period=Duration.hours(hours),
            )

        threshold = (
            [cloudwatch.HorizontalAnnotation(value=model.quality_alarm.threshold, label="alarm threshold")]
            if model.quality_alarm
            else []
        )
        metric = model.primary_metric
        self.dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name=dashboard_name)
        self.dashboard.add_widgets(cloudwatch.AlarmStatusWidget(title="Alarms", alarms=alarms, width=24))
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title=f"Live {metric} (champion) with its interval, and the estimate from scores alone",
                left=[
                    live(LIVE_METRIC, CHAMPION, f"live {metric}"),
                    live(LIVE_METRIC_LOWER, CHAMPION, "interval low"),
                    live(LIVE_METRIC_UPPER, CHAMPION, "interval high"),
                    live(ESTIMATED_METRIC, CHAMPION, f"estimated {metric}"),
                    live(LIVE_METRIC_ALARM_BOUND, CHAMPION, "the bound the alarm watches (enough labelled rows)"),
                    live(LIVE_METRIC, CHALLENGER, f"live {metric} (challenger)"),
                ],
                left_annotations=threshold,
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Labelled rows in the monitor's window",
                left=[live(LABELLED_ROWS, CHAMPION, "champion"), live(LABELLED_ROWS, CHALLENGER, "challenger")],
                width=12,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Runs: started by trigger, and how they ended",
                left=[search("RunsStarted", "Sum", "started"), search("Runs", "Sum", "ended", hours=24)],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Drift: live inputs and outputs (monitor), batches (runs)",
                left=[
                    live(INPUT_DRIFT, CHAMPION, "live input drift"),
                    live(PREDICTION_DRIFT, CHAMPION, "live prediction drift"),
                    search("DriftDetected", "Sum", "batch drift"),
                ],
                right=[live(DRIFTED_FEATURES, CHAMPION, "drifted features")],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Spend and canaries",
                left=[search("TrainingCostUSD", "Sum", "training cost (USD)", hours=24)],
                right=[
                    search("CanaryPromoted", "Sum", "promoted", hours=24),
                    search("CanaryRolledBack", "Sum", "rolled back", hours=24),
                ],
                width=8,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Endpoint: invocations and errors per variant",
                left=[
                    cloudwatch.Metric(
                        namespace="AWS/SageMaker",
                        metric_name=name,
                        dimensions_map={"EndpointName": endpoint_name, "VariantName": variant},
                        statistic="Sum",
                        period=Duration.minutes(5),
                        label=f"{variant} {name}",
                    )
                    for variant in (CHAMPION, CHALLENGER)
                    for name in ("Invocations", "Invocation5XXErrors")
                ],
                width=24,
            )
        )
