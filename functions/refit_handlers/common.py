"""What every refit Lambda shares: its settings from the environment, AWS clients, input parsing."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from pydantic import BaseModel, ValidationError
from refit_core.config import ModelConfig, model_from_json
from refit_core.network import VPC_CONFIG_ENV, vpc_config_from_json

T = TypeVar("T", bound=BaseModel)


class InvalidEvent(ValueError):
    """The Lambda's input does not have the shape the state machine is meant to send."""


@dataclass(frozen=True)
class Settings:
    model: ModelConfig
    data_bucket: str
    artifact_bucket: str
    audit_table: str
    topic_arn: str
    endpoint_name: str
    model_package_group: str
    sagemaker_role_arn: str
    image_uri: str
    canary_alarm: str
    instance_prices: dict[str, float]
    code_version: str
    kms_key_arn: str
    state_machine_arn: str = ""  # the model's own state machine: a run that releases the lock starts the next one
    quality_alarm: str = ""  # the model's quality alarm, when it has one (the monitor re-arms it)
    vpc_config: dict[str, list[str]] | None = None  # the project's VPC for SageMaker, if any (refit_core.network)
    serving_prices: dict[str, float] = field(default_factory=dict)  # hosting USD/instance-hour (the canary's cost)


def settings() -> Settings:
    """Read per call: the environment is the function's configuration, set by the stack."""
    env = os.environ
    return Settings(
        model=model_from_json(env["REFIT_MODEL_CONFIG"]),
        data_bucket=env["REFIT_DATA_BUCKET"],
        artifact_bucket=env["REFIT_ARTIFACT_BUCKET"],
        audit_table=env["REFIT_AUDIT_TABLE"],
        topic_arn=env["REFIT_TOPIC_ARN"],
        endpoint_name=env["REFIT_ENDPOINT_NAME"],
        model_package_group=env["REFIT_MODEL_PACKAGE_GROUP"],
        sagemaker_role_arn=env["REFIT_SAGEMAKER_ROLE_ARN"],
        image_uri=env["REFIT_IMAGE_URI"],
        canary_alarm=env["REFIT_CANARY_ALARM"],
        instance_prices=json.loads(env["REFIT_INSTANCE_PRICES"]),
        code_version=env["REFIT_CODE_VERSION"],
        kms_key_arn=env["REFIT_KMS_KEY_ARN"],
        state_machine_arn=env["REFIT_STATE_MACHINE_ARN"],
        quality_alarm=env.get("REFIT_QUALITY_ALARM", ""),
        vpc_config=vpc_config_from_json(env.get(VPC_CONFIG_ENV)),
        serving_prices=json.loads(env.get("REFIT_SERVING_PRICES", "{}")),
    )


_RETRIES = Config(retries={"max_attempts": 5, "mode": "standard"})


@functools.cache
def client(service: str) -> Any:
    return boto3.client(service, config=_RETRIES)


def parse(model: type[T], event: Any) -> T:
    try:
        return model.model_validate(event)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or 'event'}: {item['msg']}" for item in error.errors()
        )
        raise InvalidEvent(f"{model.__name__}: {problems}") from None


def to_dynamodb(value: Any) -> Any:
    """JSON data as DynamoDB accepts it: floats become Decimal; NaN and infinities (which DynamoDB refuses) become
    null, so an odd statistic can never cost a run its audit record."""
    return json.loads(json.dumps(value, default=str), parse_float=Decimal, parse_constant=lambda constant: None)
