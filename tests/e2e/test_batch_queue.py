"""No batch lost, on the local runtime: batches that land while a run holds the model's lock are queued and checked
one by one as each run ends, every batch is checked exactly once (the batch ledger and the audit records say so),
never two runs hold the model at once, a bad batch in the queue does not stop the rest, a re-delivered S3 event
starts no second check, and an object refit does not read starts no run. Tests in this module share one runtime and
run in order."""

from __future__ import annotations

import json
import time

import pytest

from scripts.local_aws.runtime import TERMINAL, LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes

MODEL = "churn"
BURST = 20
BAD = 7  # the burst's one bad file: the target column is missing, the quality gate blocks it
CHECK_OUTCOMES = {"no_drift", "bad_data", "deployed_first", "promoted", "rolled_back", "not_promoted"}


@pytest.fixture(scope="module")
def aws(cloud_assembly, tmp_path_factory):
    with LocalRuntime(cloud_assembly, tmp_path_factory.mktemp("queue"), seed=21) as runtime:
        yield runtime


def ledger(aws) -> list[dict]:
    items = aws.client("dynamodb").query(
        TableName=aws.audit_table,
        KeyConditionExpression="pk = :m AND begins_with(sk, :b)",
        ExpressionAttributeValues={":m": {"S": MODEL}, ":b": {"S": "batch#"}},
        ConsistentRead=True,
    )["Items"]
    return [{k: v["S"] for k, v in item.items()} for item in items]


def settle_down(aws, expected_batches: int, timeout: float = 600) -> None:
    """Until every run has ended and every batch in the ledger is settled (the chain of queued runs is done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = ledger(aws)
        running = [e for e in aws.executions(MODEL) if e["status"] not in TERMINAL]
        if len(items) == expected_batches and not running and all(i["status"] == "checked" for i in items):
            time.sleep(1.0)  # nothing starts late
            if not [e for e in aws.executions(MODEL) if e["status"] not in TERMINAL]:
                return
        time.sleep(0.5)
    statuses = sorted((i["key"], i["status"]) for i in ledger(aws))
    raise AssertionError(f"the queue did not drain: {statuses}")


def burst_batch(i: int) -> bytes:
    if i == BAD:
        return to_csv_bytes(churn_batch(300, 100 + i).drop(columns=["churned"]))
    return to_csv_bytes(churn_batch(300, 100 + i))  # the champion's own distribution: no drift, no training


def history(aws, arn: str) -> list[dict]:
    return aws.client("stepfunctions").get_execution_history(executionArn=arn, maxResults=1000)["events"]


def test_a_burst_during_a_run_is_checked_once_batch_by_batch_and_one_run_at_a_time(aws):
    landed = {}

    def land_the_burst(state, seconds):
        if landed:
            return
        aws.put_object(aws.data_bucket, f"incoming/{MODEL}/readme.txt", b"not a batch")
        for i in range(BURST):
            key = f"incoming/{MODEL}/burst-{i:02d}.csv"
            aws.put_object(aws.data_bucket, key, burst_batch(i))
            landed[key] = i

    aws.on_wait("Wait for training", land_the_burst)
    try:
        first = aws.wait_for(aws.land_batch(MODEL, "first.csv", to_csv_bytes(churn_batch(2000, 1))))
    finally:
        aws.on_wait("Wait for training", None)
    assert first["status"] == "SUCCEEDED" and len(landed) == BURST
    settle_down(aws, BURST + 1)

    items = {i["key"]: i for i in ledger(aws)}
    assert set(items) == {f"incoming/{MODEL}/first.csv", *landed}  # the .txt is not a batch
    records = aws.audit_records(MODEL)
    executions = aws.executions(MODEL)
    assert len(records) == len(executions)  # every run ended with a record
    assert not [e for e in executions if "readme.txt" in (e.get("name") or "")]
    inputs = [
        aws.client("stepfunctions").describe_execution(executionArn=e["executionArn"])["input"] for e in executions
    ]
    assert not [i for i in inputs if "readme.txt" in i]  # the .txt started no run

    # Exactly one check per batch: one record that checked it, and the ledger names that run and outcome.
    checks = [r for r in records if r["outcome"] in CHECK_OUTCOMES]
    by_batch = {}
    for record in checks:
        by_batch.setdefault(record["data_uri"].split("/", 3)[-1], []).append(record)
    assert {key: len(found) for key, found in by_batch.items()} == dict.fromkeys(items, 1)
    for key, item in items.items():
        (record,) = by_batch[key]
        assert (item["run_id"], item["outcome"], item["etag"]) == (
            record["run_id"],
            record["outcome"],
            record["data_etag"],
        )
    bad_key = f"incoming/{MODEL}/burst-{BAD:02d}.csv"
    assert items[bad_key]["outcome"] == "bad_data" and "churned" in by_batch[bad_key][0]["message"]
    # Drawn from the champion's own distribution, they are (nearly always) drift-free; one the drift test flags by
    # chance trains and goes through the gate, which is still exactly one check.
    outcomes = [items[k]["outcome"] for k in landed if k != bad_key]
    assert set(outcomes) <= CHECK_OUTCOMES - {"bad_data"} and outcomes.count("no_drift") >= BURST - 3

    # The burst's own runs found the lock held and queued their batch; the queue's runs checked it, oldest first.
    skips = [r for r in records if r["status"] == "SKIPPED"]
    assert skips and {r["outcome"] for r in skips} == {"queued"}
    queued_runs = sorted((r for r in checks if r["trigger"] == "queue"), key=lambda r: r["started_at"])
    assert len(queued_runs) + len([r for r in checks if r["trigger"] == "s3"]) == BURST + 1
    order = [r["data_uri"].rsplit("/", 1)[-1] for r in sorted(checks, key=lambda r: r["sk"])][1:]
    assert order == sorted(order)  # burst-00 ... burst-19

    # Never two runs holding the model: each run that took the lock (its Prepare done) entered Finalize before the
    # next one's Prepare was done.
    spans = []
    for execution in executions:
        events = history(aws, execution["executionArn"])
        exited = {
            e["stateExitedEventDetails"]["name"]: e["timestamp"] for e in events if e["type"].endswith("StateExited")
        }
        entered = {
            e["stateEnteredEventDetails"]["name"]: e["timestamp"] for e in events if e["type"].endswith("StateEntered")
        }
        run = json.loads(
            next(
                e
                for e in events
                if e["type"] == "TaskStateExited" and e["stateExitedEventDetails"]["name"] == "Prepare"
            )["stateExitedEventDetails"]["output"]
        )["run"]
        if run["proceed"]:
            spans.append((exited["Prepare"], entered["Finalize"], execution["name"]))
    spans.sort()
    assert len(spans) == BURST + 1
    for (_, end, name), (start, _, following) in zip(spans, spans[1:], strict=False):
        assert end <= start, f"{following} held the model while {name} still did"


def test_a_redelivered_event_after_the_run_finished_starts_no_second_check(aws):
    key = f"incoming/{MODEL}/burst-03.csv"
    before = {i["key"]: i for i in ledger(aws)}[key]
    etag = aws.client("s3").head_object(Bucket=aws.data_bucket, Key=key)["ETag"].strip('"')
    known = {e["executionArn"] for e in aws.executions(MODEL)}
    aws.client("events").put_events(  # EventBridge delivers at least once: the same event again
        Entries=[
            {
                "Source": "aws.s3",
                "DetailType": "Object Created",
                "Resources": [f"arn:aws:s3:::{aws.data_bucket}"],
                "Detail": json.dumps({"bucket": {"name": aws.data_bucket}, "object": {"key": key, "etag": etag}}),
            }
        ]
    )
    (arn,) = [e["executionArn"] for e in aws.executions(MODEL) if e["executionArn"] not in known]
    execution = aws.wait_for(arn)
    record = next(r for r in aws.audit_records(MODEL) if r["execution"] == execution["name"])
    assert (record["status"], record["outcome"]) == ("SKIPPED", "already_checked")
    assert f"was already checked by run {before['run_id']} (outcome: no_drift)" in record["message"]
    entered = [e["stateEnteredEventDetails"]["name"] for e in history(aws, arn) if e["type"].endswith("StateEntered")]
    assert "Check batch" not in entered
    assert {i["key"]: i for i in ledger(aws)}[key] == before
    time.sleep(1.0)
    assert len(aws.executions(MODEL)) == len(known) + 1  # and it started nothing after it


def test_a_run_that_times_out_releases_the_lock_to_the_queue_through_the_run_end_cleanup(aws):
    key = f"incoming/{MODEL}/during-timeout.csv"
    arn = aws.start_run(MODEL, {"data_uri": f"s3://{aws.data_bucket}/incoming/{MODEL}/first.csv", "force": True})

    def land_and_run_out_of_time(state, seconds):
        if key not in {i["key"] for i in ledger(aws)}:
            aws.put_object(aws.data_bucket, key, burst_batch(50))
            deadline = time.monotonic() + 30
            while key not in {i["key"] for i in ledger(aws)} and time.monotonic() < deadline:
                time.sleep(0.1)  # the new batch's run has queued it
            aws.advance_clock(arn, 400 * 86400)

    aws.on_wait("Wait for training", land_and_run_out_of_time)
    try:
        execution = aws.wait_for(arn)
    finally:
        aws.on_wait("Wait for training", None)
    assert execution["status"] == "TIMED_OUT"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        item = {i["key"]: i for i in ledger(aws)}[key]
        if item["status"] == "checked" and not [e for e in aws.executions(MODEL) if e["status"] not in TERMINAL]:
            break
        time.sleep(0.5)
    items = {i["key"]: i for i in ledger(aws)}
    assert items[key]["status"] == "checked" and items[key]["outcome"] in CHECK_OUTCOMES - {"bad_data"}
    checker = next(r for r in aws.audit_records(MODEL) if r["run_id"] == items[key]["run_id"])
    assert checker["trigger"] == "queue" and checker["execution"].startswith("queue-")
    timed_out = next(r for r in aws.audit_records(MODEL) if r["execution"] == execution["name"])
    assert timed_out["outcome"] == "timed_out" and timed_out["next_run"] == checker["execution"]
    # The timed-out run settled nothing: the schedule may try its batch again.
    assert (items[f"incoming/{MODEL}/first.csv"]["status"], items[f"incoming/{MODEL}/first.csv"]["outcome"]) == (
        "unsettled",
        "timed_out",
    )
