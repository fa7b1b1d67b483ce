"""Every physical name refit gives an AWS resource, built in one place so names stay unique and within AWS's limits.

The rule:
- a model's *prefix* is `{project}-{model}`. The project name has no '-', so the prefix says which project and model
  it belongs to (project `a` with model `b-c` and project `a-b` with model `c` cannot both exist). The endpoint, the
  model package group and the state machine are named by the prefix itself.
- every name generated from the prefix (SageMaker models, endpoint configs, training jobs, alarms) is
  `{prefix}--{part}[--{suffix}]`. Model and project names contain no '--' and do not end with '-', so an IAM pattern
  `{prefix}--*` matches this model's names only: `refit-churn--*` never matches `refit-churn-eu--...`.
- SageMaker names are at most 63 characters of `[a-zA-Z0-9](-*[a-zA-Z0-9])*`. The distinguishing suffix
  (`first`/`canary`/`final`, `s1`/`od2`, the family) is always kept; a run id that does not fit, or has characters
  SageMaker refuses, is shortened to its start plus a hash of the whole id, so two runs never share a name.
"""

from __future__ import annotations

import hashlib
import re

SEPARATOR = "--"
SAGEMAKER_NAME_MAX = 63
SAGEMAKER_NAME_PATTERN = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")
# The longest suffix a generated SageMaker name carries: a parallel family's on-demand attempt, e.g. `forest-od30`.
LONGEST_SUFFIX = 12
HASH_CHARS = 8
# The least room a run id always has: its hash, so two runs never collide.
PREFIX_MAX = SAGEMAKER_NAME_MAX - len(SEPARATOR) * 2 - LONGEST_SUFFIX - HASH_CHARS
_PLAIN_PART = re.compile(r"[a-zA-Z0-9]+(-[a-zA-Z0-9]+)*")


def stack_name(project: str) -> str:
    """The CloudFormation stack: the project's name, so two projects deploy side by side."""
    return project


def model_prefix(project: str, model: str) -> str:
    """`{project}-{model}`: the endpoint, the model package group and the state machine."""
    prefix = f"{project}-{model}"
    if len(prefix) > PREFIX_MAX:
        raise ValueError(
            f"project {project!r} and model {model!r} make the name prefix {prefix!r} ({len(prefix)} characters); "
            f"at most {PREFIX_MAX} leave room in SageMaker's 63-character names for the run and suffix"
        )
    return prefix


def alarm_name(prefix: str, purpose: str) -> str:
    """A CloudWatch alarm of the model: `{prefix}--canary`, `{prefix}--quality`."""
    return f"{prefix}{SEPARATOR}{purpose}"


def _short(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:HASH_CHARS]


def run_part(run_id: str, room: int) -> str:
    """The run id as it appears in a SageMaker name: itself when it fits `room` and is plain (letters, digits, single
    '-'), else its plain start and a hash of the whole id."""
    if len(run_id) <= room and _PLAIN_PART.fullmatch(run_id):
        return run_id
    start = re.sub(r"[^a-zA-Z0-9]+", "-", run_id)[: max(room - HASH_CHARS - 1, 0)].strip("-")
    return f"{start}-{_short(run_id)}" if start else _short(run_id)


def sagemaker_name(prefix: str, run_id: str, suffix: str | None = None) -> str:
    """`{prefix}--{run}[--{suffix}]`, at most 63 characters, matching SageMaker's name pattern."""
    if not _PLAIN_PART.fullmatch(prefix) or (suffix is not None and not _PLAIN_PART.fullmatch(suffix)):
        raise ValueError(f"{prefix!r} / {suffix!r}: only letters, digits and single '-' can start or end a name")
    tail = f"{SEPARATOR}{suffix}" if suffix else ""
    room = SAGEMAKER_NAME_MAX - len(prefix) - len(SEPARATOR) - len(tail)
    if room < HASH_CHARS:
        raise ValueError(f"{prefix!r} with suffix {suffix!r} leaves no room for the run id in 63 characters")
    return f"{prefix}{SEPARATOR}{run_part(run_id, room)}{tail}"


def training_job_name(prefix: str, run_id: str, attempt: int, spot: bool, family: str | None = None) -> str:
    """`{prefix}--{run}--[{family}-]s{attempt}|od{attempt}`."""
    suffix = f"{family + '-' if family else ''}{'s' if spot else 'od'}{attempt}"
    return sagemaker_name(prefix, run_id, suffix)


def model_name(prefix: str, run_id: str) -> str:
    """The SageMaker model a run deploys."""
    return sagemaker_name(prefix, run_id)


def endpoint_config_name(prefix: str, run_id: str, stage: str) -> str:
    """`stage`: `first` (a new endpoint), `canary` (both variants), `shadow` (the champion and the challenger as its shadow), `final` (the challenger alone)."""
    return sagemaker_name(prefix, run_id, stage)


def pattern(prefix: str) -> str:
    """The IAM resource-name pattern of every name generated from `prefix` (and of no other model's)."""
    return f"{prefix}{SEPARATOR}*"


def model_package_arn(state_machine_arn: str, package_group: str, version: int) -> str:
    """The ARN of version `version` of the model's package group, in the account and region of its state machine
    (`arn:<partition>:states:<region>:<account>:stateMachine:<name>`). DescribeModelPackage names a version of a
    versioned group only by its ARN; SageMaker ARNs carry names in lower case."""
    parts = state_machine_arn.split(":")
    if len(parts) < 7 or parts[2] != "states":
        raise ValueError(f"{state_machine_arn!r} is not a state machine ARN")
    partition, region, account = parts[1], parts[3], parts[4]
    return f"arn:{partition}:sagemaker:{region}:{account}:model-package/{package_group.lower()}/{int(version)}"
