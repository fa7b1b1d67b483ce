"""What starts a run: the documented manual input and the EventBridge events of the three automatic triggers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

from refit_core.s3uri import SUPPORTED_SUFFIXES, S3Uri


class RunInputError(ValueError):
    """An execution input that does not match the documented schema; names the field."""


class ManualInput(BaseModel):
    """The documented input of a manual `StartExecution` (README 'Starting a run by hand')."""

    model_config = ConfigDict(extra="forbid")

    data_uri: str | None = Field(
        None, description="s3:// URI of the batch; default: newest object under the new-data prefix"
    )
    force: bool = Field(False, description="Retrain even when no drift is found.")
    reason: str = Field("manual run", max_length=500)
    requested_by: str | None = Field(
        None,
        min_length=1,
        max_length=2048,
        description="Who started it: `refit trigger` records the caller's STS ARN. Self-asserted (whoever may call "
        "StartExecution may write any value); separation of duties compares it with the approver.",
    )

    @field_validator("data_uri")
    @classmethod
    def _s3(cls, value: str | None) -> str | None:
        if value is not None:
            uri = S3Uri.parse(value)
            if uri.is_prefix:
                raise ValueError(f"{value!r} is a prefix; name one object (a .csv, .csv.gz or .parquet file)")
        return value


class QueuedInput(BaseModel):
    """The input refit itself starts a run with when a run releases the model's lock and batches are queued
    (README 'Starting a run by hand'); the run checks the oldest queued batch."""

    model_config = ConfigDict(extra="forbid")

    queued_after: str = Field(description="The run whose end started this one.", max_length=80)


class PendingAlarmInput(BaseModel):
    """The input refit itself starts a run with when the quality alarm fired while another run held the model's lock
    (README 'Starting a run by hand'): the alarm run that had to wait."""

    model_config = ConfigDict(extra="forbid")

    alarm_after: str = Field(description="The run that held the lock when the alarm fired.", max_length=80)


PENDING_ALARM_KEY = "alarm#pending"  # the audit-table item (sk) of an alarm run waiting for the lock


class DeployInput(BaseModel):
    """The input `refit rollback` / `refit promote` start a run with (README 'Starting a run by hand'): the run takes
    the model's lock, skips check, training and gate, and deploys registered version `deploy_version` as the single
    champion variant through the verified endpoint path."""

    model_config = ConfigDict(extra="forbid")

    deploy_version: StrictInt = Field(ge=1, description="The model package version to serve.")
    kind: Literal["rollback", "promote"] = Field("promote", description="Recorded; both deploy the same way.")
    reason: str = Field("manual redeploy", max_length=500)
    requested_by: str = Field(
        min_length=1,
        max_length=2048,
        description="Who asked (the CLI: the caller's STS ARN); recorded and in the registry.",
    )
    force: StrictBool = Field(False, description="Deploy a version the registry marks Rejected (recorded).")


class EventBridgeEvent(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    detail_type: str = Field(alias="detail-type")
    source: str
    id: str = ""
    resources: list[str] = Field(default_factory=list)
    detail: dict[str, Any] = Field(default_factory=dict)


class RunRequest(BaseModel):
    trigger: Literal["manual", "s3", "schedule", "alarm", "queue"]
    reason: str
    data_uri: str | None
    force: bool
    etag: str | None = None  # the ETag an S3 event carries (AWS's field `detail.object.etag`)
    waited_for: str | None = None  # an alarm run started when the run holding the lock ended: that run's id
    deploy: DeployInput | None = None  # a manual rollback / promotion of a registered version
    requested_by: str | None = None  # who started a manual run, as its input says (self-asserted)


def _describe(error: ValidationError, schema: type[BaseModel] = ManualInput) -> str:
    allowed = ", ".join(schema.model_fields)
    parts = []
    for item in error.errors():
        location = ".".join(str(p) for p in item["loc"]) or "input"
        message = f"unknown field; allowed: {allowed}" if item["type"] == "extra_forbidden" else item["msg"]
        parts.append(f"{location}: {message.removeprefix('Value error, ')}")
    return "; ".join(parts)


def parse_run_input(payload: Any, new_data_prefix: str, data_bucket: str) -> RunRequest:
    """Turn any of the four trigger inputs into one request, or raise RunInputError naming the field."""
    if not isinstance(payload, dict):
        raise RunInputError(f"execution input must be a JSON object, got {type(payload).__name__}")
    if "detail-type" in payload:
        try:
            event = EventBridgeEvent.model_validate(payload)
        except ValidationError as error:
            raise RunInputError(f"event: {_describe(error)}") from None
        if event.detail_type == "Object Created":
            bucket = event.detail.get("bucket", {}).get("name")
            key = event.detail.get("object", {}).get("key")
            if not bucket or not key:
                raise RunInputError("event.detail: an Object Created event needs bucket.name and object.key")
            if bucket != data_bucket or not key.startswith(new_data_prefix):
                raise RunInputError(f"s3://{bucket}/{key} is not under this model's new-data prefix {new_data_prefix}")
            etag = event.detail.get("object", {}).get("etag")
            return RunRequest(
                trigger="s3",
                reason=f"new data s3://{bucket}/{key}",
                data_uri=f"s3://{bucket}/{key}",
                force=False,
                etag=etag.strip('"') if isinstance(etag, str) and etag else None,
            )
        if event.detail_type == "Scheduled Event":
            rule = event.resources[0].rsplit("/", 1)[-1] if event.resources else "schedule"
            return RunRequest(trigger="schedule", reason=f"scheduled check ({rule})", data_uri=None, force=False)
        if event.detail_type == "CloudWatch Alarm State Change":
            name = event.detail.get("alarmName", "?")
            state = event.detail.get("state", {}).get("value")
            if state != "ALARM":
                raise RunInputError(
                    f"event.detail.state.value: alarm {name} is {state!r}, a run starts only on 'ALARM'"
                )
            return RunRequest(trigger="alarm", reason=f"quality alarm {name} in ALARM", data_uri=None, force=True)
        raise RunInputError(f"event.detail-type: {event.detail_type!r} is not a refit trigger")
    if "queued_after" in payload:
        try:
            queued = QueuedInput.model_validate(payload)
        except ValidationError as error:
            raise RunInputError(_describe(error, QueuedInput)) from None
        return RunRequest(
            trigger="queue",
            reason=f"queued batches waiting when run {queued.queued_after} released the lock",
            data_uri=None,
            force=False,
        )
    if "alarm_after" in payload:
        try:
            waiting = PendingAlarmInput.model_validate(payload)
        except ValidationError as error:
            raise RunInputError(_describe(error, PendingAlarmInput)) from None
        return RunRequest(
            trigger="alarm",
            reason=f"quality alarm in ALARM while run {waiting.alarm_after} held the lock",
            data_uri=None,
            force=True,
            waited_for=waiting.alarm_after,
        )
    if "deploy_version" in payload:
        try:
            deploy = DeployInput.model_validate(payload)
        except ValidationError as error:
            raise RunInputError(_describe(error, DeployInput)) from None
        forced = " (forced: the version is deployed even if the registry rejected it)" if deploy.force else ""
        return RunRequest(
            trigger="manual",
            reason=f"{deploy.kind} to version {deploy.deploy_version} requested by {deploy.requested_by}: "
            f"{deploy.reason}{forced}",
            data_uri=None,
            force=False,
            deploy=deploy,
            requested_by=deploy.requested_by,
        )
    try:
        manual = ManualInput.model_validate(payload)
    except ValidationError as error:
        raise RunInputError(_describe(error)) from None
    if manual.data_uri:
        uri = S3Uri.parse(manual.data_uri)
        if not uri.key.endswith(SUPPORTED_SUFFIXES):
            raise RunInputError(f"data_uri: {manual.data_uri!r} is not a .csv, .csv.gz or .parquet object")
        if uri.bucket != data_bucket or not uri.key.startswith(new_data_prefix):
            raise RunInputError(
                f"data_uri: {manual.data_uri!r} must be under this model's new-data prefix s3://{data_bucket}/{new_data_prefix}"
            )
    return RunRequest(
        trigger="manual",
        reason=manual.reason,
        data_uri=manual.data_uri,
        force=manual.force,
        requested_by=manual.requested_by,
    )


def run_id_from_execution(execution_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", execution_name)[:64]


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# Outcomes that settle what a batch's bytes lead to: checking the same bytes again would only repeat them (training
# is seeded). A run that failed, was skipped, or was refused by the budget settles nothing.
SETTLED_OUTCOMES = frozenset(
    {
        "no_drift",
        "bad_data",
        "deployed_first",
        "promoted",
        "rolled_back",
        "not_promoted",
        "not_approved",
        "approval_timed_out",
        "already_checked",
    }
)


def settled_by(recent_runs: list[dict[str, Any]], data_uri: str, etag: str) -> dict[str, Any] | None:
    """The newest earlier run on this batch (same URI and ETag), if its outcome settled it; `recent_runs` newest
    first. A scheduled run that finds its batch settled stops instead of checking and retraining on it again."""
    for record in recent_runs:
        if record.get("data_uri") == data_uri and record.get("data_etag") == etag:
            return record if record.get("outcome") in SETTLED_OUTCOMES else None
    return None
