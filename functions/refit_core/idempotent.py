"""SageMaker creates that a retried Lambda can repeat.

Step Functions retries a Lambda that timed out or was throttled with the same input, and the Deploy actions name
their models and endpoint configs after the run (refit_core.names), so the retry asks for a name the first attempt
may already have created: SageMaker refuses that with a ValidationException ("Cannot create already existing ...").
Here the create is tried, and on that refusal the existing resource is described: the one this run asked for (the
fields refit sets are equal) is reused; anything else is an error naming what differs. An endpoint already updating to
(or serving) the config a call would put on it is reported by `moving_to`, so the caller reports the first attempt's
update instead of asking again (SageMaker refuses an UpdateEndpoint while the endpoint is Updating).

What a caller must return again on a retry but cannot read back from SageMaker (the config the endpoint had before,
the variants whose scalable targets went) travels as tags on the endpoint config it creates (`read_tags`).
"""

from __future__ import annotations

from typing import Any

# The fields of CreateModel / CreateEndpointConfig refit sets that decide whether an existing one is this run's.
# (Not EnableNetworkIsolation: the Deploy role may create a model of its names only with it, so every one has it.)
MODEL_FIELDS = ("ExecutionRoleArn", "VpcConfig")
CONTAINER_FIELDS = ("Image", "ModelDataUrl", "Environment")
VARIANT_FIELDS = ("VariantName", "ModelName", "InstanceType", "InitialVariantWeight")


class ExistingResourceDiffers(RuntimeError):
    """A resource of the requested name exists and is not the one this request describes."""


def _refused_as_existing(error: Exception) -> bool:
    response = getattr(error, "response", None)
    return isinstance(response, dict) and response.get("Error", {}).get("Code") == "ValidationException"


def _differences(kind: str, name: str, wanted: dict[str, Any], found: dict[str, Any], fields: tuple[str, ...]) -> list:
    return [
        f"{kind} {name}: {field} is {found.get(field)!r}, this request asks for {wanted.get(field)!r}"
        for field in fields
        if field in wanted and wanted.get(field) != found.get(field)
    ]


def create_model(sagemaker: Any, request: dict[str, Any]) -> bool:
    """CreateModel(**request), or reuse the model of that name when it is the same (role, isolation, VPC, image,
    artifact, environment). True when created, False when reused."""
    name = request["ModelName"]
    try:
        sagemaker.create_model(**request)
        return True
    except sagemaker.exceptions.ClientError as error:
        if not _refused_as_existing(error):
            raise
        try:
            found = sagemaker.describe_model(ModelName=name)
        except sagemaker.exceptions.ClientError:
            raise error from None  # not there: the refusal was about something else
    problems = _differences("model", name, request, found, MODEL_FIELDS) + _differences(
        "model", name, request["PrimaryContainer"], found.get("PrimaryContainer", {}), CONTAINER_FIELDS
    )
    if problems:
        raise ExistingResourceDiffers("; ".join(problems))
    return False


def create_endpoint_config(sagemaker: Any, request: dict[str, Any]) -> bool:
    """CreateEndpointConfig(**request), or reuse the config of that name when it has the same variants (name, model,
    instance type, weight) and volume key. True when created, False when reused (its tags are the first attempt's:
    `recorded`)."""
    name = request["EndpointConfigName"]
    try:
        sagemaker.create_endpoint_config(**request)
        return True
    except sagemaker.exceptions.ClientError as error:
        if not _refused_as_existing(error):
            raise
        try:
            found = sagemaker.describe_endpoint_config(EndpointConfigName=name)
        except sagemaker.exceptions.ClientError:
            raise error from None
    problems = _differences("endpoint config", name, request, found, ("KmsKeyId",))
    wanted_variants = [{f: v.get(f) for f in VARIANT_FIELDS} for v in request.get("ProductionVariants", [])]
    found_variants = [{f: v.get(f) for f in VARIANT_FIELDS} for v in found.get("ProductionVariants", [])]
    if wanted_variants != found_variants:
        problems.append(f"endpoint config {name}: its variants are {found_variants}, this request's {wanted_variants}")
    if problems:
        raise ExistingResourceDiffers("; ".join(problems))
    return False


# What an endpoint change records on the config it creates, to be returned again by a retry (tag key per field).
RECORD_TAGS = {
    "previous_config": "refit:previous_config",
    "previous_version": "refit:previous_version",
    "previous_package_arn": "refit:previous_package",
    "requested_at": "refit:requested_at",
    "deregistered": "refit:deregistered",
}


def record_tags(record: dict[str, Any]) -> list[dict[str, str]]:
    """`record` (keys of RECORD_TAGS; None as "", a list of variant names space-separated: a tag value admits letters,
    digits, spaces and `_.:/=+-@` only) as CreateEndpointConfig Tags."""

    def value(item: Any) -> str:
        return " ".join(item) if isinstance(item, list) else "" if item is None else str(item)

    return [{"Key": RECORD_TAGS[key], "Value": value(item)} for key, item in record.items()]


def recorded(sagemaker: Any, config_name: str) -> dict[str, Any]:
    """The record the first attempt tagged its endpoint config `config_name` with (record_tags' inverse)."""
    arn = sagemaker.describe_endpoint_config(EndpointConfigName=config_name)["EndpointConfigArn"]
    tags = read_tags(sagemaker, arn)
    found = {key: tags[tag] for key, tag in RECORD_TAGS.items() if tag in tags}
    if "deregistered" in found:
        found["deregistered"] = found["deregistered"].split()
    if "previous_version" in found:
        found["previous_version"] = int(found["previous_version"]) if found["previous_version"] else None
    for key in ("previous_config", "previous_package_arn", "requested_at"):
        if key in found:
            found[key] = found[key] or None
    return found


def read_tags(sagemaker: Any, arn: str) -> dict[str, str]:
    """A SageMaker resource's tags as a dict (ListTags, every page)."""
    tags: dict[str, str] = {}
    request: dict[str, Any] = {"ResourceArn": arn}
    while True:
        page = sagemaker.list_tags(**request)
        tags.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
        if not page.get("NextToken"):
            return tags
        request["NextToken"] = page["NextToken"]


def moving_to(endpoint: dict[str, Any], config_name: str) -> bool:
    """Whether DescribeEndpoint shows an update to `config_name` already asked for: the endpoint is on it (updating or
    done), or it is the pending deployment of a guarded update."""
    pending = (endpoint.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
    return config_name in (endpoint.get("EndpointConfigName"), pending)
