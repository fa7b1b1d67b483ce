"""Metric names and whether higher is better: a module of its own so that `train` reads them without importing the
configuration layer (pydantic), which a restarted training job would otherwise pay for again."""

CLASSIFICATION_METRICS = {
    "roc_auc": "maximize",
    "accuracy": "maximize",
    "f1": "maximize",
    "precision": "maximize",
    "recall": "maximize",
    "log_loss": "minimize",
    "calibration_error": "minimize",
}
REGRESSION_METRICS = {"rmse": "minimize", "mae": "minimize", "r2": "maximize"}
METRIC_DIRECTIONS = {**CLASSIFICATION_METRICS, **REGRESSION_METRICS}


def higher_is_better(name: str) -> bool:
    return METRIC_DIRECTIONS[name] == "maximize"


# What the monitor publishes (namespace Refit, dimensions Model and Variant), and what the quality alarm watches:
# the conservative bound of the live primary metric's interval, published only with enough labelled rows.
MONITOR_NAMESPACE = "Refit"
LIVE_METRIC = "LiveMetric"
LIVE_METRIC_LOWER = "LiveMetricLower"
LIVE_METRIC_UPPER = "LiveMetricUpper"
LIVE_METRIC_ALARM_BOUND = "LiveMetricAlarmBound"
ESTIMATED_METRIC = "EstimatedMetric"
LABELLED_ROWS = "LabelledRows"
CAPTURED_ROWS = "CapturedRows"
INPUT_DRIFT = "InputDrift"
DRIFTED_FEATURES = "DriftedFeatures"
PREDICTION_DRIFT = "PredictionDrift"
LABEL_DELAY_SECONDS = "LabelDelaySeconds"
CAPTURE_PROBLEMS = "CaptureProblems"
LABEL_PROBLEMS = "LabelProblems"

# What the Lambdas publish through Powertools (namespace Refit, dimensions Model and `service`), read by the
# dashboards with SEARCH on these terms: RunsStarted_<trigger>, Runs<Outcome>, DriftDetected, TrainingCostUSD,
# CanaryPromoted and CanaryRolledBack.
RUNS_STARTED = "RunsStarted"
RUNS_ENDED = "Runs"
DRIFT_DETECTED = "DriftDetected"
TRAINING_COST_USD = "TrainingCostUSD"
CANARY_PROMOTED = "CanaryPromoted"
CANARY_ROLLED_BACK = "CanaryRolledBack"
