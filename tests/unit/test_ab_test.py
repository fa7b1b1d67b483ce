"""The A/B decision (refit_core.ab_test): the two-sample tests hold their level under the null and find a real
difference, the rules around them (labels per variant, margin, undefined metrics) and the waiting check."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from refit_core.ab_test import AbTestError, Sample, decide, judge, two_sample_test, verify_split
from refit_core.config import AbSettings, ConfigError, parse_config
from refit_core.monitor import Place
from scipy import stats
from sklearn.metrics import roc_auc_score


def binormal(rng: np.random.Generator, n: int, auc: float, prevalence: float = 0.3) -> Sample:
    """Labels with `prevalence` and probabilities from a binormal model of true ROC AUC `auc`."""
    labels = (rng.random(n) < prevalence).astype(float)
    separation = np.sqrt(2) * stats.norm.ppf(auc)
    scores = rng.normal(0, 1, n) + separation * labels
    return Sample(labels, 1 / (1 + np.exp(-scores)), n)


def regression(rng: np.random.Generator, n: int, noise: float) -> Sample:
    truth = rng.normal(10, 3, n)
    return Sample(truth, truth + rng.normal(0, noise, n), n)


def rejections(draw, metric: str, simulations: int, **options) -> float:
    rng = np.random.default_rng(11)
    hits = 0
    for index in range(simulations):
        champion, challenger = draw(rng)
        hits += two_sample_test(metric, champion, challenger, seed=index, **options)["p_value"] < 0.05
    return hits / simulations


def test_delong_for_independent_samples_holds_its_level_under_the_null():
    # Same true AUC on both variants: the challenger is "better" at 5% only by chance (400 simulations: 5% +- 3.3%).
    rate = rejections(lambda rng: (binormal(rng, 400, 0.8), binormal(rng, 400, 0.8)), "roc_auc", 400)
    assert 0.02 <= rate <= 0.085, rate


def test_delong_finds_a_real_difference_and_its_values_are_roc_auc():
    rate = rejections(lambda rng: (binormal(rng, 800, 0.7), binormal(rng, 800, 0.8)), "roc_auc", 200)
    assert rate >= 0.9, rate
    rng = np.random.default_rng(3)
    champion, challenger = binormal(rng, 500, 0.7), binormal(rng, 700, 0.8)
    result = two_sample_test("roc_auc", champion, challenger)
    assert result["champion_value"] == pytest.approx(roc_auc_score(champion.labels, champion.scores))
    assert result["challenger_value"] == pytest.approx(roc_auc_score(challenger.labels, challenger.scores))
    assert result["difference"] == pytest.approx(result["challenger_value"] - result["champion_value"])
    # The interval's lower end is the one-sided test's bound: above 0 exactly when p < alpha.
    assert (result["ci_low"] > 0) == (result["p_value"] < 0.05)


def auc(sample: Sample, rows: np.ndarray) -> float:
    """ROC AUC of the rows drawn, by Mann-Whitney's U (an oracle independent of refit's placement values)."""
    labels, scores = sample.labels[rows], sample.scores[rows]
    positive, negative = scores[labels == 1], scores[labels == 0]
    return stats.mannwhitneyu(positive, negative).statistic / (positive.size * negative.size)


def test_delong_standard_error_agrees_with_a_bootstrap_of_the_difference():
    rng = np.random.default_rng(5)
    champion, challenger = binormal(rng, 600, 0.75), binormal(rng, 600, 0.78)
    result = two_sample_test("roc_auc", champion, challenger, alpha=0.025)
    se = (result["ci_high"] - result["ci_low"]) / (2 * stats.norm.ppf(0.975))
    draws = [auc(challenger, rng.integers(0, 600, 600)) - auc(champion, rng.integers(0, 600, 600)) for _ in range(300)]
    assert se == pytest.approx(np.std(draws), rel=0.15)


def test_the_bootstrap_holds_its_level_and_finds_a_real_difference():
    """Every metric but roc_auc (here a regression's rmse): each variant resampled on its own. 120 simulations under
    the null (5% +- 4% at three standard errors), 20 with the challenger's error 30% smaller."""
    null = rejections(lambda rng: (regression(rng, 150, 1.0), regression(rng, 150, 1.0)), "rmse", 120, replicates=200)
    assert 0.01 <= null <= 0.09, null
    power = rejections(lambda rng: (regression(rng, 150, 1.4), regression(rng, 150, 1.0)), "rmse", 20, replicates=200)
    assert power >= 0.9, power


SETTINGS = AbSettings(min_labelled_rows=300, alpha=0.05)


def test_a_better_challenger_wins_and_a_worse_one_loses():
    rng = np.random.default_rng(7)
    weak, strong = binormal(rng, 1500, 0.7), binormal(rng, 1500, 0.82)
    won = decide(SETTINGS, "roc_auc", weak, strong)
    assert won["result"] == "won" and won["p_value"] < 0.05 and won["test"] == "delong_independent"
    assert won["reason"].startswith("challenger better: live roc_auc challenger 0.8")
    assert won["challenger"]["labelled_rows"] == 1500 and won["champion"]["lower"] < won["champion"]["value"]
    lost = decide(SETTINGS, "roc_auc", strong, weak)
    assert lost["result"] == "lost" and lost["p_value_worse"] < 0.05 and lost["p_value"] > 0.5
    assert lost["reason"].startswith("challenger worse: ")


def test_too_few_labels_on_either_variant_is_no_promotion_whatever_the_difference():
    rng = np.random.default_rng(8)
    result = decide(SETTINGS, "roc_auc", binormal(rng, 299, 0.6), binormal(rng, 5000, 0.95))
    assert result["result"] == "too_few_labels" and "p_value" not in result
    assert result["reason"] == (
        "not enough labels by the end of the A/B test: challenger 5,000, champion 299 labelled rows, at least 300 per "
        "variant needed"
    )


def test_a_difference_within_the_minimum_effect_is_not_promoted():
    rng = np.random.default_rng(9)
    champion, challenger = binormal(rng, 20000, 0.78), binormal(rng, 20000, 0.80)
    assert decide(SETTINGS, "roc_auc", champion, challenger)["result"] == "won"  # significant at this size
    result = decide(AbSettings(min_labelled_rows=300, min_effect=0.03), "roc_auc", champion, challenger)
    assert result["result"] == "undecided" and "not better by more than 0.03" in result["reason"]


def test_an_undefined_metric_is_undecided():
    rng = np.random.default_rng(10)
    one_class = Sample(np.zeros(400), rng.random(400), 400)
    result = decide(SETTINGS, "roc_auc", binormal(rng, 400, 0.7), one_class)
    assert result["result"] == "undecided" and "of the challenger is undefined: only one class" in result["reason"]


class Endpoint:
    """DescribeEndpoint only."""

    def __init__(self, config: str, status: str = "InService", variants=("champion", "challenger")) -> None:
        self.reply = {
            "EndpointStatus": status,
            "EndpointConfigName": config,
            "ProductionVariants": [{"VariantName": v} for v in variants],
        }

    def describe_endpoint(self, EndpointName: str) -> dict:
        return self.reply


def ab_place(**ab) -> Place:
    model = parse_config(
        {"models": [{**MODEL, "deploy": {"mode": "ab", "ab": {"duration_seconds": 7200, **ab}}}]}
    ).models[0]
    return Place(model, "data", "art", "refit-churn")


MODEL = {
    "name": "churn",
    "problem_type": "binary_classification",
    "target": "churned",
    "primary_metric": "roc_auc",
    "metric_direction": "maximize",
}


def test_before_the_duration_has_passed_the_check_waits_and_reads_no_traffic():
    """Never a decision on the first difference seen: until the duration has passed the check only re-waits (S3 is
    None here: reading any traffic would raise)."""
    place = ab_place(check_interval_seconds=3000)
    assert place.model.deploy.ab.first_wait == {"remaining_seconds": 7200, "wait_seconds": 3000, "checks": 0}
    now = datetime(2026, 11, 29, tzinfo=UTC)
    common = {"started_at": "2026-11-28T00:00:00+00:00", "expected_config": "ab", "s3": None, "now": now}
    first = judge(place, remaining_seconds=7200, wait_seconds=3000, checks=0, sagemaker=Endpoint("ab"), **common)
    assert first == {
        "next": "wait",
        "remaining_seconds": 4200,
        "wait_seconds": 3000,
        "checks": 1,
        "started_at": common["started_at"],
    }
    second = judge(place, remaining_seconds=4200, wait_seconds=3000, checks=1, sagemaker=Endpoint("ab"), **common)
    assert (second["next"], second["remaining_seconds"], second["wait_seconds"]) == ("wait", 1200, 1200)
    with pytest.raises(AttributeError):  # the duration has passed: now it reads the traffic
        judge(place, remaining_seconds=1200, wait_seconds=1200, checks=2, sagemaker=Endpoint("ab"), **common)


@pytest.mark.parametrize(
    "endpoint",
    [Endpoint("other"), Endpoint("ab", status="Updating"), Endpoint("ab", variants=("champion",))],
    ids=["another config", "updating", "challenger gone"],
)
def test_an_endpoint_that_no_longer_holds_the_split_ends_the_test(endpoint):
    with pytest.raises(AbTestError, match="the test cannot be judged"):
        verify_split(endpoint, "refit-churn", "ab")


def test_configuration_of_the_ab_mode():
    # The run's timeout covers the duration (a run past it is stopped by Step Functions).
    assert ab_place().model.run_timeout_seconds - ab_place(duration_seconds=1).model.run_timeout_seconds >= 7199
    with pytest.raises(ConfigError, match="deploy.mode 'ab' is decided on the live metric .* set monitor.schedule"):
        parse_config({"models": [{**MODEL, "deploy": {"mode": "ab"}, "monitor": {"schedule": None}}]})
    with pytest.raises(ConfigError, match="challenger_share"):
        parse_config({"models": [{**MODEL, "deploy": {"mode": "ab", "ab": {"challenger_share": 1.0}}}]})
    with pytest.raises(ConfigError, match="over Step Functions' 31536000 s limit"):
        parse_config(
            {
                "models": [
                    {
                        **MODEL,
                        "deploy": {"mode": "ab", "ab": {"duration_seconds": 180 * 86400}},
                        "approval": "manual",
                        "approval_timeout_seconds": 200 * 86400,
                    }
                ]
            }
        )


def test_a_challenger_in_error_ends_the_test_at_once():
    """Real users must not get a failing challenger for the rest of the duration: its error alarm (the canary alarm)
    in ALARM rolls back at the next check, before the duration has passed and without reading any traffic."""
    place = ab_place(check_interval_seconds=3000)
    common = {"started_at": "2026-11-28T00:00:00+00:00", "expected_config": "ab", "s3": None, "checks": 0}
    now = datetime(2026, 11, 29, tzinfo=UTC)
    calm = judge(
        place,
        remaining_seconds=7200,
        wait_seconds=3000,
        sagemaker=Endpoint("ab"),
        now=now,
        **common,
        error_alarm=("refit-churn--canary", "OK"),
    )
    assert calm["next"] == "wait"
    failing = judge(
        place,
        remaining_seconds=7200,
        wait_seconds=3000,
        sagemaker=Endpoint("ab"),
        now=now,
        **common,
        error_alarm=("refit-churn--canary", "ALARM"),
    )
    assert (failing["next"], failing["result"], failing["remaining_seconds"]) == ("rollback", "errors", 4200)
    assert (
        failing["reason"] == "the challenger's error alarm refit-churn--canary is in ALARM: the test ends 4,200 s early"
    )
    assert "guards" not in failing
    # With the guards, their evidence goes with the result: the record says what the challenger answered.
    evidence = {"healthy": False, "reason": "the canary alarm is in ALARM", "challenger": {"errors_5xx": 40.0}}
    guarded = judge(
        place,
        remaining_seconds=7200,
        wait_seconds=3000,
        sagemaker=Endpoint("ab"),
        now=now,
        **common,
        error_alarm=("refit-churn--canary", "ALARM"),
        guards=lambda: evidence,
    )
    assert (guarded["result"], guarded["reason"], guarded["guards"]) == ("errors", failing["reason"], evidence)


def test_the_audit_record_says_what_the_test_decided():
    from refit_core.audit import format_summary, summarize_run

    base = {"run": {"run_id": "r1"}, "deploy": {"mode": "canary", "expected_config": "ab", "challenger_model": "m"}}
    ab = {"started_at": "2026-11-28T00:00:00+00:00", "remaining_seconds": 0, "checks": 3}
    won = summarize_run(
        {**base, "ab": {**ab, "next": "promote", "result": "won", "reason": "challenger better: ..."}},
        "churn",
        "e",
        "s",
        "t",
        None,
    )
    assert (won["status"], won["outcome"]) == ("SUCCEEDED", "promoted") and won["ab"]["result"] == "won"
    assert won["message"] == "A/B test won, challenger promoted: challenger better: ..."
    assert "A/B test: won after 3 check(s) - challenger better: ..." in format_summary(won)[1]
    few = summarize_run(
        {**base, "ab": {**ab, "next": "rollback", "result": "too_few_labels", "reason": "not enough labels"}},
        "churn",
        "e",
        "s",
        "t",
        None,
    )
    assert (few["outcome"], few["message"]) == (
        "rolled_back",
        "A/B test too few labels, rolled back: not enough labels",
    )
    waiting = summarize_run(
        {**base, "ab": {**ab, "next": "wait", "remaining_seconds": 600}}, "churn", "e", "s", "t", None
    )
    assert (waiting["status"], waiting["outcome"]) == ("FAILED", "incomplete") and "600 s were left" in waiting[
        "message"
    ]


def test_a_challenger_that_harms_users_ends_the_test_at_once_on_the_guards():
    """At every check, before any A/B decision and without reading labels, the canary's rules on the window so far
    (`guards`): a failing verdict ends the test (result `harmed`, the guards' evidence kept); a passing one is kept
    in the verdict and the test waits on."""
    place = ab_place(check_interval_seconds=3000)
    common = {"started_at": "2026-11-28T00:00:00+00:00", "expected_config": "ab", "s3": None, "checks": 0}
    now = datetime(2026, 11, 29, tzinfo=UTC)
    slow = {"healthy": False, "reason": "challenger p99 model latency 400.0 ms is 40.00 x the champion's 10.0 ms"}
    harmed = judge(
        place,
        remaining_seconds=7200,
        wait_seconds=3000,
        sagemaker=Endpoint("ab"),
        now=now,
        **common,
        error_alarm=("refit-churn--canary", "OK"),
        guards=lambda: slow,
    )
    assert (harmed["next"], harmed["result"], harmed["remaining_seconds"]) == ("rollback", "harmed", 4200)
    assert harmed["reason"].startswith("the challenger harms users on the live window: challenger p99 model latency")
    assert harmed["guards"] == slow and harmed["reason"].endswith("the test ends 4,200 s early")
    calm = {"healthy": True, "reason": "no worse than the champion"}
    waiting = judge(
        place,
        remaining_seconds=7200,
        wait_seconds=3000,
        sagemaker=Endpoint("ab"),
        now=now,
        **common,
        guards=lambda: calm,
    )
    assert waiting["next"] == "wait" and waiting["guards"] == calm


def numbers(invocations: float, p99: float | None, errors_5xx: float = 0, mean: float = 10.0):
    from refit_core.canary import VariantWindow

    return VariantWindow(invocations, 0, errors_5xx, mean, p99)


@pytest.mark.parametrize(
    ("challenger", "champion", "divergence", "healthy", "reason"),
    [
        (numbers(3, 11.0), numbers(5, 10.0), None, True, "p99 not judged"),  # quiet: no evidence of harm
        (numbers(300, 400.0, mean=60.0), numbers(300, 10.0), None, False, "is 40.00 x the champion's"),
        (numbers(300, 11.0, errors_5xx=12), numbers(300, 10.0), None, False, "5XX error rate 4.00% is over"),
        (numbers(300, 11.0), numbers(300, 10.0), {"diverged": True, "reason": "KS p = 0.001"}, False, "divergence"),
        (numbers(300, 11.0), numbers(300, 10.0), None, True, "p99 ratio 1.10"),
    ],
)
def test_the_guards_are_the_canarys_rules_without_the_quiet_rule(challenger, champion, divergence, healthy, reason):
    from refit_core.canary import step_verdict
    from refit_core.config import CanarySettings

    verdict = step_verdict(CanarySettings(), challenger, champion, "OK", divergence, quiet_fails=False)
    assert verdict["healthy"] is healthy and reason in verdict["reason"]
    if challenger.invocations < CanarySettings().min_invocations:  # the canary itself fails a quiet step
        assert not step_verdict(CanarySettings(), challenger, champion, "OK", divergence)["healthy"]


class VariantMetrics:
    """GetMetricStatistics per variant (ModelLatency in microseconds, as SageMaker reports it)."""

    def __init__(self, windows: dict) -> None:
        self.windows, self.requests = windows, []

    def get_metric_statistics(self, **request):
        self.requests.append(request)
        w = self.windows[next(d["Value"] for d in request["Dimensions"] if d["Name"] == "VariantName")]
        if request["MetricName"] == "ModelLatency":
            if "ExtendedStatistics" in request:
                return {"Datapoints": [{"ExtendedStatistics": {"p99": w.p99_latency_ms * 1000}}]}
            return {"Datapoints": [{"Sum": w.invocations * w.mean_latency_ms * 1000, "SampleCount": w.invocations}]}
        value = {"Invocations": w.invocations, "Invocation4XXErrors": 0, "Invocation5XXErrors": w.errors_5xx}
        return {"Datapoints": [{"Sum": value[request["MetricName"]]}]}

    def get_metric_data(self, **request):
        """PR(:X) and SampleCount of ModelLatency (X in microseconds): every request at the variant's p99."""
        self.requests.append(request)
        results = []
        for query in request["MetricDataQueries"]:
            stat = query["MetricStat"]
            w = self.windows[next(d["Value"] for d in stat["Metric"]["Dimensions"] if d["Name"] == "VariantName")]
            if stat["Stat"] == "SampleCount":
                value = w.invocations
            else:
                value = 100.0 if w.p99_latency_ms * 1000 <= float(stat["Stat"][len("PR(:") : -1]) else 0.0
            results.append({"Id": query["Id"], "Timestamps": [request["StartTime"]], "Values": [value]})
        return {"MetricDataResults": results}


def test_live_guards_judge_the_window_since_the_split_at_a_level_shared_by_the_checks():
    """JudgeAb's guards read both variants from the split's start: a challenger slow at p99 (its mean within the
    ceiling) harms; the tests' level is canary.alpha over the checks the duration holds; capture off: divergence
    skipped and said so."""
    from refit_handlers.ab_test import JudgeEvent, live_guards

    from tests.conftest import handler_settings

    model = handler_settings().model
    ab = model.deploy.ab.model_copy(update={"duration_seconds": 86400, "check_interval_seconds": 3600})
    config = handler_settings(deploy=model.deploy.model_copy(update={"mode": "ab", "ab": ab}))
    cloudwatch = VariantMetrics({"challenger": numbers(300, 400.0, mean=60.0), "champion": numbers(300, 10.0)})
    event = JudgeEvent(
        started_at="2026-11-28T00:00:00+00:00", remaining_seconds=3600, wait_seconds=3600, expected_config="ab"
    )

    class NoCapture:
        def describe_endpoint(self, **kwargs):
            return {"EndpointStatus": "InService", "EndpointConfigName": "ab"}

    verdict = live_guards(event, config, cloudwatch, NoCapture(), None, "OK")
    assert verdict["healthy"] is False and "p99 model latency 400.0 ms is 40.00 x" in verdict["reason"]
    assert verdict["p99_tail"]["challenger_slow"] == 300 and verdict["p99_tail"]["alpha"] == verdict["alpha"]
    stats = {q["MetricStat"]["Stat"] for r in cloudwatch.requests for q in r.get("MetricDataQueries", [])}
    margin = round(model.canary.max_p99_latency_ratio * 10_000)  # x the champion's 10 ms, in microseconds
    assert stats == {f"PR(:{margin})", "SampleCount"} and margin == 30_000  # the example's 3.0 (refit.toml)
    assert verdict["alpha"] == pytest.approx(model.canary.alpha / 24)
    assert verdict["divergence"]["status"] == "skipped"
    assert {r["StartTime"].isoformat() for r in cloudwatch.requests} == {"2026-11-28T00:00:00+00:00"}


@pytest.mark.parametrize("stop", [False, True])
def test_divergence_is_recorded_by_the_guards_and_stops_the_test_only_when_configured(monkeypatch, stop):
    """A challenger whose live outputs diverge (here a stub of the capture-reading check, which the canary's tests
    cover): with deploy.ab.stop_on_divergence the guards fail; without it the divergence is in their evidence and
    the outcome decides at the end (a market that moved away from the holdout also looks like divergence: the A/B e2e
    case of a market that moved against the challenger measured p = 0.001)."""
    import refit_handlers.ab_test as handler

    from tests.conftest import handler_settings

    diverged = {"status": "judged", "diverged": True, "reason": "KS distance 0.3 (p = 0.001)"}
    monkeypatch.setattr(handler, "window_divergence", lambda *args: diverged)
    model = handler_settings().model
    ab = model.deploy.ab.model_copy(update={"stop_on_divergence": stop})
    config = handler_settings(deploy=model.deploy.model_copy(update={"mode": "ab", "ab": ab}))
    calm = VariantMetrics({"challenger": numbers(300, 11.0), "champion": numbers(300, 10.0)})
    event = handler.JudgeEvent(
        started_at="2026-11-28T00:00:00+00:00", remaining_seconds=3600, wait_seconds=3600, expected_config="ab"
    )
    verdict = handler.live_guards(event, config, calm, None, None, "OK")
    assert verdict["divergence"] == diverged and verdict["stop_on_divergence"] is stop
    assert verdict["healthy"] is not stop
    if stop:
        assert verdict["reason"] == "prediction divergence: KS distance 0.3 (p = 0.001)"
