"""JudgeAb's guards on moto (`deploy.mode = "ab"`): a check of the running A/B test reads both variants' CloudWatch
numbers and Data Capture files since the split began, and the prediction-divergence test on the captured outputs
against the gate's holdout reference (gate.json) as the canary's. Diverging predictions end the test at once
(`harmed`, rolled back) with `deploy.ab.stop_on_divergence`; by default the divergence is recorded in the check's
guards and the test goes on to be decided on the labels. An honest challenger is not stopped either way. The
captured records and the metrics are written as the local runtime writes them; the diverging challenger is the
shadow check's (tests/integration/test_shadow_check.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws
from refit_core.ab_test import judge
from refit_core.config import AbSettings, DeploySettings
from refit_core.monitor import Place
from refit_handlers.ab_test import JudgeEvent, live_guards

from scripts.local_aws.data_capture import capture_summary
from tests.conftest import handler_settings
from tests.integration.test_shadow_check import CAPTURE, GATE, GATE_URI, RNG, captured, challenger_of, traffic

AB_CONFIG = "e-ab"
SAMPLES = 120  # captured outputs and latency samples per variant: over divergence_min_samples and min_latency_samples


class Endpoint:
    """DescribeEndpoint of the endpoint on the A/B config: both variants, capture on (the local runtime's summary)."""

    def describe_endpoint(self, EndpointName: str) -> dict:  # noqa: N803 (boto3's names)
        return {
            "EndpointName": EndpointName,
            "EndpointConfigName": AB_CONFIG,
            "EndpointStatus": "InService",
            "ProductionVariants": [{"VariantName": "champion"}, {"VariantName": "challenger"}],
            "DataCaptureConfig": capture_summary(CAPTURE),
        }


@pytest.fixture
def aws():
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="data")
        s3.create_bucket(Bucket="art")
        s3.put_object(Bucket="art", Key=GATE_URI.removeprefix("s3://art/"), Body=GATE)
        yield s3, boto3.client("cloudwatch", region_name="us-east-1")


def check(s3, cloudwatch, started: datetime, stop_on_divergence: bool) -> dict:
    """The first check of a day-long test (24 checks), as JudgeAb makes it after its first Wait."""
    ab = AbSettings(duration_seconds=86400, check_interval_seconds=3600, stop_on_divergence=stop_on_divergence)
    config = handler_settings(deploy=DeploySettings(mode="ab", ab=ab))
    event = JudgeEvent(
        started_at=started.isoformat(),
        remaining_seconds=86400,
        wait_seconds=3600,
        expected_config=AB_CONFIG,
        gate_uri=GATE_URI,
    )
    endpoint = Endpoint()
    return judge(
        Place(config.model, config.data_bucket, config.artifact_bucket, config.endpoint_name),
        started_at=event.started_at,
        remaining_seconds=event.remaining_seconds,
        wait_seconds=event.wait_seconds,
        checks=0,
        expected_config=AB_CONFIG,
        s3=s3,
        sagemaker=endpoint,
        now=datetime.now(UTC),
        error_alarm=(config.canary_alarm, "OK"),
        guards=lambda: live_guards(event, config, cloudwatch, endpoint, s3, "OK"),
    )


def serve(s3, cloudwatch, started: datetime, shift: float) -> None:
    """Both variants serve `SAMPLES` requests without errors; the challenger's captured outputs are its answers to
    the champion's rows (`shift` 0: as its holdout disagreement with the champion predicts)."""
    traffic(cloudwatch, "champion", SAMPLES)
    traffic(cloudwatch, "challenger", SAMPLES)
    scores = RNG.beta(2, 5, SAMPLES)
    captured(s3, "champion", scores, datetime.now(UTC))
    captured(s3, "challenger", challenger_of(scores, shift=shift), datetime.now(UTC))
    # an earlier hour's records, before the split began, do not count
    captured(s3, "challenger", challenger_of(scores), started - timedelta(hours=2))


def test_diverging_predictions_end_the_test_at_once_with_stop_on_divergence(aws):
    s3, cloudwatch = aws
    started = datetime.now(UTC) - timedelta(seconds=5)
    serve(s3, cloudwatch, started, shift=0.35)
    verdict = check(s3, cloudwatch, started, stop_on_divergence=True)
    assert (verdict["next"], verdict["result"], verdict["wait_seconds"]) == ("rollback", "harmed", 0)
    assert verdict["reason"].startswith("the challenger harms users on the live window: prediction divergence: ")
    assert verdict["reason"].endswith("the test ends 82,800 s early")
    guards = verdict["guards"]
    assert not guards["healthy"] and guards["stop_on_divergence"] is True
    divergence = guards["divergence"]
    assert divergence["status"] == "judged" and divergence["diverged"] is True
    assert divergence["challenger_samples"] == divergence["champion_samples"] == SAMPLES
    # level canary.alpha over the day's 24 checks, and the p-value under it
    assert divergence["alpha"] == pytest.approx(handler_settings().model.canary.alpha / 24) == guards["alpha"]
    assert divergence["p_value"] < divergence["alpha"]
    # nothing else would have stopped it
    assert guards["p_value_5xx"] == 1.0 and guards["challenger"]["errors_5xx"] == 0


def test_by_default_diverging_predictions_are_recorded_and_the_test_goes_on(aws):
    s3, cloudwatch = aws
    started = datetime.now(UTC) - timedelta(seconds=5)
    serve(s3, cloudwatch, started, shift=0.35)
    verdict = check(s3, cloudwatch, started, stop_on_divergence=False)
    assert (verdict["next"], verdict.get("result"), verdict["wait_seconds"]) == ("wait", None, 3600)
    guards = verdict["guards"]
    assert guards["healthy"] and guards["stop_on_divergence"] is False
    assert guards["divergence"]["status"] == "judged" and guards["divergence"]["diverged"] is True
    assert guards["divergence"]["p_value"] < guards["alpha"]


def test_an_honest_challenger_is_not_stopped_with_stop_on_divergence(aws):
    s3, cloudwatch = aws
    started = datetime.now(UTC) - timedelta(seconds=5)
    serve(s3, cloudwatch, started, shift=0.0)
    verdict = check(s3, cloudwatch, started, stop_on_divergence=True)
    assert (verdict["next"], verdict.get("result")) == ("wait", None), verdict.get("reason")
    divergence = verdict["guards"]["divergence"]
    assert verdict["guards"]["healthy"] and divergence["status"] == "judged" and divergence["diverged"] is False
    assert divergence["challenger_samples"] == SAMPLES  # the earlier hour's agreeing records are outside the window
