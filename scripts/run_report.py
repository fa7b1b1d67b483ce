"""`refit report RUN_ID -o run.html`: one self-contained page per run (inline CSS and SVG, no script, nothing
fetched when it is opened): the timeline of its states, why it ran, data quality, drift per feature with the plots,
the gate's evidence with its intervals, training cost, the canary and links to the lineage.

Everything is read with plain boto3 clients (the standard endpoint settings, `AWS_ENDPOINT_URL` included), so the
command is the same against AWS and against a local AWS:
- the audit record (DynamoDB, pk = model, sk = run#<started>#<run id>), found by run id or execution name across the
  configured models;
- the execution's history (Step Functions GetExecutionHistory of the execution the record names, on the model's
  state machine as the run commands find it: `run_commands.Resources.state_machine_arn`, from the stack's outputs);
- the drift report (`drift.report_uri`) and the plots the check drew (`drift.report_html_uri`, refit_core.report);
- the gate's full decision and the evaluation (`reports/<model>/<run>/gate.json`, `evaluation.json` in the artifact
  bucket, written by the Gate Lambda) and the lineage document (`registry.lineage_uri`).
A part that cannot be read (history past Step Functions' retention, an object deleted) is named on the page; the
page is still written.

Rendered by the CLI, not by a Lambda: the timeline needs the execution's whole history, which exists only once the
execution has ended, after Finalize (its last state) returned.
"""

from __future__ import annotations

import argparse
import html
import json
import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import BotoCoreError, ClientError
from refit_core.audit import canary_step_line
from refit_core.config import RefitConfig
from refit_core.report import figures
from refit_core.s3uri import S3Uri

# The plots are copied into the page as they are: one that could run code (none refit draws) is left out.
_ACTIVE = re.compile(r"<script|<foreignObject|<iframe|<[^>]*\son\w+\s*=|javascript:", re.I)
MISSING_CODES = {
    "NoSuchKey",
    "NoSuchBucket",
    "404",
    "AccessDenied",
    "ExecutionDoesNotExist",
    "StateMachineDoesNotExist",
}


class ReportError(Exception):
    """A problem the user can fix, printed as one line; `exit_code` 2 for a run that does not exist."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def plain(value: Any) -> Any:
    """DynamoDB numbers (Decimal) and history timestamps (datetime) as JSON values (the run commands use it too)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v) for v in value]
    return value


def from_dynamodb(item: dict[str, Any]) -> dict[str, Any]:
    """An item in DynamoDB's attribute-value form (an audit record) as JSON values."""
    deserializer = TypeDeserializer()
    return plain({k: deserializer.deserialize(v) for k, v in item.items()})


def _aws_error(error: Exception, what: str) -> ReportError:
    if isinstance(error, ClientError):
        code = error.response["Error"].get("Code")
        return ReportError(f"cannot read {what} ({code}: {error.response['Error'].get('Message')})")
    return ReportError(f"cannot read {what} ({error}); check AWS_ENDPOINT_URL, the region and the credentials")


def find_record(dynamodb: Any, table: str, models: list[str], run_id: str) -> dict[str, Any]:
    """The audit record of `run_id` (the run id or its execution name) among `models`' runs. Raises ReportError
    with exit code 2 when no model has it, and names the models when several have it."""
    found: list[dict[str, Any]] = []
    for model in models:
        arguments: dict[str, Any] = {
            "TableName": table,
            "KeyConditionExpression": "pk = :m AND begins_with(sk, :r)",
            "FilterExpression": "run_id = :id OR execution = :id",
            "ExpressionAttributeValues": {":m": {"S": model}, ":r": {"S": "run#"}, ":id": {"S": run_id}},
        }
        try:
            for page in dynamodb.get_paginator("query").paginate(**arguments):
                found.extend(from_dynamodb(item) for item in page["Items"])
        except (ClientError, BotoCoreError) as error:
            raise _aws_error(error, f"audit table {table}") from None
    if not found:
        raise ReportError(
            f"no run {run_id!r} in audit table {table} for model(s) {', '.join(models)}; "
            "list runs with `refit runs MODEL`",
            exit_code=2,
        )
    if len({r["model"] for r in found}) > 1:
        raise ReportError(
            f"run {run_id!r} exists for models {', '.join(sorted({r['model'] for r in found}))}: pass --model"
        )
    return found[-1]


def _state_kind(event_type: str) -> str:
    return event_type.removesuffix("StateEntered") or "State"


def timeline(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The states an execution entered, in order, with their times (seconds from the execution's start), and the
    errors its history recorded, from GetExecutionHistory's events."""
    events = sorted(events, key=lambda e: e["id"])
    start = events[0]["timestamp"] if events else None
    states: list[dict[str, Any]] = []
    open_states: dict[str, list[dict[str, Any]]] = {}
    errors: list[dict[str, Any]] = []
    execution: dict[str, Any] = {"status": "RUNNING", "input": None, "ended_at": None}

    def offset(moment: datetime) -> float:
        return round((moment - start).total_seconds(), 3)

    for event in events:
        kind, moment = event["type"], event["timestamp"]
        if kind == "ExecutionStarted":
            execution["input"] = event.get("executionStartedEventDetails", {}).get("input")
        elif kind.endswith("StateEntered"):
            name = event["stateEnteredEventDetails"]["name"]
            entry = {
                "state": name,
                "kind": _state_kind(kind),
                "entered_at": moment.isoformat(),
                "start_seconds": offset(moment),
                "seconds": None,
                "error": None,
            }
            states.append(entry)
            open_states.setdefault(name, []).append(entry)
        elif kind.endswith("StateExited"):
            pending = open_states.get(event["stateExitedEventDetails"]["name"])
            if pending:
                entry = pending.pop()
                entry["seconds"] = round(offset(moment) - entry["start_seconds"], 3)
        elif kind.startswith("Execution") and kind != "ExecutionStarted":
            execution["status"] = kind.removeprefix("Execution").upper()
            execution["ended_at"] = moment.isoformat()
        details = next((v for k, v in event.items() if k.endswith("EventDetails") and isinstance(v, dict)), {})
        if kind.endswith(("Failed", "TimedOut", "Aborted")) and (details.get("error") or details.get("cause")):
            state = next((s for s in reversed(states) if s["seconds"] is None), states[-1] if states else None)
            error = {
                "state": state["state"] if state else None,
                "error": details.get("error"),
                "cause": details.get("cause"),
            }
            errors.append(error)
            if state is not None and state["error"] is None:
                state["error"] = error["error"]
    total = offset(events[-1]["timestamp"]) if events else 0.0
    return {
        **execution,
        "started_at": start.isoformat() if start else None,
        "seconds": total,
        "states": states,
        "errors": errors,
    }


def execution_arn(state_machine_arn: str, execution: str) -> str:
    """The ARN of execution `execution` of the state machine `state_machine_arn`."""
    return f"{state_machine_arn.replace(':stateMachine:', ':execution:', 1)}:{execution}"


def execution_history(stepfunctions: Any, state_machine_arn: str, execution: str) -> tuple[str, list[dict[str, Any]]]:
    """The execution's ARN and its whole history (paginated)."""
    arn = execution_arn(state_machine_arn, execution)
    events: list[dict[str, Any]] = []
    for page in stepfunctions.get_paginator("get_execution_history").paginate(executionArn=arn):
        events.extend(page["events"])
    return arn, events


def running_execution(
    stepfunctions: Any, state_machine_arn: Callable[[str], str], models: list[str], execution: str
) -> str | None:
    """The ARN of a still running execution named `execution` of one of `models` (its record is not written yet).
    `state_machine_arn(model)` is the model's state machine (run_commands.Resources.state_machine_arn)."""
    for model in models:
        try:
            arn = execution_arn(state_machine_arn(model), execution)
            if stepfunctions.describe_execution(executionArn=arn)["status"] == "RUNNING":
                return arn
        except ClientError:
            continue
    return None


def _read_json(s3: Any, uri: str | None) -> Any:
    location = S3Uri.parse(uri)
    return json.loads(s3.get_object(Bucket=location.bucket, Key=location.key)["Body"].read())


def _read_text(s3: Any, uri: str) -> str:
    location = S3Uri.parse(uri)
    return s3.get_object(Bucket=location.bucket, Key=location.key)["Body"].read().decode("utf-8")


def collect(
    run_id: str,
    *,
    config: RefitConfig,
    audit_table: str,
    dynamodb: Any,
    s3: Any,
    stepfunctions: Any,
    state_machine_arn: Callable[[str], str],
    model: str | None = None,
) -> dict[str, Any]:
    """Everything the page shows, as JSON (`refit report --json`). `notes` names what could not be read.
    `state_machine_arn(model)` is the model's state machine (run_commands.Resources.state_machine_arn)."""
    models = [model] if model else [m.name for m in config.models]
    if model:
        config.model(model)
    try:
        record = find_record(dynamodb, audit_table, models, run_id)
    except ReportError as error:
        running = running_execution(stepfunctions, state_machine_arn, models, run_id) if error.exit_code == 2 else None
        if running is None:
            raise
        raise ReportError(
            f"run {run_id!r} is still running ({running}); its report can be written once it has ended "
            "(`refit trigger --follow` or `aws stepfunctions describe-execution` shows when)",
            exit_code=2,
        ) from None
    notes: list[str] = []
    data: dict[str, Any] = {"run": record, "notes": notes}

    def optional(what: str, read: Any) -> Any:
        """A part of the page that may be gone: a missing object is a note, an unreachable service an error."""
        try:
            return read()
        except ClientError as error:
            if error.response["Error"].get("Code") in MISSING_CODES:
                notes.append(f"{what}: {error.response['Error'].get('Code')}")
                return None
            raise _aws_error(error, what) from None
        except BotoCoreError as error:
            raise _aws_error(error, what) from None

    name = record["model"]
    data["target_column"] = next((m.target for m in config.models if m.name == name), None)
    history = optional(
        f"execution history of {record['execution']}",
        lambda: execution_history(stepfunctions, state_machine_arn(name), record["execution"]),
    )
    if history is not None:
        data["execution_arn"] = history[0]
        data["timeline"] = plain(timeline(history[1]))
    drift = record.get("drift") or {}
    if drift.get("report_uri"):
        data["drift"] = optional(f"drift report {drift['report_uri']}", lambda: _read_json(s3, drift["report_uri"]))
    if drift.get("report_html_uri"):
        page = optional(f"drift page {drift['report_html_uri']}", lambda: _read_text(s3, drift["report_html_uri"]))
        data["drift_plots"] = {k: v for k, v in (figures(page) if page else {}).items() if not _ACTIVE.search(v)}
    registry = record.get("registry") or {}
    artifact_bucket = next(
        (S3Uri.parse(u).bucket for u in (drift.get("report_uri"), registry.get("lineage_uri")) if u), None
    )
    if record.get("gate") and artifact_bucket:
        reports = S3Uri(artifact_bucket, f"reports/{name}/{record['run_id']}")
        data["gate_uri"] = str(reports.join("gate.json"))
        data["gate"] = optional(f"gate decision {data['gate_uri']}", lambda: _read_json(s3, data["gate_uri"]))
    if registry.get("lineage_uri"):
        data["lineage"] = optional(
            f"lineage {registry['lineage_uri']}", lambda: _read_json(s3, registry["lineage_uri"])
        )
    return data


# ---------------------------------------------------------------------------------------------------------------- HTML
def _e(value: Any) -> str:
    return html.escape("–" if value is None else str(value))


def _n(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _e(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def _usd(value: Any) -> str:
    return f"${float(value):.4f}" if isinstance(value, int | float) and not isinstance(value, bool) else _e(value)


def _p(value: Any) -> str:
    return "–" if value is None else f"{value:.3g}"


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


def _pairs(pairs: list[tuple[str, str]]) -> str:
    return "<table class='kv'>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def _section(anchor: str, title: str, body: str) -> str:
    return f"<section id='{anchor}'><h2>{html.escape(title)}</h2>{body}</section>"


LOOP_SPAN = 4  # a state entered again within this many rows is one more turn of a loop (a poll), shown as one row


def timeline_rows(states: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The states as the page lists them: each turn of a polling loop (Wait -> Poll -> Choice) folded into the row
    of its first turn, with the count of turns, the time from the first entry to the last exit and the time spent in
    the state."""
    rows: list[dict[str, Any]] = []
    for state in states:
        row = next((r for r in rows[-LOOP_SPAN:] if r["state"] == state["state"]), None)
        end = state["start_seconds"] + (state["seconds"] or 0.0)
        if row is None:
            rows.append({**state, "turns": 1, "end_seconds": end, "running": state["seconds"] is None})
            continue
        row["turns"] += 1
        row["seconds"] = (row["seconds"] or 0.0) + (state["seconds"] or 0.0)
        row["end_seconds"] = max(row["end_seconds"], end)
        row["running"] = state["seconds"] is None
        row["error"] = row["error"] or state["error"]
    return rows


def _timeline_html(data: dict[str, Any]) -> str:
    run = data["run"]
    line = data.get("timeline")
    if not line:
        return f"<p class='muted'>The execution history of {_e(run['execution'])} could not be read.</p>"
    total = max(line["seconds"] or 0.0, 1e-9)
    rows = []
    for state in timeline_rows(line["states"]):
        width = max(100 * (state["end_seconds"] - state["start_seconds"]) / total, 0.4)
        # A state at the run's very end still gets its visible sliver (it would have no width at left = 100%).
        left = min(100 * state["start_seconds"] / total, 100 - width)
        bar = (
            f"<div class='track'><div class='bar{' failed' if state['error'] else ''}' "
            f"style='margin-left:{left:.2f}%;width:{width:.2f}%'></div></div>"
        )
        took = "running" if state["running"] else f"{state['seconds']:.2f} s"
        rows.append(
            [
                f"+{state['start_seconds']:.1f} s",
                f"<b>{_e(state['state'])}</b>"
                + (f" <span class='muted'>×{state['turns']}</span>" if state["turns"] > 1 else ""),
                _e(state["kind"]),
                took,
                _e(state["error"]) if state["error"] else "",
                bar,
            ]
        )
    errors = "".join(
        f"<li><b>{_e(e['state'])}</b>: {_e(e['error'])}: <code>{_e((e['cause'] or '')[:500])}</code></li>"
        for e in line["errors"]
    )
    return (
        f"<p>Execution <code>{_e(data.get('execution_arn'))}</code>: <b>{_e(line['status'])}</b>, started "
        f"{_e(line['started_at'])}, ended {_e(line['ended_at'])} ({line['seconds']:.1f} s, {len(line['states'])} "
        "states entered; a loop's turns are one row).</p>"
        + _table(["at", "state", "type", "time in state", "error", ""], rows, "timeline")
        + (f"<h3>Errors in the history</h3><ul>{errors}</ul>" if errors else "")
    )


def _why_html(data: dict[str, Any]) -> str:
    run, line = data["run"], data.get("timeline") or {}
    execution_input = line.get("input")
    return _pairs(
        [
            ("trigger", f"<b>{_e(run.get('trigger'))}</b>"),
            ("reason", _e(run.get("trigger_reason"))),
            ("batch", f"<code>{_e(run.get('data_uri'))}</code> (ETag {_e(run.get('data_etag'))})"),
            ("provenance", _e(run.get("provenance"))),
            ("execution", f"<code>{_e(run.get('execution'))}</code>"),
            ("input", f"<code>{_e(execution_input)}</code>" if execution_input else "–"),
            ("started / ended", f"{_e(run.get('started_at'))} / {_e(run.get('ended_at'))}"),
        ]
        + ([("next run", _e(run["next_run"]))] if run.get("next_run") else [])
        + ([("waiting alarm", _e(run["pending_alarm"]))] if run.get("pending_alarm") else [])
        + (
            [("quarantined", f"{_e(run['quarantined'].get('uri'))}: {_e(run['quarantined'].get('reason'))}")]
            if isinstance(run.get("quarantined"), dict)
            else []
        )
    )


def _quality_html(run: dict[str, Any]) -> str:
    quality = run.get("quality")
    if not quality:
        return "<p class='muted'>The run did not check a batch.</p>"
    verdict = "<p class='ok'>passed</p>" if quality["passed"] else "<p class='bad'>blocked</p>"
    lists = "".join(
        f"<h3>{title} ({len(items)})</h3><ul>" + "".join(f"<li>{_e(item)}</li>" for item in items) + "</ul>"
        for title, items in (("Blocking", quality.get("blocking") or []), ("Warnings", quality.get("warnings") or []))
        if items
    )
    return verdict + (lists or "<p>No findings.</p>")


def _drift_html(data: dict[str, Any]) -> str:
    summary, report = data["run"].get("drift"), data.get("drift")
    if not summary:
        return "<p class='muted'>No drift check ran (no champion yet, or the batch was refused first).</p>"
    verdict = "<p class='bad'>Drift detected</p>" if summary["detected"] else "<p class='ok'>No drift</p>"
    links = (
        f"<p>Drift page: <code>{_e(summary.get('report_html_uri'))}</code>; JSON: "
        f"<code>{_e(summary.get('report_uri'))}</code></p>"
    )
    if not report:
        drifted = ", ".join(summary.get("drifted_features") or []) or "none"
        return verdict + f"<p>Drifted: {_e(drifted)} (the drift report could not be read)</p>" + links
    plots = data.get("drift_plots") or {}
    columns = dict(report["features"])
    # The target under its column's name, as the drift page names its plot; the model's outputs and metric apart.
    for key, label in (
        ("target", data.get("target_column") or "<target>"),
        ("prediction", "<predictions>"),
        ("performance", "<performance>"),
    ):
        part = report.get(key)
        if isinstance(part, dict) and "drifted" in part and "test" in part:
            columns[label] = {**part, "kind": key}
    performance = report.get("performance")
    if isinstance(performance, dict) and performance.get("baseline") is not None:
        settings_note = (
            f"<p>The champion's {_e(performance.get('metric'))} on the labelled rows of the batch: "
            f"{_n(performance.get('baseline'))} on its holdout, {_n(performance.get('current'))} now"
            f"{' (a significant drop)' if performance.get('drifted') else ''}.</p>"
        )
    else:
        settings_note = ""
    order = sorted(columns, key=lambda c: (not columns[c]["drifted"], -(columns[c].get("effect_size") or 0.0)))
    rows = []
    for name in order:
        result = columns[name]
        measure = {"psi": " PSI", "total_variation": " TV"}.get(result.get("effect_measure", ""), "")
        rows.append(
            [
                f"<b>{_e(name)}</b>",
                _e(result.get("kind")),
                _e(result.get("test")),
                _n(result.get("statistic")),
                _p(result.get("p_value")),
                _n(result.get("effect_size")) + measure,
                "<span class='bad'>DRIFT</span>" if result["drifted"] else "",
            ]
        )
    figures_html = "".join(
        f"<figure class='plot' data-column='{html.escape(name, quote=True)}'><figcaption>{_e(name)}</figcaption>"
        f"{plots[name]}</figure>"
        for name in order
        if name in plots
    )
    settings = (
        f"<p>{report.get('n_reference'):,} reference rows, {report.get('n_current'):,} current rows; alpha "
        f"{_e(report.get('alpha'))} over {_e(report.get('horizon_checks', 1))} check(s) ({_e(report.get('correction'))}"
        f" across columns); effect floors PSI {_e(report.get('min_psi'))}, total variation "
        f"{_e(report.get('min_effect_size'))}.</p>"
    )
    missing_plots = [n for n in report.get("drifted_features", []) if n not in plots]
    note = f"<p class='muted'>No plot found for: {_e(', '.join(missing_plots))}</p>" if missing_plots else ""
    return (
        verdict
        + settings
        + settings_note
        + _table(["column", "kind", "test", "statistic", "p-value", "effect size", ""], rows, "drift")
        + f"<div class='plots'>{figures_html}</div>"
        + note
        + links
    )


def _interval_svg(metric: str, rows: list[tuple[str, float | None, list[float] | None, str]]) -> str:
    """A small forest plot: each model's value as a dot and its 95% interval as a bar, on one axis."""
    points = [v for _, value, interval, _ in rows for v in [value, *(interval or [])] if v is not None]
    if not points:
        return ""
    low, high = min(points), max(points)
    pad = (high - low) * 0.1 or 0.01
    low, high = low - pad, high + pad
    width, left, right, step = 420, 90, 20, 26
    height = 20 + step * len(rows)

    def x(value: float) -> float:
        return left + (value - low) / (high - low) * (width - left - right)

    shapes = []
    for i, (label, value, interval, colour) in enumerate(rows):
        y = 20 + i * step
        shapes.append(f'<text x="4" y="{y + 4}" font-size="11">{html.escape(label)}</text>')
        if interval:
            shapes.append(
                f'<line x1="{x(interval[0]):.1f}" x2="{x(interval[1]):.1f}" y1="{y}" y2="{y}" stroke="{colour}" '
                'stroke-width="4"/>'
            )
        if value is not None:
            shapes.append(f'<circle cx="{x(value):.1f}" cy="{y}" r="5" fill="{colour}"/>')
    axis = (
        f'<text x="{left}" y="{height - 2}" font-size="10">{low:.4g}</text>'
        f'<text x="{width - right}" y="{height - 2}" font-size="10" text-anchor="end">{high:.4g}</text>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
        f"<title>{html.escape(metric)}: value and 95% interval</title>"
        f'<rect width="{width}" height="{height}" fill="#fafafa" stroke="#ccc"/>{"".join(shapes)}{axis}</svg>'
    )


def _gate_html(data: dict[str, Any]) -> str:
    summary = data["run"].get("gate")
    if not summary:
        return "<p class='muted'>The run did not reach the gate.</p>"
    gate = data.get("gate") or summary
    verdict = (
        f"<p class='{'ok' if gate['promote'] else 'bad'}'><b>{'promote' if gate['promote'] else 'keep the champion'}"
        f"</b>: {_e(gate['reason'])}</p>"
    )
    primary = gate.get("primary_metric")
    evidence = _pairs(
        [
            ("primary metric", f"<b>{_e(primary)}</b>"),
            ("challenger", f"<span class='num' id='gate-challenger'>{_n(gate.get('challenger'))}</span>"),
            ("champion", f"<span class='num' id='gate-champion'>{_n(gate.get('champion'))}</span>"),
            ("improvement", _n(gate.get("improvement"))),
            (
                "95% interval of the difference (challenger − champion)",
                f"{_n(gate.get('ci_low'))} … {_n(gate.get('ci_high'))}" if gate.get("ci_low") is not None else "–",
            ),
            ("required improvement", _n(gate.get("required_improvement"))),
            ("test", f"{_e(gate.get('test'))}, p = {_p(gate.get('p_value'))} (alpha {_e(gate.get('alpha'))})"),
            ("holdout rows", _n(gate.get("n_rows"))),
            ("full decision", f"<code>{_e(data.get('gate_uri'))}</code>"),
        ]
    )
    metrics = gate.get("all_metrics") or {}
    intervals = gate.get("intervals") or {}
    challenger, champion = metrics.get("challenger") or {}, metrics.get("champion") or {}
    ci_challenger, ci_champion = intervals.get("challenger") or {}, intervals.get("champion") or {}

    def cell(value: Any, interval: list[float] | None) -> str:
        return _n(value) + (f" <span class='muted'>[{interval[0]:.4f}, {interval[1]:.4f}]</span>" if interval else "")

    rows, plots = [], []
    for metric in sorted(set(challenger) | set(champion), key=lambda m: (m != primary, m)):
        rows.append(
            [
                f"<b>{_e(metric)}</b>" if metric == primary else _e(metric),
                cell(challenger.get(metric), ci_challenger.get(metric)),
                cell(champion.get(metric), ci_champion.get(metric)),
            ]
        )
        svg = _interval_svg(
            metric,
            [
                ("challenger", challenger.get(metric), ci_challenger.get(metric), "#d62728"),
                ("champion", champion.get(metric), ci_champion.get(metric), "#1f77b4"),
            ]
            if champion
            else [("challenger", challenger.get(metric), ci_challenger.get(metric), "#d62728")],
        )
        if svg:
            plots.append(
                f"<figure class='plot' data-metric='{html.escape(metric, quote=True)}'><figcaption>{_e(metric)}"
                f"</figcaption>{svg}</figure>"
            )
    table = (
        "<h3>Holdout metrics with 95% bootstrap intervals</h3>"
        + _table(["metric", "challenger", "champion"], rows, "metrics")
        + f"<div class='plots'>{''.join(plots)}</div>"
        if rows
        else ""
    )
    floors = gate.get("floors") or []
    guards = gate.get("guards") or gate.get("failed_guards") or []
    checks = (
        _table(
            ["rule", "value", "limit", "holds"],
            [[f"floor {_e(f['metric'])}", _n(f["value"]), _e(f["floor"]), _e(f["holds"])] for f in floors]
            + [
                [
                    f"guard {_e(g['metric'])}"
                    + (f" in {_e(g['segment_column'])}={_e(g['segment'])}" if g.get("segment") is not None else ""),
                    f"degrades {_n(g['degradation'])} ({_n(g['champion'])} → {_n(g['challenger'])})",
                    _e(g["tolerance"]),
                    _e(g["holds"]),
                ]
                for g in guards
            ],
        )
        if floors or guards
        else ""
    )
    return verdict + evidence + table + checks


def _training_html(run: dict[str, Any]) -> str:
    training = run.get("training")
    if not training:
        return "<p class='muted'>No training job ran.</p>"
    pairs = [
        (
            "job",
            f"<code>{_e(training.get('job_name'))}</code>: {_e(training.get('status'))} "
            f"({_e(training.get('secondary_status'))})",
        ),
        ("capacity", "managed spot" if training.get("spot") else "on-demand"),
        ("attempts", _e(training.get("attempts"))),
        (
            "training / billable seconds",
            f"{_n(training.get('training_seconds'), 0)} / {_n(training.get('billable_seconds'), 0)}",
        ),
        ("spot savings", f"{_n(training.get('savings_percent'), 1)} %"),
        ("estimated cost", f"<b id='cost'>{_usd(training.get('estimated_cost_usd'))}</b>"),
    ]
    window = training.get("window")
    if window:
        pairs.append(
            (
                "training window",
                f"{_e(window.get('window'))}: {_e(window.get('n_batches'))} batch(es) of "
                f"{_e(window.get('n_kept_available'))} kept, {_n(window.get('bytes'))} bytes; manifest "
                f"<code>{_e(window.get('inputs_manifest_uri'))}</code>",
            )
        )
    candidates = training.get("candidates") or []
    table = (
        _table(
            ["family", "job", "status", "CV score", "billable s", "cost"],
            [
                [
                    _e(c.get("family")) + (" (chosen)" if c.get("family") == training.get("chosen") else ""),
                    f"<code>{_e(c.get('job_name'))}</code>",
                    _e(c.get("status")),
                    _n(c.get("cv_score")),
                    _n(c.get("billable_seconds"), 0),
                    _usd(c.get("estimated_cost_usd")),
                ]
                for c in candidates
            ],
        )
        if candidates
        else ""
    )
    return _pairs(pairs) + table


def _deploy_html(run: dict[str, Any]) -> str:
    parts = []
    registry, approval, canary, endpoint = (
        run.get("registry"),
        run.get("approval"),
        run.get("canary"),
        run.get("endpoint"),
    )
    if registry:
        parts.append(
            _pairs(
                [
                    ("model package", f"version <b>{_e(registry.get('version'))}</b>: {_e(registry.get('approval'))}"),
                    ("arn", f"<code>{_e(registry.get('model_package_arn'))}</code>"),
                ]
                + ([("registry update", _e(run["registry_update"]))] if run.get("registry_update") else [])
            )
        )
    if approval:
        parts.append(
            f"<p>Approval: {'approved' if approval.get('approved') else 'not approved'} by {_e(approval.get('by'))}"
            f" ({_e(approval.get('reason'))})</p>"
        )
    if canary:
        parts.append(
            f"<h3>Canary</h3><p class='{'ok' if canary.get('healthy') else 'bad'}'>"
            f"{'healthy' if canary.get('healthy') else 'unhealthy'}: {_e(canary.get('reason'))}</p>"
            + _pairs(
                [
                    ("invocations", _n(canary.get("invocations"), 0)),
                    ("5xx errors", _n(canary.get("errors_5xx"), 0)),
                    ("error rate", _n(canary.get("error_rate"))),
                    ("mean model latency", f"{_n(canary.get('mean_model_latency_ms'), 1)} ms"),
                    ("alarm state", _e(canary.get("alarm_state"))),
                ]
            )
            + (
                "<ul>" + "".join(f"<li>{_e(canary_step_line(step))}</li>" for step in canary["steps"]) + "</ul>"
                if canary.get("steps")
                else ""
            )
        )
    if endpoint:
        variants = ", ".join(f"{_e(v.get('name'))} = {_n(v.get('weight'), 2)}" for v in endpoint.get("variants", []))
        parts.append(
            f"<p>Endpoint <code>{_e(endpoint.get('name'))}</code> after the run: {_e(endpoint.get('status'))}, "
            f"config <code>{_e(endpoint.get('config'))}</code>, weights {variants or '–'}</p>"
        )
    return "".join(parts) or "<p class='muted'>Nothing was registered or deployed.</p>"


def _lineage_html(data: dict[str, Any]) -> str:
    run, lineage = data["run"], data.get("lineage")
    registry = run.get("registry") or {}
    if not registry.get("lineage_uri"):
        return "<p class='muted'>No model version came out of this run.</p>"
    version = registry.get("version")
    commands = (
        f"<p><code>refit lineage {_e(run['model'])} {_e(version)}</code>"
        + (
            f" · <code>refit diff {_e(run['model'])} {version - 1} {version}</code>"
            if isinstance(version, int) and version > 1
            else ""
        )
        + "</p>"
    )
    head = f"<p>Lineage document: <code>{_e(registry['lineage_uri'])}</code></p>" + commands
    if not lineage:
        return head
    inputs = lineage.get("inputs") or []
    return (
        head
        + _pairs(
            [
                ("code version", f"<code>{_e(lineage.get('code_version'))}</code>"),
                ("image", f"<code>{_e(lineage.get('image_uri'))}</code> ({_e(lineage.get('image_digest'))})"),
                ("training job", f"<code>{_e(lineage.get('training_job'))}</code>"),
                ("model data", f"<code>{_e(lineage.get('model_data_url'))}</code>"),
                ("baseline", f"<code>{_e(lineage.get('baseline_uri'))}</code>"),
                ("evaluation", f"<code>{_e(lineage.get('evaluation_uri'))}</code>"),
            ]
        )
        + _table(
            ["input", "version id", "ETag", "bytes"],
            [
                [f"<code>{_e(i.get('uri'))}</code>", _e(i.get("version_id")), _e(i.get("etag")), _n(i.get("bytes"))]
                for i in inputs[:50]
            ],
        )
        + (f"<p class='muted'>and {len(inputs) - 50} more inputs</p>" if len(inputs) > 50 else "")
    )


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #eee;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}table.kv th{background:#f6f6f6;font-weight:600;white-space:nowrap}
code{font-size:.9em;word-break:break-all}.ok{color:#2e7d32}.bad{color:#b00020}.muted{color:#777}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.badge.SUCCEEDED{background:#2e7d32}.badge.FAILED,.badge.TIMED_OUT,.badge.ABORTED{background:#b00020}
.badge.SKIPPED{background:#777}table.timeline td:last-child{width:40%}
.track{background:#f1f1f1;height:12px;position:relative}.bar{background:#1f77b4;height:12px}
.bar.failed{background:#b00020}figure{display:inline-block;margin:.6em}figcaption{font-weight:600}
nav a{margin-right:1em}
"""


def render(data: dict[str, Any]) -> str:
    """The page: self-contained (inline CSS and SVG), no script."""
    run = data["run"]
    title = f"refit run {run['run_id']} ({run['model']})"
    sections = [
        ("why", "Why it ran", _why_html(data)),
        ("timeline", "Timeline", _timeline_html(data)),
        ("quality", "Data quality", _quality_html(run)),
        ("drift", "Drift per feature", _drift_html(data)),
        ("gate", "Gate: challenger vs champion", _gate_html(data)),
        ("cost", "Training and cost", _training_html(run)),
        ("deploy", "Registry, approval and canary", _deploy_html(run)),
        ("lineage", "Lineage", _lineage_html(data)),
    ]
    problems = [*(run.get("problems") or []), *([run["error"]] if run.get("error") else []), *data["notes"]]
    nav = "".join(f"<a href='#{anchor}'>{html.escape(name)}</a>" for anchor, name, _ in sections)
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p><span class='badge {_e(run['status'])}' id='status'>{_e(run['status'])}</span> "
        f"<b id='outcome'>{_e(run['outcome'])}</b>: {_e(run['message'])}</p>"
        f"<nav>{nav}</nav>"
        + "".join(_section(anchor, name, body) for anchor, name, body in sections)
        + (
            "<section id='notes'><h2>Not shown</h2><ul>"
            + "".join(f"<li>{_e(p)}</li>" for p in problems)
            + "</ul></section>"
            if problems
            else ""
        )
        + f"<p class='muted'>Audit record {_e(run['pk'])} / {_e(run['sk'])}.</p></body></html>\n"
    )


# ----------------------------------------------------------------------------------------------------------------- CLI
def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    report = commands.add_parser(
        "report", help="one self-contained HTML page of a run (timeline, drift, gate, cost, lineage)", parents=[common]
    )
    report.add_argument("run_id", help="the run id or execution name (refit runs MODEL lists them)")
    report.add_argument("-o", "--output", help="where to write the page (default: refit-run-RUN_ID.html)")
    report.add_argument("--json", action="store_true", help="print what the page shows as JSON")
    report.add_argument("--model", help="look for the run under this model only (default: every configured model)")
    report.add_argument("--audit-table")
    report.add_argument("--stack", help="the deployed stack (default: the configuration's project name)")
    report.add_argument("--stack-outputs", help="a JSON file of the stack's outputs instead of CloudFormation")


def default_output(run_id: str) -> Path:
    return Path(f"refit-run-{re.sub(r'[^A-Za-z0-9._-]', '-', run_id)}.html")


def report_command(
    args: argparse.Namespace,
    config: RefitConfig,
    audit_table: str,
    clients: Any,
    out: Any,
    state_machine_arn: Callable[[str], str],
) -> None:
    """Write the page (and print the JSON with --json). `clients(service)` makes a boto3 client;
    `state_machine_arn(model)` finds the model's state machine (run_commands.Resources.state_machine_arn)."""
    data = collect(
        args.run_id,
        config=config,
        audit_table=audit_table,
        dynamodb=clients("dynamodb"),
        s3=clients("s3"),
        stepfunctions=clients("stepfunctions"),
        state_machine_arn=state_machine_arn,
        model=args.model,
    )
    path = Path(args.output) if args.output else (None if args.json else default_output(args.run_id))
    if path is not None:
        path.write_text(render(data), encoding="utf-8")
    if args.json:
        print(json.dumps({**data, "output": str(path) if path else None}, default=str), file=out)
    else:
        run = data["run"]
        print(f"wrote {path}: run {run['run_id']} of {run['model']}, {run['status']} ({run['outcome']})", file=out)
