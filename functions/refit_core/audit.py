"""The audit record every run ends with, and the human summary published for it.

`summarize_run` reads the state machine's accumulated state (whatever steps ran) and says why the
run started, what it saw, what it cost and what it did. It never raises on a partial state: a run
that failed at its first step still gets a record.
"""

from __future__ import annotations

import json
from typing import Any

from refit_core.capacity import canary_cost
from refit_core.steps import MAX_LISTED, CheckResult, MlflowLogged, RunState, StepError


def error_reason(error: StepError | dict[str, Any] | None) -> str | None:
    """The message of a caught Step Functions error (Lambda errors carry JSON in Cause)."""
    if isinstance(error, dict):
        error = StepError.model_validate(error)
    if error is None or (error.Error is None and error.Cause is None):
        return None
    cause = error.Cause or ""
    try:
        parsed = json.loads(cause)
        message = parsed.get("errorMessage") if isinstance(parsed, dict) else None
    except (json.JSONDecodeError, TypeError):
        message = None
    message = message or cause or "no cause given"
    return f"{error.Error or 'Error'}: {message}"[:2000]


def _outcome(state: RunState) -> tuple[str, str, str]:
    """(status, outcome, message)."""
    run, check, gate, deploy, canary, training = (
        state.run,
        state.check,
        state.gate,
        state.deploy,
        state.canary,
        state.training,
    )
    if state.error is not None:
        message = error_reason(state.error) or "failed"
        restore_error = error_reason(state.restore_error)
        if restore_error:
            message = f"{message}; restoring the endpoint failed too: {restore_error}"
        return "FAILED", "failed", message
    if run is not None and not run.proceed:
        return "SKIPPED", run.skip_outcome or "skipped", run.reason or "skipped"
    redeploy = state.redeploy
    if redeploy is not None:
        was = f"version {redeploy.previous_version}" if redeploy.previous_version else redeploy.previous_config
        forced = " (a Rejected version, forced)" if redeploy.forced else ""
        who = f" by {run.requested_by}" if run is not None and run.requested_by else ""
        return (
            "SUCCEEDED",
            "redeployed",
            f"{redeploy.kind} to version {redeploy.version}{forced}{who}: serving on {redeploy.expected_config} "
            f"(was {was})",
        )
    decision = check.decision if check is not None else None
    if decision is not None and decision.action == "fail":
        return "FAILED", "bad_data", decision.reason or "the batch failed the data-quality gate"
    if decision is not None and decision.action == "stop":
        return "SUCCEEDED", decision.outcome or "no_drift", decision.reason or "no drift"
    if training is not None and training.next == "refused":
        return "SKIPPED", "budget_exceeded", training.reason or "the training budget is spent"
    if training is not None and training.next == "failed":
        reason = training.failure_reason or training.secondary_status or "unknown"
        return "FAILED", "training_failed", f"training job {training.job_name} failed: {reason}"
    if gate is not None and not gate.promote:
        return "SUCCEEDED", "not_promoted", gate.reason or "the challenger did not pass the gate"
    approval = state.approval
    if approval is not None and not approval.approved:
        outcome = "approval_timed_out" if approval.by == "timeout" else "not_approved"
        return "SUCCEEDED", outcome, approval.reason or "the challenger was not approved"
    if deploy is not None and deploy.mode == "create":
        return "SUCCEEDED", "deployed_first", "first model deployed to a new endpoint"
    shadow = state.shadow
    if shadow is not None and shadow.next is not None:
        if shadow.healthy:
            return "SUCCEEDED", "promoted", f"shadow passed and was promoted: {shadow.reason}"
        return "SUCCEEDED", "rolled_back", f"shadow dropped: {shadow.reason}"
    guarded = state.guardrails
    if guarded is not None and guarded.next == "promoted":
        return "SUCCEEDED", "promoted", f"guarded update promoted: {guarded.reason}"
    if guarded is not None and guarded.next == "rolled_back":
        return "SUCCEEDED", "rolled_back", f"guarded update rolled back: {guarded.reason}"
    if guarded is not None and guarded.next == "rollback":  # SageMaker finished; refit's bake verdict did not pass
        return "SUCCEEDED", "rolled_back", f"guarded update rolled back by refit: {guarded.reason}"
    ab = state.ab
    if ab is not None:  # deploy.mode "ab" (refit_core.ab_test)
        if ab.result is None:
            return "FAILED", "incomplete", f"the run ended during the A/B test ({ab.remaining_seconds} s were left)"
        if ab.next == "promote":
            return "SUCCEEDED", "promoted", f"A/B test won, challenger promoted: {ab.reason}"
        return "SUCCEEDED", "rolled_back", f"A/B test {ab.result.replace('_', ' ')}, rolled back: {ab.reason}"
    if canary is not None and (canary.steps or canary.healthy):
        if canary.healthy and canary.next == "shift":
            return "FAILED", "incomplete", f"the run ended between canary steps: {canary.reason}"
        if canary.healthy:
            return "SUCCEEDED", "promoted", f"canary passed and was promoted: {canary.reason}"
        return "SUCCEEDED", "rolled_back", f"canary rolled back: {canary.reason}"
    return "FAILED", "incomplete", "the run ended before reaching a decision"


TRAINING_FIELDS = (
    "job_name",
    "status",
    "secondary_status",
    "spot",
    "training_seconds",
    "billable_seconds",
    "savings_percent",
    "estimated_cost_usd",
    "attempts",
)
GATE_FIELDS = ("promote", "reason", "test", "p_value", "primary_metric", "challenger", "champion", "improvement")


# Deploy modes whose challenger runs on instances of its own beside the champion's (a canary or A/B variant, a shadow).
EXTRA_FLEET_MODES = ("canary", "shadow")


def capacity_record(state: RunState, ended_at: str) -> dict[str, Any] | None:
    """What the run's capacity was and cost: the canary's (or shadow's) extra instance-hours and cost (the challenger's instances x
    its hosting price x the time from the UpdateEndpoint that added it to the one that removed it: the promotion, the
    rollback or the restore, else the run's end), and the autoscaling registered on the serving variant."""
    deploy, scaling = state.deploy, state.scaling
    cost = None
    if (
        deploy is not None
        and deploy.mode in EXTRA_FLEET_MODES
        and deploy.challenger_since
        and deploy.challenger_instances
    ):
        removed = [
            (name, step.requested_at)
            for name, step in (("promotion", state.promotion), ("rollback", state.rollback), ("restore", state.restore))
            if step is not None and step.requested_at
        ]
        until, ended_by = (removed[0][1], removed[0][0]) if removed else (ended_at, "run end")
        cost = {
            **canary_cost(
                deploy.challenger_instances,
                deploy.instance_type or "",
                deploy.price_usd_per_hour,
                deploy.challenger_since,
                until,
            ),
            "ended_by": ended_by,
        }
    if cost is None and scaling is None:
        return None
    return {"canary": cost, "autoscaling": scaling.model_dump(mode="json") if scaling is not None else None}


def summarize_run(
    state: RunState | dict[str, Any],
    model_name: str,
    execution_name: str,
    started_at: str,
    ended_at: str,
    endpoint: dict | None,
) -> dict[str, Any]:
    """The audit record. `state` is the execution's state as it came (a dict, parsed here without raising: what did
    not fit the step contract is listed in the record's `problems`) or an already parsed RunState."""
    problems: list[str] = []
    if not isinstance(state, RunState):
        state, problems = RunState.from_state(state)
    status, outcome, message = _outcome(state)
    run = state.run
    check = state.check or CheckResult()
    drift, quality, training, gate, registry = check.drift, check.quality, state.training, state.gate, state.registry
    run_id = (run.run_id if run else None) or execution_name
    training_record = None
    if training is not None:
        training_record = {k: getattr(training, k) for k in TRAINING_FIELDS}
        # The training window: which batches, how many, how old (the objects and versions: inputs_manifest_uri).
        training_record["window"] = training.window.model_dump(mode="json") if training.window else None
        if training.candidates is not None:
            training_record["candidates"] = [c.model_dump(mode="json") for c in training.candidates]
            training_record["chosen"] = training.chosen
    return {
        "pk": model_name,
        "sk": f"run#{started_at}#{run_id}",
        "run_id": run_id,
        "model": model_name,
        "execution": execution_name,
        "status": status,
        "outcome": outcome,
        "message": message,
        "trigger": run.trigger if run else "unknown",
        "trigger_reason": (run.reason if run else None) or "the input could not be read",
        "data_uri": run.data_uri if run else None,
        "provenance": run.provenance if run else None,
        "data_etag": run.data_etag if run else None,
        "started_at": started_at,
        "ended_at": ended_at,
        "quality": {
            "passed": quality.passed,
            "blocking": [f.message for f in quality.findings if f.severity == "block"][:MAX_LISTED],
            "warnings": [f.message for f in quality.findings if f.severity == "warn"][:MAX_LISTED],
        }
        if quality is not None
        else None,
        "drift": {
            "detected": drift.drift_detected,
            "drifted_features": drift.drifted_features,
            "n_drifted_features": drift.n_drifted_features,
            "target_drifted": drift.target_drifted,
            "prediction_drifted": drift.prediction_drifted,
            "performance": drift.performance.model_dump(mode="json") if drift.performance else None,
            "report_uri": check.report_uri,
            "report_html_uri": check.report_html_uri,
        }
        if drift is not None
        else None,
        "training": training_record,
        "gate": {k: getattr(gate, k) for k in GATE_FIELDS} if gate is not None else None,
        "registry": registry.model_dump(mode="json") if registry is not None else None,
        "approval": state.approval.model_dump(mode="json") if state.approval is not None else None,
        "canary": state.canary.model_dump(mode="json") if state.canary is not None else None,
        "shadow": state.shadow.model_dump(mode="json") if state.shadow is not None else None,
        "guardrails": {
            **state.guardrails.model_dump(mode="json"),
            "deployment_config": state.deploy.deployment_config if state.deploy is not None else None,
        }
        if state.guardrails is not None
        else None,
        "ab": state.ab.model_dump(mode="json") if state.ab is not None else None,
        "capacity": capacity_record(state, ended_at),
        "redeploy": {
            **state.redeploy.model_dump(mode="json"),
            "requested_by": run.requested_by if run else None,
        }
        if state.redeploy is not None
        else (
            {"kind": run.deploy_kind, "version": run.deploy_version, "requested_by": run.requested_by}
            if run is not None and run.mode == "redeploy"
            else None
        ),
        "endpoint": endpoint,
        "error": error_reason(state.error),
        "mlflow_challenger": mlflow_challenger_record(state.mlflow_challenger),
        "problems": problems,
    }


def mlflow_challenger_record(step: MlflowLogged | None) -> dict[str, Any] | None:
    """What the MLflow step right after Register did (`[mlflow]`): its result, or the error it ended with."""
    if step is None:
        return None
    if step.Error is not None or step.Cause is not None:
        return {"logged": False, "error": error_reason(StepError(Error=step.Error, Cause=step.Cause))}
    return step.model_dump(mode="json", exclude={"Error", "Cause"})


def canary_step_line(step: dict[str, Any]) -> str:
    """One judged canary step for the summary: share, endpoint weights, verdict and both variants' numbers."""
    weights = ", ".join(f"{v['name']}={v['weight']}" for v in step.get("endpoint_weights") or [])

    def numbers(side: dict[str, Any] | None) -> str:
        if not side:
            return "no data"
        return (
            f"{side['invocations']:.0f} invocations, 5XX {side['errors_5xx']:.0f}, 4XX {side['errors_4xx']:.0f}, "
            f"mean {side.get('mean_latency_ms')} ms, p99 {side.get('p99_latency_ms')} ms"
        )

    return (
        f"Canary step {step['step'] + 1} ({step['weight']:.0%}; endpoint {weights}): "
        f"{'passed' if step['healthy'] else 'failed'} - {step['reason']}; challenger {numbers(step.get('challenger'))}; "
        f"champion {numbers(step.get('champion'))}; p(5XX) {step.get('p_value_5xx')}, p(4XX) {step.get('p_value_4xx')}, "
        f"p99 ratio {step.get('p99_latency_ratio')}{divergence_summary(step.get('divergence'))}"
    )


def divergence_summary(divergence: dict[str, Any] | None) -> str:
    """The prediction-divergence check of a step, for its summary line ("" when the step has none)."""
    if not divergence:
        return ""
    if divergence.get("status") != "judged":
        return f"; predictions {divergence.get('status')}"
    return (
        f"; predictions {'diverged' if divergence.get('diverged') else 'as predicted'} (KS to predicted "
        f"{divergence.get('ks_to_predicted')}, p {divergence.get('p_value')}, {divergence.get('challenger_samples')} / "
        f"{divergence.get('champion_samples')} outputs)"
    )


def format_summary(record: dict[str, Any]) -> tuple[str, str]:
    """SNS subject (<100 chars) and body."""
    subject = f"refit {record['model']}: {record['status']} ({record['outcome']})"[:99]
    lines = [
        f"Model: {record['model']}   Run: {record['run_id']}",
        f"Why it ran: {record['trigger']} - {record['trigger_reason']}",
        f"Result: {record['status']} / {record['outcome']} - {record['message']}",
    ]
    if record.get("drift"):
        drifted = record["drift"]["drifted_features"] or ["none"]
        more = (record["drift"].get("n_drifted_features") or 0) - len(record["drift"]["drifted_features"])
        listed = ", ".join(drifted) + (f" and {more} more" if more > 0 else "")
        lines.append(f"Drift: {'yes' if record['drift']['detected'] else 'no'}; drifted: {listed}")
        if record["drift"].get("report_html_uri"):
            lines.append(f"Drift report: {record['drift']['report_html_uri']} (JSON: {record['drift']['report_uri']})")
    if record.get("training") and record["training"].get("job_name"):
        t = record["training"]
        lines.append(
            f"Training: {t['job_name']} {t['status']} spot={t['spot']} training={t['training_seconds']}s "
            f"billable={t['billable_seconds']}s savings={t['savings_percent']}% cost=${t['estimated_cost_usd']}"
        )
        if t.get("window"):
            w = t["window"]
            lines.append(
                f"Training window: {w['window']}: {w['n_batches']} batches (the new one and {w['n_batches'] - 1} of "
                f"{w['n_kept_available']} kept), {w['bytes']} bytes"
            )
        for candidate in t.get("candidates") or []:
            lines.append(
                f"  candidate {candidate['family']}: {candidate['status']}, CV score {candidate['cv_score']}, "
                f"cost ${candidate['estimated_cost_usd']}"
                + (" (chosen)" if candidate["family"] == t.get("chosen") else "")
            )
    if record.get("gate"):
        g = record["gate"]
        lines.append(f"Gate: {'promote' if g['promote'] else 'keep champion'} - {g['reason']}")
    if record.get("registry"):
        lines.append(f"Registry: version {record['registry']['version']} ({record['registry']['approval']})")
    if record.get("redeploy"):
        r = record["redeploy"]
        lines.append(f"Redeploy: {r.get('kind')} to version {r.get('version')} requested by {r.get('requested_by')}")
    for step in (record.get("canary") or {}).get("steps") or []:
        lines.append(canary_step_line(step))
    if record.get("shadow") and record["shadow"].get("next"):
        shadow = record["shadow"]
        lines.append(
            f"Shadow ({shadow.get('sampling_percent')}% copied, {shadow.get('copied_share')} seen): "
            + canary_step_line({**shadow, "step": 0, "weight": 0, "endpoint_weights": []}).split(": ", 1)[1]
        )
    if record.get("guardrails"):
        g = record["guardrails"]
        lines.append(
            f"Guardrails: {g['next']} - {g['reason']}; endpoint {g.get('status')} on {g.get('config')} "
            f"(requested {g['expected_config']}, previous {g['previous_config']})"
        )
    if (record.get("ab") or {}).get("result"):
        ab = record["ab"]
        lines.append(f"A/B test: {ab['result']} after {ab['checks']} check(s) - {ab['reason']}")
    canary_capacity = (record.get("capacity") or {}).get("canary")
    if canary_capacity:
        c = canary_capacity
        lines.append(
            f"Canary capacity: {c['challenger_instances']} x {c['instance_type']} for {c['seconds']}s (until the "
            f"{c['ended_by']}) = {c['instance_hours']} instance-hours, ${c['cost_usd']}"
        )
    if record.get("quarantined"):
        lines.append(f"Quarantined: {record['quarantined']['uri']} - {record['quarantined']['reason']}")
    if record.get("registry_update"):
        lines.append(f"Registry: {record['registry_update']}")
    if record.get("serving_update"):
        lines.append(f"Registry: {'; '.join(record['serving_update'])}")
    if record.get("endpoint"):
        weights = ", ".join(f"{v['name']}={v['weight']}" for v in record["endpoint"].get("variants", []))
        lines.append(f"Endpoint {record['endpoint']['name']}: {record['endpoint'].get('status')} [{weights}]")
    lines.append(f"Audit id: {record['pk']} / {record['sk']}")
    return subject, "\n".join(lines)
