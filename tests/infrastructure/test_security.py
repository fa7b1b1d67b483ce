"""A security review, checked on the synthesized template: one SageMaker role per model that reaches nothing of
another model and may not overwrite or delete what a run relies on, PassRole only to SageMaker, the project key only
for functions that use it, log groups kept and encrypted without execution data, the audit table protected,
lifecycle rules from refit.toml, and a dead-letter queue and retry policy on every EventBridge target."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from aws_cdk import App, Stack
from aws_cdk.assertions import Template
from refit_core.config import ConfigError, RetentionSettings, load_config

from scripts.local_aws.iam import IamRequest, evaluate
from stacks.app_builder import cdk_json_context
from stacks.storage import KEY_READ, Storage

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
    assert "PollTraining" not in kms_users
    assert kms_users == set(roles) - {"PollTraining"}
    # Deploy decrypts (the canary's divergence check and the shadow's comparison read captured outputs, which Data
    # Capture encrypts with the project key) and may let SageMaker grant itself the key for an endpoint's volumes
    # (CreateEndpoint / UpdateEndpoint on a config with KmsKeyId), as Cleanup may when it restores one.
    deploy_grants = [s for s in by_role[roles["Deploy"]] if actions(s) == ["kms:CreateGrant"]]
    deploy_kms = {a for s in by_role[roles["Deploy"]] for a in actions(s) if a.startswith("kms:")}
    assert deploy_kms - {"kms:CreateGrant"} and deploy_kms - {"kms:CreateGrant"} <= set(KEY_READ), deploy_kms
    cleanup_grants = [s for s in by_role[roles["Cleanup"]] if actions(s) == ["kms:CreateGrant"]]
    assert len(deploy_grants) == 1 and len(cleanup_grants) == 1
    for grant in deploy_grants + cleanup_grants:
        assert grant["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}
        assert "sagemaker." in json.dumps(grant["Condition"]["StringEquals"]["kms:ViaService"])
    for name in kms_users:
        for statement in by_role[roles[name]]:
            if any(a.startswith("kms:") for a in actions(statement)):
                assert statement["Resource"] == {"Fn::GetAtt": [key_id(template), "Arn"]}


def test_log_groups_are_retained_encrypted_with_the_key_and_kept_a_year(template):
    groups = of_type(template, "AWS::Logs::LogGroup")
    assert len(groups) == 14  # 12 functions, the state machine and SageMaker's endpoint logs
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


def test_sagemakers_endpoint_log_group_is_the_stacks_and_its_shared_training_group_is_not(two_models):
    """SageMaker writes an endpoint's container logs to /aws/sagemaker/Endpoints/<endpoint>, creating the group
    (kept forever, unencrypted) if it does not exist: each model's is made by the stack, with the project's retention
    and key. /aws/sagemaker/TrainingJobs is shared by every training job of the account and region: never made here
    (a second stack would collide with it; README, Security)."""
    named = {
        group["Properties"].get("LogGroupName"): group for group in of_type(two_models, "AWS::Logs::LogGroup").values()
    }
    sagemaker = {name: group for name, group in named.items() if name and name.startswith("/aws/sagemaker/")}
    assert set(sagemaker) == {"/aws/sagemaker/Endpoints/other-churn", "/aws/sagemaker/Endpoints/other-churn-eu"}
    for group in sagemaker.values():
        assert group["DeletionPolicy"] == "Retain" and group["Properties"]["RetentionInDays"] == 365
        assert group["Properties"]["KmsKeyId"] == {"Fn::GetAtt": [key_id(two_models), "Arn"]}
    # The key policy lets CloudWatch Logs use the key for any log group of this account and region: these included.
    key_policy = next(iter(of_type(two_models, "AWS::KMS::Key").values()))["Properties"]["KeyPolicy"]["Statement"]
    (logs,) = [s for s in key_policy if s.get("Sid") == "CloudWatchLogsEncryptsRefitLogGroups"]
    pattern = resolve(logs["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"], two_models)
    assert pattern == "arn:aws:logs:us-east-1:123456789012:log-group:*"
    # Each model's SageMaker role writes its own endpoint's group only (and its jobs' streams of the shared one).
    for model, role in sagemaker_roles(two_models).items():
        groups = {
            r
            for s in resolved_statements(two_models, role)
            if "logs:PutLogEvents" in actions(s)
            for r in as_list(s["Resource"])
        }
        assert {g.split(":log-group:")[1].split(":")[0] for g in groups} == {
            "/aws/sagemaker/TrainingJobs",
            f"/aws/sagemaker/Endpoints/other-{model}",
        }, groups


def test_no_cdk_helper_lambda_exists_s3_sends_events_to_eventbridge_from_the_bucket_itself(template):
    """The data bucket's S3 -> EventBridge delivery is the bucket's own NotificationConfiguration: no
    Custom::S3BucketNotifications and no CDK handler Lambda (whose log group would have no retention and no key), and
    no role with a managed policy (the local IAM reads inline and attached policies only)."""
    assert not of_type(template, "Custom::S3BucketNotifications")
    functions = of_type(template, "AWS::Lambda::Function")
    assert functions and all("ImageUri" in f["Properties"]["Code"] for f in functions.values())
    assert all("LoggingConfig" in f["Properties"] for f in functions.values())  # each to its own refit log group
    data = next(b for k, b in of_type(template, "AWS::S3::Bucket").items() if k.startswith("StorageData"))
    assert data["Properties"]["NotificationConfiguration"] == {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}
    assert not [k for k, r in of_type(template, "AWS::IAM::Role").items() if r["Properties"].get("ManagedPolicyArns")]


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
        "feedback/churn/pending/*",  # the feedback that waits, counted to re-arm the quality alarm
        "ground-truth/churn/*",
        "labeling/churn/*",
    ]


# ---------------------------------------------------------------- per-model SageMaker roles (two models)
MODELS = ("churn", "churn-eu")  # names that prefix each other: the hard case for prefixes and name patterns


@pytest.fixture(scope="module")
def two_models(two_models_assembly):
    return json.loads((two_models_assembly / "other.template.json").read_text())


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def resolve(value, template) -> str:
    """An IAM resource of the template as a plain ARN: buckets `arn:aws:s3:::<logical id>`, other GetAtts
    `<logical id>`, pseudo parameters by name."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(resolve(part, template) for part in parts)
    if "Fn::GetAtt" in value:
        logical = value["Fn::GetAtt"][0]
        if template["Resources"][logical]["Type"] == "AWS::S3::Bucket":
            return f"arn:aws:s3:::{logical}"
        return logical
    return {"AWS::Partition": "aws", "AWS::Region": "us-east-1", "AWS::AccountId": "123456789012"}.get(
        value.get("Ref"), str(value.get("Ref"))
    )


def resolved_statements(template, role: str) -> list[dict]:
    out = []
    for statement in statements_by_role(template)[role]:
        statement = dict(statement)
        statement["Resource"] = [resolve(r, template) for r in as_list(statement["Resource"])]
        out.append(statement)
    return out


def sagemaker_roles(template) -> dict[str, str]:
    """Model name -> the logical id of the SageMaker role its functions name (REFIT_SAGEMAKER_ROLE_ARN)."""
    out: dict[str, str] = {}
    for function in of_type(template, "AWS::Lambda::Function").values():
        props = function["Properties"]
        if "ImageConfig" not in props:
            continue
        model = props["Description"].removeprefix("refit ").split(":", 1)[0]
        arn = props["Environment"]["Variables"]["REFIT_SAGEMAKER_ROLE_ARN"]
        assert out.setdefault(model, arn["Fn::GetAtt"][0]) == arn["Fn::GetAtt"][0], "one role per model"
    return out


def own_prefixes(model: str) -> dict[str, tuple[str, ...]]:
    """Where model `model`'s SageMaker role may act, by bucket logical id prefix."""
    return {
        "StorageData": (f"validation/{model}/", f"baseline/{model}/", f"capture/{model}/"),
        "StorageArtifacts": (
            f"job-data/{model}/",
            f"reports/{model}/",
            f"training/{model}/",
            f"checkpoints/{model}/",
        ),
    }


OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:Abort")


def foreign_s3_grants(statements: list[dict], model: str) -> list[tuple[str, str]]:
    """(action, resource) pairs an Allow statement grants outside `model`'s own prefixes: an object ARN not under one
    of them, a bucket ARN with anything but listing and bucket settings, or listing a bucket without a deny that
    keeps the listed prefixes to them."""
    prefixes = own_prefixes(model)
    foreign = []
    listing_denied = {
        r
        for s in statements
        if s["Effect"] == "Deny" and "s3:ListBucket" in as_list(s["Action"])
        for r in s["Resource"]
        if all(
            p.startswith(next(v for k, v in prefixes.items() if k in r))
            for p in s["Condition"]["StringNotLike"]["s3:prefix"]
        )
        and s["Condition"]["Null"] == {"s3:prefix": "false"}
    }
    for statement in statements:
        if statement["Effect"] != "Allow":
            continue
        for action in (a for a in as_list(statement["Action"]) if a.startswith("s3:")):
            for resource in statement["Resource"]:
                bucket, _, key = resource.removeprefix("arn:aws:s3:::").partition("/")
                own = next((v for k, v in prefixes.items() if bucket.startswith(k)), ())
                if not key:
                    if action.startswith(OBJECT_ACTIONS):
                        continue  # CDK's grants name the bucket beside its objects; object actions never match it
                    if not action.startswith(("s3:List", "s3:GetBucket")) or (
                        action.startswith("s3:List") and resource not in listing_denied
                    ):
                        foreign.append((action, resource))
                elif not key.startswith(own):
                    foreign.append((action, resource))
    return foreign


def test_each_model_has_its_own_sagemaker_role_and_passes_only_that(two_models):
    roles = sagemaker_roles(two_models)
    assert set(roles) == set(MODELS) and len(set(roles.values())) == 2
    for logical in roles.values():
        trust = two_models["Resources"][logical]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert [s["Principal"] for s in trust] == [{"Service": "sagemaker.amazonaws.com"}]
    functions = function_roles_by_model(two_models)
    by_role = statements_by_role(two_models)
    for model, role in roles.items():
        passes = [s for r in functions[model] for s in by_role[r] if "iam:PassRole" in actions(s)]
        assert len(passes) == 2  # StartTraining and Deploy
        for statement in passes:
            assert statement["Resource"] == {"Fn::GetAtt": [role, "Arn"]}
            assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    sagemaker_trust = [
        k
        for k, r in of_type(two_models, "AWS::IAM::Role").items()
        if "sagemaker.amazonaws.com" in json.dumps(r["Properties"]["AssumeRolePolicyDocument"])
    ]
    assert sorted(sagemaker_trust) == sorted(roles.values())  # no shared role left behind


def function_roles_by_model(template) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for function in of_type(template, "AWS::Lambda::Function").values():
        props = function["Properties"]
        if "ImageConfig" in props:
            model = props["Description"].removeprefix("refit ").split(":", 1)[0]
            out.setdefault(model, []).append(props["Role"]["Fn::GetAtt"][0])
    return out


@pytest.mark.parametrize(("model", "other"), [("churn", "churn-eu"), ("churn-eu", "churn")])
def test_no_sagemaker_role_reaches_another_models_prefixes_or_logs(two_models, model, other):
    statements = resolved_statements(two_models, sagemaker_roles(two_models)[model])
    assert foreign_s3_grants(statements, model) == []
    # The check can fail: the same statements judged as the other model's, and the shared role's old grants.
    assert foreign_s3_grants(statements, other) != []
    shared = [
        {"Effect": "Allow", "Action": ["s3:GetObject*", "s3:List*"], "Resource": ["arn:aws:s3:::StorageDataX/*"]},
        {"Effect": "Allow", "Action": ["s3:List*"], "Resource": ["arn:aws:s3:::StorageDataX"]},
    ]
    assert foreign_s3_grants(shared, model) == [
        ("s3:GetObject*", "arn:aws:s3:::StorageDataX/*"),
        ("s3:List*", "arn:aws:s3:::StorageDataX/*"),
        ("s3:List*", "arn:aws:s3:::StorageDataX"),  # the whole bucket listed: no deny outside the prefixes
    ]
    writes = {
        (a, r.split("/", 1)[1])
        for s in statements
        if s["Effect"] == "Allow"
        for a in as_list(s["Action"])
        if a.startswith(("s3:Put", "s3:Delete", "s3:Abort"))
        for r in s["Resource"]
    }
    assert {r for a, r in writes if a.startswith("s3:Delete")} == {f"checkpoints/{model}/*"}
    assert {r for _, r in writes} == {f"training/{model}/*", f"checkpoints/{model}/*", f"capture/{model}/*"}
    logs = [r for s in statements for r in s["Resource"] if ":logs:" in r]
    streams = [r for s in statements if "logs:PutLogEvents" in as_list(s["Action"]) for r in s["Resource"]]
    assert sorted(r.split("log-group:")[1] for r in streams) == [
        f"/aws/sagemaker/Endpoints/other-{model}:log-stream:*",
        f"/aws/sagemaker/TrainingJobs:log-stream:other-{model}--*",
    ]
    assert logs and not any(f"other-{other}--" in r or f"Endpoints/other-{other}:" in r for r in logs)


def decision(statements: list[dict], bucket: str, action: str, key: str) -> tuple[bool, str | None]:
    """IAM's evaluation (the local runtime's): allowed, and the effect of the deciding statement (None: no statement
    applies, the implicit deny)."""
    ok, statement = evaluate(statements, IamRequest(action, f"{bucket}/{key}"))
    return ok, statement and statement["Effect"]


def test_sagemaker_roles_may_not_overwrite_or_delete_what_a_run_relies_on(two_models):
    """Explicit denies (they win over any allow): no SageMaker role puts or deletes under models/ or reports/ of any
    model, or deletes training output; IAM's evaluation (the local runtime's) of the role's own policy agrees."""
    for model, role in sagemaker_roles(two_models).items():
        statements = resolved_statements(two_models, role)
        denies = [s for s in statements if s["Effect"] == "Deny" and "s3:ListBucket" not in as_list(s["Action"])]
        keys = {(a, r.split("/", 1)[1]) for s in denies for a in as_list(s["Action"]) for r in s["Resource"]}
        assert keys == {
            ("s3:PutObject*", "models/*"),
            ("s3:DeleteObject*", "models/*"),
            ("s3:PutObject*", "reports/*"),
            ("s3:DeleteObject*", "reports/*"),
            ("s3:DeleteObject*", "training/*"),
        }
        bucket = next(
            r.split("/")[0] for s in statements for r in s["Resource"] if "StorageArtifacts" in r and "/" in r
        )
        job = f"training/{model}/other-{model}--r1--s1/output/model.tar.gz"
        assert decision(statements, bucket, "s3:PutObject", job) == (True, "Allow")
        assert decision(statements, bucket, "s3:DeleteObject", job) == (False, "Deny")
        assert decision(statements, bucket, "s3:DeleteObjectVersion", job) == (False, "Deny")
        assert decision(statements, bucket, "s3:DeleteObject", f"checkpoints/{model}/r1/fold-1.json") == (True, "Allow")
        for key in (f"models/{model}/r1/lineage.json", f"reports/{model}/r1/gate.json"):
            assert decision(statements, bucket, "s3:PutObject", key) == (False, "Deny")
            assert decision(statements, bucket, "s3:DeleteObjectVersion", key) == (False, "Deny")
        other = next(m for m in MODELS if m != model)
        assert decision(statements, bucket, "s3:PutObject", f"training/{other}/x/output/model.tar.gz") == (False, None)
        assert decision(statements, bucket, "s3:GetObject", f"training/{other}/x/output/model.tar.gz") == (False, None)


def names_of_models(resource: str) -> set[str]:
    """The model names a resource string is scoped to: S3 prefixes (`<prefix>/<model>/`), SageMaker and Step
    Functions names (`<project>-<model>--...`, the endpoint `<project>-<model>`), package groups, the audit partitions
    (`approval#<model>`, the LeadingKeys). `churn` and `churn-eu` prefix each other, so a name ends at a separator."""
    end = r"(?=--|/|:|\*|#|\"|$)"
    found = set(re.findall(r"/(churn(?:-eu)?)/", resource))
    found |= set(re.findall(rf"other-(churn(?:-eu)?){end}", resource))
    found |= set(re.findall(rf"(?:^|#|\")(churn(?:-eu)?){end}", resource))
    return found


@pytest.mark.parametrize(("model", "other"), [("churn", "churn-eu"), ("churn-eu", "churn")])
def test_no_function_role_of_a_model_names_another_models_resources(two_models, model, other):
    """Every Lambda role of one model (its Prepare, Deploy, Monitor, ...): no resource or condition value it is
    granted names the other model's prefixes, jobs, endpoint, packages, state machine or audit partition."""
    roles = function_roles_by_model(two_models)[model]
    assert len(roles) >= 10  # every step of the run has its own role
    named: set[str] = set()
    for role in roles:
        for statement in resolved_statements(two_models, role):
            if statement["Effect"] != "Allow":
                continue
            values = statement["Resource"] + [json.dumps(statement.get("Condition", {}))]
            for value in values:
                found = names_of_models(str(value))
                assert other not in found, (role, statement)
                named |= found
    assert model in named  # the check can fail: the role's grants do name its own model
    assert names_of_models("arn:aws:s3:::b/training/churn-eu/*") == {"churn-eu"}
    assert names_of_models("arn:aws:sagemaker:r:a:endpoint/other-churn") == {"churn"}
    assert names_of_models('{"dynamodb:LeadingKeys": ["churn", "approval#churn-eu"]}') == {"churn", "churn-eu"}


# ---------------------------------------------------------------- approvals (churn-eu: approval = "manual")
def approver_role_of(template) -> str:
    (output,) = [o for k, o in template["Outputs"].items() if "ApproverRoleArn" in k]
    return output["Value"]["Fn::GetAtt"][0]


def role_statements(template, role: str) -> list[dict]:
    return statements_by_role(template).get(role, [])


def approve_function(template) -> tuple[str, dict]:
    (found,) = [
        (k, r)
        for k, r in template["Resources"].items()
        if r["Type"] == "AWS::Lambda::Function" and r["Properties"].get("Description", "").endswith(": Approve")
    ]
    return found


def test_the_approver_role_may_only_call_the_approve_url(two_models):
    role = approver_role_of(two_models)
    function, _ = approve_function(two_models)
    granted = role_statements(two_models, role)
    assert two_models["Resources"][role]["Properties"].get("Policies") is None  # nothing inline
    assert all(s["Effect"] == "Allow" for s in granted)
    by_action = {action: s for s in granted for action in as_list(s["Action"])}
    # No states:SendTaskSuccess, no read of the approval items (the tokens), no key, no registry
    assert set(by_action) == {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction", "cloudformation:DescribeStacks"}
    assert by_action["lambda:InvokeFunctionUrl"] == {
        "Action": "lambda:InvokeFunctionUrl",
        "Condition": {"StringEquals": {"lambda:FunctionUrlAuthType": "AWS_IAM"}},
        "Effect": "Allow",
        "Resource": {"Fn::GetAtt": [function, "Arn"]},
    }
    # InvokeFunction only through the URL: a direct Invoke could hand the function a forged requestContext
    assert by_action["lambda:InvokeFunction"] == {
        "Action": "lambda:InvokeFunction",
        "Condition": {"Bool": {"lambda:InvokedViaFunctionUrl": True}},
        "Effect": "Allow",
        "Resource": {"Fn::GetAtt": [function, "Arn"]},
    }
    assert by_action["cloudformation:DescribeStacks"]["Resource"] == {"Ref": "AWS::StackId"}


def test_the_approve_function_url_is_iam_authenticated_and_an_output(two_models):
    function, properties = approve_function(two_models)
    (url_id, url), *others = [(k, r) for k, r in two_models["Resources"].items() if r["Type"] == "AWS::Lambda::Url"]
    assert others == [] and properties["Properties"]["Description"] == "refit churn-eu: Approve"
    assert url["Properties"] == {"AuthType": "AWS_IAM", "TargetFunctionArn": {"Fn::GetAtt": [function, "Arn"]}}
    assert properties["Properties"]["Environment"]["Variables"]["REFIT_SEPARATION_OF_DUTIES"] == "true"
    assert two_models["Outputs"]["ApproveUrls"]["Value"] == {
        "Fn::Join": ["", ['{"churn-eu":"', {"Fn::GetAtt": [url_id, "FunctionUrl"]}, '"}']]
    }


def test_only_the_approve_function_sends_task_results_and_reads_the_tokens(two_models):
    function, properties = approve_function(two_models)
    approve_role = properties["Properties"]["Role"]["Fn::GetAtt"][0]
    senders, token_readers = set(), set()
    for resource in two_models["Resources"].values():
        if resource["Type"] != "AWS::IAM::Policy":
            continue
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
            actions = as_list(statement["Action"])
            roles = {r["Ref"] for r in resource["Properties"]["Roles"]}
            if any(a.startswith("states:SendTask") for a in actions):
                senders |= roles
            leading = json.dumps(statement.get("Condition", {}))
            if "approval#" in leading and {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan"} & set(actions):
                token_readers |= roles
    assert senders == token_readers == {approve_role}
    granted = {a: s for s in role_statements(two_models, approve_role) for a in as_list(s["Action"])}
    assert granted["states:SendTaskSuccess"]["Resource"] == "*" and "states:SendTaskFailure" not in granted
    assert granted["dynamodb:GetItem"]["Condition"] == {
        "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["approval#churn-eu"]}
    }
    assert granted["dynamodb:UpdateItem"] is granted["dynamodb:GetItem"]  # the claim, on the same items only
    assert json.dumps(granted["sagemaker:UpdateModelPackage"]["Resource"]).endswith(
        ':model-package/other-churn-eu/*"]]}'
    )
