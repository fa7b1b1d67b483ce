"""Data Capture's KMS key is not IAM-enforceable: the Service Authorization Reference lists no condition key of
sagemaker:CreateEndpointConfig for DataCaptureConfig.KmsKeyId (sagemaker:VolumeKmsKey is the instances' volumes,
KmsKeyId, and the action has no OutputKmsKey; tests/infrastructure/test_private_sagemaker.py's SUPPORTED transcribes
the reference). So refit's code is what puts the project key on every capture, and these tests hold it to that:
every CreateEndpointConfig the product code sends passes `capture(config)`, which carries the project key, and the
volume key."""

from __future__ import annotations

import ast
from pathlib import Path

from refit_handlers.deploy import capture

from tests.conftest import handler_settings

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_CODE = ("functions", "stacks", "training_container")


def endpoint_config_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for folder in PRODUCT_CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "create_endpoint_config":
                    calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return calls


PASS_THROUGH = "functions/refit_core/idempotent.py"  # create_endpoint_config(sagemaker, request): **request as given


def request_fields(where: str, call: ast.Call) -> dict[str, str]:
    """The request's fields as source: the keywords of a client call, or the dict a caller hands the idempotent
    wrapper (which sends it whole: its own call is `**request` and nothing else)."""
    if where.startswith(PASS_THROUGH):
        assert [k.arg for k in call.keywords] == [None] and not call.args, where
        return {}
    if call.keywords:
        return {k.arg: ast.unparse(k.value) for k in call.keywords}
    request = call.args[-1]
    assert isinstance(request, ast.Dict), f"{where}: the request is not written out here"
    return {ast.literal_eval(key): ast.unparse(value) for key, value in zip(request.keys, request.values, strict=True)}


def test_every_create_endpoint_config_sends_the_capture_settings_and_the_volume_key():
    calls = endpoint_config_calls()
    assert len(calls) >= 6  # first endpoint, canary, shadow, guardrails, promote, redeploy
    for where, call in calls:
        if where.startswith(PASS_THROUGH):
            request_fields(where, call)
            continue
        fields = request_fields(where, call)
        assert fields.get("DataCaptureConfig") == "capture(config)", where
        assert fields.get("KmsKeyId") == "config.kms_key_arn", where


def test_the_capture_settings_encrypt_with_the_project_key():
    settings = handler_settings()
    captured = capture(settings)
    assert captured["EnableCapture"] is True
    assert captured["KmsKeyId"] == settings.kms_key_arn
    assert captured["DestinationS3Uri"] == f"s3://data/{settings.model.capture_prefix}".rstrip("/")
