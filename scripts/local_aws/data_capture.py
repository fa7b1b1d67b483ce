"""SageMaker Data Capture, as the endpoint router (bridges.py) writes it: what one captured request looks like and
where its file goes. moto stores an endpoint config's DataCaptureConfig but captures nothing.

SageMaker writes JSON Lines files under `<DestinationS3Uri>/<endpoint>/<variant>/yyyy/mm/dd/hh/` named
`<mm>-<ss>-<mmm>-<uuid>.jsonl` (the minute, second and millisecond of the file's first record), one record per
request:

    {"captureData": {"endpointInput": {"observedContentType": "text/csv", "mode": "INPUT", "data": "1,2", "encoding": "CSV"},
                     "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT", "data": "{..}", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "<uuid>", "inferenceId": "<the caller's InferenceId; absent if none>",
                       "inferenceTime": "2026-11-29T01:02:03Z"},
     "eventVersion": "0"}

A body whose content type (the request's Content-Type, the response's) is listed in CaptureContentTypeHeader's
CsvContentTypes or JsonContentTypes is captured as text with encoding CSV or JSON; any other is base64-encoded
(BASE64), as the API reference says ("If no headers are specified SageMaker AI will by default base64 encode").
CaptureOptions' modes (Input, Output, InputAndOutput) decide which halves a record holds.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

MODES = {"Input": ("INPUT",), "Output": ("OUTPUT",), "InputAndOutput": ("INPUT", "OUTPUT")}


def capture_enabled(config: dict[str, Any] | None) -> bool:
    """An endpoint config's DataCaptureConfig captures (EnableCapture defaults to true when the config is given)."""
    return bool(config) and config.get("EnableCapture", True) is not False


def capture_summary(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """DescribeEndpoint's DataCaptureConfig (the service model's DataCaptureConfigSummary, all five fields required)
    for an endpoint whose current config has the DataCaptureConfig `config`; None when it has none. moto returns the
    endpoint config's own fields from creation instead (no CaptureStatus or CurrentSamplingPercentage), which the
    SageMaker SDK's Endpoint refuses to load."""
    if not config:
        return None
    enabled = capture_enabled(config)
    summary = {
        "EnableCapture": enabled,
        "CaptureStatus": "Started" if enabled else "Stopped",
        "CurrentSamplingPercentage": int(config["InitialSamplingPercentage"]),
        "DestinationS3Uri": config["DestinationS3Uri"],
    }
    if config.get("KmsKeyId"):
        summary["KmsKeyId"] = config["KmsKeyId"]
    return summary


def captured_modes(config: dict[str, Any]) -> set[str]:
    return {mode for option in config.get("CaptureOptions", []) for mode in MODES[option["CaptureMode"]]}


def encoding_for(content_type: str | None, config: dict[str, Any]) -> str:
    """CSV or JSON when the content type header is one CaptureContentTypeHeader lists, else BASE64."""
    header = config.get("CaptureContentTypeHeader") or {}
    if content_type in (header.get("CsvContentTypes") or []):
        return "CSV"
    if content_type in (header.get("JsonContentTypes") or []):
        return "JSON"
    return "BASE64"


def captured_body(body: bytes, content_type: str | None, mode: str, config: dict[str, Any]) -> dict[str, str]:
    encoding = encoding_for(content_type, config)
    if encoding != "BASE64":
        try:
            data = body.decode("utf-8")
        except UnicodeDecodeError:  # declared text but not UTF-8: kept byte for byte
            encoding = "BASE64"
    if encoding == "BASE64":
        data = base64.b64encode(body).decode("ascii")
    return {"observedContentType": content_type or "", "mode": mode, "data": data, "encoding": encoding}


def capture_record(
    config: dict[str, Any],
    *,
    request: bytes,
    request_type: str | None,
    response: bytes,
    response_type: str | None,
    inference_id: str | None,
    when: datetime,
) -> dict[str, Any]:
    """One request's capture record."""
    modes = captured_modes(config)
    capture: dict[str, Any] = {}
    if "INPUT" in modes:
        capture["endpointInput"] = captured_body(request, request_type, "INPUT", config)
    if "OUTPUT" in modes:
        capture["endpointOutput"] = captured_body(response, response_type, "OUTPUT", config)
    metadata = {"eventId": str(uuid.uuid4())}
    if inference_id:
        metadata["inferenceId"] = inference_id
    metadata["inferenceTime"] = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"captureData": capture, "eventMetadata": metadata, "eventVersion": "0"}


def capture_key(destination: str, endpoint: str, variant: str, first: datetime) -> tuple[str, str]:
    """(bucket, key) of a capture file whose first record is from `first`."""
    bucket, _, prefix = destination.removeprefix("s3://").partition("/")
    moment = first.astimezone(UTC)
    folder = "/".join(part for part in (prefix.strip("/"), endpoint, variant, moment.strftime("%Y/%m/%d/%H")) if part)
    name = f"{moment.strftime('%M-%S')}-{moment.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
    return bucket, f"{folder}/{name}"
