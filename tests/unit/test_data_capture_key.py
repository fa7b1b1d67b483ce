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


def test_every_create_endpoint_config_sends_the_capture_settings_and_the_volume_key():
    calls = endpoint_config_calls()
    assert len(calls) >= 6  # first endpoint, canary, shadow, guardrails, promote, redeploy
    for where, call in calls:
        keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
        assert keywords.get("DataCaptureConfig") == "capture(config)", where
        assert keywords.get("KmsKeyId") == "config.kms_key_arn", where


def test_the_capture_settings_encrypt_with_the_project_key():
    settings = handler_settings()
    captured = capture(settings)
    assert captured["EnableCapture"] is True
    assert captured["KmsKeyId"] == settings.kms_key_arn
    assert captured["DestinationS3Uri"] == f"s3://data/{settings.model.capture_prefix}".rstrip("/")
