"""A model's training window, resolved at run time into the exact object versions a training job trains on.

The history is what Finalize kept under `training/<model>/` (one object per accepted batch, `<run_id>-<file>`); a
batch's age is its LastModified there, measured from the run's start, so every job of one run (spot, on-demand
fallback, parallel candidates) resolves the same window. The new batch is always trained on, whatever its age.
`resolve_window` only chooses; `pin_inputs` copies the chosen versions to the job's own prefix, so the job reads
exactly those bytes even if a key is overwritten before the job starts (SageMaker channels name keys, never
versions: `S3DataSource` has no version field)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from boto3.s3.transfer import TransferConfig

from refit_core.config import TrainingWindow
from refit_core.datasets import SUPPORTED_SUFFIXES
from refit_core.s3uri import S3Uri

SECONDS_PER_DAY = 86400.0
# CopyObject copies at most 5 GiB; a larger object is copied in parts (UploadPartCopy).
MAX_COPY_OBJECT_BYTES = 5 * 1024**3
COPY_PART_BYTES = 512 * 1024**2


class WindowError(ValueError):
    """The window cannot be resolved or pinned; the message names the object."""


@dataclass(frozen=True)
class BatchObject:
    """One object version: what a job trains on and what lineage records."""

    uri: S3Uri
    version_id: str | None
    etag: str
    last_modified: datetime
    size: int

    def age_days(self, now: datetime) -> float:
        return max(0.0, (now - self.last_modified).total_seconds() / SECONDS_PER_DAY)


@dataclass(frozen=True)
class ResolvedWindow:
    window: TrainingWindow
    now: datetime
    current: BatchObject  # the new batch: always trained on
    kept: list[BatchObject]  # the kept batches in the window, newest first
    available: int  # kept batches in the history

    @property
    def objects(self) -> list[tuple[str, BatchObject]]:
        """(channel, object) for every object the job trains on: the new batch (`current`), then the window."""
        return [("current", self.current)] + [("train", batch) for batch in self.kept]

    def weight(self, batch: BatchObject) -> float:
        """The new batch weighs 1; a kept batch 0.5 ** (age / half-life), or 1 without a half-life."""
        return 1.0 if batch is self.current else recency_weight(batch.age_days(self.now), self.window.half_life_days)

    def summary(self) -> dict[str, Any]:
        """What the audit record says of the window (no per-object list: that is in the inputs manifest)."""
        ages = [batch.age_days(self.now) for batch in self.kept]
        return {
            "window": self.window.describe(),
            "kind": self.window.kind,
            "n_batches": 1 + len(self.kept),
            "n_kept_available": self.available,
            "bytes": sum(batch.size for _, batch in self.objects),
            "oldest_age_days": round(max(ages), 3) if ages else None,
            "weighted": self.window.weighted,
        }


def recency_weight(age_days: float, half_life_days: float | None) -> float:
    """Exponential decay by age; a half-life of 0 or None means unweighted."""
    if not half_life_days:
        return 1.0
    return float(0.5 ** (max(age_days, 0.0) / half_life_days))


def list_kept_batches(s3: Any, prefix: S3Uri) -> list[BatchObject]:
    """The current version of every data object under the history prefix (a deleted key, whose newest version is a
    delete marker, is not listed)."""
    found: list[BatchObject] = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=prefix.bucket, Prefix=prefix.key):
        for version in page.get("Versions", []):
            if version.get("IsLatest") and version["Key"].endswith(SUPPORTED_SUFFIXES):
                found.append(
                    BatchObject(
                        uri=S3Uri(prefix.bucket, version["Key"]),
                        version_id=_version(version.get("VersionId")),
                        etag=version.get("ETag", "").strip('"'),
                        last_modified=version["LastModified"],
                        size=int(version.get("Size") or 0),
                    )
                )
    return found


def _version(value: str | None) -> str | None:
    return None if value in (None, "null") else value  # "null": an object written before versioning was enabled


def head_batch(s3: Any, uri: S3Uri) -> BatchObject:
    head = s3.head_object(Bucket=uri.bucket, Key=uri.key)
    return BatchObject(
        uri=uri,
        version_id=_version(head.get("VersionId")),
        etag=head.get("ETag", "").strip('"'),
        last_modified=head["LastModified"],
        size=int(head.get("ContentLength") or 0),
    )


def select_window(history: list[BatchObject], window: TrainingWindow, now: datetime) -> list[BatchObject]:
    """The kept batches in the window, newest first. Newest = latest LastModified; equal times are ordered by key
    (the later key first), so the choice never depends on listing order. `last_batches` counts the new batch, so it
    keeps `batches - 1`; `last_days` keeps batches at most `days` old (the boundary included)."""
    ordered = sorted(history, key=lambda b: (b.last_modified, b.uri.key), reverse=True)
    if window.kind == "last_batches":
        return ordered[: max(0, (window.batches or 1) - 1)]
    if window.kind == "last_days":
        return [batch for batch in ordered if batch.age_days(now) <= (window.days or 0)]
    return ordered


def resolve_window(
    s3: Any, window: TrainingWindow, history_prefix: S3Uri, new_batch: S3Uri, now: datetime
) -> ResolvedWindow:
    """The objects and versions a job of this run trains on: the new batch's current version and the window's
    kept batches. Pure choice, no copy: a pre-check can read the same list before anything is spent."""
    history = list_kept_batches(s3, history_prefix)
    return ResolvedWindow(
        window=window,
        now=now,
        current=head_batch(s3, new_batch),
        kept=select_window(history, window, now),
        available=len(history),
    )


def pinned_key(target: S3Uri, channel: str, batch: BatchObject, history_prefix: S3Uri) -> str:
    """Where a pinned copy goes: `<target>/<channel>/<name>`; kept batches keep their path below the history prefix,
    the new batch its file name."""
    key = batch.uri.key
    relative = key[len(history_prefix.key) :] if key.startswith(history_prefix.key) else key.rsplit("/", 1)[-1]
    return f"{target.key.rstrip('/')}/{channel}/{relative.lstrip('/')}"


def pin_inputs(
    s3: Any,
    resolved: ResolvedWindow,
    target: S3Uri,
    history_prefix: S3Uri,
    expected_current_etag: str | None = None,
) -> list[dict[str, Any]]:
    """Copy each chosen version (VersionId, and the ETag it had when chosen, as CopySourceIfMatch) under `target`;
    the job's `current` and `train` channels read those copies. Returns the inputs manifest's entries: the source
    object's identity (what lineage records), its age and weight, and where the job read it. With
    `expected_current_etag` (the ETag the batch check saw), a new batch replaced since its check is refused."""
    if expected_current_etag and expected_current_etag.strip('"') != resolved.current.etag:
        raise WindowError(
            f"{resolved.current.uri}: changed since it was checked (ETag {expected_current_etag.strip(chr(34))} "
            f"then, {resolved.current.etag} now); start a new run to check the new bytes"
        )
    entries = []
    for channel, batch in resolved.objects:
        key = pinned_key(target, channel, batch, history_prefix)
        source: dict[str, str] = {"Bucket": batch.uri.bucket, "Key": batch.uri.key}
        if batch.version_id:
            source["VersionId"] = batch.version_id
        _copy(s3, source, batch, target.bucket, key)
        entries.append(
            {
                "uri": str(batch.uri),
                "version_id": batch.version_id,
                "etag": batch.etag,
                "last_modified": batch.last_modified.isoformat(),
                "bytes": batch.size,
                "channel": channel,
                "age_days": round(batch.age_days(resolved.now), 6),
                "weight": resolved.weight(batch),
                "read_from": f"s3://{target.bucket}/{key}",
            }
        )
    return entries


def _copy(s3: Any, source: dict[str, str], batch: BatchObject, bucket: str, key: str) -> None:
    condition = {"CopySourceIfMatch": f'"{batch.etag}"'} if batch.etag else {}
    try:
        if batch.size <= MAX_COPY_OBJECT_BYTES:
            s3.copy_object(Bucket=bucket, Key=key, CopySource=source, **condition)
        else:
            config = TransferConfig(multipart_threshold=MAX_COPY_OBJECT_BYTES, multipart_chunksize=COPY_PART_BYTES)
            s3.copy(source, bucket, key, ExtraArgs=condition, Config=config)
    except s3.exceptions.ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("PreconditionFailed", "412", "NoSuchKey", "NoSuchVersion", "404"):
            raise WindowError(
                f"{batch.uri} (version {batch.version_id}, ETag {batch.etag}): changed or removed since the window "
                f"was resolved ({code}); the job would not train on what was recorded"
            ) from None
        raise


def window_files(entries: list[dict[str, Any]], target: S3Uri) -> dict[str, dict[str, float]]:
    """For the job's settings: each pinned file's path inside its channel folder (`<channel>/<name>`) -> its age
    in days and weight, so `train` weighs rows by the batch they came from."""
    prefix = target.key.rstrip("/") + "/"
    files = {}
    for entry in entries:
        key = S3Uri.parse(entry["read_from"]).key
        files[key[len(prefix) :]] = {"age_days": entry["age_days"], "weight": entry["weight"]}
    return files
