"""Bad input for `[mlflow]`: an unreachable tracking server, and credentials the server refuses. The MlflowSync handler
(the deployed handler string, on moto) returns normally, writes the error into the run's audit record (whose outcome
stays as Finalize stored it) and puts `MlflowErrors` = 1; a run with nothing for MLflow (no challenger, no redeploy) is
left alone and puts 0.

Refused credentials come from a small real HTTP server on 127.0.0.1 standing in for the tracking server: MLflow 3's
own `mlflow server --app-name basic-auth` needs Flask-WTF, which the test server's environment (.venv-mlflow) does not
install. It answers a request without credentials 401 with a Basic challenge (what that app answers refit, which sends
none to an http(s) server), and a SigV4-signed one 403 (what a SageMaker managed tracking server answers a role it
does not accept); the `sagemaker-mlflow` plugin is pointed at it by its own SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT. A name
MLflow rejects is tested against the real server (tests/e2e/test_mlflow.py)."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from moto import mock_aws
from refit_handlers import mlflow_sync
from refit_handlers.common import to_dynamodb

from scripts.local_aws.bridges import LambdaContext
from tests.conftest import create_audit_table
from tests.mlflow_server import free_port

KEY = {"pk": "churn", "sk": "run#2026-11-29T08:00:00Z#r1"}
LINEAGE = "s3://art/models/churn/r1/lineage.json"
EVALUATION = "s3://art/reports/churn/r1/evaluation.json"


def record(**changes):
    base = {
        **KEY,
        "run_id": "r1",
        "model": "churn",
        "status": "SUCCEEDED",
        "outcome": "promoted",
        "message": "canary passed and was promoted",
        "trigger": "s3",
        "trigger_reason": "new batch",
        "training": {"job_name": "refit-churn-r1", "estimated_cost_usd": 0.01},
        "gate": {"promote": True, "reason": "better", "challenger": 0.8, "champion": 0.7},
        "registry": {
            "model_package_arn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/refit-churn/2",
            "version": 2,
            "approval": "Approved",
            "lineage_uri": LINEAGE,
        },
    }
    return {**base, **changes}


@pytest.fixture
def aws(monkeypatch):
    port = free_port()  # nothing listens there
    environment = {
        "REFIT_AUDIT_TABLE": "audit",
        "REFIT_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        "REFIT_MLFLOW_EXPERIMENT": "refit/churn",
        "REFIT_MLFLOW_REGISTERED_MODEL": "refit-churn",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "POWERTOOLS_METRICS_NAMESPACE": "Refit",
        "POWERTOOLS_SERVICE_NAME": "refit-churn-mlflowsync",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    # Powertools reads its namespace and service when the handler module is imported (here: at collection).
    monkeypatch.setattr(mlflow_sync.metrics.provider, "namespace", "Refit")
    monkeypatch.setattr(mlflow_sync.metrics.provider, "service", "refit-churn-mlflowsync")
    mlflow_sync.client.cache_clear()
    with mock_aws():
        dynamodb = boto3.client("dynamodb")
        create_audit_table(dynamodb)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="art")
        s3.put_object(
            Bucket="art",
            Key=LINEAGE[9:],
            Body=json.dumps({"model_data_url": "s3://art/m.tar.gz", "evaluation_uri": EVALUATION}),
        )
        s3.put_object(Bucket="art", Key=EVALUATION[9:], Body=json.dumps({"metrics": {"challenger": {"roc_auc": 0.8}}}))
        yield dynamodb
    mlflow_sync.client.cache_clear()


def store(dynamodb, item):
    dynamodb.put_item(TableName="audit", Item={k: TypeSerializer().serialize(v) for k, v in to_dynamodb(item).items()})


def stored(dynamodb):
    item = dynamodb.get_item(TableName="audit", Key={k: {"S": v} for k, v in KEY.items()})["Item"]
    return {k: TypeDeserializer().deserialize(v) for k, v in item.items()}


def emitted_metrics(text):
    values = {}
    for line in text.splitlines():
        if '"_aws"' in line:
            document = json.loads(line)
            for definition in document["_aws"]["CloudWatchMetrics"]:
                for metric in definition["Metrics"]:
                    value = document[metric["Name"]]
                    values[metric["Name"]] = (
                        value[0] if isinstance(value, list) else value,
                        {d: document[d] for d in definition["Dimensions"][0]},
                    )
    return values


def invoke(capsys):
    context = LambdaContext("refit-churn--MlflowSync", 512, "arn:aws:lambda:us-east-1:123456789012:function:x")
    result = mlflow_sync.handler({"audit_key": KEY}, context)
    return result, emitted_metrics(capsys.readouterr().out)


def test_unreachable_server_is_recorded_and_counted_and_the_outcome_stays(aws, capsys):
    store(aws, record())
    result, metrics = invoke(capsys)
    assert result["logged"] is False and "127.0.0.1" in result["error"]
    after = stored(aws)
    assert (after["status"], after["outcome"]) == ("SUCCEEDED", "promoted")
    assert "ConnectionError" in after["mlflow"]["error"] or "MlflowException" in after["mlflow"]["error"]
    assert after["mlflow"]["tracking_uri"].startswith("http://127.0.0.1:")
    value, dimensions = metrics["MlflowErrors"]
    assert value == 1.0 and dimensions == {"Model": "churn", "service": "refit-churn-mlflowsync"}


def test_a_run_with_nothing_for_mlflow_is_left_alone(aws, capsys):
    store(aws, record(outcome="no_drift", training=None, gate=None, registry=None))
    result, metrics = invoke(capsys)
    assert result == {"logged": False, "error": None}
    assert "mlflow" not in stored(aws)
    assert metrics["MlflowErrors"][0] == 0.0


class Refusing(BaseHTTPRequestHandler):
    """401 without credentials, 403 with any (the Authorization header each request carried is kept in `seen`)."""

    seen: list[str | None] = []

    def _refuse(self) -> None:
        authorization = self.headers.get("Authorization")
        type(self).seen.append(authorization)
        if authorization is None:
            status, body = 401, b"You are not authenticated. Please see the documentation for details."
            extra = {"WWW-Authenticate": 'Basic realm="mlflow"'}
        else:
            status, body = 403, json.dumps({"message": "The security token included in the request is invalid."})
            body, extra = body.encode(), {"x-amzn-ErrorType": "UnrecognizedClientException"}
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = _refuse

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def refusing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    Refusing.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_refuses_refit_without_credentials_is_recorded_and_counted(aws, capsys, monkeypatch):
    store(aws, record())
    with refusing_server() as uri:
        monkeypatch.setenv("REFIT_MLFLOW_TRACKING_URI", uri)
        result, metrics = invoke(capsys)
    assert Refusing.seen and Refusing.seen[0] is None  # refit sent no credentials, and was refused
    after = stored(aws)
    assert (after["status"], after["outcome"]) == ("SUCCEEDED", "promoted")
    assert "401" in after["mlflow"]["error"] and result["error"] == after["mlflow"]["error"]
    assert metrics["MlflowErrors"][0] == 1.0


def test_a_managed_server_that_refuses_the_roles_signature_is_recorded_and_counted(aws, capsys, monkeypatch):
    store(aws, record())
    arn = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/team"
    with refusing_server() as uri:
        monkeypatch.setenv("REFIT_MLFLOW_TRACKING_URI", arn)
        monkeypatch.setenv("SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT", uri)  # the plugin's own override of the server's URL
        result, metrics = invoke(capsys)
    [signature, *_] = Refusing.seen
    assert (
        signature.startswith("AWS4-HMAC-SHA256 Credential=") and "/us-east-1/sagemaker-mlflow/aws4_request" in signature
    )
    after = stored(aws)
    assert (after["status"], after["outcome"]) == ("SUCCEEDED", "promoted")
    assert "security token included in the request is invalid" in after["mlflow"]["error"]  # the 403's own message
    assert after["mlflow"]["tracking_uri"] == arn
    assert result["logged"] is False and metrics["MlflowErrors"][0] == 1.0


def test_a_sync_the_cleanup_could_not_start_is_written_into_the_record(aws):
    from refit_core.steps import AuditKey

    store(aws, record(status="ABORTED", outcome="aborted"))
    message = mlflow_sync.start_sync(boto3.client("lambda"), aws, "audit", "refit-churn--gone", AuditKey(**KEY))
    assert message.startswith("could not start the MLflow sync (refit-churn--gone): ResourceNotFoundException")
    after = stored(aws)
    assert after["mlflow"] == {"error": message} and (after["status"], after["outcome"]) == ("ABORTED", "aborted")


# `mlflow.credentials_secret`: a self-hosted server that checks credentials (MLflow's basic-auth app, or a reverse proxy
# with a bearer token). The stand-in answers 401 with a Basic challenge unless the request carries the expected
# Authorization header, and 403 PERMISSION_DENIED when it does (what the basic-auth app answers a user it knows but
# grants nothing): the sync stops at its first request, and the assertions are on what the server received.
USER, PASSWORD, TOKEN = "refit-bot", "pa55-w0rd-in-secret", "tok-3e8f-in-secret"


class Checking(BaseHTTPRequestHandler):
    expected: str = ""
    seen: list[str | None] = []

    def _check(self) -> None:
        authorization = self.headers.get("Authorization")
        type(self).seen.append(authorization)
        if authorization == type(self).expected:
            status, body = 403, json.dumps({"error_code": "PERMISSION_DENIED", "message": "Permission denied"}).encode()
            extra = {"Content-Type": "application/json"}
        else:
            status, body = 401, b"You are not authenticated. Please see the documentation for details."
            extra = {"WWW-Authenticate": 'Basic realm="mlflow"'}
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = _check

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def checking_server(expected: str) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Checking)
    Checking.expected, Checking.seen = expected, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def credentials(aws, monkeypatch):
    """The MLflow credential variables as the handler finds them in a fresh container: unset, nothing cached."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.setenv(name, "")  # so that what the handler sets is undone after the test
        monkeypatch.delenv(name)
    mlflow_sync._credentials.clear()
    secrets = boto3.client("secretsmanager")
    yield secrets
    mlflow_sync._credentials.clear()


def secret(secrets, name, value):
    return secrets.create_secret(Name=name, SecretString=json.dumps(value))["ARN"]


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("value", "header"),
    [
        ({"username": USER, "password": PASSWORD}, basic(USER, PASSWORD)),
        ({"token": TOKEN}, f"Bearer {TOKEN}"),
    ],
    ids=["basic", "bearer"],
)
def test_credentials_from_the_secret_reach_the_server(aws, credentials, capsys, monkeypatch, value, header):
    store(aws, record())
    monkeypatch.setenv("REFIT_MLFLOW_CREDENTIALS_SECRET", secret(credentials, "refit/mlflow", value))
    with checking_server(header) as uri:
        monkeypatch.setenv("REFIT_MLFLOW_TRACKING_URI", uri)
        result, _ = invoke(capsys)
    assert Checking.seen == [header]  # authenticated (then denied the experiment: the sync stops there)
    assert "PERMISSION_DENIED" in result["error"] and "401" not in result["error"]


def test_wrong_credentials_are_refused_recorded_and_counted_and_no_value_is_written(
    aws, credentials, capsys, monkeypatch
):
    store(aws, record())
    arn = secret(credentials, "refit/mlflow", {"username": USER, "password": PASSWORD})
    monkeypatch.setenv("REFIT_MLFLOW_CREDENTIALS_SECRET", arn)
    with checking_server(basic(USER, "the-right-one")) as uri:
        monkeypatch.setenv("REFIT_MLFLOW_TRACKING_URI", uri)
        context = LambdaContext("refit-churn--MlflowSync", 512, "arn:aws:lambda:us-east-1:123456789012:function:x")
        result = mlflow_sync.handler({"audit_key": KEY}, context)
        logs = capsys.readouterr().out
    assert Checking.seen[0] == basic(USER, PASSWORD)
    after = stored(aws)
    assert (after["status"], after["outcome"]) == ("SUCCEEDED", "promoted")
    assert "401" in after["mlflow"]["error"] and result["error"] == after["mlflow"]["error"]
    assert emitted_metrics(logs)["MlflowErrors"][0] == 1.0
    written = json.dumps(after, default=str) + logs
    assert PASSWORD not in written and basic(USER, PASSWORD).split()[1] not in written
    assert arn not in mlflow_sync._credentials  # forgotten: the next sync reads the (perhaps rotated) secret again


def test_a_secret_that_cannot_be_read_is_recorded_and_counted(aws, credentials, capsys, monkeypatch):
    """Its other bad shapes (no username, other keys, both kinds, not an object) are unit tests of
    refit_core.mlflow_sync.credentials_from_secret; the handler records them as it records this one."""
    store(aws, record())
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:refit/gone-AbCdEf"
    monkeypatch.setenv("REFIT_MLFLOW_CREDENTIALS_SECRET", arn)
    with checking_server("never") as uri:
        monkeypatch.setenv("REFIT_MLFLOW_TRACKING_URI", uri)
        result, metrics = invoke(capsys)
    assert Checking.seen == []  # MLflow was not called without its credentials
    after = stored(aws)
    assert (after["status"], after["outcome"]) == ("SUCCEEDED", "promoted")
    error = after["mlflow"]["error"]
    assert error.startswith(f"MlflowCredentialsError: mlflow.credentials_secret {arn} could not be read: ")
    assert "ResourceNotFoundException" in error
    assert result["error"] == error and metrics["MlflowErrors"][0] == 1.0


def test_the_secret_is_read_once_per_container_until_a_sync_fails(aws, credentials, monkeypatch):
    arn = secret(credentials, "refit/mlflow", {"token": TOKEN})
    env = {"REFIT_MLFLOW_CREDENTIALS_SECRET": arn}
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "left-over")
    mlflow_sync.use_credentials(env)
    credentials.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    mlflow_sync.use_credentials(env)  # cached: the deleted secret is not read again
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == TOKEN and "MLFLOW_TRACKING_USERNAME" not in os.environ
    mlflow_sync.forget_credentials(env)
    with pytest.raises(ValueError, match="could not be read: ResourceNotFoundException"):
        mlflow_sync.use_credentials(env)
