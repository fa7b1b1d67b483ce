"""Synthetic traffic for a quiet canary step or shadow bake (`[models.deploy.synthetic_traffic]`).

A quiet window is never a pass (refit_core.canary.step_verdict). With synthetic traffic enabled, a step that failed
only as quiet (a comparison that could not be judged for want of traffic) is topped up ONCE: each variant under the
floor (judging_floor: invocations, p99 samples, captured outputs) gets (floor - seen) requests, at
most `max_requests_per_variant`, replayed from the holdout rows the gate scored for this run (written by `train`,
stored by the Gate under `reports/<model>/<run>/`), and the step is judged again after a settle wait. Every request
carries an InvokeEndpoint `InferenceId` starting with SYNTHETIC_PREFIX, which Data Capture records
(eventMetadata.inferenceId): the monitor, `refit feedback` and the A/B test's labelled rows leave such records out
(refit_core.capture), so live performance, ground truth and active learning never count them. The step's verdict
says how many synthetic requests each variant received.

In deploy.mode variants each request names its variant (`TargetVariant`); in shadow mode requests go to the endpoint
(the champion, its only production variant) and SageMaker copies them to the shadow at `sampling_percent`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from refit_core.names import run_part

SYNTHETIC_PREFIX = "refit-synthetic-"
HOLDOUT_ROWS_FILE = "holdout_rows.jsonl"
CONTENT_TYPE = "application/json"
MAX_INFERENCE_ID = 64  # InvokeEndpoint's InferenceId: 1-64 printable characters (botocore's service model)
RUN_ROOM = 30  # characters of the run id in an inference id (refit_core.names.run_part hashes a longer one)


class SyntheticTrafficError(ValueError):
    """Synthetic traffic that cannot be sent as asked; the message names what and where."""


def is_synthetic(inference_id: str | None) -> bool:
    """Whether a captured record's inferenceId marks a request refit sent itself (never live traffic)."""
    return bool(inference_id) and str(inference_id).startswith(SYNTHETIC_PREFIX)


def inference_id(run_id: str, step: int, number: int) -> str:
    """`refit-synthetic-<run>-<step>-<n>`: unique per run, step and request, within InferenceId's 64 characters."""
    value = f"{SYNTHETIC_PREFIX}{run_part(run_id, RUN_ROOM)}-{step}-{number}"
    if len(value) > MAX_INFERENCE_ID:
        raise SyntheticTrafficError(f"inference id {value!r} is over InvokeEndpoint's {MAX_INFERENCE_ID} characters")
    return value


def holdout_rows_key(model_name: str, run_id: str) -> str:
    """Where the Gate stores the holdout rows `train` wrote for replay (the artifact bucket, the run's reports)."""
    return f"reports/{model_name}/{run_id}/{HOLDOUT_ROWS_FILE}"


def replay_lines(holdout: Any, drop: Iterable[str], count: int, seed: int) -> str:
    """What `train` keeps for replay: at most `count` of the holdout rows the gate scores (a seeded sample, a pandas
    DataFrame), without the target and id columns (`drop`), as JSON Lines of feature name -> value (null when
    missing, dates in ISO 8601)."""
    rows = holdout.drop(columns=[c for c in drop if c in holdout.columns])
    rows = rows.sample(n=min(count, len(rows)), random_state=seed)
    return rows.to_json(orient="records", lines=True, date_format="iso")


def top_up(seen: Mapping[str, float], floor: int, cap: int) -> dict[str, int]:
    """Requests per variant to bring each to `floor` invocations in the window: floor - seen, at most `cap`, 0 for a
    variant already at the floor."""
    return {name: min(cap, max(0, math.ceil(floor - count))) for name, count in seen.items()}


def judging_floor(
    min_invocations: int,
    min_latency_samples: int,
    min_outputs: int,
    rows_per_request: int,
    capture_percent: int,
) -> int:
    """The requests each variant must see in a window for every comparison to be judged (a quiet window is not a
    pass, refit_core.canary.step_verdict): the invocation floor, `min_latency_samples` ModelLatency samples for the
    p99 (one per request), and `min_outputs` captured outputs for the prediction-divergence test, of
    `rows_per_request` rows each when Data Capture records `capture_percent` of the requests."""
    outputs = math.ceil(math.ceil(min_outputs / rows_per_request) * 100 / capture_percent)
    return max(min_invocations, min_latency_samples, outputs)


def shadow_top_up(champion_seen: float, shadow_seen: float, floor: int, cap: int, sampling_percent: int) -> int:
    """Requests to the endpoint (served by the champion, copied to the shadow at `sampling_percent`) so that both
    reach `floor` in expectation: the champion needs floor - seen, the shadow (floor - seen) / share; at most `cap`."""
    champion_needs = max(0, math.ceil(floor - champion_seen))
    shadow_needs = max(0, math.ceil((floor - shadow_seen) * 100 / sampling_percent))
    return min(cap, max(champion_needs, shadow_needs))


def needs_top_up(enabled: bool, verdict: Mapping[str, Any], topped_up: bool) -> bool:
    """A step is topped up when synthetic traffic is enabled, the step failed only for want of traffic (`quiet`: a
    step that failed on evidence of harm is never retried) and it has not been topped up already (once per step)."""
    return enabled and not verdict.get("healthy") and bool(verdict.get("quiet")) and not topped_up


def holdout_rows(lines: Iterable[bytes | str], source: str) -> list[dict[str, Any]]:
    """The replay rows: one JSON object per line (feature name -> value, null for a missing value). Raises
    SyntheticTrafficError naming the line for anything else, and for a file without rows."""
    rows: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            raise SyntheticTrafficError(f"{source} line {number}: not JSON ({error})") from None
        if not isinstance(row, dict) or not row:
            raise SyntheticTrafficError(f"{source} line {number}: not a row object")
        rows.append(row)
    if not rows:
        raise SyntheticTrafficError(f"{source} has no holdout rows to replay")
    return rows


def request_bodies(
    rows: Sequence[Mapping[str, Any]], requests: int, rows_per_request: int, start: int = 0
) -> list[bytes]:
    """`requests` JSON bodies (`{"instances": [row objects]}`, which `serve` reads by feature name) of
    `rows_per_request` rows each, taken in order from row `start` and cycling over the rows."""
    bodies = []
    for index in range(requests):
        first = start + index * rows_per_request
        chosen = [rows[(first + offset) % len(rows)] for offset in range(rows_per_request)]
        bodies.append(json.dumps({"instances": chosen}, allow_nan=False).encode())
    return bodies


def send(
    runtime: Any,
    endpoint_name: str,
    requests: Mapping[str, int],
    rows: Sequence[Mapping[str, Any]],
    *,
    rows_per_request: int,
    run_id: str,
    step: int,
    target_variants: bool,
) -> dict[str, Any]:
    """Send the top-up: `requests[variant]` requests per variant, each marked synthetic; with `target_variants` each
    names its variant (TargetVariant), else it goes to the endpoint as a caller's would. A ModelError (the variant
    answered 4XX/5XX) is counted, not raised: CloudWatch records it for the variant and the step judges it. Other
    errors (the endpoint missing, throttling) raise."""
    sent: dict[str, dict[str, Any]] = {}
    number, offset = 0, 0
    started = datetime.now(UTC).isoformat(timespec="seconds")
    for name, count in requests.items():
        answered, model_errors = 0, 0
        served_by: dict[str, int] = {}
        for body in request_bodies(rows, count, rows_per_request, offset):
            arguments = {
                "EndpointName": endpoint_name,
                "Body": body,
                "ContentType": CONTENT_TYPE,
                "Accept": CONTENT_TYPE,
                "InferenceId": inference_id(run_id, step, number),
            }
            if target_variants:
                arguments["TargetVariant"] = name
            number += 1
            try:
                response = runtime.invoke_endpoint(**arguments)
            except runtime.exceptions.ModelError:
                model_errors += 1
                continue
            response["Body"].read()
            answered += 1
            invoked = response.get("InvokedProductionVariant") or name
            served_by[invoked] = served_by.get(invoked, 0) + 1
        offset += count * rows_per_request
        sent[name] = {"requests": count, "answered": answered, "model_errors": model_errors, "served_by": served_by}
    return {
        "step": step,
        "requests": {name: entry["requests"] for name, entry in sent.items()},
        "variants": sent,
        "rows_per_request": rows_per_request,
        "target_variants": target_variants,
        "inference_id_prefix": f"{SYNTHETIC_PREFIX}{run_part(run_id, RUN_ROOM)}-{step}-",
        "started_at": started,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def describe(synthetic: Mapping[str, Any]) -> str:
    """How a step was topped up, for its reason: 'judged with synthetic traffic: 18 requests to challenger, ...'."""
    requests = synthetic.get("requests") or {}
    parts = ", ".join(f"{count} to {name}" for name, count in requests.items())
    return (
        f"judged with synthetic traffic replayed from this run's holdout rows ({parts}; "
        f"{synthetic.get('rows_per_request')} row(s) each)"
    )
