"""What a monitor run publishes (refit_core.monitor.metric_data), metric by metric: names, dimensions, units and values
from the run's report; the alarm's bound only with enough labelled rows; missing values are silence, never zero."""

from __future__ import annotations

from datetime import UTC, datetime

from refit_core.monitor import metric_data

from tests.conftest import handler_settings

NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def report(labelled: int, *, drift: dict | None = None, estimated: float | None = 0.74) -> dict:
    return {
        "variants": {
            "champion": {
                "captured_rows": 2500,
                "labelled_rows": labelled,
                "live": {"value": 0.71, "lower": 0.68, "upper": 0.74},
                "estimated": estimated,
                "alarm_bound": 0.74,
                "label_delay_seconds": {"median": 5400.0},
            }
        },
        "drift": drift,
        "capture": {"problems": {"not_json": 2, "unknown_encoding": 1}},
        "labels": {"problems": {"duplicate": 4}},
    }


def published(data: list[dict]) -> dict[tuple[str, tuple], tuple[float, str]]:
    assert all(item["Timestamp"] == NOW for item in data)
    return {
        (item["MetricName"], tuple((d["Name"], d["Value"]) for d in item["Dimensions"])): (item["Value"], item["Unit"])
        for item in data
    }


CHAMPION = (("Model", "churn"), ("Variant", "champion"))
MODEL_ONLY = (("Model", "churn"),)


def test_every_metric_of_a_run_with_enough_labels_and_a_drift_check():
    model = handler_settings().model
    drift = {
        "drift_detected": True,
        "drifted_features": ["tenure_months", "plan"],
        "target": {"drifted": False},
        "prediction": {"drifted": True},
    }
    data = published(metric_data(model, report(model.monitor.min_labelled_rows, drift=drift), NOW))
    assert data == {
        ("CapturedRows", CHAMPION): (2500.0, "Count"),
        ("LabelledRows", CHAMPION): (float(model.monitor.min_labelled_rows), "Count"),
        ("LiveMetric", CHAMPION): (0.71, "None"),
        ("LiveMetricLower", CHAMPION): (0.68, "None"),
        ("LiveMetricUpper", CHAMPION): (0.74, "None"),
        ("EstimatedMetric", CHAMPION): (0.74, "None"),
        ("LabelDelaySeconds", CHAMPION): (5400.0, "Seconds"),
        ("LiveMetricAlarmBound", CHAMPION): (0.74, "None"),
        ("InputDrift", CHAMPION): (1.0, "None"),
        ("DriftedFeatures", CHAMPION): (2.0, "Count"),
        ("PredictionDrift", CHAMPION): (1.0, "None"),
        ("CaptureProblems", MODEL_ONLY): (3.0, "Count"),
        ("LabelProblems", MODEL_ONLY): (4.0, "Count"),
    }


def test_too_few_labels_publish_no_alarm_bound_and_no_drift_check_publishes_no_drift():
    model = handler_settings().model
    data = published(metric_data(model, report(model.monitor.min_labelled_rows - 1, estimated=None), NOW))
    names = {name for name, _ in data}
    assert "LiveMetricAlarmBound" not in names  # silence, which the alarm does not read as a breach
    assert "EstimatedMetric" not in names  # no estimate: nothing, not a zero
    assert not names & {"InputDrift", "DriftedFeatures", "PredictionDrift"}
    assert data[("LiveMetric", CHAMPION)] == (0.71, "None")


def test_a_target_drift_alone_counts_as_input_drift():
    model = handler_settings().model
    drift = {"drift_detected": True, "drifted_features": [], "target": {"drifted": True}, "prediction": None}
    data = published(metric_data(model, report(10, drift=drift), NOW))
    assert data[("InputDrift", CHAMPION)] == (1.0, "None")
    assert data[("DriftedFeatures", CHAMPION)] == (0.0, "Count")
    assert data[("PredictionDrift", CHAMPION)] == (0.0, "None")
