"""The local runtime's function URLs (scripts/local_aws/function_urls.py) over moto: the URL config answers with a
127.0.0.1 URL that is served; a request reaches the function only with a SigV4 signature that verifies (signed here as
`refit approve` signs, run_commands.signed_post) and an identity the local IAM allows both URL actions; the function
gets AWS's event with the verified caller in requestContext.authorizer.iam; a direct Invoke is not allowed by the
grant that allows the URL."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import zipfile

import boto3
import pytest
from botocore.credentials import Credentials
from moto import mock_aws

from scripts.cli import main as refit
from scripts.local_aws.function_urls import FunctionUrls
from scripts.local_aws.iam import Call, LocalIam, evaluate, iam_requests
from scripts.run_commands import signed_post
from tests.conftest import ROOT

REGION = "us-east-1"
ACCOUNT = "123456789012"
TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "sts:*"}],
    }
)


def url_grant(function_arn: str, *, with_invoke: bool = True) -> list[dict]:
    """What CDK's grantInvokeUrl synthesizes (stacks/approvers.py)."""
    statements = [
        {
            "Effect": "Allow",
            "Action": "lambda:InvokeFunctionUrl",
            "Resource": function_arn,
            "Condition": {"StringEquals": {"lambda:FunctionUrlAuthType": "AWS_IAM"}},
        }
    ]
    if with_invoke:
        statements.append(
            {
                "Effect": "Allow",
                "Action": "lambda:InvokeFunction",
                "Resource": function_arn,
                "Condition": {"Bool": {"lambda:InvokedViaFunctionUrl": True}},
            }
        )
    return statements


@pytest.fixture(scope="module")
def world():
    with mock_aws():
        iam_client = boto3.client("iam", region_name=REGION)
        roles = {
            name: iam_client.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
            for name in ("fn-role", "approver", "half", "reader")
        }
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
        host = boto3.client("sts", region_name=REGION).get_caller_identity()["Arn"]
        urls = FunctionUrls(ACCOUNT, REGION, "testing", "testing", host)
        urls.install()
        try:
            lam = boto3.client("lambda", region_name=REGION)
            function = lam.create_function(
                FunctionName="approve",
                Runtime="python3.11",
                Role=roles["fn-role"],
                Handler="handler.handler",
                Code={"ZipFile": code.getvalue()},
            )["FunctionArn"]
            created = lam.create_function_url_config(FunctionName="approve", AuthType="AWS_IAM")
            local_iam = LocalIam(ACCOUNT)
            local_iam.policies = {
                roles["approver"]: url_grant(function),
                roles["half"]: url_grant(function, with_invoke=False),  # InvokeFunctionUrl alone is not enough
                roles["reader"]: [{"Effect": "Allow", "Action": "lambda:GetFunction", "Resource": function}],
            }
            events: list[dict] = []

            def invoke(name: str, body: str, headers: dict) -> bytes:
                event = json.loads(body)
                events.append(event)
                caller = event["requestContext"].get("authorizer", {}).get("iam", {}).get("userArn")
                if json.loads(event["body"]).get("decision") == "reject":  # a refusal, in the Approve function's shape
                    return json.dumps({"statusCode": 403, "body": json.dumps({"error": f"refused {caller}"})}).encode()
                reply = {"name": name, "caller": caller, "body": event["body"]}
                return json.dumps({"statusCode": 201, "headers": {"x-seen": "yes"}, "body": json.dumps(reply)}).encode()

            urls.connect(invoke, local_iam)
            sts = boto3.client("sts", region_name=REGION)
            yield {
                "url": created["FunctionUrl"],
                "lambda": lam,
                "function": function,
                "events": events,
                "iam": local_iam,
                "sessions": {
                    name: Credentials(**_keys(local_iam.credentials_for(roles[name], f"{name}-ana", sts)))
                    for name in ("approver", "half", "reader")
                },
                "iam_client": iam_client,
            }
        finally:
            urls.uninstall()


def _keys(credentials: dict[str, str]) -> dict[str, str]:
    return {
        "access_key": credentials["aws_access_key_id"],
        "secret_key": credentials["aws_secret_access_key"],
        "token": credentials["aws_session_token"],
    }


BODY = json.dumps({"model": "churn", "version": 1, "decision": "approve"}).encode()


def test_the_url_config_names_a_served_local_url(world):
    assert world["url"].startswith("http://127.0.0.1:") and world["url"].endswith("/")
    assert world["lambda"].get_function_url_config(FunctionName="approve")["FunctionUrl"] == world["url"]


def test_a_signed_request_of_an_allowed_role_reaches_the_function_as_that_caller(world):
    status, body = signed_post(world["url"], BODY, world["sessions"]["approver"], REGION)
    answer = json.loads(body)
    assert status == 201 and answer["name"] == "approve" and json.loads(answer["body"])["decision"] == "approve"
    assert answer["caller"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/approver/approver-ana"
    event = world["events"][-1]
    iam = event["requestContext"]["authorizer"]["iam"]
    assert iam["accountId"] == ACCOUNT and iam["userId"].endswith(":approver-ana") and iam["userId"].startswith("AROA")
    assert iam["accessKey"] == world["sessions"]["approver"].access_key
    assert (event["version"], event["rawPath"], event["requestContext"]["http"]["method"]) == ("2.0", "/", "POST")
    assert event["isBase64Encoded"] is False and event["headers"]["content-type"] == "application/json"
    allowed = {d.request.action for d in world["iam"].decisions if d.allowed and "approver" in d.principal}
    assert allowed == {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"}


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_unsigned_wrongly_signed_and_ungranted_requests_are_403_and_never_reach_the_function(world):
    before = len(world["events"])
    assert post(world["url"], BODY) == (403, {"Message": "Forbidden"})
    approver = world["sessions"]["approver"]
    forged = Credentials(approver.access_key, "not-the-secret", approver.token)
    status, body = signed_post(world["url"], BODY, forged, REGION)
    assert status == 403 and "signature we calculated does not match" in json.loads(body)["Message"]
    status, body = signed_post(world["url"], BODY, Credentials(approver.access_key, approver.secret_key), REGION)
    assert status == 403 and "security token" in json.loads(body)["Message"]  # a session's key without its token
    status, body = signed_post(world["url"], BODY, approver, "eu-west-1")  # signed for another region
    assert status == 403 and "scoped to a valid region" in json.loads(body)["Message"]
    for name, action in (("reader", "lambda:InvokeFunctionUrl"), ("half", "lambda:InvokeFunction")):
        status, body = signed_post(world["url"], BODY, world["sessions"][name], REGION)
        message = json.loads(body)["Message"]
        assert status == 403 and f"assumed-role/{name}/{name}-ana is not authorized to perform: {action}" in message
    world["iam_client"].create_user(UserName="bo")
    key = world["iam_client"].create_access_key(UserName="bo")["AccessKey"]
    status, body = signed_post(world["url"], BODY, Credentials(key["AccessKeyId"], key["SecretAccessKey"]), REGION)
    assert status == 403 and f"arn:aws:iam::{ACCOUNT}:user/bo is not authorized" in json.loads(body)["Message"]
    assert len(world["events"]) == before
    # The host (the runtime's administrator) is let through, as the local IAM lets it through
    status, body = signed_post(world["url"], BODY, Credentials("testing", "testing"), REGION)
    assert status == 201 and json.loads(body)["caller"] == f"arn:aws:sts::{ACCOUNT}:user/moto"


def test_the_grant_that_allows_the_url_does_not_allow_a_direct_invoke(world):
    """A direct Invoke could hand the function a forged requestContext: the URL grant's InvokeFunction is conditioned
    on lambda:InvokedViaFunctionUrl, which a direct Invoke does not carry."""
    (request,) = iam_requests(Call("lambda", "Invoke", {"FunctionName": world["function"]}, REGION, ACCOUNT))
    assert evaluate(url_grant(world["function"]), request) == (False, None)


@pytest.mark.parametrize(
    ("session", "command", "code", "line"),
    [
        ("approver", "reject", 2, "refit: refused arn:aws:sts::123456789012:assumed-role/approver/approver-ana"),
        (
            "reader",
            "approve",
            1,
            "refit: AWS refused these credentials the Approve function of churn (Forbidden: User:",
        ),
    ],
)
def test_refit_approve_signs_with_the_shells_credentials_and_says_who_refused(
    world, monkeypatch, session, command, code, line
):
    """The function's refusal is exit 2 with its line; AWS's 403 is exit 1 naming the approver role."""
    credentials = world["sessions"][session]
    signing = boto3.Session(
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.token,
        region_name=REGION,
    )
    monkeypatch.setattr(boto3, "_get_default_session", lambda: signing)
    out, err = io.StringIO(), io.StringIO()
    arguments = ["--config", str(ROOT / "refit.toml"), command, "churn", "1", "--url", world["url"], "--stack-outputs"]
    assert refit([*arguments, "/nonexistent.json"], out=out, err=err) == code
    assert err.getvalue().startswith(line) and out.getvalue() == ""
    if code == 1:
        assert "decide as the approver role: assume ApproverRoleArn" in err.getvalue()
