"""Prepare and the end of a run on moto: every batch under the new-data prefix is checked exactly once (the batch
ledger), batches landing while a run holds the lock are queued and checked one by one as each run ends, a scheduled
run does not check again a batch an earlier run settled; every run records the batch's ETag."""

from __future__ import annotations

import dataclasses
import json

import boto3
import pytest
from moto import mock_aws
from refit_core import ledger
from refit_core.audit import summarize_run
from refit_core.runs import RunInputError
from refit_handlers.finalize import end_run
from refit_handlers.prepare import prepare

from tests.conftest import create_audit_table, handler_settings

SCHEDULE = {
    "version": "0",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/refit-churn-schedule"],
    "detail": {},
}


@pytest.fixture
def aws():
    with mock_aws():
        s3, dynamodb, sfn = boto3.client("s3"), boto3.client("dynamodb"), boto3.client("stepfunctions")
        s3.create_bucket(Bucket="data")
        create_audit_table(dynamodb)
        machine = sfn.create_state_machine(
            name="refit-churn",
            definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
            roleArn="arn:aws:iam::123456789012:role/sfn",
        )["stateMachineArn"]
        yield s3, dynamodb, sfn, machine


def settings_for(machine: str):
    return dataclasses.replace(handler_settings(), state_machine_arn=machine)


def finish(aws, run: dict, outcome_state: dict, started_at: str) -> dict:
    """End the run as Finalize does: settle its batch in the ledger, release the lock (when it holds it) and start
    the next queued run, then write the audit record."""
    s3, dynamodb, sfn, machine = aws
    record = summarize_run({"run": run, **outcome_state}, "churn", run["run_id"], started_at, started_at, None)
    end_run(record, run, run["run_id"], settings_for(machine), dynamodb, sfn)
    item = {k: {"S": v} for k, v in record.items() if isinstance(v, str)}
    dynamodb.put_item(TableName="audit", Item=item)
    return record


def s3_event(key: str, etag: str | None = None) -> dict:
    detail = {"bucket": {"name": "data"}, "object": {"key": key, **({"etag": etag} if etag else {})}}
    return {**SCHEDULE, "detail-type": "Object Created", "source": "aws.s3", "detail": detail}


def ledger_items(dynamodb) -> dict[str, dict]:
    return {item["key"]: item for item in ledger.entries(dynamodb, "audit", "churn")}


def lock_owner(dynamodb) -> str | None:
    item = dynamodb.get_item(TableName="audit", Key={"pk": {"S": "churn"}, "sk": {"S": "lock"}}).get("Item")
    return item["owner"]["S"] if item else None


NO_DRIFT = {"check": {"decision": {"action": "stop", "outcome": "no_drift", "reason": "no drift"}}}
ALREADY = {"check": {"decision": {"action": "stop", "outcome": "already_checked", "reason": "checked"}}}


def test_a_scheduled_run_checks_every_unchecked_batch_then_stops_on_settled_bytes(aws):
    s3, dynamodb, sfn, machine = aws
    config = settings_for(machine)
    s3.put_object(Bucket="data", Key="incoming/churn/a-older.csv", Body=b"a\n0\n")  # its S3 event was lost
    s3.put_object(Bucket="data", Key="incoming/churn/b.csv", Body=b"a\n1\n")
    first = prepare(s3_event("incoming/churn/b.csv"), "r1", config, s3, dynamodb)
    etag = s3.head_object(Bucket="data", Key="incoming/churn/b.csv")["ETag"].strip('"')
    assert (first["trigger"], first["data_uri"], first["data_etag"]) == ("s3", "s3://data/incoming/churn/b.csv", etag)
    assert first["claimed_batch"] and first["settled_by"] is None
    finish(aws, first, NO_DRIFT, "2026-11-01T00:00:00+00:00")
    assert ledger_items(dynamodb)["incoming/churn/b.csv"]["status"] == "checked"

    # Not only the newest batch: the schedule finds the one no event announced and checks it.
    second = prepare(SCHEDULE, "r2", config, s3, dynamodb)
    assert second["data_uri"] == "s3://data/incoming/churn/a-older.csv" and second["claimed_batch"]
    finish(aws, second, NO_DRIFT, "2026-11-02")

    third = prepare(SCHEDULE, "r3", config, s3, dynamodb)
    assert third["data_uri"] == "s3://data/incoming/churn/b.csv"
    assert third["settled_by"] == "no new batch since run r1 checked s3://data/incoming/churn/b.csv (outcome: no_drift)"
    finish(aws, third, ALREADY, "2026-11-03")
    assert lock_owner(dynamodb) is None

    manual = prepare({}, "r4", config, s3, dynamodb)  # a duplicate manual pick ends the same way
    assert manual["settled_by"].startswith("no new batch since run r1 ")
    finish(aws, manual, ALREADY, "2026-11-04")
    forced = prepare({"force": True}, "r5", config, s3, dynamodb)  # a forced run checks again
    assert forced["settled_by"] is None and forced["claimed_batch"]
    finish(aws, forced, NO_DRIFT, "2026-11-05")

    s3.put_object(Bucket="data", Key="incoming/churn/b.csv", Body=b"a\n2\n")  # same name, new bytes
    changed = prepare(SCHEDULE, "r6", config, s3, dynamodb)
    assert changed["settled_by"] is None and changed["data_etag"] != etag and changed["claimed_batch"]


def test_a_batch_whose_last_run_failed_is_checked_again_by_the_schedule(aws):
    s3, dynamodb, sfn, machine = aws
    config = settings_for(machine)
    s3.put_object(Bucket="data", Key="incoming/churn/b.csv", Body=b"a\n1\n")
    failed = prepare(s3_event("incoming/churn/b.csv"), "r1", config, s3, dynamodb)
    finish(aws, failed, {"error": {"Error": "States.Timeout", "Cause": "training poll"}}, "2026-11-01")
    assert ledger_items(dynamodb)["incoming/churn/b.csv"]["status"] == "unsettled"
    retried = prepare(SCHEDULE, "r2", config, s3, dynamodb)
    assert retried["data_uri"] == "s3://data/incoming/churn/b.csv" and retried["settled_by"] is None
    assert retried["claimed_batch"]


def test_a_redelivered_event_after_the_run_finished_ends_at_once_without_the_lock(aws):
    s3, dynamodb, sfn, machine = aws
    config = settings_for(machine)
    s3.put_object(Bucket="data", Key="incoming/churn/b.csv", Body=b"a\n1\n")
    etag = s3.head_object(Bucket="data", Key="incoming/churn/b.csv")["ETag"].strip('"')
    first = prepare(s3_event("incoming/churn/b.csv", etag), "r1", config, s3, dynamodb)
    finish(aws, first, NO_DRIFT, "2026-11-01")
    again = prepare(s3_event("incoming/churn/b.csv", etag), "r2", config, s3, dynamodb)
    assert (again["proceed"], again["skip_outcome"]) == (False, "already_checked")
    assert (
        again["reason"]
        == f"s3://data/incoming/churn/b.csv (ETag {etag}) was already checked by run r1 (outcome: no_drift)"
    )
    assert lock_owner(dynamodb) is None  # it never took the lock
    record = finish(aws, again, {}, "2026-11-02")
    assert (record["status"], record["outcome"]) == ("SKIPPED", "already_checked")
    assert record["data_etag"] == etag
    assert sfn.list_executions(stateMachineArn=machine)["executions"] == []  # nothing queued, nothing started


def test_batches_landing_during_a_run_are_queued_and_checked_one_by_one_when_the_lock_is_released(aws):
    s3, dynamodb, sfn, machine = aws
    config = settings_for(machine)
    s3.put_object(Bucket="data", Key="incoming/churn/0.csv", Body=b"a\n0\n")
    holder = prepare(s3_event("incoming/churn/0.csv"), "r0", config, s3, dynamodb)
    assert lock_owner(dynamodb) == "r0"
    skipped = []
    for i in range(1, 4):  # land while r0 holds the lock
        key = f"incoming/churn/{i}.csv"
        s3.put_object(Bucket="data", Key=key, Body=f"a\n{i}\n".encode())
        run = prepare(s3_event(key), f"s{i}", config, s3, dynamodb)
        assert (run["proceed"], run["skip_outcome"]) == (False, "queued") and "r0" in run["reason"]
        skipped.append(finish(aws, run, {}, f"2026-11-01T00:00:0{i}"))
    assert {r["outcome"] for r in skipped} == {"queued"} and lock_owner(dynamodb) == "r0"  # the skips left it
    assert [k for k, v in ledger_items(dynamodb).items() if v["status"] == "queued"] == [
        "incoming/churn/1.csv",
        "incoming/churn/2.csv",
        "incoming/churn/3.csv",
    ]
    assert sfn.list_executions(stateMachineArn=machine)["executions"] == []  # no run started by the skips

    checked, ending = [], holder
    for step in range(3):
        record = finish(aws, ending, NO_DRIFT, f"2026-11-02T00:00:0{step}")
        assert lock_owner(dynamodb) is None
        started = sfn.list_executions(stateMachineArn=machine)["executions"]
        assert len(started) == step + 1 and record["next_run"] == started[0]["name"]
        payload = json.loads(sfn.describe_execution(executionArn=started[0]["executionArn"])["input"])
        assert payload == {"queued_after": ending["run_id"]}
        ending = prepare(payload, started[0]["name"], config, s3, dynamodb)
        assert ending["trigger"] == "queue" and ending["claimed_batch"]
        checked.append(ending["data_uri"].rsplit("/", 1)[-1])
    assert checked == ["1.csv", "2.csv", "3.csv"]  # oldest first
    record = finish(aws, ending, {"check": {"decision": {"action": "fail", "reason": "bad"}}}, "2026-11-03")
    assert record["outcome"] == "bad_data" and record.get("next_run") is None  # the queue is empty: nothing starts
    assert {v["status"] for v in ledger_items(dynamodb).values()} == {"checked"}
    assert len(sfn.list_executions(stateMachineArn=machine)["executions"]) == 3


def test_the_end_of_a_run_starts_the_next_run_only_once(aws):
    s3, dynamodb, sfn, machine = aws
    config = settings_for(machine)
    s3.put_object(Bucket="data", Key="incoming/churn/0.csv", Body=b"a\n0\n")
    holder = prepare(s3_event("incoming/churn/0.csv"), "r0", config, s3, dynamodb)
    s3.put_object(Bucket="data", Key="incoming/churn/1.csv", Body=b"a\n1\n")
    prepare(s3_event("incoming/churn/1.csv"), "s1", config, s3, dynamodb)
    first = finish(aws, holder, NO_DRIFT, "2026-11-01")
    retried = finish(aws, holder, NO_DRIFT, "2026-11-01")  # Finalize retried after a Lambda service error
    assert first["next_run"] == retried["next_run"] and first["problems"] == retried["problems"] == []
    assert len(sfn.list_executions(stateMachineArn=machine)["executions"]) == 1


def test_a_queued_run_input_is_validated(aws):
    s3, dynamodb, sfn, machine = aws
    with pytest.raises(RunInputError, match="queued_after"):
        prepare({"queued_after": 3}, "r1", settings_for(machine), s3, dynamodb)
    with pytest.raises(RunInputError, match="force"):
        prepare({"queued_after": "r0", "force": True}, "r1", settings_for(machine), s3, dynamodb)


ALARM = {
    **SCHEDULE,
    "detail-type": "CloudWatch Alarm State Change",
    "source": "aws.cloudwatch",
    "resources": ["arn:aws:cloudwatch:us-east-1:123456789012:alarm:refit-churn--quality"],
    "detail": {"alarmName": "refit-churn--quality", "state": {"value": "ALARM"}},
}


def pending_alarm(dynamodb) -> dict | None:
    key = {"pk": {"S": "churn"}, "sk": {"S": "alarm#pending"}}
    return dynamodb.get_item(TableName="audit", Key=key).get("Item")


def test_an_alarm_that_finds_the_lock_held_runs_when_the_holder_ends_without_a_new_model(aws):
    """CloudWatch sends one event per ALARM episode: an alarm run skipped for the lock must not be lost."""
    s3, dynamodb, sfn, machine = aws
    config = settings_for(machine)
    s3.put_object(Bucket="data", Key="incoming/churn/0.csv", Body=b"a\n0\n")
    holder = prepare(s3_event("incoming/churn/0.csv"), "r0", config, s3, dynamodb)
    skipped = prepare(ALARM, "a1", config, s3, dynamodb)
    assert skipped["proceed"] is False and "alarm's retrain starts when that run releases the lock" in skipped["reason"]
    finish(aws, skipped, {}, "2026-11-01T00:00:01")
    assert pending_alarm(dynamodb)["waiting_for"]["S"] == "r0" and lock_owner(dynamodb) == "r0"

    record = finish(aws, holder, NO_DRIFT, "2026-11-01T00:00:02")  # the holder changed nothing on the endpoint
    started = sfn.list_executions(stateMachineArn=machine)["executions"]
    assert len(started) == 1 and record["next_run"] == started[0]["name"] and not record.get("pending_alarm")
    payload = json.loads(sfn.describe_execution(executionArn=started[0]["executionArn"])["input"])
    assert payload == {"alarm_after": "r0"}
    waited = prepare(payload, started[0]["name"], config, s3, dynamodb)
    assert (waited["trigger"], waited["force"], waited["proceed"]) == ("alarm", True, True)
    assert "while run r0 held the lock" in waited["reason"]
    assert pending_alarm(dynamodb) is None and lock_owner(dynamodb) == waited["run_id"]
    again = finish(aws, holder, NO_DRIFT, "2026-11-01T00:00:02")  # Finalize retried: nothing starts twice
    assert again["next_run"] is None and len(sfn.list_executions(stateMachineArn=machine)["executions"]) == 1


def test_an_alarm_waiting_for_a_run_that_promotes_a_new_model_is_dropped_and_queued_batches_go_on(aws):
    s3, dynamodb, sfn, machine = aws
    config = settings_for(machine)
    s3.put_object(Bucket="data", Key="incoming/churn/0.csv", Body=b"a\n0\n")
    holder = prepare(s3_event("incoming/churn/0.csv"), "r0", config, s3, dynamodb)
    prepare(ALARM, "a1", config, s3, dynamodb)
    s3.put_object(Bucket="data", Key="incoming/churn/1.csv", Body=b"a\n1\n")
    prepare(s3_event("incoming/churn/1.csv"), "s1", config, s3, dynamodb)
    record = {"outcome": "promoted", "problems": []}
    end_run(record, holder, "r0", config, dynamodb, sfn)
    assert "was dropped: this run put a new model in service" in record["pending_alarm"]
    assert pending_alarm(dynamodb) is None
    started = sfn.list_executions(stateMachineArn=machine)["executions"]
    assert [s["name"] for s in started] == [record["next_run"]] and record["next_run"].startswith("queue-")


def test_an_alarm_run_that_takes_the_lock_clears_a_waiting_one_and_the_waiting_input_is_validated(aws):
    s3, dynamodb, sfn, machine = aws
    config = settings_for(machine)
    holder = prepare(SCHEDULE, "r0", config, s3, dynamodb)
    prepare(ALARM, "a1", config, s3, dynamodb)
    finish(aws, holder, {"check": {"decision": {"action": "stop", "outcome": "no_data", "reason": "none"}}}, "t")
    assert pending_alarm(dynamodb) is not None  # the alarm run it started has not taken the lock yet
    direct = prepare(ALARM, "a2", config, s3, dynamodb)  # the alarm fired again first (re-armed by the monitor)
    assert direct["proceed"] is True and pending_alarm(dynamodb) is None
    with pytest.raises(RunInputError, match="alarm_after"):
        prepare({"alarm_after": 7}, "r1", config, s3, dynamodb)
    with pytest.raises(RunInputError, match="force"):
        prepare({"alarm_after": "r0", "force": True}, "r1", config, s3, dynamodb)
