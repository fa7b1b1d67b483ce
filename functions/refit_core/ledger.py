"""The batch ledger: one item per batch (bucket, key, ETag) in the audit table, so every batch under the new-data
prefix is checked exactly once, and batches that land while a run holds the model's lock wait in a durable queue.

An item's `status` moves `queued` -> `checking` (claimed by one run, under the model's lock) -> `checked` (the run
settled it: no drift, bad data, deployed, ...) or `unsettled` (the run failed, timed out or was refused by the budget;
the next scheduled run may try it again). Every write is conditional, so a re-delivered S3 event, a Lambda retry or
two runs racing never check the same bytes twice. Plain logic: the DynamoDB client is an argument.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from refit_core.s3uri import S3Uri

LEDGER_PREFIX = "batch#"
Status = Literal["queued", "checking", "checked", "unsettled"]
FIELDS = ("bucket", "key", "etag", "status", "landed_at", "run_id", "outcome")


@dataclass(frozen=True)
class Batch:
    bucket: str
    key: str
    etag: str
    landed_at: str  # ISO time the object was written (S3 LastModified or the event's time): the queue's order

    @property
    def uri(self) -> str:
        return str(S3Uri(self.bucket, self.key))

    @property
    def sort_key(self) -> str:
        """The item's sort key. Hashed: a key of up to 1,024 bytes plus its ETag would not fit DynamoDB's
        1,024-byte sort key; bucket, key and ETag are attributes of the item."""
        digest = hashlib.sha256(f"{self.bucket}\n{self.key}\n{self.etag}".encode()).hexdigest()
        return f"{LEDGER_PREFIX}{digest}"


def _names(*names: str) -> dict[str, str]:
    """Every attribute through a placeholder: several (status, key, bucket) are DynamoDB reserved words."""
    return {f"#{name}": name for name in names}


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    return {name: value.get("S") for name, value in item.items() if "S" in value}


def entry(dynamodb: Any, table: str, model: str, batch: Batch) -> dict[str, Any] | None:
    item = dynamodb.get_item(
        TableName=table, Key={"pk": {"S": model}, "sk": {"S": batch.sort_key}}, ConsistentRead=True
    ).get("Item")
    return _plain(item) if item else None


def enqueue(
    dynamodb: Any, table: str, model: str, batch: Batch, now: str, status: Status = "queued", **extra: str
) -> dict[str, Any] | None:
    """Record the batch once. Returns None when this call recorded it, else the existing item (as plain strings)."""
    item = {
        "pk": {"S": model},
        "sk": {"S": batch.sort_key},
        "bucket": {"S": batch.bucket},
        "key": {"S": batch.key},
        "etag": {"S": batch.etag},
        "landed_at": {"S": batch.landed_at},
        "status": {"S": status},
        "recorded_at": {"S": now},
        **{name: {"S": value} for name, value in extra.items()},
    }
    try:
        dynamodb.put_item(TableName=table, Item=item, ConditionExpression="attribute_not_exists(sk)")
        return None
    except dynamodb.exceptions.ConditionalCheckFailedException:
        return entry(dynamodb, table, model, batch)


def entries(dynamodb: Any, table: str, model: str, status: Status | None = None) -> list[dict[str, Any]]:
    """The model's ledger items (all, or those with one status), oldest landed first (key breaks ties)."""
    arguments: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "pk = :model AND begins_with(sk, :batch)",
        "ExpressionAttributeValues": {":model": {"S": model}, ":batch": {"S": LEDGER_PREFIX}},
        "ConsistentRead": True,
    }
    if status is not None:
        arguments["FilterExpression"] = "#status = :status"
        arguments["ExpressionAttributeNames"] = {"#status": "status"}
        arguments["ExpressionAttributeValues"][":status"] = {"S": status}
    found = []
    for page in dynamodb.get_paginator("query").paginate(**arguments):
        found.extend(_plain(item) for item in page.get("Items", []))
    return sorted(found, key=lambda item: (item.get("landed_at", ""), item.get("key", "")))


def as_batch(item: dict[str, Any]) -> Batch:
    return Batch(item["bucket"], item["key"], item["etag"], item.get("landed_at", ""))


def claim(
    dynamodb: Any, table: str, model: str, batch: Batch, run_id: str, now: str, allowed: tuple[Status, ...]
) -> bool:
    """Mark the batch as being checked by `run_id` if its status is one of `allowed` (or it is not recorded yet).
    Called under the model's lock; the condition still guards against a retried call or a stale lock."""
    values = {f":s{i}": {"S": status} for i, status in enumerate(allowed)}
    try:
        dynamodb.update_item(
            TableName=table,
            Key={"pk": {"S": model}, "sk": {"S": batch.sort_key}},
            UpdateExpression=(
                "SET #status = :checking, #run_id = :run, #claimed_at = :now, #bucket = :bucket, #key = :key, "
                "#etag = :etag, #landed_at = if_not_exists(#landed_at, :landed)"
            ),
            ConditionExpression=f"attribute_not_exists(sk) OR #run_id = :run OR #status IN ({', '.join(values)})",
            ExpressionAttributeNames=_names("status", "run_id", "claimed_at", "bucket", "key", "etag", "landed_at"),
            ExpressionAttributeValues={
                ":checking": {"S": "checking"},
                ":run": {"S": run_id},
                ":now": {"S": now},
                ":bucket": {"S": batch.bucket},
                ":key": {"S": batch.key},
                ":etag": {"S": batch.etag},
                ":landed": {"S": batch.landed_at},
                **values,
            },
        )
        return True
    except dynamodb.exceptions.ConditionalCheckFailedException:
        return False


def settle(
    dynamodb: Any, table: str, model: str, batch: Batch, run_id: str, outcome: str, settled: bool, now: str
) -> bool:
    """Record how the run that claimed the batch ended: `checked` when its outcome settles the bytes, else
    `unsettled` (the schedule may try again). Only the claiming run can settle it."""
    try:
        dynamodb.update_item(
            TableName=table,
            Key={"pk": {"S": model}, "sk": {"S": batch.sort_key}},
            UpdateExpression="SET #status = :status, #outcome = :outcome, #ended_at = :now",
            ConditionExpression="#run_id = :run",
            ExpressionAttributeNames=_names("status", "outcome", "ended_at", "run_id"),
            ExpressionAttributeValues={
                ":status": {"S": "checked" if settled else "unsettled"},
                ":outcome": {"S": outcome},
                ":now": {"S": now},
                ":run": {"S": run_id},
            },
        )
        return True
    except dynamodb.exceptions.ConditionalCheckFailedException:
        return False
