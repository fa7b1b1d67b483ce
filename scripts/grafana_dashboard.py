"""A Grafana dashboard per model over the CloudWatch data source, built with the Grafana Foundation SDK
(`grafana-foundation-sdk`, the `grafana` extra): the same figures as the stack's CloudWatch dashboard
(stacks/monitoring.py `ModelDashboard`) — the live metric with its interval, the estimate and the alarm threshold,
labelled rows, runs and how they ended, drift, spend, canary outcomes, and the endpoint's invocations and errors.

    refit grafana MODEL [-o dashboard.json] [--region REGION] [--datasource-uid UID]

Names and the threshold follow refit.toml (refit_core.config); metric names come from refit_core.metric_names.
The dashboard has a `datasource` variable (any CloudWatch data source); `--datasource-uid` fixes one instead.
"""

from __future__ import annotations

import itertools
import json

from grafana_foundation_sdk.builders import cloudwatch, common, dashboard, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import cloudwatch as cloudwatch_model
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as dashboard_model
from refit_core.canary import CHALLENGER, CHAMPION
from refit_core.config import ModelConfig
from refit_core.metric_names import (
    CANARY_PROMOTED,
    CANARY_ROLLED_BACK,
    DRIFT_DETECTED,
    DRIFTED_FEATURES,
    ESTIMATED_METRIC,
    INPUT_DRIFT,
    LABELLED_ROWS,
    LIVE_METRIC,
    LIVE_METRIC_ALARM_BOUND,
    LIVE_METRIC_LOWER,
    LIVE_METRIC_UPPER,
    MONITOR_NAMESPACE,
    PREDICTION_DRIFT,
    RUNS_ENDED,
    RUNS_STARTED,
    TRAINING_COST_USD,
)

DATASOURCE_TYPE = "cloudwatch"
DATASOURCE_VARIABLE = "datasource"
SAGEMAKER_NAMESPACE = "AWS/SageMaker"


def build_dashboard(
    model: ModelConfig, prefix: str, *, region: str = "default", datasource_uid: str | None = None
) -> dashboard_model.Dashboard:
    """The dashboard of `model`, whose resources are named `prefix` (config.prefix(model.name): the endpoint and the
    CloudWatch dashboard). `region` "default" is the data source's own region."""
    source = dashboard_model.DataSourceRef(
        type_val=DATASOURCE_TYPE, uid=datasource_uid or f"${{{DATASOURCE_VARIABLE}}}"
    )
    period = str(model.monitor.period_seconds)
    refs = iter(f"{letter}{n}" for n in ("", "1", "2") for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    ids = itertools.count(1)  # Grafana keeps panels (and rows) apart by id

    def row(title: str) -> dashboard.Row:
        return dashboard.Row(title).id(next(ids))

    def live(name: str, variant: str, label: str) -> cloudwatch.CloudWatchMetricsQuery:
        return (
            _metrics_query(next(refs), source, region, label, period)
            .namespace(MONITOR_NAMESPACE)
            .metric_name(name)
            .dimensions({"Model": model.name, "Variant": variant})
            .match_exact(True)
            .statistic("Average")
            .metric_editor_mode(cloudwatch_model.MetricEditorMode.BUILDER)
        )

    def search(terms: str, statistic: str, label: str, hours: int = 1) -> cloudwatch.CloudWatchMetricsQuery:
        expression = f"SEARCH('{{Refit,Model,service}} Model=\"{model.name}\" {terms}', '{statistic}', {hours * 3600})"
        return (
            _metrics_query(next(refs), source, region, label, str(hours * 3600))
            .metric_editor_mode(cloudwatch_model.MetricEditorMode.CODE)
            .expression(expression)
            .namespace(MONITOR_NAMESPACE)
        )

    def panel(title: str, width: int, *targets: cloudwatch.CloudWatchMetricsQuery) -> timeseries.Panel:
        built = timeseries.Panel().id(next(ids)).title(title).datasource(source).span(width).height(8)
        for target in targets:
            built = built.with_target(target)
        return built.legend(
            common.VizLegendOptions().show_legend(True).display_mode(common_model.LegendDisplayMode.LIST)
        )

    metric = model.primary_metric
    quality = panel(
        f"Live {metric} (champion) with its interval, and the estimate from scores alone",
        12,
        live(LIVE_METRIC, CHAMPION, f"live {metric}"),
        live(LIVE_METRIC_LOWER, CHAMPION, "interval low"),
        live(LIVE_METRIC_UPPER, CHAMPION, "interval high"),
        live(ESTIMATED_METRIC, CHAMPION, f"estimated {metric}"),
        live(LIVE_METRIC_ALARM_BOUND, CHAMPION, "the bound the alarm watches (enough labelled rows)"),
        live(LIVE_METRIC, CHALLENGER, f"live {metric} (challenger)"),
    )
    if model.quality_alarm is not None:
        # The alarm threshold as a dashed line, like the CloudWatch dashboard's horizontal annotation.
        quality = quality.thresholds(
            dashboard.ThresholdsConfig()
            .mode(dashboard_model.ThresholdsMode.ABSOLUTE)
            .steps(
                [
                    dashboard_model.Threshold(value=None, color="transparent"),
                    dashboard_model.Threshold(value=model.quality_alarm.threshold, color="red"),
                ]
            )
        ).thresholds_style(common.GraphThresholdsStyleConfig().mode(common_model.GraphThresholdsStyleMode.DASHED))
    drift_features = live(DRIFTED_FEATURES, CHAMPION, "drifted features")
    drift = panel(
        "Drift: live inputs and outputs (monitor), batches (runs)",
        8,
        live(INPUT_DRIFT, CHAMPION, "live input drift"),
        live(PREDICTION_DRIFT, CHAMPION, "live prediction drift"),
        search(DRIFT_DETECTED, "Sum", "batch drift"),
        drift_features,
    ).override_by_query(drift_features.build().ref_id, [_right_axis()])
    promoted = search(CANARY_PROMOTED, "Sum", "promoted", hours=24)
    rolled_back = search(CANARY_ROLLED_BACK, "Sum", "rolled back", hours=24)
    spend = panel(
        "Spend and canaries",
        8,
        search(TRAINING_COST_USD, "Sum", "training cost (USD)", hours=24),
        promoted,
        rolled_back,
    )
    for target in (promoted, rolled_back):
        spend = spend.override_by_query(target.build().ref_id, [_right_axis()])
    endpoint = panel(
        "Endpoint: invocations and errors per variant",
        24,
        *(
            _metrics_query(next(refs), source, region, f"{variant} {name}", "300")
            .namespace(SAGEMAKER_NAMESPACE)
            .metric_name(name)
            .dimensions({"EndpointName": prefix, "VariantName": variant})
            .match_exact(True)
            .statistic("Sum")
            .metric_editor_mode(cloudwatch_model.MetricEditorMode.BUILDER)
            for variant in (CHAMPION, CHALLENGER)
            for name in ("Invocations", "Invocation5XXErrors")
        ),
    )
    builder = (
        dashboard.Dashboard(f"refit: {model.name}")
        .uid(prefix)  # letters, digits and hyphens, at most names.PREFIX_MAX (39) characters: within Grafana's 40
        .tags(["refit", model.name])
        .description(f"refit's figures for model {model.name}, from CloudWatch (the stack's dashboard {prefix})")
        .time("now-7d", "now")
        .refresh("5m")
        .editable()
        .tooltip(dashboard_model.DashboardCursorSync.CROSSHAIR)
        .with_variable(dashboard.DatasourceVariable(DATASOURCE_VARIABLE).label("CloudWatch").type(DATASOURCE_TYPE))
        .with_row(row("Quality: the live metric against the alarm threshold"))
        .with_panel(quality)
        .with_panel(
            panel(
                "Labelled rows in the monitor's window",
                12,
                live(LABELLED_ROWS, CHAMPION, "champion"),
                live(LABELLED_ROWS, CHALLENGER, "challenger"),
            )
        )
        .with_row(row("Runs, drift, spend and canaries"))
        .with_panel(
            panel(
                "Runs: started by trigger, and how they ended",
                8,
                search(RUNS_STARTED, "Sum", "started"),
                search(RUNS_ENDED, "Sum", "ended", hours=24),
            )
        )
        .with_panel(drift)
        .with_panel(spend)
        .with_row(row("Endpoint"))
        .with_panel(endpoint)
    )
    return builder.build()


def _metrics_query(
    ref_id: str, source: dashboard_model.DataSourceRef, region: str, label: str, period: str
) -> cloudwatch.CloudWatchMetricsQuery:
    return (
        cloudwatch.CloudWatchMetricsQuery()
        .ref_id(ref_id)
        .datasource(source)
        .query_mode(cloudwatch_model.CloudWatchQueryMode.METRICS)
        .metric_query_type(cloudwatch_model.MetricQueryType.SEARCH)
        .region(region)
        .label(label)
        .period(period)
    )


def _right_axis() -> dashboard_model.DynamicConfigValue:
    return dashboard_model.DynamicConfigValue(id_val="custom.axisPlacement", value=common_model.AxisPlacement.RIGHT)


def dashboard_json(
    model: ModelConfig, prefix: str, *, region: str = "default", datasource_uid: str | None = None
) -> str:
    """The dashboard as the JSON Grafana imports (Dashboards > New > Import, or the HTTP API's `dashboard` field)."""
    built = build_dashboard(model, prefix, region=region, datasource_uid=datasource_uid)
    return json.dumps(built, cls=JSONEncoder, indent=2, sort_keys=True)
