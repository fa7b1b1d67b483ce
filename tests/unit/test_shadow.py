"""`deploy.mode = "shadow"`, its pure parts: the settings, the endpoint config's two variant lists, the prediction
divergence (the canary's holdout-conditional test, at the shadow's alpha), the verdict on the shadow after its bake
(each rule), and the audit outcome of a shadow run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from moto import mock_aws
from refit_core.audit import format_summary, summarize_run
from refit_core.canary import VariantWindow
from refit_core.capture import captured_scores
from refit_core.config import ConfigError, ShadowSettings, parse_config
from refit_core.divergence import holdout_reference
from refit_core.shadow import shadow_divergence, shadow_variants, shadow_verdict
from refit_handlers.cleanup import restore_endpoint
from scipy.stats import ks_2samp

from tests.conftest import handler_settings
from tests.unit.test_config import minimal

SETTINGS = ShadowSettings(min_invocations=20, max_error_rate=0.01, min_captured_predictions=20)
RNG = np.random.default_rng(7)


def challenger_of(champion: np.ndarray, rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
    """A challenger that disagrees with the champion honestly (another calibration, its own noise), plus `shift`."""
    return np.clip(0.7 * champion + 0.12 + rng.normal(0, 0.04, champion.size) + shift, 0, 1)


HOLDOUT_CHAMPION = RNG.beta(2, 5, 2000)
REFERENCE = holdout_reference(HOLDOUT_CHAMPION, challenger_of(HOLDOUT_CHAMPION, RNG))
LIVE_CHAMPION = RNG.beta(2, 5, 300)  # the requests of the bake; the shadow answers copies of the same ones
HONEST = {"champion": list(LIVE_CHAMPION), "challenger": list(challenger_of(LIVE_CHAMPION, RNG))}


def divergence(scores: dict, settings: ShadowSettings = SETTINGS, reference: dict | None = REFERENCE) -> dict:
    return shadow_divergence(settings, reference, scores, capture_enabled=True, seed=1)


AGREE = divergence(HONEST)


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
        ({"max_prediction_divergence": 0.1}, "max_prediction_divergence"),  # gone: the canary's test judges
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


# --- divergence and the verdict -------------------------------------------------------------------------------------
def test_a_shadow_that_disagrees_as_on_the_holdout_passes_though_its_outputs_differ_from_the_champions():
    """The defect this guards against: a fixed ceiling on the live KS distance between the two models drops a
    challenger whose honest disagreement with the champion is what the gate saw on the holdout."""
    result = divergence(HONEST)
    assert result["status"] == "judged" and not result["diverged"] and result["p_value"] >= SETTINGS.alpha
    # Far apart, as on the holdout: the old rule (two-sample KS over a 0.1 ceiling, significant at alpha) dropped it.
    plain = ks_2samp(HONEST["champion"], HONEST["challenger"])
    assert plain.statistic == pytest.approx(result["live_ks_distance"], abs=1e-6)
    assert plain.statistic > 0.1 and plain.pvalue < SETTINGS.alpha
    assert (result["alpha"], result["min_samples"]) == (SETTINGS.alpha, SETTINGS.min_captured_predictions)
    verdict = shadow_verdict(SETTINGS, window(), window(), "OK", result)
    assert verdict["healthy"] and "predictions agree" in verdict["reason"] and verdict["copied_share"] == 1.0


def test_a_shadow_whose_outputs_moved_beyond_the_holdouts_prediction_is_dropped_at_the_configured_alpha():
    shifted = {"champion": HONEST["champion"], "challenger": list(challenger_of(LIVE_CHAMPION, RNG, shift=0.08))}
    result = divergence(shifted)
    assert result["diverged"] and result["p_value"] < SETTINGS.alpha
    verdict = shadow_verdict(SETTINGS, window(), window(), None, result)
    assert not verdict["healthy"] and "shadow predictions diverge" in verdict["reason"]
    # the same evidence at a level below what a Monte Carlo test of 999 replicates can reach is not a divergence
    strict = SETTINGS.model_copy(update={"alpha": 0.0005})
    assert divergence(shifted, strict)["diverged"] is False


def test_predictions_not_compared_are_not_a_pass():
    few = divergence({"champion": HONEST["champion"], "challenger": [0.2]})
    no_reference = divergence(HONEST, reference=None)
    capture_off = shadow_divergence(SETTINGS, REFERENCE, HONEST, capture_enabled=False, seed=1)
    for result, why in (
        (few, "fewer than the 20 needed"),
        (no_reference, "no holdout reference"),
        (capture_off, "off"),
    ):
        verdict = shadow_verdict(SETTINGS, window(), window(), None, result)
        assert not verdict["healthy"] and verdict["reason"].startswith("predictions not compared: "), why
        assert why in verdict["reason"]


def test_a_shadow_that_answers_5xx_is_dropped():
    verdict = shadow_verdict(SETTINGS, window(errors_5xx=40), window(), None, AGREE)
    assert not verdict["healthy"] and "5XX error rate" in verdict["reason"]


def test_a_slow_p99_against_the_champion_is_dropped():
    settings = SETTINGS.model_copy(update={"min_latency_samples": 100})
    verdict = shadow_verdict(settings, window(p99=60.0), window(p99=20.0), None, AGREE)
    assert not verdict["healthy"] and "p99 model latency" in verdict["reason"]


@pytest.mark.parametrize(
    ("shadow", "champion", "named"),
    [
        (window(invocations=0, mean=None, p99=None), window(), "challenger"),
        (window(), window(invocations=5), "champion"),
    ],
)
def test_a_quiet_window_is_never_a_pass(shadow, champion, named):
    verdict = shadow_verdict(SETTINGS, shadow, champion, None, AGREE)
    assert not verdict["healthy"] and f"quiet window: the {named}" in verdict["reason"]


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
