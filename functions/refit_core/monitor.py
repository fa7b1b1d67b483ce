"""The production half of the loop: one monitor run per model per period (refit_handlers.monitor).

A run
1. reads the Data Capture files it has not read yet, variant by variant (refit_core.capture), and stores
   each as a prediction part `monitoring/<model>/captured/<variant>/<capture path>.parquet`;
2. reads the ground-truth files it has not read yet (refit_core.ground_truth) into label parts;
3. joins the labels with the captured rows of its window (`monitor.window_hours`; for the champion variant only rows
   served since the endpoint last changed, so a promoted model starts a fresh record) and computes, per variant, the
   live primary metric with its confidence interval, the label delay and the confidence-based estimate
   (refit_core.live_metrics); tests the champion's live inputs and outputs for drift against its baseline;
4. writes the rows labelled in this run as a feedback part (the training history's `feedback` provenance; an alarm
   run takes them as its batch), and active learning's picks as a Ground Truth manifest;
5. publishes CloudWatch metrics (namespace Refit, dimensions Model + Variant), writes the report (JSON + HTML) and
   only then records what it read: a run that fails part-way is repeated whole by the next, and every file it writes
   is named after its input, so a repeat writes the same objects again.

Memory is bounded by one capture file, the window's labels and per-variant (label, score) arrays.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from refit_core import active_learning, live_metrics
from refit_core.artifacts import ModelArtifact, load_model_artifact
from refit_core.batch import BatchStats
from refit_core.canary import CHAMPION
from refit_core.capture import read_capture
from refit_core.champion import describe_endpoint, find_champion
from refit_core.config import ModelConfig
from refit_core.drift import detect_drift
from refit_core.ground_truth import read_labels
from refit_core.metric_names import (
    CAPTURE_PROBLEMS,
    CAPTURED_ROWS,
    DRIFTED_FEATURES,
    ESTIMATED_METRIC,
    INPUT_DRIFT,
    LABEL_DELAY_SECONDS,
    LABEL_PROBLEMS,
    LABELLED_ROWS,
    LIVE_METRIC,
    LIVE_METRIC_ALARM_BOUND,
    LIVE_METRIC_LOWER,
    LIVE_METRIC_UPPER,
    MONITOR_NAMESPACE,
    PREDICTION_DRIFT,
)
from refit_core.profile import ProfileError, loads_profile
from refit_core.s3uri import S3Uri

STATE_FORMAT = "refit.monitor-state/2"
# Files may land out of key order: SageMaker names a capture file after its first record, and an instance may write
# its buffer minutes after another instance wrote a later-named file; a label writer may file under an earlier hour.
# So a run lists again every hour folder this recent and skips the files it already read (kept in its state).
CAPTURE_LOOKBACK_HOURS = 3
LABEL_LOOKBACK_HOURS = 48
# What one run reads at most (a Lambda has 15 minutes); the rest waits for the next run, which the report says.
MAX_FILES_PER_RUN = 3000
REPORT_FORMAT = "refit.monitor-report/1"
SCORE = "__score"


class MonitorError(RuntimeError):
    """The monitor cannot judge the model (no baseline, an unreadable state file): the message says why."""


@dataclass
class Place:
    """Where one model's production data lives."""

    model: ModelConfig
    data_bucket: str
    artifact_bucket: str
    endpoint_name: str
    quality_alarm: str = ""  # the alarm on the live metric, when the model has one

    def monitoring(self, *parts: str) -> str:
        return self.model.monitoring_prefix + "/".join(parts)


@dataclass
class VariantRows:
    """What the window holds for one variant: labelled (label, score, delay) and every captured score."""

    labels: list[np.ndarray] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    delays: list[np.ndarray] = field(default_factory=list)
    all_scores: list[np.ndarray] = field(default_factory=list)
    captured: int = 0

    def add(self, frame: pd.DataFrame, labelled: pd.Series, label_time: pd.Series, sampled: np.ndarray) -> None:
        """`sampled`: rows whose label is a sample of the traffic (not picked for labelling by active learning)."""
        scores = frame[SCORE].to_numpy(dtype=float)
        self.captured += len(frame)
        self.all_scores.append(scores)
        mask = labelled.notna().to_numpy() & sampled
        if mask.any():
            self.labels.append(labelled.to_numpy(dtype=float)[mask])
            self.scores.append(scores[mask])
            delay = (label_time[mask] - frame["inference_time"][mask]).dt.total_seconds().to_numpy(dtype=float)
            self.delays.append(delay)

    @staticmethod
    def _joined(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.empty(0)


def _hour_path(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y/%m/%d/%H")


def _list(s3: Any, bucket: str, prefix: str, start_after: str | None = None) -> list[dict[str, Any]]:
    """Every object under a prefix, in key order, after `start_after` (S3 lists in UTF-8 binary key order)."""
    paginator = s3.get_paginator("list_objects_v2")
    options = {"Bucket": bucket, "Prefix": prefix}
    if start_after:
        options["StartAfter"] = start_after
    return [item for page in paginator.paginate(**options) for item in page.get("Contents", [])]


def _child_prefixes(s3: Any, bucket: str, prefix: str) -> list[str]:
    paginator = s3.get_paginator("list_objects_v2")
    return [
        item["Prefix"]
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        for item in page.get("CommonPrefixes", [])
    ]


def _get_json(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MonitorError(
            f"s3://{bucket}/{key}: not valid JSON ({error}); delete it to start the monitor afresh"
        ) from None


def _put_parquet(s3: Any, bucket: str, key: str, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue(), ContentType="application/vnd.apache.parquet")


def _read_parquet(s3: Any, bucket: str, key: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


def load_state(s3: Any, place: Place) -> dict[str, Any]:
    state = _get_json(s3, place.artifact_bucket, place.monitoring("state.json"))
    if state is None:
        return {"format": STATE_FORMAT, "capture": {}, "labels": {}}
    if state.get("format") != STATE_FORMAT:
        raise MonitorError(f"monitor state format {state.get('format')!r} is not {STATE_FORMAT!r}")
    return state


def _score_column(frame: pd.DataFrame, problem_type: str) -> pd.Series:
    column = "probability" if problem_type == "binary_classification" else "prediction"
    return pd.to_numeric(frame[column], errors="coerce")


def _typed(frame: pd.DataFrame, features: list[str], numeric: list[str]) -> pd.DataFrame:
    """One type per column, as Parquet needs: pandas types each request's columns on its own, so a text column may
    hold `1` in one request and `"basic"` in the next."""
    for column in features:
        if column in numeric:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
        else:
            frame[column] = frame[column].map(lambda value: None if pd.isna(value) else str(value)).astype(object)
    return frame


def _hour_of(relative: str) -> str:
    """`yyyy/mm/dd/hh` of a key below a capture or label prefix, or "other" for a key outside that layout."""
    parts = relative.split("/")
    if len(parts) >= 5 and all(part.isdigit() for part in parts[:4]):
        return "/".join(parts[:4])
    return "other"


def new_files(
    s3: Any,
    bucket: str,
    prefix: str,
    seen: dict[str, list[str]],
    *,
    oldest: datetime,
    limit: int,
) -> tuple[list[dict[str, Any]], dict[str, list[str]], bool]:
    """Objects under `prefix` this run has not read, from the hour folder of `oldest` on: every folder since then is
    listed again and files already read (remembered in the state) are skipped, so files that land out of key order
    are still read. At most `limit` files: the rest wait for the next run (the third value says so). Returns the new
    objects in key order and what the state remembers afterwards."""
    first_hour = _hour_path(oldest)
    remembered = {hour: set(names) for hour, names in seen.items() if hour == "other" or hour >= first_hour}
    fresh: list[dict[str, Any]] = []
    backlog = False
    for item in _list(s3, bucket, prefix, f"{prefix}{first_hour[:-3]}"):
        relative = item["Key"][len(prefix) :]
        hour = _hour_of(relative)
        if (hour != "other" and hour < first_hour) or relative in remembered.get(hour, ()):
            continue
        if len(fresh) >= limit:
            backlog = True
            break
        fresh.append(item)
        remembered.setdefault(hour, set()).add(relative)
    kept = {hour: sorted(names) for hour, names in remembered.items() if hour == "other" or hour >= first_hour}
    return fresh, kept, backlog


def read_since(state: dict[str, Any], now: datetime, window_hours: float, lookback_hours: int) -> datetime:
    """The oldest hour a run lists: `lookback_hours` before the last successful run (files land late, and runs may
    have failed or been skipped since), never before the window (older files could not count)."""
    window_start = now - timedelta(hours=window_hours)
    last = state.get("updated_at")
    if not last:
        return window_start
    return max(window_start, datetime.fromisoformat(last) - timedelta(hours=lookback_hours))


def _read_capture(lines: Any, **options: Any) -> Any:
    try:
        return read_capture(lines, **options)
    except ValueError as error:  # a feature named like one of the reader's own columns: no file can be read
        raise MonitorError(f"cannot read the captures of this model: {error}") from None


def ingest_captures(
    s3: Any,
    place: Place,
    state: dict[str, Any],
    artifact: ModelArtifact,
    counts: Counter,
    examples: list[str],
    now: datetime,
) -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    """New capture files -> prediction parts. Returns what the state remembers per variant and the parts written."""
    model = place.model
    root = f"{model.capture_prefix}{place.endpoint_name}/"
    remembered: dict[str, dict[str, list[str]]] = dict(state.get("capture") or {})
    written: list[str] = []
    for variant_prefix in _child_prefixes(s3, place.data_bucket, root):
        variant = variant_prefix[len(root) :].rstrip("/")
        items, remembered[variant], more = new_files(
            s3,
            place.data_bucket,
            variant_prefix,
            remembered.get(variant) or {},
            oldest=read_since(state, now, model.monitor.window_hours, CAPTURE_LOOKBACK_HOURS),
            limit=MAX_FILES_PER_RUN,
        )
        if more:
            counts["backlog"] += 1
        for item in items:
            key = item["Key"]
            if not key.endswith(".jsonl"):
                continue
            body = s3.get_object(Bucket=place.data_bucket, Key=key)["Body"]
            rows = _read_capture(
                body.iter_lines(),
                source=f"s3://{place.data_bucket}/{key}",
                variant=variant,
                features=artifact.features,
                problem_type=model.problem_type,
                numeric=artifact.numeric_features,
            )
            counts.update(rows.problems)
            examples.extend(rows.examples[: max(0, 10 - len(examples))])
            frame = _typed(rows.frame.copy(), artifact.features, artifact.numeric_features)
            frame[SCORE] = _score_column(frame, model.problem_type) if len(frame) else pd.Series(dtype=float)
            invalid = ~np.isfinite(frame[SCORE].to_numpy(dtype=float))
            if model.problem_type == "binary_classification":
                invalid |= ~frame[SCORE].between(0, 1).to_numpy()
            if invalid.any():
                counts["unparseable_output"] += int(invalid.sum())
                examples.append(f"s3://{place.data_bucket}/{key}: {int(invalid.sum())} row(s) with no usable score")
                frame = frame[~invalid]
            part = place.monitoring("captured", variant, key[len(variant_prefix) :].removesuffix(".jsonl") + ".parquet")
            _put_parquet(s3, place.artifact_bucket, part, frame)
            written.append(part)
    return remembered, written


def ingest_labels(
    s3: Any, place: Place, state: dict[str, Any], counts: Counter, examples: list[str], now: datetime
) -> tuple[dict[str, list[str]], list[str]]:
    model = place.model
    written: list[str] = []
    items, remembered, more = new_files(
        s3,
        place.data_bucket,
        model.ground_truth_prefix,
        state.get("labels") or {},
        oldest=read_since(state, now, model.monitor.window_hours, LABEL_LOOKBACK_HOURS),
        limit=MAX_FILES_PER_RUN,
    )
    if more:
        counts["backlog"] += 1
    for item in items:
        key = item["Key"]
        body = s3.get_object(Bucket=place.data_bucket, Key=key)["Body"]
        labels = read_labels(
            body.iter_lines(),
            source=f"s3://{place.data_bucket}/{key}",
            problem_type=model.problem_type,
            label_time=item["LastModified"].astimezone(UTC),
        )
        counts.update(labels.problems)
        examples.extend(labels.examples[: max(0, 10 - len(examples))])
        relative = key[len(model.ground_truth_prefix) :]
        part = place.monitoring("labels", relative + ".parquet")  # x.csv and x.jsonl are two parts
        _put_parquet(s3, place.artifact_bucket, part, labels.frame)
        written.append(part)
    return remembered, written


def _window_parts(s3: Any, place: Place, kind: str, start: datetime) -> list[str]:
    """Parts of the window: their key's hour (the capture's or the label upload's) is at or after the window's."""
    parts = []
    root = place.monitoring(kind) + "/"
    prefixes = _child_prefixes(s3, place.artifact_bucket, root) if kind == "captured" else [root]
    for prefix in prefixes:
        parts += [
            item["Key"]
            for item in _list(s3, place.artifact_bucket, prefix, prefix + _hour_path(start)[:-3])
            if item["Key"][len(prefix) :][:13] >= _hour_path(start)
        ]
    return parts


def window_labels(
    s3: Any, place: Place, start: datetime, new_parts: list[str], counts: Counter, since: datetime | None = None
) -> tuple[pd.DataFrame, set[str]]:
    """The window's labels (uploaded in the `monitor.window_hours` before `start`, or since `since`), first label of
    a key kept; a key labelled again in this run's files counts as a duplicate (or a conflict when the label
    differs). Returns them and the keys first labelled in this run."""
    frames = []
    new = set(new_parts)
    oldest = since if since is not None else start - timedelta(hours=place.model.monitor.window_hours)
    parts = _window_parts(s3, place, "labels", oldest)
    for part in sorted(set(parts) | new):
        frame = _read_parquet(s3, place.artifact_bucket, part)
        frame["is_new"] = part in new
        frame["label_part"] = part
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["key", "label", "label_time", "is_new", "label_part"]), set()
    labels = pd.concat(frames, ignore_index=True)
    repeated = labels.duplicated("key", keep="first")
    first = labels[~repeated].set_index("key")
    again = labels[repeated & labels["is_new"]]
    if len(again):
        same = again["label"].to_numpy() == first.loc[again["key"], "label"].to_numpy()
        counts["duplicate"] += int(same.sum())
        counts["conflict"] += int((~same).sum())
    first = first.reset_index()
    return first, set(first.loc[first["is_new"], "key"])


@dataclass
class WindowResult:
    variants: dict[str, VariantRows]
    drift_stats: BatchStats | None
    feedback: pd.DataFrame
    new_unlabelled: pd.DataFrame
    joined_keys: set[str]


def scan_window(
    s3: Any,
    place: Place,
    *,
    start: datetime,
    variant_since: dict[str, datetime],
    labels: pd.DataFrame,
    new_label_keys: set[str],
    new_parts: set[str],
    profile: dict[str, Any] | None,
    features: list[str],
    asked: set[str] = frozenset(),
) -> WindowResult:
    """One pass over the window's prediction parts, one part in memory at a time. Labels of requests active learning
    picked (`asked`) feed training but not the live metric: the model's hardest rows are not a sample of its traffic,
    and counting them would make the metric look worse than the traffic it serves."""
    model = place.model
    by_key = labels.set_index("key") if len(labels) else None
    variants: dict[str, VariantRows] = {}
    stats = (
        BatchStats(profile, scorer=lambda chunk: chunk[SCORE].to_numpy(dtype=float), duplicates=False)
        if profile
        else None
    )
    feedback, unlabelled = [], []
    joined: set[str] = set()
    for part in _window_parts(s3, place, "captured", start):
        frame = _read_parquet(s3, place.artifact_bucket, part)
        if not len(frame):
            continue
        frame["inference_time"] = pd.to_datetime(frame["inference_time"], utc=True)
        frame = frame[frame["inference_time"] >= pd.Timestamp(start)]
        if by_key is not None:
            matched = frame["key"].map(by_key["label"])
            label_time = pd.to_datetime(frame["key"].map(by_key["label_time"]), utc=True)
        else:
            matched = pd.Series(np.nan, index=frame.index)
            label_time = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
        joined.update(frame.loc[matched.notna(), "key"])
        # A labelled request is feedback once, in the run that first sees both halves: its label's run, or, when the
        # label came first (a capture file flushed late), the run that reads its capture. The source names the part.
        label_new = frame["key"].isin(new_label_keys)
        fresh = (label_new | (part in new_parts)) & matched.notna()
        if fresh.any():
            rows = frame.loc[fresh, ["key", *features]].copy()
            rows[model.target] = matched[fresh].to_numpy()
            label_parts = frame.loc[fresh, "key"].map(by_key["label_part"]).to_numpy()
            rows["source_part"] = np.where(label_new[fresh].to_numpy(), label_parts, part)
            feedback.append(rows)
        for variant, rows in frame.groupby("variant", sort=False):
            if variant not in variant_since:
                continue  # a variant no longer on the endpoint (the challenger of a finished canary)
            rows = rows[rows["inference_time"] >= pd.Timestamp(variant_since[variant])]
            if not len(rows):
                continue
            sampled = ~rows["key"].isin(asked).to_numpy()
            variants.setdefault(str(variant), VariantRows()).add(
                rows, matched[rows.index], label_time[rows.index], sampled
            )
            if variant == CHAMPION and stats is not None:
                chunk = rows[[*features, SCORE]].copy()
                if model.target in (profile or {}).get("columns", {}):
                    chunk[model.target] = matched[rows.index].to_numpy()
                stats.add(chunk)
                if part in new_parts:
                    unlabelled.append(rows.loc[matched[rows.index].isna(), ["key", *features, SCORE]])
    return WindowResult(
        variants=variants,
        drift_stats=stats if stats is not None and stats.n_rows else None,
        feedback=pd.concat(feedback, ignore_index=True) if feedback else pd.DataFrame(),
        new_unlabelled=pd.concat(unlabelled, ignore_index=True) if unlabelled else pd.DataFrame(),
        joined_keys=joined,
    )


def judge_variant(model: ModelConfig, rows: VariantRows) -> dict[str, Any]:
    """The live metric with its interval, the label delay and the estimate from the scores alone."""
    monitor = model.monitor
    labels, scores = VariantRows._joined(rows.labels), VariantRows._joined(rows.scores)
    interval = live_metrics.metric_interval(model.primary_metric, labels, scores, confidence=monitor.confidence)
    delays = VariantRows._joined(rows.delays)
    estimate = None
    if model.problem_type == "binary_classification":
        all_scores = VariantRows._joined(rows.all_scores)
        all_scores = all_scores[np.isfinite(all_scores)]
        if all_scores.size:
            estimate = live_metrics.estimated_metric(model.primary_metric, all_scores)
    result = {
        "captured_rows": rows.captured,
        "labelled_rows": int(labels.size),
        "live": interval,
        "alarm_bound": live_metrics.alarm_bound(interval, model.primary_metric),
        "estimated": estimate,
        "label_delay_seconds": {
            "median": float(np.median(delays)) if delays.size else None,
            "p90": float(np.quantile(delays, 0.9)) if delays.size else None,
        },
    }
    if estimate is not None and labels.size:
        # The estimate assumes calibrated probabilities: say whether the labelled rows bear that out.
        calibration = live_metrics.calibration_check(labels, scores)
        result["estimate_trustworthy"] = calibration["trustworthy"]
        result["calibration"] = {k: calibration.get(k) for k in ("ece", "n", "trustworthy", "reason")}
    if model.quality_alarm is not None:
        result["breach"] = live_metrics.breach(interval, model.quality_alarm.threshold, monitor.min_labelled_rows)
    return result


def _metric(name: str, value: float | None, model: str, variant: str | None, unit: str = "None") -> list[dict]:
    if value is None or not math.isfinite(value):
        return []
    dimensions = [{"Name": "Model", "Value": model}]
    if variant is not None:
        dimensions.append({"Name": "Variant", "Value": variant})
    return [{"MetricName": name, "Dimensions": dimensions, "Value": float(value), "Unit": unit}]


def metric_data(model: ModelConfig, report: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    """What the run publishes. The alarm's bound only with enough labelled rows: fewer is silence, not a breach."""
    data: list[dict[str, Any]] = []
    for variant, result in report["variants"].items():
        live = result["live"]
        data += _metric(CAPTURED_ROWS, result["captured_rows"], model.name, variant, "Count")
        data += _metric(LABELLED_ROWS, result["labelled_rows"], model.name, variant, "Count")
        data += _metric(LIVE_METRIC, live.get("value"), model.name, variant)
        data += _metric(LIVE_METRIC_LOWER, live.get("lower"), model.name, variant)
        data += _metric(LIVE_METRIC_UPPER, live.get("upper"), model.name, variant)
        data += _metric(ESTIMATED_METRIC, result.get("estimated"), model.name, variant)
        data += _metric(LABEL_DELAY_SECONDS, result["label_delay_seconds"]["median"], model.name, variant, "Seconds")
        if result["labelled_rows"] >= model.monitor.min_labelled_rows:
            data += _metric(LIVE_METRIC_ALARM_BOUND, result.get("alarm_bound"), model.name, variant)
    drift = report.get("drift")
    if drift and "drift_detected" in drift:
        input_drift = bool(drift["drifted_features"]) or bool((drift.get("target") or {}).get("drifted"))
        data += _metric(INPUT_DRIFT, float(input_drift), model.name, CHAMPION)
        data += _metric(DRIFTED_FEATURES, len(drift["drifted_features"]), model.name, CHAMPION, "Count")
        data += _metric(
            PREDICTION_DRIFT, float(bool((drift.get("prediction") or {}).get("drifted"))), model.name, CHAMPION
        )
    data += _metric(CAPTURE_PROBLEMS, sum(report["capture"]["problems"].values()), model.name, None, "Count")
    data += _metric(LABEL_PROBLEMS, sum(report["labels"]["problems"].values()), model.name, None, "Count")
    for item in data:
        item["Timestamp"] = now
    return data


def publish(cloudwatch: Any, data: list[dict[str, Any]]) -> None:
    for start in range(0, len(data), 500):
        cloudwatch.put_metric_data(Namespace=MONITOR_NAMESPACE, MetricData=data[start : start + 500])


def write_feedback(s3: Any, place: Place, rows: pd.DataFrame, columns: list[str]) -> list[str]:
    """The rows joined in this run, as training batches of the champion's columns (its id column, when configured,
    is the capture's join key), one per part that made them new (a label file, or a late capture file) and named
    after it: a run repeated after a failure writes the same objects again, never a second copy of a row. Pending
    until an alarm run takes them (take_feedback)."""
    model = place.model
    if not model.monitor.feedback or rows.empty:
        return []
    written = []
    for source_part, group in rows.groupby("source_part", sort=True):
        frame = group.copy()
        if model.problem_type == "binary_classification":
            frame[model.target] = frame[model.target].astype(int)  # labels are read as numbers; the history has 0/1
        if model.id_column:
            frame[model.id_column] = frame["key"]
        frame = frame[[c for c in columns if c in frame.columns]]
        digest = hashlib.sha256(str(source_part).encode()).hexdigest()[:24]
        key = f"{model.feedback_prefix}pending/{digest}.csv"
        s3.put_object(
            Bucket=place.data_bucket, Key=key, Body=frame.to_csv(index=False).encode(), ContentType="text/csv"
        )
        written.append(f"s3://{place.data_bucket}/{key}")
    return written


def take_feedback(s3: Any, data_bucket: str, model: ModelConfig, run_id: str) -> str | None:
    """An alarm run's batch: every pending feedback part, in one CSV under `feedback/<model>/batches/`. The parts
    are then deleted (the bucket keeps their versions), so the next alarm run takes only rows labelled since. A retry
    of the same run finds its batch already written and takes it again. None when nothing is pending."""
    key = f"{model.feedback_prefix}batches/feedback-{run_id}.csv"
    uri = f"s3://{data_bucket}/{key}"
    pending = [
        i["Key"] for i in _list(s3, data_bucket, f"{model.feedback_prefix}pending/") if i["Key"].endswith(".csv")
    ]
    if not pending:
        try:
            s3.head_object(Bucket=data_bucket, Key=key)
        except s3.exceptions.ClientError:
            return None
        return uri
    # Read as text: ids like "007" and categories stay as the monitor wrote them.
    frames = [
        pd.read_csv(
            io.BytesIO(s3.get_object(Bucket=data_bucket, Key=part)["Body"].read()), dtype=str, keep_default_na=False
        )
        for part in pending
    ]
    s3.put_object(
        Bucket=data_bucket,
        Key=key,
        Body=pd.concat(frames, ignore_index=True).to_csv(index=False).encode(),
        ContentType="text/csv",
    )
    for start in range(0, len(pending), 1000):
        reply = s3.delete_objects(
            Bucket=data_bucket, Delete={"Objects": [{"Key": k} for k in pending[start : start + 1000]], "Quiet": True}
        )
        if reply.get("Errors"):
            # A part left pending would be taken again by the next alarm run: its rows would be trained on twice.
            first = reply["Errors"][0]
            raise RuntimeError(
                f"could not delete {len(reply['Errors'])} pending feedback part(s) after gathering them into "
                f"{uri}, e.g. {first.get('Key')}: {first.get('Code')} {first.get('Message')}"
            )
    return uri


def rearm_reason(alarm_state: str | None, breached: bool, pending_rows: int, min_rows: int) -> str | None:
    """Why to set the quality alarm back to OK, or None to leave it. CloudWatch sends one state-change event per
    ALARM episode, so a retrain that failed its gate (or could not run) would leave the alarm in ALARM with nothing to
    start another. While the breach persists and at least `min_rows` newly labelled rows wait as feedback (something
    new to learn from), the monitor re-arms it: CloudWatch re-evaluates it at once, the bound still breaches, and the
    alarm's event starts the next retrain. Fewer rows: the alarm stays in ALARM and waits for more labels."""
    if alarm_state != "ALARM" or not breached or pending_rows < min_rows:
        return None
    return (
        f"refit monitor: the breach persists and {pending_rows:,} rows labelled since the alarm fired wait as "
        "feedback; "
        "re-armed so the alarm starts another retrain"
    )


def pending_feedback_rows(s3: Any, data_bucket: str, model: ModelConfig, enough: int, since: datetime) -> int:
    """Rows in the pending feedback parts written after `since`, counted until `enough` (the parts can be many after
    a long quiet time)."""
    total = 0
    for item in _list(s3, data_bucket, f"{model.feedback_prefix}pending/"):
        if item["Key"].endswith(".csv") and item["LastModified"] > since:
            body = s3.get_object(Bucket=data_bucket, Key=item["Key"])["Body"].read()
            total += len(pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False))
            if total >= enough:
                break
    return total


def rearm_alarm(cloudwatch: Any, s3: Any, place: Place, decision: dict[str, Any]) -> dict[str, Any] | None:
    """The quality alarm's state, and whether this run re-armed it (rearm_reason): on the feedback written since the
    alarm went to ALARM. None without an alarm."""
    model = place.model
    if not place.quality_alarm or model.quality_alarm is None:
        return None
    alarms = cloudwatch.describe_alarms(AlarmNames=[place.quality_alarm])["MetricAlarms"]
    state = alarms[0]["StateValue"] if alarms else None
    result: dict[str, Any] = {"name": place.quality_alarm, "state": state, "rearmed": False}
    if state != "ALARM" or not decision.get("breached") or not model.monitor.feedback:
        return result
    enough = model.monitor.min_labelled_rows
    # Only rows labelled since the alarm went to ALARM are new to it: the run its event started takes what was
    # pending then (this run's own feedback, when this run's bound is what made it fire).
    since = alarms[0]["StateUpdatedTimestamp"]
    result["pending_feedback_rows"] = pending_feedback_rows(s3, place.data_bucket, model, enough, since)
    reason = rearm_reason(state, True, result["pending_feedback_rows"], enough)
    if reason:
        cloudwatch.set_alarm_state(AlarmName=place.quality_alarm, StateValue="OK", StateReason=reason[:1023])
        result.update(rearmed=True, reason=reason)
    return result


def labeling_picks(s3: Any, place: Place, start: datetime, now: datetime) -> set[str]:
    """The keys active learning sent for labelling on the days of the window."""
    picked: set[str] = set()
    day = start.date()
    while day <= now.date():
        key = f"{place.model.labeling_prefix}{day:%Y-%m-%d}.manifest"
        try:
            picked |= active_learning.selected_ids(s3.get_object(Bucket=place.data_bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            pass
        day += timedelta(days=1)
    return picked


def pick_for_labeling(
    s3: Any, place: Place, rows: pd.DataFrame, artifact: ModelArtifact, now: datetime, version: Any
) -> dict[str, Any] | None:
    """Active learning: the champion's most uncertain unlabelled requests of this run, within the day's budget."""
    model = place.model
    budget = model.monitor.labeling_budget_per_day
    if budget == 0 or model.problem_type != "binary_classification" or rows.empty:
        return None
    date = now.strftime("%Y-%m-%d")
    manifest_key = f"{model.labeling_prefix}{date}.manifest"
    try:
        existing = s3.get_object(Bucket=place.data_bucket, Key=manifest_key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        existing = None
    remaining = active_learning.remaining_budget(existing, budget)
    manifest_uri = f"s3://{place.data_bucket}/{manifest_key}"
    asked = active_learning.selected_ids(existing)
    rows = rows[~rows["key"].isin(asked)].reset_index(drop=True)
    if remaining <= 0 or rows.empty:
        return {"manifest": manifest_uri, "selected": 0, "budget_left": remaining}
    numeric = [c for c in artifact.features if c in artifact.numeric_features]
    categorical = [c for c in artifact.features if c not in numeric]
    chosen = active_learning.select_for_labeling(
        rows[artifact.features],
        rows[SCORE].to_numpy(dtype=float),
        remaining,
        numeric=numeric,
        categorical=categorical,
        seed=model.seed,
    )
    if len(chosen) == 0:
        return {"manifest": manifest_uri, "selected": 0, "budget_left": remaining}
    picked = rows.iloc[list(chosen)]
    items = [
        {
            "inference_id": str(row["key"]),
            "features": {c: _plain(row[c]) for c in artifact.features},
            "probability": float(row[SCORE]),
            "model_version": version,
            "variant": CHAMPION,
        }
        for _, row in picked.iterrows()
    ]
    objects, lines = active_learning.manifest_lines(items, place.data_bucket, model.labeling_prefix, date)
    for key, body in objects:
        s3.put_object(Bucket=place.data_bucket, Key=key, Body=body, ContentType="application/json")
    s3.put_object(Bucket=place.data_bucket, Key=manifest_key, Body=active_learning.append_manifest(existing, lines))
    return {"manifest": manifest_uri, "selected": len(items), "budget_left": remaining - len(items)}


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def serving_since(endpoint: dict[str, Any], state: dict[str, Any], model_name: str, now: datetime) -> datetime:
    """Since when the champion variant serves this model. Capture records do not name the model, and the variant's
    name stays `champion` across promotions: the state remembers the champion it last saw; a new one serves since the
    endpoint last changed (its promotion)."""
    known = state.get("champion") or {}
    if known.get("model_name") == model_name and known.get("since"):
        return datetime.fromisoformat(known["since"])
    # Capture records carry whole seconds: the second the endpoint changed in counts for the new champion.
    since = (endpoint.get("LastModifiedTime") or endpoint.get("CreationTime") or now).astimezone(UTC)
    since = since.replace(microsecond=0)
    state["champion"] = {"model_name": model_name, "since": since.isoformat()}
    return since


def run_monitor(
    place: Place, *, run_id: str, now: datetime, s3: Any, sagemaker: Any, cloudwatch: Any
) -> dict[str, Any]:
    """One monitor run; returns its report (also written to S3)."""
    model = place.model
    state = load_state(s3, place)
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "model": model.name,
        "run_id": run_id,
        "at": now.isoformat(timespec="seconds"),
        "primary_metric": model.primary_metric,
        "threshold": model.quality_alarm.threshold if model.quality_alarm else None,
        "window_hours": model.monitor.window_hours,
        "champion": None,
        "capture": {"files": 0, "problems": {}, "examples": []},
        "labels": {"files": 0, "problems": {}, "examples": []},
        "variants": {},
        "drift": None,
        "feedback": None,
        "labeling": None,
        "decision": {"breached": False, "reason": "no model is serving"},
        "alarm": None,
    }
    champion = find_champion(sagemaker, place.endpoint_name)
    if champion is None:
        _write_report(s3, place, report)
        return report
    endpoint = describe_endpoint(sagemaker, place.endpoint_name) or {}
    champion_since = serving_since(endpoint, state, champion["model_name"], now)
    # Each variant's record: the champion's since its model took over; another (a canary's challenger) since the
    # endpoint last changed, and only while it is on the endpoint.
    changed = (endpoint.get("LastModifiedTime") or now).astimezone(UTC).replace(microsecond=0)
    variant_since = {
        str(v["VariantName"]): champion_since if v["VariantName"] == CHAMPION else changed
        for v in endpoint.get("ProductionVariants", [])
    }
    variant_since.setdefault(CHAMPION, champion_since)
    artifact = load_model_artifact(
        s3, champion["model_data_url"], champion.get("model_sha256"), champion.get("model_package_arn")
    )
    profile = None
    if champion.get("baseline_uri"):
        uri = S3Uri.parse(champion["baseline_uri"])
        try:
            profile = loads_profile(s3.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read(), str(uri))
        except ProfileError as error:
            report["drift"] = {"error": str(error)}
    report["champion"] = {
        "version": champion.get("version"),
        "model_name": champion["model_name"],
        "since": champion_since.isoformat(timespec="seconds"),
    }
    capture_counts: Counter = Counter()
    capture_examples: list[str] = []
    label_counts: Counter = Counter()
    label_examples: list[str] = []
    read_captures, new_captured = ingest_captures(s3, place, state, artifact, capture_counts, capture_examples, now)
    read_labels_, new_labels = ingest_labels(s3, place, state, label_counts, label_examples, now)
    start = now - timedelta(hours=model.monitor.window_hours)
    labels, new_keys = window_labels(s3, place, now, new_labels, label_counts)
    asked = labeling_picks(s3, place, start, now)
    window = scan_window(
        s3,
        place,
        asked=asked,
        start=start,
        variant_since=variant_since,
        labels=labels,
        new_label_keys=new_keys,
        new_parts=set(new_captured),
        profile=profile,
        features=artifact.features,
    )
    unknown = len(new_keys - window.joined_keys)
    if unknown:
        label_counts["unknown_id"] += unknown
        label_examples.append(
            f"{unknown} labelled key(s) match no captured request read so far of the last {model.monitor.window_hours:g} h "
            "(a capture file read later still joins them)"
        )
    report["capture"] = {
        "files": len(new_captured),
        "problems": dict(capture_counts),
        "examples": capture_examples[:10],
    }
    report["labels"] = {
        "files": len(new_labels),
        "new_labels": len(new_keys),
        "problems": dict(label_counts),
        "examples": label_examples[:10],
    }
    report["variants"] = {name: judge_variant(model, rows) for name, rows in sorted(window.variants.items())}
    if window.drift_stats is not None and window.drift_stats.n_rows >= model.drift.min_rows:
        report["drift"] = detect_drift(window.drift_stats, model.drift)
    champion_result = report["variants"].get(CHAMPION)
    if champion_result and "breach" in champion_result:
        report["decision"] = champion_result["breach"]
    elif champion_result:
        report["decision"] = {"breached": False, "reason": "no quality_alarm configured"}
    else:
        report["decision"] = {"breached": False, "reason": "no captured traffic for the champion in the window"}
    # The champion's feature order (clients send headerless CSV in it), then the target and the id column.
    columns = [*artifact.features, model.target, *([model.id_column] if model.id_column else [])]
    report["feedback"] = {"uris": write_feedback(s3, place, window.feedback, columns), "rows": len(window.feedback)}
    report["labeling"] = pick_for_labeling(s3, place, window.new_unlabelled, artifact, now, champion.get("version"))
    publish(cloudwatch, metric_data(model, report, now))
    report["alarm"] = rearm_alarm(cloudwatch, s3, place, report["decision"])  # after the bound it judges is put
    _write_report(s3, place, report, window.drift_stats)
    state.update(capture=read_captures, labels=read_labels_, updated_at=report["at"], last_run=run_id)
    s3.put_object(
        Bucket=place.artifact_bucket,
        Key=place.monitoring("state.json"),
        Body=json.dumps(state, indent=1).encode(),
        ContentType="application/json",
    )
    return report


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such a statistic (r2 on a handful of rows) is written as null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating) and not math.isfinite(float(value)):
        return None
    return value


def _write_report(s3: Any, place: Place, report: dict[str, Any], stats: BatchStats | None = None) -> None:
    base = place.monitoring("reports", report["run_id"])
    report["report_uri"] = f"s3://{place.artifact_bucket}/{base}.json"
    report["report_html_uri"] = f"s3://{place.artifact_bucket}/{base}.html"
    body = json.dumps(_finite(report), indent=1, default=str, allow_nan=False).encode()
    s3.put_object(Bucket=place.artifact_bucket, Key=f"{base}.json", Body=body, ContentType="application/json")
    s3.put_object(
        Bucket=place.artifact_bucket,
        Key=f"{base}.html",
        Body=render_monitor_html(report, stats).encode(),
        ContentType="text/html; charset=utf-8",
    )
    s3.put_object(
        Bucket=place.artifact_bucket, Key=place.monitoring("latest.json"), Body=body, ContentType="application/json"
    )


def _number(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def render_monitor_html(report: dict[str, Any], stats: BatchStats | None) -> str:
    """One self-contained page: the decision, each variant's live and estimated metric, what was wrong with the
    inputs, and the drift table with its plots (refit_core.report)."""
    from refit_core.report import render_html

    metric = report["primary_metric"]
    rows = []
    for variant, result in report["variants"].items():
        live = result["live"]
        interval = (
            f"{_number(live.get('lower'))} – {_number(live.get('upper'))}" if live.get("value") is not None else "–"
        )
        rows.append(
            f"<tr><td>{html.escape(variant)}</td><td>{_number(live.get('value'))}</td><td>{interval}</td>"
            f"<td>{result['labelled_rows']:,}</td><td>{result['captured_rows']:,}</td>"
            f"<td>{_number(result.get('estimated'))}</td>"
            f"<td>{_number(result['label_delay_seconds']['median'], 0)}</td></tr>"
        )
    problems = "".join(
        f"<li>{html.escape(kind)}: {html.escape(name)} × {count}</li>"
        for kind in ("capture", "labels")
        for name, count in report[kind]["problems"].items()
        if count
    )
    examples = "".join(
        f"<li>{html.escape(text)}</li>" for kind in ("capture", "labels") for text in report[kind]["examples"]
    )
    decision = report["decision"]
    drift_html = ""
    drift = report.get("drift")
    if drift and "drift_detected" in drift and stats is not None:
        page = render_html(drift, stats, "drift of the champion's live inputs")
        drift_html = page[page.find("<body>") + 6 : page.rfind("</body>")] if "<body>" in page else page
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>refit monitor {html.escape(report['model'])} {html.escape(report['run_id'])}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 8px;border-bottom:1px solid #ddd}"
        ".alarm{color:#b00020}.ok{color:#2e7d32}</style></head><body>"
        f"<h1>refit monitor: {html.escape(report['model'])}</h1>"
        f"<p>{html.escape(report['at'])}; window {report['window_hours']:g} h; champion version "
        f"{html.escape(str((report.get('champion') or {}).get('version')))}</p>"
        f"<h2 class='{'alarm' if decision.get('breached') else 'ok'}'>{html.escape(decision.get('reason', ''))}</h2>"
        + _alarm_html(report.get("alarm"))
        + f"<h2>Live {html.escape(metric)}</h2><table><tr><th>variant</th><th>live</th>"
        "<th>interval</th><th>labelled</th><th>captured</th>"
        "<th>estimated (CBPE)</th><th>median label delay (s)</th></tr>"
        + "".join(rows)
        + "</table>"
        + f"<h2>Inputs</h2><p>{report['capture']['files']} capture file(s), {report['labels']['files']} label file(s)"
        f"</p><ul>{problems or '<li>no problems</li>'}</ul><ul>{examples}</ul>"
        + (
            f"<h2>Feedback</h2><p>{report['feedback']['rows']} labelled row(s) → {html.escape(', '.join(report['feedback']['uris']))}</p>"
            if report.get("feedback")
            else ""
        )
        + (
            f"<h2>Active learning</h2><p>{report['labeling']['selected']} request(s) → {html.escape(report['labeling']['manifest'])}</p>"
            if report.get("labeling")
            else ""
        )
        + (f"<h2>Drift</h2>{drift_html}" if drift_html else "")
        + "</body></html>"
    )


def _alarm_html(alarm: dict[str, Any] | None) -> str:
    if not alarm:
        return ""
    text = f"quality alarm {alarm['name']}: {alarm['state']}"
    if alarm.get("rearmed"):
        text += f"; re-armed ({alarm['reason']})"
    elif "pending_feedback_rows" in alarm:
        text += f"; {alarm['pending_feedback_rows']:,} labelled row(s) wait as feedback, too few to re-arm it"
    return f"<p>{html.escape(text)}</p>"


def latest_decision(s3: Any, artifact_bucket: str, model: ModelConfig) -> dict[str, Any] | None:
    """The last monitor run's decision (for the reason of a run the quality alarm started)."""
    report = _get_json(s3, artifact_bucket, f"{model.monitoring_prefix}latest.json")
    return None if report is None else {"run_id": report.get("run_id"), **(report.get("decision") or {})}
