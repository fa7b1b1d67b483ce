"""Capacity settings (`deploy.capacity`), the counts a replacing variant starts at, and the canary's cost."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from refit_core.audit import capacity_record, format_summary
from refit_core.capacity import canary_cost, current_counts, initial_count
from refit_core.config import (
    DEFAULT_SERVING_PRICES_USD_PER_HOUR,
    CapacitySettings,
    ConfigError,
    DeploySettings,
    load_config,
)
from refit_core.steps import RunState

from tests.conftest import ROOT

SCALING = {"min_instances": 2, "max_instances": 6, "target_invocations_per_instance": 70}


def test_defaults_are_one_instance_and_no_autoscaling():
    capacity = DeploySettings().capacity
    assert capacity.instance_count == 1 and capacity.autoscaling is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"instance_count": 1, "autoscaling": SCALING}, "instance_count (1) must lie within"),
        ({"instance_count": 7, "autoscaling": SCALING}, "instance_count (7) must lie within"),
        ({"instance_count": 2, "autoscaling": {**SCALING, "min_instances": 7}}, "min_instances (7) is above"),
        ({"instance_count": 0}, "greater than or equal to 1"),
        ({"autoscaling": {**SCALING, "target_invocations_per_instance": 0}}, "greater than 0"),
        ({"autoscaling": {"min_instances": 1, "max_instances": 2}}, "target_invocations_per_instance"),
        ({"instance_count": 2, "autoscaling": {**SCALING, "cooldown": 5}}, "cooldown"),
    ],
)
def test_bad_capacity_is_refused_naming_what(settings, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CapacitySettings.model_validate(settings)


def test_capacity_from_refit_toml_and_its_errors_name_the_place(tmp_path):
    text = (ROOT / "refit.toml").read_text()
    good = text.replace(
        "[models.canary]",
        "[models.deploy.capacity]\ninstance_count = 3\n[models.deploy.capacity.autoscaling]\n"
        "min_instances = 2\nmax_instances = 6\ntarget_invocations_per_instance = 70\n\n[models.canary]",
    )
    (tmp_path / "good.toml").write_text(good)
    capacity = load_config(tmp_path / "good.toml").model("churn").deploy.capacity
    assert capacity.instance_count == 3 and capacity.autoscaling.scale_in_cooldown_seconds == 300
    (tmp_path / "bad.toml").write_text(good.replace("instance_count = 3", "instance_count = 9"))
    with pytest.raises(ConfigError, match="deploy.capacity"):
        load_config(tmp_path / "bad.toml")


def test_a_serving_instance_type_without_a_hosting_price_is_refused(tmp_path):
    text = (ROOT / "refit.toml").read_text()
    assert 'serving_instance_type = "ml.m5.large"' in text
    text = text.replace('serving_instance_type = "ml.m5.large"', 'serving_instance_type = "ml.c5.4xlarge"')
    assert "ml.c5.4xlarge" not in DEFAULT_SERVING_PRICES_USD_PER_HOUR
    (tmp_path / "refit.toml").write_text(text)
    with pytest.raises(ConfigError, match="no hosting price for serving_instance_type 'ml.c5.4xlarge'"):
        load_config(tmp_path / "refit.toml")


def test_a_replacing_variant_starts_at_the_serving_count_within_the_bounds():
    fixed = CapacitySettings(instance_count=3)
    scaled = CapacitySettings(instance_count=2, autoscaling=SCALING)
    assert initial_count(fixed, 5) == 3  # no autoscaling: the configured count
    assert initial_count(scaled, None) == 2  # nothing serves yet
    assert initial_count(scaled, 5) == 5  # a fleet scaled out for the traffic keeps its size
    assert initial_count(scaled, 9) == 6 and initial_count(scaled, 1) == 2  # within [min, max]
    endpoint = {"ProductionVariants": [{"VariantName": "champion", "CurrentInstanceCount": 4}, {"VariantName": "x"}]}
    assert current_counts(endpoint) == {"champion": 4} and current_counts(None) == {}


def test_canary_cost_is_instances_times_price_times_the_time_the_challenger_existed():
    cost = canary_cost(2, "ml.m5.large", 0.115, "2026-11-29T08:00:00+00:00", "2026-11-29T08:45:00+00:00")
    assert cost["seconds"] == 2700 and cost["instance_hours"] == 1.5
    assert cost["cost_usd"] == pytest.approx(1.5 * 0.115)
    assert canary_cost(1, "ml.x", None, "2026-11-29T08:00:00+00:00", "2026-11-29T09:00:00+00:00")["cost_usd"] is None
    backwards = canary_cost(1, "ml.m5.large", 0.115, "2026-11-29T09:00:00+00:00", "2026-11-29T08:00:00+00:00")
    assert backwards["instance_hours"] == 0


DEPLOY = {
    "mode": "canary",
    "previous_config": "c-old",
    "expected_config": "c-canary",
    "challenger_model": "m2",
    "challenger_instances": 2,
    "instance_type": "ml.m5.large",
    "price_usd_per_hour": 0.115,
    "challenger_since": "2026-11-29T08:00:00+00:00",
}


def test_the_audit_record_prices_the_canary_until_the_update_that_removed_the_challenger():
    state, _ = RunState.from_state(
        {
            "deploy": DEPLOY,
            "rollback": {"expected_config": "c-old", "changed": True, "requested_at": "2026-11-29T08:30:00+00:00"},
        }
    )
    record = capacity_record(state, "2026-11-29T09:00:00+00:00")
    assert record["canary"]["ended_by"] == "rollback" and record["canary"]["instance_hours"] == 1.0
    assert record["canary"]["cost_usd"] == pytest.approx(0.115) and record["autoscaling"] is None
    died, _ = RunState.from_state({"deploy": DEPLOY})  # no promotion or rollback: the challenger may still be there
    assert capacity_record(died, "2026-11-29T09:00:00+00:00")["canary"]["ended_by"] == "run end"
    first, _ = RunState.from_state({"deploy": {**DEPLOY, "mode": "create"}})
    assert capacity_record(first, "2026-11-29T09:00:00+00:00") is None
    summary = format_summary(
        {
            "model": "m",
            "run_id": "r",
            "trigger": "t",
            "trigger_reason": "x",
            "status": "SUCCEEDED",
            "outcome": "o",
            "message": "m",
            "pk": "m",
            "sk": "s",
            "capacity": record,
        }
    )[1]
    assert "Canary capacity: 2 x ml.m5.large for 1800.0s (until the rollback) = 1.0 instance-hours, $0.115" in summary


class Recorder:
    """A client that records the calls made on it, in one log shared by several clients, and answers from a table."""

    class exceptions:  # noqa: N801 (boto3's attribute name)
        ClientError = Exception

    def __init__(self, log: list[tuple[str, dict]], answers: dict) -> None:
        self.log, self.answers = log, answers

    def __getattr__(self, name: str):
        def call(**kwargs):
            self.log.append((name, kwargs))
            return self.answers.get(name, {})

        return call

    def get_paginator(self, name: str):
        recorder = self

        class Pages:
            def paginate(self, **kwargs):
                recorder.log.append((name, kwargs))
                return [recorder.answers[name]]

        return Pages()


CANARY_ENDPOINT = {
    "EndpointConfigName": "c-canary",
    "EndpointStatus": "InService",
    "ProductionVariants": [
        {"VariantName": "champion", "CurrentInstanceCount": 5, "CurrentWeight": 0.8},
        {"VariantName": "challenger", "CurrentInstanceCount": 2, "CurrentWeight": 0.2},
    ],
}
CHAMPION_TARGET = {"ScalableTargets": [{"ResourceId": "endpoint/e/variant/champion"}]}


def scaled_settings():
    from tests.conftest import handler_settings

    return handler_settings(
        deploy=DeploySettings(capacity=CapacitySettings(instance_count=2, autoscaling={**SCALING, "max_instances": 4}))
    )


def test_promotion_deregisters_before_its_update_and_starts_at_the_serving_count():
    from refit_handlers.deploy import Promote, promote

    log: list[tuple[str, dict]] = []
    sagemaker = Recorder(log, {"describe_endpoint": CANARY_ENDPOINT})
    autoscaling = Recorder(log, {"describe_scalable_targets": CHAMPION_TARGET})
    result = promote(
        Promote(action="promote", run_id="r1", challenger_model="m2"), scaled_settings(), sagemaker, autoscaling
    )
    calls = [name for name, _ in log]
    assert calls.index("deregister_scalable_target") < calls.index("update_endpoint")
    assert result["deregistered"] == ["champion"]
    created = next(kwargs for name, kwargs in log if name == "create_endpoint_config")
    assert [(v["VariantName"], v["ModelName"], v["InitialInstanceCount"]) for v in created["ProductionVariants"]] == [
        ("champion", "m2", 4)  # the champion's 5, within max_instances 4
    ]


def test_a_restore_keeps_the_champions_target_and_a_rollback_gives_it_back_after_the_update():
    from refit_handlers.deploy import Rollback, rollback

    config = {"ProductionVariants": [{"VariantName": "champion", "InstanceType": "ml.m5.large"}]}
    for action, deregistered in (("restore", []), ("rollback", ["champion"])):
        log: list[tuple[str, dict]] = []
        sagemaker = Recorder(log, {"describe_endpoint": CANARY_ENDPOINT, "describe_endpoint_config": config})
        autoscaling = Recorder(log, {"describe_scalable_targets": CHAMPION_TARGET})
        result = rollback(Rollback(action=action, previous_config="c-old"), scaled_settings(), sagemaker, autoscaling)
        assert result["deregistered"] == deregistered, action
        calls = [name for name, _ in log]
        assert calls[-1] == "update_endpoint" and ("deregister_scalable_target" in calls) == bool(deregistered)
        update = log[-1][1]
        assert update["RetainAllVariantProperties"] is True  # the champion keeps the count it serves with
        # Not DataCaptureConfig: AWS documents retaining it as not supported (Data Capture follows the new config).
        assert update["ExcludeRetainedVariantProperties"] == [{"VariantPropertyType": "DesiredWeight"}]


def test_a_shadow_bake_keeps_the_champions_serving_count_and_costs_the_shadows_instances():
    """UpdateEndpoint starts each variant at its InitialInstanceCount unless told to retain: the shadow config must
    carry the count the champion serves with, or a scaled-out champion shrinks to one instance for the bake (and,
    after a drop, which retains counts, for good)."""
    from refit_handlers.deploy import StartShadow, start_shadow

    from tests.conftest import handler_settings

    settings = handler_settings(deploy=DeploySettings(mode="shadow", capacity=CapacitySettings(instance_count=2)))
    serving = {
        "EndpointConfigName": "c-first",
        "EndpointStatus": "InService",
        "ProductionVariants": [{"VariantName": "champion", "CurrentInstanceCount": 2, "CurrentWeight": 1.0}],
    }
    log: list[tuple[str, dict]] = []
    sagemaker = Recorder(
        log,
        {
            "describe_endpoint": serving,
            "describe_endpoint_config": {"ProductionVariants": [{"VariantName": "champion", "ModelName": "m1"}]},
            "describe_model_package": {
                "ModelPackageArn": "p",
                "CustomerMetadataProperties": {"model_sha256": "0" * 64},
            },
        },
    )
    event = StartShadow(action="start_shadow", run_id="r2", model_data_url="s3://a/m.tar.gz", model_package_arn="p")
    result = start_shadow(event, settings, sagemaker)
    created = next(kwargs for name, kwargs in log if name == "create_endpoint_config")
    # The configured fleet (shadow mode has no autoscaling), not one instance.
    assert [(v["VariantName"], v["InitialInstanceCount"]) for v in created["ProductionVariants"]] == [("champion", 2)]
    assert [(v["VariantName"], v["InitialInstanceCount"]) for v in created["ShadowProductionVariants"]] == [
        ("challenger", 2)
    ]
    assert result["challenger_instances"] == 2 and result["challenger_since"]  # what the audit record prices
