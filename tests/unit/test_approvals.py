"""The Approve function's rules: the approver is the caller's identity as AWS verified it (the function URL's
`requestContext.authorizer.iam`), recorded in the registry and in the decision the run's audit record carries;
separation of duties refuses the run's starter; a request that names anyone, another model or another run is refused
(moto: STS, DynamoDB, SageMaker; the Step Functions client is a recorder, since a task token needs a waiting
execution — the e2e test has one)."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import boto3
import pytest
from aws_lambda_powertools.utilities.parser.models import LambdaFunctionUrlModel
from botocore.exceptions import ClientError
from moto import mock_aws
from refit_core.approvals import (
    AlreadyDecided,
    ApprovalError,
    ApprovalRefused,
    approval_key,
    claim_decision,
    decide_approval,
)
from refit_core.identity import CallerIdentity, person_of, same_person
from refit_core.runs import parse_run_input
from refit_handlers.approval import ApprovalRequest, request_approval, verified_caller
from refit_handlers.approval import decide as decide_request

from scripts.local_aws.limits import enforce_aws_rules
from tests.conftest import create_audit_table, handler_settings

REGION = "us-east-1"
MOTO_USER = "arn:aws:sts::123456789012:user/moto"  # moto's fixed identity (AWS would write iam:: for a user)


class Recorder:
    """The Step Functions client's SendTaskSuccess, recorded; `fails` with a service error code instead."""

    exceptions = SimpleNamespace(ClientError=ClientError)

    def __init__(self, fails: str | None = None) -> None:
        self.sent: list[dict] = []
        self.fails = fails

    def send_task_success(self, **kwargs: str) -> dict:
        if self.fails:
            raise ClientError({"Error": {"Code": self.fails, "Message": "gone"}}, "SendTaskSuccess")
        self.sent.append(kwargs)
        return {}


@pytest.fixture
def aws(monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws(), enforce_aws_rules():
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        create_audit_table(dynamodb)
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        sagemaker.create_model_package_group(ModelPackageGroupName="refit-churn")
        arn = sagemaker.create_model_package(
            ModelPackageGroupName="refit-churn",
            ModelApprovalStatus="PendingManualApproval",
            InferenceSpecification={
                "Containers": [{"Image": "img:1", "ModelDataUrl": "s3://art/m.tar.gz"}],
                "SupportedContentTypes": ["text/csv"],
                "SupportedResponseMIMETypes": ["text/csv"],
            },
        )["ModelPackageArn"]
        iam = boto3.client("iam", region_name=REGION)
        iam.create_role(RoleName="approver", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17"}))
        yield {"dynamodb": dynamodb, "sagemaker": sagemaker, "package": arn}


def as_session(session: str) -> CallerIdentity:
    """A second identity: a session of the approver role (moto's STS gives it its own ARN and keys)."""
    credentials = boto3.client("sts", region_name=REGION).assume_role(
        RoleArn="arn:aws:iam::123456789012:role/approver", RoleSessionName=session
    )["Credentials"]
    sts = boto3.client(
        "sts",
        region_name=REGION,
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )
    return CallerIdentity.of(sts)


def caller() -> CallerIdentity:
    return CallerIdentity.of(boto3.client("sts", region_name=REGION))


def pend(aws, *, started_by: str | None, trigger: str = "manual", version: int = 1) -> None:
    """What Register and RequestApproval leave for a run parked on its task token: the package awaiting approval and
    the approval item."""
    aws["sagemaker"].update_model_package(ModelPackageArn=aws["package"], ModelApprovalStatus="PendingManualApproval")
    event = ApprovalRequest(
        task_token="token-1",
        run_id="manual-1",
        model_package_arn=aws["package"],
        version=version,
        reason="better",
        trigger=trigger,
        started_by=started_by,
    )

    class Sns:
        def publish(self, **kwargs: str) -> dict:
            return {}

    request_approval(event, handler_settings(), aws["dynamodb"], Sns(), aws["sagemaker"])


def decision_arguments(aws, sfn, *, approver=None, approve=True, separation=True) -> dict:
    return {
        "model": "churn",
        "version": 1,
        "approve": approve,
        "approver": approver or caller(),
        "comment": "checked the holdout",
        "separation_of_duties": separation,
        "audit_table": "audit",
        "dynamodb": aws["dynamodb"],
        "sagemaker": aws["sagemaker"],
        "stepfunctions": sfn,
    }


def decide(aws, approver: CallerIdentity, *, approve: bool = True, separation: bool = True, sfn=None):
    return decide_approval(
        **decision_arguments(aws, sfn or Recorder(), approver=approver, approve=approve, separation=separation)
    )


def package(aws) -> dict:
    return aws["sagemaker"].describe_model_package(ModelPackageName=aws["package"])


def test_the_two_identities_are_moto_user_and_an_assumed_role_session(aws):
    assert caller().arn == MOTO_USER and caller().session is None
    ana = as_session("ana")
    assert ana.arn == "arn:aws:sts::123456789012:assumed-role/approver/ana" and ana.session == "ana"


def test_the_approver_recorded_is_the_sts_identity_in_registry_and_decision(aws):
    pend(aws, started_by=MOTO_USER)
    sfn = Recorder()
    report = decide(aws, as_session("ana"), sfn=sfn)
    ana = "arn:aws:sts::123456789012:assumed-role/approver/ana"
    assert report["status"] == "Approved" and report["by"] == ana and report["started_by"] == MOTO_USER
    described = package(aws)
    assert described["ModelApprovalStatus"] == "Approved"
    assert described["ApprovalDescription"] == f"approved by {ana}: checked the holdout"
    metadata = described["CustomerMetadataProperties"]
    assert metadata["refit:decided_by"] == ana and metadata["refit:decision"] == "Approved"
    assert metadata["refit:started_by"] == MOTO_USER and metadata["refit:separation_of_duties"] == "on"
    (sent,) = sfn.sent
    decision = json.loads(sent["output"])
    assert sent["taskToken"] == "token-1"
    assert (decision["by"], decision["session"], decision["started_by"], decision["trigger"]) == (
        ana,
        "ana",
        MOTO_USER,
        "manual",
    )
    assert decision["approved"] is True and decision["separation_of_duties"] is True
    assert "Item" not in aws["dynamodb"].get_item(TableName="audit", Key=approval_key("churn", 1))


def test_the_starter_may_not_approve_their_own_run_and_nothing_changes(aws):
    pend(aws, started_by=MOTO_USER)
    sfn = Recorder()
    with pytest.raises(ApprovalRefused, match=r"separation of duties: arn:aws:sts::123456789012:user/moto started"):
        decide(aws, caller(), sfn=sfn)
    assert ApprovalRefused.status == 403
    assert package(aws)["ModelApprovalStatus"] == "PendingManualApproval" and sfn.sent == []
    assert "Item" in aws["dynamodb"].get_item(TableName="audit", Key=approval_key("churn", 1))
    # ... but may reject it, and without the rule may approve it
    assert decide(aws, caller(), approve=False)["status"] == "Rejected"
    pend(aws, started_by=MOTO_USER)
    assert decide(aws, caller(), separation=False)["status"] == "Approved"
    assert package(aws)["CustomerMetadataProperties"]["refit:separation_of_duties"] == "off"


def test_a_decision_the_run_no_longer_waits_for_leaves_the_version_rejected(aws):
    pend(aws, started_by=None, trigger="s3")
    with pytest.raises(ApprovalError, match="run manual-1 no longer waits for a decision .*TaskTimedOut") as raised:
        decide(aws, as_session("ana"), sfn=Recorder(fails="TaskTimedOut"))
    assert raised.value.status == 409 and package(aws)["ModelApprovalStatus"] == "Rejected"
    assert "Item" not in aws["dynamodb"].get_item(TableName="audit", Key=approval_key("churn", 1))
    pend(aws, started_by=None, trigger="s3")
    with pytest.raises(ClientError, match="ThrottlingException"):  # anything else is the function's error
        decide(aws, as_session("ana"), sfn=Recorder(fails="ThrottlingException"))
    # ... and leaves the version awaiting a decision, its item in place, so the same decision can be made again.
    undelivered = package(aws)
    assert undelivered["ModelApprovalStatus"] == "PendingManualApproval"
    assert "not delivered to run manual-1 (ThrottlingException)" in undelivered["ApprovalDescription"]
    assert undelivered["CustomerMetadataProperties"]["refit:decision"] == "undelivered"
    assert not {"refit:decided_by", "refit:decided_at"} & set(undelivered["CustomerMetadataProperties"])
    item = aws["dynamodb"].get_item(TableName="audit", Key=approval_key("churn", 1))["Item"]
    assert not {"claim_id", "claimed_by", "claim_expires"} & set(item)  # the undelivered decision gave its claim back
    sfn = Recorder()
    assert decide(aws, as_session("ana"), sfn=sfn)["status"] == "Approved" and len(sfn.sent) == 1


def test_a_user_and_a_role_session_named_after_them_are_one_person(aws):
    ana_user = "arn:aws:iam::123456789012:user/ana"
    pend(aws, started_by=ana_user)
    with pytest.raises(ApprovalRefused, match="may not approve it"):
        decide(aws, as_session("ana"))
    assert decide(aws, as_session("bo"))["status"] == "Approved"


def test_who_started_a_run_decides_whether_anyone_may_approve_it(aws):
    pend(aws, started_by=None, trigger="manual")  # started by hand, no requested_by in the input
    with pytest.raises(ApprovalRefused, match="started by hand without a recorded starter"):
        decide(aws, as_session("ana"))
    for trigger in ("s3", "schedule", "alarm", "queue"):  # no human starter: allowed
        pend(aws, started_by=None, trigger=trigger)
        assert decide(aws, as_session("ana"))["status"] == "Approved"
        assert package(aws)["CustomerMetadataProperties"]["refit:started_by"] == f"none: trigger {trigger}"


def test_nothing_pending_is_a_404(aws):
    with pytest.raises(ApprovalError, match="no approval is pending for churn version 1") as raised:
        decide(aws, caller())
    assert raised.value.status == 404


def test_a_package_no_longer_pending_or_another_run_is_refused_and_nothing_changes(aws):
    pend(aws, started_by=None, trigger="s3")
    with pytest.raises(ApprovalRefused, match="awaits approval in run manual-1, not in run manual-0"):
        decide_approval(**decision_arguments(aws, Recorder()), expected_run="manual-0")
    aws["sagemaker"].update_model_package(ModelPackageArn=aws["package"], ModelApprovalStatus="Rejected")
    sfn = Recorder()
    with pytest.raises(ApprovalError, match="churn version 1 is Rejected, no longer awaiting approval") as raised:
        decide(aws, as_session("ana"), sfn=sfn)
    assert raised.value.status == 404 and sfn.sent == [] and package(aws)["ModelApprovalStatus"] == "Rejected"


def test_an_identity_outside_the_metadata_character_set_is_cleaned_for_the_registry(aws):
    pend(aws, started_by=MOTO_USER)
    odd = as_session("ana,lead")  # ',' is legal in a session name, not in a metadata value
    decide(aws, odd)  # enforce_aws_rules would refuse a value outside SageMaker's pattern
    metadata = package(aws)["CustomerMetadataProperties"]
    assert metadata["refit:decided_by"] == "arn:aws:sts::123456789012:assumed-role/approver/ana lead"
    assert odd.arn in package(aws)["ApprovalDescription"]


def test_approval_items_live_apart_from_the_models_runs():
    assert approval_key("churn", 7) == {"pk": {"S": "approval#churn"}, "sk": {"S": "approval#000007"}}


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("arn:aws:iam::111111111111:user/ana", "arn:aws:iam::111111111111:user/ana", True),
        ("arn:aws:iam::111111111111:user/ana", "arn:aws:sts::111111111111:assumed-role/approver/ana", True),
        ("arn:aws:iam::111111111111:user/ops/ana", "arn:aws:sts::111111111111:assumed-role/x/ana", True),
        ("arn:aws:iam::111111111111:user/ana", "arn:aws:sts::222222222222:assumed-role/approver/ana", False),
        (
            "arn:aws:sts::111111111111:assumed-role/approver/ana",
            "arn:aws:sts::111111111111:assumed-role/approver/bo",
            False,
        ),
        ("arn:aws:iam::111111111111:root", "arn:aws:iam::111111111111:root", True),
        ("arn:aws:iam::111111111111:root", "arn:aws:iam::111111111111:user/root", True),
        ("not-an-arn", "arn:aws:iam::111111111111:user/ana", False),
    ],
)
def test_same_person(first, second, same):
    assert same_person(first, second) is same and same_person(second, first) is same


def test_person_of_names_the_principal():
    assert person_of("arn:aws:sts::111111111111:federated-user/ana") == ("111111111111", "ana")
    assert person_of("arn:aws:iam::111111111111:role/approver") is None


def test_a_manual_run_input_carries_its_starter_and_nothing_else_new():
    request = parse_run_input({"requested_by": MOTO_USER, "force": True}, "incoming/churn/", "data")
    assert request.requested_by == MOTO_USER and request.trigger == "manual"
    assert parse_run_input({}, "incoming/churn/", "data").requested_by is None
    deploy = parse_run_input({"deploy_version": 2, "requested_by": "arn:aws:sts::1:x" * 20}, "incoming/churn/", "data")
    assert deploy.requested_by == deploy.deploy.requested_by  # ARNs longer than the old 128-character cap fit


# ---------------------------------------------------------------- the Approve function behind its URL
ANA = "arn:aws:sts::123456789012:assumed-role/approver/ana"


def url_event(body: object, *, caller_arn: str | None = ANA, method: str = "POST") -> LambdaFunctionUrlModel:
    """A function URL request (payload format 2.0) as the Lambda service builds it; `caller_arn` the identity AWS
    verified (None: no authorizer, as an AuthType NONE URL would send)."""
    context = {
        "accountId": "123456789012",
        "apiId": "abc",
        "domainName": "abc.lambda-url.us-east-1.on.aws",
        "domainPrefix": "abc",
        "requestId": "r-1",
        "routeKey": "$default",
        "stage": "$default",
        "time": "29/Nov/2026:10:00:00 +0000",
        "timeEpoch": 1795860000000,
        "http": {"method": method, "path": "/", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "t"},
    }
    if caller_arn is not None:
        context["authorizer"] = {
            "iam": {"userArn": caller_arn, "accountId": "123456789012", "userId": "AROA1:ana", "callerId": "AROA1:ana"}
        }
    return LambdaFunctionUrlModel.model_validate(
        {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": "/",
            "rawQueryString": "",
            "headers": {"content-type": "application/json"},
            "requestContext": context,
            "body": body if isinstance(body, str) else json.dumps(body),
            "isBase64Encoded": False,
        }
    )


def answer(aws, event: LambdaFunctionUrlModel, sfn: Recorder, separation: bool = True) -> tuple[int, dict]:
    clients = {"dynamodb": aws["dynamodb"], "sagemaker": aws["sagemaker"], "stepfunctions": sfn}
    response = decide_request(event, handler_settings(), separation, clients.__getitem__)
    assert response["headers"] == {"content-type": "application/json"}
    return response["statusCode"], json.loads(response["body"])


APPROVE = {"model": "churn", "version": 1, "decision": "approve", "comment": "ok"}


def test_the_function_decides_as_the_verified_caller_whatever_the_body_claims(aws):
    pend(aws, started_by=MOTO_USER)
    sfn = Recorder()
    # Naming someone in the body is refused, not trusted: nothing changes
    status, body = answer(aws, url_event({**APPROVE, "by": ANA}, caller_arn=MOTO_USER), sfn)
    assert status == 400 and "by: Extra inputs are not permitted" in body["error"]
    # The starter, verified by AWS, may not approve (separation of duties, server-side)
    status, body = answer(aws, url_event(APPROVE, caller_arn=MOTO_USER), sfn)
    assert status == 403 and body["error"].startswith(f"separation of duties: {MOTO_USER} started run manual-1")
    assert sfn.sent == [] and package(aws)["ModelApprovalStatus"] == "PendingManualApproval"
    # Another identity approves; the registry and the decision carry the verified ARN
    status, body = answer(aws, url_event(APPROVE), sfn)
    assert status == 200 and body["by"] == ANA and body["status"] == "Approved"
    assert json.loads(sfn.sent[0]["output"])["by"] == ANA
    assert package(aws)["CustomerMetadataProperties"]["refit:decided_by"] == ANA


REFUSED = [  # (request, HTTP status, the one-line reason)
    (url_event(APPROVE, caller_arn=None), 403, "no verified caller identity"),
    (url_event(APPROVE, method="GET"), 405, "GET: send the decision with POST"),
    (url_event("approve churn 1"), 400, "the request body is not JSON"),
    (url_event({**APPROVE, "version": 0}), 400, "version: Input should be greater than or equal to 1"),
    (url_event({**APPROVE, "decision": "maybe"}), 400, "decision: Input should be 'approve' or 'reject'"),
    (url_event({**APPROVE, "model": "fraud"}), 403, "this function decides the approvals of churn, not of fraud"),
    (url_event({**APPROVE, "run_id": "manual-0"}), 403, "awaits approval in run manual-1, not in run manual-0"),
    (url_event({**APPROVE, "version": 2}), 404, "no approval is pending for churn version 2"),
]


def test_a_request_the_function_refuses_changes_nothing(aws):
    pend(aws, started_by=None, trigger="s3")  # anyone allowed may approve it: each refusal is for its own reason
    sfn = Recorder()
    for event, status, message in REFUSED:
        code, body = answer(aws, event, sfn)
        assert code == status and message in body["error"] and list(body) == ["error"], (message, body)
    assert sfn.sent == [] and package(aws)["ModelApprovalStatus"] == "PendingManualApproval"
    assert "Item" in aws["dynamodb"].get_item(TableName="audit", Key=approval_key("churn", 1))
    assert answer(aws, url_event({**APPROVE, "run_id": "manual-1"}), sfn)[0] == 200  # the check can pass


def test_the_verified_caller_is_read_from_the_iam_authorizer_only():
    assert verified_caller(url_event(APPROVE)) == CallerIdentity(ANA, "123456789012", "AROA1:ana")
    assert verified_caller(url_event(APPROVE, caller_arn=None)) is None


class TokenOnce:
    """Step Functions' SendTaskSuccess on one waiting task: the first result is delivered, any later one finds the
    task gone (TaskTimedOut: "Provided task does not exist anymore")."""

    exceptions = SimpleNamespace(ClientError=ClientError)

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.lock = threading.Lock()

    def send_task_success(self, **kwargs: str) -> dict:
        with self.lock:
            if self.sent:
                raise ClientError({"Error": {"Code": "TaskTimedOut", "Message": "gone"}}, "SendTaskSuccess")
            self.sent.append(kwargs)
            return {}


class OneCallAtATime:
    """A client whose calls are applied one at a time, as DynamoDB applies writes to one item; moto's conditional
    update checks and writes in separate steps, which two threads could interleave."""

    def __init__(self, client) -> None:
        self.client, self.lock = client, threading.Lock()

    def __getattr__(self, name: str):
        attribute = getattr(self.client, name)
        if not callable(attribute):
            return attribute

        def call(**kwargs):
            with self.lock:
                return attribute(**kwargs)

        return call


class AfterTheCheck:
    """SageMaker's DescribeModelPackage (the pending check), then a wait until both deciders have passed it: the
    race of two approvers at the same instant."""

    def __init__(self, client, barrier: threading.Barrier) -> None:
        self.client, self.barrier = client, barrier

    def __getattr__(self, name: str):
        return getattr(self.client, name)

    def describe_model_package(self, **kwargs):
        described = self.client.describe_model_package(**kwargs)
        self.barrier.wait(timeout=10)
        return described


@pytest.mark.parametrize("bo_approves", [True, False])
def test_two_approvers_deciding_one_version_at_once_one_wins_and_the_registry_says_what_the_run_got(aws, bo_approves):
    pend(aws, started_by=None, trigger="s3")
    deciders = {"ana": (as_session("ana"), True), "bo": (as_session("bo"), bo_approves)}
    barrier, sfn = threading.Barrier(2), TokenOnce()
    dynamodb, sagemaker = OneCallAtATime(aws["dynamodb"]), AfterTheCheck(aws["sagemaker"], barrier)
    outcomes: dict[str, object] = {}

    def decide_as(name: str) -> None:
        approver, approve = deciders[name]
        arguments = decision_arguments(aws, sfn, approver=approver, approve=approve)
        try:
            outcomes[name] = decide_approval(**{**arguments, "dynamodb": dynamodb, "sagemaker": sagemaker})
        except Exception as error:  # noqa: BLE001 - the loser's refusal, examined below
            outcomes[name] = error

    threads = [threading.Thread(target=decide_as, args=(name,)) for name in deciders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    (winner,) = [name for name, outcome in outcomes.items() if isinstance(outcome, dict)]
    (loser,) = set(deciders) - {winner}
    winner_arn = deciders[winner][0].arn
    (sent,) = sfn.sent  # the run got exactly one decision: the winner's ...
    delivered = json.loads(sent["output"])
    assert delivered["by"] == winner_arn and delivered["approved"] is deciders[winner][1]
    described = package(aws)  # ... and the registry says what the run got
    assert described["ModelApprovalStatus"] == ("Approved" if delivered["approved"] else "Rejected")
    assert described["CustomerMetadataProperties"]["refit:decided_by"] == winner_arn
    assert "Item" not in aws["dynamodb"].get_item(TableName="audit", Key=approval_key("churn", 1))
    refusal = outcomes[loser]  # the loser was told who decided, and changed nothing
    assert isinstance(refusal, AlreadyDecided) and refusal.status == 409, refusal
    assert (
        f"was already decided by {winner_arn} at " in str(refusal) or "was decided meanwhile" in str(refusal)
    ) and str(refusal).endswith("nothing changed")


def test_a_claimed_version_is_refused_with_who_claimed_it_and_a_stale_claim_is_taken_over(aws):
    pend(aws, started_by=None, trigger="s3")
    claim_decision(aws["dynamodb"], "audit", "churn", 1, ANA, "Approved", "2026-11-29T14:00:00+00:00")
    sfn = Recorder()
    status, body = answer(aws, url_event(APPROVE, caller_arn="arn:aws:sts::123456789012:assumed-role/approver/bo"), sfn)
    refusal = f"churn version 1 was already decided by {ANA} at 2026-11-29T14:00:00+00:00 (Approved); nothing changed"
    assert (status, body) == (409, {"error": refusal})
    assert sfn.sent == [] and package(aws)["ModelApprovalStatus"] == "PendingManualApproval"
    # A claim past its lease belongs to an invocation that ended without finishing: the next decision takes it over
    aws["dynamodb"].update_item(
        TableName="audit",
        Key=approval_key("churn", 1),
        UpdateExpression="SET claim_expires = :past",
        ExpressionAttributeValues={":past": {"N": "1"}},
    )
    assert decide(aws, as_session("bo"), sfn=sfn)["status"] == "Approved" and len(sfn.sent) == 1


class FailingRegistry:
    """The SageMaker client, whose UpdateModelPackage is throttled once."""

    def __init__(self, sagemaker) -> None:
        self.sagemaker, self.failed = sagemaker, False

    def __getattr__(self, name: str):
        return getattr(self.sagemaker, name)

    def update_model_package(self, **kwargs):
        if not self.failed:
            self.failed = True
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "UpdateModelPackage")
        return self.sagemaker.update_model_package(**kwargs)


def test_a_decision_the_registry_refused_gives_its_claim_back_and_the_retry_decides(aws):
    pend(aws, started_by=None, trigger="s3")
    arguments = decision_arguments(aws, Recorder(), approver=as_session("ana"), approve=True, separation=True)
    arguments["sagemaker"] = FailingRegistry(arguments["sagemaker"])
    with pytest.raises(ClientError, match="ThrottlingException"):
        decide_approval(**arguments)
    item = aws["dynamodb"].get_item(TableName="audit", Key=approval_key("churn", 1))["Item"]
    assert not {"claim_id", "claimed_by", "claim_expires"} & set(item)  # not held against the approver's retry
    assert package(aws)["ModelApprovalStatus"] == "PendingManualApproval"
    assert decide_approval(**arguments)["status"] == "Approved"
