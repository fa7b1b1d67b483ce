"""Synthetic traffic for a quiet step (refit_core.synthetic): how many requests each variant gets, when a step is
topped up (only quiet, only once), the marker every request carries and that the monitor's and `refit feedback`'s
readers leave marked records out, and the configuration's refusals."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from refit_core.canary import VariantWindow, step_verdict
from refit_core.capture import captured_keys, read_capture
from refit_core.config import CanarySettings, ModelConfig, SyntheticTrafficSettings
from refit_core.synthetic import (
    SYNTHETIC_PREFIX,
    SyntheticTrafficError,
    holdout_rows,
    inference_id,
    is_synthetic,
    judging_floor,
    needs_top_up,
    replay_lines,
    request_bodies,
    shadow_top_up,
    top_up,
)

from tests.unit.test_capture import BINARY, FEATURES, NUMERIC, ROW, record

SETTINGS = CanarySettings(min_invocations=20)
BUSY = VariantWindow(invocations=500, errors_4xx=0, errors_5xx=0, mean_latency_ms=5.0, p99_latency_ms=9.0)


def window(invocations: float, errors_5xx: float = 0) -> VariantWindow:
    return VariantWindow(invocations, 0, errors_5xx, 5.0 if invocations else None, 9.0 if invocations else None)


def test_each_variant_under_the_floor_gets_the_requests_it_lacks_and_no_more_than_the_cap():
    assert top_up({"challenger": 3, "champion": 25}, floor=20, cap=100) == {"challenger": 17, "champion": 0}
    assert top_up({"challenger": 0, "champion": 0}, floor=20, cap=100) == {"challenger": 20, "champion": 20}
    assert top_up({"challenger": 0, "champion": 19.5}, floor=20, cap=15) == {"challenger": 15, "champion": 1}


def test_the_shadow_top_up_is_sized_for_the_copied_share():
    # The champion serves every request; the shadow sees sampling_percent of them.
    assert shadow_top_up(0, 0, floor=20, cap=500, sampling_percent=100) == 20
    assert shadow_top_up(0, 0, floor=20, cap=500, sampling_percent=25) == 80
    assert shadow_top_up(30, 15, floor=20, cap=500, sampling_percent=50) == 10  # the shadow lacks 5: 10 requests
    assert shadow_top_up(0, 0, floor=20, cap=50, sampling_percent=10) == 50


def test_only_a_quiet_step_is_topped_up_and_only_once():
    quiet = step_verdict(SETTINGS, window(3), BUSY, "OK")
    assert not quiet["healthy"] and quiet["quiet"] and quiet["reason"].startswith("quiet window")
    assert needs_top_up(True, quiet, topped_up=False)
    assert not needs_top_up(False, quiet, topped_up=False)  # off by default: a quiet step stays not promoted
    assert not needs_top_up(True, quiet, topped_up=True)  # once per step
    # Evidence of harm on little traffic is never retried: 2 errors in 3 requests fail the step, not quiet.
    harmed = step_verdict(SETTINGS, window(3, errors_5xx=2), BUSY, "OK")
    assert not harmed["healthy"] and not harmed["quiet"] and not needs_top_up(True, harmed, topped_up=False)
    alarmed = step_verdict(SETTINGS, window(3), BUSY, "ALARM")
    assert not alarmed["quiet"] and not needs_top_up(True, alarmed, topped_up=False)
    # Short of the p99's samples is quiet too, and topped up like a window under the invocation floor.
    short = step_verdict(SETTINGS, window(40), BUSY, "OK")
    assert not short["healthy"] and short["quiet"] and needs_top_up(True, short, topped_up=False)
    healthy = step_verdict(SETTINGS, window(100), BUSY, "OK")
    assert healthy["healthy"] and not healthy["quiet"] and not needs_top_up(True, healthy, topped_up=False)


def test_inference_ids_are_marked_unique_and_within_invoke_endpoints_64_characters():
    ids = {inference_id("20261129T045120Z-1a2b3c", step, n) for step in range(3) for n in range(200)}
    assert len(ids) == 600 and all(is_synthetic(i) and len(i) <= 64 for i in ids)
    long_run = "manual-" + "x" * 73  # an 80-character execution name
    assert len(inference_id(long_run, 9, 499)) <= 64 and is_synthetic(inference_id(long_run, 9, 499))
    assert not is_synthetic("order-17") and not is_synthetic(None) and not is_synthetic("")


def test_requests_cycle_over_the_holdout_rows_in_order():
    rows = [{"a": i, "b": None} for i in range(5)]
    bodies = [json.loads(b)["instances"] for b in request_bodies(rows, 4, 2, start=1)]
    assert [[r["a"] for r in body] for body in bodies] == [[1, 2], [3, 4], [0, 1], [2, 3]]
    assert bodies[0][0] == {"a": 1, "b": None}


def test_train_keeps_a_seeded_sample_of_holdout_rows_without_target_and_id():
    holdout = pd.DataFrame({"id": range(10), "x": [float(i) for i in range(9)] + [float("nan")], "y": [0, 1] * 5})
    text = replay_lines(holdout, ["y", "id"], 4, seed=1)
    rows = holdout_rows(text.splitlines(), "holdout_rows.jsonl")
    assert len(rows) == 4 and all(set(r) == {"x"} for r in rows)
    assert text == replay_lines(holdout, ["y", "id"], 4, seed=1)
    everything = holdout_rows(replay_lines(holdout, ["y", "id"], 50, seed=1).splitlines(), "f")
    assert len(everything) == 10 and {"x": None} in everything  # a missing value is null, which serve reads as NaN


@pytest.mark.parametrize(
    ("lines", "message"),
    [([], "has no holdout rows"), (['{"x": 1}', "nope"], "line 2: not JSON"), (["[1, 2]"], "line 1: not a row")],
)
def test_unreadable_holdout_rows_are_refused_naming_the_line(lines, message):
    with pytest.raises(SyntheticTrafficError, match=message):
        holdout_rows(lines, "s3://art/reports/churn/r1/holdout_rows.jsonl")


def test_the_monitor_and_feedback_readers_leave_synthetic_records_out():
    marked = inference_id("r1", 0, 0)
    lines = [
        record(event_id="ev-1", inference_id="order-1"),
        record(event_id="ev-2", inference_id=marked),
        record(event_id="ev-3"),
    ]
    rows = read_capture(lines, source="f", variant="champion", features=FEATURES, problem_type=BINARY, numeric=NUMERIC)
    assert rows.frame["key"].tolist() == ["order-1", "ev-3"] and rows.synthetic == 1
    assert sum(rows.problems.values()) == 0  # left out, not a problem
    keys = captured_keys(lines, source="f", problem_type=BINARY)
    assert keys.keys == ["order-1", "ev-3"] and keys.synthetic == 1
    # The marker is the prefix, not any id that mentions it.
    other = read_capture(
        [record(body=ROW, inference_id=f"x-{SYNTHETIC_PREFIX}1")],
        source="f",
        variant="champion",
        features=FEATURES,
        problem_type=BINARY,
    )
    assert len(other.frame) == 1


def _model(**deploy) -> dict:
    return {
        "name": "churn",
        "problem_type": "binary_classification",
        "target": "churned",
        "primary_metric": "roc_auc",
        "metric_direction": "maximize",
        "deploy": deploy,
    }


def test_synthetic_traffic_is_off_by_default_and_refused_where_it_cannot_be_judged():
    assert not ModelConfig(**_model()).deploy.synthetic_traffic.enabled
    assert ModelConfig(**_model(synthetic_traffic={"enabled": True})).deploy.synthetic_traffic.max_requests_per_variant
    with pytest.raises(ValueError, match="A/B test is decided on joined ground truth"):
        ModelConfig(**_model(mode="ab", synthetic_traffic={"enabled": True}), monitor={"schedule": "rate(1 hour)"})
    with pytest.raises(ValueError, match="no champion variant to top up beside it"):
        ModelConfig(**_model(mode="guardrails", synthetic_traffic={"enabled": True}))
    ModelConfig(**_model(mode="ab", synthetic_traffic={"enabled": False}), monitor={"schedule": "rate(1 hour)"})
    # The floor is what every comparison needs: 100 ModelLatency samples for a p99 by default, not 20 invocations.
    with pytest.raises(
        ValueError, match=r"max_requests_per_variant \(99\) is below the 100 requests per variant a step needs"
    ):
        ModelConfig(**_model(synthetic_traffic={"enabled": True, "max_requests_per_variant": 99}))
    ModelConfig(
        **_model(synthetic_traffic={"enabled": True, "max_requests_per_variant": 30}),
        canary={"min_latency_samples": 30, "divergence_min_samples": 30},
    )
    with pytest.raises(ValueError, match=r"\(200\) is below the 1000 requests a silent shadow bake needs"):
        ModelConfig(
            **_model(
                mode="shadow",
                shadow={"min_invocations": 40, "sampling_percent": 10},
                synthetic_traffic={"enabled": True},
            )
        )
    # invocations, p99 samples, captured outputs (rows per request, share of requests captured): the largest
    assert judging_floor(20, 100, 100, rows_per_request=1, capture_percent=100) == 100
    assert judging_floor(20, 20, 100, rows_per_request=10, capture_percent=100) == 20
    assert judging_floor(20, 20, 100, rows_per_request=1, capture_percent=50) == 200
    assert judging_floor(40, 30, 30, rows_per_request=1, capture_percent=100) == 40
    for bad in ({"max_requests_per_variant": 0}, {"rows_per_request": 101}, {"settle_seconds": -1}, {"rate": 1}):
        with pytest.raises(ValueError):
            SyntheticTrafficSettings(**bad)


def test_the_run_timeout_allows_a_settle_wait_per_step_and_train_keeps_rows_only_when_on():
    off = ModelConfig(**_model())
    on = ModelConfig(**_model(synthetic_traffic={"enabled": True, "settle_seconds": 600}))
    assert on.run_timeout_seconds - off.run_timeout_seconds == int(600 * 1.1)
    assert off.deploy.synthetic_traffic.replay_rows == 0
    assert on.deploy.synthetic_traffic.replay_rows == 2 * 200
