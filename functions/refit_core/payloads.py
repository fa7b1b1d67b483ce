"""The endpoint's payloads, one implementation for both ends: `serve` parses request bodies into feature rows and
renders its predictions with these functions, and the capture reader parses what Data Capture recorded of the same
requests and replies with them, so a captured request means exactly what it meant to the model.

Requests: CSV without a header in the model's feature order (a first line equal to the feature names is a header),
JSON `{"instances": [...]}` / `{"records": [...]}` / a bare list of rows (each a list of values in feature order or
an object by feature name), JSON Lines (one such row per line). Replies: JSON `{"predictions": [...],
"probabilities": [...]}` (probabilities for binary classification only), CSV `prediction[,probability]` per line,
JSON Lines `{"prediction": ..., "probability": ...}` per line.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

CSV, JSON, JSON_LINES = "text/csv", "application/json", "application/jsonlines"
# Media types are case-insensitive and may carry parameters (`text/CSV; charset=utf-8`). JSON Lines is what SageMaker's
# JSONLinesSerializer and batch transform send: one record or instance per line, answered one result per line.
INPUT_TYPES = {CSV: CSV, JSON: JSON, JSON_LINES: JSON_LINES, "application/x-jsonlines": JSON_LINES}
OUTPUT_TYPES = (JSON, CSV, JSON_LINES)
OUTPUT_NAMES = {"predictions": "prediction", "probabilities": "probability"}


class PayloadError(ValueError):
    """A body that is not a valid request or reply; the message names the problem (and the row or line)."""


class UnsupportedContentType(PayloadError):
    """A content type the model does not read."""


def media_type(header: str) -> str:
    return header.split(";", 1)[0].strip().lower()


def parse_request(body: bytes, content_type: str, features: Sequence[str], numeric: Sequence[str]) -> pd.DataFrame:
    """The rows of a request body, columns = `features` in order; `numeric` columns as numbers. Raises PayloadError
    (UnsupportedContentType for a type the model does not read) naming what is wrong."""
    kind = INPUT_TYPES.get(media_type(content_type))
    if kind is None:
        raise UnsupportedContentType(f"unsupported content type {content_type!r}; use {', '.join(INPUT_TYPES)}")
    features = list(features)
    if kind == CSV:
        frame = _csv(body, features)
    elif kind == JSON:
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise PayloadError(f"malformed JSON: {error}") from None
        rows = payload.get("instances", payload.get("records")) if isinstance(payload, dict) else payload
        if not isinstance(rows, list) or not rows:
            raise PayloadError('JSON must be {"instances": [...]} or {"records": [...]} with at least one row')
        frame = _rows(rows, "instance", features)
    else:
        rows = []
        for number, line in enumerate(body.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except (json.JSONDecodeError, UnicodeDecodeError) as error:
                    raise PayloadError(f"JSON Lines line {number}: malformed JSON: {error}") from None
        if not rows:
            raise PayloadError("JSON Lines body has no rows")
        frame = _rows(rows, "line", features)
    return _numbers(frame, numeric)


def _csv(body: bytes, features: list[str]) -> pd.DataFrame:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("the CSV body is not UTF-8") from None
    first = text.split("\n", 1)[0].split(",")
    has_header = [c.strip() for c in first] == features
    try:
        frame = pd.read_csv(io.StringIO(text), header=0 if has_header else None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise PayloadError(f"malformed CSV: {error}") from None
    if frame.shape[1] != len(features):
        raise PayloadError(f"each CSV row needs {len(features)} values ({', '.join(features)}), got {frame.shape[1]}")
    frame.columns = features
    return frame


def _rows(rows: list[Any], unit: str, features: list[str]) -> pd.DataFrame:
    if all(isinstance(r, dict) for r in rows):
        missing = sorted(set(features) - set().union(*rows))
        if missing:
            raise PayloadError(f"records lack the features {missing}")
        return pd.DataFrame(rows)[features]
    if all(isinstance(r, list) and len(r) == len(features) for r in rows):
        return pd.DataFrame(rows, columns=features)
    raise PayloadError(f"each {unit} must be a list of {len(features)} values or a record object")


def _numbers(frame: pd.DataFrame, numeric: Sequence[str]) -> pd.DataFrame:
    """Numeric features as numbers; a value that is not one is named with its column and row (scikit-learn's own
    message names neither). A column pandas already read as numbers is left as it is (to_numeric would too)."""
    for column in numeric:
        if pd.api.types.is_numeric_dtype(frame[column]):
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise PayloadError(
                f"column {column!r} must be numeric: row {row + 1} has {frame[column].iloc[row]!r}"
                + (f" ({int(bad.sum())} such values)" if bad.sum() > 1 else "")
            )
        frame[column] = values
    return frame


def render_reply(result: dict[str, list[Any]], kind: str) -> bytes:
    """`serve`'s reply body in `kind` (one of OUTPUT_TYPES) for {"predictions": [...], "probabilities": [...]}."""
    if kind == CSV:
        columns = [result["predictions"]] + ([result["probabilities"]] if "probabilities" in result else [])
        lines = [",".join(str(v) for v in row) for row in zip(*columns, strict=True)]
        return ("\n".join(lines) + "\n").encode()
    if kind == JSON_LINES:
        rows = zip(*(result[key] for key in OUTPUT_NAMES if key in result), strict=True)
        keys = [OUTPUT_NAMES[key] for key in OUTPUT_NAMES if key in result]
        return "".join(json.dumps(dict(zip(keys, row, strict=True))) + "\n" for row in rows).encode()
    return json.dumps(result).encode()


def parse_reply(body: bytes, content_type: str, problem_type: str) -> dict[str, list[float]]:
    """The inverse of `render_reply`: {"predictions": [...]} plus "probabilities" for binary classification, each
    value a finite number. Raises PayloadError naming what is wrong (an error reply, a missing field, a bad value)."""
    kind = media_type(content_type)
    if kind == "application/x-jsonlines":
        kind = JSON_LINES
    if kind not in OUTPUT_TYPES:
        raise UnsupportedContentType(f"reply content type {content_type!r} is none of {', '.join(OUTPUT_TYPES)}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("the reply is not UTF-8") from None
    wanted = ["predictions", "probabilities"] if problem_type == "binary_classification" else ["predictions"]
    if kind == JSON:
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise PayloadError(f"malformed JSON reply: {error}") from None
        if not isinstance(payload, dict) or not all(isinstance(payload.get(key), list) for key in wanted):
            shown = json.dumps(payload)[:80] if isinstance(payload, dict | list) else repr(payload)[:80]
            raise PayloadError(f"the reply is not {{{', '.join(repr(k) for k in wanted)}: [...]}}: {shown}")
        columns = {key: payload[key] for key in wanted}
    else:
        lines = [line for line in text.splitlines() if line.strip()]
        if kind == CSV:
            cells = [line.split(",") for line in lines]
            if any(len(row) != len(wanted) for row in cells):
                raise PayloadError(f"each CSV reply line must be {','.join(OUTPUT_NAMES[k] for k in wanted)}")
            columns = {key: [row[i] for row in cells] for i, key in enumerate(wanted)}
        else:
            rows = []
            for number, line in enumerate(lines, start=1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise PayloadError(f"JSON Lines reply line {number}: malformed JSON: {error}") from None
                if not isinstance(row, dict) or not all(OUTPUT_NAMES[key] in row for key in wanted):
                    raise PayloadError(f"JSON Lines reply line {number} lacks {[OUTPUT_NAMES[k] for k in wanted]}")
                rows.append(row)
            columns = {key: [row[OUTPUT_NAMES[key]] for row in rows] for key in wanted}
    lengths = {len(values) for values in columns.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise PayloadError(f"the reply has {' and '.join(f'{len(v)} {k}' for k, v in columns.items())}")
    return {key: [_number(value, key, row) for row, value in enumerate(values)] for key, values in columns.items()}


def _number(value: Any, field: str, row: int) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PayloadError(f"reply {field} row {row + 1} is not a number: {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise PayloadError(f"reply {field} row {row + 1} is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise PayloadError(f"reply {field} row {row + 1} is not finite: {value!r}")
    return number
