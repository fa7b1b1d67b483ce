"""The refit stack: shared storage and SageMaker access, then one pipeline per configured model."""

from __future__ import annotations

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct
from refit_core import names
from refit_core.config import ModelConfig, RefitConfig

from stacks.approvers import ApproverRole
from stacks.guardrails import GuardrailsAlarms
from stacks.mlflow_errors import MlflowErrorsAlarm
from stacks.monitoring import ModelDashboard, MonitorSchedule
from stacks.nag import acknowledge_findings
from stacks.network import SageMakerNetwork
from stacks.retrain_functions import RetrainFunctions
from stacks.retrain_state_machine import RetrainStateMachine
from stacks.run_end import RunEnd
from stacks.sagemaker_access import ModelExecutionRole, SageMakerAccess
from stacks.storage import Storage
from stacks.triggers import Triggers


class ModelPipeline(Construct):
    """Everything one model needs: registry group, Lambdas, state machine, triggers and alarms."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        model: ModelConfig,
        config: RefitConfig,
        storage: Storage,
        sagemaker_access: SageMakerAccess,
        network: SageMakerNetwork,
        code_version: str,
    ) -> None:
        super().__init__(scope, construct_id)
        # Every physical name comes from refit_core.names: `{project}-{model}` and `{project}-{model}--...`.
        prefix = config.prefix(model.name)
        self.endpoint_name = prefix
        # SageMaker writes the endpoint's container logs here (`serve`'s output, a refused model file among them). It
        # would create the group itself, kept forever and unencrypted; made here, it has the project's retention and
        # key. The training jobs' group is shared by the account's jobs and is not made here (README, Security).
        self.endpoint_logs = storage.log_group(self, "EndpointLogs", f"/aws/sagemaker/Endpoints/{self.endpoint_name}")
        canary_alarm_name = names.alarm_name(prefix, "canary")
        quality_alarm_name = names.alarm_name(prefix, "quality")
        self.package_group = sagemaker.CfnModelPackageGroup(
            self,
            "ModelPackageGroup",
            model_package_group_name=prefix,
            model_package_group_description=f"refit challengers for {model.name}, approved and rejected",
        )
        self.execution_role = ModelExecutionRole(
            self, "SageMaker", model=model, name_prefix=prefix, storage=storage, access=sagemaker_access
        )
        self.functions = RetrainFunctions(
            self,
            "Functions",
            model=model,
            storage=storage,
            sagemaker=sagemaker_access,
            execution_role=self.execution_role,
            network=network,
            endpoint_name=self.endpoint_name,
            package_group_name=self.package_group.model_package_group_name,
            canary_alarm_name=canary_alarm_name,
            quality_alarm_name=quality_alarm_name,
            state_machine_name=prefix,
            instance_prices=config.instance_prices_usd_per_hour,
            code_version=code_version,
            serving_prices=config.serving_instance_prices_usd_per_hour,
            mlflow=config.mlflow,
            project=config.project,
            separation_of_duties=config.approval.separation_of_duties,
        )
        self.retrain = RetrainStateMachine(
            self,
            "Retrain",
            model=model,
            functions=self.functions,
            state_machine_name=prefix,
            log_group=storage.log_group(self, "RunLogs"),
        )
        self.triggers = Triggers(
            self,
            "Triggers",
            model=model,
            storage=storage,
            state_machine=self.retrain.state_machine,
            endpoint_name=self.endpoint_name,
            canary_alarm_name=canary_alarm_name,
            quality_alarm_name=quality_alarm_name,
        )
        self.monitor_schedule = MonitorSchedule(
            self,
            "Monitor",
            model=model,
            monitor=self.functions.functions["Monitor"],
            topic=storage.topic,
            alarm_name=names.alarm_name(prefix, "monitor-failed"),
            dead_letters=storage.dead_letters,
        )
        self.run_end = RunEnd(
            self,
            "RunEnd",
            model=model,
            state_machine=self.retrain.state_machine,
            cleanup=self.functions.functions["Cleanup"],
            topic=storage.topic,
            alarm_name=names.alarm_name(prefix, "runs-failed"),
            dead_letters=storage.dead_letters,
        )
        alarms = [self.monitor_schedule.failures, self.triggers.canary_alarm, self.run_end.alarm]
        if model.deploy.mode == "guardrails":
            # The Deploy function reads them for a rollback's reason; SageMaker reads them as the model's role.
            self.guardrails = GuardrailsAlarms(
                self,
                "Guardrails",
                model=model,
                endpoint_name=self.endpoint_name,
                readers=[self.functions.functions["Deploy"], self.execution_role.role],
            )
            alarms += [self.guardrails.errors, self.guardrails.latency]
        self.mlflow_errors = None
        if "MlflowSync" in self.functions.functions:
            self.mlflow_errors = MlflowErrorsAlarm(
                self, "MlflowErrors", model=model, topic=storage.topic, alarm_name=names.alarm_name(prefix, "mlflow")
            )
            alarms.append(self.mlflow_errors.alarm)
        if self.triggers.quality_alarm is not None:
            alarms.insert(0, self.triggers.quality_alarm)
        self.dashboard = ModelDashboard(
            self, "Dashboard", model=model, dashboard_name=prefix, endpoint_name=self.endpoint_name, alarms=alarms
        )
        CfnOutput(self, "StateMachineArn", value=self.retrain.state_machine.state_machine_arn)
        CfnOutput(self, "EndpointName", value=self.endpoint_name)


class RefitStack(Stack):
    def __init__(
        self, scope: Construct, construct_id: str, *, config: RefitConfig, code_version: str, **kwargs
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.storage = Storage(
            self, "Storage", notification_email=config.notification_email, retention=config.retention
        )
        self.sagemaker_access = SageMakerAccess(self, "SageMaker")
        self.network = SageMakerNetwork(self, "Network", settings=config.network, storage=self.storage)
        self.pipelines = {
            model.name: ModelPipeline(
                self,
                f"Model-{model.name}",
                model=model,
                config=config,
                storage=self.storage,
                sagemaker_access=self.sagemaker_access,
                network=self.network,
                code_version=code_version,
            )
            for model in config.models
        }
        self.approvers = ApproverRole(
            self,
            "Approvers",
            settings=config.approval,
            approve_urls={
                name: p.functions.approve_url for name, p in self.pipelines.items() if p.functions.approve_url
            },
        )
        CfnOutput(self, "Project", value=config.project)
        CfnOutput(self, "DataBucket", value=self.storage.data_bucket.bucket_name)
        CfnOutput(self, "ArtifactBucket", value=self.storage.artifact_bucket.bucket_name)
        CfnOutput(self, "AuditTable", value=self.storage.audit_table.table_name)
        CfnOutput(self, "SummaryTopic", value=self.storage.topic.topic_arn)
        acknowledge_findings(self, self.storage, list(self.pipelines.values()))
