"""`refit local up`: the embedded local AWS served over HTTP on 127.0.0.1, for any client in any process.

The synthesized stack is stood up by `LocalRuntime` (same stand-up, bridges and IAM as the tests) and moto's server
application (the one `ThreadedMotoServer` runs) answers HTTP requests in this process, so requests from the AWS CLI,
boto3 in another process or `refit` commands reach the same in-process backends the bridges patch: a PutObject under
a new-data prefix starts a run, an InvokeEndpoint is routed to the real serve processes, and so on.

Outside clients are not authorized by the local IAM: their requests do not pass through an in-process botocore
client, and they stand for a person's own credentials, which on AWS are the account administrator's. The roles of
the stack (Lambdas, training jobs, endpoints, the state machines' SDK tasks) stay authorized as in the tests.

The stack's outputs are also a CloudFormation stack record (`describe-stacks` on the project's stack name, as after
`cdk deploy`) and a JSON file in the workdir (`outputs.json`).
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TextIO

import boto3
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from refit_core.config import ConfigError, load_config
from werkzeug.serving import BaseWSGIServer, make_server

from scripts.local_aws.cloud_assembly import CloudAssembly
from scripts.local_aws.limits import RequestLimits
from scripts.local_aws.runtime import LocalRuntime, synthesize

HOST = "127.0.0.1"
DEFAULT_PORT = 4566
READY_LINE = "refit local: ready"
OUTPUTS_FILE = "outputs.json"
ALARM_PERIOD_SECONDS = 60  # CloudWatch evaluates a metric alarm each period; here every minute, for time passing
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}


class PortBusy(Exception):
    """The port is taken (another `refit local up`, or another server)."""


def bind(port: int) -> BaseWSGIServer:
    """moto's server application on HOST:port, bound and listening but not serving yet: a client that connects before
    the stack is up waits in the backlog. Raises PortBusy when the port is taken (the socket is bound here: werkzeug
    would print two lines and exit)."""
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug's own bind
    try:
        listening.bind((HOST, port))
        listening.listen(128)
    except OSError as error:
        listening.close()
        raise PortBusy(
            f"port {port} on {HOST} is in use ({error.strerror}): stop the other `refit local up` "
            f"(or whatever listens there) or pass --port with a free port"
        ) from None
    with listening:  # werkzeug serves a duplicate of the descriptor
        return make_server(
            HOST,
            port,
            RequestLimits(DomainDispatcherApplication(create_backend_app)),
            True,
            request_handler=MotoRequestHandler,
            fd=listening.fileno(),
        )


def client_environment(port: int, region: str) -> dict[str, str]:
    """What a client exports to talk to the server (botocore and the AWS CLI read AWS_ENDPOINT_URL)."""
    return {"AWS_ENDPOINT_URL": f"http://{HOST}:{port}", "AWS_DEFAULT_REGION": region, **DUMMY_CREDENTIALS}


def publish_stack_record(runtime: LocalRuntime) -> str:
    """A CloudFormation stack named as the deployed one, whose outputs are the stood-up stack's: `describe-stacks`
    answers every client as after `cdk deploy` (the resources themselves were created by the stand-up)."""
    template = {
        "Resources": {"LocalRuntime": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {key: {"Value": value} for key, value in runtime.outputs.items()},
    }
    with warnings.catch_warnings():  # moto says it does not model the placeholder resource: it needs none
        warnings.simplefilter("ignore", UserWarning)
        return boto3.client("cloudformation", region_name=runtime.region).create_stack(
            StackName=runtime.assembly.stack_name, TemplateBody=json.dumps(template)
        )["StackId"]


def evaluate_alarms(runtime: LocalRuntime, out: TextIO) -> None:
    """The alarms' evaluation as time passes without data (PutMetricData already evaluates the alarms it touches)."""
    try:
        runtime.evaluate_alarms()
    except Exception as error:  # a failed evaluation is reported, never ends the server
        print(f"refit local: alarm evaluation failed: {type(error).__name__}: {error}", file=out, flush=True)


def describe(runtime: LocalRuntime, port: int, outputs_path: Path) -> str:
    """The lines printed once the server answers: endpoint, environment, the stack's outputs, how to stop."""
    environment = client_environment(port, runtime.region)
    width = max(map(len, runtime.outputs))
    lines = [
        f"{READY_LINE} on http://{HOST}:{port} (stack {runtime.assembly.stack_name}, region {runtime.region})",
        "environment for any client (AWS CLI, boto3, refit commands), to paste into its shell:",
        *(f"  export {key}={value}" for key, value in environment.items()),
        "stack outputs (also `aws cloudformation describe-stacks`, and " + str(outputs_path) + "):",
        *(f"  {key:<{width}} {value}" for key, value in sorted(runtime.outputs.items())),
        "state lives only as long as this process; Ctrl-C stops it",
    ]
    return "\n".join(lines)


def local_up(
    *,
    port: int = DEFAULT_PORT,
    config: Path | None = None,
    workdir: Path,
    assembly: Path | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    stop: threading.Event | None = None,
) -> int:
    """Stand the stack up and serve it until SIGINT/SIGTERM (or `stop` is set); returns the exit code. `assembly`: a
    cloud assembly synthesized already (`cdk synth`'s cdk.out), stood up as it is instead of synthesizing `config`."""
    try:
        if assembly is not None:
            CloudAssembly.load(assembly)  # no assembly there is one line here, not a traceback from the stand-up
        elif config is not None:
            load_config(config)  # a configuration error is one line here, not a synthesis traceback
        server = bind(port)
    except (PortBusy, ConfigError, OSError, ValueError) as error:
        print(f"refit: {error}", file=err)
        return 1
    stop = stop or threading.Event()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request; the Lambdas log to the workdir
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, lambda *_: stop.set())
    workdir = Path(workdir).resolve()
    try:
        if assembly is not None:
            print(f"refit local: using the synthesized assembly {assembly}", file=out, flush=True)
        else:
            print(
                f"refit local: synthesizing {config or 'refit.toml'} into {workdir / 'cdk.out'}", file=out, flush=True
            )
            try:
                assembly = synthesize(workdir / "cdk.out", config)
            except RuntimeError as error:
                print(f"refit: {str(error).strip().splitlines()[-1]} (synthesis of {config})", file=err)
                return 1
        if stop.is_set():
            return 0
        print("refit local: standing the stack up", file=out, flush=True)
        with LocalRuntime(
            assembly, workdir / "runtime", log=lambda message: print(message, file=out, flush=True)
        ) as aws:
            publish_stack_record(aws)
            outputs_path = workdir / OUTPUTS_FILE
            outputs_path.write_text(
                json.dumps(
                    {
                        "stack": aws.assembly.stack_name,
                        "environment": client_environment(port, aws.region),
                        "outputs": aws.outputs,
                    },
                    indent=1,
                )
            )
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="moto-server")
            thread.start()
            try:
                print(describe(aws, port, outputs_path), file=out, flush=True)
                evaluated = time.monotonic()
                while not stop.wait(0.5):
                    if time.monotonic() - evaluated >= ALARM_PERIOD_SECONDS:
                        evaluated = time.monotonic()
                        evaluate_alarms(aws, out)
                print("refit local: stopping (running executions, training, serve processes)", file=out, flush=True)
            finally:
                server.shutdown()
                thread.join()
        print("refit local: stopped", file=out, flush=True)
        return 0
    finally:
        server.server_close()
        for number, handler in previous.items():
            signal.signal(number, handler)
