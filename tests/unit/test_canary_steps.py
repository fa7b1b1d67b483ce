"""The staged canary's pure parts: the plan in the configuration, and the verdict on one step, judged against the
champion on the same window (each rule and its boundary)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from refit_core.audit import divergence_summary, summarize_run
from refit_core.canary import VariantWindow, higher_rate_p_value, step_verdict
from refit_core.config import CanarySettings, ConfigError, parse_config
from refit_handlers.deploy import EndpointStatus, status, weight_shares
from scipy.stats import hypergeom

from tests.conftest import handler_settings
from tests.unit.test_config import minimal

SETTINGS = CanarySettings(
    steps=[0.05, 0.25, 0.5],
    min_invocations=20,
    max_error_rate=0.01,
    max_model_latency_ms=200.0,
    max_p99_latency_ratio=1.3,
    alpha=0.05,
)


def window(invocations=500, errors_4xx=0, errors_5xx=0, mean=10.0, p99=20.0, samples=None) -> VariantWindow:
    return VariantWindow(invocations, errors_4xx, errors_5xx, mean, p99, samples)


CHAMPION = window(invocations=5000)


# --- the plan -------------------------------------------------------------------------------------------------------
def test_steps_are_the_plan_and_a_lone_weight_is_a_one_step_plan():
    assert SETTINGS.plan == [0.05, 0.25, 0.5]
    assert CanarySettings(weight=0.2).plan == [0.2]
    assert CanarySettings().plan == [0.1]


@pytest.mark.parametrize(
    ("canary", "message"),
    [
        ({"steps": [0.25, 0.05]}, "canary.steps must be strictly increasing: steps.1 = 0.05 <= 0.25"),
        ({"steps": [0.2, 0.2]}, "strictly increasing"),
        ({"steps": [0.0, 0.5]}, "canary.steps.0 = 0.0 must be in (0, 1)"),
        ({"steps": [0.5, 1.0]}, "canary.steps.1 = 1.0 must be in (0, 1)"),
        ({"steps": []}, "at least one traffic share"),
        ({"steps": [0.1], "weight": 0.1}, "either steps or weight"),
        ({"min_invocations": 0}, "min_invocations"),
        ({"max_p99_latency_ratio": 1.0}, "max_p99_latency_ratio"),
        ({"min_latency_samples": 10}, "min_latency_samples"),
    ],
)
def test_a_bad_plan_is_refused_naming_the_field(canary, message):
    with pytest.raises(ConfigError) as error:
        parse_config(minimal(canary=canary))
    assert message in str(error.value) and "canary" in str(error.value)


def test_every_step_adds_a_bake_and_an_endpoint_update_to_the_run_timeout():
    one = parse_config(minimal(canary={"weight": 0.2, "bake_seconds": 3600})).models[0]
    three = parse_config(minimal(canary={"steps": [0.05, 0.25, 0.5], "bake_seconds": 3600})).models[0]
    assert three.run_timeout_seconds - one.run_timeout_seconds >= int(2 * (3600 + 3600) * 1.1)


def test_weights_are_shares_of_their_sum_current_and_desired():
    shifting = weight_shares(
        [
            {"VariantName": "champion", "CurrentWeight": 3.0, "DesiredWeight": 1.0},
            {"VariantName": "challenger", "CurrentWeight": 1.0, "DesiredWeight": 1.0},
        ]
    )
    assert shifting == {"champion": (0.75, 0.5), "challenger": (0.25, 0.5)}
    settled = weight_shares([{"VariantName": "champion", "CurrentWeight": 1.0}, {"VariantName": "challenger"}])
    assert settled == {"champion": (1.0, 1.0), "challenger": (0.0, 0.0)}


# --- the two-proportion test ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("c_events", "c_n", "h_events", "h_n"), [(10, 500, 10, 5000), (3, 40, 1, 400), (1, 20, 0, 200)]
)
def test_the_higher_rate_p_value_is_the_hypergeometric_upper_tail(c_events, c_n, h_events, h_n):
    """Oracle: given all events, the challenger's count is hypergeometric; the one-sided p is P(X >= observed)."""
    expected = hypergeom.sf(c_events - 1, c_n + h_n, c_events + h_events, c_n)
    assert higher_rate_p_value(c_events, c_n, h_events, h_n) == pytest.approx(expected, rel=1e-9)


def test_no_challenger_error_or_no_traffic_is_no_evidence():
    assert higher_rate_p_value(0, 500, 0, 5000) == 1.0
    assert higher_rate_p_value(0, 0, 3, 5000) == 1.0


# --- the step verdict ----------------------------------------------------------------------------------------------
def test_a_challenger_no_worse_than_the_champion_passes_with_both_sides_evidence():
    champion = window(invocations=5000, errors_5xx=10, errors_4xx=20)
    verdict = step_verdict(SETTINGS, window(errors_5xx=1, errors_4xx=2, p99=25.0), champion, "OK")
    assert verdict["healthy"], verdict["reason"]
    assert verdict["challenger"]["rate_5xx"] == 0.002 and verdict["champion"]["invocations"] == 5000
    assert verdict["p99_latency_ratio"] == 1.25 and verdict["p_value_5xx"] > 0.05 and verdict["alarm_state"] == "OK"


def test_an_alarm_in_alarm_fails_the_step_whatever_the_numbers():
    verdict = step_verdict(SETTINGS, window(), CHAMPION, "ALARM")
    assert not verdict["healthy"] and verdict["reason"] == "the canary alarm is in ALARM"


def test_the_5xx_ceiling_holds_at_its_value_and_fails_just_over():
    same_rate = window(invocations=50_000, errors_5xx=500)
    at = step_verdict(SETTINGS, window(errors_5xx=5), same_rate, None)
    over = step_verdict(SETTINGS, window(errors_5xx=6), same_rate, None)
    assert at["healthy"], at["reason"]
    assert not over["healthy"] and over["reason"] == "challenger 5XX error rate 1.20% is over 1.00%"


def test_a_5xx_rate_significantly_over_the_champions_fails_under_the_ceiling():
    loose = SETTINGS.model_copy(update={"max_error_rate": 0.05})
    verdict = step_verdict(loose, window(errors_5xx=10), window(invocations=5000, errors_5xx=10), None)
    assert not verdict["healthy"] and verdict["p_value_5xx"] < 0.05
    assert verdict["reason"].startswith("challenger 5XX rate is higher than the champion's on the same window")


def test_a_4xx_rate_significantly_over_the_champions_fails_and_a_similar_one_does_not():
    worse = step_verdict(SETTINGS, window(errors_4xx=25), window(invocations=5000, errors_4xx=50), None)
    assert not worse["healthy"] and "challenger 4XX rate is higher" in worse["reason"]
    similar = step_verdict(SETTINGS, window(errors_4xx=6), window(invocations=5000, errors_4xx=50), None)
    assert similar["healthy"], similar["reason"]


def test_the_mean_latency_ceiling_holds_at_its_value_and_fails_just_over():
    at = step_verdict(SETTINGS, window(mean=200.0, p99=210.0), window(invocations=5000, p99=200.0), None)
    over = step_verdict(SETTINGS, window(mean=201.0, p99=210.0), window(invocations=5000, p99=200.0), None)
    assert at["healthy"], at["reason"]
    assert not over["healthy"] and over["reason"] == "challenger mean model latency 201 ms is over 200 ms"


def test_the_p99_ratio_holds_at_its_limit_and_fails_over_it_while_the_mean_is_fine():
    at = step_verdict(SETTINGS, window(p99=26.0), CHAMPION, None)
    over = step_verdict(SETTINGS, window(mean=12.0, p99=26.2), CHAMPION, None)
    assert at["healthy"] and at["p99_latency_ratio"] == 1.3
    assert not over["healthy"] and over["p99_latency_ratio"] == 1.31
    # Without the shares of slow requests (CloudWatch reported no percentile rank) the ratio alone decides.
    assert over["reason"] == (
        "challenger p99 model latency 26.2 ms is 1.31 x the champion's 20.0 ms, over 1.3, with the share of slow "
        "requests not reported"
    )
    assert over["p99_tail"] is None


def test_a_missing_p99_is_not_a_pass():
    verdict = step_verdict(SETTINGS, window(p99=None), CHAMPION, None)
    assert not verdict["healthy"] and "p99 ModelLatency of both variants is needed" in verdict["reason"]


@pytest.mark.parametrize(
    ("challenger", "champion", "named"), [(0, 5000, "challenger"), (19, 5000, "challenger"), (500, 19, "champion")]
)
def test_a_quiet_window_is_never_a_pass(challenger, champion, named):
    verdict = step_verdict(
        SETTINGS, window(invocations=challenger, p99=None), window(invocations=champion, p99=None), "OK"
    )
    assert not verdict["healthy"]
    assert verdict["reason"].startswith(f"quiet window: the {named} saw")
    assert "fewer than the 20 required to judge the step" in verdict["reason"]


def test_a_step_passes_only_once_every_comparison_is_judged():
    """A quiet window is never a pass: at the invocation floor but short of the p99's samples, or of the outputs the
    divergence test needs, the step is quiet (not promoted; synthetic traffic may top it up)."""
    few = step_verdict(SETTINGS, window(invocations=20), window(invocations=20), None)
    assert not few["healthy"] and few["quiet"] and not few["p99_judged"]
    assert "p99 cannot be judged from 20 challenger and 20 champion ModelLatency samples" in few["reason"]
    enough = step_verdict(SETTINGS, window(invocations=100), window(invocations=100), None)
    assert enough["healthy"] and enough["p99_judged"], enough["reason"]
    unjudged = {"status": "not_judged", "diverged": None, "reason": "not judged: 40 challenger and 60 champion outputs"}
    short = step_verdict(SETTINGS, window(invocations=100), window(invocations=100), None, unjudged)
    assert not short["healthy"] and short["quiet"] and "quiet window: predictions not judged: 40" in short["reason"]
    skipped = {"status": "skipped", "diverged": None, "reason": "not checked: Data Capture is off"}
    off = step_verdict(SETTINGS, window(invocations=100), window(invocations=100), None, skipped)
    assert off["healthy"] and "predictions not checked: Data Capture is off" in off["reason"]
    # A judged p99 regression is harm, not a quiet window to top up, even where the divergence test lacked outputs.
    slow = step_verdict(SETTINGS, window(invocations=100, p99=90.0), window(invocations=100), None, unjudged)
    assert not slow["healthy"] and not slow["quiet"] and "p99 model latency 90.0 ms" in slow["reason"]
    # The A/B test's guards ask only for harm: an unjudged p99 is named, not failed.
    guard = step_verdict(SETTINGS, window(invocations=20), window(invocations=20), None, quiet_fails=False)
    assert guard["healthy"] and "p99 not judged" in guard["reason"]


def test_errors_are_judged_before_the_invocation_floor():
    """A challenger failing most of the few requests it saw is reported for its errors, the more useful reason."""
    verdict = step_verdict(SETTINGS, window(invocations=5, errors_5xx=4, p99=None), CHAMPION, "OK")
    assert not verdict["healthy"] and "5XX error rate 80.00%" in verdict["reason"]


# --- the audit outcome of a staged canary ---------------------------------------------------------------------------
RUN = {"run_id": "r1", "trigger": "s3", "reason": "new data", "data_uri": "s3://d/incoming/churn/a.csv"}
DEPLOY = {"mode": "canary", "expected_config": "c2", "challenger_model": "m2", "previous_config": "c1"}
STEP = {"step": 0, "weight": 0.05, "healthy": True, "reason": "ok"}


@pytest.mark.parametrize(
    ("canary", "outcome"),
    [
        ({"healthy": True, "reason": "ok", "next": "promote", "steps": [STEP, {**STEP, "step": 1}]}, "promoted"),
        (
            {"healthy": False, "reason": "5XX", "next": "rollback", "steps": [STEP, {**STEP, "healthy": False}]},
            "rolled_back",
        ),
        ({"healthy": True, "reason": "ok", "next": "shift", "next_step": 1, "steps": [STEP]}, "incomplete"),
        ({"healthy": False, "reason": "the first canary step has not been judged yet", "steps": []}, "incomplete"),
    ],
)
def test_a_staged_canary_is_promoted_only_after_its_last_step(canary, outcome):
    state = {"run": RUN, "gate": {"promote": True, "reason": "better"}, "deploy": DEPLOY, "canary": canary}
    assert summarize_run(state, "churn", "exec-1", "t0", "t1", None)["outcome"] == outcome


def test_canary_settings_refuse_unknown_keys():
    with pytest.raises(ValidationError):
        CanarySettings(steps=[0.1], colour="blue")


def test_the_p99_is_judged_only_from_min_latency_samples_on_both_variants():
    slow = dict(mean=12.0, p99=90.0)
    below = step_verdict(SETTINGS, window(invocations=99, **slow), CHAMPION, None)
    assert not below["healthy"] and below["quiet"] and not below["p99_judged"] and below["p99_latency_ratio"] == 4.5
    assert "fewer than the 100 required on each" in below["reason"]
    at = step_verdict(SETTINGS, window(invocations=100, **slow), CHAMPION, None)
    assert not at["healthy"] and at["p99_judged"] and "p99 model latency 90.0 ms is 4.50 x" in at["reason"]
    quiet_champion = step_verdict(SETTINGS, window(**slow), window(invocations=5000, p99=20.0, samples=99), None)
    assert not quiet_champion["healthy"] and quiet_champion["quiet"] and not quiet_champion["p99_judged"]


# --- the status check verifies a shift from DescribeEndpoint --------------------------------------------------------
class _Described:
    """A SageMaker client whose DescribeEndpoint answers with given variants (InService on config c2)."""

    def __init__(self, variants):
        self.variants = variants

    def describe_endpoint(self, EndpointName):  # noqa: N803 - boto3's keyword
        return {"EndpointStatus": "InService", "EndpointConfigName": "c2", "ProductionVariants": self.variants}


def variants(champion_current, challenger_current, champion_desired=None, challenger_desired=None):
    def one(name, current, desired):
        return {"VariantName": name, "CurrentWeight": current, **({"DesiredWeight": desired} if desired else {})}

    return [
        one("champion", champion_current, champion_desired),
        one("challenger", challenger_current, challenger_desired),
    ]


@pytest.mark.parametrize(
    ("described", "expected", "reason"),
    [
        (variants(0.75, 0.25), "ready", None),
        (variants(0.95, 0.05, 0.75, 0.25), "wait", None),  # the shift is under way
        (variants(0.95, 0.05, 0.95, 0.05), "failed", "desired share is 0.0500, not the requested 0.2500"),
        ([{"VariantName": "champion", "CurrentWeight": 1.0}], "failed", "no challenger variant"),
    ],
)
def test_a_step_begins_only_when_the_endpoint_shows_its_weights(described, expected, reason):
    event = EndpointStatus(action="status", expected_config="c2", challenger_weight=0.25)
    result = status(event, handler_settings(), _Described(described))
    assert result["next"] == expected
    assert (reason is None and "reason" not in result) or reason in result["reason"]
    assert ("canary_started_at" in result) == (expected == "ready")


# --- prediction divergence in the verdict ----------------------------------------------------------------------------
def test_diverged_predictions_fail_the_step_and_an_unjudged_check_is_named_but_decides_nothing():
    diverged = {"status": "judged", "diverged": True, "reason": "the challenger's live outputs are beyond ..."}
    verdict = step_verdict(SETTINGS, window(), CHAMPION, "OK", diverged)
    assert not verdict["healthy"] and verdict["reason"].startswith("prediction divergence: the challenger's live")
    assert verdict["divergence"] == diverged
    within = {"status": "judged", "diverged": False, "reason": "within what the holdout predicts"}
    assert step_verdict(SETTINGS, window(), CHAMPION, "OK", within)["reason"].endswith("(p99 ratio 1.00)")
    skipped = {"status": "skipped", "diverged": None, "reason": "not checked: Data Capture is off on the endpoint"}
    passed = step_verdict(SETTINGS, window(), CHAMPION, "OK", skipped)
    assert passed["healthy"] and passed["reason"].endswith(
        "; predictions not checked: Data Capture is off on the endpoint"
    )
    quiet = step_verdict(SETTINGS, window(invocations=3), CHAMPION, "OK", skipped)
    assert not quiet["healthy"] and quiet["reason"].startswith("quiet window") and "predictions" not in quiet["reason"]


def test_a_failed_rollback_and_a_failed_restore_are_both_in_the_message():
    canary = {"healthy": False, "reason": "quiet", "next": "rollback", "steps": [{**STEP, "healthy": False}]}
    state = {
        "run": RUN,
        "gate": {"promote": True, "reason": "better"},
        "deploy": DEPLOY,
        "canary": canary,
        "error": {"Error": "EndpointUpdateFailed", "Cause": "endpoint is Failed: no capacity"},
        "restore_error": {"Error": "EndpointFailed", "Cause": json.dumps({"errorMessage": "it needs a person"})},
    }
    record = summarize_run(state, "churn", "exec-1", "t0", "t1", None)
    assert (record["status"], record["outcome"]) == ("FAILED", "failed")
    assert record["message"] == (
        "EndpointUpdateFailed: endpoint is Failed: no capacity; restoring the endpoint failed too: "
        "EndpointFailed: it needs a person"
    )


def test_the_summary_line_names_the_divergence_check():
    judged = {"status": "judged", "diverged": True, "ks_to_predicted": 0.4, "p_value": 0.001}
    judged |= {"challenger_samples": 140, "champion_samples": 560}
    assert divergence_summary(judged) == "; predictions diverged (KS to predicted 0.4, p 0.001, 140 / 560 outputs)"
    assert divergence_summary({"status": "skipped"}) == "; predictions skipped"
    assert divergence_summary(None) == ""


def test_the_canary_alarm_takes_its_numbers_from_the_verdict_of_the_deploy_mode():
    from refit_core.canary import error_alarm_limits
    from refit_core.config import DeploySettings, ShadowSettings

    from tests.conftest import handler_settings

    model = handler_settings().model
    assert (error_alarm_limits(model).min_invocations, error_alarm_limits(model).max_error_rate) == (20, 0.01)
    shadow = handler_settings(
        deploy=DeploySettings(mode="shadow", shadow=ShadowSettings(min_invocations=50, max_error_rate=0.05))
    ).model
    assert (error_alarm_limits(shadow).min_invocations, error_alarm_limits(shadow).max_error_rate) == (50, 0.05)


# --- the p99 rule: over the ratio AND significantly more requests over that margin (canary.p99_regression) ----------
def tail(challenger_slow, champion_slow, challenger_samples=500, champion_samples=5000, threshold_ms=26.0):
    from refit_core.canary import LatencyTail

    return LatencyTail(threshold_ms, challenger_slow, challenger_samples, champion_slow, champion_samples)


def test_a_noisy_p99_over_the_margin_without_significantly_more_slow_requests_passes():
    """A healthy challenger whose p99 came out 1.5 x the champion's from a handful of slow requests (7 of 500 over
    1.3 x the champion's p99, the champion 40 of 5000): not a regression, and the verdict says why."""
    verdict = step_verdict(SETTINGS, window(p99=30.0), CHAMPION, None, tail=tail(7, 40))
    assert verdict["healthy"] and verdict["p99_latency_ratio"] == 1.5, verdict["reason"]
    margin = "(p99 ratio 1.50, over 1.3 but not significantly more slow requests: 7 of 500 requests over 26.0 ms"
    assert margin in verdict["reason"]
    evidence = verdict["p99_tail"]
    assert evidence["challenger_share"] == 0.014 and evidence["champion_share"] == 0.008
    assert evidence["p_value"] == pytest.approx(higher_rate_p_value(7, 500, 40, 5000), abs=1e-6)
    assert evidence["p_value"] >= 0.05 and evidence["alpha"] == 0.05
    assert (evidence["challenger_slow"], evidence["champion_samples"], evidence["threshold_ms"]) == (7, 5000, 26.0)


def test_a_challenger_whose_requests_are_all_slower_fails_on_the_p99_rule():
    verdict = step_verdict(SETTINGS, window(mean=40.0, p99=60.0), CHAMPION, None, tail=tail(500, 50))
    assert not verdict["healthy"]
    assert verdict["reason"].startswith(
        "challenger p99 model latency 60.0 ms is 3.00 x the champion's 20.0 ms, over 1.3, with 500 of 500 requests "
        "over 26.0 ms against the champion's 50 of 5000 (one-sided Fisher exact p = "
    )
    assert verdict["p99_tail"]["challenger_share"] == 1.0 and verdict["p99_tail"]["p_value"] < 1e-6


def test_a_ratio_within_the_margin_passes_whatever_the_shares():
    """The ratio is the practical margin: within it the share of slow requests is not tested (nor fetched)."""
    verdict = step_verdict(SETTINGS, window(p99=26.0), CHAMPION, None, tail=tail(500, 0))
    assert verdict["healthy"] and verdict["p99_tail"] is None and "over 1.3" not in verdict["reason"]


def test_with_few_latency_samples_only_a_clear_difference_in_slow_requests_fails():
    few = SETTINGS.model_copy(update={"min_latency_samples": 20, "min_invocations": 20})
    small = window(invocations=20, p99=40.0)
    champion = window(invocations=20)
    three = step_verdict(few, small, champion, None, tail=tail(3, 0, 20, 20))  # p = 0.115
    assert three["healthy"] and three["p99_tail"]["p_value"] == pytest.approx(0.115, abs=1e-3), three["reason"]
    every = step_verdict(few, small, champion, None, tail=tail(20, 0, 20, 20))
    assert not every["healthy"] and every["p99_tail"]["p_value"] < 1e-6


def test_every_place_that_judges_the_p99_applies_the_same_rule():
    """Canary step, shadow (ShadowSettings.limits), A/B guards (the quiet rule off) and the guarded update's bakes:
    one implementation (canary.p99_regression), the same verdict and evidence on the same numbers."""
    from refit_core.config import GuardrailsSettings, ShadowSettings
    from refit_core.guardrails import bake_verdict
    from refit_core.shadow import shadow_verdict

    judged = {"status": "judged", "diverged": False, "reason": "alike"}
    for slow, healthy in ((7, True), (200, False)):
        challenger, t = window(p99=30.0), tail(slow, 40)
        verdicts = [
            step_verdict(SETTINGS, challenger, CHAMPION, None, tail=t),
            step_verdict(SETTINGS, challenger, CHAMPION, None, quiet_fails=False, tail=t),
            shadow_verdict(ShadowSettings(min_invocations=20), challenger, CHAMPION, None, judged, t),
            bake_verdict(GuardrailsSettings(min_invocations=20), challenger, CHAMPION, tail=t),
        ]
        assert [v["healthy"] for v in verdicts] == [healthy] * 4, [v["reason"] for v in verdicts]
        assert all(v["p99_tail"] == verdicts[0]["p99_tail"] for v in verdicts)


def test_the_rule_holds_its_level_on_healthy_challengers_where_the_ratio_alone_does_not():
    """Seeded simulation: champion and challenger latencies from the same heavy-tailed distribution (lognormal,
    sigma 1), 100 requests each, p99 by nearest rank as CloudWatch's bridge computes it. The ratio alone (1.3) stops
    about a quarter of these healthy challengers; the rule stays under alpha. A challenger twice as slow on every
    request (sigma 0.3) is still caught."""
    import math

    import numpy as np

    def p99(values):
        ordered = np.sort(values)
        return float(ordered[math.ceil(0.99 * len(ordered)) - 1])

    def verdict(challenger, champion):
        threshold = 1.3 * p99(champion)
        t = tail(int((challenger > threshold).sum()), int((champion > threshold).sum()), 100, 100, threshold)
        return step_verdict(
            SETTINGS,
            window(invocations=100, mean=1.0, p99=p99(challenger)),
            window(invocations=100, mean=1.0, p99=p99(champion)),
            None,
            tail=t,
        )

    rng = np.random.default_rng(3)
    healthy = [verdict(rng.lognormal(2, 1.0, 100), rng.lognormal(2, 1.0, 100)) for _ in range(300)]
    over_ratio = sum(v["p99_latency_ratio"] > 1.3 for v in healthy) / len(healthy)
    stopped = sum(not v["healthy"] for v in healthy) / len(healthy)
    assert over_ratio > 0.2 and stopped <= 0.03, (over_ratio, stopped)
    slow = [verdict(2 * rng.lognormal(2, 0.3, 100), rng.lognormal(2, 0.3, 100)) for _ in range(100)]
    assert sum(not v["healthy"] for v in slow) >= 95
