"""What happens when a run ends without reaching Finalize, and who hears about failed runs."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct
from refit_core.config import ModelConfig


class RunEnd(Construct):
    """A rule on the state machine's own status-change events sends every TIMED_OUT, ABORTED or FAILED execution to
    the Cleanup Lambda (which leaves runs that reached Finalize alone); an alarm on failed, timed-out or aborted
    executions notifies the summary topic."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        model: ModelConfig,
        state_machine: sfn.StateMachine,
        cleanup: lambda_.IFunction,
        topic: sns.ITopic,
        alarm_name: str,
        dead_letters: sqs.IQueue,
    ) -> None:
        super().__init__(scope, construct_id)
        self.rule = events.Rule(
            self,
            "Ended",
            description=f"refit {model.name}: a run ended TIMED_OUT, ABORTED or FAILED; make sure it has a record",
            event_pattern=events.EventPattern(
                source=["aws.states"],
                detail_type=["Step Functions Execution Status Change"],
                detail={
                    "stateMachineArn": [state_machine.state_machine_arn],
                    "status": ["TIMED_OUT", "ABORTED", "FAILED"],
                },
            ),
            targets=[
                targets.LambdaFunction(
                    cleanup, retry_attempts=8, max_event_age=Duration.hours(24), dead_letter_queue=dead_letters
                )
            ],
        )
        # No FILL(): Step Functions publishes ExecutionsFailed / TimedOut / Aborted only in periods where they happen,
        # and metric math treats a value missing from one series as 0 in arithmetic (over the timestamps any of them
        # has), so one failed run sums to 1; a period where none has data gives no value, which notBreaching treats
        # as OK (tests/integration/test_capture_and_alarm_bridges.py evaluates this alarm).
        failed_runs = cloudwatch.MathExpression(
            expression="failed + timedout + aborted",
            using_metrics={
                "failed": state_machine.metric_failed(period=Duration.minutes(5), statistic="Sum"),
                "timedout": state_machine.metric_timed_out(period=Duration.minutes(5), statistic="Sum"),
                "aborted": state_machine.metric_aborted(period=Duration.minutes(5), statistic="Sum"),
            },
            label="runs failed, timed out or aborted",
            period=Duration.minutes(5),
        )
        self.alarm = cloudwatch.Alarm(
            self,
            "RunsFailed",
            alarm_name=alarm_name,
            alarm_description=f"refit {model.name}: a retrain run failed, timed out or was aborted (see the audit record)",
            metric=failed_runs,
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.alarm.add_alarm_action(actions.SnsAction(topic))
