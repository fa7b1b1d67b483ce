"""The embedded local AWS: the synthesized refit stack, stood up in moto in-process and made to behave.

    with LocalRuntime(cloud_assembly_dir, workdir) as aws:
        aws.put_object(aws.data_bucket, "incoming/churn/batch.csv", body)   # S3 event starts a run
        execution = aws.wait_for(aws.latest_execution("churn"))

Nothing in functions/, stacks/ or training_container/ knows it runs here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer
from moto import mock_aws
from refit_core import names

from scripts.local_aws.bridges import Bridges, TrainingOutcome
from scripts.local_aws.cloud_assembly import CloudAssembly
from scripts.local_aws.cloud_assembly import synthesize as synthesize  # re-exported: tests and the CLI import it here
from scripts.local_aws.function_urls import FunctionUrls
from scripts.local_aws.iam import LocalIam, role_policies
from scripts.local_aws.limits import enforce_aws_rules
from scripts.local_aws.standup import StandUp

ACCOUNT = "123456789012"
TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}
HISTORY_POLL_SECONDS = 0.5  # wait_for's history reads; a state's printed time comes from its event's timestamp


class ModelHandles:
    """A model's resources in the stood-up stack, named by refit_core.names from the stack's Project output."""

    def __init__(self, name: str, outputs: dict[str, str]) -> None:
        prefix = names.model_prefix(outputs["Project"], name)
        self.name = name
        self.state_machine_arn = next(
            (v for k, v in outputs.items() if "StateMachineArn" in k and v.endswith(f":stateMachine:{prefix}")), None
        )
        if self.state_machine_arn is None or prefix not in outputs.values():
            raise KeyError(f"model {name!r}: no state machine or endpoint named {prefix!r} in the stack's outputs")
        self.endpoint_name = prefix
        self.canary_alarm = names.alarm_name(prefix, "canary")
        self.quality_alarm = names.alarm_name(prefix, "quality")
        self.runs_failed_alarm = names.alarm_name(prefix, "runs-failed")
        self.package_group = prefix
        self.new_data_prefix = f"incoming/{name}/"


class LocalRuntime:
    def __init__(
        self,
        cloud_assembly: str | Path,
        workdir: str | Path,
        *,
        region: str = "us-east-1",
        spot_discount: float = 0.0,
        seed: int = 0,
        log: Callable[[str], None] | None = None,
        enforce_iam: bool = True,
    ) -> None:
        self.assembly = CloudAssembly.load(cloud_assembly)
        self.iam = LocalIam(ACCOUNT) if enforce_iam else None
        self.workdir = Path(workdir)
        self.region = region
        self.spot_discount = spot_discount
        self.seed = seed
        self.log = log or (lambda message: None)
        self._mock = None
        self._saved_env: dict[str, str | None] = {}
        self.bridges: Bridges | None = None
        self._clients: dict[str, Any] = {}

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> LocalRuntime:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for key, value in {
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "MOTO_LAMBDA_STUB_ECR": "true",
        }.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        # A shell that exported a client's settings for `refit local up` must not send this process's own (mocked)
        # clients to an endpoint or a profile: they talk to the in-process backends.
        for key in [
            k for k in os.environ if k.startswith("AWS_ENDPOINT_URL") or k in ("AWS_PROFILE", "AWS_SESSION_TOKEN")
        ]:
            self._saved_env[key] = os.environ.pop(key)
        logging.getLogger("moto").setLevel(logging.CRITICAL)  # the interpreter logs every caught error at ERROR
        self._mock = mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": True}})
        self._mock.start()
        self._limits = enforce_aws_rules()
        self._limits.__enter__()
        # Function URLs are served on 127.0.0.1 from the moment the stand-up creates them (their URLs are outputs).
        host = boto3.client("sts", region_name=self.region).get_caller_identity()["Arn"]
        self.function_urls = FunctionUrls(
            ACCOUNT, self.region, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], host
        )
        self.function_urls.install()
        try:
            self.stack = StandUp(self.assembly, ACCOUNT, self.region).run()
            if self.iam is not None:
                self.iam.policies = role_policies(
                    self.assembly.template,
                    self.stack.resolver.resolve,
                    lambda logical: self.stack.resolver.get_att(logical, "Arn"),
                )
            training_image = next(
                image
                for image in self.assembly.assets.get("dockerImages", {}).values()
                if image["source"].get("dockerFile") == "training_container/Dockerfile"
            )
            self.bridges = Bridges(
                account=ACCOUNT,
                region=self.region,
                functions=self.stack.functions,
                training_asset=self.assembly.directory / training_image["source"]["directory"],
                workdir=self.workdir,
                spot_discount=self.spot_discount,
                seed=self.seed,
                log=self.log,
                iam=self.iam,
            )
            self.bridges.install()
            self.function_urls.connect(self.bridges.invoke_lambda, self.iam)
            if self.iam is not None:
                self.iam.install()
        except Exception:
            self.function_urls.uninstall()
            if self.iam is not None:
                self.iam.uninstall()
            self._limits.__exit__(None, None, None)
            self._mock.stop()
            raise
        self.outputs = self.stack.outputs
        self.data_bucket = self.outputs["DataBucket"]
        self.artifact_bucket = self.outputs["ArtifactBucket"]
        self.audit_table = self.outputs["AuditTable"]
        self.topic_arn = self.outputs["SummaryTopic"]
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._stop_running_executions()
            if self.bridges is not None:
                self.bridges.flush_capture()  # written while the roles' policies still apply
        finally:
            self.function_urls.uninstall()
            if self.iam is not None:
                self.iam.uninstall()
            if self.bridges is not None:
                self.bridges.uninstall()
            self._limits.__exit__(None, None, None)
            self._mock.stop()
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def _stop_running_executions(self) -> None:
        sfn = self.client("stepfunctions")
        for machine in sfn.list_state_machines()["stateMachines"]:
            for execution in sfn.list_executions(stateMachineArn=machine["stateMachineArn"], statusFilter="RUNNING")[
                "executions"
            ]:
                sfn.stop_execution(executionArn=execution["executionArn"], cause="local runtime shutting down")
        time.sleep(0.05)

    # ---------------------------------------------------------------- access
    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = boto3.client(service, region_name=self.region)
        return self._clients[service]

    def model(self, name: str) -> ModelHandles:
        return ModelHandles(name, self.outputs)

    # ---------------------------------------------------------------- triggers
    def put_object(self, bucket: str, key: str, body: bytes) -> None:
        """A plain PutObject; for the data bucket's new-data prefix this delivers S3 -> EventBridge -> a run."""
        self.client("s3").put_object(Bucket=bucket, Key=key, Body=body)

    def land_batch(self, model: str, name: str, body: bytes, timeout: float = 10) -> str:
        """Put a batch under the model's new-data prefix and return the execution its S3 event started."""
        handles = self.model(model)
        before = {e["executionArn"] for e in self.executions(model)}
        self.put_object(self.data_bucket, f"{handles.new_data_prefix}{name}", body)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = [e for e in self.executions(model) if e["executionArn"] not in before]
            if started:
                return started[0]["executionArn"]
            time.sleep(0.05)
        raise TimeoutError(f"no run started for s3://{self.data_bucket}/{handles.new_data_prefix}{name}")

    def start_run(self, model: str, payload: Any, name: str | None = None) -> str:
        """A manual StartExecution with the documented input."""
        name = name or f"manual-{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(3).hex()}"
        return self.client("stepfunctions").start_execution(
            stateMachineArn=self.model(model).state_machine_arn,
            name=name,
            input=payload if isinstance(payload, str) else json.dumps(payload),
        )["executionArn"]

    def fire_schedule(self, model: str) -> str:
        """Deliver the model's schedule rule once (moto never fires schedules)."""
        handles = self.model(model)
        event = self._scheduled_event(handles.state_machine_arn)
        return self.bridges.start_execution(
            handles.state_machine_arn, f"schedule-{os.urandom(6).hex()}", json.dumps(event)
        )

    def _scheduled_event(self, target_arn: str) -> dict[str, Any]:
        """The 'Scheduled Event' EventBridge delivers to a schedule rule's target (the rule found by its target)."""
        rule = next(
            (
                r
                for r in self.stack.rules.values()
                if r["schedule"] and any(t["Arn"] == target_arn for t in r["targets"])
            ),
            None,
        )
        return {
            "version": "0",
            "id": os.urandom(8).hex(),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": ACCOUNT,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "region": self.region,
            "resources": [rule["arn"]] if rule else [],
            "detail": {},
        }

    def set_alarm_state(self, alarm_name: str, state: str, reason: str = "set by the local runtime") -> None:
        """SetAlarmState: change an alarm's state and, when it changed, emit the 'CloudWatch Alarm State Change' event
        AWS would emit. As on AWS, the state lasts until the alarm is next evaluated (here: the next PutMetricData
        on its metric, or `evaluate_alarms`)."""
        self.bridges.set_alarm_state(alarm_name, state, reason)

    def evaluate_alarms(self, now: datetime | None = None) -> list[tuple[str, str]]:
        """Evaluate every metric alarm at `now` (the wall clock by default), as CloudWatch does each period, and
        return (alarm, new state) for those that changed (each with its state-change event). PutMetricData already
        evaluates the alarms on the metric it touched; this is for time passing without data (missing data)."""
        return self.bridges.evaluate_alarms(now=now)

    def flush_capture(self) -> list[str]:
        """Write every buffered Data Capture record now (the endpoint writes a file per 100 records or after 1 s)
        and return the s3:// URIs of the files written."""
        return self.bridges.flush_capture()

    def on_wait(self, state_name: str, hook: Callable[[str, int], None] | None) -> None:
        """Run `hook(state, seconds)` when a Wait state of that name is entered (Waits do not sleep here)."""
        if hook is None:
            self.bridges.wait_hooks.pop(state_name, None)
        else:
            self.bridges.wait_hooks[state_name] = hook

    def advance_clock(self, execution_arn: str, seconds: float) -> None:
        """Let an execution's clock run `seconds` ahead of the wall clock (Waits do not sleep here): an execution
        whose time passes its TimeoutSeconds ends TIMED_OUT at its next Wait, as it would on AWS."""
        self.bridges.advance_clock(execution_arn, seconds)

    def next_training_outcome(self, kind: str, message: str = "", after_folds: int = 0) -> None:
        """Simulate what SageMaker can do to the next training job: 'internal_error'; 'interrupt' (SIGTERM once
        `after_folds` folds are checkpointed, then a restart on the same checkpoints); 'capacity' (no spot capacity:
        MaxWaitTimeExceeded, at once or after an interruption at `after_folds`)."""
        self.bridges.training_outcomes.append(TrainingOutcome(kind, message, after_folds))

    # ---------------------------------------------------------------- reading
    def executions(self, model: str) -> list[dict[str, Any]]:
        return self.client("stepfunctions").list_executions(stateMachineArn=self.model(model).state_machine_arn)[
            "executions"
        ]

    def wait_for(
        self, execution_arn: str, timeout: float = 300, on_state: Callable[[str, dict], None] | None = None
    ) -> dict[str, Any]:
        """Poll an execution until it ends and return its description; `on_state(name, event)` is called for each
        state entered, in order. DescribeExecution is polled often (it is cheap); the history, which moto serializes
        whole on every call, at most every HISTORY_POLL_SECONDS and once at the end (each event carries its own
        timestamp)."""
        sfn = self.client("stepfunctions")
        seen = 0
        deadline = time.monotonic() + timeout
        next_history = 0.0
        while True:
            description = sfn.describe_execution(executionArn=execution_arn)
            ended = description["status"] in TERMINAL
            if on_state is not None and (ended or time.monotonic() >= next_history):
                events = sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
                for event in events[seen:]:
                    if event["type"].endswith("StateEntered"):
                        on_state(event["stateEnteredEventDetails"]["name"], event)
                seen = len(events)
                next_history = time.monotonic() + HISTORY_POLL_SECONDS
            if ended:
                return description
            if time.monotonic() > deadline:
                sfn.stop_execution(executionArn=execution_arn, cause="local wait timed out")
                raise TimeoutError(f"{execution_arn} still running after {timeout} s")
            time.sleep(0.05)

    def output(self, execution: dict[str, Any]) -> dict[str, Any]:
        return json.loads(execution.get("output") or "{}")

    def audit_records(self, model: str) -> list[dict[str, Any]]:
        deserializer = TypeDeserializer()
        items = self.client("dynamodb").query(
            TableName=self.audit_table,
            KeyConditionExpression="pk = :m AND begins_with(sk, :r)",
            ExpressionAttributeValues={":m": {"S": model}, ":r": {"S": "run#"}},
        )["Items"]
        return [{k: deserializer.deserialize(v) for k, v in item.items()} for item in items]

    def published_summaries(self) -> list[dict[str, Any]]:
        """Messages published to the run-summary topic (moto keeps what was sent)."""
        from moto.sns.models import sns_backends

        topic = sns_backends[ACCOUNT][self.region].topics[self.topic_arn]
        return [{"subject": m[2] if len(m) > 2 else None, "message": m[1]} for m in topic.sent_notifications]

    def fail_endpoint_update(
        self, model: str, config_name: str | None = None, status: str = "Failed", reason: str | None = None
    ) -> None:
        """Make the next UpdateEndpoint of the model's endpoint (to `config_name`, or to any config) end in `status`
        (`Failed` or `UpdateRollbackFailed`) without taking the new config, as a SageMaker update that fails."""
        self.bridges.fail_endpoint_update(self.model(model).endpoint_name, config_name, status, reason)

    def endpoint_weights(self, model: str) -> dict[str, float]:
        endpoint = self.client("sagemaker").describe_endpoint(EndpointName=self.model(model).endpoint_name)
        return {v["VariantName"]: float(v.get("CurrentWeight", 0.0)) for v in endpoint["ProductionVariants"]}

    def invoke_endpoint(
        self,
        model: str,
        body: str,
        content_type: str = "text/csv",
        accept: str = "application/json",
        target_variant: str | None = None,
        inference_id: str | None = None,
    ) -> dict[str, Any]:
        """InvokeEndpoint on the model's endpoint; `inference_id` is InvokeEndpoint's InferenceId (1-64 printable
        characters), recorded in the request's Data Capture record so labels can be joined to it later."""
        arguments = {
            "EndpointName": self.model(model).endpoint_name,
            "Body": body,
            "ContentType": content_type,
            "Accept": accept,
        }
        if target_variant:
            arguments["TargetVariant"] = target_variant
        if inference_id is not None:
            arguments["InferenceId"] = inference_id
        response = self.client("sagemaker-runtime").invoke_endpoint(**arguments)
        return {
            "variant": response.get("InvokedProductionVariant"),
            "body": response["Body"].read(),
            "inference_id": inference_id,
        }

    def run_monitor(self, model: str) -> dict[str, Any]:
        """Deliver the model's monitor schedule once (moto never fires schedules) and wait for the monitor Lambda;
        returns its result. EventBridge invokes it asynchronously on AWS; here the caller waits, which is all the
        difference. A monitor that failed raises with the Lambda's error."""
        service = f"refit-{model}-monitor"
        function = next(
            f for f in self.stack.functions.values() if f.environment.get("POWERTOOLS_SERVICE_NAME") == service
        )
        event = self._scheduled_event(function.arn)
        headers: dict[str, str] = {}
        result = json.loads(self.bridges.invoke_lambda(function.name, json.dumps(event), headers))
        if headers.get("x-amz-function-error"):
            raise RuntimeError(
                f"the monitor of {model} failed: {result.get('errorType')}: {result.get('errorMessage')}"
            )
        return result

    def read_s3(self, uri: str) -> bytes:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return self.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
