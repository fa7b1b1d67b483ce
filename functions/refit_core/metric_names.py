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
