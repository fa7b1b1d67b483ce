"""The local IAM's policy evaluation and its operation -> (action, resource, context) rules (scripts/local_aws/iam.py)."""

from __future__ import annotations

import pytest

from scripts.local_aws.iam import Call, IamRequest, NoAuthorizationRule, evaluate, iam_requests

BUCKET = "arn:aws:s3:::data"


def allow(action, resource, **extra):
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def call(service, operation, **params):
    return Call(service, operation, params, "us-east-1", "123456789012")


def test_wildcard_prefix_grant_matches_its_prefix_and_not_a_neighbouring_one():
    statements = [allow(["s3:GetObject*", "s3:List*"], [BUCKET, f"{BUCKET}/incoming/churn/*"])]
    assert evaluate(statements, IamRequest("s3:GetObject", f"{BUCKET}/incoming/churn/a.csv"))[0]
    assert evaluate(statements, IamRequest("s3:getobjectversion", f"{BUCKET}/incoming/churn/a.csv"))[0]
    assert not evaluate(statements, IamRequest("s3:GetObject", f"{BUCKET}/incoming/churn-eu/a.csv"))[0]
    assert not evaluate(statements, IamRequest("s3:PutObject", f"{BUCKET}/incoming/churn/a.csv"))[0]
    # resources are case-sensitive, `?` is one character, and nothing else is a pattern
    assert not evaluate(statements, IamRequest("s3:GetObject", f"{BUCKET}/INCOMING/churn/a.csv"))[0]
    assert evaluate([allow("s3:GetObject", "arn:aws:s3:::data/a?c")], IamRequest("s3:GetObject", f"{BUCKET}/abc"))[0]
    assert not evaluate([allow("s3:GetObject", "arn:aws:s3:::data/[ab]")], IamRequest("s3:GetObject", f"{BUCKET}/a"))[0]


def test_explicit_deny_wins_over_any_allow():
    statements = [allow("dynamodb:*", "*"), {"Effect": "Deny", "Action": "dynamodb:DeleteItem", "Resource": "*"}]
    assert evaluate(statements, IamRequest("dynamodb:PutItem", "arn:aws:dynamodb:us-east-1:1:table/t"))[0]
    allowed, deciding = evaluate(statements, IamRequest("dynamodb:DeleteItem", "arn:aws:dynamodb:us-east-1:1:table/t"))
    assert not allowed and deciding["Effect"] == "Deny"


def test_not_action_and_not_resource():
    statements = [{"Effect": "Allow", "NotAction": "iam:*", "NotResource": "arn:aws:s3:::secret/*"}]
    assert evaluate(statements, IamRequest("s3:GetObject", f"{BUCKET}/x"))[0]
    assert not evaluate(statements, IamRequest("iam:PassRole", "arn:aws:iam::1:role/r"))[0]
    assert not evaluate(statements, IamRequest("s3:GetObject", "arn:aws:s3:::secret/x"))[0]


def test_conditions_are_evaluated_and_a_missing_key_fails_them():
    metrics = [allow("cloudwatch:PutMetricData", "*", Condition={"StringEquals": {"cloudwatch:namespace": ["Refit"]}})]
    assert evaluate(metrics, IamRequest("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "Refit"}))[0]
    assert not evaluate(metrics, IamRequest("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "Other"}))[0]
    assert not evaluate(metrics, IamRequest("cloudwatch:PutMetricData", "*"))[0]
    passing = [
        allow(
            "iam:PassRole",
            "arn:aws:iam::1:role/sm",
            Condition={"StringLike": {"iam:PassedToService": "sagemaker.*"}},
        )
    ]
    role = "arn:aws:iam::1:role/sm"
    assert evaluate(passing, IamRequest("iam:PassRole", role, {"iam:PassedToService": "sagemaker.amazonaws.com"}))[0]
    assert not evaluate(passing, IamRequest("iam:PassRole", role, {"iam:PassedToService": "lambda.amazonaws.com"}))[0]
    if_exists = [allow("s3:ListBucket", BUCKET, Condition={"StringLikeIfExists": {"s3:prefix": "incoming/*"}})]
    assert evaluate(if_exists, IamRequest("s3:ListBucket", BUCKET))[0]
    assert not evaluate(if_exists, IamRequest("s3:ListBucket", BUCKET, {"s3:prefix": "training/"}))[0]


def test_s3_operations_become_the_actions_and_resources_aws_checks():
    assert iam_requests(call("s3", "ListObjectsV2", Bucket="data", Prefix="incoming/churn/")) == [
        IamRequest("s3:ListBucket", BUCKET, {"s3:prefix": "incoming/churn/"})
    ]
    assert iam_requests(call("s3", "HeadObject", Bucket="data", Key="k")) == [IamRequest("s3:GetObject", f"{BUCKET}/k")]
    assert (
        iam_requests(call("s3", "GetObject", Bucket="data", Key="k", VersionId="v"))[0].action == "s3:GetObjectVersion"
    )
    copy = iam_requests(
        call("s3", "CopyObject", Bucket="data", Key="training/x", CopySource={"Bucket": "data", "Key": "in/x"})
    )
    assert copy == [IamRequest("s3:GetObject", f"{BUCKET}/in/x"), IamRequest("s3:PutObject", f"{BUCKET}/training/x")]
    part = iam_requests(
        call(
            "s3",
            "UploadPartCopy",
            Bucket="art",
            Key="job-data/x",
            PartNumber=1,
            UploadId="u",
            CopySource={"Bucket": "data", "Key": "training/x", "VersionId": "v1"},
        )
    )
    assert part == [
        IamRequest("s3:GetObjectVersion", f"{BUCKET}/training/x"),
        IamRequest("s3:PutObject", "arn:aws:s3:::art/job-data/x"),
    ]


def test_delete_objects_is_authorized_key_by_key():
    many = iam_requests(
        call(
            "s3",
            "DeleteObjects",
            Bucket="data",
            Delete={"Objects": [{"Key": "feedback/churn/pending/a.csv"}, {"Key": "training/x", "VersionId": "v"}]},
        )
    )
    assert many == [
        IamRequest("s3:DeleteObject", f"{BUCKET}/feedback/churn/pending/a.csv"),
        IamRequest("s3:DeleteObjectVersion", f"{BUCKET}/training/x"),
    ]
    policy = [allow("s3:DeleteObject*", f"{BUCKET}/feedback/churn/pending/*")]
    assert evaluate(policy, many[0])[0] and not evaluate(policy, many[1])[0]


def test_sagemaker_calls_name_lower_case_arns_tags_and_the_role_they_pass():
    requests = iam_requests(
        call(
            "sagemaker",
            "CreateModel",
            ModelName="refit-churn--Manual-Run",
            ExecutionRoleArn="arn:aws:iam::123456789012:role/sm",
            PrimaryContainer={},
            Tags=[{"Key": "a", "Value": "b"}],
        )
    )
    arn = "arn:aws:sagemaker:us-east-1:123456789012:model/refit-churn--manual-run"
    assert requests == [
        IamRequest("sagemaker:CreateModel", arn, {"sagemaker:NetworkIsolation": "false"}),
        IamRequest("sagemaker:AddTags", arn),
        IamRequest(
            "iam:PassRole", "arn:aws:iam::123456789012:role/sm", {"iam:PassedToService": "sagemaker.amazonaws.com"}
        ),
    ]
    update = iam_requests(call("sagemaker", "UpdateEndpoint", EndpointName="e", EndpointConfigName="e--c"))
    assert [r.resource.rsplit(":", 1)[-1] for r in update] == ["endpoint/e", "endpoint-config/e--c"]


def test_an_operation_without_a_rule_is_refused_not_waved_through():
    with pytest.raises(NoAuthorizationRule, match="sagemaker DeleteModelPackageGroup"):
        iam_requests(call("sagemaker", "DeleteModelPackageGroup", ModelPackageGroupName="g"))


def test_item_requests_carry_their_partition_key_as_dynamodb_leading_keys():
    """The audit table's grants allow only the model's own items (ForAllValues:StringEquals dynamodb:LeadingKeys):
    the local IAM reads the partition key value from Key, Item or the query's key condition, per the table's schema."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        boto3.client("dynamodb", region_name="us-east-1").create_table(
            TableName="audit",
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
        )
        key = {"pk": {"S": "churn"}, "sk": {"S": "lock"}}
        query = call(
            "dynamodb",
            "Query",
            TableName="audit",
            KeyConditionExpression="#s = :batch AND pk = :model",
            ExpressionAttributeNames={"#s": "sk"},
            ExpressionAttributeValues={":model": {"S": "churn-eu"}, ":batch": {"S": "x"}},
        )
        requests = {
            "GetItem": iam_requests(call("dynamodb", "GetItem", TableName="audit", Key=key)),
            "PutItem": iam_requests(call("dynamodb", "PutItem", TableName="audit", Item={**key, "a": {"N": "1"}})),
            "Query": iam_requests(query),
        }
    assert requests["GetItem"][0].context == {"dynamodb:LeadingKeys": ["churn"]}
    assert requests["PutItem"][0].context == {"dynamodb:LeadingKeys": ["churn"]}
    assert requests["Query"][0].context == {"dynamodb:LeadingKeys": ["churn-eu"]}
    own = [
        allow(
            "dynamodb:Query",
            "arn:aws:dynamodb:us-east-1:123456789012:table/audit",
            Condition={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["churn"]}},
        )
    ]
    assert not evaluate(own, requests["Query"][0])[0]  # churn's role cannot read churn-eu's items


def test_a_listing_deny_on_s3_prefix_spares_the_existence_check_of_a_read():
    """The Lambdas' deny on listing outside their prefixes applies only when the request carries s3:prefix; a read of
    a missing object checks s3:ListBucket without it (and gets 404 rather than 403 on AWS)."""
    statements = [
        allow("s3:List*", BUCKET),
        {
            "Effect": "Deny",
            "Action": ["s3:ListBucket", "s3:ListBucketVersions"],
            "Resource": BUCKET,
            "Condition": {"Null": {"s3:prefix": "false"}, "StringNotLike": {"s3:prefix": ["incoming/churn/*"]}},
        },
    ]
    listing = iam_requests(call("s3", "ListObjectsV2", Bucket="data", Prefix="incoming/churn/"))[0]
    assert evaluate(statements, listing)[0]
    for prefix in ("training/churn/", "incoming/churn-eu/", ""):
        assert not evaluate(statements, IamRequest("s3:ListBucket", BUCKET, {"s3:prefix": prefix}))[0]
    assert evaluate(statements, IamRequest("s3:ListBucket", BUCKET))[0]


def test_sagemaker_create_requests_carry_isolation_key_and_vpc_condition_keys():
    key = "arn:aws:kms:us-east-1:123456789012:key/k"
    vpc = {"Subnets": ["subnet-1", "subnet-2"], "SecurityGroupIds": ["sg-1"]}
    training = {
        "TrainingJobName": "refit-churn--r1",
        "RoleArn": "arn:aws:iam::123456789012:role/sm",
        "ResourceConfig": {"VolumeKmsKeyId": key},
        "OutputDataConfig": {"S3OutputPath": "s3://a/", "KmsKeyId": key},
        "EnableNetworkIsolation": True,
        "VpcConfig": vpc,
    }
    create, passing = iam_requests(call("sagemaker", "CreateTrainingJob", **training))
    assert create.context == {
        "sagemaker:NetworkIsolation": "true",
        "sagemaker:VolumeKmsKey": key,
        "sagemaker:OutputKmsKey": key,
        "sagemaker:VpcSubnets": ["subnet-1", "subnet-2"],
        "sagemaker:VpcSecurityGroupIds": ["sg-1"],
    }
    assert passing.context == {"iam:PassedToService": "sagemaker.amazonaws.com"}
    bare = {k: v for k, v in training.items() if k not in ("EnableNetworkIsolation", "VpcConfig", "ResourceConfig")}
    (create, _) = iam_requests(call("sagemaker", "CreateTrainingJob", **bare))
    assert create.context == {"sagemaker:NetworkIsolation": "false", "sagemaker:OutputKmsKey": key}
    (config,) = iam_requests(call("sagemaker", "CreateEndpointConfig", EndpointConfigName="c", KmsKeyId=key))
    assert config.context == {"sagemaker:NetworkIsolation": "false", "sagemaker:VolumeKmsKey": key}
    # The policy refit's roles carry: isolation, the key, and every subnet one of the VPC's (Null: a VPC at all).
    policy = [
        allow(
            "sagemaker:CreateTrainingJob",
            "*",
            Condition={
                "Bool": {"sagemaker:NetworkIsolation": "true"},
                "ArnEquals": {"sagemaker:VolumeKmsKey": key},
                "ForAllValues:StringEquals": {"sagemaker:VpcSubnets": ["subnet-1", "subnet-2"]},
                "Null": {"sagemaker:VpcSubnets": "false"},
            },
        )
    ]
    (create, _) = iam_requests(call("sagemaker", "CreateTrainingJob", **training))
    assert evaluate(policy, create)[0]
    for changed in (
        {"EnableNetworkIsolation": False},
        {"ResourceConfig": {}},
        {"ResourceConfig": {"VolumeKmsKeyId": "arn:aws:kms:us-east-1:123456789012:key/other"}},
        {"VpcConfig": {"Subnets": ["subnet-1", "subnet-9"], "SecurityGroupIds": ["sg-1"]}},
        {"VpcConfig": None},
    ):
        (create, _) = iam_requests(call("sagemaker", "CreateTrainingJob", **{**training, **changed}))
        assert not evaluate(policy, create)[0], changed


def test_scalable_target_writes_are_scoped_by_namespace_and_dimension_and_registering_needs_the_service_linked_role():
    variants = {
        "StringEquals": {
            "application-autoscaling:service-namespace": "sagemaker",
            "application-autoscaling:scalable-dimension": "sagemaker:variant:DesiredInstanceCount",
        }
    }
    targets = "arn:aws:application-autoscaling:us-east-1:123456789012:scalable-target/*"
    role = (
        "arn:aws:iam::123456789012:role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
        "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
    )
    statements = [
        allow(["application-autoscaling:RegisterScalableTarget"], targets, Condition=variants),
        allow(
            "iam:CreateServiceLinkedRole",
            role,
            Condition={"StringLike": {"iam:AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com"}},
        ),
    ]
    register = iam_requests(
        call(
            "application-autoscaling",
            "RegisterScalableTarget",
            ServiceNamespace="sagemaker",
            ResourceId="endpoint/e/variant/champion",
            ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        )
    )
    assert [r.action for r in register] == [
        "application-autoscaling:RegisterScalableTarget",
        "iam:CreateServiceLinkedRole",
    ]
    assert all(evaluate(statements, r)[0] for r in register)
    table = iam_requests(
        call(
            "application-autoscaling",
            "RegisterScalableTarget",
            ServiceNamespace="dynamodb",
            ResourceId="table/t",
            ScalableDimension="dynamodb:table:ReadCapacityUnits",
        )
    )
    assert [r.action for r in table] == ["application-autoscaling:RegisterScalableTarget"]
    assert not evaluate(statements, table[0])[0]  # another service's target: outside the grant
    assert not evaluate(statements[:1], register[1])[0]  # without the service-linked role grant
