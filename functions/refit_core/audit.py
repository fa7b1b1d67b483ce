"""The audit record every run ends with, and the human summary published for it.

`summarize_run` reads the state machine's accumulated state (whatever steps ran) and says why the
run started, what it saw, what it cost and what it did. It never raises on a partial state: a run
that failed at its first step still gets a record.
"""

from __future__ import annotations

import json
from typing import Any


def error_reason(error: dict[str, Any] | None) -> str | None:
    """The message of a caught Step Functions error (Lambda errors carry JSON in Cause)."""
    if not error:
        return None
    cause = error.get("Cause") or ""
    try:
        parsed = json.loads(cause)
        message = parsed.get("errorMessage") if isinstance(parsed, dict) else None
    except (json.JSONDecodeError, TypeError):
        message = None
    message = message or cause or "no cause given"
    return f"{error.get('Error', 'Error')}: {message}"[:2000]


def _outcome(state: dict[str, Any]) -> tuple[str, str, str]:
    """(status, outcome, message)."""
    run = state.get("run") or {}
    check = state.get("check") or {}
    gate = state.get("gate") or {}
    deploy = state.get("deploy") or {}
    canary = state.get("canary") or {}
    training = state.get("training") or {}
    if state.get("error"):
        return "FAILED", "failed", error_reason(state["error"]) or "failed"
    if run and not run.get("proceed", True):
        return "SKIPPED", "skipped", run.get("reason", "skipped")
    decision = check.get("decision") or {}
    if decision.get("action") == "fail":
        return "FAILED", "bad_data", decision.get("reason", "the batch failed the data-quality gate")
    if decision.get("action") == "stop":
        return "SUCCEEDED", decision.get("outcome", "no_drift"), decision.get("reason", "no drift")
    if training.get("next") == "refused":
        return "SKIPPED", "budget_exceeded", training.get("reason", "the training budget is spent")
    if training.get("next") == "failed":
        reason = training.get("failure_reason") or training.get("secondary_status") or "unknown"
        return "FAILED", "training_failed", f"training job {training.get('job_name')} failed: {reason}"
    if gate and not gate.get("promote"):
        return "SUCCEEDED", "not_promoted", gate.get("reason", "the challenger did not pass the gate")
    approval = state.get("approval") or {}
    if approval and not approval.get("approved"):
        outcome = "approval_timed_out" if approval.get("by") == "timeout" else "not_approved"
        return "SUCCEEDED", outcome, approval.get("reason", "the challenger was not approved")
    if deploy.get("mode") == "create":
        return "SUCCEEDED", "deployed_first", "first model deployed to a new endpoint"
    if canary:
        if canary.get("healthy"):
            return "SUCCEEDED", "promoted", f"canary passed and was promoted: {canary.get('reason')}"
        return "SUCCEEDED", "rolled_back", f"canary rolled back: {canary.get('reason')}"
    return "FAILED", "incomplete", "the run ended before reaching a decision"


def summarize_run(
    state: dict[str, Any],
    model_name: str,
    execution_name: str,
    started_at: str,
    ended_at: str,
    endpoint: dict | None,
) -> dict[str, Any]:
    status, outcome, message = _outcome(state)
    run = state.get("run") or {}
    check = state.get("check") or {}
    drift = check.get("drift") or {}
    quality = check.get("quality") or {}
    training = state.get("training") or {}
    gate = state.get("gate") or {}
    registry = state.get("registry") or {}
    run_id = run.get("run_id") or execution_name
    return {
        "pk": model_name,
        "sk": f"run#{started_at}#{run_id}",
        "run_id": run_id,
        "model": model_name,
        "execution": execution_name,
        "status": status,
        "outcome": outcome,
        "message": message,
        "trigger": run.get("trigger", "unknown"),
        "trigger_reason": run.get("reason", "the input could not be read"),
        "data_uri": run.get("data_uri"),
        "data_etag": run.get("data_etag"),
        "started_at": started_at,
        "ended_at": ended_at,
        "quality": {
            "passed": quality.get("passed"),
            "blocking": [f["message"] for f in quality.get("findings", []) if f.get("severity") == "block"][:10],
            "warnings": [f["message"] for f in quality.get("findings", []) if f.get("severity") == "warn"][:10],
        }
        if quality
        else None,
        "drift": {
            "detected": drift.get("drift_detected"),
            "drifted_features": drift.get("drifted_features", []),
            "target_drifted": (drift.get("target") or {}).get("drifted"),
            "prediction_drifted": (drift.get("prediction") or {}).get("drifted"),
            "performance": {
                k: (drift.get("performance") or {}).get(k) for k in ("metric", "baseline", "current", "drifted")
            }
            if drift.get("performance")
            else None,
            "report_uri": check.get("report_uri"),
            "report_html_uri": check.get("report_html_uri"),
        }
        if drift
        else None,
        "training": {
            k: training.get(k)
            for k in (
                "job_name",
                "status",
                "secondary_status",
                "spot",
                "training_seconds",
                "billable_seconds",
                "savings_percent",
                "estimated_cost_usd",
                "attempts",
                "chosen",
                "candidates",
            )
            if k in training or k not in ("chosen", "candidates")
        }
        if training
        else None,
        "gate": {
            k: gate.get(k)
            for k in (
                "promote",
                "reason",
                "test",
                "p_value",
                "primary_metric",
                "challenger",
                "champion",
                "improvement",
            )
        }
        if gate
        else None,
        "registry": {k: registry.get(k) for k in ("model_package_arn", "version", "approval", "lineage_uri")}
        if registry
        else None,
        "approval": state.get("approval"),
        "canary": state.get("canary"),
        "endpoint": endpoint,
        "error": error_reason(state.get("error")),
    }


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
        lines.append(f"Drift: {'yes' if record['drift']['detected'] else 'no'}; drifted: {', '.join(drifted)}")
        if record["drift"].get("report_html_uri"):
            lines.append(f"Drift report: {record['drift']['report_html_uri']} (JSON: {record['drift']['report_uri']})")
    if record.get("training") and record["training"].get("job_name"):
        t = record["training"]
        lines.append(
            f"Training: {t['job_name']} {t['status']} spot={t['spot']} training={t['training_seconds']}s "
            f"billable={t['billable_seconds']}s savings={t['savings_percent']}% cost=${t['estimated_cost_usd']}"
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
    if record.get("endpoint"):
        weights = ", ".join(f"{v['name']}={v['weight']}" for v in record["endpoint"].get("variants", []))
        lines.append(f"Endpoint {record['endpoint']['name']}: {record['endpoint'].get('status')} [{weights}]")
    lines.append(f"Audit id: {record['pk']} / {record['sk']}")
    return subject, "\n".join(lines)
