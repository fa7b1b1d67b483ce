"""Where moto falls short of what refit needs, and how the local runtime bridges it.

Every bridge is installed by `Bridges.install()` and removed by `uninstall()`, and each has its own test
(tests/integration/test_local_bridges.py):

- Lambda: moto runs function code only in Docker; `LambdaFunction.invoke` is replaced to import the real
  handler string from the function's staged image asset and call it in-process with the function's
  environment (a per-thread overlay of os.environ, so other threads never see it change), returning errors in
  the Lambda runtime's shape so Step Functions Retry/Catch behave as on AWS. An asynchronous invocation
  (InvocationType Event) is answered at once and runs in its own thread afterwards; moto ran it inside the caller's
  invocation, whose role and environment the nested one then replaced.
- Step Functions: Wait states and Retry intervals sleep in real time; here they return at once (a Wait calls
  an optional hook by state name, so a test or the demo can act "during" a bake), except while a training job
  runs: then a Wait lasts until a job ends or JOB_WAIT_SECONDS pass, so a training poll loop does not spin (a
  DescribeTrainingJob every few milliseconds: thousands of history events a run, and the CPU the job needs).
- SageMaker training: moto completes jobs instantly without running anything; here `create_training_job`
  runs the real `train` entrypoint from the training image asset in a subprocess over a temporary /opt/ml
  tree whose channels come from moto S3, uploads model.tar.gz / output.tar.gz, and reports status, billable
  seconds and the metrics the job's MetricDefinitions pick out of the log.
- SageMaker Model Registry: moto's UpdateModelPackage drops the package's CustomerMetadataProperties, and sets its
  ModelApprovalStatus and ApprovalDescription to null when the call names none; they are kept (the metadata merged,
  CustomerMetadataPropertiesToRemove applied) as on AWS.
- SageMaker endpoints: moto lacks UpdateEndpoint; it is added (refused on a Failed endpoint, as SageMaker allows only
  DeleteEndpoint there; `fail_endpoint_update` makes a chosen update end Failed or UpdateRollbackFailed). As on AWS, the new config's models must start: each
  variant's artifact is downloaded and its `serve` process must answer /ping. When one does not (an artifact that
  does not load, or one `serve` refuses: a model file whose SHA-256 is not the registry's), the update fails the way
  SageMaker's does: the endpoint stays InService on its old config, with the reason in FailureReason (here with the
  error `serve` printed, which on AWS is in the endpoint's log group). `sagemaker-runtime InvokeEndpoint` returns
  static bytes in moto; here it routes by variant weight (or TargetVariant) to real `serve` processes on
  127.0.0.1 and records per-variant CloudWatch metrics (Invocations, 4XX/5XX, ModelLatency).
- SageMaker shadow variants: moto drops CreateEndpointConfig's ShadowProductionVariants. Here they are kept (and
  refused as SageMaker refuses them: with a shadow, exactly one production and one shadow variant, distinct names),
  returned by DescribeEndpointConfig and, for the endpoint's current config, by DescribeEndpoint; an update starts the
  shadow's `serve` too. The router copies each request the production variant serves to the shadow's real `serve`
  with probability shadow weight / production weight (capped at 1), after the production reply is made: the caller
  only ever gets the production response; the shadow's Invocations/4XX/5XX/ModelLatency go to CloudWatch under its
  own VariantName and its successful replies are captured under its own variant folder, as SageMaker does.
- SageMaker deployment guardrails: moto ignores UpdateEndpoint's DeploymentConfig. With a BlueGreenUpdatePolicy the
  update runs as SageMaker's does: the endpoint is Updating, the new fleet starts (its `serve` must answer /ping),
  traffic moves to it in the TrafficRoutingConfiguration's steps (ALL_AT_ONCE, CANARY, LINEAR; sizes in percent or
  instances), each step baking WaitIntervalInSeconds while the AutoRollbackConfiguration alarms are read as the
  model's execution role; an alarm in ALARM during a bake, or MaximumExecutionTimeoutInSeconds passing, rolls the
  update back (InService on the old config, no FailureReason, as SageMaker often leaves it); after the last bake and
  TerminationWaitInSeconds the endpoint is InService on the new config. `fail_guarded_rollbacks` (a runtime setting
  for tests) makes a rollback fail: UpdateRollbackFailed, traffic left split between the fleets. RollingUpdatePolicy
  is refused (not bridged). While a guarded update runs, a Wait lasts until it ends or JOB_WAIT_SECONDS pass.
- EventBridge: moto cannot deliver to Step Functions or Lambda targets and lets schedule rules match every event;
  here pattern rules start executions of their state-machine targets, invoke their Lambda targets asynchronously,
  and schedule rules only fire on request. moto's S3 "Object Created" event names the object's ETag `eTag`; AWS's
  field is `etag` (as Powertools' S3EventNotificationEventBridgeModel reads it), so it is renamed before matching.
  moto's pattern matching itself honours `prefix`, `suffix` and `wildcard` filters as EventBridge does (tested).
- Step Functions run ends: moto puts no "Step Functions Execution Status Change" event and publishes no execution
  metrics; here, when an execution ends, the event is put and the AWS/States metrics Step Functions publishes then
  (ExecutionsSucceeded / ExecutionsFailed / ExecutionsTimedOut / ExecutionsAborted, 1 Count, and ExecutionTime in
  Milliseconds, dimension StateMachineArn) are put, so the run-failed alarm is evaluated from them. Its clock is the wall clock plus what `advance_clock` adds, and an execution past its
  TimeoutSeconds ends TIMED_OUT at its next Wait.
- SageMaker Data Capture (data_capture.py): moto keeps an endpoint config's DataCaptureConfig and captures nothing;
  here the router samples InitialSamplingPercentage of the successful requests (the seeded random) and writes
  SageMaker's JSON Lines records under `<destination>/<endpoint>/<variant>/yyyy/mm/dd/hh/`, 100 records a file or
  after 1 s, as the variant's model execution role, SSE-KMS with the config's key. DescribeEndpoint answers the
  current config's capture as AWS's DataCaptureConfigSummary (moto: the creation config's fields, two required ones
  missing, which the SageMaker SDK refuses).
- CloudWatch percentiles (metric_statistics.py): moto ignores GetMetricStatistics' ExtendedStatistics and accepts
  it together with Statistics; here each datapoint carries the percentiles of its period's raw values (so a canary
  can compare p99 ModelLatency per variant) and a call naming both is refused as CloudWatch refuses it. moto's
  GetMetricData answers a percentile or a percentile rank `PR(n:m)` with a null value; here both are computed from
  the raw values too (the p99 rule's share of requests over its margin, in ModelLatency's microseconds).
- CloudWatch alarms (alarms.py): moto never evaluates one; here every PutMetricData re-evaluates the metric alarms
  (single-metric and metric-math) on the metrics it touched, and a state change puts the "CloudWatch Alarm State
  Change" event, so rules on it fire.
- Application Auto Scaling (autoscaling.py): moto registers any SageMaker resource id without bounds, keeps a
  deregistered target's policies and knows no UpdateEndpoint; here a variant must exist to be registered, a new
  target needs its bounds, deregistering deletes the policies, DeleteEndpoint deregisters the endpoint's targets, and
  UpdateEndpoint fails while a variant it removes or moves to another instance type is registered.
- Lambda function URLs (function_urls.py, installed by the runtime before the stand-up creates them): served on
  127.0.0.1 with AWS's SigV4 and IAM checks for AuthType AWS_IAM, invoking the function with the verified caller in
  the payload format 2.0 event.
- Roles: each Lambda invocation signs as its function's execution role (STS credentials, a per-thread boto3 default
  session, and its own copies of refit's modules); training and serving read and write S3 as the job's or model's
  role. The local IAM (iam.py) authorizes those calls.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError
from moto.awslambda.models import LambdaFunction
from moto.cloudwatch.models import (
    Alarm,
    CloudWatchBackend,
    MetricAggregatedDatum,
    MetricDatum,
    Statistics,
    cloudwatch_backends,
)
from moto.cloudwatch.responses import CloudWatchResponse
from moto.core.utils import utcnow
from moto.events.models import Rule, events_backends
from moto.sagemaker.exceptions import ValidationError as SageMakerValidationError
from moto.sagemaker.models import FakeEndpoint, sagemaker_backends
from moto.sagemaker.responses import SageMakerResponse
from moto.sagemakerruntime.responses import SageMakerRuntimeResponse
from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
from moto.stepfunctions.parser.asl.component.state.wait.wait_function.wait_function import WaitFunction
from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication
from moto.stepfunctions.responses import get_backend as stepfunctions_backend

from scripts.local_aws import autoscaling
from scripts.local_aws.alarms import (
    STATES,
    AlarmSpec,
    Datapoint,
    MathAlarmSpec,
    alarm_event_time,
    evaluate_alarm,
    utc,
)
from scripts.local_aws.data_capture import capture_enabled, capture_key, capture_record, capture_summary
from scripts.local_aws.iam import LocalIam
from scripts.local_aws.metric_statistics import extended_statistic, get_metric_data, get_metric_statistics
from scripts.local_aws.standup import LocalFunction

ISOLATED_PACKAGES = ("refit_core", "refit_handlers")
CAPTURE_FILE_RECORDS = 100  # a capture file is written when it holds this many records ...
CAPTURE_FILE_SECONDS = 1.0  # ... or when its oldest record is this old (SageMaker delivers within minutes)
INFERENCE_ID_HEADER = "X-Amzn-SageMaker-Inference-Id"  # InvokeEndpoint's InferenceId (botocore's service model)
# moto's own SetAlarmState (validation and the stored state): the bridge patches it to add the event and the
# re-evaluation that follow a state change on AWS, and calls this one underneath.
MOTO_SET_ALARM_STATE = CloudWatchBackend.set_alarm_state
# Step Functions' per-status execution metric (AWS/States), published when an execution ends with that status.
EXECUTION_METRICS = {
    "SUCCEEDED": "ExecutionsSucceeded",
    "FAILED": "ExecutionsFailed",
    "TIMED_OUT": "ExecutionsTimedOut",
    "ABORTED": "ExecutionsAborted",
}
JOB_WAIT_SECONDS = 1.0  # the longest a Wait lasts locally while a training job runs (a job's end cuts it short)


class _ThreadRoutedStream(io.TextIOBase):
    """sys.stdout/stderr stand-in: writes from a Lambda invocation go to that function's log file
    (as CloudWatch Logs would hold them); everything else goes to the real stream."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.local = threading.local()

    def write(self, text: str) -> int:
        target = getattr(self.local, "target", None)
        return (target or self.real).write(text)

    def flush(self) -> None:
        target = getattr(self.local, "target", None)
        (target or self.real).flush()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.real, "encoding", "utf-8")

    def isatty(self) -> bool:
        return False


class _ThreadLocalEnviron(MutableMapping[str, str]):
    """os.environ with a per-thread overlay. An in-process Lambda invocation sees its function's environment while
    every other thread — a Step Functions Map branch creating a boto3 client, a test — keeps seeing, and iterating,
    the process environment unchanged. (Swapping the real mapping in place let a concurrent `dict(os.environ)`
    meet a key that had just been removed: KeyError 'REFIT_MODEL_CONFIG' in a parallel-candidates run.)"""

    _DELETED = object()

    def __init__(self, base: Any) -> None:
        self.base = base
        self.local = threading.local()

    def _overlay(self) -> dict[str, Any] | None:
        return getattr(self.local, "overlay", None)

    @contextlib.contextmanager
    def overlaid(self, values: dict[str, str]) -> Any:
        self.local.overlay = dict(values)
        try:
            yield
        finally:
            self.local.overlay = None

    def __getitem__(self, key: str) -> str:
        overlay = self._overlay()
        if overlay is not None and key in overlay:
            if overlay[key] is self._DELETED:
                raise KeyError(key)
            return overlay[key]
        return self.base[key]

    def __setitem__(self, key: str, value: str) -> None:
        overlay = self._overlay()
        if overlay is None:
            self.base[key] = value
        else:
            overlay[key] = value

    def __delitem__(self, key: str) -> None:
        overlay = self._overlay()
        if overlay is None:
            del self.base[key]
        else:
            self[key]  # noqa: B018 - KeyError when absent, as os.environ does
            overlay[key] = self._DELETED

    def __iter__(self) -> Any:
        overlay = self._overlay() or {}
        deleted = {k for k, v in overlay.items() if v is self._DELETED}
        yield from (k for k in list(self.base) if k not in overlay and k not in deleted)
        yield from (k for k, v in overlay.items() if v is not self._DELETED)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def copy(self) -> dict[str, str]:
        return dict(self)


class _NoSleepTime:
    """The `time` module as the Step Functions retrier sees it: Retry intervals do not sleep locally."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        return None


@dataclass
class LambdaContext:
    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


@dataclass
class TrainingOutcome:
    """What the next simulated training job does instead of running to completion."""

    kind: str  # "capacity" (MaxWaitTimeExceeded) | "internal_error" | "interrupt" (SIGTERM after some folds, restart)
    message: str = ""
    after_folds: int = 0  # with "interrupt" or "capacity": SIGTERM once this many folds are checkpointed


@dataclass
class CaptureFile:
    """Records waiting to be written as one capture file (one endpoint, variant, destination, key and writer)."""

    bucket_destination: str
    kms_key: str | None
    role_arn: str
    endpoint: str
    variant: str
    first: datetime
    opened: float  # time.monotonic() of the first record
    lines: list[str] = field(default_factory=list)


def _alarm_spec(alarm: Alarm) -> AlarmSpec | MathAlarmSpec | None:
    """A moto alarm as an AlarmSpec (one metric) or a MathAlarmSpec (metric math); None for what is not evaluated
    locally (composite alarms, percentile statistics, metric-math functions alarms.py does not evaluate)."""
    if alarm.rule:
        return None
    try:
        if alarm.metric_data_queries:
            return _math_alarm_spec(alarm)
        if alarm.extended_statistic or not alarm.statistic:
            return None
        return _metric_alarm_spec(alarm)
    except (TypeError, ValueError, KeyError):  # an alarm CloudWatch would have refused: never breaks PutMetricData
        return None


def _math_alarm_spec(alarm: Alarm) -> MathAlarmSpec:
    """moto's MetricDataQuery objects as a DescribeAlarms `Metrics` list, read as AWS's answer is."""
    metrics = []
    for query in alarm.metric_data_queries:
        entry: dict[str, Any] = {"Id": query.id, "ReturnData": str(query.return_data).lower() != "false"}
        if query.expression:
            entry["Expression"] = query.expression
        else:
            stat = query.metric_stat
            entry["MetricStat"] = {
                "Metric": {
                    "Namespace": stat.metric.namespace,
                    "MetricName": stat.metric.metric_name,
                    "Dimensions": [{"Name": d.name, "Value": d.value} for d in stat.metric.dimensions],
                },
                "Period": stat.period,
                "Stat": stat.stat,
                **({"Unit": stat.unit} if stat.unit else {}),
            }
        metrics.append(entry)
    return MathAlarmSpec.from_description(
        {
            "AlarmName": alarm.name,
            "Metrics": metrics,
            "EvaluationPeriods": alarm.evaluation_periods,
            "Threshold": alarm.threshold,
            "ComparisonOperator": alarm.comparison_operator,
            "DatapointsToAlarm": int(alarm.datapoints_to_alarm) if alarm.datapoints_to_alarm else None,
            "TreatMissingData": alarm.treat_missing_data,
        }
    )


def _metric_alarm_spec(alarm: Alarm) -> AlarmSpec:
    return AlarmSpec(
        name=alarm.name,
        namespace=alarm.namespace,
        metric_name=alarm.metric_name,
        dimensions={d.name: d.value for d in alarm.dimensions},
        statistic=alarm.statistic,
        period=int(alarm.period),
        evaluation_periods=int(alarm.evaluation_periods),
        threshold=float(alarm.threshold),
        comparison=alarm.comparison_operator,
        datapoints_to_alarm=int(alarm.datapoints_to_alarm) if alarm.datapoints_to_alarm else None,
        treat_missing_data=alarm.treat_missing_data or "missing",
        unit=alarm.unit,
    )


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _datapoint(datum: MetricDatum | MetricAggregatedDatum) -> Datapoint:
    when = _timestamp(datum.timestamp)
    if isinstance(datum, MetricAggregatedDatum):
        return Datapoint(when, datum.sum, datum.min, datum.max, datum.sample_count)
    return Datapoint.of(when, datum.value)


def _alarm_configuration(alarm: Alarm) -> dict[str, Any]:
    """The `configuration` of a CloudWatch Alarm State Change event: description and the alarm's metrics."""
    if alarm.metric_data_queries:
        metrics = [
            {
                "id": query.id,
                **({"expression": query.expression} if query.expression else {}),
                **({"label": query.label} if query.label else {}),
                "returnData": str(query.return_data).lower() != "false",
            }
            for query in alarm.metric_data_queries
        ]
    else:
        metrics = [
            {
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, alarm.alarm_arn)),
                "metricStat": {
                    "metric": {
                        "namespace": alarm.namespace,
                        "name": alarm.metric_name,
                        "dimensions": {d.name: d.value for d in alarm.dimensions},
                    },
                    "period": int(alarm.period),
                    "stat": alarm.statistic or alarm.extended_statistic,
                },
                "returnData": True,
            }
        ]
    return {"description": alarm.description or "", "metrics": metrics}


@dataclass
class ServeProcess:
    process: subprocess.Popen
    port: int
    directory: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _s3() -> Any:
    """A client on the in-process moto S3 (bridges run inside the mock, in its threads)."""
    return boto3.client("s3", region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


def _s3_get(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def _s3_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return sorted(keys)


def _s3_put(s3: Any, bucket: str, key: str, body: bytes) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body)


def _reply(status: int, headers: dict[str, Any], body: Any) -> tuple[int, dict[str, Any], Any]:
    """moto takes a response's status from its headers, not from the tuple."""
    return status, {**headers, "status": status}, body


@dataclass
class GuardedUpdate:
    """A blue/green update with deployment guardrails in progress: the new fleet's share of the traffic."""

    endpoint_name: str
    old_config: str
    new_config: str
    new_models: dict[str, str]  # variant name -> the new fleet's model
    steps: list[float]
    wait_seconds: float
    termination_wait_seconds: float
    deadline: float
    alarms: list[str]
    cloudwatch: Any  # a client signing as the new model's execution role
    share: float = 0.0
    failed: bool = False


def guarded_traffic_steps(routing: dict[str, Any], instance_count: int) -> list[float]:
    """The new fleet's share after each step of a TrafficRoutingConfig, as SageMaker turns on instances: ALL_AT_ONCE
    one step; CANARY the canary (at most half the fleet) then the rest; LINEAR steps of 10-50% of the fleet."""
    kind = routing["Type"]
    if kind == "ALL_AT_ONCE":
        return [1.0]
    size = routing.get("CanarySize" if kind == "CANARY" else "LinearStepSize")
    if size is None:
        raise SageMakerValidationError(message=f"TrafficRoutingConfiguration of type {kind} needs its size")
    instances = size["Value"] if size["Type"] == "INSTANCE_COUNT" else math.ceil(instance_count * size["Value"] / 100)
    low = 0.1 if kind == "LINEAR" else 0.0
    if not (low * instance_count <= instances <= 0.5 * instance_count) or instances < 1:
        raise SageMakerValidationError(
            message=f"{kind} size {size['Value']} ({size['Type']}) is {instances} of {instance_count} instance(s); "
            f"it must be {'10-50%' if kind == 'LINEAR' else 'at most 50%'} of the fleet"
        )
    if kind == "CANARY":
        return [instances / instance_count, 1.0]
    shares = [min(1.0, k * instances / instance_count) for k in range(1, math.ceil(instance_count / instances) + 1)]
    return shares


def channel_relative_path(prefix: str, key: str) -> str:
    """Where SageMaker puts an S3Prefix channel's object under /opt/ml/input/data/<channel>/: the key after the
    prefix's last `/`, sub-folders kept (`training/churn/` + `training/churn/2026/a.csv` -> `2026/a.csv`; a prefix that
    is a whole key -> its file name). Flattening them, as this bridge once did, hid a job that failed on sub-folders."""
    return key[prefix.rfind("/") + 1 :]


SERVE_ERROR = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception): (.+)$")


def serve_failure(log_path: Path) -> str:
    """Why a `serve` process exited, from its log (the container's log SageMaker sends to CloudWatch): the message of
    the last exception it printed, or the log's last line."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if match := SERVE_ERROR.match(line):
            return match.group(1)
    return lines[-1] if lines else "no output"


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


class Bridges:
    def __init__(
        self,
        *,
        account: str,
        region: str,
        functions: dict[str, LocalFunction],
        training_asset: Path,
        workdir: Path,
        spot_discount: float,
        seed: int,
        log: Callable[[str], None],
        iam: LocalIam | None = None,
    ) -> None:
        self.account = account
        self.iam = iam
        self.sessions: dict[str, boto3.Session] = {}
        self.session_lock = threading.RLock()
        self.event_threads: list[threading.Thread] = []
        self.clock_advance: dict[str, float] = {}
        self.execution_clock: dict[str, float] = {}
        self.execution_timeouts: dict[str, int | None] = {}
        self.state_machine_caller = threading.local()
        self.state_machine_roles: dict[str, str] = {}
        self.region = region
        self.functions = functions
        self.training_asset = training_asset
        self.workdir = workdir
        self.spot_discount = spot_discount
        self.random = random.Random(seed)
        self.log = log
        self.patches: list[Any] = []
        self.invoke_lock = threading.RLock()
        self.modules: dict[str, ModuleType] = {}
        self.wait_hooks: dict[str, Callable[[str, int], None]] = {}
        self.training_outcomes: list[TrainingOutcome] = []
        self.training_threads: list[threading.Thread] = []
        self.jobs = threading.Condition()  # notified when a training job ends; `jobs_running` is read under it
        self.jobs_running = 0
        self.serve_processes: dict[str, ServeProcess] = {}
        self.serve_lock = threading.Lock()
        self.stdout = _ThreadRoutedStream(sys.stdout)
        self.stderr = _ThreadRoutedStream(sys.stderr)
        self.invocations: list[tuple[str, str]] = []  # (function, outcome) for tests and the demo
        self.capture_lock = threading.RLock()  # buffers and their writes: a flush returns with everything written
        self.capture_buffers: dict[tuple[str, ...], CaptureFile] = {}
        self.capture_files: list[str] = []  # s3:// URIs of the capture files written, for tests and the demo
        self.capture_failures: list[str] = []
        self.capture_stop = threading.Event()
        self.capture_thread: threading.Thread | None = None
        self.alarm_lock = threading.RLock()
        # Endpoint updates made to fail (fail_endpoint_update): endpoint -> (config or None for any, status, reason).
        self.endpoint_update_faults: dict[str, tuple[str | None, str, str]] = {}
        self.stopping = threading.Event()  # set by uninstall: running training jobs are stopped, as StopTrainingJob
        self.guarded: dict[str, GuardedUpdate] = {}  # endpoint -> its guarded update (deployment guardrails)
        self.guarded_changed = threading.Condition()  # notified when a guarded update ends
        self.guarded_threads: list[threading.Thread] = []
        self.fail_guarded_rollbacks = False  # tests: a guarded update's rollback fails (UpdateRollbackFailed)

    # ---------------------------------------------------------------- install
    def install(self) -> None:
        # Processes (train, serve) start from this snapshot of the host environment, never a Lambda's.
        self.base_environment = dict(os.environ)
        self.environ = _ThreadLocalEnviron(os.environ)
        self.sts = boto3.client("sts", region_name=self.region)
        self.default_session = threading.local()
        host_default_session = boto3._get_default_session
        bridges = self

        def default_session() -> boto3.Session:
            """boto3's default session, per thread: a Lambda invocation's is its execution role's (a real function
            resolves its credentials from the environment the Lambda service gives it)."""
            return getattr(bridges.default_session, "session", None) or host_default_session()

        def lambda_invoke(fn: LambdaFunction, body: str, request_headers: Any, response_headers: Any) -> bytes:
            if (request_headers or {}).get("X-Amz-Invocation-Type") == "Event":
                bridges.invoke_later(fn.function_name, body)
                return b""  # moto answers 202 with this body, as Lambda answers an asynchronous invocation
            return bridges.invoke_lambda(fn.function_name, body, response_headers)

        def wait_interval(wait_function: WaitFunction, env: Any, wait_seconds: int) -> None:
            context = env.states.context_object.context_object_data
            state = context.get("State", {}).get("Name", "?")
            hook = bridges.wait_hooks.get(state)
            if hook is not None:
                hook(state, wait_seconds)
            bridges.check_execution_timeout(env, context)
            bridges.pause_while_training()
            bridges.pause_while_updating()

        def signed_as_state_machine(original: Callable) -> Callable:
            """The interpreter's Lambda calls, made as the executing state machine's role (moto signs them with a
            fixed key that no policy governs)."""

            def call(env: Any, *args: Any, **kwargs: Any) -> Any:
                bridges.state_machine_caller.arn = env.states.context_object.context_object_data["StateMachine"]["Id"]
                try:
                    return original(env, *args, **kwargs)
                finally:
                    bridges.state_machine_caller.arn = None

            return call

        original_boto_client_for = lambda_eval_utils.boto_client_for

        def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
            machine = getattr(bridges.state_machine_caller, "arn", None)
            if machine is None or bridges.iam is None:
                return original_boto_client_for(region=region, service=service, state_credentials=state_credentials)
            return bridges.role_client(
                service,
                bridges.state_machine_role(machine),
                "states",
                config=BotoConfig(parameter_validation=False, retries={"max_attempts": 0, "total_max_attempts": 1}),
            )

        original_terminated = BaseExecutionWorkerCommunication.terminated

        def terminated(communication: BaseExecutionWorkerCommunication) -> None:
            original_terminated(communication)
            bridges.execution_ended(communication.execution)

        original_create_training_job = sagemaker_backends[self.account][self.region].__class__.create_training_job

        def create_training_job(backend: Any, **kwargs: Any) -> Any:
            requested = json.loads(json.dumps(kwargs["algorithm_specification"].get("MetricDefinitions", [])))
            job = original_create_training_job(backend, **kwargs)
            job.algorithm_specification["MetricDefinitions"] = requested  # moto replaces them with a fixed example
            bridges.start_training(backend, job)
            return job

        def update_endpoint(response: SageMakerResponse) -> Any:
            from moto.core.common_types import TYPE_RESPONSE  # noqa: F401  (type only)

            backend = response.sagemaker_backend
            deployment = response._get_param("DeploymentConfig")
            if deployment:
                arn = bridges.start_guarded_update(
                    backend, response._get_param("EndpointName"), response._get_param("EndpointConfigName"), deployment
                )
                return 200, {}, json.dumps({"EndpointArn": arn})
            arn = bridges.update_endpoint(
                backend,
                response._get_param("EndpointName"),
                response._get_param("EndpointConfigName"),
                autoscaling.retained_properties(
                    response._get_param("RetainAllVariantProperties"),
                    response._get_param("ExcludeRetainedVariantProperties"),
                ),
            )
            return 200, {}, json.dumps({"EndpointArn": arn})

        def invoke_endpoint(response: SageMakerRuntimeResponse) -> Any:
            return bridges.invoke_endpoint(response)

        backend_class = sagemaker_backends[self.account][self.region].__class__
        original_update_package = backend_class.update_model_package

        def update_model_package(backend: Any, **kwargs: Any) -> str:
            """UpdateModelPackage adds to a package's CustomerMetadataProperties; moto replaces them (with None
            when the call names none)."""
            arn = kwargs["model_package_arn"]
            name = backend.model_package_name_mapping.get(arn, arn)
            package = backend.model_packages.get(name)
            existing = dict(getattr(package, "customer_metadata_properties", None) or {})
            kwargs["customer_metadata_properties"] = {**existing, **(kwargs.get("customer_metadata_properties") or {})}
            if package is not None:  # moto sets what the call does not name to null; AWS keeps it
                if kwargs.get("model_approval_status") is None:
                    kwargs["model_approval_status"] = package.model_approval_status
                if kwargs.get("approval_description") is None:
                    kwargs["approval_description"] = package.approval_description
            return original_update_package(backend, **kwargs)

        original_create_endpoint_config = SageMakerResponse.create_endpoint_config

        def create_endpoint_config(response: SageMakerResponse) -> Any:
            return bridges.create_endpoint_config(response, original_create_endpoint_config)

        original_describe_endpoint = backend_class.describe_endpoint

        def describe_endpoint(backend: Any, endpoint_name: str) -> dict[str, Any]:
            described = original_describe_endpoint(backend, endpoint_name)
            current = backend.endpoint_configs.get(described["EndpointConfigName"])  # a config in use can be deleted
            config = (current or backend.endpoints[endpoint_name]).data_capture_config
            described.pop("DataCaptureConfig", None)
            if (summary := capture_summary(config)) is not None:
                described["DataCaptureConfig"] = summary
            shadows = getattr(current, "shadow_production_variants", None) or []
            if shadows:  # the current config's shadow variants, summarized as its production variants are
                described["ShadowProductionVariants"] = backend.endpoints[endpoint_name]._process_production_variants(
                    shadows
                )
            return described

        original_put_metric_data = CloudWatchBackend.put_metric_data

        def put_metric_data(backend: CloudWatchBackend, namespace: str, metric_data: list[dict[str, Any]]) -> None:
            original_put_metric_data(backend, namespace, metric_data)
            bridges.evaluate_alarms(backend, namespace, metric_data)

        def set_alarm_state(
            backend: CloudWatchBackend, alarm_name: str, reason: str, reason_data: str | None, state_value: str
        ) -> None:
            """SetAlarmState: the state-change event when the state changes (moto puts none), then the alarm goes
            back to what its metric says at its next evaluation (CloudWatch: within a minute; here at once)."""
            try:
                data = json.loads(reason_data) if reason_data is not None else None
            except ValueError:
                data = None
            if alarm_name not in backend.alarms or state_value not in STATES or (reason_data and data is None):
                return MOTO_SET_ALARM_STATE(backend, alarm_name, reason, reason_data, state_value)  # moto's errors
            bridges.set_alarm_state(alarm_name, state_value, reason, data)
            bridges.evaluate_alarms(backend, names={alarm_name})
            return None

        original_send = Rule.send_to_targets

        def send_to_targets(rule: Rule, event: Any, transform_input: bool = True) -> None:
            bridges.route_event(rule, event, transform_input, original_send)

        self.patches = [
            mock.patch.object(LambdaFunction, "invoke", lambda_invoke),
            mock.patch.object(boto3, "_get_default_session", default_session),
            mock.patch.object(WaitFunction, "_wait_interval", wait_interval),
            mock.patch.object(BaseExecutionWorkerCommunication, "terminated", terminated),
            mock.patch.object(lambda_eval_utils, "boto_client_for", boto_client_for),
            mock.patch.object(
                lambda_eval_utils,
                "exec_lambda_function",
                signed_as_state_machine(lambda_eval_utils.exec_lambda_function),
            ),
            mock.patch.object(
                lambda_eval_utils,
                "execute_lambda_function_integration",
                signed_as_state_machine(lambda_eval_utils.execute_lambda_function_integration),
            ),
            mock.patch.object(retrier_decl, "time", _NoSleepTime()),
            mock.patch.object(
                sagemaker_backends[self.account][self.region].__class__, "create_training_job", create_training_job
            ),
            mock.patch.object(SageMakerResponse, "update_endpoint", update_endpoint, create=True),
            mock.patch.object(backend_class, "update_model_package", update_model_package),
            mock.patch.object(backend_class, "describe_endpoint", describe_endpoint),
            mock.patch.object(SageMakerResponse, "create_endpoint_config", create_endpoint_config),
            mock.patch.object(SageMakerRuntimeResponse, "invoke_endpoint", invoke_endpoint),
            mock.patch.object(Rule, "send_to_targets", send_to_targets),
            mock.patch.object(CloudWatchBackend, "put_metric_data", put_metric_data),
            mock.patch.object(CloudWatchBackend, "set_alarm_state", set_alarm_state),
            mock.patch.object(CloudWatchResponse, "get_metric_statistics", get_metric_statistics),
            mock.patch.object(Statistics, "get_statistics_for_type", extended_statistic),
            mock.patch.object(CloudWatchBackend, "get_metric_data", get_metric_data),
            mock.patch.object(os, "environ", self.environ),
            mock.patch.object(sys, "stdout", self.stdout),
            mock.patch.object(sys, "stderr", self.stderr),
            *autoscaling.patches(self.account, self.region),
        ]
        for patch in self.patches:
            patch.start()
        self.capture_stop.clear()
        self.capture_thread = threading.Thread(target=self._capture_flusher, name="data-capture", daemon=True)
        self.capture_thread.start()

    def uninstall(self) -> None:
        self.stopping.set()
        for thread in self.training_threads + self.event_threads + self.guarded_threads:
            thread.join(timeout=120)
        self.capture_stop.set()
        if self.capture_thread is not None:
            self.capture_thread.join(timeout=10)
        self.flush_capture()  # what the endpoint captured reaches S3 before the runtime goes
        with self.serve_lock:
            for serve in self.serve_processes.values():
                serve.process.send_signal(signal.SIGTERM)
            for serve in self.serve_processes.values():
                try:
                    serve.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    serve.process.kill()
            self.serve_processes.clear()
        for patch in reversed(self.patches):
            patch.stop()
        self.patches = []

    # ---------------------------------------------------------------- roles
    def role_session(self, role_arn: str, session_name: str) -> boto3.Session:
        """A session signing as `role_arn` (STS AssumeRole, as Lambda and SageMaker do), authorized by the local IAM
        against the role's synthesized policies; without the local IAM, the host's session."""
        if self.iam is None:
            return boto3.Session(region_name=self.region)
        with self.session_lock:
            if role_arn not in self.sessions:
                credentials = self.iam.credentials_for(role_arn, session_name, self.sts)
                self.sessions[role_arn] = boto3.Session(**credentials, region_name=self.region)
            return self.sessions[role_arn]

    def role_client(self, service: str, role_arn: str, session_name: str, config: BotoConfig | None = None) -> Any:
        session = self.role_session(role_arn, session_name)
        with self.session_lock:  # creating clients from one session is not thread-safe
            return session.client(service, config=config)

    def state_machine_role(self, state_machine_arn: str) -> str:
        if state_machine_arn not in self.state_machine_roles:
            described = boto3.client("stepfunctions", region_name=self.region).describe_state_machine(
                stateMachineArn=state_machine_arn
            )
            self.state_machine_roles[state_machine_arn] = described["roleArn"]
        return self.state_machine_roles[state_machine_arn]

    # ---------------------------------------------------------------- Lambda
    def _log_to_function(self, function: LocalFunction) -> None:
        """Powertools' Logger is a `logging` logger named after the service, process-wide: if the host imported the
        handler first (a unit test, say), its handler writes to the host's stream. Point it at the proxy, which
        writes to this function's log file, as the function's own process would."""
        service = function.environment.get("POWERTOOLS_SERVICE_NAME")
        for handler in logging.getLogger(service).handlers if service else []:
            if isinstance(handler, logging.StreamHandler) and handler.stream is not self.stdout:
                handler.setStream(self.stdout)

    def _handler(self, function: LocalFunction) -> Callable[[Any, Any], Any]:
        module_name, _, attribute = function.handler.rpartition(".")
        key = f"{function.name}:{module_name}"
        if key not in self.modules:
            path = function.asset_directory / (module_name.replace(".", "/") + ".py")
            if not path.exists():
                raise FileNotFoundError(
                    f"{function.name}: handler module {module_name} not in {function.asset_directory}"
                )
            if str(function.asset_directory) not in sys.path:
                sys.path.insert(0, str(function.asset_directory))
            unique = f"refit_local_{len(self.modules)}_{module_name.replace('.', '_')}"
            # Each function imports its own copies of refit's packages, as its own Lambda process would: module state
            # (the cached AWS clients, which hold the function's role credentials) is never shared between functions.
            host = {name: m for name, m in sys.modules.items() if name.split(".")[0] in ISOLATED_PACKAGES}
            for name in host:
                del sys.modules[name]
            try:
                spec = importlib.util.spec_from_file_location(unique, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[unique] = module  # pydantic resolves postponed annotations through sys.modules
                spec.loader.exec_module(module)
            finally:
                for name in [n for n in sys.modules if n.split(".")[0] in ISOLATED_PACKAGES]:
                    del sys.modules[name]
                sys.modules.update(host)
            self.modules[key] = module
        return getattr(self.modules[key], attribute)

    def invoke_lambda(self, function_name: str, body: str, response_headers: dict) -> bytes:
        function = self.functions.get(function_name)
        if function is None:
            raise KeyError(f"{function_name}: not a function of the stood-up stack")
        event = json.loads(body) if body else {}
        log_path = self.workdir / "logs" / f"{function_name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        session = self.role_session(function.role_arn, function.name)
        credentials = session.get_credentials().get_frozen_credentials()
        environment = {
            **function.environment,
            # The Lambda service hands a function its execution role's temporary credentials this way.
            "AWS_ACCESS_KEY_ID": credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": credentials.secret_key,
            "AWS_SESSION_TOKEN": credentials.token or "",
            "AWS_LAMBDA_FUNCTION_NAME": function.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_mb),
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon locally
        }
        with self.invoke_lock, log_path.open("a") as log_file, self.environ.overlaid(environment):
            # The host (a test runner, say) may have swapped sys.stdout since install(): route through the proxies
            # again, so loggers created when the handler module is imported hold the proxy, not the host's stream.
            for name, proxy in (("stdout", self.stdout), ("stderr", self.stderr)):
                current = getattr(sys, name)
                if current is not proxy:
                    proxy.real = current
                    setattr(sys, name, proxy)
            self.stdout.local.target = log_file
            self.stderr.local.target = log_file
            self.default_session.session = session  # boto3.client() in this invocation signs as the function's role
            try:
                handler = self._handler(function)
                self._log_to_function(function)
                context = LambdaContext(function.name, function.memory_mb, function.arn)
                result = handler(event, context)
                self.invocations.append((function.name, "ok"))
                return json.dumps(result).encode()
            except Exception as error:
                traceback.print_exc(file=log_file)
                self.invocations.append((function.name, type(error).__name__))
                response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps(
                    {
                        "errorType": type(error).__name__,
                        "errorMessage": str(error),
                        "stackTrace": traceback.format_tb(error.__traceback__),
                    }
                ).encode()
            finally:
                self.default_session.session = None
                self.stdout.local.target = None
                self.stderr.local.target = None

    def invoke_later(self, function_name: str, body: str) -> None:
        """An asynchronous invocation (InvocationType Event, or an EventBridge target): the caller gets its answer at
        once and the function runs in its own thread, after the invocation in progress (one at a time, as here every
        invocation is)."""
        thread = threading.Thread(
            target=self.invoke_lambda, args=(function_name, body, {}), name=f"async-{function_name}", daemon=True
        )
        self.event_threads.append(thread)
        thread.start()

    # ---------------------------------------------------------------- training
    def start_training(self, backend: Any, job: Any) -> None:
        job.training_job_status = "InProgress"
        job.secondary_status = "Starting"
        job.training_end_time = None
        job.final_metric_data_list = []
        outcome = self.training_outcomes.pop(0) if self.training_outcomes else None
        with self.jobs:
            self.jobs_running += 1
        thread = threading.Thread(
            target=self._train_and_signal, args=(job, outcome), name=f"train-{job.training_job_name}", daemon=True
        )
        self.training_threads.append(thread)
        thread.start()

    def _train_and_signal(self, job: Any, outcome: TrainingOutcome | None) -> None:
        try:
            self._run_training(job, outcome)
        finally:
            with self.jobs:
                self.jobs_running -= 1
                self.jobs.notify_all()

    def pause_while_training(self) -> None:
        """A Wait's pause: none, unless a training job is running; then until a job ends or JOB_WAIT_SECONDS pass
        (TrainingJobStatus only changes when a job ends: a poll loop sees the end at once, without spinning)."""
        with self.jobs:
            if self.jobs_running and not self.stopping.is_set():
                self.jobs.wait(timeout=JOB_WAIT_SECONDS)

    def _finish(self, job: Any, status: str, secondary: str, reason: str | None, seconds: float) -> None:
        job.training_time_in_seconds = max(1, round(seconds))
        spot = bool(job.enable_managed_spot_training)
        job.billable_time_in_seconds = (
            max(1, round(seconds * (1 - self.spot_discount))) if spot else max(1, round(seconds))
        )
        if reason:
            job.failure_reason = reason
        job.secondary_status = secondary
        job.training_job_status = status

    def _restore_checkpoints(self, s3: Any, uri: str, directory: Path) -> None:
        bucket, prefix = _split_s3(uri)
        directory.mkdir(parents=True, exist_ok=True)
        for key in _s3_keys(s3, bucket, prefix):
            (directory / key[len(prefix) :].lstrip("/")).write_bytes(_s3_get(s3, bucket, key))

    def _save_checkpoints(self, s3: Any, directory: Path, uri: str) -> None:
        """SageMaker syncs the checkpoint folder to S3 while the job runs; locally it is synced when a process ends."""
        bucket, prefix = _split_s3(uri)
        for path in sorted(directory.glob("*")):
            if path.is_file() and not path.name.endswith(".tmp"):
                _s3_put(s3, bucket, f"{prefix.rstrip('/')}/{path.name}", path.read_bytes())

    def _watch(self, process: subprocess.Popen, events: Path, interrupt_after: int | None, timeout: float) -> bool:
        """Wait for `train`; with `interrupt_after`, send SIGTERM once that many folds are checkpointed. When the
        runtime shuts down, SIGTERM it as StopTrainingJob does. Returns True when the process was interrupted."""
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if self.stopping.is_set():
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=120)  # SageMaker's grace period before SIGKILL
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                return False
            if interrupt_after is not None and events.exists():
                done = sum(1 for line in events.read_text().splitlines() if '"fold_done"' in line)
                if done >= interrupt_after:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=120)  # SageMaker's grace period before SIGKILL
                    return True
            if time.monotonic() > deadline:
                process.kill()
                break
            time.sleep(0.02)
        return False

    def _run_training(self, job: Any, outcome: TrainingOutcome | None) -> None:
        started = time.monotonic()
        if outcome is not None and outcome.kind == "capacity" and not outcome.after_folds:
            job.secondary_status = "Starting"
            self._finish(
                job,
                "Failed",
                "MaxWaitTimeExceeded",
                outcome.message or "Training job exceeded MaxWaitTimeInSeconds waiting for spot capacity",
                0,
            )
            job.billable_time_in_seconds = 0
            job.training_time_in_seconds = 0
            return
        if outcome is not None and outcome.kind == "internal_error":
            self._finish(job, "Failed", "Failed", outcome.message or "InternalServerError: instance failure", 1)
            return
        root = self.workdir / "training" / job.training_job_name
        shutil.rmtree(root, ignore_errors=True)
        try:
            # SageMaker reads the channels, syncs checkpoints and uploads the output with the job's role.
            s3 = self.role_client("s3", job.role_arn, job.training_job_name)
            for channel in job.input_data_config:
                uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
                bucket, prefix = _split_s3(uri)
                target = root / "input" / "data" / channel["ChannelName"]
                target.mkdir(parents=True, exist_ok=True)
                for key in _s3_keys(s3, bucket, prefix):
                    path = target / channel_relative_path(prefix, key)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(_s3_get(s3, bucket, key))
            config = root / "input" / "config"
            config.mkdir(parents=True, exist_ok=True)
            (config / "hyperparameters.json").write_text(json.dumps(job.hyper_parameters))
            env = {
                **self.base_environment,
                "REFIT_OPT_ML": str(root),
                # Local jobs share one machine with the runtime, the servers and other jobs: OpenMP threads that
                # spin-wait for cores make everything slower. A SageMaker instance gives a job all its cores.
                "OMP_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join(
                    [str(self.training_asset / "training_container"), str(self.training_asset / "functions")]
                ),
            }
            checkpoint_uri = (job.checkpoint_config or {}).get("S3Uri")
            log_path = root / "training.log"
            interrupt_after = (
                outcome.after_folds if outcome is not None and outcome.kind in ("interrupt", "capacity") else None
            )
            while True:
                if checkpoint_uri:
                    self._restore_checkpoints(s3, checkpoint_uri, root / "checkpoints")
                job.secondary_status = "Training"
                with log_path.open("a") as log_file:
                    process = subprocess.Popen(
                        [sys.executable, "-m", "refit_training", "train"],
                        env=env,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        cwd=root,
                    )
                    interrupted = self._watch(
                        process,
                        root / "checkpoints" / "events.jsonl",
                        interrupt_after,
                        job.stopping_condition.get("MaxRuntimeInSeconds", 3600),
                    )
                if checkpoint_uri:
                    self._save_checkpoints(s3, root / "checkpoints", checkpoint_uri)
                if self.stopping.is_set():
                    self._finish(job, "Stopped", "Stopped", None, time.monotonic() - started)
                    return
                if not interrupted:
                    break
                if outcome is not None and outcome.kind == "capacity":
                    # Interrupted, and spot capacity did not come back before MaxWaitTimeInSeconds.
                    self._finish(
                        job,
                        "Failed",
                        "MaxWaitTimeExceeded",
                        outcome.message
                        or "Training job exceeded MaxWaitTimeInSeconds waiting for spot capacity after an interruption",
                        time.monotonic() - started,
                    )
                    return
                # A spot interruption: SageMaker restarts the job on new capacity with the checkpoints restored.
                job.secondary_status = "Interrupted"
                interrupt_after = None
                job.secondary_status = "Restarting"
            result = process
            output = log_path.read_text()
            job.final_metric_data_list = [
                {"MetricName": d["Name"], "Value": float(m.group(1)), "Timestamp": job.creation_time}
                for d in job.algorithm_specification.get("MetricDefinitions", [])
                for m in [re.search(d["Regex"], output)]
                if m
            ]
            if result.returncode != 0:
                failure = root / "output" / "failure"
                reason = failure.read_text() if failure.exists() else f"train exited with {result.returncode}"
                self._finish(job, "Failed", "Failed", f"AlgorithmError: {reason}", time.monotonic() - started)
                return
            job.secondary_status = "Uploading"
            bucket, prefix = _split_s3(job.output_data_config["S3OutputPath"])
            base = f"{prefix.rstrip('/')}/{job.training_job_name}/output"
            for name, folder in (("model.tar.gz", root / "model"), ("output.tar.gz", root / "output" / "data")):
                buffer = io.BytesIO()
                with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
                    for path in sorted(folder.iterdir()):
                        archive.add(path, arcname=path.name)
                _s3_put(s3, bucket, f"{base}/{name}", buffer.getvalue())
            self._finish(job, "Completed", "Completed", None, time.monotonic() - started)
        except Exception as error:  # the bridge itself failed: report it as SageMaker would, never hang
            self._finish(
                job, "Failed", "Failed", f"local runtime: {type(error).__name__}: {error}", time.monotonic() - started
            )

    # ---------------------------------------------------------------- endpoints
    def update_endpoint(
        self, backend: Any, endpoint_name: str, config_name: str, retained: frozenset[str] = frozenset()
    ) -> str:
        endpoint: FakeEndpoint | None = backend.endpoints.get(endpoint_name)
        if endpoint is None:
            raise SageMakerValidationError(message=f'Could not find endpoint "{endpoint_name}".')
        if endpoint_name in self.guarded and endpoint.endpoint_status != "UpdateRollbackFailed":
            raise SageMakerValidationError(message=f'Cannot update in-progress endpoint "{endpoint.arn}".')
        self._end_guarded(endpoint_name)  # an UpdateEndpoint is SageMaker's remedy for UpdateRollbackFailed
        config = backend.describe_endpoint_config(config_name)
        current = backend.endpoint_configs.get(endpoint.endpoint_config_name)
        refused = autoscaling.refuse_update(
            self.account,
            self.region,
            endpoint_name,
            current.production_variants if current is not None else [],
            config["ProductionVariants"],
        )
        if refused is not None:
            from moto.sagemaker.exceptions import ValidationError

            raise ValidationError(message=refused)
        if endpoint.endpoint_status == "Failed":
            from moto.sagemaker.exceptions import ValidationError

            # DescribeEndpoint's documentation: "DeleteEndpoint is the only operation that can be performed on a
            # failed endpoint".
            raise ValidationError(
                message=f'Cannot update endpoint "{endpoint_name}": it is Failed; DeleteEndpoint is the only operation '
                "that can be performed on a failed endpoint."
            )
        fault = self.endpoint_update_faults.get(endpoint_name)
        if fault is not None and fault[0] in (None, config_name):
            # A simulated failure (fail_endpoint_update): the update ends in `status` without taking the new config.
            del self.endpoint_update_faults[endpoint_name]
            endpoint.endpoint_status, endpoint.failure_reason = fault[1], fault[2][:1024]
            endpoint.last_modified_time = utcnow()
            return endpoint.arn
        try:
            for production_variant in [*config["ProductionVariants"], *config.get("ShadowProductionVariants", [])]:
                self._serve(production_variant["ModelName"])  # SageMaker's health check of the new fleet
        except Exception as error:
            # The update fails and SageMaker rolls it back: InService on the old config, the reason recorded.
            endpoint.endpoint_status = "InService"
            endpoint.failure_reason = (
                f"Endpoint update to {config_name} failed and was rolled back: the primary container for a production "
                f"variant did not pass the ping health check ({type(error).__name__}: {error})"
            )[:1024]
            endpoint.last_modified_time = utcnow()
            return endpoint.arn
        endpoint.failure_reason = None
        endpoint.endpoint_config_name = config_name
        old_variants = endpoint.production_variants
        endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
        autoscaling.retain(old_variants, endpoint.production_variants, retained)
        endpoint.endpoint_status = "InService"
        # UpdateEndpoint moves LastModifiedTime (moto leaves it at creation): the monitor dates a promotion by it.
        endpoint.last_modified_time = utcnow()
        return endpoint.arn

    def create_endpoint_config(self, response: SageMakerResponse, original: Callable) -> Any:
        """CreateEndpointConfig keeping ShadowProductionVariants, refused as SageMaker refuses them: a config with a
        shadow has exactly one production variant and one shadow variant, every variant name distinct."""
        from moto.sagemaker.exceptions import ValidationError

        shadows = response._get_param("ShadowProductionVariants") or []
        if shadows:
            production = response._get_param("ProductionVariants") or []
            if len(production) != 1 or len(shadows) != 1:
                raise ValidationError(
                    message="An endpoint config with ShadowProductionVariants must have exactly one variant in "
                    f"ProductionVariants and one in ShadowProductionVariants (got {len(production)} and {len(shadows)})"
                )
            variant_names = [v.get("VariantName") for v in [*production, *shadows]]
            if len(set(variant_names)) != len(variant_names):
                raise ValidationError(
                    message=f"Variant names must be unique across the endpoint config: {variant_names}"
                )
        result = original(response)
        if shadows:
            backend = response.sagemaker_backend
            endpoint_config = backend.endpoint_configs[response._get_param("EndpointConfigName")]
            try:
                endpoint_config.validate_production_variants(shadows)  # instance types, as for production variants
            except Exception:
                del backend.endpoint_configs[endpoint_config.endpoint_config_name]
                raise
            endpoint_config.shadow_production_variants = shadows  # DescribeEndpointConfig's ShadowProductionVariants
        return result

    def fail_endpoint_update(
        self, endpoint_name: str, config_name: str | None = None, status: str = "Failed", reason: str | None = None
    ) -> None:
        """Make the next UpdateEndpoint of `endpoint_name` (to `config_name`, or to any config) end in `status`
        (`Failed`, or `UpdateRollbackFailed`: the update and its automatic rollback both failed) with `reason` as its
        FailureReason, the endpoint keeping its current config and weights."""
        if status not in ("Failed", "UpdateRollbackFailed"):
            raise ValueError(f"fail_endpoint_update: status {status!r} is not Failed or UpdateRollbackFailed")
        self.endpoint_update_faults[endpoint_name] = (
            config_name,
            status,
            reason or f"simulated by the local runtime: the update to {config_name or 'the new config'} failed",
        )

    def _variant_models(self, endpoint_name: str) -> tuple[list[tuple[str, float, str]], str]:
        backend = sagemaker_backends[self.account][self.region]
        endpoint = backend.endpoints[endpoint_name]
        config = backend.endpoint_configs[endpoint.endpoint_config_name]
        models = {v["VariantName"]: v["ModelName"] for v in config.production_variants}
        variants = [
            (v["VariantName"], float(v.get("CurrentWeight", 0.0)), models[v["VariantName"]])
            for v in endpoint.production_variants
        ]
        return variants, endpoint.endpoint_config_name

    def _serve(self, model_name: str) -> ServeProcess:
        backend = sagemaker_backends[self.account][self.region]
        model_data_url = backend._models[model_name].primary_container["ModelDataUrl"]
        with self.serve_lock:
            if model_data_url in self.serve_processes and self.serve_processes[model_data_url].process.poll() is None:
                return self.serve_processes[model_data_url]
            directory = self.workdir / "serving" / model_name
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            bucket, key = _split_s3(model_data_url)
            # SageMaker downloads the model artifact with the model's execution role.
            s3 = self.role_client("s3", backend._models[model_name].execution_role_arn, f"endpoint-{model_name}")
            with tarfile.open(fileobj=io.BytesIO(_s3_get(s3, bucket, key)), mode="r:gz") as archive:
                archive.extractall(directory, filter="data")
            port = _free_port()
            env = {
                **self.base_environment,
                # The model's PrimaryContainer.Environment, as SageMaker gives it to the container.
                **(backend._models[model_name].primary_container.get("Environment") or {}),
                "SM_MODEL_DIR": str(directory),
                "SAGEMAKER_BIND_TO_PORT": str(port),
                "REFIT_SERVE_HOST": "127.0.0.1",
                "OMP_NUM_THREADS": "1",  # one model per process on a shared laptop: no OpenMP spin-waiting
                "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                "PYTHONPATH": os.pathsep.join(
                    [str(self.training_asset / "training_container"), str(self.training_asset / "functions")]
                ),
            }
            log_path = self.workdir / "serving" / f"{model_name}.log"
            with log_path.open("w") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-m", "refit_training", "serve"],
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"serve for {model_name} exited with {process.returncode}: {serve_failure(log_path)}"
                    )
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as response:
                        if response.status == 200:
                            break
                except OSError:
                    time.sleep(0.1)
            else:
                process.kill()
                raise RuntimeError(f"serve for {model_name} did not answer /ping within 60 s")
            serve = ServeProcess(process, port, directory)
            self.serve_processes[model_data_url] = serve
            return serve

    def _put_variant_metrics(self, endpoint: str, variant: str, status: int, latency_us: float) -> None:
        dimensions = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]
        data = [
            {"MetricName": "Invocations", "Value": 1.0, "Unit": "Count", "Dimensions": dimensions},
            {
                "MetricName": "Invocation4XXErrors",
                "Value": float(400 <= status < 500),
                "Unit": "Count",
                "Dimensions": dimensions,
            },
            {
                "MetricName": "Invocation5XXErrors",
                "Value": float(status >= 500),
                "Unit": "Count",
                "Dimensions": dimensions,
            },
            {"MetricName": "ModelLatency", "Value": latency_us, "Unit": "Microseconds", "Dimensions": dimensions},
        ]
        cloudwatch_backends[self.account][self.region].put_metric_data("AWS/SageMaker", data)

    def invoke_endpoint(self, response: SageMakerRuntimeResponse) -> Any:
        endpoint_name = response._get_param("EndpointName") or response.path.split("/")[2]
        backend = sagemaker_backends[self.account][self.region]
        if endpoint_name not in backend.endpoints:
            return _reply(
                400, {}, json.dumps({"__type": "ValidationError", "message": f"Endpoint {endpoint_name} not found."})
            )
        variants, _ = self._variant_models(endpoint_name)
        target = response.headers.get("X-Amzn-SageMaker-Target-Variant")
        if target:
            chosen = [v for v in variants if v[0] == target]
            if not chosen:
                return _reply(400, {}, json.dumps({"__type": "ValidationError", "message": f"no variant {target}"}))
            variant = chosen[0]
        else:
            live = [v for v in variants if v[1] > 0]
            if not live:
                return _reply(
                    400, {}, json.dumps({"__type": "ValidationError", "message": "all variant weights are 0"})
                )
            variant = self.random.choices(live, weights=[v[1] for v in live])[0]
        guarded = self.guarded.get(endpoint_name)
        if guarded is not None and variant[0] in guarded.new_models and self.random.random() < guarded.share:
            variant = (variant[0], variant[1], guarded.new_models[variant[0]])  # the new fleet, same variant name
        received = datetime.now(UTC)
        body = response.body if isinstance(response.body, bytes) else (response.body or "").encode()
        request_type = response.headers.get("Content-Type", "text/csv")
        accept = response.headers.get("Accept", "application/json")
        status, payload, content_type, latency_us = self._call_serve(variant[2], body, request_type, accept)
        self._put_variant_metrics(endpoint_name, variant[0], status, latency_us)
        if status == 200:
            # Failed requests are not captured: AWS does not document capturing them, so none is recorded here.
            self.capture(
                endpoint_name,
                variant[0],
                variant[2],
                request_type,
                body,
                content_type,
                payload,
                response.headers.get(INFERENCE_ID_HEADER),
                received,
            )
        self._copy_to_shadow(endpoint_name, body, request_type, accept, response.headers.get(INFERENCE_ID_HEADER))
        if status != 200:
            message = payload.decode(errors="replace")
            return _reply(
                424,
                {"x-Amzn-Invoked-Production-Variant": variant[0]},
                json.dumps(
                    {
                        "__type": "ModelError",
                        "message": f'Received client error ({status}) from primary with message "{message}"',
                        "OriginalStatusCode": status,
                        "OriginalMessage": message,
                    }
                ),
            )
        return _reply(200, {"Content-Type": content_type, "x-Amzn-Invoked-Production-Variant": variant[0]}, payload)

    def _call_serve(
        self, model_name: str, body: bytes, request_type: str, accept: str
    ) -> tuple[int, bytes, str | None, float]:
        """One request to the model's `serve`: (status, payload, content type, latency in microseconds)."""
        serve = self._serve(model_name)
        request = urllib.request.Request(
            f"http://127.0.0.1:{serve.port}/invocations",
            data=body,
            method="POST",
            headers={"Content-Type": request_type, "Accept": accept},
        )
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                status, payload, content_type = reply.status, reply.read(), reply.headers.get("Content-Type")
        except urllib.error.HTTPError as error:
            status, payload, content_type = error.code, error.read(), "application/json"
        return status, payload, content_type, (time.perf_counter() - started) * 1e6

    def _copy_to_shadow(
        self, endpoint_name: str, body: bytes, request_type: str, accept: str, inference_id: str | None
    ) -> None:
        """A copy of a request the production variant served, to each shadow variant of the endpoint's config with
        probability shadow weight / production weight: its metrics and capture under its own name; its reply is
        dropped and nothing it does reaches the caller."""
        backend = sagemaker_backends[self.account][self.region]
        config = backend.endpoint_configs.get(backend.endpoints[endpoint_name].endpoint_config_name)
        shadows = getattr(config, "shadow_production_variants", None) or []
        if not shadows:
            return
        production_weight = sum(float(v.get("InitialVariantWeight", 1.0)) for v in config.production_variants)
        for shadow in shadows:
            share = min(1.0, float(shadow.get("InitialVariantWeight", 1.0)) / (production_weight or 1.0))
            if self.random.random() >= share:
                continue
            received = datetime.now(UTC)
            try:
                status, payload, content_type, latency_us = self._call_serve(
                    shadow["ModelName"], body, request_type, accept
                )
            except Exception as error:  # a shadow that cannot answer counts as a 5XX; the caller is not affected
                self.log(f"local: shadow variant {shadow['VariantName']} of {endpoint_name} failed: {error}")
                status, payload, content_type, latency_us = 500, b"", None, 0.0
            self._put_variant_metrics(endpoint_name, shadow["VariantName"], status, latency_us)
            if status == 200:
                self.capture(
                    endpoint_name,
                    shadow["VariantName"],
                    shadow["ModelName"],
                    request_type,
                    body,
                    content_type,
                    payload,
                    inference_id,
                    received,
                )

    # ---------------------------------------------------------------- deployment guardrails
    def start_guarded_update(
        self, backend: Any, endpoint_name: str, config_name: str, deployment: dict[str, Any]
    ) -> str:
        """UpdateEndpoint with DeploymentConfig: checked as SageMaker checks it, then run in a thread (the call returns
        with the endpoint Updating)."""
        endpoint: FakeEndpoint | None = backend.endpoints.get(endpoint_name)
        if endpoint is None:
            raise SageMakerValidationError(message=f'Could not find endpoint "{endpoint_name}".')
        if endpoint.endpoint_status != "InService" or endpoint_name in self.guarded:
            raise SageMakerValidationError(message=f'Cannot update in-progress endpoint "{endpoint.arn}".')
        policy = deployment.get("BlueGreenUpdatePolicy")
        if policy is None:
            raise SageMakerValidationError(message="local runtime: only BlueGreenUpdatePolicy deployments are bridged")
        new = backend.describe_endpoint_config(config_name)["ProductionVariants"]
        old = backend.describe_endpoint_config(endpoint.endpoint_config_name)["ProductionVariants"]
        if sorted(v["VariantName"] for v in new) != sorted(v["VariantName"] for v in old):
            raise SageMakerValidationError(
                message="The new endpoint config must have the same variant names as the current one for a "
                "blue/green update with deployment guardrails."
            )
        count = sum(int(v.get("InitialInstanceCount", 1)) for v in new)
        steps = guarded_traffic_steps(policy["TrafficRoutingConfiguration"], count)
        alarms = [a["AlarmName"] for a in (deployment.get("AutoRollbackConfiguration") or {}).get("Alarms", [])]
        role = backend._models[new[0]["ModelName"]].execution_role_arn
        cloudwatch = self.role_client("cloudwatch", role, "sagemaker-deployment")  # SageMaker reads them as this role
        try:
            self._read_alarms(cloudwatch, alarms)
        except ClientError as error:
            raise SageMakerValidationError(
                message=f"The execution role {role} cannot read the AutoRollbackConfiguration alarms {alarms}: {error}"
            ) from None
        update = GuardedUpdate(
            endpoint_name=endpoint_name,
            old_config=endpoint.endpoint_config_name,
            new_config=config_name,
            new_models={v["VariantName"]: v["ModelName"] for v in new},
            steps=steps,
            wait_seconds=float(policy["TrafficRoutingConfiguration"]["WaitIntervalInSeconds"]),
            termination_wait_seconds=float(policy.get("TerminationWaitInSeconds", 0)),
            deadline=time.monotonic() + float(policy.get("MaximumExecutionTimeoutInSeconds", 28800)),
            alarms=alarms,
            cloudwatch=cloudwatch,
        )
        self.guarded[endpoint_name] = update
        endpoint.endpoint_status = "Updating"
        endpoint.failure_reason = None
        endpoint.last_modified_time = utcnow()
        thread = threading.Thread(
            target=self._run_guarded, args=(backend, endpoint, update), name=f"guarded-{endpoint_name}", daemon=True
        )
        self.guarded_threads.append(thread)
        thread.start()
        return endpoint.arn

    @staticmethod
    def _read_alarms(cloudwatch: Any, alarms: list[str]) -> list[dict[str, Any]]:
        return cloudwatch.describe_alarms(AlarmNames=alarms)["MetricAlarms"] if alarms else []

    def _run_guarded(self, backend: Any, endpoint: FakeEndpoint, update: GuardedUpdate) -> None:
        try:
            for model_name in update.new_models.values():
                self._serve(model_name)  # the new (green) fleet must pass the ping health check
        except Exception as error:
            self._roll_back_guarded(endpoint, update, f"the new fleet did not pass the ping health check: {error}")
            return
        for share in update.steps:
            update.share = share
            self.log(f"local: guarded update of {update.endpoint_name}: new fleet takes {share:.0%}")
            reason = self._bake(update, update.wait_seconds)
            if reason is not None:
                self._roll_back_guarded(endpoint, update, reason)
                return
        if self.stopping.wait(update.termination_wait_seconds):
            return
        endpoint.endpoint_config_name = update.new_config
        endpoint.production_variants = endpoint._process_production_variants(
            backend.describe_endpoint_config(update.new_config)["ProductionVariants"]
        )
        endpoint.endpoint_status = "InService"
        endpoint.last_modified_time = utcnow()
        self._end_guarded(update.endpoint_name)

    def _bake(self, update: GuardedUpdate, seconds: float) -> str | None:
        """Watch the rollback alarms for `seconds`; the reason to roll back, or None."""
        end = time.monotonic() + seconds
        while True:
            firing = [
                a["AlarmName"]
                for a in self._read_alarms(update.cloudwatch, update.alarms)
                if a["StateValue"] == "ALARM"
            ]
            if firing:
                return f"alarm {', '.join(firing)} in ALARM during the bake at {update.share:.0%}"
            if time.monotonic() >= update.deadline:
                return "MaximumExecutionTimeoutInSeconds passed"
            if time.monotonic() >= end or self.stopping.wait(0.05):
                return None

    def _roll_back_guarded(self, endpoint: FakeEndpoint, update: GuardedUpdate, reason: str) -> None:
        self.log(f"local: guarded update of {update.endpoint_name} rolls back: {reason}")
        if self.fail_guarded_rollbacks:
            # Both the update and its rollback failed: the fleets stay mixed at the share reached.
            endpoint.endpoint_status = "UpdateRollbackFailed"
            endpoint.failure_reason = f"Update to {update.new_config} rolled back ({reason}) and the rollback failed"
            endpoint.last_modified_time = utcnow()
            with self.guarded_changed:
                update.failed = True
                self.guarded_changed.notify_all()
            return
        endpoint.endpoint_status = "InService"  # on the old config; SageMaker often gives no FailureReason
        endpoint.last_modified_time = utcnow()
        self._end_guarded(update.endpoint_name)

    def _end_guarded(self, endpoint_name: str) -> None:
        with self.guarded_changed:
            self.guarded.pop(endpoint_name, None)
            self.guarded_changed.notify_all()

    def pause_while_updating(self) -> None:
        """A Wait's pause while a guarded update runs: until one ends or JOB_WAIT_SECONDS pass (a status poll loop
        does not spin through the bakes)."""
        with self.guarded_changed:
            running = any(not u.failed for u in self.guarded.values())
            if running and not self.stopping.is_set():
                self.guarded_changed.wait(timeout=JOB_WAIT_SECONDS)

    # ---------------------------------------------------------------- data capture
    def capture(
        self,
        endpoint: str,
        variant: str,
        model_name: str,
        request_type: str | None,
        request: bytes,
        response_type: str | None,
        response: bytes,
        inference_id: str | None,
        when: datetime,
    ) -> None:
        """Data Capture of one successful request on `variant`, under the endpoint's current config."""
        backend = sagemaker_backends[self.account][self.region]
        endpoint_config = backend.endpoint_configs[backend.endpoints[endpoint].endpoint_config_name]
        config = getattr(endpoint_config, "data_capture_config", None) or {}
        if not capture_enabled(config):
            return
        if self.random.random() * 100 >= float(config["InitialSamplingPercentage"]):
            return
        record = capture_record(
            config,
            request=request,
            request_type=request_type,
            response=response,
            response_type=response_type,
            inference_id=inference_id,
            when=when,
        )
        # SageMaker writes a variant's capture files as the variant's model execution role (CreateModel's
        # ExecutionRoleArn, the role that also reads the model artifact): it needs s3:PutObject on the destination and
        # the use of the KMS key; a role without the grant loses its capture (locally the IAM bridge refuses it).
        role_arn = backend._models[model_name].execution_role_arn
        key = (endpoint, variant, config["DestinationS3Uri"], config.get("KmsKeyId") or "", role_arn)
        with self.capture_lock:
            buffered = self.capture_buffers.get(key)
            if buffered is not None and buffered.first.strftime("%Y%m%d%H") != when.strftime("%Y%m%d%H"):
                self._write_capture(self.capture_buffers.pop(key))  # a file holds one hour's records
                buffered = None
            if buffered is None:
                buffered = self.capture_buffers[key] = CaptureFile(
                    config["DestinationS3Uri"],
                    config.get("KmsKeyId"),
                    role_arn,
                    endpoint,
                    variant,
                    when,
                    time.monotonic(),
                )
            buffered.lines.append(json.dumps(record, separators=(",", ":")))
            if len(buffered.lines) >= CAPTURE_FILE_RECORDS:
                self._write_capture(self.capture_buffers.pop(key))

    def flush_capture(self, older_than: float | None = None) -> list[str]:
        """Write the buffered capture records (those waiting at least `older_than` seconds; all by default) and
        return the s3:// URIs written. When it returns, every record captured before the call is in S3."""
        with self.capture_lock:
            due = [
                key
                for key, buffered in self.capture_buffers.items()
                if older_than is None or time.monotonic() - buffered.opened >= older_than
            ]
            return [uri for key in due if (uri := self._write_capture(self.capture_buffers.pop(key)))]

    def _capture_flusher(self) -> None:
        while not self.capture_stop.wait(0.2):
            self.flush_capture(older_than=CAPTURE_FILE_SECONDS)

    def _write_capture(self, buffered: CaptureFile) -> str | None:
        bucket, key = capture_key(buffered.bucket_destination, buffered.endpoint, buffered.variant, buffered.first)
        encryption = {"ServerSideEncryption": "aws:kms"}  # with no key, the account's S3 key (aws/s3), as SageMaker
        if buffered.kms_key:
            encryption["SSEKMSKeyId"] = buffered.kms_key
        try:
            s3 = self.role_client("s3", buffered.role_arn, f"capture-{buffered.endpoint}")
            s3.put_object(Bucket=bucket, Key=key, Body=("\n".join(buffered.lines) + "\n").encode(), **encryption)
        except Exception as error:  # SageMaker drops what it cannot write; the invocation itself is not affected
            message = f"data capture s3://{bucket}/{key} ({len(buffered.lines)} records) not written: {error}"
            self.capture_failures.append(message)
            self.log(f"local: {message}")
            return None
        uri = f"s3://{bucket}/{key}"
        self.capture_files.append(uri)
        return uri

    # ---------------------------------------------------------------- alarms
    def evaluate_alarms(
        self,
        backend: CloudWatchBackend | None = None,
        namespace: str | None = None,
        metric_data: list[dict[str, Any]] | None = None,
        now: datetime | None = None,
        names: set[str] | None = None,
    ) -> list[tuple[str, str]]:
        """Evaluate the metric alarms on the metrics `metric_data` (of `namespace`) touched, or the alarms `names`,
        or every metric alarm when neither is given, at `now` (the wall clock by default), and change the state of
        those whose evaluation differs, with the state-change event. Returns (alarm, new state) for each change."""
        backend = backend or cloudwatch_backends[self.account][self.region]
        touched = None
        if metric_data is not None:
            touched = {
                (
                    namespace,
                    datum["MetricName"],
                    frozenset((d["Name"], d["Value"]) for d in datum.get("Dimensions", [])),
                )
                for datum in metric_data
            }
        changes = []
        with self.alarm_lock:
            for alarm in list(backend.alarms.values()):
                spec = _alarm_spec(alarm)
                if spec is None or (names is not None and alarm.name not in names):
                    continue
                queries = spec.metrics if isinstance(spec, MathAlarmSpec) else (spec,)
                if touched is not None and not any(
                    (q.namespace, q.metric_name, frozenset(q.dimensions.items())) in touched for q in queries
                ):
                    continue
                stored = backend.get_all_metrics()
                points = {
                    getattr(q, "id", ""): [
                        _datapoint(datum)
                        for datum in stored
                        if datum.namespace == q.namespace
                        and datum.name == q.metric_name
                        and {d.name: d.value for d in datum.dimensions} == q.dimensions
                        and (q.unit is None or datum.unit == q.unit)
                    ]
                    for q in queries
                }
                data = points if isinstance(spec, MathAlarmSpec) else points[""]
                result = evaluate_alarm(spec, data, now or datetime.now(UTC), alarm.state_value)
                if result.state != alarm.state_value:
                    self.set_alarm_state(alarm.name, result.state, result.reason, result.reason_data)
                    changes.append((alarm.name, result.state))
        return changes

    def set_alarm_state(
        self, alarm_name: str, state: str, reason: str, reason_data: dict[str, Any] | None = None
    ) -> None:
        """Change an alarm's state and, when it changed, put the "CloudWatch Alarm State Change" event CloudWatch
        puts on the default bus (detail: alarmName, state and previousState {value, reason, reasonData, timestamp},
        configuration {description, metrics}). The one implementation for evaluated and forced changes."""
        if state not in STATES:
            raise ValueError(f"alarm {alarm_name}: state {state!r} is not one of {STATES}")
        backend = cloudwatch_backends[self.account][self.region]
        alarm = backend.alarms.get(alarm_name)
        if alarm is None:
            raise KeyError(f"no alarm named {alarm_name!r}")
        with self.alarm_lock:
            previous = {"value": alarm.state_value, "reason": alarm.state_reason}
            if alarm.state_reason_data and alarm.state_reason_data != "{}":
                previous["reasonData"] = alarm.state_reason_data
            previous["timestamp"] = alarm_event_time(alarm.state_updated_timestamp)
            MOTO_SET_ALARM_STATE(backend, alarm_name, reason, json.dumps(reason_data) if reason_data else None, state)
            if previous["value"] == state:
                return
            current = {"value": state, "reason": reason}
            if reason_data:
                current["reasonData"] = json.dumps(reason_data)
            current["timestamp"] = alarm_event_time(alarm.state_updated_timestamp)
            detail = {
                "alarmName": alarm_name,
                "state": current,
                "previousState": previous,
                "configuration": _alarm_configuration(alarm),
            }
            self.log(f"local: alarm {alarm_name} {previous['value']} -> {state}")
            events_backends[self.account][self.region].put_events(
                [
                    {
                        "Source": "aws.cloudwatch",
                        "DetailType": "CloudWatch Alarm State Change",
                        "Resources": [alarm.alarm_arn],
                        "Detail": json.dumps(detail),
                    }
                ]
            )

    # ---------------------------------------------------------------- events
    def route_event(self, rule: Rule, event: Any, transform_input: bool, original: Callable) -> None:
        detail = event.get("detail")
        s3_object = detail.get("object") if isinstance(detail, dict) and event.get("source") == "aws.s3" else None
        if isinstance(s3_object, dict) and "eTag" in s3_object:
            s3_object["etag"] = s3_object.pop("eTag")  # AWS's field name (moto's event says eTag)
        if rule.scheduled_expression and not rule.event_pattern.get_pattern():
            return  # moto lets a schedule-only rule match every event; on AWS it matches none
        if not rule.event_pattern.matches_event(event):
            return
        other = [t for t in rule.targets if ":states:" not in t["Arn"] and ":lambda:" not in t["Arn"]]
        for target in rule.targets:
            payload = target.get("Input") or json.dumps(event, default=str)
            if ":states:" in target["Arn"]:
                self.start_execution(target["Arn"], str(uuid.uuid4()), payload)  # AWS names these with a UUID
            elif ":lambda:" in target["Arn"]:
                # EventBridge invokes a Lambda target asynchronously, with the event as its payload.
                self.invoke_later(target["Arn"].split(":function:", 1)[1].split(":")[0], payload)
        if other:
            saved = rule.targets
            rule.targets = other
            try:
                original(rule, event, transform_input)
            finally:
                rule.targets = saved

    def execution_ended(self, execution: Any) -> None:
        """Step Functions puts a "Step Functions Execution Status Change" event on the default bus when an execution
        ends, and publishes its execution metrics; moto does neither. Put both, the metrics first (so the run-failed
        alarm is evaluated by the time a rule on the event runs), the event with the fields AWS documents, so rules on
        it (the run-end cleanup) fire."""
        self.put_execution_metrics(execution)

        def millis(value: Any) -> int | None:
            return int(value.timestamp() * 1000) if value is not None else None

        detail = {
            "executionArn": execution.exec_arn,
            "stateMachineArn": execution.state_machine.arn,
            "name": execution.name,
            "status": execution.exec_status.value,
            "startDate": millis(execution.start_date),
            "stopDate": millis(getattr(execution, "stop_date", None)),
            "input": execution.input_data
            if isinstance(execution.input_data, str)
            else json.dumps(execution.input_data),
            "output": json.dumps(execution.output) if getattr(execution, "output", None) is not None else None,
            "error": getattr(execution, "error", None),
            "cause": getattr(execution, "cause", None),
        }

        boto3.client("events", region_name=self.region).put_events(
            Entries=[
                {
                    "Source": "aws.states",
                    "DetailType": "Step Functions Execution Status Change",
                    "Resources": [execution.exec_arn],
                    "Detail": json.dumps(detail, default=str),
                }
            ]
        )

    def put_execution_metrics(self, execution: Any) -> None:
        """The metrics Step Functions publishes when an execution ends ("Monitoring Step Functions metrics using
        CloudWatch": namespace AWS/States, dimension StateMachineArn): one of ExecutionsSucceeded / ExecutionsFailed /
        ExecutionsTimedOut / ExecutionsAborted with value 1 (Count), and ExecutionTime (Milliseconds, start to stop).
        Put through the CloudWatch backend, whose PutMetricData the alarm bridge evaluates alarms after."""
        status = execution.exec_status.value
        if status not in EXECUTION_METRICS:
            return
        dimensions = [{"Name": "StateMachineArn", "Value": execution.state_machine.arn}]
        data = [{"MetricName": EXECUTION_METRICS[status], "Value": 1.0, "Unit": "Count", "Dimensions": dimensions}]
        started, stopped = execution.start_date, getattr(execution, "stop_date", None)
        if started is not None and stopped is not None:
            milliseconds = (utc(stopped) - utc(started)).total_seconds() * 1000
            data.append(
                {"MetricName": "ExecutionTime", "Value": milliseconds, "Unit": "Milliseconds", "Dimensions": dimensions}
            )
        cloudwatch_backends[self.account][self.region].put_metric_data("AWS/States", data)

    def advance_clock(self, execution_arn: str, seconds: float) -> None:
        """Let `seconds` more pass for an execution than the wall clock says (Waits do not sleep here)."""
        self.clock_advance[execution_arn] = self.clock_advance.get(execution_arn, 0.0) + seconds

    def check_execution_timeout(self, env: Any, context: dict[str, Any]) -> None:
        """An execution whose elapsed time (wall time since its first Wait plus what was advanced) passes the state
        machine's TimeoutSeconds ends TIMED_OUT, as on AWS (moto counts wall time only, and Waits do not sleep)."""
        execution_arn = context.get("Execution", {}).get("Id")
        machine_arn = context.get("StateMachine", {}).get("Id")
        if not execution_arn or not machine_arn:
            return
        if machine_arn not in self.execution_timeouts:
            definition = boto3.client("stepfunctions", region_name=self.region).describe_state_machine(
                stateMachineArn=machine_arn
            )["definition"]
            self.execution_timeouts[machine_arn] = json.loads(definition).get("TimeoutSeconds")
        timeout = self.execution_timeouts[machine_arn]
        started = self.execution_clock.setdefault(execution_arn, time.monotonic())
        if timeout and time.monotonic() - started + self.clock_advance.get(execution_arn, 0.0) > timeout:
            env.set_timed_out()

    def start_execution(self, state_machine_arn: str, name: str, payload: str) -> str:
        arn = state_machine_arn.split(":")
        backend = stepfunctions_backend(arn[4], arn[3])
        execution = backend.start_execution(state_machine_arn, name=name, execution_input=payload)
        self.log(f"local: started {name}")
        return execution.execution_arn
