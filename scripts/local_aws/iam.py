"""IAM, enforced in the embedded local AWS the way AWS enforces it for refit's calls.

moto 5.2.5's own IAM checks pass the resource as `*` for every service but S3, SQS, IAM and STS, so a statement
scoped to an ARN never matches there, and conditions are barely evaluated. This module authorizes instead every call
an in-process client makes with a role's credentials against the identity policies of that role *as synthesized*
(the template's AWS::IAM::Policy and inline role policies, resolved to the stood-up ARNs):

- each operation refit calls is turned into the IAM requests AWS evaluates for it — action, resource ARN(s) and the
  condition keys refit's policies use (`REQUESTS` below: S3's ListObjectsV2 is `s3:ListBucket` on the bucket with
  `s3:prefix`, a DynamoDB item request carries `dynamodb:LeadingKeys`,
  CopyObject is `s3:GetObject` on the source and `s3:PutObject` on the target, a Create* call with tags also needs
  `sagemaker:AddTags`, passing a role needs `iam:PassRole` with `iam:PassedToService`, SageMaker's create actions
  carry `sagemaker:NetworkIsolation`, `sagemaker:VolumeKmsKey` / `OutputKmsKey` and `sagemaker:VpcSubnets` /
  `VpcSecurityGroupIds` from the request (SAGEMAKER_CONTEXT), SageMaker ARNs are lower case, ...); an operation a role calls that has no entry is refused, so a new call cannot go unchecked;
- a request to a function URL (function_urls.py) is `lambda:InvokeFunctionUrl` with `lambda:FunctionUrlAuthType` and
  `lambda:InvokeFunction` with `lambda:InvokedViaFunctionUrl` (function_url_requests); a direct Invoke carries neither;
- the policy evaluation is IAM's for identity policies: an explicit Deny wins, else an Allow whose Action /
  NotAction, Resource / NotResource (wildcards `*` and `?`; actions case-insensitive) and Condition all match;
  otherwise the implicit deny. Condition operators: String(Not)Equals/Like (+IgnoreCase), ArnEquals/ArnLike, Bool,
  Null, the `IfExists` forms and `ForAnyValue:`/`ForAllValues:`; a key the request does not carry fails the condition.
- a refused call raises the error AWS returns (AccessDenied/AccessDeniedException), naming the role, action and
  resource.

Not evaluated locally, and said so in the README: resource policies (bucket, key, topic policies), KMS key policies
and the KMS permissions S3 and DynamoDB use on the caller's behalf, permission boundaries, SCPs and session policies.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError

Statement = dict[str, Any]


@dataclass(frozen=True)
class IamRequest:
    action: str
    resource: str
    context: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- policy evaluation
def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@functools.lru_cache(maxsize=4096)
def _wildcard(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE if ignore_case else 0)


def _like(pattern: str, value: str, ignore_case: bool = False) -> bool:
    """IAM's wildcard match: `*` any run of characters, `?` one; nothing else is special."""
    return bool(_wildcard(pattern.replace("[", "[[]"), ignore_case).fullmatch(value))


def _condition_holds(operator: str, key: str, expected: Any, context: dict[str, Any]) -> bool:
    if_exists = operator.endswith("IfExists")
    base = operator.removesuffix("IfExists")
    qualifier, _, base = base.rpartition(":")
    if base == "Null":
        present = key in context
        return all((str(e).lower() == "true") != present for e in _as_list(expected))
    if key not in context:
        return if_exists or qualifier == "ForAllValues"
    values = [str(v) for v in _as_list(context[key])]
    expected = [str(e) for e in _as_list(expected)]
    negated = "Not" in base
    kind = base.replace("Not", "")

    def one(value: str) -> bool:
        if kind == "StringEquals":
            hit = value in expected
        elif kind == "StringEqualsIgnoreCase":
            hit = value.lower() in {e.lower() for e in expected}
        elif kind in ("StringLike", "ArnLike", "ArnEquals"):
            hit = any(_like(e, value) for e in expected)
        elif kind == "Bool":
            hit = value.lower() in {e.lower() for e in expected}
        else:
            raise ValueError(f"condition operator {operator} is not evaluated by the local IAM; add it")
        return not hit if negated else hit

    if qualifier == "ForAllValues":
        return all(one(v) for v in values)
    return any(one(v) for v in values)


def _statement_applies(statement: Statement, request: IamRequest) -> bool:
    if "Action" in statement:
        if not any(_like(a, request.action, ignore_case=True) for a in _as_list(statement["Action"])):
            return False
    elif any(_like(a, request.action, ignore_case=True) for a in _as_list(statement.get("NotAction", []))):
        return False
    if "Resource" in statement:
        if not any(_like(r, request.resource) for r in _as_list(statement["Resource"])):
            return False
    elif any(_like(r, request.resource) for r in _as_list(statement.get("NotResource", []))):
        return False
    for operator, keys in (statement.get("Condition") or {}).items():
        for key, expected in keys.items():
            if not _condition_holds(operator, key, expected, request.context):
                return False
    return True


def evaluate(statements: list[Statement], request: IamRequest) -> tuple[bool, Statement | None]:
    """(allowed, the deciding statement): an explicit Deny wins, then any Allow, else the implicit deny."""
    allowing = None
    for statement in statements:
        if not _statement_applies(statement, request):
            continue
        if statement.get("Effect") == "Deny":
            return False, statement
        allowing = allowing or statement
    return allowing is not None, allowing


# ---------------------------------------------------------------- operations -> IAM requests
@dataclass(frozen=True)
class Call:
    service: str  # botocore service name
    operation: str
    params: dict[str, Any]
    region: str
    account: str
    partition: str = "aws"

    def arn(self, service: str, resource: str, region: str | None = None, account: str | None = None) -> str:
        region = self.region if region is None else region
        account = self.account if account is None else account
        return f"arn:{self.partition}:{service}:{region}:{account}:{resource}"

    def sagemaker(self, kind: str, name: str) -> str:
        """SageMaker ARNs carry names in lower case, whatever case the request used."""
        if name.startswith("arn:"):
            return name.lower()
        return self.arn("sagemaker", f"{kind}/{name.lower()}")


def _s3_object(call: Call, bucket: str, key: str) -> str:
    return f"arn:{call.partition}:s3:::{bucket}/{key}"


def _s3_bucket(call: Call, bucket: str) -> str:
    return f"arn:{call.partition}:s3:::{bucket}"


def _s3_get(call: Call) -> list[IamRequest]:
    action = "s3:GetObjectVersion" if call.params.get("VersionId") else "s3:GetObject"
    return [IamRequest(action, _s3_object(call, call.params["Bucket"], call.params["Key"]))]


def _s3_list(action: str) -> Callable[[Call], list[IamRequest]]:
    def requests(call: Call) -> list[IamRequest]:
        context = {"s3:prefix": call.params.get("Prefix", "")}
        return [IamRequest(action, _s3_bucket(call, call.params["Bucket"]), context)]

    return requests


def _s3_copy(call: Call) -> list[IamRequest]:
    source = call.params["CopySource"]
    if isinstance(source, str):
        source_bucket, _, source_key = source.lstrip("/").partition("/")
        source = {"Bucket": source_bucket, "Key": source_key.split("?versionId=")[0]}
    action = "s3:GetObjectVersion" if source.get("VersionId") else "s3:GetObject"
    return [
        IamRequest(action, _s3_object(call, source["Bucket"], source["Key"])),
        IamRequest("s3:PutObject", _s3_object(call, call.params["Bucket"], call.params["Key"])),
    ]


def _s3_delete_many(call: Call) -> list[IamRequest]:
    """DeleteObjects is authorized object by object (s3:DeleteObject, or s3:DeleteObjectVersion for a version). AWS
    reports a refused key in the response's Errors and deletes the rest; here the whole call is refused, which is
    stricter, never looser."""
    bucket = call.params["Bucket"]
    return [
        IamRequest(
            "s3:DeleteObjectVersion" if item.get("VersionId") else "s3:DeleteObject",
            _s3_object(call, bucket, item["Key"]),
        )
        for item in call.params.get("Delete", {}).get("Objects", [])
    ]


def _object(action: str) -> Callable[[Call], list[IamRequest]]:
    return lambda call: [IamRequest(action, _s3_object(call, call.params["Bucket"], call.params["Key"]))]


def _leading_keys(call: Call) -> list[str]:
    """`dynamodb:LeadingKeys`: the partition key values an item request names (Key, Item, or the key condition's
    `pk = :v`), read against the table's key schema in moto. Empty for a request that names none (Scan)."""
    from moto.dynamodb.exceptions import ResourceNotFoundException
    from moto.dynamodb.models import dynamodb_backends

    try:
        hash_key = dynamodb_backends[call.account][call.region].get_table(call.params["TableName"]).hash_key_attr
    except ResourceNotFoundException:  # a table moto does not have: the call itself fails with AWS's error
        return []
    item = call.params.get("Key") or call.params.get("Item")
    if item is not None:
        return [next(iter(item[hash_key].values()))] if hash_key in item else []
    expression = call.params.get("KeyConditionExpression", "")
    names = {v: k for k, v in call.params.get("ExpressionAttributeNames", {}).items()}
    for alias, placeholder in re.findall(r"([#\w]+)\s*=\s*(:\w+)", expression):
        if names.get(hash_key) == alias or alias == hash_key:
            return [next(iter(call.params["ExpressionAttributeValues"][placeholder].values()))]
    return []


def _table(action: str) -> Callable[[Call], list[IamRequest]]:
    def requests(call: Call) -> list[IamRequest]:
        resource = call.arn("dynamodb", f"table/{call.params['TableName']}")
        if call.params.get("IndexName"):
            resource += f"/index/{call.params['IndexName']}"
        leading = _leading_keys(call)
        return [IamRequest(action, resource, {"dynamodb:LeadingKeys": leading} if leading else {})]

    return requests


def _sagemaker(action: str, *named: tuple[str, str]) -> Callable[[Call], list[IamRequest]]:
    """`named`: (request parameter, ARN resource type) pairs; the action applies to each resource named. With Tags,
    AWS also requires sagemaker:AddTags on the resource created."""

    def requests(call: Call) -> list[IamRequest]:
        out = [
            IamRequest(action, call.sagemaker(kind, call.params[param]))
            for param, kind in named
            if param in call.params
        ]
        if call.params.get("Tags") and out:
            out.append(IamRequest("sagemaker:AddTags", out[0].resource))
        return out

    return requests


def _network_isolation(call: Call) -> dict[str, Any]:
    return {"sagemaker:NetworkIsolation": "true" if call.params.get("EnableNetworkIsolation") else "false"}


def _vpc(call: Call) -> dict[str, Any]:
    vpc = call.params.get("VpcConfig") or {}
    keys = {"Subnets": "sagemaker:VpcSubnets", "SecurityGroupIds": "sagemaker:VpcSecurityGroupIds"}
    return {key: list(vpc[member]) for member, key in keys.items() if vpc.get(member)}


def _present(**keys: Any) -> dict[str, Any]:
    return {key: value for key, value in keys.items() if value}


# The request condition keys of SageMaker's create actions refit's policies use, read from the request as AWS reads
# them (Service Authorization Reference: which keys each action supports). A key the request does not carry is
# absent, so a condition on it fails (or, under `Null`, holds).
SAGEMAKER_CONTEXT: dict[str, Callable[[Call], dict[str, Any]]] = {
    "sagemaker:CreateTrainingJob": lambda call: {
        **_network_isolation(call),
        **_vpc(call),
        **_present(
            **{
                "sagemaker:VolumeKmsKey": (call.params.get("ResourceConfig") or {}).get("VolumeKmsKeyId"),
                "sagemaker:OutputKmsKey": (call.params.get("OutputDataConfig") or {}).get("KmsKeyId"),
            }
        ),
    },
    "sagemaker:CreateModel": lambda call: {**_network_isolation(call), **_vpc(call)},
    "sagemaker:CreateEndpointConfig": lambda call: {
        **_network_isolation(call),
        **_vpc(call),
        **_present(**{"sagemaker:VolumeKmsKey": call.params.get("KmsKeyId")}),
    },
}


def _with_request_keys(inner: Callable[[Call], list[IamRequest]]) -> Callable[[Call], list[IamRequest]]:
    """The create action's IAM request with its request condition keys (SAGEMAKER_CONTEXT); the other requests of
    the call (AddTags, PassRole) carry none of them."""

    def requests(call: Call) -> list[IamRequest]:
        out = []
        for request in inner(call):
            context = SAGEMAKER_CONTEXT.get(request.action)
            out.append(
                IamRequest(request.action, request.resource, {**request.context, **context(call)})
                if context
                else request
            )
        return out

    return requests


def _passes_role(parameter: str, service: str, inner: Callable[[Call], list[IamRequest]]) -> Callable:
    def requests(call: Call) -> list[IamRequest]:
        return inner(call) + [IamRequest("iam:PassRole", call.params[parameter], {"iam:PassedToService": service})]

    return requests


def _everything(action: str, **context_from_params: str) -> Callable[[Call], list[IamRequest]]:
    """Actions with no resource-level permissions: IAM evaluates them against `*`."""

    def requests(call: Call) -> list[IamRequest]:
        context = {key: call.params[param] for key, param in context_from_params.items() if param in call.params}
        return [IamRequest(action, "*", context)]

    return requests


def _by_arn(action: str, parameter: str) -> Callable[[Call], list[IamRequest]]:
    return lambda call: [IamRequest(action, call.params[parameter])]


def _model_package(action: str) -> Callable[[Call], list[IamRequest]]:
    def requests(call: Call) -> list[IamRequest]:
        name = call.params.get("ModelPackageName") or call.params["ModelPackageArn"]
        return [IamRequest(action, call.sagemaker("model-package", name))]

    return requests


def _alarms(call: Call) -> list[IamRequest]:
    names = call.params.get("AlarmNames") or []
    if not names:
        return [IamRequest("cloudwatch:DescribeAlarms", call.arn("cloudwatch", "alarm:*"))]
    return [IamRequest("cloudwatch:DescribeAlarms", call.arn("cloudwatch", f"alarm:{name}")) for name in names]


SAGEMAKER_AUTOSCALING_ROLE = (
    "role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
    "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
)


def _scalable_target(action: str) -> Callable[[Call], list[IamRequest]]:
    """Application Auto Scaling authorizes writes on the scalable target's ARN, `scalable-target/<id>` with an id the
    service assigns (so a policy names `scalable-target/*`), with the condition keys service-namespace and
    scalable-dimension. Registering the first SageMaker target creates the service-linked role, which needs
    iam:CreateServiceLinkedRole for that service (required here on every registration: the stricter reading)."""

    def requests(call: Call) -> list[IamRequest]:
        context = {"application-autoscaling:service-namespace": call.params["ServiceNamespace"]}
        if "ScalableDimension" in call.params:
            context["application-autoscaling:scalable-dimension"] = call.params["ScalableDimension"]
        target_id = hashlib.sha256(call.params["ResourceId"].encode()).hexdigest()[:32]
        out = [IamRequest(action, call.arn("application-autoscaling", f"scalable-target/{target_id}"), context)]
        if (
            action == "application-autoscaling:RegisterScalableTarget"
            and call.params["ServiceNamespace"] == "sagemaker"
        ):
            out.append(
                IamRequest(
                    "iam:CreateServiceLinkedRole",
                    call.arn("iam", SAGEMAKER_AUTOSCALING_ROLE, region=""),
                    {"iam:AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com"},
                )
            )
        return out

    return requests


REQUESTS: dict[tuple[str, str], Callable[[Call], list[IamRequest]]] = {
    ("s3", "GetObject"): _s3_get,
    ("s3", "HeadObject"): _s3_get,
    ("s3", "PutObject"): _object("s3:PutObject"),
    ("s3", "CreateMultipartUpload"): _object("s3:PutObject"),
    ("s3", "UploadPart"): _object("s3:PutObject"),
    ("s3", "CompleteMultipartUpload"): _object("s3:PutObject"),
    ("s3", "DeleteObject"): _object("s3:DeleteObject"),
    ("s3", "DeleteObjects"): _s3_delete_many,
    ("s3", "CopyObject"): _s3_copy,
    ("s3", "UploadPartCopy"): _s3_copy,  # a copy over 5 GiB, part by part (refit_core.window pins such batches)
    ("s3", "ListObjectsV2"): _s3_list("s3:ListBucket"),
    ("s3", "ListObjects"): _s3_list("s3:ListBucket"),
    ("s3", "ListObjectVersions"): _s3_list("s3:ListBucketVersions"),
    ("s3", "HeadBucket"): _s3_list("s3:ListBucket"),
    ("dynamodb", "GetItem"): _table("dynamodb:GetItem"),
    ("dynamodb", "PutItem"): _table("dynamodb:PutItem"),
    ("dynamodb", "UpdateItem"): _table("dynamodb:UpdateItem"),
    ("dynamodb", "DeleteItem"): _table("dynamodb:DeleteItem"),
    ("dynamodb", "Query"): _table("dynamodb:Query"),
    ("dynamodb", "Scan"): _table("dynamodb:Scan"),
    ("sns", "Publish"): _by_arn("sns:Publish", "TopicArn"),
    ("sagemaker", "CreateTrainingJob"): _passes_role(
        "RoleArn",
        "sagemaker.amazonaws.com",
        _with_request_keys(_sagemaker("sagemaker:CreateTrainingJob", ("TrainingJobName", "training-job"))),
    ),
    ("sagemaker", "DescribeTrainingJob"): _sagemaker(
        "sagemaker:DescribeTrainingJob", ("TrainingJobName", "training-job")
    ),
    ("sagemaker", "StopTrainingJob"): _sagemaker("sagemaker:StopTrainingJob", ("TrainingJobName", "training-job")),
    ("sagemaker", "CreateModel"): _passes_role(
        "ExecutionRoleArn",
        "sagemaker.amazonaws.com",
        _with_request_keys(_sagemaker("sagemaker:CreateModel", ("ModelName", "model"))),
    ),
    ("sagemaker", "DescribeModel"): _sagemaker("sagemaker:DescribeModel", ("ModelName", "model")),
    ("sagemaker", "DeleteModel"): _sagemaker("sagemaker:DeleteModel", ("ModelName", "model")),
    ("sagemaker", "CreateEndpointConfig"): _with_request_keys(
        _sagemaker("sagemaker:CreateEndpointConfig", ("EndpointConfigName", "endpoint-config"))
    ),
    ("sagemaker", "DescribeEndpointConfig"): _sagemaker(
        "sagemaker:DescribeEndpointConfig", ("EndpointConfigName", "endpoint-config")
    ),
    ("sagemaker", "DeleteEndpointConfig"): _sagemaker(
        "sagemaker:DeleteEndpointConfig", ("EndpointConfigName", "endpoint-config")
    ),
    ("sagemaker", "CreateEndpoint"): _sagemaker(
        "sagemaker:CreateEndpoint", ("EndpointName", "endpoint"), ("EndpointConfigName", "endpoint-config")
    ),
    ("sagemaker", "UpdateEndpoint"): _sagemaker(
        "sagemaker:UpdateEndpoint", ("EndpointName", "endpoint"), ("EndpointConfigName", "endpoint-config")
    ),
    ("sagemaker", "DescribeEndpoint"): _sagemaker("sagemaker:DescribeEndpoint", ("EndpointName", "endpoint")),
    ("sagemaker", "DeleteEndpoint"): _sagemaker("sagemaker:DeleteEndpoint", ("EndpointName", "endpoint")),
    ("sagemaker", "UpdateEndpointWeightsAndCapacities"): _sagemaker(
        "sagemaker:UpdateEndpointWeightsAndCapacities", ("EndpointName", "endpoint")
    ),
    ("sagemaker", "CreateModelPackage"): _sagemaker(
        "sagemaker:CreateModelPackage", ("ModelPackageGroupName", "model-package-group")
    ),
    ("sagemaker", "DescribeModelPackage"): _model_package("sagemaker:DescribeModelPackage"),
    ("sagemaker", "UpdateModelPackage"): _model_package("sagemaker:UpdateModelPackage"),
    ("sagemaker", "ListModelPackages"): _everything("sagemaker:ListModelPackages"),
    ("sagemaker", "ListTrainingJobs"): _everything("sagemaker:ListTrainingJobs"),
    ("sagemaker", "AddTags"): _by_arn("sagemaker:AddTags", "ResourceArn"),
    ("sagemaker", "ListTags"): _by_arn("sagemaker:ListTags", "ResourceArn"),
    ("sagemaker-runtime", "InvokeEndpoint"): lambda call: [
        IamRequest("sagemaker:InvokeEndpoint", call.sagemaker("endpoint", call.params["EndpointName"]))
    ],
    ("cloudwatch", "PutMetricData"): _everything("cloudwatch:PutMetricData", **{"cloudwatch:namespace": "Namespace"}),
    ("cloudwatch", "GetMetricStatistics"): _everything("cloudwatch:GetMetricStatistics"),
    ("cloudwatch", "GetMetricData"): _everything("cloudwatch:GetMetricData"),
    ("cloudwatch", "DescribeAlarms"): _alarms,
    ("cloudwatch", "SetAlarmState"): lambda call: [
        IamRequest("cloudwatch:SetAlarmState", call.arn("cloudwatch", f"alarm:{call.params['AlarmName']}"))
    ],
    ("ecr", "DescribeImages"): lambda call: [
        IamRequest(
            "ecr:DescribeImages",
            call.arn("ecr", f"repository/{call.params['repositoryName']}", account=call.params.get("registryId")),
        )
    ],
    ("stepfunctions", "SendTaskSuccess"): _everything("states:SendTaskSuccess"),
    ("stepfunctions", "SendTaskFailure"): _everything("states:SendTaskFailure"),
    ("stepfunctions", "SendTaskHeartbeat"): _everything("states:SendTaskHeartbeat"),
    ("stepfunctions", "StartExecution"): _by_arn("states:StartExecution", "stateMachineArn"),
    ("stepfunctions", "DescribeExecution"): _by_arn("states:DescribeExecution", "executionArn"),
    ("stepfunctions", "GetExecutionHistory"): _by_arn("states:GetExecutionHistory", "executionArn"),
    ("stepfunctions", "ListExecutions"): _by_arn("states:ListExecutions", "stateMachineArn"),
    ("lambda", "Invoke"): lambda call: [
        IamRequest(
            "lambda:InvokeFunction",
            call.params["FunctionName"]
            if call.params["FunctionName"].startswith("arn:")
            else call.arn("lambda", f"function:{call.params['FunctionName']}"),
        )
    ],
    ("events", "PutEvents"): lambda call: [
        IamRequest("events:PutEvents", call.arn("events", f"event-bus/{entry.get('EventBusName', 'default')}"))
        for entry in call.params["Entries"]
    ],
    ("sts", "GetCallerIdentity"): lambda call: [],  # needs no permission
    ("application-autoscaling", "RegisterScalableTarget"): _scalable_target(
        "application-autoscaling:RegisterScalableTarget"
    ),
    ("application-autoscaling", "DeregisterScalableTarget"): _scalable_target(
        "application-autoscaling:DeregisterScalableTarget"
    ),
    ("application-autoscaling", "PutScalingPolicy"): _scalable_target("application-autoscaling:PutScalingPolicy"),
    ("application-autoscaling", "DescribeScalableTargets"): _everything(
        "application-autoscaling:DescribeScalableTargets"
    ),
}


def function_url_requests(function_arn: str, auth_type: str) -> list[IamRequest]:
    """What IAM evaluates for a request to a function URL with AuthType AWS_IAM: lambda:InvokeFunctionUrl with the
    URL's `lambda:FunctionUrlAuthType`, and (function URLs created since October 2025 require both) lambda:InvokeFunction
    with `lambda:InvokedViaFunctionUrl` = true. A direct Invoke (REQUESTS) carries no such key, so a grant conditioned
    on it never allows one."""
    return [
        IamRequest("lambda:InvokeFunctionUrl", function_arn, {"lambda:FunctionUrlAuthType": auth_type}),
        IamRequest("lambda:InvokeFunction", function_arn, {"lambda:InvokedViaFunctionUrl": "true"}),
    ]


class NoAuthorizationRule(KeyError):
    """An operation a role called that this module does not know how to authorize (add it to REQUESTS)."""


def iam_requests(call: Call) -> list[IamRequest]:
    rule = REQUESTS.get((call.service, call.operation))
    if rule is None:
        raise NoAuthorizationRule(
            f"local IAM: no rule for {call.service} {call.operation}; add its action and resource to "
            "scripts/local_aws/iam.py REQUESTS"
        )
    return rule(call)


# ---------------------------------------------------------------- principals and enforcement
@dataclass
class Principal:
    role_arn: str
    statements: list[Statement]
    session: str

    @property
    def assumed_role_arn(self) -> str:
        account = self.role_arn.split(":")[4]
        return f"arn:aws:sts::{account}:assumed-role/{self.role_arn.rsplit('/', 1)[-1]}/{self.session}"


@dataclass
class Decision:
    principal: str
    service: str
    operation: str
    request: IamRequest
    allowed: bool
    statement: Statement | None


class LocalIam:
    """Credentials for roles, and the check every in-process client's call goes through while installed."""

    def __init__(self, account: str, partition: str = "aws") -> None:
        self.account = account
        self.partition = partition
        self.policies: dict[str, list[Statement]] = {}
        self.by_access_key: dict[str, Principal] = {}
        self.decisions: list[Decision] = []
        self._lock = threading.Lock()
        self._original: Callable | None = None

    def credentials_for(self, role_arn: str, session: str, sts: Any) -> dict[str, str]:
        """Temporary credentials of `role_arn`, as the Lambda service or SageMaker obtains them (STS AssumeRole)."""
        if role_arn not in self.policies:
            raise KeyError(f"local IAM: {role_arn} is not a role of the stood-up stack")
        credentials = sts.assume_role(RoleArn=role_arn, RoleSessionName=session[:64])["Credentials"]
        with self._lock:
            self.by_access_key[credentials["AccessKeyId"]] = Principal(role_arn, self.policies[role_arn], session)
        return {
            "aws_access_key_id": credentials["AccessKeyId"],
            "aws_secret_access_key": credentials["SecretAccessKey"],
            "aws_session_token": credentials["SessionToken"],
        }

    def authorize(self, client: BaseClient, operation: str, params: dict[str, Any]) -> None:
        credentials = client._request_signer._credentials
        access_key = credentials.get_frozen_credentials().access_key if credentials is not None else None
        principal = self.by_access_key.get(access_key)
        if principal is None:
            return  # the host (tests, stand-up, demo, CLI) acts as the account's administrator
        service = client.meta.service_model.service_name
        call = Call(service, operation, params, client.meta.region_name, self.account, self.partition)
        try:
            requests = iam_requests(call)
        except NoAuthorizationRule as error:
            raise self._denied(client, operation, str(error.args[0])) from None
        refused = self.check(principal, service, operation, requests)
        if refused is not None:
            raise self._denied(client, operation, refused)

    def check(self, principal: Principal, service: str, operation: str, requests: list[IamRequest]) -> str | None:
        """Evaluate `requests` against the principal's policies, recording each decision; the message AWS gives for
        the first one refused, or None when all are allowed."""
        for request in requests:
            allowed, statement = evaluate(principal.statements, request)
            with self._lock:
                self.decisions.append(Decision(principal.role_arn, service, operation, request, allowed, statement))
            if not allowed:
                why = (
                    "an explicit deny in an identity-based policy"
                    if statement
                    else "no identity-based policy allows it"
                )
                return (
                    f"User: {principal.assumed_role_arn} is not authorized to perform: {request.action} on resource: "
                    f"{request.resource} because {why} (local IAM, {service} {operation})"
                )
        return None

    def principal_of_session(self, assumed_role_arn: str) -> Principal | None:
        """The stood-up role an STS assumed-role ARN (`arn:aws:sts::<account>:assumed-role/<role>/<session>`) is a
        session of, with that role's synthesized policies; None for a role the stack does not define."""
        resource = assumed_role_arn.split(":", 5)[-1]
        if not resource.startswith("assumed-role/"):
            return None
        role_name, _, session = resource.removeprefix("assumed-role/").rpartition("/")
        role_arn = next((arn for arn in self.policies if arn.rsplit("/", 1)[-1] == role_name), None)
        return None if role_arn is None else Principal(role_arn, self.policies[role_arn], session)

    @staticmethod
    def _denied(client: BaseClient, operation: str, message: str) -> ClientError:
        service = client.meta.service_model.service_name
        code = "AccessDenied" if service in ("s3", "iam", "sts", "sns", "cloudwatch") else "AccessDeniedException"
        return ClientError(
            {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": 403}}, operation
        )

    def install(self) -> None:
        original = BaseClient._make_api_call
        local_iam = self

        def make_api_call(client: BaseClient, operation_name: str, api_params: dict[str, Any]) -> Any:
            local_iam.authorize(client, operation_name, api_params)
            return original(client, operation_name, api_params)

        self._original = original
        BaseClient._make_api_call = make_api_call

    def uninstall(self) -> None:
        if self._original is not None:
            BaseClient._make_api_call = self._original
            self._original = None

    def wildcard_grants(self) -> list[Decision]:
        """Allowed calls decided by a statement whose Resource is `*`, for review."""
        return [
            d
            for d in self.decisions
            if d.allowed and d.statement is not None and "*" in _as_list(d.statement.get("Resource", []))
        ]


def role_policies(
    template: dict[str, Any], resolve: Callable[[Any], Any], role_arn_of: Callable[[str], str]
) -> dict[str, list[Statement]]:
    """Every role's identity-policy statements as synthesized: AWS::IAM::Policy documents attached to it and its
    inline Policies, with intrinsics resolved to the stood-up values. `role_arn_of(logical id)` -> the role's ARN.
    Managed policies are not read: no role refit synthesizes has one (a test checks the template)."""
    resources = template["Resources"]
    roles = {logical for logical, r in resources.items() if r["Type"] == "AWS::IAM::Role"}
    by_name = {}
    policies: dict[str, list[Statement]] = {}
    for logical in roles:
        arn = role_arn_of(logical)
        by_name[arn.rsplit("/", 1)[-1]] = arn
        policies[arn] = []
        for inline in resources[logical].get("Properties", {}).get("Policies", []):
            policies[arn].extend(_as_list(resolve(inline["PolicyDocument"])["Statement"]))
    for resource in resources.values():
        if resource["Type"] != "AWS::IAM::Policy":
            continue
        properties = resolve(resource["Properties"])
        statements = _as_list(properties["PolicyDocument"]["Statement"])
        for role in properties.get("Roles", []):
            policies[by_name.get(role, role)].extend(statements)
    return policies
