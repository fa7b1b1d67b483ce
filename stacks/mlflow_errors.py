"""The alarm on MLflow logging (`[mlflow]` only): a run whose MLflow sync failed counts one `MlflowErrors`, with the
error in its audit record's `mlflow` field; the run itself ended as Finalize recorded it."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_sns as sns
from constructs import Construct
from refit_core.config import ModelConfig

NAMESPACE = "Refit"  # POWERTOOLS_METRICS_NAMESPACE of every refit Lambda
METRIC = "MlflowErrors"


class MlflowErrorsAlarm(Construct):
    def __init__(
        self, scope: Construct, construct_id: str, *, model: ModelConfig, topic: sns.ITopic, alarm_name: str
    ) -> None:
        super().__init__(scope, construct_id)
        self.alarm = cloudwatch.Alarm(
            self,
            "Alarm",
            alarm_name=alarm_name,
            alarm_description=f"refit {model.name}: a run could not be logged to MLflow (its audit record's `mlflow` "
            "field says why); the run's outcome is unchanged",
            metric=cloudwatch.Metric(
                namespace=NAMESPACE,
                metric_name=METRIC,
                # Powertools adds the function's service name as a dimension (POWERTOOLS_SERVICE_NAME).
                dimensions_map={"Model": model.name, "service": f"refit-{model.name}-mlflowsync"},
                statistic="Sum",
                period=Duration.hours(1),
            ),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.alarm.add_alarm_action(actions.SnsAction(topic))
