"""AWS's request limits, enforced on every client in the process while the local runtime runs.

botocore's client checks types, required members and minimums; the service itself also refuses values over a
`max` (string, blob, list and map size, number), strings that do not match the member's `pattern`, and values
outside an `enum`. moto checks none of these, so a name of 64 characters or a hyperparameter of 2,501 would pass
offline and fail in AWS. `enforce_limits()` wraps botocore's `ParamValidationDecorator.serialize_to_request`, the
step every client (the host's, the in-process Lambdas', the bridges' and the ASL interpreter's `aws-sdk` tasks)
takes before a request is sent, and raises what the service returns: a `ClientError` with code
`ValidationException`, naming the service, the operation, the parameter path and the failed constraint.

Patterns are Java regular expressions (the services are Java; the model's strings come from their validation).
AWS requires the *whole* value to match (Java's `Pattern.matches`): SageMaker's name pattern
`^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}` would accept `a_b` if a match at the start were enough, and SageMaker refuses
it. So patterns are applied with `fullmatch`. Java syntax Python's `re` lacks (`\\p{L}`, `\\p{Print}`, `\\z`, a class
shorthand before '-' in a class) is handled by the `regex` module; Java strings are UTF-16, so a surrogate-pair
range (`\\uD800\\uDC00-\\uDBFF\\uDFFF`) is rewritten as the code points it denotes. A pattern that still does not
compile is listed in `UNCOMPILED` and left unchecked (a test asserts there is none for the services refit calls).

`enforce_unique_names()` makes moto's SageMaker refuse a second CreateModel, CreateEndpointConfig, CreateEndpoint
or CreateTrainingJob with an existing name, with the error SageMaker returns (ValidationException "Cannot create
already existing ...", ResourceInUse for a training job); moto overwrites the first silently.

`enforce_vpc_references()` makes it refuse (ValidationException) a training job or model whose VpcConfig names a
subnet or security group that does not exist in moto's EC2, or subnets and groups of different VPCs; moto keeps any.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import regex
from botocore.exceptions import ClientError
from botocore.model import OperationModel, Shape
from botocore.validate import ParamValidationDecorator
from moto.core.exceptions import AWSError
from moto.sagemaker.exceptions import ResourceInUseException, ValidationError
from moto.sagemaker.models import SageMakerModelBackend
from moto.stepfunctions.models import StepFunctionBackend

SURROGATE_PAIR_RANGE = "\\uD800\\uDC00-\\uDBFF\\uDFFF"
SUPPLEMENTARY_RANGE = "\\U00010000-\\U0010FFFF"
UNCOMPILED: dict[str, str] = {}
_lock = threading.Lock()
_installed = 0
_original = ParamValidationDecorator.serialize_to_request


@functools.cache
def compile_pattern(pattern: str) -> regex.Pattern[str] | None:
    """A botocore (Java) pattern as a `regex` pattern, or None (recorded in UNCOMPILED) when it cannot be read."""
    translated = pattern.replace(SURROGATE_PAIR_RANGE, SUPPLEMENTARY_RANGE)
    try:
        return regex.compile(translated, flags=regex.VERSION0)
    except regex.error as error:
        UNCOMPILED[pattern] = str(error)
        return None


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def violations(value: Any, shape: Shape, path: str) -> Iterator[str]:
    """Every limit the service checks and botocore's client does not, for `value` of `shape` at `path`."""
    meta = shape.metadata
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                yield from violations(value[name], member, f"{path}.{name}" if path else name)
    elif kind == "list" and isinstance(value, list | tuple):
        if "max" in meta and len(value) > meta["max"]:
            yield f"{path}: {len(value)} items, more than the maximum {meta['max']}"
        for index, item in enumerate(value):
            yield from violations(item, shape.member, f"{path}[{index}]")
    elif kind == "map" and isinstance(value, dict):
        if "max" in meta and len(value) > meta["max"]:
            yield f"{path}: {len(value)} entries, more than the maximum {meta['max']}"
        for key, item in value.items():
            yield from violations(key, shape.key, f"{path} (key {key!r})")
            yield from violations(item, shape.value, f"{path}.{key}")
    elif kind == "string" and isinstance(value, str):
        if "max" in meta and len(value) > meta["max"]:
            yield f"{path}: length {len(value)} is over the maximum {meta['max']} (value {_preview(value)})"
        pattern = meta.get("pattern")
        if pattern is not None:
            compiled = compile_pattern(pattern)
            if compiled is not None and compiled.fullmatch(value) is None:
                yield f"{path}: value {_preview(value)} does not match the pattern {pattern}"
        if shape.enum and value not in shape.enum:
            yield f"{path}: value {_preview(value)} is not one of {shape.enum}"
    elif kind == "blob" and isinstance(value, bytes | bytearray | str):
        if "max" in meta and len(value) > meta["max"]:
            yield f"{path}: {len(value)} bytes, more than the maximum {meta['max']}"
    elif (
        kind in ("integer", "long", "float", "double")
        and isinstance(value, int | float)
        and value > meta.get("max", value)
    ):
        yield f"{path}: {value} is over the maximum {meta['max']}"


def check_request(parameters: dict[str, Any], operation: OperationModel) -> None:
    """Raise the service's ValidationException for a request over a limit."""
    if operation.input_shape is None:
        return
    problems = list(violations(parameters, operation.input_shape, ""))
    if problems:
        service = operation.service_model.service_name
        message = (
            f"{service} {operation.name}: {len(problems)} validation error{'s' if len(problems) > 1 else ''} "
            f"detected: " + "; ".join(problems)
        )
        raise ClientError(
            {"Error": {"Code": "ValidationException", "Message": message}, "ResponseMetadata": {"HTTPStatusCode": 400}},
            operation.name,
        )


def _serialize_to_request(self: ParamValidationDecorator, parameters: dict[str, Any], operation_model: Any) -> Any:
    request = _original(self, parameters, operation_model)  # botocore's own checks first, as the client runs them
    check_request(parameters, operation_model)
    return request


@contextlib.contextmanager
def enforce_limits() -> Iterator[None]:
    """While inside, every botocore client in the process refuses what the service would refuse. Nests."""
    global _installed
    with _lock:
        _installed += 1
        ParamValidationDecorator.serialize_to_request = _serialize_to_request
    try:
        yield
    finally:
        with _lock:
            _installed -= 1
            if _installed == 0:
                ParamValidationDecorator.serialize_to_request = _original


# The services refit's clients call over the JSON protocols (X-Amz-Target names the operation; the body is the
# parameters). Query (IAM, STS, SNS, CloudWatch's query mode) and REST (S3, sagemaker-runtime) requests are parsed
# by moto alone: `refit local up` does not check their limits for HTTP clients (in-process clients are checked).
JSON_PROTOCOL_SERVICES = (
    "sagemaker",
    "stepfunctions",
    "dynamodb",
    "logs",
    "events",
    "kms",
    "application-autoscaling",
    "cloudwatch",
)


@functools.cache
def _json_operations() -> dict[str, tuple[OperationModel, str]]:
    """X-Amz-Target ("SageMaker.CreateModel") -> (the operation's model, its JSON content type)."""
    import botocore.session

    loader = botocore.session.get_session()
    operations: dict[str, tuple[OperationModel, str]] = {}
    for name in JSON_PROTOCOL_SERVICES:
        service = loader.get_service_model(name)
        prefix = service.metadata.get("targetPrefix")
        if prefix is None:
            continue
        content_type = f"application/x-amz-json-{service.metadata.get('jsonVersion', '1.0')}"
        for operation in service.operation_names:
            operations[f"{prefix}.{operation}"] = (service.operation_model(operation), content_type)
    return operations


def _from_json(value: Any, shape: Shape) -> Any:
    """A JSON-protocol body's value as a client's parameter: blobs travel base64-encoded (their limits are in bytes)."""
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        return {k: _from_json(v, shape.members[k]) if k in shape.members else v for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        return [_from_json(item, shape.member) for item in value]
    if kind == "map" and isinstance(value, dict):
        return {k: _from_json(v, shape.value) for k, v in value.items()}
    if kind == "blob" and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            return value
    return value


class RequestLimits:
    """WSGI middleware in front of moto's server (`refit local up`): a JSON-protocol request over a limit the
    service checks is refused as the service refuses it (400, ValidationException naming the parameter), whatever
    client sent it, before moto sees it; in-process clients are checked by `enforce_limits`."""

    def __init__(self, application: Callable[..., Any]) -> None:
        self.application = application

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        found = _json_operations().get(environ.get("HTTP_X_AMZ_TARGET", ""))
        if found is not None:
            operation, content_type = found
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)  # moto reads it again
            try:
                parameters = json.loads(body or b"{}")
            except ValueError:
                parameters = None  # not JSON: moto answers it as AWS would a malformed body
            if isinstance(parameters, dict) and operation.input_shape is not None:
                try:
                    check_request(_from_json(parameters, operation.input_shape), operation)
                except ClientError as error:
                    reply = json.dumps({"__type": "ValidationException", "message": error.response["Error"]["Message"]})
                    start_response(
                        "400 Bad Request",
                        [("Content-Type", content_type), ("x-amzn-ErrorType", "ValidationException")],
                    )
                    return [reply.encode()]
        return self.application(environ, start_response)


Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]  # the original method -> its replacement


@contextlib.contextmanager
def patched(targets: Iterable[tuple[type, str, Wrapper]]) -> Iterator[None]:
    """While inside, each (class, method, wrap) has `class.method` replaced by `wrap(the original)`; on leaving, every
    original is put back (in reverse order, so a method patched twice ends as it began)."""
    originals: list[tuple[type, str, Any]] = []
    try:
        for owner, method, wrap in targets:
            original = getattr(owner, method)
            originals.append((owner, method, original))
            setattr(owner, method, wrap(original))
        yield
    finally:
        for owner, method, original in reversed(originals):
            setattr(owner, method, original)


# (backend method, the backend's dict of existing resources, the ARN's resource type, the error SageMaker returns)
_UNIQUE = (
    ("create_model", "_models", "model", lambda arn: ValidationError(f'Cannot create already existing model "{arn}".')),
    (
        "create_endpoint_config",
        "endpoint_configs",
        "endpoint-config",
        lambda arn: ValidationError(f'Cannot create already existing endpoint configuration "{arn}".'),
    ),
    (
        "create_endpoint",
        "endpoints",
        "endpoint",
        lambda arn: ValidationError(f'Cannot create already existing endpoint "{arn}".'),
    ),
    (
        "create_training_job",
        "training_jobs",
        "training-job",
        lambda arn: ResourceInUseException(
            "Training job names must be unique within an AWS account and region, and a training job with this name "
            f"already exists ({arn})"
        ),
    ),
)


def _refusing_existing(method: str, existing: str, kind: str, error: Any) -> Wrapper:
    def refusing(original: Callable[..., Any]) -> Callable[..., Any]:
        def create(backend: SageMakerModelBackend, *args: Any, **kwargs: Any) -> Any:
            name = args[0] if args else kwargs[f"{method.removeprefix('create_')}_name"]
            if name in getattr(backend, existing):
                raise error(f"arn:aws:sagemaker:{backend.region_name}:{backend.account_id}:{kind}/{name}")
            return original(backend, *args, **kwargs)

        return create

    return refusing


@contextlib.contextmanager
def enforce_unique_names() -> Iterator[None]:
    """While inside, moto's SageMaker refuses an existing model, endpoint config, endpoint or training job name."""
    with patched(
        (SageMakerModelBackend, method, _refusing_existing(method, existing, kind, error))
        for method, existing, kind, error in _UNIQUE
    ):
        yield


def vpc_problems(vpc_config: dict[str, list[str]] | None, account: str, region: str) -> list[str]:
    """What SageMaker refuses in a training job's or model's VpcConfig that botocore's client does not check (it does
    check that both Subnets and SecurityGroupIds are given): subnets or security groups that do not exist in the
    account and region (moto's EC2 here), or that are not all in one VPC."""
    if not vpc_config:
        return []
    from moto.ec2.exceptions import InvalidSubnetIdError
    from moto.ec2.models import ec2_backends

    ec2 = ec2_backends[account][region]
    problems, vpcs = [], {}
    for subnet_id in vpc_config.get("Subnets", []):
        try:
            vpcs[subnet_id] = ec2.get_subnet(subnet_id).vpc_id
        except InvalidSubnetIdError:
            problems.append(f"VpcConfig.Subnets: the subnet {subnet_id} does not exist")
    for group_id in vpc_config.get("SecurityGroupIds", []):
        group = ec2.get_security_group_from_id(group_id)
        if group is None:
            problems.append(f"VpcConfig.SecurityGroupIds: the security group {group_id} does not exist")
        else:
            vpcs[group_id] = group.vpc_id
    if len(set(vpcs.values())) > 1:
        problems.append(f"VpcConfig: the subnets and security groups are in more than one VPC: {vpcs}")
    return problems


def _checking_vpc(original: Callable[..., Any]) -> Callable[..., Any]:
    def create(backend: SageMakerModelBackend, *args: Any, **kwargs: Any) -> Any:
        problems = vpc_problems(kwargs.get("vpc_config"), backend.account_id, backend.region_name)
        if problems:
            raise ValidationError("; ".join(problems))
        return original(backend, *args, **kwargs)

    return create


@contextlib.contextmanager
def enforce_vpc_references() -> Iterator[None]:
    """While inside, moto's SageMaker refuses a training job or model whose VpcConfig names subnets or security groups
    that do not exist, or that span VPCs (vpc_problems)."""
    with patched((SageMakerModelBackend, method, _checking_vpc) for method in ("create_training_job", "create_model")):
        yield


class InvalidDefinition(AWSError):
    TYPE = "InvalidDefinition"
    STATUS = 400


def transition_problems(states: dict[str, Any], start_at: str, where: str = "") -> list[str]:
    """What Step Functions' static check refuses in one container of states (the machine's, a Parallel branch's, a
    Map's item processor), in its words: a transition to a state that is not there, and a state no path from
    StartAt reaches (CDK renders every state it was handed, reached or not)."""
    problems = []
    edges: dict[str, list[tuple[str, str]]] = {}
    for name, state in states.items():
        targets = [(state[key], f"{where}/States/{name}/{key}") for key in ("Next", "Default") if key in state]
        targets += [
            (c["Next"], f"{where}/States/{name}/Choices[{i}]/Next") for i, c in enumerate(state.get("Choices", []))
        ]
        targets += [(c["Next"], f"{where}/States/{name}/Catch[{i}]/Next") for i, c in enumerate(state.get("Catch", []))]
        edges[name] = targets
        for index, branch in enumerate(state.get("Branches", [])):
            problems += transition_problems(
                branch["States"], branch["StartAt"], f"{where}/States/{name}/Branches[{index}]"
            )
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if processor:
            problems += transition_problems(
                processor["States"], processor["StartAt"], f"{where}/States/{name}/ItemProcessor"
            )
    if start_at not in states:
        problems.append(f"MISSING_TRANSITION_TARGET: Missing 'Next' target: {start_at} at {where}/StartAt")
    seen, todo = set(), [start_at] if start_at in states else []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for target, at in edges[name]:
            if target not in states:
                problems.append(f"MISSING_TRANSITION_TARGET: Missing 'Next' target: {target} at {at}")
            else:
                todo.append(target)
    problems += [
        f'MISSING_TRANSITION_TARGET: State "{name}" is not reachable. at {where}/States/{name}'
        for name in states
        if name not in seen
    ]
    return problems


def _checking_definition(original: Callable[..., Any]) -> Callable[..., Any]:
    def checked(backend: StepFunctionBackend, *args: Any, **kwargs: Any) -> Any:
        definition = kwargs.get("definition") if "definition" in kwargs else (args[1] if len(args) > 1 else None)
        if definition:
            parsed = json.loads(definition)
            problems = transition_problems(parsed.get("States", {}), parsed.get("StartAt", ""))
            if problems:
                raise InvalidDefinition(f"Invalid State Machine Definition: '{', '.join(problems)}'")
        return original(backend, *args, **kwargs)

    return checked


@contextlib.contextmanager
def enforce_definitions() -> Iterator[None]:
    """While inside, CreateStateMachine and UpdateStateMachine refuse a definition with a transition to a missing
    state or an unreachable state, as Step Functions does (InvalidDefinition); moto stores any JSON."""
    with patched(
        (StepFunctionBackend, method, _checking_definition)
        for method in ("create_state_machine", "update_state_machine")
    ):
        yield


@contextlib.contextmanager
def enforce_aws_rules() -> Iterator[None]:
    """All four: the request limits of every client, SageMaker's unique names and VPC references, and Step Functions'
    static check of a definition's transitions."""
    with enforce_limits(), enforce_unique_names(), enforce_vpc_references(), enforce_definitions():
        yield
