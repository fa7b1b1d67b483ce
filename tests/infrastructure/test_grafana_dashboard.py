"""The Grafana dashboard (scripts/grafana_dashboard.py) is valid for the SDK's own model, reads only what the stack
publishes, follows refit.toml, and shows the same figures as the stack's CloudWatch dashboard."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import import_or_skip

import_or_skip(
    "grafana_foundation_sdk", reason="the `grafana` extra (make test installs it; under CI a missing extra fails)"
)

from grafana_foundation_sdk.cog.encoder import JSONEncoder  # noqa: E402
from grafana_foundation_sdk.cog.plugins import register_default_plugins  # noqa: E402
from grafana_foundation_sdk.models.cloudwatch import CloudWatchMetricsQuery  # noqa: E402
from grafana_foundation_sdk.models.dashboard import Dashboard  # noqa: E402
from refit_core import metric_names  # noqa: E402
from refit_core.config import ModelConfig, load_config  # noqa: E402

from scripts.cli import main  # noqa: E402
from scripts.grafana_dashboard import SAGEMAKER_NAMESPACE, dashboard_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_config(ROOT / "refit.toml")
MODEL = CONFIG.models[0]
PREFIX = CONFIG.prefix(MODEL.name)
# Every name the monitor and the Lambdas publish, as refit_core.metric_names spells it.
PUBLISHED = {value for name, value in vars(metric_names).items() if name.isupper() and isinstance(value, str)}


def generated(model: ModelConfig = MODEL) -> dict:
    return json.loads(dashboard_json(model, PREFIX))


def targets(board: dict) -> list[dict]:
    return [target for panel in board["panels"] if panel["type"] != "row" for target in panel["targets"]]


def with_threshold(threshold: float | None) -> ModelConfig:
    alarm = None if threshold is None else MODEL.quality_alarm.model_copy(update={"threshold": threshold})
    return MODEL.model_copy(update={"quality_alarm": alarm})


def test_the_json_is_a_dashboard_the_sdk_reads_back_unchanged():
    register_default_plugins()  # decodes each target as its data source's query type (CloudWatch here)
    board = generated()
    decoded = Dashboard.from_json(board)
    again = json.loads(json.dumps(decoded, cls=JSONEncoder))
    for panel in again["panels"]:  # decoding fills in an empty `custom` field config where the panel sets none
        if panel.get("fieldConfig", {}).get("defaults", {}).get("custom") == {}:
            del panel["fieldConfig"]["defaults"]["custom"]
    assert again == board
    decoded_targets = [t for p in decoded.panels if getattr(p, "targets", None) for t in p.targets]
    assert len(decoded_targets) == len(targets(board)) > 10
    assert all(isinstance(t, CloudWatchMetricsQuery) for t in decoded_targets)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_every_query_reads_cloudwatch_names_the_stack_publishes():
    board = generated()
    assert board["templating"]["list"][0]["type"] == "datasource"
    assert board["templating"]["list"][0]["query"] == "cloudwatch"
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "cloudwatch", "uid": "${datasource}"}
    refit_named = 0
    for target in targets(board):
        assert target["datasource"]["type"] == "cloudwatch" and target["queryMode"] == "Metrics"
        if "expression" in target:  # the Lambdas' metrics carry a `service` dimension: found with SEARCH
            term = target["expression"].split('" ', 1)[1].split("'", 1)[0]
            assert target["expression"].startswith(f'SEARCH(\'{{Refit,Model,service}} Model="{MODEL.name}" ')
            assert term in PUBLISHED, term
        elif target["namespace"] == metric_names.MONITOR_NAMESPACE:
            refit_named += 1
            assert target["metricName"] in PUBLISHED, target["metricName"]
            assert set(target["dimensions"]) == {"Model", "Variant"}
            assert target["dimensions"]["Model"] == MODEL.name
            assert target["dimensions"]["Variant"] in {"champion", "challenger"}
            assert target["period"] == str(MODEL.monitor.period_seconds)
        else:
            assert target["namespace"] == SAGEMAKER_NAMESPACE
            assert target["dimensions"]["EndpointName"] == PREFIX  # the endpoint is named by the model's prefix
    assert refit_named == 11


def thresholds(board: dict) -> list[float]:
    return [
        step["value"]
        for panel in board["panels"]
        if panel["type"] != "row"
        for step in panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
        if step["value"] is not None
    ]


def test_the_threshold_line_is_the_configured_quality_alarm_threshold():
    assert thresholds(generated()) == [MODEL.quality_alarm.threshold] == [0.7]
    assert thresholds(generated(with_threshold(0.83))) == [0.83]
    assert thresholds(generated(with_threshold(None))) == []  # no alarm configured: no line


def cloudwatch_queries(body: dict) -> set[tuple]:
    """(namespace, metric, dimensions, label) or (expression, label) of every graph on a CloudWatch dashboard body."""
    found = set()
    for widget in body["widgets"]:
        for metric in widget["properties"].get("metrics", []):
            options = metric[-1]
            if "expression" in options:
                found.add((options["expression"], options["label"]))
            else:
                namespace, name, *dims = metric[:-1]
                found.add((namespace, name, tuple(zip(dims[::2], dims[1::2], strict=True)), options["label"]))
    return found


def grafana_queries(board: dict) -> set[tuple]:
    return {
        (t["expression"], t["label"])
        if "expression" in t
        else (t["namespace"], t["metricName"], tuple(t["dimensions"].items()), t["label"])
        for t in targets(board)
    }


def test_it_shows_what_the_stacks_cloudwatch_dashboard_shows():
    from aws_cdk import App, Stack
    from aws_cdk.assertions import Template

    from stacks.monitoring import ModelDashboard

    stack = Stack(App(), "Board")
    ModelDashboard(stack, "Dashboard", model=MODEL, dashboard_name=PREFIX, endpoint_name=PREFIX, alarms=[])
    (resource,) = Template.from_stack(stack).find_resources("AWS::CloudWatch::Dashboard").values()
    body = resource["Properties"]["DashboardBody"]
    text = (
        body if isinstance(body, str) else "".join(p if isinstance(p, str) else "REGION" for p in body["Fn::Join"][1])
    )
    expected = cloudwatch_queries(json.loads(text))
    assert len(expected) == 21
    assert grafana_queries(generated()) == expected


def test_refit_grafana_writes_the_dashboard(tmp_path, capsys):
    output = tmp_path / "dashboard.json"
    assert main(["grafana", MODEL.name, "-o", str(output)]) == 0
    assert json.loads(output.read_text()) == generated()
    assert main(["grafana", "no-such-model"]) == 2
    assert "no model named 'no-such-model'" in capsys.readouterr().err
