"""Private SageMaker: what every training job and model refit creates carries.

Network isolation is always on: neither `train` nor `serve` calls AWS (the image has no AWS SDK); SageMaker itself
copies the channels in, the checkpoints both ways and the output out, and downloads the model artifact, with the
execution role, outside the container. The VPC (`[network]` in refit.toml) is optional: when configured, the
instances' network interfaces live in its subnets and security groups. The Lambdas pass it on as
`REFIT_VPC_CONFIG` (SageMaker's VpcConfig as JSON; empty when none). The IAM policies of the callers require all of
it (stacks/retrain_functions.py), so a request without it is denied.
"""

from __future__ import annotations

import json
from typing import Any

VPC_CONFIG_ENV = "REFIT_VPC_CONFIG"


def vpc_config_from_json(text: str | None) -> dict[str, list[str]] | None:
    """SageMaker's VpcConfig from the functions' environment (`{"Subnets": [...], "SecurityGroupIds": [...]}`), or
    None when the project has no VPC. Anything else is a configuration error, named."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{VPC_CONFIG_ENV}: not JSON ({error})") from None
    if (
        not isinstance(value, dict)
        or set(value) != {"Subnets", "SecurityGroupIds"}
        or not all(isinstance(v, list) and v and all(isinstance(i, str) for i in v) for v in value.values())
    ):
        raise ValueError(
            f"{VPC_CONFIG_ENV}: expected {{'Subnets': [ids], 'SecurityGroupIds': [ids]}}, both non-empty; got {text}"
        )
    return value


def isolated(vpc_config: dict[str, list[str]] | None) -> dict[str, Any]:
    """The CreateTrainingJob / CreateModel fields that keep the container off the network, and in the VPC if any."""
    fields: dict[str, Any] = {"EnableNetworkIsolation": True}
    if vpc_config:
        fields["VpcConfig"] = {
            "Subnets": list(vpc_config["Subnets"]),
            "SecurityGroupIds": list(vpc_config["SecurityGroupIds"]),
        }
    return fields
