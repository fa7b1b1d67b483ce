"""`refit report RUN_ID` on moto: the run is found by id or execution name across the configured models, the
timeline comes from a real execution's history (moto's Step Functions interpreter), the drift table and plots from
the files the check wrote, the gate's evidence from gate.json; what is missing is named, a run that does not exist is
one line and exit code 2. (The whole page from a real run, in a browser: test_reports_in_browser.py.)"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
from boto3.dynamodb.types import TypeSerializer
from moto import mock_aws
from refit_core.audit import summarize_run
from refit_core.batch import BatchStats
from refit_core.config import load_config
from refit_core.drift import detect_drift
from refit_core.gate import decide
from refit_core.profile import build_profile
from refit_core.report import figure, figures, render_html
from refit_core.steps import DriftSummary, GateStep
from refit_handlers.common import to_dynamodb

from scripts.cli import main
from scripts.run_commands import STACK_OUTPUTS_ENV
from scripts.sample_data import churn_batch
from tests.conftest import ROOT, create_audit_table
from tests.unit.test_gate import binormal

ROLE = "arn:aws:iam::123456789012:role/sfn"
MACHINE_ARN = "arn:aws:states:us-east-1:123456789012:stateMachine:"
PASSING = {
    "StartAt": "Prepare",
    "States": {
        "Prepare": {"Type": "Pass", "Next": "Check batch"},
        "Check batch": {"Type": "Pass", "Next": "Gate challenger"},
        "Gate challenger": {"Type": "Pass", "Next": "Finalize"},
        "Finalize": {"Type": "Pass", "End": True},
    },
}
FAILING = {
    "StartAt": "Prepare",
    "States": {
        "Prepare": {"Type": "Pass", "Next": "Check batch"},
        "Check batch": {"Type": "Fail", "Error": "DataError", "Cause": "batch.csv: not UTF-8 text"},
    },
}


def refit(*arguments: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(arguments), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def aws(monkeypatch, tmp_path):
    # Where the state machines are, as the run commands find them: the stack's outputs (a file of them here).
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({f"Model{m}StateMachineArn": f"{MACHINE_ARN}refit-{m}" for m in ("churn", "other")}))
    monkeypatch.setenv(STACK_OUTPUTS_ENV, str(outputs))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        create_audit_table(boto3.client("dynamodb"))
        boto3.client("s3").create_bucket(Bucket="art")
        yield


def execute(machine: str, definition: dict, execution: str) -> str:
    """A real execution of `definition` on a state machine named `machine`, awaited."""
    sfn = boto3.client("stepfunctions")
    arns = [m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"] if m["name"] == machine]
    arn = arns[0] if arns else sfn.create_state_machine(name=machine, definition=json.dumps(definition), roleArn=ROLE)
    arn = arn if isinstance(arn, str) else arn["stateMachineArn"]
    execution_arn = sfn.start_execution(stateMachineArn=arn, name=execution, input='{"force": true}')["executionArn"]
    deadline = time.monotonic() + 30
    while sfn.describe_execution(executionArn=execution_arn)["status"] == "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return execution_arn


def write_run(model: str, run_id: str, *, drift: bool = True, gate: bool = True, execution: str | None = None) -> dict:
    """A run's files as the check and the gate write them (their own code on generated data), and its audit record as
    Finalize writes it (summarize_run, to_dynamodb)."""
    s3, prefix = boto3.client("s3"), f"reports/{model}/{run_id}"
    state: dict = {
        "run": {"run_id": run_id, "model": model, "trigger": "manual", "reason": "weekly refresh", "force": True},
        "check": {"data_uri": "s3://data/incoming/churn/b.csv"},
    }
    if drift:
        profile = build_profile(churn_batch(600, 1), target="churned", categorical=["plan", "region"])
        stats = BatchStats.of([churn_batch(600, 2, shift=1.0)], profile)
        report = detect_drift(stats, load_config(ROOT / "refit.toml").model("churn").drift)
        s3.put_object(Bucket="art", Key=f"{prefix}/drift.json", Body=json.dumps(report).encode())
        s3.put_object(Bucket="art", Key=f"{prefix}/drift.html", Body=render_html(report, stats, "drift").encode())
        state["check"].update(
            drift=DriftSummary.of(report).to_state(),
            report_uri=f"s3://art/{prefix}/drift.json",
            report_html_uri=f"s3://art/{prefix}/drift.html",
        )
    if gate:
        config = load_config(ROOT / "refit.toml").model("churn")
        y, challenger, champion = binormal(np.random.default_rng(5), 1500, 0.80, 0.74, 0.8)
        decision = decide("binary_classification", "roc_auc", "maximize", config.gate, y, challenger, champion, seed=1)
        decision = json.loads(json.dumps(decision, default=float))
        decision["all_metrics"] = {"challenger": {"roc_auc": decision["challenger"]}, "champion": {"roc_auc": 0.74}}
        decision["intervals"] = {"challenger": {"roc_auc": [0.78, 0.82]}, "champion": {"roc_auc": [0.72, 0.76]}}
        s3.put_object(Bucket="art", Key=f"{prefix}/gate.json", Body=json.dumps(decision).encode())
        state["gate"] = GateStep.of(decision, gate_uri=f"s3://art/{prefix}/gate.json").to_state()
        state["registry"] = {
            "model_package_arn": f"arn:aws:sagemaker:us-east-1:123456789012:model-package/refit-{model}/3",
            "version": 3,
            "approval": "Approved",
            "lineage_uri": f"s3://art/models/{model}/{run_id}/lineage.json",
        }
    record = summarize_run(
        state, model, execution or run_id, "2026-11-29T01:00:00+00:00", "2026-11-29T01:05:00+00:00", None
    )
    serializer = TypeSerializer()
    boto3.client("dynamodb").put_item(
        TableName="audit", Item={k: serializer.serialize(v) for k, v in to_dynamodb(record).items()}
    )
    return record


def test_the_page_holds_the_runs_history_drift_plots_and_gate_evidence(aws, tmp_path):
    record = write_run("churn", "run-1")
    execute("refit-churn", PASSING, "run-1")
    page = tmp_path / "run.html"
    code, out, err = refit("report", "run-1", "-o", str(page), "--audit-table", "audit", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [s["state"] for s in data["timeline"]["states"]] == ["Prepare", "Check batch", "Gate challenger", "Finalize"]
    assert data["timeline"]["status"] == "SUCCEEDED" and json.loads(data["timeline"]["input"]) == {"force": True}
    assert data["execution_arn"].endswith(":execution:refit-churn:run-1")
    # The lineage document was never written: named, and the page still written.
    assert data["notes"] == ["lineage s3://art/models/churn/run-1/lineage.json: NoSuchKey"]
    html = page.read_text()
    drifted = data["drift"]["drifted_features"]
    assert drifted and set(drifted) <= set(data["drift_plots"])
    for name in drifted:  # the check's own plots, not redrawn
        assert data["drift_plots"][name] in html
    assert f"{record['gate']['challenger']:.4f}" in html and f"{record['gate']['champion']:.4f}" in html
    assert "[0.7800, 0.8200]" in html and "weekly refresh" in html
    assert "<script" not in html and "http" not in html.replace("http://www.w3.org/2000/svg", "")


def test_a_run_is_found_by_execution_name_in_any_configured_model(aws, tmp_path):
    second = '\n[[models]]\nname = "other"\nproblem_type = "regression"\ntarget = "usage_gb"\nprimary_metric = "rmse"\n'
    config = tmp_path / "refit.toml"
    config.write_text((ROOT / "refit.toml").read_text() + second + 'metric_direction = "minimize"\n')
    write_run("other", "manual-2026-11-29T01-00-00", drift=False, gate=False, execution="manual-2026-11-29T01:00:00")
    execute("refit-other", FAILING, "manual-2026-11-29T01:00:00")
    page = tmp_path / "other.html"
    code, out, err = refit(
        "--config",
        str(config),
        "report",
        "manual-2026-11-29T01:00:00",
        "-o",
        str(page),
        "--audit-table",
        "audit",
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["run"]["model"] == "other" and data["timeline"]["status"] == "FAILED"
    assert data["timeline"]["errors"] == [
        {"state": "Check batch", "error": "DataError", "cause": "batch.csv: not UTF-8 text"}
    ]
    assert "The run did not reach the gate" in page.read_text()
    # The same run id under the other model too: the command names both instead of guessing.
    write_run("churn", "manual-2026-11-29T01-00-00", drift=False, gate=False)
    code, _, err = refit("--config", str(config), "report", "manual-2026-11-29T01-00-00", "--audit-table", "audit")
    assert code == 1 and "exists for models churn, other: pass --model" in err
    code, _, err = refit(
        "--config",
        str(config),
        "report",
        "manual-2026-11-29T01-00-00",
        "--model",
        "churn",
        "--audit-table",
        "audit",
        "-o",
        str(tmp_path / "churn.html"),
    )
    assert code == 0, err


def test_a_run_that_does_not_exist_is_one_line_and_exit_2(aws, tmp_path):
    write_run("churn", "run-1", drift=False, gate=False)
    code, out, err = refit("report", "run-9", "-o", str(tmp_path / "x.html"), "--audit-table", "audit")
    assert (code, out) == (2, "")
    assert err == "refit: no run 'run-9' in audit table audit for model(s) churn; list runs with `refit runs MODEL`\n"
    assert not (tmp_path / "x.html").exists()


def test_a_run_still_running_says_so(aws, tmp_path):
    sfn = boto3.client("stepfunctions")
    waiting = {
        "StartAt": "Wait for training",
        "States": {"Wait for training": {"Type": "Wait", "Seconds": 5, "End": True}},
    }
    arn = sfn.create_state_machine(name="refit-churn", definition=json.dumps(waiting), roleArn=ROLE)["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=arn, name="run-2")["executionArn"]
    try:
        code, out, err = refit("report", "run-2", "--audit-table", "audit")
        assert (code, out) == (2, "")
        assert err.startswith(f"refit: run 'run-2' is still running ({execution}); its report can be written once")
    finally:
        sfn.stop_execution(executionArn=execution)


def test_parts_gone_are_named_and_the_page_is_still_written(aws, tmp_path):
    write_run("churn", "run-1")
    s3 = boto3.client("s3")
    s3.delete_object(Bucket="art", Key="reports/churn/run-1/gate.json")
    s3.delete_object(Bucket="art", Key="reports/churn/run-1/drift.html")
    code, out, err = refit("report", "run-1", "-o", str(tmp_path / "run.html"), "--audit-table", "audit", "--json")
    assert code == 0, err
    notes = json.loads(out)["notes"]
    assert any(n.startswith("execution history of run-1: ExecutionDoesNotExist") for n in notes)
    assert "gate decision s3://art/reports/churn/run-1/gate.json: NoSuchKey" in notes
    assert "drift page s3://art/reports/churn/run-1/drift.html: NoSuchKey" in notes
    html = (tmp_path / "run.html").read_text()
    assert "could not be read" in html and "No plot found for" in html and "NoSuchKey" in html


def test_an_unreachable_endpoint_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local")
    code, out, err = refit("report", "run-1", "--audit-table", "audit")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("refit: cannot read audit table audit (") and "check AWS_ENDPOINT_URL" in err
    # Without --audit-table the stack's outputs are read first: the same one line.
    code, out, err = refit("report", "run-1")
    assert code == 1 and out == "" and err.count("\n") == 1 and "check AWS_ENDPOINT_URL" in err


def test_a_plot_that_could_run_code_is_left_out(aws, tmp_path):
    write_run("churn", "run-1")
    s3 = boto3.client("s3")
    page = s3.get_object(Bucket="art", Key="reports/churn/run-1/drift.html")["Body"].read().decode()
    column = next(iter(figures(page)))
    hostile = page.replace("<svg ", "<svg onload='alert(1)' ", 1)
    s3.put_object(Bucket="art", Key="reports/churn/run-1/drift.html", Body=hostile.encode())
    code, out, err = refit("report", "run-1", "-o", str(tmp_path / "run.html"), "--audit-table", "audit", "--json")
    assert code == 0, err
    plots = json.loads(out)["drift_plots"]
    assert column not in plots and set(plots) == set(figures(page)) - {column}
    assert "alert(1)" not in (tmp_path / "run.html").read_text()


def test_the_drift_pages_plots_read_back_by_column():
    plots = {"a'b & <c>": "<svg xmlns='x' width='1'><title>t</title></svg>", "plain": "<svg ><rect/></svg>"}
    page = "<html><body>" + "".join(figure(name, svg) for name, svg in plots.items()) + "</body></html>"
    assert figures(page) == plots
    # Pages written before figures carried data-column read the same.
    assert figures("<figure><figcaption>x &amp; y</figcaption><svg width='2'></svg></figure>") == {
        "x & y": "<svg width='2'></svg>"
    }


def test_default_output_is_named_after_the_run(aws, tmp_path, monkeypatch):
    write_run("churn", "run-1", drift=False, gate=False)
    monkeypatch.chdir(tmp_path)
    code, out, err = refit("report", "run-1", "--audit-table", "audit")
    assert code == 0, err
    assert out == "wrote refit-run-run-1.html: run run-1 of churn, FAILED (incomplete)\n"
    assert Path(tmp_path / "refit-run-run-1.html").read_text().startswith("<!doctype html>")
