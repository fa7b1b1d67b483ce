"""SageMaker Data Capture files, read as the model saw them.

SageMaker writes `<destination>/<endpoint>/<variant>/yyyy/mm/dd/hh/<mm>-<ss>-<mmm>-<uuid>.jsonl`, one JSON record per
line: `captureData.endpointInput` / `endpointOutput` ({observedContentType, mode, data, encoding}, encoding CSV or
JSON for the declared content types — `data` is then the payload's text — else BASE64) and `eventMetadata`
({eventId, inferenceId when the caller passed one, inferenceTime}). The request is parsed by the same function
`serve` parses it with (refit_core.payloads), the reply by the inverse of the one `serve` renders it with.

Join keys (one rule, everywhere): a request of one row has the key `inferenceId`, or `eventId` when the caller gave
none; row i (0-based) of a request of k > 1 rows has `<inferenceId or eventId>:<i>`.

Bad records never raise: each is counted under one of CAPTURE_PROBLEMS (and the first few are described, naming the
file and line) and skipped.

Requests refit sent itself to top up a quiet canary step (an inferenceId starting `refit-synthetic-`,
refit_core.synthetic) are not live traffic: `read_capture` (the monitor: live metric, drift, feedback, active learning,
the A/B test's labelled rows) and `captured_keys` (`refit feedback`) leave them out and count them in `synthetic`;
`window_scores` (a canary step's or the shadow's own window) keeps them, as the step is judged on them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from refit_core.payloads import PayloadError, parse_reply, parse_request
from refit_core.synthetic import is_synthetic

CAPTURE_PROBLEMS = (
    "truncated_line",  # a line cut off (starts a JSON object that never closes): a partly written or cut file
    "not_json",  # a line that is not a JSON Data Capture record (not JSON, not an object, no eventId)
    "unknown_encoding",  # an input or output whose `encoding` is not CSV, JSON or BASE64
    "unparseable_input",  # a request the model's schema cannot parse (or BASE64 data that is not base64)
    "unparseable_output",  # a reply that is not the model's predictions (an error reply, a missing field)
    "row_count_mismatch",  # a request whose row count differs from its reply's
    "missing_half",  # a record without its input or its output
)
MAX_EXAMPLES = 10
EXAMPLES_PER_KIND = 3
ENCODINGS = ("CSV", "JSON", "BASE64")
META_COLUMNS = ("key", "event_id", "inference_id", "inference_time", "variant", "prediction", "probability")
_HOUR = re.compile(r"(?:^|/)(\d{4})/(\d{2})/(\d{2})/(\d{2})/[^/]+$")


@dataclass
class Problems:
    """Counts per kind (every kind present, 0 when none), the first MAX_EXAMPLES messages, and the first
    EXAMPLES_PER_KIND messages of each kind."""

    counts: dict[str, int]
    examples: list[str] = field(default_factory=list)
    by_kind: dict[str, list[str]] = field(default_factory=dict)
    lines: int = 0  # non-blank lines read

    @classmethod
    def of(cls, kinds: Iterable[str]) -> Problems:
        return cls({kind: 0 for kind in kinds})

    def add(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)
        kind_examples = self.by_kind.setdefault(kind, [])
        if len(kind_examples) < EXAMPLES_PER_KIND:
            kind_examples.append(message)


@dataclass
class CaptureRows:
    """One row per scored row of the file's good records: `key` (the join key), `event_id`, `inference_id` (None when
    the caller passed none), `inference_time` (UTC), `variant`, the model's features, `prediction` and, for binary
    classification, `probability`. `problems` counts every kind in CAPTURE_PROBLEMS; `records` is the number of
    non-blank lines read; `examples_by_kind` holds the first EXAMPLES_PER_KIND messages of each kind seen."""

    frame: pd.DataFrame
    problems: dict[str, int]
    examples: list[str]
    records: int = 0
    examples_by_kind: dict[str, list[str]] = field(default_factory=dict)
    synthetic: int = 0  # records of synthetic traffic, left out


@dataclass
class CapturedKeys:
    """The join keys of a file's records whose reply parses (rows counted from the reply: one per scored row)."""

    keys: list[str]
    problems: dict[str, int]
    examples: list[str]
    records: int = 0
    examples_by_kind: dict[str, list[str]] = field(default_factory=dict)
    synthetic: int = 0  # records of synthetic traffic, left out


@dataclass
class _Record:
    where: str
    event_id: str
    inference_id: str | None
    inference_time: str | None
    input: dict[str, Any] | None
    output: dict[str, Any] | None

    @property
    def base_key(self) -> str:
        return self.inference_id or self.event_id


def row_keys(base: str, rows: int) -> list[str]:
    """The join keys of a request's rows: `base` for one row, `base:<i>` for each of k > 1 rows."""
    return [base] if rows == 1 else [f"{base}:{i}" for i in range(rows)]


def _records(lines: Iterable[bytes], source: str, problems: Problems) -> Iterator[_Record]:
    for number, raw in enumerate(lines, start=1):
        where = f"{source} line {number}"
        if not raw.strip():
            continue
        problems.lines += 1
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            record = json.loads(text)
        except UnicodeDecodeError:
            problems.add("not_json", f"{where}: not UTF-8")
            continue
        except json.JSONDecodeError as error:
            stripped = text.strip()
            if stripped.startswith("{") and not stripped.endswith("}"):
                problems.add("truncated_line", f"{where}: cut off after {len(stripped)} characters")
            else:
                problems.add("not_json", f"{where}: not JSON ({error})")
            continue
        metadata = record.get("eventMetadata") if isinstance(record, dict) else None
        event_id = metadata.get("eventId") if isinstance(metadata, dict) else None
        if not isinstance(event_id, str) or not event_id:
            problems.add("not_json", f"{where}: not a Data Capture record (no eventMetadata.eventId)")
            continue
        inference_id = metadata.get("inferenceId")
        inference_time = metadata.get("inferenceTime")
        data = record.get("captureData")
        halves = data if isinstance(data, dict) else {}
        yield _Record(
            where=where,
            event_id=event_id,
            inference_id=inference_id if isinstance(inference_id, str) and inference_id else None,
            inference_time=inference_time if isinstance(inference_time, str) else None,
            input=halves.get("endpointInput") if isinstance(halves.get("endpointInput"), dict) else None,
            output=halves.get("endpointOutput") if isinstance(halves.get("endpointOutput"), dict) else None,
        )


def _payload(half: dict[str, Any], which: str, where: str, problems: Problems) -> tuple[bytes, str] | None:
    """The captured bytes of one half and their content type, or None (counted) when they cannot be decoded."""
    encoding, data = half.get("encoding"), half.get("data")
    content_type = half.get("observedContentType")
    unparseable = f"unparseable_{which}"
    if encoding not in ENCODINGS:
        problems.add("unknown_encoding", f"{where}: {which} encoding {encoding!r} is none of {', '.join(ENCODINGS)}")
        return None
    if not isinstance(content_type, str):
        problems.add(unparseable, f"{where}: {which} has no observedContentType")
        return None
    if encoding == "JSON" and isinstance(data, dict | list):
        data = json.dumps(data)
    if not isinstance(data, str):
        problems.add(unparseable, f"{where}: {which} data is {type(data).__name__}, not text")
        return None
    if encoding == "BASE64":
        try:
            return base64.b64decode(data, validate=True), content_type
        except (binascii.Error, ValueError):
            problems.add(unparseable, f"{where}: {which} data is not valid base64")
            return None
    return data.encode("utf-8"), content_type


def _reply(record: _Record, problem_type: str, problems: Problems) -> dict[str, list[float]] | None:
    if record.output is None:
        problems.add("missing_half", f"{record.where}: the record has no endpointOutput")
        return None
    payload = _payload(record.output, "output", record.where, problems)
    if payload is None:
        return None
    try:
        return parse_reply(payload[0], payload[1], problem_type)
    except PayloadError as error:
        problems.add("unparseable_output", f"{record.where}: {error}")
        return None


def read_capture(
    lines: Iterable[bytes],
    *,
    source: str,
    variant: str,
    features: list[str],
    problem_type: str,
    numeric: list[str] | None = None,
) -> CaptureRows:
    """The scored rows of one capture file, streamed line by line (e.g. an S3 body's `iter_lines()`). `features` are
    the model's, in its order; `numeric` (the features the model reads as numbers) makes a request with a
    non-number there unparseable, as `serve` refuses it. Never raises on bad records: they are counted and skipped."""
    clash = sorted(set(features) & set(META_COLUMNS))
    if clash:
        raise ValueError(f"feature names {clash} clash with the capture frame's own columns {list(META_COLUMNS)}")
    problems = Problems.of(CAPTURE_PROBLEMS)
    binary = problem_type == "binary_classification"
    parts: list[pd.DataFrame] = []
    meta: dict[str, list[Any]] = {name: [] for name in META_COLUMNS if binary or name != "probability"}
    synthetic = 0
    for record in _records(lines, source, problems):
        if is_synthetic(record.inference_id):
            synthetic += 1
            continue
        if record.input is None:
            problems.add("missing_half", f"{record.where}: the record has no endpointInput")
            continue
        payload = _payload(record.input, "input", record.where, problems)
        if payload is None:
            continue
        try:
            rows = parse_request(payload[0], payload[1], features, numeric or [])
        except PayloadError as error:
            problems.add("unparseable_input", f"{record.where}: {error}")
            continue
        reply = _reply(record, problem_type, problems)
        if reply is None:
            continue
        if len(rows) != len(reply["predictions"]):
            problems.add(
                "row_count_mismatch",
                f"{record.where}: the request has {len(rows)} rows, the reply {len(reply['predictions'])}",
            )
            continue
        parts.append(rows)
        count = len(rows)
        meta["key"].extend(row_keys(record.base_key, count))
        meta["event_id"].extend([record.event_id] * count)
        meta["inference_id"].extend([record.inference_id] * count)
        meta["inference_time"].extend([record.inference_time] * count)
        meta["variant"].extend([variant] * count)
        if binary:
            meta["prediction"].extend(int(p) for p in reply["predictions"])
            meta["probability"].extend(reply["probabilities"])
        else:
            meta["prediction"].extend(reply["predictions"])
    features_frame = (
        pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({name: [] for name in features}, dtype=object)
    )
    frame = pd.DataFrame(
        {
            "key": pd.Series(meta["key"], dtype=object),
            "event_id": pd.Series(meta["event_id"], dtype=object),
            "inference_id": pd.Series(meta["inference_id"], dtype=object),
            "inference_time": pd.to_datetime(
                pd.Series(meta["inference_time"], dtype=object), utc=True, errors="coerce", format="ISO8601"
            ),
            "variant": pd.Series(meta["variant"], dtype=object),
        }
    )
    frame = pd.concat([frame, features_frame[features]], axis=1)
    frame["prediction"] = pd.Series(meta["prediction"], dtype="int64" if binary else "float64")
    if binary:
        frame["probability"] = pd.Series(meta["probability"], dtype="float64")
    return CaptureRows(frame, problems.counts, problems.examples, problems.lines, problems.by_kind, synthetic)


def captured_keys(lines: Iterable[bytes], *, source: str, problem_type: str) -> CapturedKeys:
    """The join keys of one capture file without the model's schema: a record's rows are counted from its reply
    (one prediction per scored row), so keys match read_capture's for every record the model scored (synthetic
    traffic left out, as there)."""
    problems = Problems.of(CAPTURE_PROBLEMS)
    keys: list[str] = []
    synthetic = 0
    for record in _records(lines, source, problems):
        if is_synthetic(record.inference_id):
            synthetic += 1
            continue
        reply = _reply(record, problem_type, problems)
        if reply is not None:
            keys.extend(row_keys(record.base_key, len(reply["predictions"])))
    return CapturedKeys(keys, problems.counts, problems.examples, problems.lines, problems.by_kind, synthetic)


@dataclass
class CapturedScores:
    """The scores a capture file's records replied with, without the model's schema: one per scored row, with its
    record's inferenceTime (None when absent); the probability for binary classification, else the prediction."""

    times: list[datetime | None]
    scores: list[float]
    problems: dict[str, int]
    examples: list[str]


def captured_scores(lines: Iterable[bytes], *, source: str, problem_type: str) -> CapturedScores:
    """The scores of one capture file (refit_core.shadow compares two variants' on the same window)."""
    problems = Problems.of(CAPTURE_PROBLEMS)
    times: list[datetime | None] = []
    scores: list[float] = []
    for record in _records(lines, source, problems):
        reply = _reply(record, problem_type, problems)
        if reply is None:
            continue
        values = reply["probabilities"] if problem_type == "binary_classification" else reply["predictions"]
        when = pd.to_datetime(record.inference_time, utc=True, errors="coerce") if record.inference_time else None
        times.extend([None if when is None or pd.isna(when) else when.to_pydatetime()] * len(values))
        scores.extend(float(v) for v in values)
    return CapturedScores(times, scores, problems.counts, problems.examples)


def capture_key_time(key: str) -> datetime:
    """The hour a capture object's key names (`.../yyyy/mm/dd/hh/<file>`), as a UTC datetime: SageMaker files a
    record under the hour it was captured, so every record in the file is from that hour. Raises ValueError for a key
    without that layout."""
    match = _HOUR.search(key)
    if not match:
        raise ValueError(f"{key!r} is not a Data Capture object key (.../yyyy/mm/dd/hh/<file>)")
    year, month, day, hour = (int(part) for part in match.groups())
    try:
        return datetime(year, month, day, hour, tzinfo=UTC)
    except ValueError as error:
        raise ValueError(f"{key!r}: {error}") from None


@dataclass(frozen=True)
class CaptureObject:
    key: str
    endpoint: str
    variant: str
    hour: datetime
    last_modified: datetime
    size: int


def list_capture_objects(s3: Any, bucket: str, prefix: str, since: datetime) -> Iterator[CaptureObject]:
    """Capture files under `prefix` (`capture/<model>/`) of hours from `since`'s hour on, per endpoint and variant
    folder, oldest hour first: one listing per variant that starts after the folder of the hour before `since`, so
    older hours are never listed. Keys that do not have the capture layout are skipped."""
    since = since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)
    paginator = s3.get_paginator("list_objects_v2")
    for endpoint_prefix in _folders(paginator, bucket, prefix):
        for variant_prefix in _folders(paginator, bucket, endpoint_prefix):
            start_after = f"{variant_prefix}{since:%Y/%m/%d/%H}/"
            endpoint = endpoint_prefix[len(prefix) :].rstrip("/")
            variant = variant_prefix[len(endpoint_prefix) :].rstrip("/")
            for page in paginator.paginate(Bucket=bucket, Prefix=variant_prefix, StartAfter=start_after[:-1]):
                for item in page.get("Contents", []):
                    try:
                        hour = capture_key_time(item["Key"])
                    except ValueError:
                        continue
                    if hour >= since.replace(minute=0, second=0, microsecond=0):
                        yield CaptureObject(
                            item["Key"], endpoint, variant, hour, item["LastModified"], int(item.get("Size", 0))
                        )


def _folders(paginator: Any, bucket: str, prefix: str) -> list[str]:
    folders: list[str] = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        folders.extend(entry["Prefix"] for entry in page.get("CommonPrefixes", []))
    return folders


def window_scores(
    s3: Any,
    bucket: str,
    prefix: str,
    endpoint: str,
    variants: Iterable[str],
    start: datetime,
    end: datetime,
    problem_type: str,
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Each of `variants`' captured scores with an inferenceTime in [start, end) (records without one cannot be
    placed in the window and are skipped), and the counts of unreadable records by kind, from the capture files of
    `endpoint` under `prefix` (only the window's hours are listed). The shadow's comparison and the canary's
    prediction divergence read the window this way."""
    scores: dict[str, list[float]] = {name: [] for name in variants}
    problems: dict[str, int] = {}
    for item in list_capture_objects(s3, bucket, prefix, start):
        if item.endpoint != endpoint or item.variant not in scores:
            continue
        body = s3.get_object(Bucket=bucket, Key=item.key)["Body"]
        read = captured_scores(body.iter_lines(), source=item.key, problem_type=problem_type)
        for kind, count in read.problems.items():
            if count:
                problems[kind] = problems.get(kind, 0) + count
        scores[item.variant].extend(
            score for when, score in zip(read.times, read.scores, strict=True) if when and start <= when < end
        )
    return scores, problems
