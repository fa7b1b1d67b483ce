"""Reading tabular batches from a local path or S3, with errors that name the file and the problem."""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from refit_core.s3uri import S3Uri, is_s3_uri

SUPPORTED_SUFFIXES = (".csv", ".csv.gz", ".parquet")


class DataError(ValueError):
    """A batch that cannot be used; the message names the file (and column, where there is one)."""


def list_s3_objects(s3: Any, uri: S3Uri) -> list[S3Uri]:
    """Every data object under a prefix (or the single object), in key order."""
    if not uri.is_prefix:
        return [uri]
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=uri.key):
        keys.extend(item["Key"] for item in page.get("Contents", []) if item["Key"].endswith(SUPPORTED_SUFFIXES))
    return [S3Uri(uri.bucket, key) for key in sorted(keys)]


def _read_bytes(location: str, s3: Any | None) -> bytes:
    if is_s3_uri(location):
        if s3 is None:
            raise DataError(f"{location}: an S3 client is needed to read S3 data")
        uri = S3Uri.parse(location)
        try:
            return s3.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            raise DataError(f"{location}: no such object") from None
    try:
        return Path(location).read_bytes()
    except OSError as error:
        raise DataError(f"{location}: cannot read ({error.strerror})") from None


def parse_parquet_bytes(raw: bytes, name: str) -> pd.DataFrame:
    if not raw:
        raise DataError(f"{name}: the file is empty")
    try:
        frame = pd.read_parquet(io.BytesIO(raw))
    except (OSError, ValueError) as error:  # pyarrow raises ArrowInvalid (a ValueError) for truncated files
        raise DataError(f"{name}: not a readable Parquet file ({error})") from None
    if frame.empty:
        raise DataError(f"{name}: has a schema but no rows")
    return frame


def parse_table_bytes(raw: bytes, name: str) -> pd.DataFrame:
    return parse_parquet_bytes(raw, name) if name.endswith(".parquet") else parse_csv_bytes(raw, name)


def parse_csv_bytes(raw: bytes, name: str) -> pd.DataFrame:
    """Parse one CSV (optionally gzip) object; refuse anything that is not a header plus rows."""
    if name.endswith(".gz") or raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{name}: truncated or corrupt gzip data ({error})") from None
    if not raw.strip():
        raise DataError(f"{name}: the file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{name}: not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}); save the file as UTF-8"
        ) from None
    try:
        frame = pd.read_csv(io.StringIO(text), low_memory=False)
    except pd.errors.ParserError as error:
        raise DataError(f"{name}: not a well-formed CSV ({error})") from None
    if frame.empty:
        raise DataError(f"{name}: has a header but no rows")
    if frame.shape[1] == 1:
        header = str(frame.columns[0])
        for delimiter, label in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if delimiter in header:
                raise DataError(
                    f"{name}: the header {header[:60]!r} looks {label}-separated; refit reads comma-separated CSV"
                )
    unnamed = [str(c) for c in frame.columns if str(c).startswith("Unnamed:")]
    if unnamed:
        raise DataError(f"{name}: the header has {len(unnamed)} empty column name(s); every column needs a name")
    return frame


def read_table(location: str, s3: Any | None = None) -> pd.DataFrame:
    """Read a CSV (optionally gzip) or Parquet object, or every such object under a prefix or in a folder
    (concatenated; the same columns are required)."""
    if is_s3_uri(location):
        uri = S3Uri.parse(location)
        objects = list_s3_objects(s3, uri) if s3 is not None else [uri]
        if not objects:
            raise DataError(f"{location}: no .csv, .csv.gz or .parquet objects under this prefix")
        names = [str(obj) for obj in objects]
    else:
        path = Path(location)
        names = (
            [str(p) for p in sorted(path.iterdir()) if p.name.endswith(SUPPORTED_SUFFIXES)]
            if path.is_dir()
            else [str(path)]
        )
        if not names:
            raise DataError(f"{location}: no .csv, .csv.gz or .parquet files in this folder")
    frames = [parse_table_bytes(_read_bytes(name, s3), name) for name in names]
    first = list(frames[0].columns)
    for name, frame in zip(names[1:], frames[1:], strict=True):
        if list(frame.columns) != first:
            raise DataError(f"{name}: columns {list(frame.columns)} differ from {names[0]}'s {first}")
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def stable_row_hash(frame: pd.DataFrame) -> np.ndarray:
    """A per-row hash that depends only on the row's values, for deterministic holdout splits."""
    return pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
