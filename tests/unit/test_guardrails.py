"""deploy.mode guardrails as plain logic: the settings against the SageMaker API's limits (botocore's service model is
the oracle), the DeploymentConfig sent, the synth-time refusals, the outcome read from DescribeEndpoint, the Deploy
actions over a recording SageMaker, and the audit record of each outcome."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator
from pydantic import ValidationError
from refit_core.audit import format_summary, summarize_run
from refit_core.canary import VariantWindow
from refit_core.config import DeploySettings, GuardrailsSettings
from refit_core.guardrails import (
    ADJACENT_NOTE,
    alarm_names,
    bake_verdict,
    champion_window,
    deployment_config,
    judge,
    judged_window,
    refusals,
)
from refit_handlers.cleanup import left_serving, restore_endpoint
from refit_handlers.deploy import (
    GuardedStatus,
    JudgeGuarded,
    StartGuarded,
    guardrails_status,
    judge_guardrails,
    start_guardrails,
)

from scripts.local_aws.bridges import guarded_traffic_steps
from tests.conftest import handler_settings

SAGEMAKER = botocore.session.get_session().get_service_model("sagemaker")


def shape(name: str) -> Any:
    return SAGEMAKER.shape_for(name)


def settings(**values: Any) -> GuardrailsSettings:
    return GuardrailsSettings(**values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"traffic_routing": "CANARY"}, "CANARY needs size"),
        ({"traffic_routing": "LINEAR"}, "LINEAR needs size"),
        ({"traffic_routing": "ALL_AT_ONCE", "size": 10}, "applies to CANARY and LINEAR"),
        ({"traffic_routing": "CANARY", "size": 51}, "CanarySize is 1-50% of the fleet"),
        ({"traffic_routing": "LINEAR", "size": 9}, "LinearStepSize is 10-50% of the fleet"),
        ({"traffic_routing": "LINEAR", "size": 60}, "LinearStepSize is 10-50% of the fleet"),
        ({"wait_interval_seconds": 3601}, "wait_interval_seconds"),
        ({"termination_wait_seconds": -1}, "termination_wait_seconds"),
        ({"max_execution_timeout_seconds": 599}, "max_execution_timeout_seconds"),
        ({"max_execution_timeout_seconds": 28801}, "max_execution_timeout_seconds"),
        (
            {
                "traffic_routing": "LINEAR",
                "size": 10,
                "wait_interval_seconds": 600,
                "max_execution_timeout_seconds": 6000,
            },
            "larger than the waits it covers (10 bakes",
        ),
        ({"traffic_routing": "CANARY", "size": 10, "size_type": "CAPACITY_PERCENTAGE"}, "size_type"),
    ],
)
def test_settings_outside_the_apis_limits_are_refused_naming_the_field(values, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        settings(**values)


def test_guardrails_is_a_built_mode_with_all_at_once_by_default():
    settings = DeploySettings(mode="guardrails").guardrails
    assert settings == GuardrailsSettings() and settings.traffic_routing == "ALL_AT_ONCE" and settings.bakes == 1


def test_the_settings_limits_are_the_service_models():
    """Each bound the settings enforce is the one botocore's sagemaker model declares for the field it fills."""
    routing, policy = shape("TrafficRoutingConfig"), shape("BlueGreenUpdatePolicy")
    fields = GuardrailsSettings.model_fields
    for field, member in (
        (fields["wait_interval_seconds"], routing.members["WaitIntervalInSeconds"]),
        (fields["termination_wait_seconds"], policy.members["TerminationWaitInSeconds"]),
        (fields["max_execution_timeout_seconds"], policy.members["MaximumExecutionTimeoutInSeconds"]),
    ):
        bounds = {type(m).__name__: m for m in field.metadata}
        assert bounds["Ge"].ge == member.metadata["min"] and bounds["Le"].le == member.metadata["max"]
    assert set(routing.members["Type"].enum) == {"ALL_AT_ONCE", "CANARY", "LINEAR"}
    assert set(shape("CapacitySize").members["Type"].enum) == {"CAPACITY_PERCENT", "INSTANCE_COUNT"}


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"traffic_routing": "CANARY", "size": 10},
        {"traffic_routing": "LINEAR", "size": 25, "size_type": "CAPACITY_PERCENT"},
        {"traffic_routing": "CANARY", "size": 1, "size_type": "INSTANCE_COUNT", "termination_wait_seconds": 300},
    ],
)
def test_the_deployment_config_is_a_valid_update_endpoint_request(values):
    config = deployment_config(settings(**values), alarm_names("refit-churn"))
    request = {
        "EndpointName": "refit-churn",
        "EndpointConfigName": "refit-churn--x--guarded",
        "DeploymentConfig": config,
    }
    report = ParamValidator().validate(request, SAGEMAKER.operation_model("UpdateEndpoint").input_shape)
    assert not report.has_errors(), report.generate_report()
    routing = config["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing["Type"] == settings(**values).traffic_routing
    assert config["AutoRollbackConfiguration"]["Alarms"] == [
        {"AlarmName": "refit-churn--guardrails-5xx"},
        {"AlarmName": "refit-churn--guardrails-latency"},
    ]


def test_guardrails_refuse_what_they_cannot_guard(tmp_path):
    model = handler_settings().model
    guarded = model.model_copy(update={"deploy": model.deploy.model_copy(update={"mode": "guardrails"})})
    assert refusals(guarded) == []  # ALL_AT_ONCE on refit's one-instance variant
    canary = guarded.model_copy(
        update={"deploy": guarded.deploy.model_copy(update={"guardrails": settings(traffic_routing="CANARY", size=10)})}
    )
    (reason,) = refusals(canary)
    assert "puts 1 of the endpoint's 1 instance(s) (deploy.capacity.instance_count) on the canary" in reason
    assert "a fleet of one instance can only be updated ALL_AT_ONCE" in reason
    inferentia = guarded.model_copy(update={"serving_instance_type": "ml.inf1.xlarge"})
    assert any("Inferentia Inf1" in r and "no bake" in r for r in refusals(inferentia))


def guarded_model(count: int, **values: Any) -> Any:
    model = handler_settings().model
    deploy = model.deploy.model_copy(
        update={
            "mode": "guardrails",
            "guardrails": settings(**values),
            "capacity": model.deploy.capacity.model_copy(update={"instance_count": count}),
        }
    )
    return model.model_copy(update={"deploy": deploy})


@pytest.mark.parametrize(
    ("count", "values", "refused"),
    [
        (2, {"traffic_routing": "CANARY", "size": 50}, None),  # 1 of 2 instances: at most 50%
        (4, {"traffic_routing": "CANARY", "size": 2, "size_type": "INSTANCE_COUNT"}, None),
        (3, {"traffic_routing": "CANARY", "size": 2, "size_type": "INSTANCE_COUNT"}, "puts 2 of the endpoint's 3"),
        (4, {"traffic_routing": "LINEAR", "size": 25}, None),
        (
            10,
            {"traffic_routing": "LINEAR", "size": 1, "size_type": "INSTANCE_COUNT", "wait_interval_seconds": 60},
            None,
        ),
        (11, {"traffic_routing": "LINEAR", "size": 1, "size_type": "INSTANCE_COUNT"}, "puts 1 of the endpoint's 11"),
        (1, {"traffic_routing": "LINEAR", "size": 50}, "puts 1 of the endpoint's 1"),
        (
            8,
            {
                "traffic_routing": "LINEAR",
                "size": 1,
                "size_type": "INSTANCE_COUNT",
                "wait_interval_seconds": 600,
                "max_execution_timeout_seconds": 3600,
            },
            "take 8 bakes: max_execution_timeout_seconds = 3600 must be larger than their waits (4800 s)",
        ),
    ],
)
def test_canary_and_linear_sizes_are_judged_against_the_configured_fleet(count, values, refused):
    """CanarySize / LinearStepSize are shares of the variant's instance count (TrafficRoutingConfig), and the fleet is
    deploy.capacity.instance_count: the same sizes fit one fleet and not another."""
    reasons = refusals(guarded_model(count, **values))
    if refused is None:
        assert reasons == []
    else:
        (reason,) = reasons
        assert refused in reason


def test_the_guarded_config_has_the_configured_fleet_whose_steps_the_local_runtime_accepts():
    config = handler_settings()
    model = guarded_model(4, traffic_routing="CANARY", size=1, size_type="INSTANCE_COUNT")
    config = type(config)(**{**config.__dict__, "model": model})
    sagemaker = RecordingSageMaker(endpoint("InService", "e--old"), ["champion"])
    started = start_guardrails(START, config, sagemaker)
    created = next(kwargs for name, kwargs in sagemaker.calls if name == "create_endpoint_config")
    assert [v["InitialInstanceCount"] for v in created["ProductionVariants"]] == [4]
    routing = started["deployment_config"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert guarded_traffic_steps(routing, 4) == [0.25, 1.0]  # the bridge refuses a canary over half the fleet


@pytest.mark.parametrize(
    ("values", "count", "expected"),
    [
        ({}, 1, [1.0]),
        ({"traffic_routing": "CANARY", "size": 25}, 4, [0.25, 1.0]),
        ({"traffic_routing": "LINEAR", "size": 25}, 4, [0.25, 0.5, 0.75, 1.0]),
        ({"traffic_routing": "LINEAR", "size": 1, "size_type": "INSTANCE_COUNT"}, 3, [1 / 3, 2 / 3, 1.0]),
    ],
)
def test_the_local_runtime_shifts_the_deployment_configs_traffic_in_sagemakers_steps(values, count, expected):
    routing = deployment_config(settings(**values), ["a"])["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert guarded_traffic_steps(routing, count) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("status", "config", "outcome"),
    [
        ("Updating", "old", "wait"),
        ("RollingBack", "old", "wait"),
        ("InService", "new", "promoted"),
        ("InService", "old", "rolled_back"),  # the silent rollback: InService all the same
        ("InService", "other", "failed"),
        ("UpdateRollbackFailed", "old", "failed"),
        ("Failed", "new", "failed"),
    ],
)
def test_the_outcome_is_read_from_the_config_the_endpoint_serves(status, config, outcome):
    assert judge(status, config, "new", "old")[0] == outcome


class RecordingSageMaker:
    """DescribeEndpoint / DescribeEndpointConfig answers, and every call made."""

    def __init__(self, endpoint: dict[str, Any] | None, variants: list[str]) -> None:
        self.endpoint, self.variants, self.calls = endpoint, variants, []

    def __getattr__(self, name: str) -> Any:
        def call(**kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            if name == "describe_endpoint":
                return self.endpoint
            if name == "describe_endpoint_config":
                return {"ProductionVariants": [{"VariantName": v, "ModelName": f"m-{v}"} for v in self.variants]}
            if name == "describe_model_package":
                return {"ModelPackageArn": kwargs["ModelPackageName"], "CustomerMetadataProperties": {}}
            return {}

        return call


class Alarms:
    def __init__(self, states: dict[str, tuple[str, str]]) -> None:
        self.states, self.calls = states, 0

    def describe_alarms(self, AlarmNames: list[str]) -> dict[str, Any]:  # noqa: N803 (boto3's argument)
        self.calls += 1
        return {
            "MetricAlarms": [
                {
                    "AlarmName": n,
                    "StateValue": self.states.get(n, ("OK", ""))[0],
                    "StateReason": self.states.get(n, ("", "ok"))[1],
                }
                for n in AlarmNames
            ]
        }


def endpoint(status: str, config: str, failure: str | None = None) -> dict[str, Any]:
    described = {
        "EndpointStatus": status,
        "EndpointConfigName": config,
        "ProductionVariants": [{"VariantName": "champion", "CurrentWeight": 1.0}],
    }
    return {**described, "FailureReason": failure} if failure else described


START = StartGuarded(action="start_guardrails", run_id="r1", model_data_url="s3://a/m.tar.gz", model_package_arn="p")


def test_start_guardrails_updates_the_single_variant_endpoint_with_its_deployment_config():
    config = handler_settings()
    sagemaker = RecordingSageMaker(endpoint("InService", "e--old"), ["champion"])
    started = start_guardrails(START, config, sagemaker)
    update = [kwargs for name, kwargs in sagemaker.calls if name == "update_endpoint"]
    assert update == [
        {
            "EndpointName": "e",
            "EndpointConfigName": started["expected_config"],
            "DeploymentConfig": deployment_config(config.model.deploy.guardrails, alarm_names("e")),
        }
    ]
    created = next(kwargs for name, kwargs in sagemaker.calls if name == "create_endpoint_config")
    assert [v["VariantName"] for v in created["ProductionVariants"]] == ["champion"]  # the name is kept
    assert started["mode"] == "guardrails" and started["previous_config"] == "e--old"
    assert started["deployment_config"] == update[0]["DeploymentConfig"]


def test_start_guardrails_refuses_a_multi_variant_endpoint_before_changing_it():
    sagemaker = RecordingSageMaker(endpoint("InService", "e--canary"), ["champion", "challenger"])
    with pytest.raises(ValueError, match="single-variant endpoint: e serves e--canary with variants"):
        start_guardrails(START, handler_settings(), sagemaker)
    assert not [name for name, _ in sagemaker.calls if name in ("update_endpoint", "create_endpoint_config")]


def test_start_guardrails_creates_the_first_endpoint_like_the_variants_mode():
    sagemaker = RecordingSageMaker(None, [])
    sagemaker.describe_endpoint = lambda **kwargs: None  # noqa: ARG005
    started = start_guardrails(START, handler_settings(), sagemaker)
    assert started["mode"] == "create" and started["previous_config"] is None
    assert [name for name, _ in sagemaker.calls if name == "create_endpoint"] == ["create_endpoint"]


REQUESTED_AT = "2026-11-29T10:00:00+00:00"
STATUS = GuardedStatus(action="guardrails_status", expected_config="e--new", previous_config="e--old")


def test_a_rollback_is_recorded_with_the_alarms_reason_and_a_silent_one_says_so():
    alarms = Alarms({"e--guardrails-5xx": ("ALARM", "Threshold Crossed: 1 datapoint [7.0] >= 1.0")})
    rolled = guardrails_status(
        STATUS, handler_settings(), RecordingSageMaker(endpoint("InService", "e--old"), []), alarms
    )
    assert rolled["next"] == "rolled_back" and rolled["config"] == "e--old"
    assert "SageMaker rolled the update back" in rolled["reason"]
    assert "e--guardrails-5xx: Threshold Crossed: 1 datapoint [7.0] >= 1.0" in rolled["reason"]
    assert {a["name"]: a["state"] for a in rolled["alarms"]} == {
        "e--guardrails-5xx": "ALARM",
        "e--guardrails-latency": "OK",
    }
    silent = guardrails_status(
        STATUS, handler_settings(), RecordingSageMaker(endpoint("InService", "e--old"), []), Alarms({})
    )
    assert silent["next"] == "rolled_back" and "no rollback alarm is in ALARM now" in silent["reason"]


def test_an_update_under_way_waits_and_a_failed_rollback_carries_the_endpoints_state():
    alarms = Alarms({})
    waiting = guardrails_status(
        STATUS, handler_settings(), RecordingSageMaker(endpoint("Updating", "e--old"), []), alarms
    )
    assert waiting["next"] == "wait" and alarms.calls == 0
    broken = endpoint("UpdateRollbackFailed", "e--old", "rollback failed")
    failed = guardrails_status(STATUS, handler_settings(), RecordingSageMaker(broken, []), alarms)
    assert failed["next"] == "failed" and failed["status"] == "UpdateRollbackFailed"
    assert failed["reason"] == "endpoint is UpdateRollbackFailed on e--old: rollback failed"
    assert failed["variants"] == [{"name": "champion", "weight": 1.0}]


def run_state(guardrails: dict[str, Any], error: dict[str, Any] | None = None) -> dict[str, Any]:
    state = {
        "run": {"run_id": "r1", "trigger": "manual"},
        "gate": {"promote": True, "reason": "better"},
        "deploy": {
            "mode": "guardrails",
            "previous_config": "e--old",
            "expected_config": "e--new",
            "challenger_model": "m",
            "deployment_config": {"BlueGreenUpdatePolicy": {}},
        },
        "guardrails": {"expected_config": "e--new", "previous_config": "e--old", **guardrails},
    }
    return {**state, "error": error} if error else state


@pytest.mark.parametrize(
    ("guardrails", "error", "status", "outcome"),
    [
        ({"next": "promoted", "reason": "finished", "config": "e--new"}, None, "SUCCEEDED", "promoted"),
        ({"next": "rolled_back", "reason": "alarm x", "config": "e--old"}, None, "SUCCEEDED", "rolled_back"),
        ({"next": "rollback", "reason": "quiet window", "config": "e--new"}, None, "SUCCEEDED", "rolled_back"),
        (
            {"next": "failed", "reason": "endpoint is UpdateRollbackFailed", "status": "UpdateRollbackFailed"},
            {"Error": "GuardedUpdateFailed", "Cause": "endpoint is UpdateRollbackFailed"},
            "FAILED",
            "failed",
        ),
    ],
)
def test_the_audit_record_says_how_the_guarded_update_ended(guardrails, error, status, outcome):
    record = summarize_run(run_state(guardrails, error), "churn", "exec", "2026-11-29T00:00:00Z", "t", None)
    assert (record["status"], record["outcome"]) == (status, outcome)
    assert record["guardrails"]["next"] == guardrails["next"]
    assert record["guardrails"]["deployment_config"] == {"BlueGreenUpdatePolicy": {}}
    assert record["problems"] == []
    assert f"Guardrails: {guardrails['next']} - {guardrails['reason']}" in format_summary(record)[1]


def test_the_run_end_cleanup_leaves_a_guarded_update_to_sagemaker_and_keeps_the_registry_with_the_endpoint():
    """A run that timed out or was stopped during a guarded update: Cleanup does not update the endpoint (SageMaker
    refuses an update of an Updating endpoint, and the rollback is SageMaker's); the package counts as serving only
    when the endpoint is InService on the config the update asked for."""
    state = run_state({"next": "wait", "reason": "under way"})
    sagemaker = RecordingSageMaker(endpoint("Updating", "e--old"), ["champion"])
    note = restore_endpoint(state, handler_settings(), sagemaker, autoscaling=None)  # not touched either
    assert note == "a guarded update to e--new was started; it is SageMaker's to finish or roll back"
    assert sagemaker.calls == []
    view = {"status": "InService", "config": "e--new"}
    assert left_serving(state, view) and not left_serving(state, {**view, "config": "e--old"})
    assert not left_serving(state, {**view, "status": "Updating"}) and not left_serving(state, None)
    assert left_serving({"deploy": {"mode": "create"}}, None) and not left_serving({"deploy": {"mode": "canary"}}, None)


def window(invocations: float, p99: float | None, samples: float | None = None) -> VariantWindow:
    return VariantWindow(invocations, 0, 0, 10.0 if invocations else None, p99, samples)


def diverged(flag: bool | None) -> dict[str, Any]:
    status = "not_judged" if flag is None else "judged"
    return {"status": status, "diverged": flag, "reason": f"divergence {status} {flag}"}


@pytest.mark.parametrize(
    ("bake", "champion", "divergence", "healthy", "reason"),
    [
        (window(5, 12.0), window(500, 10.0), None, False, "quiet window: the endpoint saw 5 invocations in the judged"),
        (window(0, None), window(0, None), None, False, "quiet window: the endpoint saw 0 invocations"),
        (window(500, 14.0), window(500, 10.0), None, False, "is 1.40 x the champion's 10.0 ms before it, over 1.3"),
        (window(500, 12.0), window(500, 10.0), None, True, "p99 ratio 1.20 against the champion"),
        # A p99 that cannot be judged is a quiet window too, not a pass.
        (window(50, 40.0), window(500, 10.0), None, False, "quiet window: the p99 cannot be judged from 50"),
        (window(500, 40.0), window(30, 10.0), None, False, "against the champion's 30 before it, fewer than the 100"),
        # Diverging predictions fail an update whose latency passes; the verdict says the windows are adjacent.
        (window(500, 12.0), window(500, 10.0), diverged(True), False, f"prediction divergence ({ADJACENT_NOTE})"),
        (window(50, 12.0), window(500, 10.0), diverged(True), False, "quiet window: the p99 cannot be judged"),
        # A p99 regression is named first: it is measured, divergence is a test.
        (window(500, 14.0), window(500, 10.0), diverged(True), False, "is 1.40 x the champion's"),
        (window(500, 12.0), window(500, 10.0), diverged(False), True, "p99 ratio 1.20 against the champion"),
        # Errors that start after SageMaker's bakes: no alarm watches the judged window, the verdict does.
        (
            VariantWindow(500, 0, 12, 10.0, 12.0),
            window(500, 10.0),
            None,
            False,
            "5XX rate after the update (12 of 500) is higher than the champion's before it (0 of 500",
        ),
        (VariantWindow(500, 0, 1, 10.0, 12.0), VariantWindow(500, 0, 1, 10.0, 10.0), None, True, "p99 ratio 1.20"),
        # Too few captured outputs for the divergence test: a quiet window, not a pass.
        (
            window(500, 12.0),
            window(500, 10.0),
            diverged(None),
            False,
            "quiet window: predictions divergence not_judged",
        ),
    ],
)
def test_the_verdict_judges_quiet_windows_p99_and_divergence_against_the_champion_before_the_update(
    bake, champion, divergence, healthy, reason
):
    verdict = bake_verdict(settings(), bake, champion, divergence)
    assert verdict["healthy"] is healthy and reason in verdict["reason"]
    assert verdict["bake"]["invocations"] == bake.invocations and "p99_judged" in verdict
    assert verdict["divergence"] == divergence and verdict["windows"] == ADJACENT_NOTE


@pytest.mark.parametrize(
    ("ended", "start"),
    [
        ("10:00:59.999", "10:01:00"),
        ("10:00:00", "10:01:00"),  # on the minute: that minute's datapoint may hold the old fleet's last requests
        ("10:00:00.001", "10:01:00"),
    ],
)
def test_the_judged_window_starts_on_the_first_whole_minute_after_the_update_ended(ended, start):
    begin, end = judged_window(datetime.fromisoformat(f"2026-11-29T{ended}+00:00"), 120)
    assert begin == datetime.fromisoformat(f"2026-11-29T{start}+00:00")
    assert end - begin == timedelta(seconds=120)


def test_the_champions_window_ends_before_the_minute_of_the_update():
    start, end = champion_window(datetime(2026, 11, 29, 10, 7, 31, tzinfo=UTC), 3600)
    assert (start, end) == (datetime(2026, 11, 29, 9, 7, tzinfo=UTC), datetime(2026, 11, 29, 10, 7, tzinfo=UTC))
    assert champion_window(datetime(2026, 11, 29, 10, 7, 31, tzinfo=UTC), 90)[0] == datetime(
        2026, 11, 29, 10, 5, tzinfo=UTC
    )  # a lookback that is not whole minutes is widened to the minute, as CloudWatch reads it


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"judge_seconds": 90}, "judge_seconds = 90 must be a whole number of minutes (e.g. 60)"),
        ({"judge_seconds": 30}, "judge_seconds"),
        ({"judge_seconds": 3660}, "judge_seconds"),
        ({"divergence_min_samples": 19}, "divergence_min_samples"),
        ({"alpha": 0.5}, "alpha"),
    ],
)
def test_judge_settings_outside_their_limits_are_refused_naming_the_field(values, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        settings(**values)


def test_the_run_timeout_counts_the_judged_window_and_its_settle():
    from refit_core.config import GUARDRAILS_SETTLE_SECONDS

    base = handler_settings().model
    guarded = base.model_copy(
        update={"deploy": DeploySettings(mode="guardrails", guardrails=settings(judge_seconds=60))}
    )
    longer = base.model_copy(
        update={"deploy": DeploySettings(mode="guardrails", guardrails=settings(judge_seconds=3600))}
    )
    assert abs(longer.run_timeout_seconds - guarded.run_timeout_seconds - 3540 * 1.1) <= 1
    assert GUARDRAILS_SETTLE_SECONDS > 0


class Metrics(Alarms):
    """The rollback alarms (all OK) and GetMetricStatistics: `champion` numbers for a window ending at or before the
    update's minute, `bake` numbers for any later one."""

    def __init__(self, bake: VariantWindow, champion: VariantWindow) -> None:
        super().__init__({})
        self.bake, self.champion = bake, champion
        self.windows: list[tuple[datetime, datetime]] = []

    def get_metric_statistics(self, **request: Any) -> dict[str, Any]:
        self.windows.append((request["StartTime"], request["EndTime"]))
        numbers = self.champion if request["EndTime"] <= datetime.fromisoformat(REQUESTED_AT) else self.bake
        if request["MetricName"] == "ModelLatency":
            if "ExtendedStatistics" in request:
                point = {"ExtendedStatistics": {"p99": numbers.p99_latency_ms * 1000}} if numbers.p99_latency_ms else {}
                return {"Datapoints": [point] if point else []}
            count = numbers.samples
            return {"Datapoints": [{"Sum": count * 10_000, "SampleCount": count}] if count else []}
        value = {"Invocations": numbers.invocations, "Invocation4XXErrors": 0, "Invocation5XXErrors": 0}
        return {"Datapoints": [{"Sum": value[request["MetricName"]]}]}

    def get_metric_data(self, **request: Any) -> dict[str, Any]:
        """PR(:X) and SampleCount of ModelLatency (X in microseconds): every request at the window's p99."""
        numbers = self.champion if request["EndTime"] <= datetime.fromisoformat(REQUESTED_AT) else self.bake
        at = request["StartTime"]
        results = []
        for query in request["MetricDataQueries"]:
            stat = query["MetricStat"]["Stat"]
            if stat == "SampleCount":
                value = numbers.samples
            else:
                value = 100.0 if numbers.p99_latency_ms * 1000 <= float(stat[len("PR(:") : -1]) else 0.0
            results.append({"Id": query["Id"], "Timestamps": [at], "Values": [value]})
        return {"MetricDataResults": results}


def test_a_finished_guarded_update_plans_a_window_the_new_fleet_alone_serves():
    metrics = Metrics(window(400, 11.0), window(400, 10.0))
    before = datetime.now(UTC)
    checked = guardrails_status(
        STATUS, handler_settings(), RecordingSageMaker(endpoint("InService", "e--new"), []), metrics
    )
    assert checked["next"] == "judge" and "refit judges the new fleet alone from" in checked["reason"]
    assert metrics.windows == []  # nothing judged yet
    start, end = datetime.fromisoformat(checked["judge_from"]), datetime.fromisoformat(checked["judge_until"])
    after = datetime.now(UTC)
    first = [moment.replace(second=0, microsecond=0) + timedelta(minutes=1) for moment in (before, after)]
    assert first[0] <= start <= first[1]  # the first whole minute after the DescribeEndpoint that saw the end
    assert start.second == 0 and end - start == timedelta(
        seconds=handler_settings().model.deploy.guardrails.judge_seconds
    )
    # The Wait's timestamp: the window's end and the settle, in the one format Step Functions' TimestampPath takes.
    assert checked["judge_at"] == (end + timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%SZ")


JUDGE = JudgeGuarded(
    action="judge_guardrails",
    expected_config="e--new",
    previous_config="e--old",
    requested_at="2026-11-29T10:00:30+00:00",
    judge_from="2026-11-29T10:05:00+00:00",
    judge_until="2026-11-29T10:15:00+00:00",
)


@pytest.mark.parametrize(
    ("bake", "outcome", "reason"),
    [
        (window(0, None), "rollback", "but refit rolls it back: quiet window"),
        (
            window(400, 25.0),
            "rollback",
            "but refit rolls it back: p99 model latency after the update 25.0 ms is 2.50 x",
        ),
        (window(400, 11.0), "promoted", "the guarded update finished: InService on e--new; the new fleet served 400"),
    ],
)
def test_a_finished_guarded_update_is_judged_on_its_window_and_a_fail_asks_for_the_rollback(bake, outcome, reason):
    metrics = Metrics(bake, window(400, 10.0))
    checked = judge_guardrails(
        JUDGE, handler_settings(), RecordingSageMaker(endpoint("InService", "e--new"), []), metrics, s3=None
    )
    assert checked["next"] == outcome and reason in checked["reason"]
    assert (
        checked["bake"]["champion"]["p99_latency_ms"] == 10.0
        and checked["bake"]["bake"]["invocations"] == bake.invocations
    )
    # Exactly the planned window, and the champion's whole minutes before the UpdateEndpoint's minute: no datapoint
    # of either holds the other fleet's requests.
    windows = set(metrics.windows)
    assert windows == {
        (datetime(2026, 11, 29, 10, 5, tzinfo=UTC), datetime(2026, 11, 29, 10, 15, tzinfo=UTC)),
        (datetime(2026, 11, 29, 9, 0, tzinfo=UTC), datetime(2026, 11, 29, 10, 0, tzinfo=UTC)),
    }
    assert checked["bake"]["divergence"]["status"] == "skipped"  # no capture on this endpoint: said, not passed


def test_an_endpoint_changed_during_the_judged_window_fails_the_run_with_its_state():
    metrics = Metrics(window(400, 11.0), window(400, 10.0))
    checked = judge_guardrails(
        JUDGE, handler_settings(), RecordingSageMaker(endpoint("Updating", "e--new"), []), metrics, s3=None
    )
    assert checked["next"] == "failed" and "the endpoint changed while refit judged" in checked["reason"]
    assert metrics.windows == [] and checked["status"] == "Updating"


class NoTargets:
    """Application Auto Scaling with no scalable target on the endpoint."""

    def get_paginator(self, operation: str) -> Any:
        assert operation == "describe_scalable_targets"
        return self

    def paginate(self, **kwargs: Any) -> list[dict[str, Any]]:
        return [{"ScalableTargets": []}]


def test_the_run_end_cleanup_returns_an_unjudged_finished_update_to_the_champion():
    """A run that ended (timed out, stopped) while refit waited for its judged window: SageMaker had finished on the new
    config, refit had not judged it, and an unjudged challenger is no pass: the cleanup puts the previous config back."""
    state = run_state({"next": "judge", "reason": "finished"})
    sagemaker = RecordingSageMaker(endpoint("InService", "e--new"), ["champion"])
    note = restore_endpoint(state, handler_settings(), sagemaker, autoscaling=NoTargets())
    assert note == "endpoint returned to e--old"
    assert [kwargs["EndpointConfigName"] for name, kwargs in sagemaker.calls if name == "update_endpoint"] == ["e--old"]
