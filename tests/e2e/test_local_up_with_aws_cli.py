"""`refit local up` driven from outside, as a user would: the server in a subprocess, the AWS CLI (and boto3 in this
process) talking to it over HTTP with nothing but the environment the server prints. Tests run in order on one
server: the S3 event starts a run, the deployed endpoint answers (the AWS CLI, boto3 and the SageMaker SDK), the
README's manual input starts a run, a second server on the same port is refused, and SIGINT stops everything."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from refit_core.config import load_config
from refit_core.names import stack_name

from scripts.sample_data import churn_batch, to_csv_bytes
from tests.e2e.local_up_server import Server, free_port

ROOT = Path(__file__).resolve().parents[2]
MODEL = "churn"
BATCH_KEY = f"incoming/{MODEL}/2026-11-15.csv"  # the key the README's manual input names


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (the serve and train processes of the server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = time.monotonic()
    server = Server(free_port(), tmp_path_factory.mktemp("local-up"))
    try:
        if not server.ready.wait(180):
            pytest.fail("refit local up did not print its ready line in 180 s:\n" + "\n".join(server.lines[-40:]))
        server.startup_seconds = time.monotonic() - started
        yield server
    finally:
        server.stop()  # a test failed before the SIGINT test: still stop it cleanly


@pytest.fixture(scope="module")
def aws(server, tmp_path_factory):
    """Run the AWS CLI with the printed environment (and no user configuration); returns parsed JSON output."""
    cli = Path(sys.executable).parent / "aws"
    assert cli.exists(), f"{cli}: the AWS CLI is missing; install the dev extras (pip install -e '.[dev]')"
    home = tmp_path_factory.mktemp("home")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        **server.environment(),
        "AWS_CONFIG_FILE": str(home / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
    }

    def run(*arguments: str) -> dict:
        result = subprocess.run([str(cli), *arguments], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"aws {' '.join(arguments)}: {result.stderr}"
        return json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}

    return run


@pytest.fixture(scope="module")
def outputs(server):
    return json.loads((server.workdir / "outputs.json").read_text())["outputs"]


@pytest.fixture(scope="module")
def boto(server):
    environment = server.environment()
    session = boto3.Session(
        aws_access_key_id=environment["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=environment["AWS_SECRET_ACCESS_KEY"],
        region_name=environment["AWS_DEFAULT_REGION"],
    )
    return lambda service: session.client(service, endpoint_url=environment["AWS_ENDPOINT_URL"])


def state_machine(outputs: dict) -> str:
    return next(v for k, v in outputs.items() if "StateMachineArn" in k and v.endswith(f"-{MODEL}"))


def wait_until_done(aws, execution_arn: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        described = aws("stepfunctions", "describe-execution", "--execution-arn", execution_arn)
        if described["status"] != "RUNNING":
            return described
        assert time.monotonic() < deadline, f"{execution_arn} still RUNNING after {timeout} s"
        time.sleep(1)


def audit_record(boto, outputs: dict, execution_arn: str) -> dict:
    name = execution_arn.rsplit(":", 1)[-1]
    items = boto("dynamodb").query(
        TableName=outputs["AuditTable"],
        KeyConditionExpression="pk = :m AND begins_with(sk, :r)",
        ExpressionAttributeValues={":m": {"S": MODEL}, ":r": {"S": "run#"}},
    )["Items"]
    return next(item for item in items if item["execution"]["S"] == name)


def test_the_server_prints_the_environment_and_describe_stacks_gives_the_outputs(server, aws, outputs):
    assert server.environment() == {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.port}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
    }
    stack = stack_name(load_config(ROOT / "refit.toml").project)
    described = aws("cloudformation", "describe-stacks", "--stack-name", stack)["Stacks"][0]
    assert {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]} == outputs
    assert {"DataBucket", "AuditTable", "ArtifactBucket", "SummaryTopic"} <= set(outputs)


def test_a_batch_copied_with_the_cli_runs_the_loop_and_deploys(server, aws, outputs, boto, tmp_path):
    batch = tmp_path / "2026-11-15.csv"
    batch.write_bytes(to_csv_bytes(churn_batch(3000, 1)))
    started = time.monotonic()
    aws("s3", "cp", str(batch), f"s3://{outputs['DataBucket']}/{BATCH_KEY}")
    machine = state_machine(outputs)
    deadline = time.monotonic() + 15
    executions = []
    while not executions and time.monotonic() < deadline:
        executions = aws("stepfunctions", "list-executions", "--state-machine-arn", machine)["executions"]
        time.sleep(0.5)
    assert len(executions) == 1, "the S3 event of `aws s3 cp` started no run"
    execution = wait_until_done(aws, executions[0]["executionArn"])
    assert execution["status"] == "SUCCEEDED", execution
    print(f"s3 cp -> SUCCEEDED in {time.monotonic() - started:.1f} s (server up in {server.startup_seconds:.1f} s)")
    record = audit_record(boto, outputs, execution["executionArn"])
    assert (record["trigger"]["S"], record["outcome"]["S"]) == ("s3", "deployed_first")

    endpoint = f"{outputs['Project']}-{MODEL}"
    reply_file = tmp_path / "reply.json"
    reply = aws(
        "sagemaker-runtime",
        "invoke-endpoint",
        "--endpoint-name",
        endpoint,
        "--content-type",
        "text/csv",
        "--accept",
        "application/json",
        "--body",
        "12.0,70.5,1,48.0,basic,north",
        str(reply_file),
    )
    assert reply["InvokedProductionVariant"] == "champion"
    probability = json.loads(reply_file.read_text())["probabilities"][0]
    assert 0.0 < probability < 1.0

    # boto3 in another process: the same endpoint, and Data Capture writes what it served (capture_percent = 100).
    runtime = boto("sagemaker-runtime")
    for index in range(5):
        runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType="text/csv", Body="3.0,20.0,0,12.0,pro,south", InferenceId=f"t-{index}"
        )
    prefix = load_config(ROOT / "refit.toml").model(MODEL).capture_prefix
    deadline, captured = time.monotonic() + 10, []
    while len(captured) < 6 and time.monotonic() < deadline:
        time.sleep(0.5)
        s3 = boto("s3")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=outputs["DataBucket"], Prefix=prefix).get("Contents", [])]
        captured = [
            line
            for key in keys
            for line in s3.get_object(Bucket=outputs["DataBucket"], Key=key)["Body"].read().decode().splitlines()
        ]
    assert len(captured) == 6, f"Data Capture wrote {len(captured)} of 6 records under {prefix}"
    ids = {json.loads(line)["eventMetadata"].get("inferenceId") for line in captured}
    assert ids == {None, "t-0", "t-1", "t-2", "t-3", "t-4"}


# The SageMaker SDK in another process, with nothing but the printed environment: v3's Endpoint (its replacement of
# v2's Predictor) loaded by name with DescribeEndpoint, then invoked with the SDK's CSVSerializer and JSONDeserializer.
SDK_CLIENT = """
import json, sys
from sagemaker.core.deserializers import JSONDeserializer
from sagemaker.core.resources import Endpoint
from sagemaker.core.serializers import CSVSerializer

endpoint = Endpoint.get(endpoint_name=sys.argv[1])
endpoint.serializer, endpoint.deserializer = CSVSerializer(), JSONDeserializer()
reply = endpoint.invoke(body=json.load(sys.stdin), content_type="text/csv", accept="application/json")
print(json.dumps({"status": endpoint.endpoint_status, "variant": reply.invoked_production_variant, "body": reply.body}))
"""


def test_the_sagemaker_sdk_predicts_with_the_printed_environment(server, outputs, boto, tmp_path):
    endpoint = f"{outputs['Project']}-{MODEL}"
    features = churn_batch(25, 11).drop(columns=["churned"])
    rows = features.to_numpy().tolist()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **server.environment()}  # no ~/.aws, no other AWS_*
    result = subprocess.run(
        [sys.executable, "-c", SDK_CLIENT, endpoint],
        input=json.dumps(rows),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert (reply["status"], reply["variant"]) == ("InService", "champion")
    predictions, probabilities = reply["body"]["predictions"], reply["body"]["probabilities"]
    assert len(predictions) == len(probabilities) == len(rows)
    assert all(0.0 < p < 1.0 for p in probabilities)
    assert predictions == [int(p >= 0.5) for p in probabilities]

    direct = boto("sagemaker-runtime").invoke_endpoint(
        EndpointName=endpoint,
        TargetVariant=reply["variant"],
        ContentType="text/csv",
        Accept="application/json",
        Body=features.to_csv(header=False, index=False),
    )
    assert json.loads(direct["Body"].read()) == reply["body"]


def test_the_readme_manual_input_starts_a_run(aws, outputs, boto):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Starting a run by hand", 1)[1]
    payload = json.loads(re.search(r"```json\n(.*?)\n```", section, re.S).group(1))
    assert payload["data_uri"] == f"s3://<DataBucket>/{BATCH_KEY}", "the README's example names another key"
    payload["data_uri"] = payload["data_uri"].replace("<DataBucket>", outputs["DataBucket"])
    started = aws(
        "stepfunctions",
        "start-execution",
        "--state-machine-arn",
        state_machine(outputs),
        "--name",
        "manual-from-the-cli",
        "--input",
        json.dumps(payload),
    )
    execution = wait_until_done(aws, started["executionArn"])
    assert execution["status"] == "SUCCEEDED", execution
    record = audit_record(boto, outputs, started["executionArn"])
    assert record["trigger"]["S"] == "manual"
    assert record["trigger_reason"]["S"] == payload["reason"]


def test_refit_commands_work_with_the_printed_environment(server, tmp_path):
    """`refit` in another process finds the stack through describe-stacks (feedback reads the DataBucket output) and
    the registry through the same endpoint."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **server.environment()}

    def refit(*arguments: str) -> dict:
        result = subprocess.run(
            [sys.executable, "-m", "scripts.cli", *arguments], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    labels = tmp_path / "labels.csv"
    labels.write_text("inference_id,label\nt-0,1\nt-1,0\n")
    summary = refit("feedback", MODEL, str(labels), "--dry-run", "--json")
    assert (summary["accepted"], summary["matched"]) == (2, 2), summary
    lineage = refit("lineage", MODEL, "1")
    assert lineage["approval"] == "Approved"

    # The run commands, from another process, through the same endpoint: land a batch, a manual run followed to
    # its end, the status.
    batch = tmp_path / "from-refit.csv"
    batch.write_bytes(to_csv_bytes(churn_batch(1500, 7)))
    landed = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "land", MODEL, str(batch), "--follow"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert landed.returncode == 0 and "run ended SUCCEEDED" in landed.stdout, landed.stdout + landed.stderr
    followed = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "trigger", MODEL, "--reason", "from the suite", "--follow"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert "Prepare" in followed.stdout and "Why it ran: manual - from the suite" in followed.stdout, followed.stdout
    status = refit("status", MODEL, "--json")
    assert status["endpoint"]["status"] == "InService" and status["champion"]["version"] >= 1
    assert status["running"] == [] and status["lock"] is None


def test_metrics_and_lambda_invokes_over_http_reach_the_bridges(aws, outputs, tmp_path):
    """PutMetricData from outside evaluates the alarms on its metric; an outside Invoke runs the real handler."""
    endpoint = f"{outputs['Project']}-{MODEL}"
    alarm = f"{endpoint}--canary"
    dimensions = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": "challenger"}]
    # 3 errors in 20 invocations: over the alarm's max_error_rate with its min_invocations (refit.toml: 0.01, 20)
    data = [
        {"MetricName": "Invocations", "Value": 20, "Dimensions": dimensions},
        {"MetricName": "Invocation5XXErrors", "Value": 3, "Dimensions": dimensions},
    ]
    aws("cloudwatch", "put-metric-data", "--namespace", "AWS/SageMaker", "--metric-data", json.dumps(data))
    state = aws("cloudwatch", "describe-alarms", "--alarm-names", alarm)["MetricAlarms"][0]
    assert state["StateValue"] == "ALARM", state

    functions = aws("lambda", "list-functions")["Functions"]
    monitor = next(
        f["FunctionName"]
        for f in functions
        if f["Environment"]["Variables"].get("POWERTOOLS_SERVICE_NAME") == f"refit-{MODEL}-monitor"
    )
    event = {
        "version": "0",
        "id": "cli",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": "us-east-1",
        "resources": [],
        "detail": {},
    }
    reply = tmp_path / "monitor.json"
    invoked = aws("lambda", "invoke", "--function-name", monitor, "--payload", json.dumps(event), str(reply))
    assert invoked["StatusCode"] == 200 and "FunctionError" not in invoked, reply.read_text()
    result = json.loads(reply.read_text())
    assert result["report_uri"].startswith(f"s3://{outputs['ArtifactBucket']}/monitoring/{MODEL}/"), result


def test_a_second_server_on_the_same_port_is_refused_in_one_line(server):
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "local", "up", "--port", str(server.port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"port {server.port}" in result.stderr and "--port" in result.stderr
    assert time.monotonic() - started < 20  # refused before synthesizing anything
    assert server.process.poll() is None


def test_sigint_stops_the_server_and_its_processes(server, boto):
    boto("sagemaker-runtime")  # the endpoint's serve process is up
    serving = children(server.process.pid)
    assert serving, "no serve process under the server"
    started = time.monotonic()
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=30) == 0, "\n".join(server.lines[-20:])
    print(f"stopped in {time.monotonic() - started:.1f} s")
    assert time.monotonic() - started < 15
    assert not [pid for pid in serving if alive(pid)], "serve processes left running"
    assert server.lines[-1] == "refit local: stopped"
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", server.port)) != 0, "the port still accepts connections"
