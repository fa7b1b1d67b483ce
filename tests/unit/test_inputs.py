import gzip
import io
import json
from pathlib import Path

import pytest
from refit_core.config import load_config
from refit_core.datasets import DataError, iter_csv
from refit_core.runs import RunInputError, parse_run_input
from refit_core.training import summarize_job, training_job_request

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("raw", "name", "message"),
    [
        (b"", "e.csv", "the file is empty"),
        (b"a,b\n", "h.csv", "has a header but no rows"),
        (b"a,b\n\xff\xfe,1\n", "latin.csv", "not UTF-8 text"),
        (gzip.compress(b"a,b\n1,2\n" * 100, mtime=0)[:-20], "t.csv.gz", "truncated or corrupt gzip"),
        (b"a,,c\n1,2,3\n", "noname.csv", "empty column name"),
        (b"a;b;c\n1;2;3\n", "semi.csv", "looks semicolon-separated"),
    ],
    ids=["empty", "header-only", "not-utf8", "truncated-gzip", "unnamed-column", "wrong-delimiter"],
)
def test_bad_files_name_the_file_and_problem(raw, name, message):
    with pytest.raises(DataError, match=message) as error:
        list(iter_csv(io.BytesIO(raw), name, None))
    assert str(error.value).startswith(name)


def test_manual_input_schema_names_the_wrong_field():
    with pytest.raises(RunInputError, match="forse: unknown field"):
        parse_run_input({"forse": True}, "incoming/churn/", "data")
    with pytest.raises(RunInputError, match="force: Input should be a valid boolean"):
        parse_run_input({"force": "maybe"}, "incoming/churn/", "data")
    with pytest.raises(RunInputError, match="data_uri"):
        parse_run_input({"data_uri": "/local/file.csv"}, "incoming/churn/", "data")
    request = parse_run_input({"data_uri": "s3://data/incoming/churn/b.csv", "force": True}, "incoming/churn/", "data")
    assert request.trigger == "manual" and request.force


def test_event_shapes_of_the_three_automatic_triggers():
    s3 = {
        "detail-type": "Object Created",
        "source": "aws.s3",
        "detail": {"bucket": {"name": "data"}, "object": {"key": "incoming/churn/b.csv"}},
    }
    assert parse_run_input(s3, "incoming/churn/", "data").data_uri == "s3://data/incoming/churn/b.csv"
    alarm = {
        "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch",
        "detail": {"alarmName": "q", "state": {"value": "ALARM"}},
    }
    assert parse_run_input(alarm, "incoming/churn/", "data").force
    schedule = {"detail-type": "Scheduled Event", "source": "aws.events", "resources": ["arn:x:rule/r"]}
    assert parse_run_input(schedule, "incoming/churn/", "data").trigger == "schedule"
    with pytest.raises(RunInputError, match="not under this model's new-data prefix"):
        parse_run_input(
            {**s3, "detail": {"bucket": {"name": "data"}, "object": {"key": "other/b.csv"}}}, "incoming/churn/", "data"
        )


def test_training_request_uses_spot_with_checkpoints_keyed_by_run():
    model = load_config(ROOT / "refit.toml").model("churn")
    request = training_job_request(
        model=model,
        name_prefix="refit-churn",
        run_id="run-1",
        attempt=1,
        spot=True,
        image_uri="img",
        role_arn="role",
        batch_uri="s3://d/incoming/churn/b.csv",
        earlier_data_uri=None,
        champion_model_uri="s3://a/m.tar.gz",
        artifact_bucket="art",
        kms_key_arn="arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000",
    )
    assert request["EnableManagedSpotTraining"] is True
    stop = request["StoppingCondition"]
    assert stop["MaxWaitTimeInSeconds"] >= stop["MaxRuntimeInSeconds"]
    assert request["CheckpointConfig"]["S3Uri"] == "s3://art/checkpoints/churn/run-1/"
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == ["config", "current", "champion"]
    on_demand = training_job_request(
        model=model,
        name_prefix="refit-churn",
        run_id="run-1",
        attempt=2,
        spot=False,
        image_uri="img",
        role_arn="role",
        batch_uri="s3://d/x.csv",
        earlier_data_uri=None,
        champion_model_uri=None,
        artifact_bucket="art",
        kms_key_arn="arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000",
    )
    assert "MaxWaitTimeInSeconds" not in on_demand["StoppingCondition"]
    assert on_demand["CheckpointConfig"] == request["CheckpointConfig"]


def test_job_summary_costs_and_fallback():
    done = summarize_job(
        {
            "TrainingJobName": "j",
            "TrainingJobStatus": "Completed",
            "EnableManagedSpotTraining": True,
            "TrainingTimeInSeconds": 1000,
            "BillableTimeInSeconds": 300,
        },
        0.36,
        True,
    )
    assert done["savings_percent"] == 70.0 and done["estimated_cost_usd"] == pytest.approx(0.03)
    capacity = {
        "TrainingJobName": "j",
        "TrainingJobStatus": "Failed",
        "SecondaryStatus": "MaxWaitTimeExceeded",
        "EnableManagedSpotTraining": True,
    }
    assert summarize_job(capacity, 0.1, True)["next"] == "fallback"
    assert summarize_job(capacity, 0.1, False)["next"] == "failed"


def test_cli_drift_and_bad_input(tmp_path):
    import io

    from scripts.cli import main
    from scripts.sample_data import churn_batch

    churn_batch(500, 1).to_csv(tmp_path / "a.csv", index=False)
    churn_batch(500, 2, shift=1.0).to_csv(tmp_path / "b.csv", index=False)
    out, err = io.StringIO(), io.StringIO()
    html = tmp_path / "report.html"
    arguments = ["drift", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--json", "--html", str(html)]
    assert main(arguments, out=out, err=err) == 0
    assert '"drift_detected": true' in out.getvalue()
    page = html.read_text()
    report = json.loads(out.getvalue())
    # a plot per drifted column, the target's included (the configured model names it: churned)
    assert page.count("<svg") == len(report["drifted_features"]) + int(report["target"]["drifted"]) >= 2
    assert "usage_gb" in page and "<script" not in page
    assert main(["drift", str(tmp_path / "a.csv"), str(tmp_path / "missing.csv")], out=out, err=err) == 1
    assert "missing.csv: cannot read" in err.getvalue()


def test_parquet_is_read_and_a_truncated_parquet_named(tmp_path):
    from refit_core.datasets import read_table

    from scripts.sample_data import churn_batch

    path = tmp_path / "b.parquet"
    churn_batch(200, 1).to_parquet(path)
    assert read_table(str(path)).shape == (200, 7)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="broken.parquet: not a readable Parquet file"):
        read_table(str(broken))


def test_audit_values_dynamodb_refuses_become_null():
    from refit_handlers.common import to_dynamodb

    assert to_dynamodb({"p": float("nan"), "z": float("inf"), "x": 0.5, "nested": [float("-inf")]}) == {
        "p": None,
        "z": None,
        "x": __import__("decimal").Decimal("0.5"),
        "nested": [None],
    }
