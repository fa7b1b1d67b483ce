"""`refit land | trigger | runs | show | status` against the local runtime, in-process inside its mock, as a user
types them: plain boto3 clients, the project's resources from a file of the stack's outputs (the local runtime has
no CloudFormation stack). One runtime for the module; the first batch is landed once, by `refit land --follow`."""

from __future__ import annotations

import io
import json

import pytest
from refit_core.config import load_config

from scripts.cli import main
from scripts.local_aws.runtime import LocalRuntime
from scripts.run_commands import STACK_OUTPUTS_ENV, CommandError, Resources, StatePrinter
from scripts.sample_data import churn_batch
from tests.conftest import ROOT, config_variant

MODEL = "churn"
BUDGET = 50.0


@pytest.fixture(scope="module")
def aws(cloud_assembly, tmp_path_factory):
    with LocalRuntime(cloud_assembly, tmp_path_factory.mktemp("runtime"), spot_discount=0.7, seed=3) as runtime:
        yield runtime


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    # The CLI reads the budget from its configuration (the stack's StartTraining reads its own copy).
    return str(
        config_variant(
            tmp_path_factory,
            "budget",
            {'schedule = "rate(1 day)"': f'schedule = "rate(1 day)"\nmonthly_training_budget_usd = {BUDGET}'},
        )
    )


@pytest.fixture(scope="module")
def outputs(aws, tmp_path_factory):
    path = tmp_path_factory.mktemp("outputs") / "outputs.json"
    path.write_text(json.dumps({"refit": aws.outputs}))  # `cdk deploy --outputs-file`'s form
    return str(path)


@pytest.fixture(scope="module")
def refit(config, outputs):
    def call(*arguments: str, located: bool = True) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        where = ["--stack-outputs", outputs] if located else []
        code = main(["--config", config, *arguments, *where], out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    return call


@pytest.fixture(scope="module")
def first(aws, refit, tmp_path_factory):
    """The first batch, landed once: its S3 event starts the run that deploys the first model."""
    path = tmp_path_factory.mktemp("batches") / "first.csv"
    churn_batch(3000, 1).to_csv(path, index=False)
    code, out, err = refit("land", MODEL, str(path), "--follow", "--json")
    return code, json.loads(out), err


def entered_states(aws, execution_arn):
    history = aws.client("stepfunctions").get_execution_history(executionArn=execution_arn, maxResults=1000)
    return [e["stateEnteredEventDetails"]["name"] for e in history["events"] if e["type"].endswith("StateEntered")]


def one_line(err: str) -> str:
    assert err.startswith("refit: ") and err.count("\n") == 1, err
    return err


def test_land_uploads_the_batch_and_its_run_deploys_the_first_model(aws, first):
    code, result, err = first
    assert code == 0, err
    assert result["uri"] == f"s3://{aws.data_bucket}/incoming/{MODEL}/first.csv" and result["rows"] == 3000
    head = aws.client("s3").head_object(Bucket=aws.data_bucket, Key=f"incoming/{MODEL}/first.csv")
    assert result["etag"] == head["ETag"].strip('"')
    # The run the S3 event started (not one the CLI started): its input is the Object Created event.
    described = aws.client("stepfunctions").describe_execution(executionArn=result["execution_arn"])
    assert json.loads(described["input"])["detail-type"] == "Object Created"
    assert result["status"] == described["status"] == "SUCCEEDED"
    names = [state["name"] for state in result["states"]]
    assert names == entered_states(aws, result["execution_arn"])
    assert names[:2] == ["Read input", "Prepare"] and {"Start training", "Gate challenger", "Finalize"} <= set(names), (
        names
    )
    seconds = [state["seconds"] for state in result["states"]]
    assert seconds == sorted(seconds) and seconds[0] >= 0
    record = next(r for r in aws.audit_records(MODEL) if r["execution"] == described["name"])
    assert (
        (result["record"]["trigger"], result["record"]["outcome"])
        == ("s3", "deployed_first")
        == (
            record["trigger"],
            record["outcome"],
        )
    )
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}


def test_dry_run_decides_with_the_champion_and_starts_nothing(aws, refit, first):
    uri = first[1]["uri"]
    executions, jobs = len(aws.executions(MODEL)), aws.client("sagemaker").list_training_jobs()["TrainingJobSummaries"]
    code, out, err = refit("trigger", MODEL, "--dry-run", "--force", "--data", uri, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["data_uri"] == uri and result["champion"]["version"] == 1
    assert result["quality"]["passed"] is True and result["drift"]["drift_detected"] is False
    assert result["decision"] == {"action": "train", "reason": "no drift, but the run was forced", "outcome": None}
    assert result["report_html_uri"].startswith(f"s3://{aws.artifact_bucket}/reports/{MODEL}/dry-run-")
    # Nothing started, trained or locked.
    assert len(aws.executions(MODEL)) == executions
    assert aws.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == jobs
    lock = aws.client("dynamodb").get_item(TableName=aws.audit_table, Key={"pk": {"S": MODEL}, "sk": {"S": "lock"}})
    assert "Item" not in lock
    # Without --force the run would stop: its batch is already checked. The text names the run that checked it.
    code, out, err = refit("trigger", MODEL, "--dry-run", "--data", "first.csv")
    assert code == 0, err
    run_id = first[1]["record"]["run_id"]
    assert "nothing was started" in out and f"already checked by run {run_id} (outcome: deployed_first)" in out
    assert "decision  stop" in out and len(aws.executions(MODEL)) == executions


def test_trigger_follow_prints_each_state_and_the_summary(aws, refit, first):
    code, out, err = refit("trigger", MODEL, "--follow", "--reason", "checking by hand")
    assert code == 0, err
    lines = out.splitlines()
    started = lines[0].split()[2]
    assert lines[0] == f"started run {started} of {MODEL}"
    entered = [line.split(" s  ", 1)[1] for line in lines[1:] if " s  " in line]
    arn = aws.model(MODEL).state_machine_arn.replace(":stateMachine:", ":execution:") + f":{started}"
    assert entered == entered_states(aws, arn) and "Finalize" in entered and "Start training" not in entered
    assert "run ended SUCCEEDED" in lines
    # The summary is refit_core.audit's: the newest batch was checked by the first run, so this one stops.
    record = next(r for r in aws.audit_records(MODEL) if r["run_id"] == started)
    assert (record["trigger"], record["trigger_reason"], record["outcome"]) == (
        "manual",
        "checking by hand",
        "already_checked",
    )
    assert f"Model: {MODEL}   Run: {started}" in out and "Result: SUCCEEDED / already_checked" in out


def test_runs_and_show_read_the_audit_records(aws, refit, first):
    records = sorted(aws.audit_records(MODEL), key=lambda r: r["sk"], reverse=True)
    code, out, err = refit("runs", MODEL, "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert [r["run_id"] for r in listed] == [r["run_id"] for r in records] and len(listed) == 2
    assert [r["outcome"] for r in listed] == ["already_checked", "deployed_first"]
    code, out, _ = refit("runs", MODEL, "--limit", "1")
    header, row = out.splitlines()
    assert code == 0 and header.split() == ["STARTED", "RUN", "TRIGGER", "STATUS", "OUTCOME", "MESSAGE"]
    assert row.split()[:5] == [records[0][k] for k in ("started_at", "run_id", "trigger", "status", "outcome")]

    run_id = first[1]["record"]["run_id"]
    code, out, err = refit("show", run_id, "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown == first[1]["record"] and shown["endpoint"]["variants"] == [{"name": "champion", "weight": 1.0}]
    code, out, err = refit("show", first[1]["execution_arn"].rsplit(":", 1)[-1])  # the execution name works too
    assert code == 0, err
    assert "Result: SUCCEEDED / deployed_first" in out and "[champion=1]" in out, out
    assert f"Data: {first[1]['uri']} (ETag {first[1]['etag']})" in out and "Registry: version 1 (Approved)" in out


def test_status_shows_endpoint_champion_lock_and_spend(aws, refit, first):
    code, out, err = refit("status", MODEL, "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["state_machine_arn"] == aws.model(MODEL).state_machine_arn  # what the Airflow DAG starts
    assert status["endpoint"]["name"] == "refit-churn" and status["endpoint"]["status"] == "InService"
    assert status["endpoint"]["variants"] == [{"name": "champion", "weight": 1.0}]
    assert status["champion"]["version"] == 1 and status["running"] == [] and status["lock"] is None
    spent = sum(float((r.get("training") or {}).get("estimated_cost_usd") or 0) for r in aws.audit_records(MODEL))
    assert spent > 0 and status["spend"]["spent_usd"] == pytest.approx(spent, abs=1e-4)
    assert status["spend"]["budget_usd"] == BUDGET
    assert status["spend"]["left_usd"] == pytest.approx(BUDGET - spent, abs=1e-4)
    assert status["last_run"]["outcome"] == "already_checked"
    # A run holding the lock is named (Prepare's lock item: pk = model, sk = lock).
    dynamodb = aws.client("dynamodb")
    key = {"pk": {"S": MODEL}, "sk": {"S": "lock"}}
    dynamodb.put_item(
        TableName=aws.audit_table, Item={**key, "owner": {"S": "run-x"}, "expires_at": {"N": "4000000000"}}
    )
    try:
        code, out, err = refit("status", MODEL)
    finally:
        dynamodb.delete_item(TableName=aws.audit_table, Key=key)
    assert code == 0, err
    assert "variant  champion    weight 1" in out and "champion   version 1" in out
    assert "lock       held by run-x until 2096-" in out and f"of ${BUDGET:.2f} on training" in out


def test_bad_input_is_one_line_with_exit_code_2(aws, refit, first, tmp_path):
    executions = len(aws.executions(MODEL))
    code, _, err = refit("status", "nope")
    assert code == 2 and "has no model 'nope' (models: churn)" in one_line(err)
    code, _, err = refit("show", "no-such-run")
    assert code == 2 and "no run 'no-such-run' in audit table" in one_line(err) and "refit runs MODEL" in err
    (tmp_path / "garbage.csv").write_bytes(b"\xff\xfe\x00garbage,\n\x01")
    code, _, err = refit("land", MODEL, str(tmp_path / "garbage.csv"))
    assert code == 2 and "not a table" in one_line(err) and "not UTF-8" in err
    (tmp_path / "table.txt").write_text("a,b\n1,2\n")
    code, _, err = refit("land", MODEL, str(tmp_path / "table.txt"))
    assert code == 2 and ".csv, .csv.gz and .parquet" in one_line(err)
    listed = aws.client("s3").list_objects_v2(Bucket=aws.data_bucket, Prefix=f"incoming/{MODEL}/")["Contents"]
    assert [item["Key"] for item in listed] == [f"incoming/{MODEL}/first.csv"]  # nothing uploaded
    outside = f"s3://{aws.data_bucket}/training/{MODEL}/first.csv"
    code, _, err = refit("trigger", MODEL, "--data", outside)
    assert code == 2 and f"must be under this model's new-data prefix s3://{aws.data_bucket}/incoming/" in one_line(err)
    code, _, err = refit("trigger", MODEL, "--data", "missing.csv", "--dry-run")
    assert code == 2 and "no such object; land it first" in one_line(err)
    assert len(aws.executions(MODEL)) == executions  # no run started


def test_no_stack_or_no_endpoint_says_what_to_set(aws, refit, first, monkeypatch):
    monkeypatch.delenv(STACK_OUTPUTS_ENV, raising=False)
    code, _, err = refit("status", MODEL, located=False)
    assert code == 1 and "cannot read stack refit: it does not exist" in one_line(err)
    assert "AWS_ENDPOINT_URL" in err and "--stack-outputs" in err
    # An endpoint nothing listens on (the mock lets requests to other hosts through).
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code, _, err = refit("runs", MODEL, located=False)
    assert code == 1 and "cannot reach http://127.0.0.1:9" in one_line(err) and "refit local up" in err


def test_a_run_that_fails_exits_1_with_its_summary(aws, refit, first, tmp_path):
    path = tmp_path / "missing-column.csv"
    churn_batch(500, 4).drop(columns=["usage_gb"]).to_csv(path, index=False)  # a table, but not the model's
    code, out, err = refit("land", MODEL, str(path), "--follow")
    assert code == 1, err
    assert "run ended FAILED" in out and "Result: FAILED / bad_data" in out and "column 'usage_gb' is missing" in out
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}


def test_a_polling_loop_is_printed_once_and_summarized():
    out = io.StringIO()
    printer = StatePrinter(out, every=100.0)
    for name, seconds in [("Start training", 0.0), ("Wait", 1.0), ("Poll", 2.0), ("Done?", 3.0)] + [
        (name, 3.0 + 60 * i + offset) for i in range(1, 4) for name, offset in (("Wait", 0), ("Poll", 1), ("Done?", 2))
    ]:
        printer(name, seconds)
    printer("Gate", 190.0)
    printer("Finalize", 191.0)
    printer.flush()
    assert out.getvalue().splitlines() == [
        "       0.0 s  Start training",
        "       1.0 s  Wait",
        "       2.0 s  Poll",
        "       3.0 s  Done?",
        "     123.0 s  (Wait, Poll, Done?: 2 more times)",  # `every` seconds after the last line: still looping
        "     185.0 s  (Poll, Done?, Wait: 2 more times)",
        "     190.0 s  Gate",
        "     191.0 s  Finalize",
    ]


@pytest.mark.parametrize(
    "content",
    [
        {"DataBucket": "d", "AuditTable": "t"},  # a flat object
        {"refit": {"DataBucket": "d", "AuditTable": "t"}},  # `cdk deploy --outputs-file`
        {
            "Stacks": [
                {
                    "Outputs": [
                        {"OutputKey": "DataBucket", "OutputValue": "d"},
                        {"OutputKey": "AuditTable", "OutputValue": "t"},
                    ]
                }
            ]
        },
    ],
)
def test_a_file_of_stack_outputs_in_any_of_its_forms(tmp_path, content):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(content))
    resources = Resources(load_config(ROOT / "refit.toml"), outputs_file=str(path), overrides={"AuditTable": "named"})
    assert (resources.data_bucket, resources.audit_table) == ("d", "named")
    with pytest.raises(CommandError, match="has no ArtifactBucket output; pass --artifact-bucket"):
        resources.output("ArtifactBucket", "--artifact-bucket")


def test_a_file_that_is_not_stack_outputs_is_bad_input(tmp_path):
    path = tmp_path / "outputs.json"
    path.write_text('["DataBucket"]')
    with pytest.raises(CommandError, match="not a file of stack outputs") as raised:
        Resources(load_config(ROOT / "refit.toml"), outputs_file=str(path)).output("DataBucket", "--data-bucket")
    assert raised.value.exit_code == 2
