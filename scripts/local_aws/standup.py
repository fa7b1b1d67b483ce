"""Creates the synthesized stack's resources in moto, in dependency order, with real names and ARNs.

moto's own CloudFormation skips or hangs on several resource types refit uses (see local-aws-facts),
so each type refit needs is created here through the ordinary API calls. Types with nothing to create
locally (IAM policies, which the local IAM reads from the template instead; bucket, topic and Lambda resource
policies; CDK's inline helper Lambdas) are recorded as skipped; `LocalFunction` records carry what the Lambda
bridge needs to run a handler in-process, its execution role included.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from scripts.local_aws.cloud_assembly import CloudAssembly, Resolver, creation_order

SKIPPED_TYPES = {
    "AWS::IAM::Policy": "read by the local IAM (scripts/local_aws/iam.py), which authorizes each role's calls against it",
    "AWS::S3::BucketPolicy": "bucket policies are not enforced locally",
    "AWS::SNS::TopicPolicy": "topic policies are not enforced locally",
    "AWS::SQS::QueuePolicy": "queue policies are not enforced locally",
    "AWS::Lambda::Permission": "Lambda resource policies are not enforced locally (EventBridge invokes its targets)",
    "AWS::CDK::Metadata": "metadata only",
}


@dataclass(frozen=True)
class LocalFunction:
    name: str
    arn: str
    role_arn: str
    handler: str
    asset_directory: Path
    environment: dict[str, str]
    memory_mb: int
    timeout_seconds: int


@dataclass
class StoodUpStack:
    resolver: Resolver
    functions: dict[str, LocalFunction] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)


def _short(logical: str) -> str:
    return hashlib.sha256(logical.encode()).hexdigest()[:8]


class StandUp:
    def __init__(self, assembly: CloudAssembly, account: str, region: str) -> None:
        self.assembly = assembly
        self.account = account
        self.region = region
        self.stack = StoodUpStack(
            Resolver(
                pseudo={
                    "AWS::AccountId": account,
                    "AWS::Region": region,
                    "AWS::Partition": "aws",
                    "AWS::URLSuffix": "amazonaws.com",
                    "AWS::StackName": assembly.stack_name,
                    "AWS::StackId": f"arn:aws:cloudformation:{region}:{account}:stack/{assembly.stack_name}/local",
                },
                parameters={"BootstrapVersion": "30"},
            )
        )
        self.clients = {
            name: boto3.client(name, region_name=region)
            for name in (
                "s3",
                "dynamodb",
                "sns",
                "kms",
                "iam",
                "lambda",
                "stepfunctions",
                "events",
                "cloudwatch",
                "sagemaker",
                "logs",
                "sqs",
                "ec2",
            )
        }

    def _arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.region}:{self.account}:{resource}"

    def run(self) -> StoodUpStack:
        resources = self.assembly.resources
        for logical in creation_order(resources):
            resource = resources[logical]
            kind = resource["Type"]
            if kind in SKIPPED_TYPES:
                self.stack.skipped[logical] = SKIPPED_TYPES[kind]
                continue
            properties = self.stack.resolver.resolve(resource.get("Properties", {}))
            creator = getattr(
                self, "_create_" + kind.replace("AWS::", "").replace("Custom::", "custom_").replace("::", "_"), None
            )
            if creator is None:
                raise NotImplementedError(f"{logical}: resource type {kind} is not supported by the local runtime")
            creator(logical, properties)
        self._publish_image_assets()
        for name, output in self.assembly.template.get("Outputs", {}).items():
            self.stack.outputs[name] = self.stack.resolver.resolve(output["Value"])
        return self.stack

    def _publish_image_assets(self) -> None:
        """What `cdk deploy` does with image assets, without building them: each is put in the assets repository
        under its content-hash tag (the manifest names that hash), so DescribeImages answers with a digest."""
        ecr = boto3.client("ecr", region_name=self.region)
        for asset_hash, image in self.assembly.assets.get("dockerImages", {}).items():
            for destination in image["destinations"].values():
                repository = (
                    destination["repositoryName"]
                    .replace("${AWS::AccountId}", self.account)
                    .replace("${AWS::Region}", self.region)
                )
                if repository not in {r["repositoryName"] for r in ecr.describe_repositories()["repositories"]}:
                    ecr.create_repository(repositoryName=repository)
                manifest = {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {
                        "mediaType": "application/vnd.docker.container.image.v1+json",
                        "size": 0,
                        "digest": f"sha256:{asset_hash}",
                    },
                    "layers": [],
                }
                ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=asset_hash)

    def _set(self, logical: str, ref: Any, **attributes: Any) -> None:
        self.stack.resolver.refs[logical] = ref
        self.stack.resolver.attributes[logical] = attributes

    def _create_KMS_Key(self, logical: str, props: dict) -> None:
        key = self.clients["kms"].create_key(Description=props.get("Description", logical))["KeyMetadata"]
        self._set(logical, key["KeyId"], Arn=key["Arn"], KeyId=key["KeyId"])

    def _create_S3_Bucket(self, logical: str, props: dict) -> None:
        name = props.get("BucketName") or f"{self.assembly.stack_name.lower()}-{logical.lower()[:30]}-{_short(logical)}"
        s3 = self.clients["s3"]
        s3.create_bucket(Bucket=name)
        if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        if "BucketEncryption" in props:
            rules = [
                {
                    "ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"],
                    **({"BucketKeyEnabled": rule["BucketKeyEnabled"]} if "BucketKeyEnabled" in rule else {}),
                }
                for rule in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
            ]  # CloudFormation's property name differs from the API's
            s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules})
        if "PublicAccessBlockConfiguration" in props:
            s3.put_public_access_block(
                Bucket=name, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"]
            )
        notifications = props.get("NotificationConfiguration", {})
        unsupported = set(notifications) - {"EventBridgeConfiguration"}
        if unsupported:
            raise NotImplementedError(f"{logical}: bucket notifications {sorted(unsupported)} are not stood up locally")
        if notifications.get("EventBridgeConfiguration", {}).get("EventBridgeEnabled"):
            # CloudFormation's EventBridgeConfiguration {EventBridgeEnabled: true} is the API's empty object.
            s3.put_bucket_notification_configuration(
                Bucket=name, NotificationConfiguration={"EventBridgeConfiguration": {}}
            )
        self._set(logical, name, Arn=f"arn:aws:s3:::{name}", DomainName=f"{name}.s3.amazonaws.com")

    def _create_DynamoDB_Table(self, logical: str, props: dict) -> None:
        name = props.get("TableName") or f"{self.assembly.stack_name}-{logical}"
        table = self.clients["dynamodb"].create_table(
            TableName=name,
            KeySchema=props["KeySchema"],
            AttributeDefinitions=props["AttributeDefinitions"],
            BillingMode=props.get("BillingMode", "PAY_PER_REQUEST"),
        )["TableDescription"]
        self._set(logical, name, Arn=table["TableArn"])

    def _create_SNS_Topic(self, logical: str, props: dict) -> None:
        name = props.get("TopicName") or f"{self.assembly.stack_name}-{logical}"
        arn = self.clients["sns"].create_topic(Name=name)["TopicArn"]
        self._set(logical, arn, TopicArn=arn, TopicName=name)

    def _create_SNS_Subscription(self, logical: str, props: dict) -> None:
        self.stack.skipped[logical] = "e-mail subscriptions are not delivered locally"
        self._set(logical, f"{props['TopicArn']}:local")

    def _create_SQS_Queue(self, logical: str, props: dict) -> None:
        name = props.get("QueueName") or f"{self.assembly.stack_name}-{logical}"[:80]
        url = self.clients["sqs"].create_queue(QueueName=name)["QueueUrl"]
        arn = self._arn("sqs", name)
        self._set(logical, url, Arn=arn, QueueName=name, QueueUrl=url)

    def _create_IAM_Role(self, logical: str, props: dict) -> None:
        name = props.get("RoleName") or f"{logical[:55]}-{_short(logical)}"
        role = self.clients["iam"].create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(props["AssumeRolePolicyDocument"])
        )["Role"]
        self._set(logical, name, Arn=role["Arn"], RoleId=role["RoleId"])

    def _create_Logs_LogGroup(self, logical: str, props: dict) -> None:
        name = props.get("LogGroupName") or f"/refit/local/{logical}"
        self.clients["logs"].create_log_group(logGroupName=name)
        self._set(logical, name, Arn=self._arn("logs", f"log-group:{name}:*"))

    def _create_Lambda_Function(self, logical: str, props: dict) -> None:
        name = props.get("FunctionName") or f"{logical[:55]}-{_short(logical)}"
        code = props["Code"]
        if "ImageUri" not in code:
            # CDK's own inline handlers (custom resources) are not run; a custom resource needs its own stand-up.
            self.stack.skipped[logical] = "CDK inline helper function; its effect is applied by the stand-up"
            self._set(logical, name, Arn=self._arn("lambda", f"function:{name}"))
            return
        environment = props.get("Environment", {}).get("Variables", {})
        response = self.clients["lambda"].create_function(
            FunctionName=name,
            Role=props["Role"],
            Code={"ImageUri": code["ImageUri"]},
            PackageType="Image",
            ImageConfig=props.get("ImageConfig", {}),
            Environment={"Variables": environment},
            MemorySize=props.get("MemorySize", 128),
            Timeout=props.get("Timeout", 3),
            Description=props.get("Description", ""),
        )
        command = props.get("ImageConfig", {}).get("Command") or []
        if len(command) != 1:
            raise ValueError(f"{logical}: expected ImageConfig.Command to name one handler, got {command}")
        self.stack.functions[name] = LocalFunction(
            name=name,
            arn=response["FunctionArn"],
            role_arn=props["Role"],
            handler=command[0],
            asset_directory=self.assembly.image_asset_directory(code["ImageUri"]),
            environment={k: str(v) for k, v in environment.items()},
            memory_mb=props.get("MemorySize", 128),
            timeout_seconds=props.get("Timeout", 3),
        )
        self._set(logical, name, Arn=response["FunctionArn"])

    def _create_Lambda_Url(self, logical: str, props: dict) -> None:
        """A function URL; the local runtime serves it on 127.0.0.1 (scripts/local_aws/function_urls.py)."""
        config = self.clients["lambda"].create_function_url_config(
            FunctionName=props["TargetFunctionArn"],
            AuthType=props["AuthType"],
            **{key: props[key] for key in ("Cors", "InvokeMode") if key in props},
        )
        self._set(logical, config["FunctionArn"], FunctionArn=config["FunctionArn"], FunctionUrl=config["FunctionUrl"])

    def _create_StepFunctions_StateMachine(self, logical: str, props: dict) -> None:
        name = props.get("StateMachineName") or f"{logical[:60]}-{_short(logical)}"
        arn = self.clients["stepfunctions"].create_state_machine(
            name=name, definition=props["DefinitionString"], roleArn=props["RoleArn"]
        )["stateMachineArn"]
        self._set(logical, arn, Arn=arn, Name=name)

    def _create_Events_Rule(self, logical: str, props: dict) -> None:
        name = props.get("Name") or f"{logical[:55]}-{_short(logical)}"
        arguments: dict[str, Any] = {"Name": name, "State": props.get("State", "ENABLED")}
        if "EventPattern" in props:
            arguments["EventPattern"] = json.dumps(props["EventPattern"])
        if "ScheduleExpression" in props:
            arguments["ScheduleExpression"] = props["ScheduleExpression"]
        arn = self.clients["events"].put_rule(**arguments)["RuleArn"]
        targets = [
            {k: v for k, v in t.items() if k in ("Id", "Arn", "RoleArn", "Input", "InputPath")}
            for t in props.get("Targets", [])
        ]
        if targets:
            self.clients["events"].put_targets(Rule=name, Targets=targets)
        self.stack.rules[name] = {
            "arn": arn,
            "schedule": props.get("ScheduleExpression"),
            "targets": targets,
            "pattern": props.get("EventPattern"),
        }
        self._set(logical, name, Arn=arn)

    def _create_CloudWatch_Alarm(self, logical: str, props: dict) -> None:
        name = props.get("AlarmName") or f"{logical}-{_short(logical)}"
        allowed = (
            "AlarmDescription",
            "MetricName",
            "Namespace",
            "Statistic",
            "Period",
            "EvaluationPeriods",
            "Threshold",
            "ComparisonOperator",
            "TreatMissingData",
            "Dimensions",
            "ActionsEnabled",
            "Metrics",
            "AlarmActions",
            "OKActions",
            "InsufficientDataActions",
            "DatapointsToAlarm",
            "ExtendedStatistic",
            "Unit",
        )
        arguments = {k: v for k, v in props.items() if k in allowed}
        self.clients["cloudwatch"].put_metric_alarm(AlarmName=name, **arguments)
        self._set(logical, name, Arn=self._arn("cloudwatch", f"alarm:{name}"))

    def _create_CloudWatch_Dashboard(self, logical: str, props: dict) -> None:
        name = props.get("DashboardName") or f"{logical[:55]}-{_short(logical)}"
        self.clients["cloudwatch"].put_dashboard(DashboardName=name, DashboardBody=props["DashboardBody"])
        self._set(logical, name)

    # The project's VPC for SageMaker (`[network] create = true`, stacks/network.py), so a training job's or model's
    # VpcConfig names subnets and a security group that exist (scripts/local_aws/limits.py checks them).
    def _create_EC2_VPC(self, logical: str, props: dict) -> None:
        vpc = self.clients["ec2"].create_vpc(CidrBlock=props["CidrBlock"])["Vpc"]
        self._set(logical, vpc["VpcId"], VpcId=vpc["VpcId"], CidrBlock=vpc["CidrBlock"])

    def _create_EC2_Subnet(self, logical: str, props: dict) -> None:
        subnet = self.clients["ec2"].create_subnet(
            VpcId=props["VpcId"], CidrBlock=props["CidrBlock"], AvailabilityZone=props["AvailabilityZone"]
        )["Subnet"]
        self._set(logical, subnet["SubnetId"], SubnetId=subnet["SubnetId"], AvailabilityZone=props["AvailabilityZone"])

    def _create_EC2_RouteTable(self, logical: str, props: dict) -> None:
        table = self.clients["ec2"].create_route_table(VpcId=props["VpcId"])["RouteTable"]
        self._set(logical, table["RouteTableId"], RouteTableId=table["RouteTableId"])

    def _create_EC2_SubnetRouteTableAssociation(self, logical: str, props: dict) -> None:
        association = self.clients["ec2"].associate_route_table(
            SubnetId=props["SubnetId"], RouteTableId=props["RouteTableId"]
        )
        self._set(logical, association["AssociationId"])

    def _create_EC2_SecurityGroup(self, logical: str, props: dict) -> None:
        ec2 = self.clients["ec2"]
        group = ec2.create_security_group(
            GroupName=props.get("GroupName") or f"{self.assembly.stack_name}-{logical}"[:255],
            Description=props["GroupDescription"],
            VpcId=props["VpcId"],
        )["GroupId"]
        if "SecurityGroupEgress" in props:  # CloudFormation replaces the default allow-all egress with these rules
            ec2.revoke_security_group_egress(
                GroupId=group, IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
            )
            for rule in props["SecurityGroupEgress"]:
                permission = {"IpProtocol": rule["IpProtocol"], "IpRanges": [{"CidrIp": rule["CidrIp"]}]}
                permission.update({k: rule[k] for k in ("FromPort", "ToPort") if k in rule})
                ec2.authorize_security_group_egress(GroupId=group, IpPermissions=[permission])
        self._set(logical, group, GroupId=group)

    def _create_EC2_VPCEndpoint(self, logical: str, props: dict) -> None:
        endpoint = self.clients["ec2"].create_vpc_endpoint(
            VpcId=props["VpcId"],
            ServiceName=props["ServiceName"],
            VpcEndpointType=props.get("VpcEndpointType", "Gateway"),
            RouteTableIds=props.get("RouteTableIds", []),
            **({"PolicyDocument": json.dumps(props["PolicyDocument"])} if "PolicyDocument" in props else {}),
        )["VpcEndpoint"]
        self._set(logical, endpoint["VpcEndpointId"])

    def _create_EC2_FlowLog(self, logical: str, props: dict) -> None:
        ids = self.clients["ec2"].create_flow_logs(
            ResourceIds=[props["ResourceId"]],
            ResourceType=props["ResourceType"],
            TrafficType=props["TrafficType"],
            LogDestinationType=props.get("LogDestinationType", "cloud-watch-logs"),
            LogGroupName=props["LogGroupName"],
            DeliverLogsPermissionArn=props["DeliverLogsPermissionArn"],
        )["FlowLogIds"]
        self._set(logical, ids[0])  # created; no flow log record is ever delivered locally

    def _create_SageMaker_ModelPackageGroup(self, logical: str, props: dict) -> None:
        name = props["ModelPackageGroupName"]
        arn = self.clients["sagemaker"].create_model_package_group(
            ModelPackageGroupName=name, ModelPackageGroupDescription=props.get("ModelPackageGroupDescription", "")
        )["ModelPackageGroupArn"]
        self._set(logical, name, ModelPackageGroupArn=arn)
