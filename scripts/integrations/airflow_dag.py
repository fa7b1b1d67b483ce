"""An Airflow DAG that starts a refit retraining run and waits for it, with the Amazon provider's own Step Functions
operator and sensor.

    build_input  ->  start_run (StepFunctionStartExecutionOperator)  ->  wait_for_run (StepFunctionExecutionSensor)

`build_input` turns the DAG run's params into the manual input of README "Starting a run by hand" (`data_uri`,
`force`, `reason`, `requested_by`; unset ones are left out, so the run picks its batch as a manual run does; a conf
key the DAG does not declare is passed on, for refit to refuse) and names the execution after the DAG run
(`airflow-<run id>`): a retried `start_run` asks Step Functions for the same execution, never a second run. `requested_by` defaults to the ARN of the identity the AWS connection signs with
(STS GetCallerIdentity), as `refit trigger` records its caller's. `start_run` starts the model's state machine with
that input; `wait_for_run` polls DescribeExecution until the run ends and fails when it ended FAILED, TIMED_OUT or
ABORTED, so a failed run fails the DAG run. refit validates the input itself: a wrong field fails the run at its
first state with a message naming the field, and that failed run fails the DAG run too.

The state machine is the `state_machine_arn` param (one state machine per model): `refit status MODEL --json` prints
it (`state_machine_arn`, found in the stack's outputs as every refit command finds it). Copy this file into your
DAGs folder with `apache-airflow-providers-amazon` installed (scripts/integrations/airflow-constraints.txt pins a
tested set: Airflow 3.3.2, provider 9.39.0) and an AWS connection (`aws_default`) that may call
states:StartExecution and states:DescribeExecution on the model's state machine, and sts:GetCallerIdentity. Nothing
from refit is imported: the DAG needs only Airflow and the provider.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.providers.amazon.aws.operators.step_function import StepFunctionStartExecutionOperator
from airflow.providers.amazon.aws.sensors.step_function import StepFunctionExecutionSensor
from airflow.sdk import DAG, Param, get_current_context, task

DAG_ID = "refit_retrain"
AWS_CONN_ID = "aws_default"
POKE_SECONDS = 60  # DescribeExecution once a minute; Step Functions bills state transitions, not reads
RUN_TIMEOUT = timedelta(hours=25)  # the state machine times a run out after 24 h (its TimeoutSeconds)
MANUAL_FIELDS = ("data_uri", "force", "reason", "requested_by")  # README "Starting a run by hand"
EXECUTION_NAME_LIMIT = 80  # Step Functions execution names: at most 80 characters of [A-Za-z0-9_-]


def execution_name(run_id: str) -> str:
    """The execution's name for DAG run `run_id`: `airflow-<run id>` with the characters Step Functions refuses in a
    name (such as `:` and `+` in Airflow's run ids) replaced by `-`."""
    return ("airflow-" + re.sub(r"[^A-Za-z0-9_-]", "-", run_id))[:EXECUTION_NAME_LIMIT]


def manual_input(params: dict[str, Any], conf: dict[str, Any], declared: set[str]) -> dict[str, Any]:
    """The manual run's input: the fields of README "Starting a run by hand" that are set in the DAG run's `params`,
    and any key of the DAG run's `conf` that is not one of the DAG's `declared` params (a typo such as `forse`), passed
    on so that the run's own validation refuses it, naming the field, instead of the DAG dropping it silently."""
    payload = {field: params[field] for field in MANUAL_FIELDS if params.get(field) is not None}
    payload.update({key: value for key, value in conf.items() if key not in declared})
    return payload


def build_dag(
    dag_id: str = DAG_ID,
    state_machine_arn: str | None = None,
    schedule: Any = None,
    aws_conn_id: str = AWS_CONN_ID,
    poke_seconds: float = POKE_SECONDS,
    run_timeout: timedelta = RUN_TIMEOUT,
) -> DAG:
    """The DAG: each DAG run retrains the model whose state machine the `state_machine_arn` param names (no default
    unless `state_machine_arn` is given here). Unscheduled unless `schedule` is given (any Airflow schedule, e.g.
    "@weekly"); a scheduled run needs the default ARN."""
    params = {
        "state_machine_arn": Param(
            *([state_machine_arn] if state_machine_arn else []),  # no default: each DAG run must name one
            type="string",
            pattern=r"^arn:aws[a-z-]*:states:[a-z0-9-]+:[0-9]{12}:stateMachine:[A-Za-z0-9_-]+$",
            description="the model's refit state machine (refit status MODEL --json: state_machine_arn)",
        ),
        "data_uri": Param(
            None,
            type=["null", "string"],
            description="s3:// URI of the batch, under the model's new-data prefix (default: as a manual run picks)",
        ),
        "force": Param(False, type="boolean", description="retrain even when no drift is found"),
        "reason": Param("Airflow DAG run", type="string", description="why; recorded in the audit record"),
        "requested_by": Param(
            None,
            type=["null", "string"],
            description="who asks (default: the ARN the AWS connection signs with)",
        ),
    }
    declared = set(params)
    with DAG(
        dag_id=dag_id,
        schedule=schedule,
        catchup=False,
        max_active_runs=1,  # one refit run per model at a time: a second would end SKIPPED, its batch queued
        tags=["refit"],
        doc_md=__doc__,
        params=params,
    ) as dag:

        @task(multiple_outputs=True)
        def build_input() -> dict[str, Any]:
            context = get_current_context()
            payload = manual_input(context["params"], context["dag_run"].conf or {}, declared)
            if "requested_by" not in payload:
                sts = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="sts").get_conn()
                payload["requested_by"] = sts.get_caller_identity()["Arn"]
            return {"name": execution_name(context["run_id"]), "input": payload}

        run = build_input()
        start_run = StepFunctionStartExecutionOperator(
            task_id="start_run",
            aws_conn_id=aws_conn_id,
            state_machine_arn="{{ params.state_machine_arn }}",
            name=run["name"],
            state_machine_input=run["input"],
        )
        StepFunctionExecutionSensor(
            task_id="wait_for_run",
            aws_conn_id=aws_conn_id,
            execution_arn=start_run.output,
            mode="reschedule",  # no worker slot held while the run trains
            poke_interval=poke_seconds,
            timeout=run_timeout,
        )
    return dag


dag = build_dag()
