"""Endpoint layout and the canary verdict.

The endpoint always has a variant called `champion`; during a canary a second variant called
`challenger` takes `canary.weight` of the traffic. Fixed names let one CloudWatch alarm watch the
challenger across model versions. Promotion replaces the config with the challenger's model under
the name `champion`; rollback returns to the config the endpoint had before the run.
"""

from __future__ import annotations

from typing import Any

from refit_core.config import CanarySettings

CHAMPION = "champion"
CHALLENGER = "challenger"


def variant(model_name: str, variant_name: str, weight: float, instance_type: str) -> dict[str, Any]:
    return {
        "VariantName": variant_name,
        "ModelName": model_name,
        "InitialInstanceCount": 1,
        "InstanceType": instance_type,
        "InitialVariantWeight": weight,
    }


# Content types Data Capture records as text (CSV and JSON); anything else is captured base64-encoded.
CAPTURE_CSV_TYPES = ["text/csv"]
CAPTURE_JSON_TYPES = ["application/json", "application/jsonlines"]


def data_capture(destination: str, sampling_percent: int, kms_key_arn: str) -> dict[str, Any]:
    """The DataCaptureConfig of every endpoint config refit creates: requests and responses, as text, encrypted with
    the project key, under `destination` (SageMaker adds `/<endpoint>/<variant>/yyyy/mm/dd/hh/`)."""
    return {
        "EnableCapture": True,
        "InitialSamplingPercentage": sampling_percent,
        "DestinationS3Uri": destination.rstrip("/"),
        "KmsKeyId": kms_key_arn,
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"CsvContentTypes": CAPTURE_CSV_TYPES, "JsonContentTypes": CAPTURE_JSON_TYPES},
    }


def canary_variants(
    champion_model: str, challenger_model: str, weight: float, instance_type: str
) -> list[dict[str, Any]]:
    return [
        variant(champion_model, CHAMPION, round(1 - weight, 6), instance_type),
        variant(challenger_model, CHALLENGER, weight, instance_type),
    ]


def canary_verdict(
    settings: CanarySettings,
    invocations: float,
    errors_5xx: float,
    mean_latency_ms: float | None,
    alarm_state: str | None,
) -> dict[str, Any]:
    """Healthy only with enough traffic, a low 5XX rate, an acceptable mean model latency (one slow request does not
    fail a canary) and no alarm in ALARM."""
    error_rate = errors_5xx / invocations if invocations else 0.0
    evidence = {
        "invocations": invocations,
        "errors_5xx": errors_5xx,
        "error_rate": round(error_rate, 6),
        "mean_model_latency_ms": mean_latency_ms,
        "alarm_state": alarm_state,
    }
    if alarm_state == "ALARM":
        return {"healthy": False, "reason": "the canary alarm is in ALARM", **evidence}
    if error_rate > settings.max_error_rate:
        return {
            "healthy": False,
            "reason": f"challenger 5XX error rate {error_rate:.2%} is over {settings.max_error_rate:.2%}",
            **evidence,
        }
    if mean_latency_ms is not None and mean_latency_ms > settings.max_model_latency_ms:
        return {
            "healthy": False,
            "reason": f"challenger mean model latency {mean_latency_ms:.0f} ms is over {settings.max_model_latency_ms:.0f} ms",
            **evidence,
        }
    if invocations < settings.min_invocations:
        return {
            "healthy": False,
            "reason": f"challenger saw {invocations:.0f} invocations during the bake, fewer than the "
            f"{settings.min_invocations} required to judge it",
            **evidence,
        }
    return {
        "healthy": True,
        "reason": f"challenger served {invocations:.0f} requests within limits",
        **evidence,
    }
