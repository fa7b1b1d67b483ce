"""The one place that parses and builds S3 URIs."""

from __future__ import annotations

from dataclasses import dataclass

# The object suffixes refit reads as data; the S3 trigger's event pattern filters on them too.
SUPPORTED_SUFFIXES = (".csv", ".csv.gz", ".parquet")


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise ValueError(f"{uri!r} is not an S3 URI (expected s3://bucket/key)")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"{uri!r} has no bucket name")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> S3Uri:
        key = self.key.rstrip("/")
        for part in parts:
            part = part.strip("/")
            key = f"{key}/{part}" if key else part
        return S3Uri(self.bucket, key)

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")


def is_s3_uri(value: str) -> bool:
    return isinstance(value, str) and value.startswith("s3://")
