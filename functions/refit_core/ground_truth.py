"""Ground-truth label files: labels for captured requests, joined to them by key (refit_core.capture's rule).

Files live under `ground-truth/<model>/yyyy/mm/dd/hh/<name>` in the data bucket, in one of three formats, told apart
by their content (not their name):
1. SageMaker Model Monitor's ground-truth merge format, one JSON per line:
   `{"groundTruthData": {"data": "1", "encoding": "CSV"}, "eventMetadata": {"eventId": "<key>"}, "eventVersion": "0"}`
   (encoding CSV: data is the label's text; JSON: data is `1`, `"1"`, `{"label": 1}` or the text of one of them);
2. JSON Lines `{"inference_id": "<key>", "label": 1}`;
3. CSV with a header naming the columns `inference_id` and `label` (other columns are ignored).

Bad lines never raise: each is counted under one of LABEL_PROBLEMS, the first few described with file and line.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from refit_core.capture import Problems

LABEL_PROBLEMS = (
    "not_json",  # a line of a JSON Lines file that is not a JSON object
    "unknown_format",  # neither format's fields, a CSV without the inference_id/label header, an unknown encoding
    "missing_id",  # no inference id / eventId, or an empty one
    "wrong_type",  # binary classification: label not 0/1; regression: not a finite number
    "duplicate",  # a key labelled again with the same label (the first is kept)
    "conflict",  # a key labelled again with another label (the first is kept)
)
GROUND_TRUTH_ENCODINGS = ("CSV", "JSON")
_TRUE_FALSE = {"true": 1.0, "false": 0.0}


@dataclass
class Labels:
    """`frame`: one row per key (the first label given for it): `key`, `label` (float), `label_time` (UTC).
    `problems` counts every kind in LABEL_PROBLEMS; `rows` is the number of label lines read (a CSV header and blank
    lines not counted); `examples_by_kind` holds the first few messages of each kind seen."""

    frame: pd.DataFrame
    problems: dict[str, int]
    examples: list[str]
    rows: int = 0
    examples_by_kind: dict[str, list[str]] = field(default_factory=dict)


class _Bad(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def read_labels(lines: Iterable[bytes], *, source: str, problem_type: str, label_time: datetime) -> Labels:
    """The labels of one file, streamed line by line. The format is the first non-blank line's: a JSON object starts
    JSON Lines (merge format or plain, told apart per line), anything else is a CSV header. Never raises on bad
    lines: they are counted and skipped; the first label of a key is kept."""
    problems = Problems.of(LABEL_PROBLEMS)
    labels: dict[str, float] = {}
    csv_columns: tuple[int, int] | None = None
    mode: str | None = None
    rows = 0
    for number, raw in enumerate(lines, start=1):
        where = f"{source} line {number}"
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            text = None
        if text is not None and number == 1:
            text = text.removeprefix("\ufeff")
        if text is not None and not text.strip():
            continue
        if mode is None:
            mode = "json" if text is not None and text.lstrip().startswith("{") else "csv"
            if mode == "csv":
                csv_columns = _csv_header(text)
                if csv_columns is not None:
                    continue
        rows += 1
        try:
            if text is None:
                raise _Bad("not_json" if mode == "json" else "unknown_format", "not UTF-8")
            if mode == "json":
                key, value = _json_line(text)
            elif csv_columns is None:
                raise _Bad(
                    "unknown_format", "the file is neither JSON Lines nor a CSV with an inference_id,label header"
                )
            else:
                key, value = _csv_line(text, csv_columns)
            label = _label(value, problem_type)
        except _Bad as bad:
            problems.add(bad.kind, f"{where}: {bad}")
            continue
        if key in labels:
            if labels[key] == label:
                problems.add("duplicate", f"{where}: {key!r} labelled again ({_show(label)})")
            else:
                problems.add("conflict", f"{where}: {key!r} labelled {_show(label)}, first {_show(labels[key])} (kept)")
            continue
        labels[key] = label
    when = pd.Timestamp(label_time if label_time.tzinfo else label_time.replace(tzinfo=UTC)).tz_convert("UTC")
    frame = pd.DataFrame(
        {
            "key": pd.Series(list(labels), dtype=object),
            "label": pd.Series(list(labels.values()), dtype="float64"),
        }
    )
    frame["label_time"] = pd.Series([when] * len(frame), dtype="datetime64[us, UTC]")
    return Labels(frame, problems.counts, problems.examples, rows, problems.by_kind)


def _csv_header(text: str | None) -> tuple[int, int] | None:
    """The positions of inference_id and label in a CSV header line, or None when it is no such header."""
    if text is None:
        return None
    names = [name.strip().lower() for name in next(csv.reader([text]))]
    if "inference_id" in names and "label" in names:
        return names.index("inference_id"), names.index("label")
    return None


def _csv_line(text: str, columns: tuple[int, int]) -> tuple[str, Any]:
    cells = next(csv.reader([text]))
    if len(cells) <= max(columns):
        raise _Bad("unknown_format", f"{len(cells)} values, the header names {max(columns) + 1} or more")
    key = cells[columns[0]].strip()
    if not key:
        raise _Bad("missing_id", "empty inference_id")
    return key, cells[columns[1]]


def _json_line(text: str) -> tuple[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise _Bad("not_json", f"not JSON ({error})") from None
    if not isinstance(record, dict):
        raise _Bad("not_json", f"a JSON {type(record).__name__}, not an object")
    if "groundTruthData" in record:
        metadata = record.get("eventMetadata")
        key = _key(metadata.get("eventId") if isinstance(metadata, dict) else None, "eventMetadata.eventId")
        return key, _merge_label(record["groundTruthData"])
    if "inference_id" in record or "label" in record:
        key = _key(record.get("inference_id"), "inference_id")
        if "label" not in record:
            raise _Bad("wrong_type", "no label")
        return key, record["label"]
    raise _Bad("unknown_format", f"neither groundTruthData nor inference_id/label (keys {sorted(record)[:5]})")


def _key(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise _Bad("missing_id", f"no {name}" if value in (None, "") else f"{name} {value!r} is not a string")
    return str(value)


def _merge_label(ground_truth: Any) -> Any:
    if not isinstance(ground_truth, dict):
        raise _Bad("unknown_format", "groundTruthData is not an object")
    encoding, data = ground_truth.get("encoding"), ground_truth.get("data")
    if encoding not in GROUND_TRUTH_ENCODINGS:
        raise _Bad("unknown_format", f"groundTruthData encoding {encoding!r} is none of CSV, JSON")
    if encoding == "JSON" and isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError:
            pass  # a bare string such as "yes": judged as a label below
    if isinstance(data, dict):
        if "label" not in data:
            raise _Bad("wrong_type", f"groundTruthData.data has no 'label' (keys {sorted(data)[:5]})")
        data = data["label"]
    return data


def _label(value: Any, problem_type: str) -> float:
    """A binary label as 0.0/1.0 (0, 1, 0.0, 1.0, true/false and their text), a regression label as a finite
    float; anything else is wrong_type."""
    number: float | None = None
    if isinstance(value, bool):
        number = float(value) if problem_type == "binary_classification" else None
    elif isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if problem_type == "binary_classification" and text.lower() in _TRUE_FALSE:
            number = _TRUE_FALSE[text.lower()]
        else:
            try:
                number = float(text)
            except ValueError:
                number = None
    if number is None or not math.isfinite(number):
        raise _Bad("wrong_type", f"label {value!r} is not a {'0/1 label' if _binary(problem_type) else 'number'}")
    if _binary(problem_type) and number not in (0.0, 1.0):
        raise _Bad("wrong_type", f"label {value!r} is not 0 or 1")
    return number


def _binary(problem_type: str) -> bool:
    return problem_type == "binary_classification"


def _show(label: float) -> str:
    return f"{label:g}"


def ground_truth_key(model_prefix: str, name: str, now: datetime) -> str:
    """Where a label file named `name` uploaded at `now` goes: `<model_prefix>yyyy/mm/dd/hh/<name>` (UTC hour), with
    `model_prefix` the model's ground-truth prefix (`ground-truth/<model>/`)."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"label file name {name!r} must be a plain file name")
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    return f"{model_prefix.rstrip('/')}/{now:%Y/%m/%d/%H}/{name}"
