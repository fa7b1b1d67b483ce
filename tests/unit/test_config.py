from pathlib import Path

import pytest
from refit_core.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def minimal(**overrides):
    model = {
        "name": "churn",
        "problem_type": "binary_classification",
        "target": "y",
        "primary_metric": "roc_auc",
        "metric_direction": "maximize",
    }
    model.update(overrides)
    return {"models": [model]}


def test_example_configuration_loads_with_spot_defaults():
    config = load_config(ROOT / "refit.toml")
    model = config.model("churn")
    assert model.spot.enabled
    assert model.spot.effective_max_wait_seconds == 7200  # max(2 x 3600, 3600 + 3600)
    assert model.new_data_prefix == "incoming/churn/"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"primary_metric": "rmse"}, "models.0: primary_metric 'rmse' does not fit"),
        ({"metric_direction": "minimize"}, "metric_direction 'minimize' is wrong for 'roc_auc'"),
        ({"name": "Churn_Model"}, "models.0.name"),
        ({"spot": {"max_runtime_seconds": 3600, "max_wait_seconds": 60}}, "max_wait_seconds (60) must be >="),
        ({"colour": "blue"}, "models.0.colour: unknown field"),
        ({"schedule": "every day"}, "is not an EventBridge schedule"),
        ({"monitor": {"schedule": "hourly"}}, "models.0.monitor.schedule: 'hourly' is not an EventBridge schedule"),
        ({"monitor": {"capture_percent": 0}}, "models.0.monitor.capture_percent"),
        ({"monitor": {"min_labelled_rows": 5}}, "models.0.monitor.min_labelled_rows"),
        ({"quality_alarm": {"threshold": 0.7, "metric_name": "PrimaryMetric"}}, "quality_alarm.metric_name: unknown"),
    ],
)
def test_wrong_config_names_the_field(overrides, expected):
    with pytest.raises(ConfigError) as error:
        parse_config(minimal(**overrides), "refit.toml")
    assert expected in str(error.value)
    assert str(error.value).startswith("refit.toml: invalid refit configuration")


def test_missing_required_field_and_duplicate_names():
    data = minimal()
    del data["models"][0]["target"]
    with pytest.raises(ConfigError, match="models.0.target: required field is missing"):
        parse_config(data)
    twice = {"models": minimal()["models"] * 2}
    with pytest.raises(ConfigError, match="repeated: \\['churn'\\]"):
        parse_config(twice)


def test_unreadable_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[models]\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_the_run_timeout_grows_with_every_wait_a_run_can_make_and_the_lock_outlasts_it():
    base = parse_config(minimal()).models[0]
    manual = parse_config(minimal(approval="manual", approval_timeout_seconds=3 * 86400)).models[0]
    long_bake = parse_config(minimal(canary={"bake_seconds": 86400})).models[0]
    long_spot = parse_config(minimal(spot={"max_runtime_seconds": 86400, "max_wait_seconds": 172800})).models[0]
    assert base.run_timeout_seconds > base.spot.effective_max_wait_seconds + base.spot.max_runtime_seconds
    assert manual.run_timeout_seconds > base.run_timeout_seconds + 3 * 86400
    assert long_bake.run_timeout_seconds > base.run_timeout_seconds + 86400
    assert long_spot.run_timeout_seconds > 172800 + 86400 > 24 * 3600  # the old fixed 24 h would have cut it
    for model in (base, manual, long_bake, long_spot):
        assert model.lock_seconds > model.run_timeout_seconds


def test_settings_whose_runs_could_outlast_a_step_functions_execution_are_refused():
    with pytest.raises(ConfigError, match="over Step Functions' 31536000 s limit"):
        parse_config(minimal(approval="manual", approval_timeout_seconds=364 * 86400))


def test_monitor_defaults_and_the_alarm_period_follow_the_schedule():
    model = parse_config(minimal()).models[0]
    assert (model.monitor.capture_percent, model.monitor.schedule, model.monitor.min_labelled_rows) == (
        100,
        "rate(1 hour)",
        1000,
    )
    assert model.monitor.period_seconds == 3600 and model.quality_alarm is None
    every = {"rate(5 minutes)": 300, "rate(1 day)": 86400, "cron(0 * * * ? *)": 3600}
    for schedule, seconds in every.items():
        assert parse_config(minimal(monitor={"schedule": schedule})).models[0].monitor.period_seconds == seconds
    assert (model.capture_prefix, model.ground_truth_prefix, model.feedback_prefix) == (
        "capture/churn/",
        "ground-truth/churn/",
        "feedback/churn/",
    )


@pytest.mark.parametrize(
    ("network", "expected"),
    [
        ({"create": True, "vpc_id": "vpc-0a1b2c3d"}, "network: either create = true or an existing"),
        ({"vpc_id": "vpc-0a1b2c3d", "subnet_ids": ["subnet-0a1b2c3d"]}, "at least one of security_group_ids"),
        ({"subnet_ids": ["subnet-0a1b2c3d"], "security_group_ids": ["sg-0a1b2c3d"]}, "needs vpc_id"),
        ({"vpc_id": "vpc-1"}, "network.vpc_id: 'vpc-1' is not a VPC id"),
        ({"vpc_id": "vpc-0a1b2c3d", "subnet_ids": ["sg-0a1b2c3d"], "security_group_ids": ["sg-0a1b2c3d"]}, "subnet id"),
        (
            {"vpc_id": "vpc-0a1b2c3d", "subnet_ids": ["subnet-0a1b2c3d"], "security_group_ids": ["sg-0a1b2c3d"] * 2},
            "repeated",
        ),
        ({"vpc_id": "vpc-0a1b2c3d", "subnet_ids": [f"subnet-0a1b2c{i:02x}" for i in range(17)]}, "at most 16 items"),
    ],
)
def test_a_network_section_sagemaker_could_not_use_is_refused(network, expected):
    with pytest.raises(ConfigError) as error:
        parse_config({**minimal(), "network": network}, "refit.toml")
    assert expected in str(error.value).replace("\n", " ")


def test_the_network_is_optional_and_either_created_or_existing():
    assert not parse_config(minimal()).network.enabled
    assert parse_config({**minimal(), "network": {"create": True}}).network.enabled
    existing = {"vpc_id": "vpc-0a1b2c3d", "subnet_ids": ["subnet-0a1b2c3d"], "security_group_ids": ["sg-0a1b2c3d"]}
    assert parse_config({**minimal(), "network": existing}).network.subnet_ids == ["subnet-0a1b2c3d"]
