"""The pieces of `refit local up` that need no stood-up stack: the port check, the stack record, the environment the
runtime clears, and a training job stopped when the runtime shuts down (tests/e2e/test_local_up_with_aws_cli.py
drives the whole server)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws

from scripts.local_aws.bridges import Bridges
from scripts.local_aws.server import PortBusy, bind, local_up, publish_stack_record


def test_a_busy_port_is_refused_with_the_port_and_the_fix():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(PortBusy, match=f"port {port} on 127.0.0.1 is in use.*pass --port"):
            bind(port)
        err = io.StringIO()
        assert local_up(port=port, workdir=Path("unused"), out=io.StringIO(), err=err) == 1
        assert err.getvalue().count("\n") == 1 and f"port {port}" in err.getvalue()
    server = bind(port)  # free again
    try:
        assert server.server_address == ("127.0.0.1", port)
    finally:
        server.server_close()


def test_an_assembly_that_is_not_there_is_refused_in_one_line_before_the_port_is_taken(tmp_path):
    err = io.StringIO()
    missing = tmp_path / "cdk.out"
    assert local_up(port=0, workdir=tmp_path / "work", assembly=missing, out=io.StringIO(), err=err) == 1
    assert err.getvalue().count("\n") == 1 and f"{missing / 'manifest.json'}: no cloud assembly" in err.getvalue()
    assert not (tmp_path / "work").exists()


def test_the_stack_record_answers_describe_stacks_with_the_outputs():
    outputs = {"DataBucket": "refit-data-1", "Project": "refit", "ModelchurnEndpointName": "refit-churn"}
    runtime = SimpleNamespace(region="us-east-1", outputs=outputs, assembly=SimpleNamespace(stack_name="refit"))
    with mock_aws():
        publish_stack_record(runtime)
        stack = boto3.client("cloudformation", region_name="us-east-1").describe_stacks(StackName="refit")["Stacks"][0]
    assert {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]} == outputs


def test_a_training_process_is_stopped_when_the_runtime_shuts_down(tmp_path):
    bridges = Bridges(
        account="123456789012",
        region="us-east-1",
        functions={},
        training_asset=tmp_path,
        workdir=tmp_path,
        spot_discount=0.0,
        seed=0,
        log=lambda message: None,
    )
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    threading.Timer(0.3, bridges.stopping.set).start()
    started = time.monotonic()
    interrupted = bridges._watch(process, tmp_path / "events.jsonl", None, timeout=60)
    assert not interrupted and process.returncode == -15  # SIGTERM, as StopTrainingJob sends
    assert time.monotonic() - started < 5


def test_the_runtime_clears_a_clients_endpoint_settings_from_its_own_environment(monkeypatch, cloud_assembly, tmp_path):
    """A shell that exported AWS_ENDPOINT_URL for clients must not send the runtime's own clients over HTTP."""
    from scripts.local_aws.runtime import LocalRuntime

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    with LocalRuntime(cloud_assembly, tmp_path) as aws:
        assert "AWS_ENDPOINT_URL" not in os.environ and "AWS_ENDPOINT_URL_S3" not in os.environ
        aws.client("s3").head_bucket(Bucket=aws.data_bucket)
    assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"


def test_the_server_refuses_what_aws_refuses_from_any_client():
    """A client of `refit local up` in another process is not patched by enforce_limits: the server itself refuses a
    JSON-protocol request over a service limit (SageMaker's 63-character names, a base64 blob over its byte limit)
    with the service's ValidationException, and passes a valid one to moto."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = bind(port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    script = f"""
import boto3, json
from botocore.exceptions import ClientError
def client(name):
    return boto3.client(name, region_name="us-east-1", endpoint_url="http://127.0.0.1:{port}",
                        aws_access_key_id="local", aws_secret_access_key="local")
out = {{}}
def attempt(key, call):
    try:
        call()
        out[key] = "ok"
    except ClientError as error:
        out[key] = [error.response["Error"]["Code"], error.response["Error"]["Message"]]
attempt("long_name", lambda: client("sagemaker").create_model(ModelName="m" * 64,
        ExecutionRoleArn="arn:aws:iam::123456789012:role/r", PrimaryContainer={{"Image": "i"}}))
attempt("valid", lambda: client("sagemaker").list_models())
key = client("kms").create_key()["KeyMetadata"]["KeyId"]
attempt("big_blob", lambda: client("kms").encrypt(KeyId=key, Plaintext=b"x" * 4097))
attempt("small_blob", lambda: client("kms").encrypt(KeyId=key, Plaintext=b"x" * 4096))
print(json.dumps(out))
"""
    try:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=environment
        )
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    assert result.returncode == 0, result.stderr
    out = __import__("json").loads(result.stdout)
    code, message = out["long_name"]
    assert code == "ValidationException"
    assert "sagemaker CreateModel" in message and "ModelName: length 64 is over the maximum 63" in message
    assert out["valid"] == "ok" and out["small_blob"] == "ok"
    assert out["big_blob"][0] == "ValidationException" and "Plaintext: 4097 bytes" in out["big_blob"][1]
