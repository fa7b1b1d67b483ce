"""Reading tabular batches from a local path or S3, with errors that name the file and the problem."""

from __future__ import annotations

import csv
import gzip
import io
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from refit_core.s3uri import SUPPORTED_SUFFIXES, S3Uri, is_s3_uri


class DataError(ValueError):
    """A batch that cannot be used; the message names the file (and column, where there is one)."""


@dataclass(frozen=True)
class S3Object:
    uri: S3Uri
    etag: str
    last_modified: datetime


def list_s3_object_details(s3: Any, prefix: S3Uri) -> list[S3Object]:
    """Every data object under a prefix with its ETag and time, from the listing (no request per object)."""
    found: list[S3Object] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=prefix.key):
        found.extend(
            S3Object(S3Uri(prefix.bucket, item["Key"]), item.get("ETag", "").strip('"'), item["LastModified"])
            for item in page.get("Contents", [])
            if item["Key"].endswith(SUPPORTED_SUFFIXES)
        )
    return sorted(found, key=lambda o: o.uri.key)


def list_s3_objects(s3: Any, uri: S3Uri) -> list[S3Uri]:
    """Every data object under a prefix (or the single object), in key order."""
    if not uri.is_prefix:
        return [uri]
    return [o.uri for o in list_s3_object_details(s3, uri)]


DEFAULT_CHUNK_ROWS = 100_000  # the most rows in one streamed chunk, and the most cells (48 MB as float64):
CHUNK_CELLS = 6_000_000  # a table of 600 columns streams 10,000 rows at a time
FIRST_CSV_CHUNK_ROWS = 1_000  # read before a CSV's width is known


def rows_per_chunk(chunk_rows: int, columns: int) -> int:
    """Rows per chunk for a table this wide: memory per chunk stays bounded whatever the number of columns."""
    return max(FIRST_CSV_CHUNK_ROWS, min(chunk_rows, CHUNK_CELLS // max(columns, 1)))


class _StreamingBodyReader(io.RawIOBase):
    """Lets buffered and text readers pull from an S3 object body (which only offers read(n)) without holding it."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@contextmanager
def _open_binary(location: str, s3: Any | None) -> Iterator[BinaryIO]:
    """A buffered binary stream of a local file or an S3 object, read as it is consumed."""
    if is_s3_uri(location):
        if s3 is None:
            raise DataError(f"{location}: an S3 client is needed to read S3 data")
        uri = S3Uri.parse(location)
        try:
            body = s3.get_object(Bucket=uri.bucket, Key=uri.key)["Body"]
        except s3.exceptions.NoSuchKey:
            raise DataError(f"{location}: no such object") from None
        try:
            yield io.BufferedReader(_StreamingBodyReader(body), buffer_size=1 << 20)
        finally:
            body.close()
        return
    try:
        handle = open(location, "rb")  # noqa: SIM115 - closed below, after the caller is done
    except OSError as error:
        raise DataError(f"{location}: cannot read ({error.strerror})") from None
    with handle:
        yield handle


@contextmanager
def _seekable(location: str, s3: Any | None) -> Iterator[Any]:
    """Parquet needs random access (its footer is at the end): an S3 object is spooled to local disk, not memory."""
    if not is_s3_uri(location):
        yield location
        return
    uri = S3Uri.parse(location)
    with tempfile.TemporaryFile() as spool:
        try:
            s3.download_fileobj(uri.bucket, uri.key, spool)
        except s3.exceptions.ClientError as error:
            # Only a missing object says something about the batch. Throttling, a 5xx, a dropped connection or a
            # missing grant are the run's failure, not bad data: raised as they are, the run fails and settles
            # nothing, so the next scheduled run checks the batch again.
            if error.response["Error"].get("Code") in ("404", "NoSuchKey"):
                raise DataError(f"{location}: no such object") from None
            raise
        spool.seek(0)
        yield spool


def _check_header(frame: pd.DataFrame, name: str) -> None:
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


def iter_csv(binary: BinaryIO, name: str, chunk_rows: int | None) -> Iterator[pd.DataFrame]:
    """Parse one CSV (optionally gzip) stream chunk by chunk (whole when chunk_rows is None); refuse anything that
    is not a header plus rows, naming the file."""
    buffered = binary if hasattr(binary, "peek") else io.BufferedReader(binary)  # type: ignore[arg-type]
    compressed = name.endswith(".gz") or buffered.peek(2)[:2] == b"\x1f\x8b"
    stream: Any = gzip.GzipFile(fileobj=buffered, mode="rb") if compressed else buffered
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    rows = 0
    try:
        if not chunk_rows:
            frame = pd.read_csv(text, low_memory=False)
            _check_header(frame, name)
            rows = len(frame)
            if rows:
                yield frame
        else:
            reader = pd.read_csv(text, low_memory=False, iterator=True)
            size = min(chunk_rows, FIRST_CSV_CHUNK_ROWS)
            while True:
                try:
                    frame = reader.get_chunk(size)
                except StopIteration:
                    break
                if rows == 0:
                    _check_header(frame, name)
                    size = rows_per_chunk(chunk_rows, frame.shape[1])
                if frame.empty:
                    continue
                rows += len(frame)
                yield frame
    except pd.errors.EmptyDataError:
        raise DataError(f"{name}: the file is empty") from None
    except UnicodeDecodeError as error:
        raise DataError(
            f"{name}: not UTF-8 text (byte 0x{error.object[error.start]:02x} after row {rows}); save the file as UTF-8"
        ) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(f"{name}: truncated or corrupt gzip data ({error})") from None
    except pd.errors.ParserError as error:
        raise DataError(f"{name}: not a well-formed CSV ({error})") from None
    if rows == 0:
        raise DataError(f"{name}: has a header but no rows")


def iter_parquet(source: Any, name: str, chunk_rows: int | None) -> Iterator[pd.DataFrame]:
    import pyarrow as pa  # imported when a Parquet file is read, as pandas does: the training job's start stays short
    import pyarrow.parquet as pq

    rows = 0
    try:
        parquet = pq.ParquetFile(source, pre_buffer=False)
        if not chunk_rows:
            frames: Iterator[pd.DataFrame] = iter([parquet.read().to_pandas()])
        else:
            # One row group at a time, sliced into chunks. (ParquetFile.iter_batches was measured keeping decoded
            # data of every row group it had passed: 1.3 GB after 8 row groups of 1M rows, against 0.25 GB here.)
            frames = (
                group.slice(start, size).to_pandas()
                for size in [rows_per_chunk(chunk_rows, len(parquet.schema_arrow))]
                for group in (parquet.read_row_group(i) for i in range(parquet.num_row_groups))
                for start in range(0, group.num_rows, size)
            )
        for frame in frames:
            rows += len(frame)
            if len(frame):
                yield frame
    except (OSError, ValueError) as error:  # pyarrow raises ArrowInvalid (a ValueError) for truncated files
        if isinstance(error, pa.ArrowInvalid) and "size is 0 bytes" in str(error):
            raise DataError(f"{name}: the file is empty") from None
        raise DataError(f"{name}: not a readable Parquet file ({error})") from None
    if rows == 0:
        raise DataError(f"{name}: has a schema but no rows")


COLUMN_SPAN_ROWS = 1_000_000  # rows of consecutive row groups read as one column: 8 MB of float64


class ColumnGroup:
    """Consecutive row groups of a Parquet file (at least COLUMN_SPAN_ROWS rows, or the rest of the file), offered a
    column at a time. A writer's row group can hold the whole file (pandas and pyarrow write 1M rows per group by
    default), and small groups are many: reading a column across the span keeps one column in memory instead of
    every column of a group, decodes each column once and lets the statistics work on long columns (a KS update's
    cost is mostly per call). Valid only while its file is open: use it before asking its iterator for more."""

    def __init__(self, parquet: Any, row_groups: list[int], source: str, names: list[str]) -> None:
        self._parquet = parquet
        self._row_groups = row_groups
        self.source = source
        self.names = names
        self.n_rows = sum(int(parquet.metadata.row_group(i).num_rows) for i in row_groups)

    def _read(self, row_groups: list[int], columns: list[str]) -> Any:
        try:
            return self._parquet.read_row_groups(row_groups, columns=columns)
        except (OSError, ValueError) as error:
            raise DataError(f"{self.source}: not a readable Parquet file ({error})") from None

    def column(self, name: str) -> pd.Series:
        """One column of the span, as to_pandas of the whole span would give it."""
        return self._read(self._row_groups, [name]).to_pandas()[name]

    def row_chunks(self, columns: list[str], chunk_rows: int) -> Iterator[pd.DataFrame]:
        """These columns, a row group at a time, in chunks of rows (for what needs whole rows, like scoring)."""
        size = rows_per_chunk(chunk_rows, len(columns))
        for index in self._row_groups:
            table = self._read([index], columns)
            for start in range(0, table.num_rows, size):
                yield table.slice(start, size).to_pandas()


def column_spans(row_group_rows: list[int], span_rows: int = COLUMN_SPAN_ROWS) -> list[list[int]]:
    """Consecutive row groups joined until they hold at least span_rows rows (empty groups left out)."""
    spans: list[list[int]] = []
    current: list[int] = []
    rows = 0
    for index, count in enumerate(row_group_rows):
        if count == 0:
            continue
        current.append(index)
        rows += count
        if rows >= span_rows:
            spans.append(current)
            current, rows = [], 0
    if current:
        spans.append(current)
    return spans


def _frame_columns(parquet: Any) -> list[str]:
    """The columns a Parquet file's to_pandas gives (a stored index is not one of them)."""
    return [str(c) for c in parquet.schema_arrow.empty_table().to_pandas().columns]


def iter_parts(
    location: str, s3: Any | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS, columns: list[str] | None = None
) -> Iterator[tuple[str, Any]]:
    """Like iter_table, but a Parquet file comes as ColumnGroups (spans of row groups) instead of row chunks, so a
    consumer that works a column at a time (the quality and drift statistics) holds a few columns, never a whole row
    group, whatever the row-group size; CSV files come as row chunks. Every file must have the first file's
    columns (matched by name; extras are left out), or `columns` when given."""
    import pyarrow.parquet as pq

    names = _object_names(location, s3)
    expected, against = columns, "the expected schema" if columns is not None else names[0]
    for name in names:
        if not name.endswith(".parquet"):
            with _file_chunks(name, s3, chunk_rows) as chunks:
                for frame in chunks:
                    expected = _aligned(expected, [str(c) for c in frame.columns], name, against)
                    yield name, frame if list(frame.columns) == expected else frame[expected]
            continue
        if not is_s3_uri(name) and not Path(name).is_file():
            raise DataError(f"{name}: cannot read (no such file)")
        with _seekable(name, s3) as source:
            try:
                parquet = pq.ParquetFile(source, pre_buffer=False)
                file_columns = _frame_columns(parquet)
            except (OSError, ValueError) as error:
                if "size is 0 bytes" in str(error):
                    raise DataError(f"{name}: the file is empty") from None
                raise DataError(f"{name}: not a readable Parquet file ({error})") from None
            if parquet.metadata.num_rows == 0:
                raise DataError(f"{name}: has a schema but no rows")
            expected = _aligned(expected, file_columns, name, against)
            sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
            for span in column_spans(sizes):
                yield name, ColumnGroup(parquet, span, name, expected)


def _aligned(expected: list[str] | None, columns: list[str], name: str, against: str) -> list[str]:
    """The columns to take from a file: `expected` (the first file's, or the caller's) matched by name, in any order;
    a file's extra columns are left out. A missing one is an error naming the file and the column."""
    if expected is None:
        return columns
    missing = [column for column in expected if column not in columns]
    if missing:
        raise DataError(f"{name}: missing column(s) {missing} that {against} has (columns: {columns})")
    return expected


def _object_names(location: str, s3: Any | None) -> list[str]:
    if is_s3_uri(location):
        uri = S3Uri.parse(location)
        objects = list_s3_objects(s3, uri) if s3 is not None else [uri]
        if not objects:
            raise DataError(f"{location}: no .csv, .csv.gz or .parquet objects under this prefix")
        return [str(obj) for obj in objects]
    path = Path(location)
    names = (  # sub-folders too: SageMaker copies a channel's keys with their folders
        [str(p) for p in sorted(path.rglob("*")) if p.is_file() and p.name.endswith(SUPPORTED_SUFFIXES)]
        if path.is_dir()
        else [str(path)]
    )
    if not names:
        raise DataError(f"{location}: no .csv, .csv.gz or .parquet files in this folder")
    return names


def iter_table(
    location: str,
    s3: Any | None = None,
    chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
    columns: list[str] | None = None,
) -> Iterator[tuple[str, pd.DataFrame]]:
    """Stream a CSV (optionally gzip) or Parquet object, or every such object under a prefix or in a folder (its
    sub-folders included), as (file name, chunk of at most chunk_rows rows) — or one chunk per file when chunk_rows is
    None. Every file must have the first file's columns, or `columns` when given: matched by name, in any order, its
    extra columns left out; chunks come in that column order. Only one chunk is in memory at a time."""
    names = _object_names(location, s3)
    expected, against = columns, "the expected schema" if columns is not None else names[0]
    for name in names:
        with _file_chunks(name, s3, chunk_rows) as chunks:
            for frame in chunks:
                expected = _aligned(expected, [str(c) for c in frame.columns], name, against)
                yield name, frame if list(frame.columns) == expected else frame[expected]


@contextmanager
def _file_chunks(name: str, s3: Any | None, chunk_rows: int | None) -> Iterator[Iterator[pd.DataFrame]]:
    if name.endswith(".parquet"):
        if not is_s3_uri(name) and not Path(name).is_file():
            raise DataError(f"{name}: cannot read (no such file)")
        with _seekable(name, s3) as source:
            yield iter_parquet(source, name, chunk_rows)
    else:
        with _open_binary(name, s3) as binary:
            yield iter_csv(binary, name, chunk_rows)


def read_table(location: str, s3: Any | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """The whole of a CSV / Parquet object, prefix or folder in memory (training and profiling need all rows); its
    files aligned by column name (iter_table)."""
    frames = [frame for _, frame in iter_table(location, s3, chunk_rows=None, columns=columns)]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def stable_row_hash(frame: pd.DataFrame) -> np.ndarray:
    """A per-row hash that depends only on the row's values, for deterministic holdout splits."""
    return pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)


HEADER_BYTES = 1 << 20  # a CSV header longer than 1 MiB is refused rather than read further


class _S3RangeFile(io.RawIOBase):
    """A seekable read-only view of one S3 object version that fetches only the byte ranges read (a Parquet footer)."""

    def __init__(self, s3: Any, uri: S3Uri, version_id: str | None, size: int) -> None:
        self._s3, self._uri, self._version, self._size, self._position = s3, uri, version_id, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        if self._position >= self._size or len(buffer) == 0:
            return 0
        end = min(self._size, self._position + len(buffer)) - 1
        data = _get_range(self._s3, self._uri, self._version, self._position, end)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


def _get_range(s3: Any, uri: S3Uri, version_id: str | None, start: int, end: int) -> bytes:
    version = {"VersionId": version_id} if version_id else {}
    return s3.get_object(Bucket=uri.bucket, Key=uri.key, Range=f"bytes={start}-{end}", **version)["Body"].read()


def object_columns(s3: Any, uri: S3Uri, version_id: str | None = None) -> list[str]:
    """The column names of a CSV (optionally gzip) or Parquet object, from its header or footer alone (a few ranged
    reads, never the whole object): what a pre-check needs to know whether files will train together."""
    head = s3.head_object(Bucket=uri.bucket, Key=uri.key, **({"VersionId": version_id} if version_id else {}))
    size = int(head["ContentLength"])
    if size == 0:
        raise DataError(f"{uri}: the file is empty")
    if uri.key.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return _frame_columns(pq.ParquetFile(_S3RangeFile(s3, uri, version_id, size)))
        except (OSError, ValueError) as error:
            raise DataError(f"{uri}: not a readable Parquet file ({error})") from None
    data = _get_range(s3, uri, version_id, 0, min(size, HEADER_BYTES) - 1)
    if data[:2] == b"\x1f\x8b":
        try:
            data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, HEADER_BYTES)
        except zlib.error as error:
            raise DataError(f"{uri}: truncated or corrupt gzip data ({error})") from None
    line, newline, _ = data.partition(b"\n")
    if not newline and size > HEADER_BYTES:
        raise DataError(f"{uri}: no header line within the first {HEADER_BYTES:,} bytes")
    try:
        text = line.decode("utf-8-sig").rstrip("\r")
    except UnicodeDecodeError:
        raise DataError(f"{uri}: the header is not UTF-8 text") from None
    return [name.strip() for name in next(csv.reader([text]), [])]
