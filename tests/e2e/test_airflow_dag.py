"""The Airflow DAG (scripts/integrations/airflow_dag.py) run with `dag.test()` against `refit local up`: its tasks
start a manual refit run with the Amazon provider's StepFunctionStartExecutionOperator and wait for it with its
StepFunctionExecutionSensor. A run that SUCCEEDED makes a successful DAG run; a run that FAILED fails the sensor and
the DAG run; both runs end with an audit record.

Airflow lives in its own virtualenv (`.venv-airflow`, created by `make install` from
scripts/integrations/airflow-constraints.txt): its pins conflict with refit's. It runs in a subprocess with a
throwaway AIRFLOW_HOME (sqlite, no webserver, no scheduler: `dag.test()` runs the tasks in-process), and talks to
the local AWS through an Airflow connection whose `endpoint_url` is the server's. The shipped DAG file is copied into
that home's DAGs folder as the README says; a second copy there builds the same DAG with a 1 s poke interval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from tests.e2e.local_up_server import ROOT, Server, free_port

MODEL = "churn"
AIRFLOW_PYTHON = ROOT / ".venv-airflow" / "bin" / "python"
DAG_FILE = ROOT / "scripts" / "integrations" / "airflow_dag.py"
TEST_DAG_ID = "refit_retrain_test"
NOT_LANDED = f"incoming/{MODEL}/not-landed.csv"

SHIPPED_DAG_LINE = "\ndag = build_dag()\n"
TEST_DAG_LINE = f'\ndag = build_dag(dag_id="{TEST_DAG_ID}", poke_seconds=1, run_timeout=timedelta(minutes=3))\n'


def fast_dag_source() -> str:
    """The shipped file with its last line building the DAG under another id, polling once a second (importing the
    shipped module from a second DAG file would define `refit_retrain` twice in the DAGs folder)."""
    source = DAG_FILE.read_text()
    assert source.count(SHIPPED_DAG_LINE) == 1, f"{DAG_FILE} no longer ends with `dag = build_dag()`"
    return source.replace(SHIPPED_DAG_LINE, TEST_DAG_LINE)


# Runs in .venv-airflow. Creates the metadata database and loads the DAGs folder while the server starts, then reads
# the DAG runs' confs from stdin, runs each with dag.test() and prints one JSON line.
DRIVER = f"""
import json, sys
from airflow.utils import db
db.initdb()
from airflow.dag_processing.dagbag import DagBag
import airflow.api_fastapi.execution_api.routes  # the in-process Execution API dag.test() uses, built ahead
bag = DagBag()
shipped = bag.get_dag("refit_retrain")
result = {{
    "import_errors": {{path: str(error)[-500:] for path, error in bag.import_errors.items()}},
    "tasks": {{t.task_id: type(t).__name__ for t in shipped.tasks}} if shipped else None,
    "runs": [],
}}
from refit_retrain import execution_name
dag = bag.get_dag("{TEST_DAG_ID}")
for conf in json.loads(sys.stdin.readline()):
    run = dag.test(run_conf=conf)
    tasks = {{ti.task_id: str(ti.state) for ti in run.get_task_instances()}}
    result["runs"].append({{"state": str(run.state), "tasks": tasks, "execution": execution_name(run.run_id)}})
print("RESULT " + json.dumps(result), flush=True)
"""


def airflow_environment(home: Path, endpoint_url: str, region: str) -> dict[str, str]:
    """A throwaway Airflow: its home, sqlite database and DAGs folder in `home`; no examples; the AWS connection
    (`aws_default`) pointing at the local server; no AWS_* variables and no ~/.aws of the user's."""
    connection = {
        "conn_type": "aws",
        "login": "local",
        "password": "local",
        "extra": {"endpoint_url": endpoint_url, "region_name": region},
    }
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
        "PYTHONPATH": str(home / "dags"),  # the driver imports execution_name from the shipped file
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
    }


@pytest.fixture(scope="module")
def airflow_runs(tmp_path_factory, cloud_assembly):
    """Start `refit local up` and the Airflow driver together; once the server is ready, take the state machine's
    ARN from `refit status --json` and run three DAG runs (one succeeding, two failing). Yields (the driver's result,
    the ARN, the server, the driver's log)."""
    if not AIRFLOW_PYTHON.exists():
        reason = (
            f"{AIRFLOW_PYTHON} is missing: `make install` creates it (scripts/integrations/airflow-constraints.txt)"
        )
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"CI: {reason}")
        pytest.skip(reason)
    started = time.monotonic()
    server = Server(free_port(), tmp_path_factory.mktemp("local-up"), cloud_assembly)  # synthesized once per session
    home = tmp_path_factory.mktemp("airflow-home")
    (home / "dags").mkdir()
    (home / "dags" / "refit_retrain.py").write_text(DAG_FILE.read_text())
    (home / "dags" / "refit_retrain_test.py").write_text(fast_dag_source())
    driver = None
    try:
        # The server's endpoint is known before it is ready: the connection can be given now.
        endpoint, region = f"http://127.0.0.1:{server.port}", "us-east-1"
        driver = subprocess.Popen(
            [str(AIRFLOW_PYTHON), "-c", DRIVER],
            cwd=home,
            env=airflow_environment(home, endpoint, region),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if not server.ready.wait(180):
            pytest.fail("refit local up did not print its ready line in 180 s:\n" + "\n".join(server.lines[-40:]))
        ready = time.monotonic() - started
        environment = server.environment()
        assert (environment["AWS_ENDPOINT_URL"], environment["AWS_DEFAULT_REGION"]) == (endpoint, region)
        # The README's way to the ARN: `refit status MODEL --json`, which finds it in the stack's outputs.
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **environment}
        status = subprocess.run(
            [sys.executable, "-m", "scripts.cli", "status", MODEL, "--json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status.returncode == 0, status.stderr
        state_machine = json.loads(status.stdout)["state_machine_arn"]
        outputs = json.loads((server.workdir / "outputs.json").read_text())["outputs"]
        # Each conf names every param: dag.test() called again in one process keeps the previous run's conf values in
        # the tasks' params (measured: a data_uri carried over), where Airflow's workers parse the DAG anew per task.
        params = {"state_machine_arn": state_machine, "data_uri": None, "force": False, "requested_by": None}
        confs = [
            {**params, "reason": "retrain from Airflow"},
            {**params, "data_uri": f"s3://{outputs['DataBucket']}/{NOT_LANDED}", "reason": "a batch never landed"},
            {**params, "reason": "a typo", "forse": True},  # a key the DAG passes on for refit to refuse
        ]
        log, _ = driver.communicate(json.dumps(confs) + "\n", timeout=300)
        lines = [line for line in log.splitlines() if line.startswith("RESULT ")]
        assert driver.returncode == 0 and lines, f"the Airflow driver exited {driver.returncode}:\n{log[-6000:]}"
        print(f"server ready in {ready:.1f} s; with the DAG runs done: {time.monotonic() - started:.1f} s")
        yield json.loads(lines[0].removeprefix("RESULT ")), state_machine, server, log
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        server.stop()


@pytest.fixture(scope="module")
def aws(airflow_runs):
    environment = airflow_runs[2].environment()
    session = boto3.Session(
        aws_access_key_id=environment["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=environment["AWS_SECRET_ACCESS_KEY"],
        region_name=environment["AWS_DEFAULT_REGION"],
    )
    return lambda service: session.client(service, endpoint_url=environment["AWS_ENDPOINT_URL"])


def execution(aws, state_machine: str, name: str) -> dict:
    arn = f"{state_machine.replace(':stateMachine:', ':execution:', 1)}:{name}"
    return aws("stepfunctions").describe_execution(executionArn=arn)


def audit_record(aws, server: Server, name: str) -> dict:
    table = json.loads((server.workdir / "outputs.json").read_text())["outputs"]["AuditTable"]
    items = aws("dynamodb").query(
        TableName=table,
        KeyConditionExpression="pk = :m AND begins_with(sk, :r)",
        ExpressionAttributeValues={":m": {"S": MODEL}, ":r": {"S": "run#"}},
    )["Items"]
    records = [item for item in items if item["execution"]["S"] == name]
    assert len(records) == 1, f"{len(records)} audit records for execution {name}"
    return records[0]


def test_the_shipped_dag_loads_and_uses_the_providers_operator_and_sensor(airflow_runs):
    result = airflow_runs[0]
    assert result["import_errors"] == {}
    assert result["tasks"] == {
        "build_input": "_PythonDecoratedOperator",
        "start_run": "StepFunctionStartExecutionOperator",
        "wait_for_run": "StepFunctionExecutionSensor",
    }


def test_a_run_that_succeeds_makes_a_successful_dag_run(airflow_runs, aws):
    result, state_machine, server, log = airflow_runs
    run = result["runs"][0]
    assert run["state"] == "success", log[-6000:]
    assert run["tasks"] == {"build_input": "success", "start_run": "success", "wait_for_run": "success"}
    described = execution(aws, state_machine, run["execution"])
    assert described["status"] == "SUCCEEDED"
    # The documented manual input, with requested_by the identity the Airflow connection signs with.
    caller = aws("sts").get_caller_identity()["Arn"]
    assert json.loads(described["input"]) == {"force": False, "reason": "retrain from Airflow", "requested_by": caller}
    record = audit_record(aws, server, run["execution"])
    assert (record["trigger"]["S"], record["trigger_reason"]["S"]) == ("manual", "retrain from Airflow")
    assert (record["status"]["S"], record["outcome"]["S"]) == ("SUCCEEDED", "no_data")  # nothing landed yet


def test_a_run_that_fails_fails_the_sensor_and_the_dag_run(airflow_runs, aws):
    result, state_machine, server, log = airflow_runs
    run = result["runs"][1]
    assert run["state"] == "failed"
    assert run["tasks"] == {"build_input": "success", "start_run": "success", "wait_for_run": "failed"}
    assert "Step Function sensor failed" in log
    described = execution(aws, state_machine, run["execution"])
    assert described["status"] == "FAILED"
    caller = aws("sts").get_caller_identity()["Arn"]
    bucket = json.loads(described["input"])["data_uri"].split("/")[2]
    assert json.loads(described["input"]) == {
        "data_uri": f"s3://{bucket}/{NOT_LANDED}",
        "force": False,
        "reason": "a batch never landed",
        "requested_by": caller,
    }
    record = audit_record(aws, server, run["execution"])
    assert (record["status"]["S"], record["outcome"]["S"]) == ("FAILED", "bad_data")
    assert "not-landed.csv: no such object" in record["message"]["S"]


def test_a_conf_key_the_dag_does_not_declare_reaches_refit_and_fails_the_run(airflow_runs, aws):
    result, state_machine, server, log = airflow_runs
    run = result["runs"][2]
    assert (run["state"], run["tasks"]["wait_for_run"]) == ("failed", "failed")
    described = execution(aws, state_machine, run["execution"])
    assert described["status"] == "FAILED"
    caller = aws("sts").get_caller_identity()["Arn"]
    assert json.loads(described["input"]) == {"force": False, "reason": "a typo", "requested_by": caller, "forse": True}
    record = audit_record(aws, server, run["execution"])
    assert record["status"]["S"] == "FAILED"
    assert "forse: unknown field" in record["message"]["S"], record["message"]["S"]
