"""The smaller gaps of a security review, checked on the synthesized template: PassRole only to SageMaker, the
project key only for functions that use it, log groups kept and encrypted without execution data, the audit table
protected, lifecycle rules from refit.toml, and a dead-letter queue and retry policy on every EventBridge target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aws_cdk import App, Stack
from aws_cdk.assertions import Template
from refit_core.config import ConfigError, RetentionSettings, load_config

from stacks.app_builder import cdk_json_context
from stacks.storage import Storage

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def template(cloud_assembly):
    return json.loads((cloud_assembly / "refit.template.json").read_text())


def of_type(template, kind):
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def statements_by_role(template) -> dict[str, list[dict]]:
    """Role logical id -> the statements of its policies."""
    out: dict[str, list[dict]] = {}
    for policy in of_type(template, "AWS::IAM::Policy").values():
        for role in policy["Properties"]["Roles"]:
            out.setdefault(role["Ref"], []).extend(policy["Properties"]["PolicyDocument"]["Statement"])
    return out


def actions(statement) -> list[str]:
    return statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]


def function_roles(template) -> dict[str, str]:
    """Handler name (e.g. 'PollTraining') -> its role's logical id."""
    out = {}
    for function in of_type(template, "AWS::Lambda::Function").values():
        props = function["Properties"]
        if "ImageConfig" in props:
            name = props["Description"].split(": ", 1)[1]
            out[name] = props["Role"]["Fn::GetAtt"][0]
    return out


def key_id(template) -> str:
    (key,) = of_type(template, "AWS::KMS::Key")
    return key


def test_roles_pass_the_sagemaker_role_to_sagemaker_only(template):
    passes = [
        s for statements in statements_by_role(template).values() for s in statements if "iam:PassRole" in actions(s)
    ]
    assert len(passes) == 2  # StartTraining (training jobs) and Deploy (models)
    for statement in passes:
        assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}


def test_only_functions_that_touch_an_encrypted_store_may_use_the_key(template):
    roles = function_roles(template)
    by_role = statements_by_role(template)
    kms_users = {
        name for name, role in roles.items() if any(a.startswith("kms:") for s in by_role[role] for a in actions(s))
    }
    assert "PollTraining" not in kms_users and "Deploy" not in kms_users
    assert kms_users == set(roles) - {"PollTraining", "Deploy"}
    for name in kms_users:
        for statement in by_role[roles[name]]:
            if any(a.startswith("kms:") for a in actions(statement)):
                assert statement["Resource"] == {"Fn::GetAtt": [key_id(template), "Arn"]}


def test_log_groups_are_retained_encrypted_with_the_key_and_kept_a_year(template):
    groups = of_type(template, "AWS::Logs::LogGroup")
    assert len(groups) == 13  # 12 functions and the state machine
    for group in groups.values():
        assert group["DeletionPolicy"] == "Retain" and group["UpdateReplacePolicy"] == "Retain"
        assert group["Properties"]["RetentionInDays"] == 365
        assert group["Properties"]["KmsKeyId"] == {"Fn::GetAtt": [key_id(template), "Arn"]}
    (machine,) = of_type(template, "AWS::StepFunctions::StateMachine").values()
    logging = machine["Properties"]["LoggingConfiguration"]
    assert logging["IncludeExecutionData"] is False and logging["Level"] == "ALL"
    # CloudWatch Logs may use the key only for this account's and region's log groups.
    key_policy = next(iter(of_type(template, "AWS::KMS::Key").values()))["Properties"]["KeyPolicy"]["Statement"]
    (logs,) = [s for s in key_policy if s.get("Sid") == "CloudWatchLogsEncryptsRefitLogGroups"]
    assert "logs." in json.dumps(logs["Principal"])
    assert "kms:EncryptionContext:aws:logs:arn" in logs["Condition"]["ArnLike"]


def test_the_audit_table_is_protected_from_deletion(template):
    (table,) = of_type(template, "AWS::DynamoDB::Table").values()
    assert table["Properties"]["DeletionProtectionEnabled"] is True
    assert table["DeletionPolicy"] == "Retain"


def lifecycle(bucket) -> dict[str, dict]:
    return {rule.get("Prefix", ""): rule for rule in bucket["Properties"]["LifecycleConfiguration"]["Rules"]}


def test_lifecycle_rules_keep_todays_periods_by_default(template):
    buckets = of_type(template, "AWS::S3::Bucket")
    data = lifecycle(next(b for k, b in buckets.items() if k.startswith("StorageData")))
    artifacts = lifecycle(next(b for k, b in buckets.items() if k.startswith("StorageArtifacts")))
    assert data["incoming/"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 90}
    assert "ExpirationInDays" not in data["incoming/"]  # batches are kept: the ledger and lineage name them
    assert data["capture/"]["ExpirationInDays"] == 120
    assert data["feedback/"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert set(data) == {"incoming/", "capture/", "feedback/"}  # nothing expires the training history
    assert artifacts["checkpoints/"]["ExpirationInDays"] == 30
    assert artifacts["job-data/"]["ExpirationInDays"] == 30
    assert artifacts["monitoring/"]["ExpirationInDays"] == 120
    assert artifacts[""]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 90}


def test_lifecycle_and_log_retention_follow_refit_toml():
    stack = Stack(App(context=cdk_json_context()), "s")
    Storage(
        stack,
        "Storage",
        notification_email=None,
        retention=RetentionSettings(incoming_days=400, capture_days=None, monitoring_days=7, log_days=30),
    )
    storage = next(c for c in stack.node.children if isinstance(c, Storage))
    storage.log_group(stack, "Logs")
    template = Template.from_stack(stack).to_json()
    data = lifecycle(next(b for k, b in of_type(template, "AWS::S3::Bucket").items() if k.startswith("StorageData")))
    assert data["incoming/"]["ExpirationInDays"] == 400 and "capture/" not in data
    artifacts = lifecycle(
        next(b for k, b in of_type(template, "AWS::S3::Bucket").items() if k.startswith("StorageArtifacts"))
    )
    assert artifacts["monitoring/"]["ExpirationInDays"] == 7
    (group,) = of_type(template, "AWS::Logs::LogGroup").values()
    assert group["Properties"]["RetentionInDays"] == 30


def test_a_log_retention_cloudwatch_does_not_offer_is_refused(tmp_path):
    config = tmp_path / "refit.toml"
    config.write_text(
        (ROOT / "refit.toml")
        .read_text()
        .replace('project = "refit"', 'project = "refit"\n\n[retention]\nlog_days = 100\n', 1)
    )
    with pytest.raises(ConfigError, match="retention.log_days.*100 is not a CloudWatch Logs retention period"):
        load_config(config)


def test_every_eventbridge_target_has_a_dead_letter_queue_and_a_retry_policy(template):
    ((queue_id, queue),) = of_type(template, "AWS::SQS::Queue").items()
    assert queue["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [key_id(template), "Arn"]}
    targets = [t for rule in of_type(template, "AWS::Events::Rule").values() for t in rule["Properties"]["Targets"]]
    assert len(targets) == 5  # new data, schedule, quality alarm, run end, monitor schedule
    for target in targets:
        assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [queue_id, "Arn"]}}
        assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 2
        assert 3600 <= target["RetryPolicy"]["MaximumEventAgeInSeconds"] <= 86400
    # A message in the queue notifies the team through the summary topic.
    (alarm,) = [
        a["Properties"]
        for a in of_type(template, "AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == "ApproximateNumberOfMessagesVisible"
    ]
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue_id, "QueueName"]}}]
    (topic,) = of_type(template, "AWS::SNS::Topic")
    assert alarm["AlarmActions"] == [{"Ref": topic}] and alarm["Threshold"] == 1
    # EventBridge may send to the queue (queue policy) and use the key (key policy).
    (queue_policy,) = of_type(template, "AWS::SQS::QueuePolicy").values()
    assert any(
        s.get("Principal") == {"Service": "events.amazonaws.com"} and "sqs:SendMessage" in actions(s)
        for s in queue_policy["Properties"]["PolicyDocument"]["Statement"]
    )
    key_policy = next(iter(of_type(template, "AWS::KMS::Key").values()))["Properties"]["KeyPolicy"]["Statement"]
    assert any(s.get("Sid") == "EventBridgeSendsDeadLetters" for s in key_policy)


def test_functions_list_only_the_prefixes_they_read_and_touch_only_their_models_audit_items(template):
    roles = function_roles(template)
    by_role = statements_by_role(template)
    for name, role in roles.items():
        statements = by_role[role]
        lists = [s for s in statements if s["Effect"] == "Allow" and any(a.startswith("s3:List") for a in actions(s))]
        denies = [s for s in statements if s["Effect"] == "Deny"]
        # Every bucket the function may list has a deny on listing outside the prefixes it reads.
        assert len(denies) == len({json.dumps(r) for s in lists for r in s["Resource"] if "Fn::GetAtt" in r}), name
        for deny in denies:
            assert set(actions(deny)) == {"s3:ListBucket", "s3:ListBucketVersions", "s3:ListBucketMultipartUploads"}
            assert deny["Condition"]["Null"] == {"s3:prefix": "false"}
            assert all(p.endswith(("/*", ".json")) for p in deny["Condition"]["StringNotLike"]["s3:prefix"])
        # The model's runs, ledger and lock (partition `churn`); the approval Lambdas its pending approvals only.
        partition = "approval#churn" if name in ("RequestApproval", "ExpireApproval") else "churn"
        for statement in statements:
            if any(a.startswith("dynamodb:") for a in actions(statement)):
                assert statement["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [partition]}}
    monitor = [s for s in by_role[roles["Monitor"]] if s["Effect"] == "Deny"]
    data = next(s for s in monitor if "StorageData" in json.dumps(s["Resource"]))
    assert data["Condition"]["StringNotLike"]["s3:prefix"] == [
        "capture/churn/*",
        "feedback/churn/pending/*",  # the example model has a quality alarm: the monitor re-arms it on new feedback
        "ground-truth/churn/*",
        "labeling/churn/*",
    ]
