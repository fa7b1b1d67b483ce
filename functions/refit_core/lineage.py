"""Where a model came from: the data, code, image and settings that made it, and why the gate judged it so.

The full document is stored as JSON next to the model's baseline (`models/<model>/<run>/lineage.json`) and
referenced from its Model Registry entry; `diff` says what changed between two versions."""

from __future__ import annotations

from typing import Any

from refit_core.s3uri import S3Uri

LINEAGE_FORMAT = "refit.lineage/1"


def object_identity(s3: Any, uri: S3Uri) -> dict[str, Any]:
    head = s3.head_object(Bucket=uri.bucket, Key=uri.key)
    return {
        "uri": str(uri),
        "version_id": head.get("VersionId"),
        "etag": head.get("ETag", "").strip('"'),
        "bytes": head.get("ContentLength"),
    }


def prefix_identities(s3: Any, prefix: S3Uri) -> list[dict[str, Any]]:
    """Every current object version under a prefix, as a training channel of S3Prefix type reads it."""
    found: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=prefix.bucket, Prefix=prefix.key):
        for version in page.get("Versions", []):
            if version.get("IsLatest"):
                found.append(
                    {
                        "uri": f"s3://{prefix.bucket}/{version['Key']}",
                        "version_id": version.get("VersionId"),
                        "etag": version.get("ETag", "").strip('"'),
                        "bytes": version.get("Size"),
                    }
                )
    return sorted(found, key=lambda item: item["uri"])


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What changed between two lineage documents, grouped as data, code, settings and metrics."""
    old_inputs = {i["uri"]: i for i in old.get("inputs", [])}
    new_inputs = {i["uri"]: i for i in new.get("inputs", [])}
    data = {
        "added": sorted(set(new_inputs) - set(old_inputs)),
        "removed": sorted(set(old_inputs) - set(new_inputs)),
        "changed": sorted(
            u
            for u in set(old_inputs) & set(new_inputs)
            if (old_inputs[u]["version_id"], old_inputs[u]["etag"])
            != (new_inputs[u]["version_id"], new_inputs[u]["etag"])
        ),
    }
    code = {
        k: {"from": old.get(k), "to": new.get(k)}
        for k in ("code_version", "image_uri", "image_digest")
        if old.get(k) != new.get(k)
    }
    old_settings, new_settings = _flatten(old.get("hyperparameters", {})), _flatten(new.get("hyperparameters", {}))
    settings = {
        k: {"from": old_settings.get(k), "to": new_settings.get(k)}
        for k in sorted(set(old_settings) | set(new_settings))
        if old_settings.get(k) != new_settings.get(k) and k != "run_id"
    }
    old_metrics = (old.get("metrics") or {}).get("challenger") or {}
    new_metrics = (new.get("metrics") or {}).get("challenger") or {}
    metrics = {
        k: {"from": old_metrics.get(k), "to": new_metrics.get(k)} for k in sorted(set(old_metrics) | set(new_metrics))
    }
    return {
        "from_version": old.get("version"),
        "to_version": new.get("version"),
        "data": data,
        "code": code,
        "settings": settings,
        "metrics": metrics,
    }
