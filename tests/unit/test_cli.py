"""The `refit` command as a user calls it: the checks agree with the run's, bad gate input is a one-line error."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scripts.cli import main
from scripts.sample_data import churn_batch
from tests.unit.test_gate import binormal

ROOT = Path(__file__).resolve().parents[2]


def refit(*arguments: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(arguments), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def configured(tmp_path: Path, replacements: dict[str, str], extra: str = "") -> str:
    """refit.toml with some settings of the example model changed (and optionally more sections appended)."""
    text = (ROOT / "refit.toml").read_text()
    for old, new in replacements.items():
        assert old in text, f"refit.toml no longer contains {old!r}"
        text = text.replace(old, new)
    path = tmp_path / "refit.toml"
    path.write_text(text + extra)
    return str(path)


@pytest.fixture
def batches(tmp_path):
    churn_batch(500, 1).to_csv(tmp_path / "a.csv", index=False)
    churn_batch(500, 2, shift=1.0).to_csv(tmp_path / "b.csv", index=False)
    return str(tmp_path / "a.csv"), str(tmp_path / "b.csv")


def test_drift_uses_the_models_configured_drift_settings_and_column_roles(tmp_path, batches):
    reference, current = batches
    assert json.loads(refit("drift", reference, current, "--json")[1])["drift_detected"] is True
    # The model ignores shifts below a PSI of 100 and a total variation of 1: the run would not retrain on this batch.
    config = configured(
        tmp_path,
        {
            "min_effect_size = 0.05": "min_effect_size = 1.0",
            "min_psi = 0.01": "min_psi = 100.0",
            'categorical_columns = ["plan", "region"]': 'categorical_columns = ["plan", "region", "support_calls"]',
        },
    )
    code, out, err = refit("--config", config, "drift", reference, current, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["drift_detected"] is False and report["min_psi"] == 100.0
    assert report["features"]["support_calls"]["kind"] == "categorical"  # as training profiles it
    assert report["target"] is not None  # the model's target, without --target


def test_quality_uses_the_models_configured_quality_settings(tmp_path, batches):
    reference, current = batches
    assert json.loads(refit("quality", reference, current, "--json")[1])["passed"] is True
    config = configured(tmp_path, {"min_psi = 0.01": "min_psi = 0.01\nmin_rows = 1000"})
    code, out, err = refit("quality", reference, current, "--json", "--config", config)
    assert code == 0, err
    report = json.loads(out)
    assert report["passed"] is False
    assert [f["check"] for f in report["findings"] if f["severity"] == "block"] == ["too_few_rows"]


def test_drift_needs_model_when_the_configuration_has_several(tmp_path, batches):
    reference, current = batches
    second = '\n[[models]]\nname = "other"\nproblem_type = "regression"\ntarget = "usage_gb"\nprimary_metric = "rmse"\n'
    second += 'metric_direction = "minimize"\n'
    config = configured(tmp_path, {}, extra=second)
    code, _, err = refit("--config", config, "drift", reference, current)
    assert code == 1 and "configures several models (churn, other): pass --model NAME" in err
    code, out, err = refit("--config", config, "drift", reference, current, "--model", "churn", "--json")
    assert code == 0 and json.loads(out)["drift_detected"] is True, err


def training_output(folder: Path, champion_scored: bool, champion_column: bool) -> str:
    """What a training job's output.tar.gz unpacks to: evaluation.json and holdout_predictions.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    y, challenger, champion = binormal(np.random.default_rng(21), 2000, 0.80, 0.74, 0.8)
    predictions = pd.DataFrame({"row_id": range(y.size), "label": y, "challenger": challenger})
    if champion_column:
        predictions["champion"] = champion
    predictions.to_csv(folder / "holdout_predictions.csv", index=False)
    metrics = {"challenger": {"roc_auc": 0.8}, "champion": {"roc_auc": 0.74} if champion_scored else None}
    (folder / "evaluation.json").write_text(json.dumps({"format": "refit.evaluation/1", "metrics": metrics}))
    return str(folder)


def test_gate_compares_with_the_champion_the_training_job_scored(tmp_path):
    code, out, err = refit("gate", training_output(tmp_path / "a", True, True), "--model", "churn")
    assert code == 0, err
    assert json.loads(out)["test"] == "delong" and json.loads(out)["champion"] is not None


def test_gate_refuses_predictions_without_the_champion_training_scored(tmp_path):
    folder = training_output(tmp_path / "job", champion_scored=True, champion_column=False)
    code, out, err = refit("gate", folder, "--model", "churn")
    assert (code, out) == (1, "")  # not promoted as a first model
    assert "no champion column" in err


def test_gate_decides_a_first_model_when_training_scored_no_champion(tmp_path):
    code, out, err = refit("gate", training_output(tmp_path / "job", False, False), "--model", "churn")
    assert code == 0, err
    assert json.loads(out)["champion"] is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "the file is empty"),
        (b"PAR1\x15\x04\x15\x80\xff\x01" + bytes(range(256)), "not UTF-8 text"),
        (b"label;challenger\n1;0.5\n", "looks semicolon-separated"),
    ],
)
def test_gate_names_the_file_and_the_problem_for_an_unreadable_predictions_file(tmp_path, content, problem):
    folder = training_output(tmp_path / "job", champion_scored=False, champion_column=False)
    (tmp_path / "job" / "holdout_predictions.csv").write_bytes(content)
    code, _, err = refit("gate", folder, "--model", "churn")
    assert code == 1
    assert err.startswith(f"refit: {folder}/holdout_predictions.csv: ") and problem in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback


def test_gate_without_evaluation_json_says_what_it_needs(tmp_path):
    folder = training_output(tmp_path / "job", champion_scored=False, champion_column=False)
    (tmp_path / "job" / "evaluation.json").unlink()
    code, _, err = refit("gate", folder, "--model", "churn")
    assert code == 1 and f"{folder}/evaluation.json: cannot read" in err


def test_config_is_accepted_before_and_after_the_command(tmp_path):
    folder = training_output(tmp_path / "job", champion_scored=False, champion_column=False)
    config = configured(tmp_path, {'name = "churn"': 'name = "attrition"'})
    before = refit("--config", config, "gate", folder, "--model", "attrition")
    after = refit("gate", folder, "--model", "attrition", "--config", config)
    assert before[0] == after[0] == 0, before[2] + after[2]
    assert before[1] == after[1]
    code, _, err = refit("gate", folder, "--model", "attrition")  # the default configuration has no such model
    assert code == 1 and "no model named 'attrition'" in err


def test_the_gate_lambda_and_refit_gate_decide_the_same_on_the_same_job_output(tmp_path, monkeypatch):
    import io as bytes_io
    import tarfile

    import boto3
    from moto import mock_aws
    from refit_core.gate import GateInputError
    from refit_handlers.gate import GateEvent, gate

    from tests.conftest import handler_settings

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    folder = Path(training_output(tmp_path / "job", champion_scored=True, champion_column=True))
    archive = bytes_io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        (folder / "baseline.json").write_text("{}")
        (folder / "holdout_rows.jsonl").write_text('{"tenure_months": 3.0}\n')  # kept for synthetic traffic
        for name in ("evaluation.json", "holdout_predictions.csv", "baseline.json", "holdout_rows.jsonl"):
            tar.add(folder / name, arcname=name)
    cli_decision = json.loads(refit("gate", str(folder), "--model", "churn")[1])
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        for bucket in ("art", "out"):
            s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket="out", Key="jobs/j1/output/output.tar.gz", Body=archive.getvalue())
        event = {"run_id": "r1", "job_name": "j1", "output_path": "s3://out/jobs", "model_data_url": "s3://out/m"}
        step = gate(GateEvent(**event, has_champion=True), handler_settings(), s3)
        stored = json.loads(s3.get_object(Bucket="art", Key="reports/churn/r1/gate.json")["Body"].read())
        replay = s3.get_object(Bucket="art", Key="reports/churn/r1/holdout_rows.jsonl")["Body"].read()
        assert replay == b'{"tenure_months": 3.0}\n'  # where the synthetic_traffic action reads them
        with pytest.raises(GateInputError, match="the training job scored a champion although the run has none"):
            gate(GateEvent(**event, has_champion=False), handler_settings(), s3)
    assert step.promote is cli_decision["promote"] is True
    for key in ("test", "p_value", "challenger", "champion", "reason"):
        assert stored[key] == cli_decision[key], key


# refit feedback: a label file validated, checked against what Data Capture recorded, and uploaded unchanged.


@pytest.fixture
def captured(monkeypatch):
    """A data bucket (moto) with capture files of the example model: two requests in this hour on the champion (one
    with an inference id, one three-row request without), one on the challenger an hour ago, a broken line, and a
    request older than the monitor's 168-hour window."""
    import boto3
    from moto import mock_aws

    from tests.unit.test_capture import ROW, ROW2, record

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    now = datetime.now(UTC)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="data")
        three = {"predictions": [1, 0, 1], "probabilities": [0.9, 0.1, 0.6]}
        files = {
            ("champion", now): [
                record(inference_id="order-1"),
                record(f"{ROW}\n{ROW2}\n{ROW}", reply=three, event_id="ev-2"),
                b'{"captureData": {"endpointInput"',
            ],
            ("challenger", now - timedelta(hours=1)): [record(inference_id="order-3")],
            ("champion", now - timedelta(hours=200)): [record(inference_id="order-old")],
        }
        for (variant, hour), lines in files.items():
            key = f"capture/churn/refit-churn/{variant}/{hour:%Y/%m/%d/%H}/00-00-000-{variant}.jsonl"
            s3.put_object(Bucket="data", Key=key, Body=b"\n".join(lines) + b"\n")
        yield s3


def label_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return str(path)


LABELS = (
    "inference_id,label\norder-1,1\nev-2:0,0\nev-2:2,1\norder-3,0\norder-old,1\nnever-seen,0\norder-1,1\nev-2:1,yes\n"
)


def test_feedback_validates_checks_ids_against_the_captures_and_uploads_the_file_unchanged(tmp_path, captured):
    path = label_file(tmp_path, "labels.csv", LABELS)
    before = datetime.now(UTC)
    code, out, err = refit("feedback", "churn", path, "--data-bucket", "data", "--json")
    after = datetime.now(UTC)
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["rows"], summary["accepted"], summary["matched"]) == (8, 6, 4)
    assert summary["problems"] == {
        "not_json": 0,
        "unknown_format": 0,
        "missing_id": 0,
        "wrong_type": 1,
        "duplicate": 1,
        "conflict": 0,
        "unknown_id": 2,
    }
    assert summary["examples"]["unknown_id"] == [
        "labels.csv: 'order-old' was not captured in the last window",
        "labels.csv: 'never-seen' was not captured in the last window",
    ]
    assert summary["examples"]["wrong_type"] == ["labels.csv line 9: label 'yes' is not a 0/1 label"]
    assert summary["captured"]["files"] == 2 and summary["captured"]["records"] == 4
    assert summary["captured"]["problems"] == {"truncated_line": 1}
    folders = {f"s3://data/ground-truth/churn/{hour:%Y/%m/%d/%H}/" for hour in (before, after)}
    folder, _, name = summary["uploaded"].rpartition("/")
    assert folder + "/" in folders and re.fullmatch(r"labels-\d{8}T\d{6}-[0-9a-f]{6}\.csv", name)
    uploaded = summary["uploaded"].removeprefix("s3://data/")
    assert captured.get_object(Bucket="data", Key=uploaded)["Body"].read() == LABELS.encode()


def test_feedback_prints_a_one_screen_summary_with_examples(tmp_path, captured):
    code, out, _ = refit("feedback", "churn", label_file(tmp_path, "labels.csv", LABELS), "--data-bucket", "data")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) <= 24
    assert lines[1].split() == ["rows", "read", "8"]
    assert lines[2].split()[:3] == ["labels", "accepted", "6"] and "(4 for captured requests)" in lines[2]
    assert any(line.split()[:2] == ["unknown_id", "2"] for line in lines)
    assert "      labels.csv line 8: 'order-1' labelled again (1)" in lines
    assert lines[-1].startswith("uploaded s3://data/ground-truth/churn/")


def test_feedback_dry_run_uploads_nothing(tmp_path, captured):
    path = label_file(tmp_path, "l.jsonl", '{"inference_id": "order-1", "label": 1}\n')
    code, out, _ = refit("feedback", "churn", path, "--data-bucket", "data", "--dry-run", "--json")
    assert code == 0 and json.loads(out)["uploaded"] is None and json.loads(out)["matched"] == 1
    assert "Contents" not in captured.list_objects_v2(Bucket="data", Prefix="ground-truth/")


@pytest.mark.parametrize("text", ["", "a,1\nb,0\n", '{"inference_id": "order-1", "label": "yes"}\n'])
def test_feedback_without_a_valid_label_exits_2_and_uploads_nothing(tmp_path, captured, text):
    code, out, err = refit("feedback", "churn", label_file(tmp_path, "l.csv", text), "--data-bucket", "data")
    assert code == 2 and "no valid label; nothing uploaded" in err
    assert "rows read" in out
    assert "Contents" not in captured.list_objects_v2(Bucket="data", Prefix="ground-truth/")


def test_feedback_on_a_file_that_cannot_be_read_exits_2(tmp_path, captured):
    code, _, err = refit("feedback", "churn", str(tmp_path / "missing.csv"), "--data-bucket", "data")
    assert code == 2 and "missing.csv: cannot read" in err


def test_feedback_finds_the_data_bucket_in_the_stack_outputs_and_reads_labels_from_s3(tmp_path, captured):
    import boto3

    template = {
        "Resources": {"Data": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "data2"}}},
        "Outputs": {"DataBucket": {"Value": {"Ref": "Data"}}},
    }
    boto3.client("cloudformation", region_name="us-east-1").create_stack(
        StackName="refit", TemplateBody=json.dumps(template)
    )
    captured.put_object(Bucket="data", Key="inbox/merge.jsonl", Body=b'{"groundTruthData": {"data": "1", "encoding"')
    merge = '{"groundTruthData": {"data": "1", "encoding": "CSV"}, "eventMetadata": {"eventId": "ev-2:1"}}\n'
    captured.put_object(Bucket="data2", Key="inbox/merge.jsonl", Body=merge.encode())
    code, out, err = refit("feedback", "churn", "s3://data2/inbox/merge.jsonl", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["captured"]["bucket"] == "data2" and summary["uploaded"].startswith("s3://data2/ground-truth/churn/")
    assert (
        re.search(r"/merge-\d{8}T\d{6}-[0-9a-f]{6}\.jsonl$", summary["uploaded"]) and summary["matched"] == 0
    )  # data2 holds no captures
    code, _, err = refit("feedback", "churn", "s3://data2/inbox/merge.jsonl", "--stack", "other")
    assert code == 1 and "cannot read stack other" in err and "--data-bucket" in err


def test_an_unknown_model_is_bad_input_exit_2_in_report_and_feedback_as_in_the_run_commands(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("inference_id,label\nr-1,1\n")
    for arguments in (("report", "run-1", "--model", "nosuch"), ("feedback", "nosuch", str(labels))):
        code, out, err = refit(*arguments)
        assert code == 2, (arguments, err)
        assert err.startswith("refit: ") and "nosuch" in err and err.count("\n") == 1 and out == ""


def test_feedback_finds_its_bucket_as_the_run_commands_do_and_exits_as_they_do(tmp_path, monkeypatch):
    labels = tmp_path / "labels.csv"
    labels.write_text("inference_id,label\nr-1,1\n")
    outputs = tmp_path / "outputs.json"
    outputs.write_text("{")  # a stack-outputs file that is not JSON: bad input, exit 2 (run_commands.Resources)
    monkeypatch.setenv("REFIT_STACK_OUTPUTS", str(outputs))
    code, out, err = refit("feedback", "churn", str(labels))
    assert (code, out) == (2, "") and err.startswith(f"refit: {outputs}: not JSON") and err.count("\n") == 1
