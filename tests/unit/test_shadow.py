"""`deploy.mode = "shadow"`, its pure parts: the settings, the endpoint config's two variant lists, the prediction
divergence (against an independent oracle), the verdict on the shadow after its bake (each rule), and the audit
outcome of a shadow run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from moto import mock_aws
from refit_core.audit import format_summary, summarize_run
from refit_core.canary import VariantWindow
from refit_core.capture import captured_scores
from refit_core.config import ConfigError, ShadowSettings, parse_config
from refit_core.divergence import two_sample_divergence
from refit_core.shadow import shadow_variants, shadow_verdict
from refit_handlers.cleanup import restore_endpoint

from tests.conftest import handler_settings
from tests.unit.test_config import minimal

SETTINGS = ShadowSettings(min_invocations=20, max_error_rate=0.01, min_captured_predictions=20)
RNG = np.random.default_rng(7)
SAME = {"champion": list(RNG.beta(2, 5, 400)), "challenger": list(RNG.beta(2, 5, 400))}


def window(invocations=400, errors_4xx=0, errors_5xx=0, mean=10.0, p99=20.0) -> VariantWindow:
    return VariantWindow(invocations, errors_4xx, errors_5xx, mean, p99)


# --- settings -------------------------------------------------------------------------------------------------------
def test_shadow_is_a_built_mode_with_its_own_settings_and_bake_in_the_run_timeout():
    config = parse_config(minimal(deploy={"mode": "shadow", "shadow": {"sampling_percent": 25, "bake_seconds": 900}}))
    model = config.model("churn")
    assert model.deploy.mode == "shadow" and model.deploy.shadow.sampling_percent == 25
    longer = parse_config(minimal(deploy={"mode": "shadow", "shadow": {"bake_seconds": 1900}})).model("churn")
    assert longer.run_timeout_seconds - model.run_timeout_seconds == int(1000 * 1.1)
    assert model.deploy.shadow.limits().max_p99_latency_ratio == model.deploy.shadow.max_p99_latency_ratio


@pytest.mark.parametrize(
    ("shadow", "message"),
    [
        ({"sampling_percent": 0}, "sampling_percent"),
        ({"sampling_percent": 101}, "sampling_percent"),
        ({"max_prediction_divergence": 0}, "max_prediction_divergence"),
        ({"min_captured_predictions": 1}, "min_captured_predictions"),
        ({"colour": "grey"}, "colour"),
    ],
)
def test_bad_shadow_settings_are_refused_naming_the_field(shadow, message):
    with pytest.raises(ConfigError) as error:
        parse_config(minimal(deploy={"mode": "shadow", "shadow": shadow}))
    assert message in str(error.value) and "shadow" in str(error.value)


def test_the_endpoint_config_has_the_champion_alone_in_production_and_the_challenger_as_its_one_shadow():
    production, shadow = shadow_variants("m-champ", "m-chall", 25, "ml.m5.large")
    assert [(v["VariantName"], v["ModelName"], v["InitialVariantWeight"]) for v in production] == [
        ("champion", "m-champ", 1.0)
    ]
    assert [(v["VariantName"], v["ModelName"], v["InitialVariantWeight"]) for v in shadow] == [
        ("challenger", "m-chall", 0.25)
    ]


# --- divergence -----------------------------------------------------------------------------------------------------
def test_the_divergence_is_the_largest_gap_between_the_empirical_distribution_functions():
    a, b = RNG.normal(0, 1, 300), RNG.normal(0.4, 1, 200)
    grid = np.sort(np.concatenate([a, b]))
    oracle = np.max(
        np.abs(
            np.searchsorted(np.sort(a), grid, "right") / a.size - np.searchsorted(np.sort(b), grid, "right") / b.size
        )
    )
    result = two_sample_divergence(a, b)
    assert result["statistic"] == pytest.approx(oracle, abs=1e-6) and result["p_value"] < 1e-3
    assert (result["n_champion"], result["n_challenger"]) == (300, 200)
    assert two_sample_divergence([], [0.5])["statistic"] is None
    with pytest.raises(ValueError, match="finite"):
        two_sample_divergence([float("nan")], [0.5])


# --- the verdict ----------------------------------------------------------------------------------------------------
def test_a_shadow_no_worse_with_the_same_predictions_passes():
    verdict = shadow_verdict(SETTINGS, window(), window(), "OK", SAME)
    assert verdict["healthy"] and "predictions agree" in verdict["reason"]
    assert verdict["copied_share"] == 1.0 and verdict["divergence"]["statistic"] < SETTINGS.max_prediction_divergence


def test_a_shadow_that_answers_5xx_is_dropped():
    verdict = shadow_verdict(SETTINGS, window(errors_5xx=40), window(), None, SAME)
    assert not verdict["healthy"] and "5XX error rate" in verdict["reason"]


def test_a_slow_p99_against_the_champion_is_dropped():
    settings = SETTINGS.model_copy(update={"min_latency_samples": 100})
    verdict = shadow_verdict(settings, window(p99=60.0), window(p99=20.0), None, SAME)
    assert not verdict["healthy"] and "p99 model latency" in verdict["reason"]


def test_diverging_predictions_are_dropped_and_a_small_significant_gap_is_not():
    shifted = {"champion": SAME["champion"], "challenger": [min(1.0, s + 0.3) for s in SAME["challenger"]]}
    verdict = shadow_verdict(SETTINGS, window(), window(), None, shifted)
    assert not verdict["healthy"] and "predictions diverge" in verdict["reason"]
    assert verdict["divergence"]["statistic"] > SETTINGS.max_prediction_divergence
    # a gap under the practical margin passes even when many rows make it significant
    many = {"champion": list(RNG.uniform(0, 1, 20000)), "challenger": list(RNG.uniform(0.05, 1.05, 20000))}
    verdict = shadow_verdict(SETTINGS, window(), window(), None, many)
    assert verdict["divergence"]["p_value"] < 0.05 and verdict["healthy"]


@pytest.mark.parametrize(
    ("shadow", "champion", "named"),
    [
        (window(invocations=0, mean=None, p99=None), window(), "challenger"),
        (window(), window(invocations=5), "champion"),
    ],
)
def test_a_quiet_window_is_never_a_pass(shadow, champion, named):
    verdict = shadow_verdict(SETTINGS, shadow, champion, None, SAME)
    assert not verdict["healthy"] and f"quiet window: the {named}" in verdict["reason"]


def test_too_few_captured_predictions_is_not_a_pass():
    verdict = shadow_verdict(SETTINGS, window(), window(), None, {"champion": SAME["champion"], "challenger": [0.2]})
    assert not verdict["healthy"] and "predictions not compared" in verdict["reason"]


# --- capture and audit ----------------------------------------------------------------------------------------------
def test_captured_scores_are_the_replies_probabilities_with_their_time():
    def record(probabilities, when="2026-01-01T10:00:00Z"):
        reply = json.dumps({"predictions": [int(p > 0.5) for p in probabilities], "probabilities": probabilities})
        return json.dumps(
            {
                "captureData": {
                    "endpointInput": {
                        "observedContentType": "text/csv",
                        "mode": "INPUT",
                        "data": "1",
                        "encoding": "CSV",
                    },
                    "endpointOutput": {
                        "observedContentType": "application/json",
                        "mode": "OUTPUT",
                        "data": reply,
                        "encoding": "JSON",
                    },
                },
                "eventMetadata": {"eventId": "e", "inferenceTime": when},
            }
        ).encode()

    read = captured_scores(
        [record([0.2, 0.7]), b"not json", record([0.9])], source="f", problem_type="binary_classification"
    )
    assert read.scores == [0.2, 0.7, 0.9] and read.problems["not_json"] == 1
    assert read.times[0].isoformat() == "2026-01-01T10:00:00+00:00"


RUN = {"run_id": "r1", "trigger": "s3", "reason": "new data", "data_uri": "s3://d/incoming/churn/a.csv"}
DEPLOY = {"mode": "shadow", "expected_config": "c2", "challenger_model": "m2", "previous_config": "c1"}


@pytest.mark.parametrize(
    ("shadow", "outcome", "message"),
    [
        ({"healthy": True, "reason": "ok", "next": "promote"}, "promoted", "shadow passed and was promoted: ok"),
        ({"healthy": False, "reason": "5XX", "next": "rollback"}, "rolled_back", "shadow dropped: 5XX"),
        ({"healthy": False, "reason": "not judged yet"}, "incomplete", "before reaching a decision"),
    ],
)
def test_the_audit_outcome_of_a_shadow_run(shadow, outcome, message):
    state = {"run": RUN, "gate": {"promote": True, "reason": "better"}, "deploy": DEPLOY, "shadow": shadow}
    record = summarize_run(state, "churn", "exec-1", "t0", "t1", None)
    assert record["outcome"] == outcome and message in record["message"] and not record["problems"]
    assert record["shadow"]["reason"] == shadow["reason"]
    body = format_summary(record)[1]
    assert (f"Shadow (None% copied, None seen): {'passed' if shadow['healthy'] else 'failed'} - " in body) == bool(
        shadow.get("next")
    )


class _Endpoint:
    """DescribeEndpoint of an endpoint on the run's shadow config; records UpdateEndpoint."""

    def __init__(self) -> None:
        self.updates: list[str] = []

    def describe_endpoint(self, EndpointName: str) -> dict:
        return {
            "EndpointName": EndpointName,
            "EndpointConfigName": "c2",
            "EndpointStatus": "InService",
            "ProductionVariants": [{"VariantName": "champion", "CurrentWeight": 1.0}],
            "ShadowProductionVariants": [{"VariantName": "challenger", "CurrentWeight": 1.0}],
        }

    def describe_endpoint_config(self, EndpointConfigName: str) -> dict:
        return {"ProductionVariants": [{"VariantName": "champion", "InstanceType": "ml.m5.large"}]}

    def update_endpoint(self, EndpointName: str, EndpointConfigName: str, **retained: object) -> dict:
        self.updates.append(EndpointConfigName)
        return {}


def _no_scalable_targets():
    """Application Auto Scaling (moto) with no target registered: deploy.capacity without autoscaling."""
    import boto3

    return boto3.client("application-autoscaling", region_name="us-east-1")


@mock_aws
def test_a_run_that_ends_during_the_shadow_bake_is_cleaned_up_to_the_champion_alone():
    sagemaker = _Endpoint()
    message = restore_endpoint(
        {"deploy": DEPLOY, "shadow": {"healthy": False, "reason": "x"}},
        handler_settings(),
        sagemaker,
        _no_scalable_targets(),
    )
    assert sagemaker.updates == ["c1"] and message == "endpoint returned to c1"
    promoting = _Endpoint()
    message = restore_endpoint(
        {"deploy": DEPLOY, "promotion": {"expected_config": "c3"}},
        handler_settings(),
        promoting,
        _no_scalable_targets(),
    )
    assert promoting.updates == [] and message.startswith("the shadow had passed and was being promoted")
