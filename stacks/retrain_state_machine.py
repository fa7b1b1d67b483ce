"""The retrain run as a Step Functions state machine.

Only constructs that both AWS and the local interpreter execute the same way: Lambda tasks, Pass,
Choice on plain paths, Wait, Fail/Succeed, and Catch into the one Finalize state, so every run ends
with an audit record. SageMaker `.sync` integrations are avoided on purpose: training and endpoint
changes are polled by Lambdas with Wait loops.
"""

from __future__ import annotations

from collections.abc import Callable

from aws_cdk import Duration
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct
from refit_core.config import ENDPOINT_POLL_SECONDS, TRAINING_POLL_SECONDS, ModelConfig

from stacks.retrain_functions import RetrainFunctions

ALL_ERRORS = ["States.ALL"]


class RetrainStateMachine(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        model: ModelConfig,
        functions: RetrainFunctions,
        state_machine_name: str,
        log_group: logs.ILogGroup,
    ) -> None:
        super().__init__(scope, construct_id)
        self.state_machine_name = state_machine_name
        fn = functions.functions

        def invoke(name: str, function: str, payload: dict, result_path: str) -> tasks.LambdaInvoke:
            return tasks.LambdaInvoke(
                self,
                name,
                lambda_function=fn[function],
                payload=sfn.TaskInput.from_object(payload),
                payload_response_only=True,
                result_path=result_path,
                retry_on_service_exceptions=True,
            )

        finalize = invoke(
            "Finalize",
            "Finalize",
            {
                "state.$": "$",
                "execution_name.$": "$$.Execution.Name",
                "execution_started_at.$": "$$.Execution.StartTime",
            },
            "$.final",
        )
        run_failed = sfn.Fail(
            self, "Run failed", error="RefitRunFailed", cause="See the run's audit record and summary"
        )
        run_status = (
            sfn.Choice(self, "Run status?")
            .when(sfn.Condition.string_equals("$.final.status", "FAILED"), run_failed)
            .otherwise(sfn.Succeed(self, "Run finished"))
        )
        if "MlflowSync" in fn:
            # `[mlflow]`: after the record is stored and the lock released; it never fails, and were it to, the Catch
            # ends the run as Finalize recorded it.
            log_to_mlflow = invoke("Log to MLflow", "MlflowSync", {"audit_key.$": "$.final.audit_key"}, "$.mlflow")
            log_to_mlflow.add_catch(run_status, errors=ALL_ERRORS, result_path="$.mlflow_error")
            finalize.next(log_to_mlflow)
            log_to_mlflow.next(run_status)
        else:
            finalize.next(run_status)

        def catch_to(state: tasks.LambdaInvoke, handler: sfn.IChainable) -> tasks.LambdaInvoke:
            state.add_catch(handler, errors=ALL_ERRORS, result_path="$.error")
            return state

        prepare = catch_to(
            invoke("Prepare", "Prepare", {"payload.$": "$.input", "execution_name.$": "$$.Execution.Name"}, "$.run"),
            finalize,
        )
        keep_run = sfn.Pass(self, "Keep run context", parameters={"run.$": "$.run"})
        check = catch_to(
            invoke(
                "Check batch",
                "CheckBatch",
                {
                    "run_id.$": "$.run.run_id",
                    "data_uri.$": "$.run.data_uri",
                    "force.$": "$.run.force",
                    "no_data.$": "$.run.no_data",
                    "settled_by.$": "$.run.settled_by",
                },
                "$.check",
            ),
            finalize,
        )

        def training_loop(
            on_error: sfn.IChainable, on_refused: sfn.IChainable, family_path: str | None
        ) -> tuple[sfn.IChainable, sfn.Choice]:
            """Start a spot job, poll it, fall back to on-demand on capacity errors. Returns the first state and the
            choice whose `done` and `failed` branches the caller wires. With `family_path` (parallel candidates) the
            job trains that family alone, with its own checkpoints."""
            family = {"family.$": family_path} if family_path else {}
            start_spot = catch_to(
                invoke(
                    "Start training",
                    "StartTraining",
                    {
                        "run_id.$": "$.run.run_id",
                        "data_uri.$": "$.check.data_uri",
                        "champion_model_uri.$": "$.check.champion_model_uri",
                        "champion_sha256.$": "$.check.champion_sha256",
                        "train_columns.$": "$.check.train_columns",
                        "attempt": 1,
                        "spot": True,
                        "started_at.$": "$.run.started_at",
                        "data_etag.$": "$.run.data_etag",
                        **family,
                    },
                    "$.training",
                ),
                on_error,
            )
            start_on_demand = catch_to(
                invoke(
                    "Start on-demand training",
                    "StartTraining",
                    {
                        "run_id.$": "$.run.run_id",
                        "data_uri.$": "$.check.data_uri",
                        "champion_model_uri.$": "$.check.champion_model_uri",
                        "champion_sha256.$": "$.check.champion_sha256",
                        "train_columns.$": "$.check.train_columns",
                        "attempt.$": "States.MathAdd($.training.attempt, 1)",
                        "spot": False,
                        "started_at.$": "$.run.started_at",
                        "data_etag.$": "$.run.data_etag",
                        **family,
                    },
                    "$.training",
                ),
                on_error,
            )
            wait_training = sfn.Wait(
                self, "Wait for training", time=sfn.WaitTime.duration(Duration.seconds(TRAINING_POLL_SECONDS))
            )
            poll_training = catch_to(
                invoke(
                    "Poll training",
                    "PollTraining",
                    {
                        "job_name.$": "$.training.job_name",
                        "attempt.$": "$.training.attempt",
                        "window.$": "$.training.window",
                    },
                    "$.training",
                ),
                on_error,
            )
            for start in (start_spot, start_on_demand):
                start.next(
                    sfn.Choice(self, f"Job started? ({start.id})")
                    .when(sfn.Condition.string_equals("$.training.next", "refused"), on_refused)
                    .otherwise(wait_training)
                )
            finished = (
                sfn.Choice(self, "Training finished?")
                .when(sfn.Condition.string_equals("$.training.next", "wait"), wait_training)
                .when(sfn.Condition.string_equals("$.training.next", "fallback"), start_on_demand)
            )
            wait_training.next(poll_training).next(finished)
            return start_spot, finished

        gate = catch_to(
            invoke(
                "Gate challenger",
                "Gate",
                {
                    "run_id.$": "$.run.run_id",
                    "job_name.$": "$.training.job_name",
                    "output_path.$": "$.training.output_path",
                    "model_data_url.$": "$.training.model_data_url",
                    "has_champion.$": "$.check.has_champion",
                },
                "$.gate",
            ),
            finalize,
        )
        register = catch_to(
            invoke(
                "Register challenger",
                "Register",
                {
                    "run_id.$": "$.run.run_id",
                    "trigger.$": "$.run.trigger",
                    "data_uri.$": "$.check.data_uri",
                    "job_name.$": "$.training.job_name",
                    "model_data_url.$": "$.training.model_data_url",
                    "gate.$": "$.gate",
                    "evaluation_uri.$": "$.gate.evaluation_uri",
                    "baseline_uri.$": "$.gate.baseline_uri",
                },
                "$.registry",
            ),
            finalize,
        )

        restore = invoke(
            "Restore endpoint",
            "Deploy",
            {"action": "restore", "previous_config.$": "$.check.champion_config"},
            "$.restore",
        )
        restore.add_catch(finalize, errors=ALL_ERRORS, result_path="$.restore_error")

        def rescale_after_restore(label: str) -> sfn.IChainable:
            """With autoscaling, a restore may follow an UpdateEndpoint that deregistered the champion's target: once
            the endpoint is InService on the restored config, the champion is registered again. Anything failing
            here goes to Finalize with the run's own error untouched (this loop writes only $.endpoint, $.scaling
            and $.restore_error)."""
            if model.deploy.capacity.autoscaling is None:
                return finalize
            wait = sfn.Wait(
                self,
                f"Wait for endpoint ({label})",
                time=sfn.WaitTime.duration(Duration.seconds(ENDPOINT_POLL_SECONDS)),
            )
            status = invoke(
                f"Endpoint status ({label})",
                "Deploy",
                {"action": "status", "expected_config.$": "$.restore.expected_config"},
                "$.endpoint",
            )
            status.add_catch(finalize, errors=ALL_ERRORS, result_path="$.restore_error")
            scale = invoke(f"Scale endpoint ({label})", "Deploy", {"action": "scale"}, "$.scaling")
            scale.add_catch(finalize, errors=ALL_ERRORS, result_path="$.restore_error")
            scale.next(finalize)
            wait.next(status).next(
                sfn.Choice(self, f"Endpoint ready? ({label})")
                .when(sfn.Condition.string_equals("$.endpoint.next", "wait"), wait)
                .when(sfn.Condition.string_equals("$.endpoint.next", "ready"), scale)
                .otherwise(finalize)
            )
            return (
                sfn.Choice(self, f"Endpoint kept? ({label})")
                .when(sfn.Condition.is_not_null("$.restore.expected_config"), wait)
                .otherwise(finalize)
            )

        restore.next(rescale_after_restore("restore"))

        def endpoint_wait_loop(
            label: str,
            expected_path: str,
            on_ready: sfn.IChainable,
            on_failure: sfn.IChainable = restore,
            challenger_weight_path: str | None = None,
            rescale: bool = True,
        ) -> sfn.Wait:
            wait = sfn.Wait(
                self,
                f"Wait for endpoint ({label})",
                time=sfn.WaitTime.duration(Duration.seconds(ENDPOINT_POLL_SECONDS)),
            )
            weight = {"challenger_weight.$": challenger_weight_path} if challenger_weight_path else {}
            status = catch_to(
                invoke(
                    f"Endpoint status ({label})",
                    "Deploy",
                    {"action": "status", "expected_config.$": expected_path, **weight},
                    "$.endpoint",
                ),
                on_failure,
            )
            if rescale and model.deploy.capacity.autoscaling is not None:
                # Every UpdateEndpoint deregistered the endpoint's scalable targets (refit_core.capacity): once
                # InService, the serving variant gets its target and policy again before the run goes on.
                scale = catch_to(
                    invoke(f"Scale endpoint ({label})", "Deploy", {"action": "scale"}, "$.scaling"), on_failure
                )
                scale.next(on_ready)
                on_ready = scale
            failed = sfn.Pass(
                self,
                f"Endpoint failed ({label})",
                parameters={"Error": "EndpointUpdateFailed", "Cause.$": "$.endpoint.reason"},
                result_path="$.error",
            ).next(on_failure)
            wait.next(status).next(
                sfn.Choice(self, f"Endpoint ready? ({label})")
                .when(sfn.Condition.string_equals("$.endpoint.next", "wait"), wait)
                .when(sfn.Condition.string_equals("$.endpoint.next", "failed"), failed)
                .otherwise(on_ready)
            )
            return wait

        def promote_or_roll_back() -> tuple[sfn.IChainable, sfn.IChainable]:
            """The challenger's promotion and the return to the champion alone, shared by the variants and shadow
            branches (only one of which is built)."""
            promote = catch_to(
                invoke(
                    "Promote challenger",
                    "Deploy",
                    {
                        "action": "promote",
                        "run_id.$": "$.run.run_id",
                        "challenger_model.$": "$.deploy.challenger_model",
                    },
                    "$.promotion",
                ),
                restore,
            )
            promote.next(endpoint_wait_loop("promotion", "$.promotion.expected_config", finalize))
            rollback = catch_to(
                invoke(
                    "Roll back canary",
                    "Deploy",
                    {"action": "rollback", "previous_config.$": "$.deploy.previous_config"},
                    "$.rollback",
                ),
                restore,
            )
            rollback.next(endpoint_wait_loop("rollback", "$.rollback.expected_config", finalize))
            return promote, rollback

        synthetic = model.deploy.synthetic_traffic

        def synthetic_top_up(check: sfn.IChainable, verdict_path: str, on_error: sfn.IChainable) -> sfn.IChainable:
            """deploy.synthetic_traffic: a quiet step is topped up once with requests replayed from the run's holdout
            rows, then judged again after the settle wait (the check decides `next` = synthetic, refit_core.synthetic).
            An error sending them ends the step as a quiet one: through the rollback."""
            send = catch_to(
                invoke(
                    "Send synthetic traffic",
                    "Deploy",
                    {
                        "action": "synthetic_traffic",
                        "run_id.$": "$.run.run_id",
                        "step.$": f"{verdict_path}.synthetic_step",
                        "requests.$": f"{verdict_path}.synthetic_requests",
                    },
                    "$.synthetic",
                ),
                on_error,
            )
            settle = sfn.Wait(
                self,
                "Settle synthetic traffic",
                time=sfn.WaitTime.duration(Duration.seconds(synthetic.settle_seconds)),
            )
            send.next(settle).next(check)
            return send

        def no_synthetic_yet(first: sfn.IChainable) -> sfn.IChainable:
            """The state before any top-up (`$.synthetic.step` -1), which every check reads; only with synthetic
            traffic enabled."""
            if not synthetic.enabled:
                return first
            return sfn.Pass(
                self,
                "No synthetic traffic yet",
                result=sfn.Result.from_object({"step": -1}),
                result_path="$.synthetic",
            ).next(first)

        synthetic_input = {"synthetic.$": "$.synthetic"} if synthetic.enabled else {}

        def variants_deploy() -> sfn.IChainable:
            """deploy.mode variants (the staged canary on a second production variant) and ab (a fixed split on the
            same two variants, _ab_test). Built only in those modes: Step Functions refuses a definition with states no
            path reaches."""
            promote, rollback = promote_or_roll_back()
            ab = model.deploy.mode == "ab"  # the A/B test's split on two variants, in place of the staged canary
            if ab:
                after_start = self._ab_test(model, invoke, catch_to, promote, rollback)
            else:
                # The staged canary: a loop over canary.steps. Each step bakes, is judged against the champion on the same
                # window (its verdict is appended to $.canary.steps), then shifts to the next share, promotes or rolls back.
                bake = sfn.Wait(
                    self, "Bake canary", time=sfn.WaitTime.duration(Duration.seconds(model.canary.bake_seconds))
                )
                start_canary = sfn.Pass(
                    self,
                    "Start canary",
                    result=sfn.Result.from_object(
                        {"healthy": False, "reason": "the first canary step has not been judged yet", "steps": []}
                    ),
                    result_path="$.canary",
                )
                check_canary = catch_to(
                    invoke(
                        "Check canary",
                        "Deploy",
                        {
                            "action": "check_canary",
                            "canary_started_at.$": "$.endpoint.canary_started_at",
                            "endpoint_weights.$": "$.endpoint.variants",
                            "history.$": "$.canary.steps",
                            "gate_uri.$": "$.gate.gate_uri",
                            **synthetic_input,
                        },
                        "$.canary",
                    ),
                    rollback,
                )
                shift = catch_to(
                    invoke("Shift canary", "Deploy", {"action": "shift", "step.$": "$.canary.next_step"}, "$.shift"),
                    rollback,
                )
                shift.next(
                    endpoint_wait_loop(
                        "canary step",
                        "$.shift.expected_config",
                        bake,
                        challenger_weight_path="$.shift.weight",
                        rescale=False,
                    )
                )
                start_canary.next(bake)
                canary_verdict = (
                    sfn.Choice(self, "Canary verdict?")
                    .when(sfn.Condition.string_equals("$.canary.next", "shift"), shift)
                    .when(sfn.Condition.string_equals("$.canary.next", "promote"), promote)
                )
                if synthetic.enabled:
                    canary_verdict.when(
                        sfn.Condition.string_equals("$.canary.next", "synthetic"),
                        synthetic_top_up(check_canary, "$.canary", rollback),
                    )
                bake.next(check_canary).next(canary_verdict.otherwise(rollback))
                after_start = no_synthetic_yet(start_canary)
            after_deploy = (
                sfn.Choice(self, "First deployment?")
                .when(sfn.Condition.string_equals("$.deploy.mode", "create"), finalize)
                .otherwise(after_start)
            )
            deploy = catch_to(
                invoke(
                    "Deploy challenger",
                    "Deploy",
                    {
                        "action": "start",
                        "run_id.$": "$.run.run_id",
                        "model_data_url.$": "$.training.model_data_url",
                        "model_package_arn.$": "$.registry.model_package_arn",
                        **({"challenger_share": model.deploy.ab.challenger_share} if ab else {}),
                    },
                    "$.deploy",
                ),
                restore,
            )
            deploy.next(
                endpoint_wait_loop(
                    "deploy", "$.deploy.expected_config", after_deploy, challenger_weight_path="$.deploy.canary_weight"
                )
            )
            return deploy

        def shadow_deploy() -> sfn.IChainable:
            """deploy.mode shadow (refit_core.shadow); built only in that mode."""
            promote, rollback = promote_or_roll_back()
            deploy = catch_to(
                invoke(
                    "Deploy shadow challenger",
                    "Deploy",
                    {
                        "action": "start_shadow",
                        "run_id.$": "$.run.run_id",
                        "model_data_url.$": "$.training.model_data_url",
                        "model_package_arn.$": "$.registry.model_package_arn",
                    },
                    "$.deploy",
                ),
                restore,
            )
            # deploy.mode = "shadow": the challenger receives copies for one bake, is judged against the champion on
            # the same window (refit_core.shadow), then promoted or dropped (the rollback to the champion alone).
            start_shadow = sfn.Pass(
                self,
                "Start shadow",
                result=sfn.Result.from_object({"healthy": False, "reason": "the shadow has not been judged yet"}),
                result_path="$.shadow",
            )
            check_shadow = catch_to(
                invoke(
                    "Check shadow",
                    "Deploy",
                    {
                        "action": "check_shadow",
                        "shadow_started_at.$": "$.endpoint.canary_started_at",
                        "gate_uri.$": "$.gate.gate_uri",
                        **synthetic_input,
                    },
                    "$.shadow",
                ),
                rollback,
            )
            start_shadow.next(
                sfn.Wait(
                    self,
                    "Bake shadow",
                    time=sfn.WaitTime.duration(Duration.seconds(model.deploy.shadow.bake_seconds)),
                )
            ).next(check_shadow)
            shadow_verdict = sfn.Choice(self, "Shadow verdict?").when(
                sfn.Condition.string_equals("$.shadow.next", "promote"), promote
            )
            if synthetic.enabled:
                shadow_verdict.when(
                    sfn.Condition.string_equals("$.shadow.next", "synthetic"),
                    synthetic_top_up(check_shadow, "$.shadow", rollback),
                )
            check_shadow.next(shadow_verdict.otherwise(rollback))
            deploy.next(
                endpoint_wait_loop(
                    "shadow",
                    "$.deploy.expected_config",
                    sfn.Choice(self, "First deployment? (shadow)")
                    .when(sfn.Condition.string_equals("$.deploy.mode", "create"), finalize)
                    .otherwise(no_synthetic_yet(start_shadow)),
                )
            )
            return deploy

        if model.deploy.mode == "guardrails":
            deploy_entry = self._guarded_deploy(invoke, catch_to, endpoint_wait_loop, restore, finalize)
        elif model.deploy.mode == "shadow":
            deploy_entry = shadow_deploy()
        else:
            deploy_entry = variants_deploy()
        # Manual approval: the run parks on a task token (endpoint untouched) until `refit approve/reject`;
        # without a decision before the configured timeout the version is rejected.
        expire = invoke(
            "Reject after approval timeout",
            "ExpireApproval",
            {"model_package_arn.$": "$.registry.model_package_arn", "version.$": "$.registry.version"},
            "$.approval",
        )
        catch_to(expire, finalize).next(finalize)
        await_approval = tasks.LambdaInvoke(
            self,
            "Await approval",
            lambda_function=fn["RequestApproval"],
            integration_pattern=sfn.IntegrationPattern.WAIT_FOR_TASK_TOKEN,
            payload=sfn.TaskInput.from_object(
                {
                    "task_token": sfn.JsonPath.task_token,
                    "run_id.$": "$.run.run_id",
                    "model_package_arn.$": "$.registry.model_package_arn",
                    "version.$": "$.registry.version",
                    "reason.$": "$.gate.reason",
                    "trigger.$": "$.run.trigger",
                    "started_by.$": "$.run.requested_by",
                }
            ),
            task_timeout=sfn.Timeout.duration(Duration.seconds(model.approval_timeout_seconds)),
            result_path="$.approval",
        )
        await_approval.add_catch(expire, errors=["States.Timeout"], result_path="$.approval_timeout")
        catch_to(await_approval, finalize)
        await_approval.next(
            sfn.Choice(self, "Approved?")
            .when(sfn.Condition.boolean_equals("$.approval.approved", True), deploy_entry)
            .otherwise(finalize)
        )
        needs_approval = (
            sfn.Choice(self, "Approval needed?")
            .when(sfn.Condition.string_equals("$.registry.approval", "PendingManualApproval"), await_approval)
            .otherwise(deploy_entry)
        )

        after_register: sfn.IChainable = needs_approval
        if "MlflowSync" in fn:
            # `[mlflow]`: a challenger on its way to production (every deploy mode, and a pending approval) holds the
            # `challenger` alias while it is one. Never fails the run: MLflow's errors come back in the result, and
            # a failing Lambda is caught into the same field; Finalize puts either into the audit record.
            log_challenger = invoke(
                "Log challenger to MLflow",
                "MlflowSync",
                {
                    "stage": "challenger",
                    "state.$": "$",
                    "execution_name.$": "$$.Execution.Name",
                    "execution_started_at.$": "$$.Execution.StartTime",
                },
                "$.mlflow_challenger",
            )
            log_challenger.add_catch(needs_approval, errors=ALL_ERRORS, result_path="$.mlflow_challenger")
            after_register = log_challenger.next(needs_approval)
        gate_and_register = gate.next(register).next(
            sfn.Choice(self, "Promote?")
            .when(sfn.Condition.boolean_equals("$.gate.promote", True), after_register)
            .otherwise(finalize)
        )
        if not model.search.parallel_jobs:
            first_training_state, finished = training_loop(finalize, finalize, None)
            finished.when(sfn.Condition.string_equals("$.training.next", "done"), gate_and_register).otherwise(finalize)
        else:
            # One training job per family, all at once; each branch ends with its job's summary (or its error),
            # and the job with the best cross-validated score goes to the gate.
            first_in_branch, finished = training_loop(
                sfn.Pass(self, "Candidate failed"), sfn.Pass(self, "Candidate refused"), "$.family"
            )
            finished.otherwise(sfn.Pass(self, "Candidate trained"))
            candidates = sfn.Map(
                self,
                "Train candidates",
                items_path="$.families",
                item_selector={
                    "family.$": "$$.Map.Item.Value",
                    "run.$": "$.run",
                    "check": {
                        "data_uri.$": "$.check.data_uri",
                        "champion_model_uri.$": "$.check.champion_model_uri",
                        "champion_sha256.$": "$.check.champion_sha256",
                        "train_columns.$": "$.check.train_columns",
                    },
                },
                result_path="$.candidates",
            )
            candidates.item_processor(first_in_branch)
            candidates.add_catch(finalize, errors=ALL_ERRORS, result_path="$.error")
            pick = catch_to(
                invoke(
                    "Pick best candidate",
                    "PickCandidate",
                    {"run_id.$": "$.run.run_id", "candidates.$": "$.candidates"},
                    "$.training",
                ),
                finalize,
            )
            first_training_state = sfn.Pass(
                self,
                "List candidate families",
                result=sfn.Result.from_array(list(model.search.families)),
                result_path="$.families",
            )
            first_training_state.next(candidates).next(pick).next(
                sfn.Choice(self, "Candidate chosen?")
                .when(sfn.Condition.string_equals("$.training.next", "done"), gate_and_register)
                .otherwise(finalize)
            )

        # A manual rollback / promotion (`refit rollback | promote`): no check, training or gate. The version is
        # deployed as the single champion, verified InService on the requested config like every endpoint change,
        # and the config it replaced is restored when that does not come. An error before UpdateEndpoint leaves the
        # endpoint untouched, so the redeploy itself is caught straight into Finalize.
        restore_redeploy = invoke(
            "Restore endpoint (redeploy)",
            "Deploy",
            {"action": "restore", "previous_config.$": "$.redeploy.previous_config"},
            "$.restore",
        )
        restore_redeploy.add_catch(finalize, errors=ALL_ERRORS, result_path="$.restore_error")
        restore_redeploy.next(rescale_after_restore("restore, redeploy"))
        redeploy = catch_to(
            invoke(
                "Redeploy version",
                "Deploy",
                {
                    "action": "redeploy",
                    "run_id.$": "$.run.run_id",
                    "version.$": "$.run.deploy_version",
                    "kind.$": "$.run.deploy_kind",
                    "force.$": "$.run.deploy_force",
                },
                "$.redeploy",
            ),
            finalize,
        )
        redeploy.next(endpoint_wait_loop("redeploy", "$.redeploy.expected_config", finalize, restore_redeploy))

        # The input goes under `input` first: an input that is not a JSON object (`[1, 2]`, `"weekly"`, `null`) would
        # leave the Catch no object to write its error into, and the run would end without Finalize.
        read_input = sfn.Pass(self, "Read input", parameters={"input.$": "$"})
        definition = (
            sfn.Chain.start(read_input)
            .next(prepare)
            .next(keep_run)
            .next(
                sfn.Choice(self, "Lock acquired?")
                .when(sfn.Condition.boolean_equals("$.run.proceed", False), finalize)
                .when(sfn.Condition.string_equals("$.run.mode", "redeploy"), redeploy)
                .otherwise(
                    check.next(
                        sfn.Choice(self, "Train?")
                        .when(sfn.Condition.string_equals("$.check.decision.action", "train"), first_training_state)
                        .otherwise(finalize)
                    )
                )
            )
        )

        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_name=state_machine_name,
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            timeout=Duration.seconds(model.run_timeout_seconds),
            tracing_enabled=True,
            # Every state's transitions, without inputs and outputs: those carry task tokens and batch details.
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=False),
        )

    def _guarded_deploy(
        self,
        invoke: Callable[..., tasks.LambdaInvoke],
        catch_to: Callable[[tasks.LambdaInvoke, sfn.IChainable], tasks.LambdaInvoke],
        endpoint_wait_loop: Callable[..., sfn.Wait],
        restore: sfn.IChainable,
        finalize: sfn.IChainable,
    ) -> sfn.IChainable:
        """deploy.mode guardrails: one UpdateEndpoint with DeploymentConfig, then a poll until SageMaker's guarded
        update ends; an end on the new config is then judged by refit on a window only the new fleet served (a Wait
        until it has passed, then quiet, prediction divergence and p99 against the champion's window before the
        update): a fail is rolled back by a second UpdateEndpoint. Promoted and rolled back end in Finalize (the outcome is in `$.guardrails`); a failure
        (e.g. UpdateRollbackFailed) becomes the run's error, so the run ends FAILED with the endpoint's state as the
        status check saw it. An error before UpdateEndpoint leaves the endpoint untouched (restore finds nothing to
        undo); an error of the status check restores the champion's config; the update itself is SageMaker's to
        finish or roll back."""
        start = catch_to(
            invoke(
                "Deploy challenger (guardrails)",
                "Deploy",
                {
                    "action": "start_guardrails",
                    "run_id.$": "$.run.run_id",
                    "model_data_url.$": "$.training.model_data_url",
                    "model_package_arn.$": "$.registry.model_package_arn",
                },
                "$.deploy",
            ),
            restore,
        )
        wait = sfn.Wait(
            self, "Wait for guarded update", time=sfn.WaitTime.duration(Duration.seconds(ENDPOINT_POLL_SECONDS))
        )
        status = catch_to(
            invoke(
                "Guarded update status",
                "Deploy",
                {
                    "action": "guardrails_status",
                    "expected_config.$": "$.deploy.expected_config",
                    "previous_config.$": "$.deploy.previous_config",
                },
                "$.guardrails",
            ),
            # An error judging the update (e.g. CloudWatch failing once SageMaker has finished) must not leave an
            # unjudged challenger serving: restore the champion's config, as every other deploy branch does (while
            # SageMaker still updates, the restore is refused and the run ends with both errors in its record).
            restore,
        )
        # SageMaker finished the update on the new config: refit waits out the window the status check planned (from
        # the first whole minute after the end, deploy.guardrails.judge_seconds, read late enough for the metrics and
        # captured records) and judges it; an error judging restores the champion's config.
        judge_wait = sfn.Wait(self, "Wait for judged window", time=sfn.WaitTime.timestamp_path("$.guardrails.judge_at"))
        judge = catch_to(
            invoke(
                "Judge guarded update",
                "Deploy",
                {
                    "action": "judge_guardrails",
                    "expected_config.$": "$.guardrails.expected_config",
                    "previous_config.$": "$.guardrails.previous_config",
                    "requested_at.$": "$.deploy.challenger_since",
                    "judge_from.$": "$.guardrails.judge_from",
                    "judge_until.$": "$.guardrails.judge_until",
                    "gate_uri.$": "$.gate.gate_uri",
                },
                "$.guardrails",
            ),
            restore,
        )
        # refit's verdict failed (quiet window, diverging predictions, p99 over the champion's): a second, plain
        # UpdateEndpoint back to the previous config, verified like every endpoint change.
        roll_back = catch_to(
            invoke(
                "Roll back guarded update",
                "Deploy",
                {"action": "rollback", "previous_config.$": "$.guardrails.previous_config"},
                "$.rollback",
            ),
            restore,
        )
        roll_back.next(endpoint_wait_loop("guarded rollback", "$.rollback.expected_config", finalize))
        failed = sfn.Pass(
            self,
            "Guarded update failed",
            parameters={"Error": "GuardedUpdateFailed", "Cause.$": "$.guardrails.reason"},
            result_path="$.error",
        ).next(finalize)
        wait.next(status).next(
            sfn.Choice(self, "Guarded update done?")
            .when(sfn.Condition.string_equals("$.guardrails.next", "wait"), wait)
            .when(sfn.Condition.string_equals("$.guardrails.next", "failed"), failed)
            .when(sfn.Condition.string_equals("$.guardrails.next", "judge"), judge_wait)
            .otherwise(finalize)
        )
        judge_wait.next(judge).next(
            sfn.Choice(self, "Guarded update judged?")
            .when(sfn.Condition.string_equals("$.guardrails.next", "rollback"), roll_back)
            .when(sfn.Condition.string_equals("$.guardrails.next", "failed"), failed)
            .otherwise(finalize)
        )
        start.next(
            sfn.Choice(self, "First deployment? (guardrails)")
            .when(
                sfn.Condition.string_equals("$.deploy.mode", "create"),
                endpoint_wait_loop("guarded first deploy", "$.deploy.expected_config", finalize),
            )
            .otherwise(wait)
        )
        return start

    def _ab_test(
        self,
        model: ModelConfig,
        invoke: Callable[[str, str, dict, str], tasks.LambdaInvoke],
        catch_to: Callable[[tasks.LambdaInvoke, sfn.IChainable], tasks.LambdaInvoke],
        promote: sfn.IChainable,
        rollback: sfn.IChainable,
    ) -> sfn.IChainable:
        """`deploy.mode = "ab"`: the split holds for `deploy.ab.duration_seconds` in Waits of at most
        `check_interval_seconds` (no Lambda is held meanwhile); after each, JudgeAb checks that the endpoint still
        holds the split, and once the duration has passed it decides, once: promote or roll back
        (refit_core.ab_test). An endpoint that no longer holds the split ends the test through the rollback."""
        start = sfn.Pass(
            self,
            "Start AB test",
            parameters={"next": "wait", "started_at.$": "$.endpoint.canary_started_at", **model.deploy.ab.first_wait},
            result_path="$.ab",
        )
        wait = sfn.Wait(self, "Wait AB test", time=sfn.WaitTime.seconds_path("$.ab.wait_seconds"))
        judge = catch_to(
            invoke(
                "Judge AB test",
                "JudgeAb",
                {
                    "started_at.$": "$.ab.started_at",
                    "remaining_seconds.$": "$.ab.remaining_seconds",
                    "wait_seconds.$": "$.ab.wait_seconds",
                    "checks.$": "$.ab.checks",
                    "expected_config.$": "$.deploy.expected_config",
                    "gate_uri.$": "$.gate.gate_uri",
                },
                "$.ab",
            ),
            rollback,
        )
        start.next(wait).next(judge).next(
            sfn.Choice(self, "AB verdict?")
            .when(sfn.Condition.string_equals("$.ab.next", "wait"), wait)
            .when(sfn.Condition.string_equals("$.ab.next", "promote"), promote)
            .otherwise(rollback)
        )
        return start
