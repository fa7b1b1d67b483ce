"""deploy.mode guardrails: the CloudWatch alarms SageMaker watches during a guarded update of the model's endpoint,
and who may read them. Refuses at synth what deployment guardrails cannot serve (refit_core.guardrails.refusals)."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from constructs import Construct
from refit_core.canary import CHAMPION
from refit_core.config import ConfigError, ModelConfig
from refit_core.guardrails import alarm_names, refusals


class GuardrailsNotServable(ConfigError):
    """The model's configuration asks for deployment guardrails on an endpoint they cannot guard."""


class GuardrailsAlarms(Construct):
    """The rollback alarms of the endpoint's one variant (`champion`; during a blue/green update both fleets report
    under it): any 5XX burst of `max_5xx_per_minute` in a minute, and mean ModelLatency over `max_model_latency_ms`
    in a minute. Missing data does not breach (a quiet bake rolls nothing back: guardrails judge only what traffic
    comes). SageMaker and the Deploy function read them (cloudwatch:DescribeAlarms on these two alarms only)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        model: ModelConfig,
        endpoint_name: str,
        readers: list[iam.IGrantable],
    ) -> None:
        reasons = refusals(model)
        if reasons:
            raise GuardrailsNotServable(f"model {model.name}: deploy.mode 'guardrails' refused: " + "; ".join(reasons))
        super().__init__(scope, construct_id)
        settings = model.deploy.guardrails
        errors_name, latency_name = alarm_names(endpoint_name)
        dimensions = {"EndpointName": endpoint_name, "VariantName": CHAMPION}
        self.errors = self._alarm(
            "Errors",
            errors_name,
            f"refit {model.name}: 5XX during a guarded endpoint update (SageMaker rolls it back)",
            dimensions,
            metric_name="Invocation5XXErrors",
            statistic="Sum",
            threshold=settings.max_5xx_per_minute,
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        )
        self.latency = self._alarm(
            "Latency",
            latency_name,
            f"refit {model.name}: slow model during a guarded endpoint update (SageMaker rolls it back)",
            dimensions,
            metric_name="ModelLatency",
            statistic="Average",
            threshold=settings.max_model_latency_ms * 1000,  # SageMaker reports ModelLatency in microseconds
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        )
        stack = Stack.of(self)
        read = iam.PolicyStatement(
            actions=["cloudwatch:DescribeAlarms"],
            resources=[
                f"arn:{stack.partition}:cloudwatch:{stack.region}:{stack.account}:alarm:{name}"
                for name in (errors_name, latency_name)
            ],
        )
        for reader in readers:
            reader.grant_principal.add_to_principal_policy(read)

    def _alarm(
        self,
        construct_id: str,
        name: str,
        description: str,
        dimensions: dict[str, str],
        *,
        metric_name: str,
        statistic: str,
        threshold: float,
        comparison: cloudwatch.ComparisonOperator,
    ) -> cloudwatch.Alarm:
        """One rollback alarm on the endpoint variant's SageMaker metric, a minute at a time; missing data does not
        breach (SageMaker's own rule: a quiet bake rolls nothing back)."""
        return cloudwatch.Alarm(
            self,
            construct_id,
            alarm_name=name,
            alarm_description=description,
            metric=cloudwatch.Metric(
                namespace="AWS/SageMaker",
                metric_name=metric_name,
                dimensions_map=dimensions,
                period=Duration.minutes(1),
                statistic=statistic,
            ),
            threshold=threshold,
            comparison_operator=comparison,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
