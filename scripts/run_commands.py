"""Operating refit from a terminal: land a batch, start a run and follow it, list and read runs, see a model's state.

    refit land MODEL FILE [--name KEY] [--follow]
    refit trigger MODEL [--force] [--data URI] [--reason TEXT] [--dry-run] [--follow]
    refit runs MODEL [--limit N]
    refit show RUN_ID [--model MODEL]
    refit status MODEL
    refit rollback MODEL [--to VERSION] [--reason TEXT] [--force] [--follow]
    refit promote MODEL VERSION [--reason TEXT] [--force] [--follow]
    refit approve MODEL VERSION [--comment TEXT] [--run RUN_ID]   (a decision the model's Approve function makes
    refit reject MODEL VERSION [--comment TEXT] [--run RUN_ID]     as the caller AWS verified; see `decide`)

Every command takes `--json` and talks to AWS through plain boto3 clients with the standard settings, so the same
command works against an account and against any endpoint `AWS_ENDPOINT_URL` names (`refit local up`). Where the
project's resources are comes from one place, `Resources`: the outputs of the stack named after `project` (or
`--stack`), or a file of those outputs (`--stack-outputs FILE` or `REFIT_STACK_OUTPUTS`: a JSON object of output
name to value, or `cdk deploy --outputs-file`'s form), with `--data-bucket` / `--artifact-bucket` / `--audit-table`
naming one resource directly. Endpoints, state machines and package groups are named by refit_core.names.

Exit codes: 0 done (with --follow: the run SUCCEEDED); 1 the run ended FAILED, TIMED_OUT or ABORTED, or AWS could
not be read (no stack, no endpoint, no credentials: the message says which and what to set); 2 bad input (a model
not in the configuration, a run id that does not exist, a file that is not a table, a --data outside the model's
new-data prefix), or a decision the Approve function refused (nothing pending, separation of duties, ...). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
)
from refit_core import ledger
from refit_core.audit import format_summary
from refit_core.champion import (
    RedeployRefused,
    check_redeploy,
    describe_version,
    endpoint_view,
    find_champion,
    find_serving_package,
)
from refit_core.config import ConfigError, ModelConfig, RefitConfig, load_config
from refit_core.datasets import DataError, iter_table
from refit_core.identity import CallerIdentity
from refit_core.names import model_package_arn, stack_name
from refit_core.runs import RunInputError, parse_run_input, run_id_from_execution
from refit_core.s3uri import SUPPORTED_SUFFIXES, is_s3_uri
from refit_handlers.check_batch import CheckEvent, check_batch
from refit_handlers.common import Settings
from refit_handlers.prepare import batch_of, newest_batch
from refit_handlers.training import month_spend

from scripts.run_report import ReportError, find_record, from_dynamodb, plain, running_execution

COMMANDS = ("land", "trigger", "runs", "show", "status", "rollback", "promote", "approve", "reject")
STACK_OUTPUTS_ENV = "REFIT_STACK_OUTPUTS"
POLL_SECONDS = 1.0
CLOCK_SKEW = timedelta(seconds=60)  # between this machine's clock and the service's, when matching start times
CHAMPION_FIELDS = ("version", "model_name", "model_package_arn", "endpoint_config")
RECORD_WAIT_SECONDS = 30.0  # a run that timed out or was stopped gets its record from the run-end Cleanup, shortly


class CommandError(Exception):
    """A problem the user can fix, printed as one line; `exit_code` 2 for bad input, 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def bad_input(message: str) -> CommandError:
    return CommandError(message, exit_code=2)


# ---------------------------------------------------------------------------------------------- where things are
def _endpoint_of(client: Any) -> str:
    return client.meta.endpoint_url


def aws_error(error: Exception, what: str, endpoint: str | None = None) -> CommandError:
    """One line for an AWS call that failed, saying what to set."""
    where = f" at {endpoint}" if endpoint else ""
    if isinstance(error, EndpointConnectionError):
        return CommandError(
            f"cannot reach {error.kwargs.get('endpoint_url', endpoint)} while reading {what}: check AWS_ENDPOINT_URL "
            "(start `refit local up`, which prints it, or unset it to use AWS)"
        )
    if isinstance(error, NoCredentialsError):
        return CommandError(
            f"no AWS credentials to read {what}: configure them (aws configure), or export the AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY `refit local up` prints"
        )
    if isinstance(error, NoRegionError):
        return CommandError(f"no AWS region to read {what}: set AWS_DEFAULT_REGION (or AWS_REGION)")
    if isinstance(error, ClientError):
        code = error.response["Error"].get("Code")
        message = error.response["Error"].get("Message")
        return CommandError(f"cannot read {what}{where} ({code}: {message})")
    return CommandError(f"cannot read {what}{where} ({error}); check AWS_ENDPOINT_URL, the region and the credentials")


def _flat_outputs(data: Any, stack: str, source: str) -> dict[str, str]:
    """A file of stack outputs: `{"DataBucket": "..."}`, `cdk deploy --outputs-file`'s `{"<stack>": {...}}`, or
    `aws cloudformation describe-stacks`' reply."""
    if isinstance(data, dict) and isinstance(data.get("Stacks"), list) and data["Stacks"]:
        data = {o["OutputKey"]: o["OutputValue"] for o in data["Stacks"][0].get("Outputs", [])}
    elif isinstance(data, dict) and isinstance(data.get(stack), dict):
        data = data[stack]
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise bad_input(
            f"{source}: not a file of stack outputs; expected a JSON object of output name to value "
            f'(e.g. {{"DataBucket": "...", "AuditTable": "..."}}) or `cdk deploy --outputs-file` output'
        )
    return data


class Resources:
    """Where this project's resources are. Outputs of the stack named after `project` (read once, when first
    needed), or of a file naming them; single resources named on the command line win."""

    def __init__(
        self,
        config: RefitConfig,
        stack: str | None = None,
        outputs_file: str | None = None,
        overrides: dict[str, str | None] | None = None,
        cloudformation: Callable[[], Any] | None = None,
    ) -> None:
        self.config = config
        self.stack = stack or stack_name(config.project)
        self.outputs_file = outputs_file
        self.overrides = {key: value for key, value in (overrides or {}).items() if value}
        self._cloudformation = cloudformation or (lambda: boto3.client("cloudformation"))
        self._outputs: dict[str, str] | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, config: RefitConfig | None = None) -> Resources:
        return cls(
            config or load_config(args.config),
            stack=getattr(args, "stack", None),
            outputs_file=getattr(args, "stack_outputs", None) or os.environ.get(STACK_OUTPUTS_ENV) or None,
            overrides={
                "DataBucket": getattr(args, "data_bucket", None),
                "ArtifactBucket": getattr(args, "artifact_bucket", None),
                "AuditTable": getattr(args, "audit_table", None),
            },
        )

    def outputs(self) -> dict[str, str]:
        if self._outputs is None:
            self._outputs = self._read_file() if self.outputs_file else self._read_stack()
        return self._outputs

    def _read_file(self) -> dict[str, str]:
        try:
            data = json.loads(Path(self.outputs_file).read_text())
        except OSError as error:
            raise bad_input(f"{self.outputs_file}: cannot read the stack outputs ({error.strerror})") from None
        except json.JSONDecodeError as error:
            raise bad_input(f"{self.outputs_file}: not JSON ({error.msg} at line {error.lineno})") from None
        return _flat_outputs(data, self.stack, self.outputs_file)

    def _read_stack(self) -> dict[str, str]:
        try:
            cloudformation = self._cloudformation()
            stacks = cloudformation.describe_stacks(StackName=self.stack)["Stacks"]
        except ClientError as error:
            if error.response["Error"].get("Code") == "ValidationError":
                region = cloudformation.meta.region_name
                raise CommandError(
                    f"cannot read stack {self.stack}: it does not exist in {region} at {_endpoint_of(cloudformation)}; "
                    "deploy it (npx cdk deploy), or set AWS_ENDPOINT_URL to a running `refit local up`, or pass "
                    "--stack-outputs FILE"
                ) from None
            raise aws_error(error, f"stack {self.stack}", _endpoint_of(cloudformation)) from None
        except BotoCoreError as error:
            raise aws_error(error, f"stack {self.stack}") from None
        return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}

    def output(self, key: str, option: str) -> str:
        """An output of the stack, or the resource `option` named."""
        if key in self.overrides:
            return self.overrides[key]
        try:
            outputs = self.outputs()
        except CommandError as error:
            raise CommandError(f"{error} (or name it with {option})", error.exit_code) from None
        if key not in outputs:
            source = self.outputs_file or f"stack {self.stack}"
            raise CommandError(f"{source} has no {key} output; pass {option}")
        return outputs[key]

    @property
    def data_bucket(self) -> str:
        return self.output("DataBucket", "--data-bucket")

    @property
    def artifact_bucket(self) -> str:
        return self.output("ArtifactBucket", "--artifact-bucket")

    @property
    def audit_table(self) -> str:
        return self.output("AuditTable", "--audit-table")

    def endpoint_name(self, model: str) -> str:
        return self.config.prefix(model)

    def state_machine_arn(self, model: str) -> str:
        """The model's state machine: the output whose ARN ends with the model's prefix (refit_core.names)."""
        suffix = f":stateMachine:{self.config.prefix(model)}"
        outputs = self.outputs()
        arn = next((v for k, v in outputs.items() if "StateMachineArn" in k and v.endswith(suffix)), None)
        if arn is None:
            source = self.outputs_file or f"stack {self.stack}"
            raise CommandError(
                f"{source} has no state machine for model {model!r} (an output ending {suffix}): deploy the "
                "configuration that defines it"
            )
        return arn


def _model(config: RefitConfig, name: str, config_path: str) -> ModelConfig:
    try:
        return config.model(name)
    except ConfigError:
        known = ", ".join(m.name for m in config.models)
        raise bad_input(
            f"{config_path} has no model {name!r} (models: {known}); add a [[models]] section or pass --config"
        ) from None


# ---------------------------------------------------------------------------------------------- approvals
def approve_url(resources: Resources, model: str) -> str:
    """The model's Approve function URL, from the stack's ApproveUrls output (JSON: model -> URL)."""
    urls = json.loads(resources.output("ApproveUrls", "--url"))
    if model not in urls:
        raise bad_input(f'model {model!r} has no Approve function in the stack (its approval is not "manual")')
    return urls[model]


def signed_post(url: str, body: bytes, credentials: Any, region: str, timeout: float = 60.0) -> tuple[int, bytes]:
    """POST `body` (JSON) to a function URL with AuthType AWS_IAM, SigV4-signed for service `lambda` with
    `credentials`; (HTTP status, reply body). Raises URLError when nothing answers."""
    host = urlsplit(url).hostname or ""
    if host.endswith(".on.aws") and ".lambda-url." in host:  # https://<id>.lambda-url.<region>.on.aws/
        region = host.split(".lambda-url.", 1)[1].removesuffix(".on.aws")
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(credentials, "lambda", region).add_auth(request)
    prepared = urllib.request.Request(url, data=body, headers=dict(request.headers.items()), method="POST")
    try:
        with urllib.request.urlopen(prepared, timeout=timeout) as reply:  # noqa: S310 - an https (or local) URL
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def decide(args: argparse.Namespace, config: RefitConfig, resources: Resources, out: Any) -> int:
    """`refit approve` / `reject`: send the decision to the model's Approve function URL, signed with this shell's
    AWS credentials (those boto3.client() uses: environment, profile, SSO). The function, not this command, reads the
    pending approval, applies the rules to the identity AWS verified (separation of duties included) and sends the
    result to the waiting run; its refusal is exit 2 with its one-line reason, and AWS's own 403 (these credentials
    may not call the URL) names the approver role."""
    model = _model(config, args.model, args.config)
    url = args.url or approve_url(resources, model.name)
    request = {"model": model.name, "version": args.version, "decision": args.command, "comment": args.comment}
    if args.run:
        request["run_id"] = args.run
    session = boto3._get_default_session()  # what boto3.client() signs with
    credentials = session.get_credentials()
    if credentials is None:
        raise CommandError("no AWS credentials to sign the decision with; assume the approver role (ApproverRoleArn)")
    region = session.region_name or os.environ.get("AWS_REGION") or "us-east-1"
    try:
        status, reply = signed_post(url, json.dumps(request).encode(), credentials.get_frozen_credentials(), region)
    except urllib.error.URLError as error:
        raise CommandError(f"cannot reach the Approve function of {model.name} at {url} ({error.reason})") from None
    try:
        answer = json.loads(reply)
    except ValueError:
        answer = {"Message": reply.decode(errors="replace")[:200]}
    if status == 200:
        print(json.dumps(answer, indent=None if args.json else 1), file=out)
        return 0
    if isinstance(answer, dict) and "error" in answer:  # the function's refusal: nothing changed
        raise CommandError(str(answer["error"]), exit_code=2)
    if status == 403:
        role = next((v for k, v in _outputs_or_empty(resources).items() if "ApproverRoleArn" in k), "ApproverRoleArn")
        raise CommandError(
            f"AWS refused these credentials the Approve function of {model.name} ({answer.get('Message', status)}); "
            f"decide as the approver role: assume {role} (README 'Approval')"
        )
    raise CommandError(
        f"the Approve function of {model.name} failed (HTTP {status}: {answer}); nothing may have changed: see its log "
        "group, then `refit status` / the package's approval status"
    )


def _outputs_or_empty(resources: Resources) -> dict[str, str]:
    try:
        return resources.outputs()
    except CommandError:
        return {}


# ---------------------------------------------------------------------------------------------- reading records
def run_records(dynamodb: Any, table: str, model: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The model's audit records, newest first (sk = run#<started>#<run id>)."""
    arguments: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "pk = :model AND begins_with(sk, :runs)",
        "ExpressionAttributeValues": {":model": {"S": model}, ":runs": {"S": "run#"}},
        "ScanIndexForward": False,
    }
    records: list[dict[str, Any]] = []
    for page in dynamodb.get_paginator("query").paginate(**arguments):
        records.extend(from_dynamodb(item) for item in page.get("Items", []))
        if limit is not None and len(records) >= limit:
            return records[:limit]
    return records


# ---------------------------------------------------------------------------------------------- land
def check_table(path: str) -> dict[str, Any]:
    """The file read as the run's check reads it (refit_core.datasets), so a file that is not a table is refused
    before anything is uploaded. Returns its rows and columns."""
    if is_s3_uri(path):
        raise bad_input(f"{path}: give a local file (a batch already in S3 can be run with refit trigger --data)")
    file = Path(path)
    if not file.is_file():
        raise bad_input(f"{path}: no such file")
    if not file.name.endswith(SUPPORTED_SUFFIXES):
        raise bad_input(
            f"{path}: refit reads .csv, .csv.gz and .parquet files (the new-data rule starts runs for those only); "
            "rename or convert it"
        )
    rows, columns = 0, []
    try:
        for _, chunk in iter_table(str(file)):
            rows, columns = rows + len(chunk), [str(c) for c in chunk.columns]
    except DataError as error:
        raise bad_input(f"not a table: {error}") from None
    if rows == 0:
        raise bad_input(f"{path}: no rows (a header only); nothing to land")
    return {"rows": rows, "columns": columns}


def land(args: argparse.Namespace, config: RefitConfig, resources: Resources, out: Any) -> int:
    model = _model(config, args.model, args.config)
    table = check_table(args.file)
    name = args.name or Path(args.file).name
    if "/" in name or not name.endswith(SUPPORTED_SUFFIXES):
        raise bad_input(f"--name {name!r}: one file name ending .csv, .csv.gz or .parquet")
    bucket, key = resources.data_bucket, f"{model.new_data_prefix}{name}"
    s3 = boto3.client("s3")
    landed_at = datetime.now(UTC)
    try:
        with open(args.file, "rb") as body:
            reply = s3.put_object(Bucket=bucket, Key=key, Body=body)
    except (ClientError, BotoCoreError) as error:
        raise aws_error(error, f"s3://{bucket}/{key} (upload)", _endpoint_of(s3)) from None
    result: dict[str, Any] = {
        "model": model.name,
        "file": args.file,
        "uri": f"s3://{bucket}/{key}",
        "etag": reply.get("ETag", "").strip('"'),
        **table,
        "execution_arn": None,
    }
    if not args.json:
        print(
            f"landed {args.file} ({table['rows']:,} rows, {len(table['columns'])} columns) as {result['uri']}", file=out
        )
    if not args.follow:
        if not args.json:
            print(
                f"the S3 event starts a run of {model.name}: refit runs {model.name} / refit status {model.name}",
                file=out,
            )
        else:
            print(json.dumps(result), file=out)
        return 0
    sfn = boto3.client("stepfunctions")
    arn = started_by_upload(sfn, resources.state_machine_arn(model.name), bucket, key, landed_at, args.timeout)
    if arn is None:
        message = (
            f"no run of {model.name} started for {result['uri']} within {args.timeout:g} s: check the model's "
            "new-data rule (EventBridge) and the data bucket's EventBridge notifications"
        )
        raise CommandError(message)
    result["execution_arn"] = arn
    return _follow_and_report(args, model, resources, arn, result, out)


def started_by_upload(
    sfn: Any, state_machine_arn: str, bucket: str, key: str, since: datetime, timeout: float
) -> str | None:
    """The execution the S3 event of `key` started (its input is the Object Created event), or None."""
    deadline = time.monotonic() + timeout
    looked: set[str] = set()
    while True:
        try:
            executions = sfn.list_executions(stateMachineArn=state_machine_arn, maxResults=100)["executions"]
            for execution in executions:
                arn = execution["executionArn"]
                if arn in looked or execution["startDate"] < since - CLOCK_SKEW:
                    continue
                looked.add(arn)
                detail = json.loads(sfn.describe_execution(executionArn=arn).get("input") or "{}")
                detail = detail.get("detail", {}) if isinstance(detail, dict) else {}
                if detail.get("bucket", {}).get("name") == bucket and detail.get("object", {}).get("key") == key:
                    return arn
        except (ClientError, BotoCoreError) as error:
            raise aws_error(error, f"executions of {state_machine_arn}", _endpoint_of(sfn)) from None
        if time.monotonic() > deadline:
            return None
        time.sleep(min(POLL_SECONDS, 0.2))


# ---------------------------------------------------------------------------------------------- trigger
def _data_uri(value: str | None, model: ModelConfig, bucket: str) -> str | None:
    """--data: an s3:// URI, or a file name under the model's new-data prefix."""
    if value is None or is_s3_uri(value):
        return value
    return f"s3://{bucket}/{model.new_data_prefix}{value}"


def _user() -> str:
    """The caller's AWS identity (STS GetCallerIdentity's ARN): what `requested_by` records, never a typed name."""
    sts = boto3.client("sts")
    try:
        return CallerIdentity.of(sts).arn
    except (ClientError, BotoCoreError) as error:
        raise aws_error(error, "the caller's identity (sts GetCallerIdentity)", _endpoint_of(sts)) from None


def trigger(args: argparse.Namespace, config: RefitConfig, resources: Resources, out: Any) -> int:
    model = _model(config, args.model, args.config)
    bucket = resources.data_bucket
    who = _user()
    payload: dict[str, Any] = {
        "force": bool(args.force),
        "reason": args.reason or f"manual run by {who}",
        "requested_by": who,
    }
    data_uri = _data_uri(args.data, model, bucket)
    if data_uri is not None:
        payload["data_uri"] = data_uri
    try:
        # The run's own validation (Prepare's), so bad input is refused here instead of failing a run.
        parse_run_input(payload, model.new_data_prefix, bucket)
    except (RunInputError, ValueError) as error:
        raise bad_input(str(error).removeprefix("data_uri: ")) from None
    s3 = boto3.client("s3")
    if data_uri is not None:
        try:
            found = batch_of(s3, data_uri, None)
        except BotoCoreError as error:
            raise aws_error(error, data_uri) from None
        if found is None:
            raise bad_input(f"{data_uri}: no such object; land it first (refit land {model.name} FILE)")
    if args.dry_run:
        return dry_run(args, config, model, resources, data_uri, out)
    return _start_run(args, model, resources, payload, "manual", out)


def _start_run(
    args: argparse.Namespace,
    model: ModelConfig,
    resources: Resources,
    payload: dict[str, Any],
    kind: str,
    out: Any,
) -> int:
    """Start the model's state machine with `payload` (execution `<kind>-<UTC time>-<hex>`), then print how to
    follow it, or follow it (--follow)."""
    sfn = boto3.client("stepfunctions")
    name = f"{kind}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{os.urandom(3).hex()}"
    state_machine = resources.state_machine_arn(model.name)
    try:
        arn = sfn.start_execution(stateMachineArn=state_machine, name=name, input=json.dumps(payload))["executionArn"]
    except (ClientError, BotoCoreError) as error:
        raise aws_error(error, f"state machine {state_machine} (StartExecution)", _endpoint_of(sfn)) from None
    result: dict[str, Any] = {
        "model": model.name,
        "execution_arn": arn,
        "execution": name,
        "run_id": run_id_from_execution(name),
        "input": payload,
    }
    if not args.follow:
        if args.json:
            print(json.dumps(result), file=out)
        else:
            print(f"started run {result['run_id']} of {model.name} ({arn})", file=out)
            print(
                f"follow it: refit status {model.name}; its record when it ends: refit show {result['run_id']}",
                file=out,
            )
        return 0
    if not args.json:
        print(f"started run {result['run_id']} of {model.name}", file=out)
    return _follow_and_report(args, model, resources, arn, result, out)


def dry_run(
    args: argparse.Namespace,
    config: RefitConfig,
    model: ModelConfig,
    resources: Resources,
    data_uri: str | None,
    out: Any,
) -> int:
    """What a manual run would decide, decided here with the caller's credentials: the batch Prepare would pick,
    then CheckBatch's own check_batch (quality, drift against the serving champion's baseline, the decision).
    Nothing is started, locked, queued or trained; the drift report is written under the artifact bucket's
    reports/<model>/<dry-run id>/ as the run's would be."""
    s3, sagemaker, dynamodb = boto3.client("s3"), boto3.client("sagemaker"), boto3.client("dynamodb")
    table, bucket = resources.audit_table, resources.data_bucket
    run_id = f"dry-run-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{os.urandom(3).hex()}"
    notes: list[str] = []
    try:
        lock = dynamodb.get_item(TableName=table, Key={"pk": {"S": model.name}, "sk": {"S": "lock"}}).get("Item")
        holder = _lock_holder(lock)
        if holder is not None:
            notes.append(f"run {holder['owner']} holds the lock: a real run now would queue its batch and wait")
        batch, settled = _batch_to_check(s3, dynamodb, table, bucket, model, data_uri, bool(args.force))
    except (ClientError, BotoCoreError) as error:
        raise aws_error(error, f"the ledger and lock of {model.name} in {table}") from None
    result: dict[str, Any] = {
        "model": model.name,
        "dry_run": True,
        "data_uri": batch,
        "notes": notes,
        "champion": None,
        "quality": None,
        "drift": None,
        "decision": None,
        "report_uri": None,
        "report_html_uri": None,
    }
    if settled is not None:
        result["decision"] = {"action": "stop", "outcome": "already_checked", "reason": settled}
        try:
            champion = find_champion(sagemaker, resources.endpoint_name(model.name))
        except (ClientError, BotoCoreError) as error:
            raise aws_error(error, f"the champion of {model.name}") from None
        result["champion"] = {k: champion[k] for k in CHAMPION_FIELDS} if champion else None
    else:
        settings = Settings(
            model=model,
            data_bucket=bucket,
            artifact_bucket=resources.artifact_bucket,
            audit_table=table,
            topic_arn="",
            endpoint_name=resources.endpoint_name(model.name),
            model_package_group=config.prefix(model.name),
            sagemaker_role_arn="",
            image_uri="",
            canary_alarm="",
            instance_prices=config.instance_prices_usd_per_hour,
            code_version="",
            kms_key_arn="",
        )
        event = CheckEvent(run_id=run_id, data_uri=batch, force=bool(args.force), no_data=batch is None)
        try:
            # The check's CloudWatch metrics are EMF lines on stdout: a dry run publishes none.
            with contextlib.redirect_stdout(io.StringIO()):
                checked = check_batch(event, settings, s3, sagemaker)
        except (ClientError, BotoCoreError) as error:
            raise aws_error(error, f"the batch and the champion of {model.name}") from None
        fields = {"data_uri", "champion", "quality", "drift", "decision", "report_uri", "report_html_uri"}
        result.update(checked.model_dump(mode="json", include=fields))
    if args.json:
        print(json.dumps(result), file=out)
    else:
        print(render_dry_run(result), file=out)
    return 0


def _batch_to_check(
    s3: Any, dynamodb: Any, table: str, bucket: str, model: ModelConfig, data_uri: str | None, force: bool
) -> tuple[str | None, str | None]:
    """The batch a manual run would check (Prepare's order: the named one, else the oldest queued, else the newest
    under the prefix), and why it would stop before checking it (already checked, unless forced)."""
    if data_uri is None:
        queued = ledger.entries(dynamodb, table, model.name, status="queued")
        if queued:
            return ledger.as_batch(queued[0]).uri, None
        newest = newest_batch(s3, bucket, model.new_data_prefix)
        if newest is None:
            return None, None
        data_uri = str(newest.uri)
    found = batch_of(s3, data_uri, None)
    item = ledger.entry(dynamodb, table, model.name, found) if found is not None else None
    if item is not None and item.get("status") in ("checked", "checking") and not force:
        return data_uri, (
            f"{data_uri} (ETag {item.get('etag')}) was already checked by run {item.get('run_id')} "
            f"(outcome: {item.get('outcome') or item.get('status')}); pass --force to check it again"
        )
    return data_uri, None


def render_dry_run(result: dict[str, Any]) -> str:
    lines = [f"dry run for {result['model']}: nothing was started, locked or trained"]
    lines.append(f"  batch     {result['data_uri'] or 'none under the new-data prefix'}")
    champion = result.get("champion")
    lines.append(
        f"  champion  version {champion.get('version')} ({champion['model_name']})" if champion else "  champion  none"
    )
    quality = result.get("quality")
    if quality:
        verdict = "passed" if quality["passed"] else f"BLOCKED: {quality.get('reason')}"
        lines.append(f"  quality   {verdict} ({quality.get('n_rows')} rows, {quality['n_warnings']} warnings)")
        lines.extend(f"      {f['severity']}: {f['message']}" for f in quality.get("findings", []))
    drift = result.get("drift")
    if drift:
        drifted = ", ".join(drift["drifted_features"]) or "no column"
        lines.append(
            f"  drift     {'yes' if drift['drift_detected'] else 'no'}: {drifted} "
            f"({drift['n_drifted_features']} of {drift['n_features']} features"
            f"{'; target drifted' if drift.get('target_drifted') else ''}"
            f"{'; predictions drifted' if drift.get('prediction_drifted') else ''})"
        )
    if result.get("report_html_uri"):
        lines.append(f"  report    {result['report_html_uri']}")
    decision = result.get("decision") or {}
    lines.append(f"  decision  {decision.get('action')}: {decision.get('reason')}")
    lines.extend(f"  note      {note}" for note in result.get("notes", []))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- rollback, promote
def _served_before(records: list[dict[str, Any]], current: int | None) -> int | None:
    """From the audit records (newest first): the newest version a run left serving that is not `current`."""
    for record in records:
        if record.get("outcome") == "redeployed":
            version = (record.get("redeploy") or {}).get("version")
        elif record.get("outcome") in ("promoted", "deployed_first"):
            version = (record.get("registry") or {}).get("version")
        else:
            continue
        if version is not None and version != current:
            return int(version)
    return None


def redeploy(args: argparse.Namespace, config: RefitConfig, resources: Resources, out: Any) -> int:
    """`refit rollback MODEL [--to VERSION]` / `refit promote MODEL VERSION`: start the run that deploys a registered
    version through the verified endpoint path (README 'Rolling back and promoting by hand'). The version is checked
    first with the run's own checks, so a version not in the group, Rejected (without --force) or already serving is
    refused (exit 2) before anything starts."""
    model = _model(config, args.model, args.config)
    kind = args.command
    group = config.prefix(model.name)
    endpoint = resources.endpoint_name(model.name)
    state_machine = resources.state_machine_arn(model.name)
    sagemaker, dynamodb = boto3.client("sagemaker"), boto3.client("dynamodb")
    try:
        champion = find_champion(sagemaker, endpoint)
    except (ClientError, BotoCoreError) as error:
        raise aws_error(error, f"endpoint {endpoint}", _endpoint_of(sagemaker)) from None
    except RuntimeError as error:
        raise CommandError(str(error)) from None
    if champion is None:
        raise bad_input(f"{model.name} has no endpoint {endpoint} yet: the first model is deployed by a retrain run")
    version = args.version if kind == "promote" else args.to
    try:
        if version is None:
            serving = find_serving_package(sagemaker, group)
            version = serving["previous_version"] if serving and serving["version"] == champion["version"] else None
            if version is None:
                version = _served_before(run_records(dynamodb, resources.audit_table, model.name), champion["version"])
            if version is None:
                raise bad_input(
                    f"no version served {model.name} before version {champion['version']} (registry and audit "
                    "records); name one with --to VERSION"
                )
        arn = model_package_arn(state_machine, group, version)
        check_redeploy(describe_version(sagemaker, arn, version, group), version, args.force, champion)
        lock = dynamodb.get_item(
            TableName=resources.audit_table, Key={"pk": {"S": model.name}, "sk": {"S": "lock"}}
        ).get("Item")
    except RedeployRefused as error:
        raise bad_input(f"{kind} {model.name}: {error}") from None
    except (ClientError, BotoCoreError) as error:
        raise aws_error(error, f"model package group {group}", _endpoint_of(sagemaker)) from None
    holder = _lock_holder(lock)
    if holder is not None:
        raise CommandError(
            f"run {holder['owner']} holds the lock of {model.name} until {holder['expires_at']}; wait for it to end "
            f"(refit status {model.name}) and run this again"
        )
    who = _user()
    payload: dict[str, Any] = {
        "deploy_version": version,
        "kind": kind,
        "reason": args.reason or f"{kind} by {who}",
        "requested_by": who,
        "force": bool(args.force),
    }
    try:
        parse_run_input(payload, model.new_data_prefix, resources.data_bucket)
    except (RunInputError, ValueError) as error:
        raise bad_input(str(error)) from None
    if not args.json:
        was = f"version {champion['version']}" if champion.get("version") else champion["endpoint_config"]
        print(f"{kind} {model.name}: version {version} replaces {was}", file=out)
    return _start_run(args, model, resources, payload, kind, out)


# ---------------------------------------------------------------------------------------------- follow
def follow(
    sfn: Any,
    execution_arn: str,
    on_state: Callable[[str, float], None],
    poll: float = POLL_SECONDS,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Poll the execution until it ends, calling `on_state(name, seconds since the start)` for each state as it is
    entered (GetExecutionHistory). Returns DescribeExecution's last reply."""
    seen = 0
    start: datetime | None = None
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        description = sfn.describe_execution(executionArn=execution_arn)
        events: list[dict[str, Any]] = []
        for page in sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
            events.extend(page["events"])
        for event in sorted(events, key=lambda e: e["id"])[seen:]:
            if event["type"] == "ExecutionStarted":
                start = event["timestamp"]
            if event["type"].endswith("StateEntered"):
                elapsed = (event["timestamp"] - start).total_seconds() if start else 0.0
                on_state(event["stateEnteredEventDetails"]["name"], elapsed)
        seen = max(seen, len(events))
        if description["status"] != "RUNNING":
            return description
        if deadline is not None and time.monotonic() > deadline:
            raise CommandError(
                f"{execution_arn} is still running after {timeout:g} s; it goes on: refit status / refit show"
            )
        time.sleep(poll)


class StatePrinter:
    """Prints each state as it is entered (seconds since the run started, name). A state entered again — the
    training and endpoint polling loops — is not printed again: the loop becomes one line when the next new state
    is entered, or when `every` seconds of the run passed since the last line (a long training job)."""

    def __init__(self, out: Any, every: float = 300.0) -> None:
        self.out, self.every = out, every
        self.printed: set[str] = set()
        self.repeated: dict[str, int] = {}
        self.last = self.now = 0.0

    def __call__(self, name: str, seconds: float) -> None:
        if name in self.printed:
            self.now = seconds
            self.repeated[name] = self.repeated.get(name, 0) + 1
            if seconds - self.last >= self.every:
                self.flush()
            return
        self.flush()
        self.now = seconds
        self.printed.add(name)
        self._line(seconds, name)

    def flush(self) -> None:
        """The loop entered since the last line, as one line at the time it was last entered."""
        if self.repeated:
            loop = ", ".join(self.repeated)
            self._line(self.now, f"({loop}: {max(self.repeated.values())} more times)")
            self.repeated = {}

    def _line(self, seconds: float, text: str) -> None:
        print(f"  {seconds:8.1f} s  {text}", file=self.out, flush=True)
        self.last = seconds


def _follow_and_report(
    args: argparse.Namespace, model: ModelConfig, resources: Resources, arn: str, result: dict[str, Any], out: Any
) -> int:
    sfn, dynamodb = boto3.client("stepfunctions"), boto3.client("dynamodb")
    states: list[dict[str, Any]] = []
    printer = StatePrinter(out)

    def entered(name: str, seconds: float) -> None:
        states.append({"name": name, "seconds": round(seconds, 3)})
        if not args.json:
            printer(name, seconds)

    try:
        description = follow(
            sfn, arn, entered, timeout=getattr(args, "timeout", None) if args.command != "land" else None
        )
        printer.flush()
        record = _record_of(dynamodb, resources.audit_table, model.name, arn.rsplit(":", 1)[-1], description)
    except (ClientError, BotoCoreError) as error:
        raise aws_error(error, f"execution {arn}", _endpoint_of(sfn)) from None
    result.update(status=description["status"], states=states, record=record)
    if args.json:
        print(json.dumps(result), file=out)
    else:
        print(f"run ended {description['status']}", file=out)
        if record is None:
            print(
                f"  no audit record yet (a run that timed out or was stopped gets it from the run-end cleanup): "
                f"refit show {arn.rsplit(':', 1)[-1]}",
                file=out,
            )
        else:
            print(format_summary(record)[1], file=out)
    return 0 if description["status"] == "SUCCEEDED" else 1


def _record_of(
    dynamodb: Any, table: str, model: str, execution: str, description: dict[str, Any]
) -> dict[str, Any] | None:
    """The run's audit record: written by Finalize before the execution ends, or by the run-end Cleanup shortly
    after a run that ended without Finalize."""
    deadline = time.monotonic() + (0 if description["status"] == "SUCCEEDED" else RECORD_WAIT_SECONDS)
    while True:
        try:
            return find_record(dynamodb, table, [model], execution)
        except ReportError as error:
            if error.exit_code != 2:
                raise CommandError(str(error)) from None
            if time.monotonic() > deadline:
                return None
        time.sleep(POLL_SECONDS)


# ---------------------------------------------------------------------------------------------- runs, show
def runs(args: argparse.Namespace, config: RefitConfig, resources: Resources, out: Any) -> int:
    model = _model(config, args.model, args.config)
    dynamodb = boto3.client("dynamodb")
    table = resources.audit_table
    try:
        records = run_records(dynamodb, table, model.name, limit=args.limit)
    except (ClientError, BotoCoreError) as error:
        raise aws_error(error, f"audit table {table}", _endpoint_of(dynamodb)) from None
    if args.json:
        print(json.dumps(records), file=out)
        return 0
    if not records:
        print(f"no runs of {model.name} recorded in {table} (a run's record is written when it ends)", file=out)
        return 0
    print(render_runs(records), file=out)
    return 0


RUN_COLUMNS = ("started_at", "run_id", "trigger", "status", "outcome", "message")


def render_runs(records: list[dict[str, Any]], message_chars: int = 70) -> str:
    """One line per run, in columns as wide as their values (the message cut to `message_chars`)."""
    rows = [[c.upper().removesuffix("_AT").replace("RUN_ID", "RUN") for c in RUN_COLUMNS]]
    for record in records:
        row = [str(record.get(column) or "") for column in RUN_COLUMNS]
        if len(row[-1]) > message_chars:
            row[-1] = row[-1][: message_chars - 1] + "…"
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(RUN_COLUMNS) - 1)]
    return "\n".join("  ".join([*(v.ljust(w) for v, w in zip(row, widths, strict=False)), row[-1]]) for row in rows)


def show(args: argparse.Namespace, config: RefitConfig, resources: Resources, out: Any) -> int:
    models = [_model(config, args.model, args.config).name] if args.model else [m.name for m in config.models]
    dynamodb, sfn = boto3.client("dynamodb"), boto3.client("stepfunctions")
    table = resources.audit_table
    try:
        # The run report's lookup: by run id or execution name across the models, the running case named.
        record = find_record(dynamodb, table, models, args.run_id)
    except ReportError as error:
        running = (
            running_execution(sfn, resources.state_machine_arn, models, args.run_id) if error.exit_code == 2 else None
        )
        if running is not None:
            message = f"run {args.run_id!r} is still running ({running}); its record is written when it ends"
            raise bad_input(message) from None
        raise CommandError(str(error), error.exit_code) from None
    if args.json:
        print(json.dumps(record), file=out)
        return 0
    print(render_record(record), file=out)
    return 0


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_record(record: dict[str, Any]) -> str:
    """The audit record as a person reads it: refit_core.audit's summary, with the times and the data."""
    lines = [
        f"Started: {record.get('started_at')}   Ended: {record.get('ended_at')}   Execution: {record.get('execution')}",
        f"Data: {record.get('data_uri') or 'none'}"
        + (f" (ETag {record['data_etag']})" if record.get("data_etag") else ""),
        format_summary(record)[1],
    ]
    quality = record.get("quality") or {}
    lines.extend(f"Quality blocking: {message}" for message in quality.get("blocking") or [])
    lines.extend(f"Quality warning: {message}" for message in quality.get("warnings") or [])
    gate = record.get("gate") or {}
    if gate.get("champion") is not None:
        lines.append(
            f"Gate evidence: {gate.get('primary_metric')} challenger {_number(gate.get('challenger'))} vs champion "
            f"{_number(gate.get('champion'))} on the same rows, {gate.get('test')} p = {_number(gate.get('p_value'))}"
        )
    if record.get("error"):
        lines.append(f"Error: {record['error']}")
    for problem in record.get("problems") or []:
        lines.append(f"Problem: {problem}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- status
def _lock_holder(item: dict[str, Any] | None, now: float | None = None) -> dict[str, Any] | None:
    """The run holding the model's lock (Prepare's item pk = model, sk = lock), or None when free or expired."""
    if not item:
        return None
    expires = int(Decimal(item.get("expires_at", {}).get("N", "0")))
    if expires <= (now if now is not None else time.time()):
        return None
    return {
        "owner": item.get("owner", {}).get("S"),
        "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(timespec="seconds"),
    }


def model_status(config: RefitConfig, model: ModelConfig, resources: Resources) -> dict[str, Any]:
    sagemaker, sfn, dynamodb = boto3.client("sagemaker"), boto3.client("stepfunctions"), boto3.client("dynamodb")
    endpoint_name = resources.endpoint_name(model.name)
    table = resources.audit_table
    month = datetime.now(UTC).strftime("%Y-%m")
    try:
        endpoint = endpoint_view(sagemaker, endpoint_name)
        champion = find_champion(sagemaker, endpoint_name) if endpoint is not None else None
    except (ClientError, BotoCoreError) as error:
        raise aws_error(error, f"endpoint {endpoint_name}", _endpoint_of(sagemaker)) from None
    except RuntimeError as error:  # an endpoint without a champion variant: not one refit made
        raise CommandError(str(error)) from None
    try:
        serving = find_serving_package(sagemaker, config.prefix(model.name))
    except (ClientError, BotoCoreError) as error:
        raise aws_error(error, f"model package group {config.prefix(model.name)}", _endpoint_of(sagemaker)) from None
    registry = {k: v for k, v in serving.items() if k != "metadata"} if serving else None
    if registry is not None:
        registry["agrees_with_endpoint"] = (
            champion is not None and champion["model_package_arn"] == (serving["model_package_arn"])
        )
    state_machine = resources.state_machine_arn(model.name)
    try:
        running = []
        for page in sfn.get_paginator("list_executions").paginate(
            stateMachineArn=state_machine, statusFilter="RUNNING"
        ):
            for execution in page["executions"]:
                last = sfn.get_execution_history(
                    executionArn=execution["executionArn"], reverseOrder=True, maxResults=50
                )["events"]
                state = next(
                    (e["stateEnteredEventDetails"]["name"] for e in last if e["type"].endswith("StateEntered")), None
                )
                running.append(
                    {
                        "execution": execution["name"],
                        "execution_arn": execution["executionArn"],
                        "started_at": plain(execution["startDate"]),
                        "state": state,
                    }
                )
    except (ClientError, BotoCoreError) as error:
        raise aws_error(error, f"executions of {state_machine}", _endpoint_of(sfn)) from None
    try:
        lock = dynamodb.get_item(TableName=table, Key={"pk": {"S": model.name}, "sk": {"S": "lock"}}).get("Item")
        queued = ledger.entries(dynamodb, table, model.name, status="queued")
        spent = month_spend(dynamodb, table, model.name, month)
        last = run_records(dynamodb, table, model.name, limit=1)
    except (ClientError, BotoCoreError) as error:
        raise aws_error(error, f"audit table {table}", _endpoint_of(dynamodb)) from None
    budget = model.monthly_training_budget_usd
    return {
        "model": model.name,
        "state_machine_arn": state_machine,
        "endpoint": endpoint,
        "champion": {k: champion[k] for k in CHAMPION_FIELDS} if champion else None,
        "registry": registry,
        "running": running,
        "lock": _lock_holder(lock),
        "queued": [ledger.as_batch(item).uri for item in queued],
        "spend": {
            "month": month,
            "spent_usd": round(spent, 4),
            "budget_usd": budget,
            "left_usd": round(budget - spent, 4) if budget is not None else None,
        },
        "last_run": {k: last[0].get(k) for k in ("run_id", "status", "outcome", "started_at", "ended_at")}
        if last
        else None,
    }


def _usd(value: float) -> str:
    """Dollars with cents, or with four decimals for a sum under a cent (a local run's jobs cost fractions)."""
    return f"${value:,.4f}" if 0 < abs(value) < 0.01 else f"${value:,.2f}"


def render_status(status: dict[str, Any], prefix: str) -> str:
    lines = [f"model {status['model']} ({prefix})"]
    endpoint = status["endpoint"]
    if endpoint is None:
        lines.append(f"  endpoint   {prefix}: none yet (the first run that trains creates it)")
    else:
        lines.append(f"  endpoint   {endpoint['name']}  {endpoint['status']}  config {endpoint['config']}")
        lines.extend(f"    variant  {v['name']:<11} weight {v['weight']:g}" for v in endpoint["variants"])
        if endpoint.get("failure_reason"):
            lines.append(f"    failure  {endpoint['failure_reason']}")
    champion = status["champion"]
    lines.append(
        f"  champion   version {champion['version']} ({champion['model_name']})" if champion else "  champion   none"
    )
    registry = status.get("registry")
    if registry is None:
        lines.append("  registry   no package marked serving (refit:serving)")
    else:
        lines.append(
            f"  registry   version {registry['version']} marked serving since {registry['since']} "
            f"(run {registry['run_id']})"
            + ("" if registry["agrees_with_endpoint"] else "; DISAGREES with the endpoint")
        )
    if status["running"]:
        lines.extend(
            f"  running    {r['execution']} since {r['started_at']} (in {r['state']})" for r in status["running"]
        )
    else:
        lines.append("  running    none")
    lock = status["lock"]
    lines.append(f"  lock       held by {lock['owner']} until {lock['expires_at']}" if lock else "  lock       free")
    lines.append(f"  queued     {len(status['queued'])} batch(es)" + "".join(f"\n    {u}" for u in status["queued"]))
    spend = status["spend"]
    if spend["budget_usd"] is None:
        lines.append(f"  spend      {_usd(spend['spent_usd'])} on training in {spend['month']} (no monthly budget set)")
    else:
        lines.append(
            f"  spend      {_usd(spend['spent_usd'])} of {_usd(spend['budget_usd'])} on training in {spend['month']} "
            f"({_usd(spend['left_usd'])} left)"
        )
    last = status["last_run"]
    if last:
        lines.append(f"  last run   {last['run_id']} {last['status']} / {last['outcome']} (ended {last['ended_at']})")
    return "\n".join(lines)


def status(args: argparse.Namespace, config: RefitConfig, resources: Resources, out: Any) -> int:
    model = _model(config, args.model, args.config)
    result = model_status(config, model, resources)
    print(json.dumps(result) if args.json else render_status(result, config.prefix(model.name)), file=out)
    return 0


# ---------------------------------------------------------------------------------------------- the CLI's part
def add_resource_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where the project's resources are (default: the stack's outputs)")
    where.add_argument("--stack", help="the deployed stack (default: the configuration's project name)")
    where.add_argument(
        "--stack-outputs",
        metavar="FILE",
        help=f"a JSON file of the stack's outputs instead of CloudFormation (default: ${STACK_OUTPUTS_ENV})",
    )
    where.add_argument("--data-bucket", help="the data bucket (default: the DataBucket output)")
    where.add_argument("--artifact-bucket", help="the artifact bucket (default: the ArtifactBucket output)")
    where.add_argument("--audit-table", help="the audit table (default: the AuditTable output)")


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """`land`, `trigger`, `runs`, `show`, `status` on the CLI's subparsers."""
    parents = [common]

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text, description=help_text, parents=parents)
        add_resource_options(parser)
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")
        return parser

    land_parser = command("land", "put a batch under the model's new-data prefix; its S3 event starts a run")
    land_parser.add_argument("model")
    land_parser.add_argument("file", help="a .csv, .csv.gz or .parquet file; checked to be a table before upload")
    land_parser.add_argument("--name", help="the object's name under incoming/MODEL/ (default: the file's name)")
    land_parser.add_argument("--follow", action="store_true", help="wait for the run the upload starts and follow it")
    land_parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the run to start (default 120)"
    )
    trigger_parser = command(
        "trigger",
        "start a manual run (README 'Starting a run by hand'); --dry-run decides without starting anything",
    )
    trigger_parser.add_argument("model")
    trigger_parser.add_argument("--force", action="store_true", help="train even when no drift is found")
    trigger_parser.add_argument(
        "--data", help="the batch: an s3:// URI under incoming/MODEL/, or a file name there (default: as the run picks)"
    )
    trigger_parser.add_argument("--reason", help="why; recorded in the audit record (default: 'manual run by USER')")
    trigger_parser.add_argument(
        "--dry-run",
        action="store_true",
        help="decide here, not in a run: the state machine's input has no dry-run field, so the CLI picks the batch "
        "as Prepare would and runs CheckBatch's check (quality, drift against the serving champion) with your "
        "credentials, prints the decision and starts, locks and trains nothing (the drift report is written to "
        "the artifact bucket)",
    )
    trigger_parser.add_argument(
        "--follow", action="store_true", help="print each state as it is entered, then the run's summary"
    )
    trigger_parser.add_argument(
        "--timeout", type=float, default=None, help="with --follow: stop following after this many seconds"
    )
    runs_parser = command("runs", "the model's runs, newest first, from the audit table")
    runs_parser.add_argument("model")
    runs_parser.add_argument("--limit", type=_positive, default=20, help="at most this many (default 20)")
    show_parser = command("show", "one run's audit record, readable")
    show_parser.add_argument("run_id", help="the run id or the execution name")
    show_parser.add_argument("--model", help="look in this model's runs only (default: every configured model)")
    status_parser = command(
        "status", "endpoint, variants and weights, champion, running executions, lock, queue, month's spend"
    )
    status_parser.add_argument("model")
    for name, help_text in (
        ("rollback", "serve an earlier registered version again (default: the one that served before the champion)"),
        ("promote", "serve a registered version, through the same verified path as a rollback"),
    ):
        parser = command(name, f"{help_text}; recorded as a run with an audit record")
        parser.add_argument("model")
        if name == "rollback":
            parser.add_argument("--to", type=_positive, metavar="VERSION", help="the model package version to serve")
        else:
            parser.add_argument("version", type=_positive, help="the model package version to serve")
        parser.add_argument("--reason", help="why; recorded in the audit record and the registry")
        parser.add_argument(
            "--force", action="store_true", help="deploy a version the registry marks Rejected (recorded)"
        )
        parser.add_argument(
            "--follow", action="store_true", help="print each state as it is entered, then the run's summary"
        )
        parser.add_argument(
            "--timeout", type=float, default=None, help="with --follow: stop following after this many seconds"
        )
    for name in ("approve", "reject"):
        parser = command(
            name,
            f"{name} a version waiting for manual approval: the model's Approve function decides as the caller AWS "
            "verified (sign in as the approver role)",
        )
        parser.add_argument("model")
        parser.add_argument("version", type=_positive)
        parser.add_argument("--comment", default="", help="why; recorded in the registry and the run's decision")
        parser.add_argument("--run", metavar="RUN_ID", help="refuse unless the version waits in this run")
        parser.add_argument("--url", help="the Approve function's URL (default: the stack's ApproveUrls output)")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


HANDLERS: dict[str, Callable[[argparse.Namespace, RefitConfig, Resources, Any], int]] = {
    "land": land,
    "trigger": trigger,
    "runs": runs,
    "show": show,
    "status": status,
    "rollback": redeploy,
    "promote": redeploy,
    "approve": decide,
    "reject": decide,
}


def run(args: argparse.Namespace, out: Any, err: Any) -> int:
    """Run one of COMMANDS; errors are one line on `err`, and the exit code says what kind (module docstring)."""
    try:
        try:
            config = load_config(args.config)
        except ConfigError as error:
            raise bad_input(str(error)) from None
        return HANDLERS[args.command](args, config, Resources.from_args(args, config), out)
    except CommandError as error:
        print(f"refit: {error}", file=err)
        return error.exit_code
    except (ClientError, BotoCoreError) as error:
        print(f"refit: {aws_error(error, 'AWS')}", file=err)
        return 1
