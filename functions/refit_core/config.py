"""The model configuration: one file describes every model refit manages.

Parsed with pydantic at synth time (a wrong file stops `cdk synth` with the field and the fix),
by the CLI, and by the Lambdas, which receive the one model's section as JSON in their environment.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from refit_core.metric_names import CLASSIFICATION_METRICS, REGRESSION_METRICS
from refit_core.names import model_prefix
from refit_core.synthetic import judging_floor

# SageMaker instance types refit knows a price for; users add their own in [prices].
DEFAULT_INSTANCE_PRICES_USD_PER_HOUR = {
    "ml.m5.large": 0.115,
    "ml.m5.xlarge": 0.23,
    "ml.m5.2xlarge": 0.461,
    "ml.m5.4xlarge": 0.922,
    "ml.c5.xlarge": 0.204,
    "ml.c5.2xlarge": 0.408,
}

# SageMaker real-time inference (hosting) on-demand prices, USD per instance-hour, region us-east-1, as AWS published
# them on its SageMaker pricing page (checked 2026-11); users add or correct theirs in
# [serving_instance_prices_usd_per_hour]. The canary's extra cost in the audit record is priced from this table.
DEFAULT_SERVING_PRICES_USD_PER_HOUR = {
    "ml.t2.medium": 0.056,
    "ml.m5.large": 0.115,
    "ml.m5.xlarge": 0.23,
    "ml.m5.2xlarge": 0.461,
    "ml.m5.4xlarge": 0.922,
    "ml.c5.large": 0.102,
    "ml.c5.xlarge": 0.204,
    "ml.c5.2xlarge": 0.408,
}

# How often the retrain state machine polls a training job and the endpoint (its Wait states).
TRAINING_POLL_SECONDS = 60
ENDPOINT_POLL_SECONDS = 30
# What one endpoint update (create, canary, canary step, promote, roll back, restore) may take before SageMaker fails it;
# three, and one per further canary step, can happen in one run. And everything the run's Lambdas may take together (the batch check alone may take 15 minutes).
ENDPOINT_UPDATE_ALLOWANCE_SECONDS = 3600
LAMBDA_ALLOWANCE_SECONDS = 3600
# deploy.mode guardrails: SageMaker's metrics and Data Capture files reach CloudWatch and S3 a little after the requests
# they describe, so the window judged after a guarded update is read this long after it ends (refit_core.guardrails).
GUARDRAILS_SETTLE_SECONDS = 120
# Step Functions' limit on a Standard execution.
MAX_EXECUTION_SECONDS = 365 * 86400


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the field and the fix."""


def _schedule(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"(rate\(\d+ (minute|minutes|hour|hours|day|days)\)|cron\(.+\))", value):
        raise ValueError(f"{value!r} is not an EventBridge schedule: use 'rate(1 day)' or 'cron(0 3 * * ? *)'")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpotSettings(_Strict):
    enabled: bool = True
    max_runtime_seconds: int = Field(3600, ge=60, le=432000)
    max_wait_seconds: int | None = Field(
        None, description="Defaults to max(2 x runtime, runtime + 1 h); must be >= max_runtime_seconds."
    )
    fallback_to_on_demand: bool = True
    max_retry_attempts: int = Field(2, ge=1, le=30)

    @model_validator(mode="after")
    def _wait_covers_runtime(self) -> SpotSettings:
        if self.max_wait_seconds is not None and self.max_wait_seconds < self.max_runtime_seconds:
            raise ValueError(
                f"max_wait_seconds ({self.max_wait_seconds}) must be >= max_runtime_seconds "
                f"({self.max_runtime_seconds}); SageMaker rejects a spot job otherwise"
            )
        return self

    @property
    def effective_max_wait_seconds(self) -> int:
        if self.max_wait_seconds is not None:
            return self.max_wait_seconds
        return max(2 * self.max_runtime_seconds, self.max_runtime_seconds + 3600)


class SearchSettings(_Strict):
    """A seeded random search (training_container/refit_training/search.py): the families take turns, each starting
    from its default settings, until either budget ends; each candidate is cross-validated on the training rows
    with a checkpoint after every fold."""

    families: list[Literal["hgb", "linear", "forest"]] = Field(
        default_factory=lambda: ["hgb", "linear", "forest"], min_length=1
    )
    max_trials: int = Field(4, ge=1, le=50)
    cv_folds: int = Field(3, ge=2, le=10)
    max_seconds: int = Field(1800, ge=10)
    parallel_jobs: bool = Field(
        False,
        description="Train each family as its own training job, all at once (a Step Functions Map), and take the one "
        "with the best cross-validated score to the gate; max_trials then applies to each family's job.",
    )

    @model_validator(mode="after")
    def _parallel_needs_families(self) -> SearchSettings:
        if self.parallel_jobs and len(set(self.families)) < 2:
            raise ValueError("parallel_jobs trains one job per family: list at least two families, or turn it off")
        return self


class DriftSettings(_Strict):
    """`alpha` is the probability of a false retrain over `horizon_checks` consecutive checks of no-drift batches
    against the same baseline. Each check spends alpha / horizon_checks (split again across columns), so by the
    union bound any run of that many checks raises a false alarm with probability at most alpha."""

    alpha: float = Field(0.05, gt=0, lt=0.5, description="False-retrain probability over the horizon.")
    horizon_checks: int = Field(1, ge=1, le=1000, description="Checks the alpha budget covers (1 = each check).")
    correction: Literal["bonferroni", "holm"] = "bonferroni"
    min_effect_size: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Categorical columns: total variation distance below which a significant shift is ignored.",
    )
    min_psi: float = Field(
        0.01,
        ge=0,
        description="Numeric columns and predictions: PSI (reference deciles) below which a significant shift is "
        "ignored. 0.01 is about a 0.1 SD shift of a normal column; it binds on large batches, where a trivial shift "
        "is significant (the PSI of two equal samples of 1,000 rows is already about 0.02).",
    )
    min_rows: int = Field(100, ge=10)
    min_performance_drop: float = Field(
        0.02, ge=0, description="Smallest drop of the primary metric on a labelled batch that counts as drift."
    )

    @property
    def per_check_alpha(self) -> float:
        return self.alpha / self.horizon_checks


class QualitySettings(_Strict):
    max_null_rate_increase: float = Field(0.1, ge=0, le=1)
    max_out_of_range_fraction: float = Field(0.05, ge=0, le=1)
    max_duplicate_fraction: float = Field(0.2, ge=0, le=1)
    block_on: list[str] = Field(
        default_factory=lambda: [
            "missing_column",
            "dtype_change",
            "too_few_rows",
            "all_null_column",
            "infinite_value",
            "unseen_label",
        ]
    )
    extra_columns: Literal["drop", "block"] = Field(
        "drop",
        description="A batch column the baseline does not have: `drop` (warn; training reads only the baseline's "
        "columns) or `block` (refuse the batch).",
    )


class GuardSettings(_Strict):
    """A metric the challenger may not make worse than the champion by more than `max_degradation` (absolute),
    overall or, with `segment_column`, in every segment of that column with at least `min_segment_rows` rows."""

    metric: str
    max_degradation: float = Field(0.0, ge=0)
    segment_column: str | None = None
    min_segment_rows: int = Field(50, ge=10)


class GateSettings(_Strict):
    alpha: float = Field(0.05, gt=0, lt=0.5)
    min_improvement: float = Field(0.0, ge=0, description="Practical margin on the primary metric.")
    min_improvement_kind: Literal["absolute", "relative"] = "absolute"
    guards: list[GuardSettings] = Field(default_factory=list)
    floors: dict[str, float] = Field(default_factory=dict, description="Absolute floors, e.g. {roc_auc = 0.7}.")
    bootstrap_samples: int = Field(2000, ge=200, le=20000)


class CanarySettings(_Strict):
    """The staged canary: the challenger takes `steps[0]` of the traffic, then each next share, with a bake per step;
    every step is judged against the champion on the same window (refit_core.canary.step_verdict) before the next
    shift. `weight` is the one-step plan of earlier configuration files (`weight = 0.2` is `steps = [0.2]`)."""

    steps: list[float] | None = Field(
        None, description="Challenger shares, strictly increasing, each in (0, 1), e.g. [0.05, 0.25, 0.5]."
    )
    weight: float | None = Field(None, gt=0, lt=1, description="A one-step plan (kept for earlier files).")
    bake_seconds: int = Field(600, ge=0, le=86400, description="The bake of each step.")
    min_invocations: int = Field(
        20, ge=1, description="Per variant and step: a step with fewer invocations on either is not promoted."
    )
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Ceiling on the challenger's 5XX rate.")
    max_model_latency_ms: float = Field(1000.0, gt=0, description="Ceiling on the challenger's mean ModelLatency.")
    max_p99_latency_ratio: float = Field(
        1.3,
        gt=1,
        description="Margin on the challenger's p99 ModelLatency over the champion's in the same window: a p99 over it "
        "fails the step when significantly more of the challenger's requests are slower than it (at `alpha`).",
    )
    alpha: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="Level of the one-sided tests that the challenger's 4XX/5XX rates, and its share of requests over "
        "the p99 margin, are higher than the champion's.",
    )
    min_latency_samples: int = Field(
        100,
        ge=20,
        description="The p99 ratio is judged only when both variants have this many ModelLatency samples in the "
        "step's window (below 100 a p99 is the largest value or two: one cold request decides it).",
    )
    divergence_min_samples: int = Field(
        100,
        ge=20,
        description="The prediction-divergence check is judged only when both variants have this many outputs "
        "captured in the step's window (refit_core.divergence); level `alpha` / number of steps.",
    )

    @model_validator(mode="after")
    def _one_plan(self) -> CanarySettings:
        if self.steps is not None and self.weight is not None:
            raise ValueError("canary: give either steps or weight (a one-step plan), not both")
        if self.steps is not None:
            if not self.steps:
                raise ValueError("canary.steps must list at least one traffic share")
            for index, share in enumerate(self.steps):
                if not 0 < share < 1:
                    raise ValueError(f"canary.steps.{index} = {share} must be in (0, 1)")
            for index, (before, after) in enumerate(zip(self.steps, self.steps[1:], strict=False), start=1):
                if after <= before:
                    raise ValueError(f"canary.steps must be strictly increasing: steps.{index} = {after} <= {before}")
        return self

    @property
    def plan(self) -> list[float]:
        """The challenger's share at each step (a lone `weight`, or the default 0.1, is a one-step plan)."""
        if self.steps is not None:
            return list(self.steps)
        return [self.weight if self.weight is not None else 0.1]


class ShadowSettings(_Strict):
    """`deploy.mode = "shadow"` (refit_core.shadow): the challenger runs as the endpoint's shadow variant
    (CreateEndpointConfig's ShadowProductionVariants) and receives a copy of `sampling_percent` of the champion's
    requests; its responses are never returned to callers. After `bake_seconds` both variants are compared on the same
    window, with the canary's rules (4XX/5XX two-proportion tests, p99 ModelLatency ratio, fixed ceilings, an invocation
    floor) and on their predictions from Data Capture (the canary's holdout-conditional divergence test at `alpha`);
    then the challenger is promoted or dropped."""

    sampling_percent: int = Field(
        100, ge=1, le=100, description="Share of the champion's requests SageMaker copies to the shadow variant."
    )
    bake_seconds: int = Field(600, ge=0, le=86400, description="How long the shadow receives copies before judged.")
    min_invocations: int = Field(
        20, ge=1, description="Per variant: fewer invocations on either in the window and the shadow is not promoted."
    )
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Ceiling on the shadow's 5XX rate.")
    max_model_latency_ms: float = Field(1000.0, gt=0, description="Ceiling on the shadow's mean ModelLatency.")
    max_p99_latency_ratio: float = Field(
        1.3, gt=1, description="Limit on the shadow's p99 ModelLatency over the champion's in the same window."
    )
    alpha: float = Field(
        0.05, gt=0, lt=0.5, description="Level of the one-sided 4XX/5XX tests and of the prediction-divergence test."
    )
    min_latency_samples: int = Field(100, ge=20, description="The p99 ratio is judged from this many samples each.")
    min_captured_predictions: int = Field(
        20,
        ge=5,
        description="Per variant: fewer captured predictions in the window and the shadow is not promoted (the "
        "prediction-divergence test, refit_core.divergence, is not judged below it).",
    )

    def limits(self) -> CanarySettings:
        """The comparison rules as the canary's step verdict takes them (refit_core.canary.step_verdict)."""
        return CanarySettings(
            bake_seconds=self.bake_seconds,
            min_invocations=self.min_invocations,
            max_error_rate=self.max_error_rate,
            max_model_latency_ms=self.max_model_latency_ms,
            max_p99_latency_ratio=self.max_p99_latency_ratio,
            alpha=self.alpha,
            min_latency_samples=self.min_latency_samples,
        )


AB_JUDGE_SECONDS = 900


class AbSettings(_Strict):
    """`deploy.mode = "ab"`: the challenger serves `challenger_share` of the traffic for `duration_seconds`; then the
    live primary metric of each variant on its own labelled rows of that time (the monitor's join of captured traffic
    and ground truth) decides, by a two-sample test of the difference (refit_core.ab_test): promoted when it is better
    by more than `min_effect` at level `alpha`, with at least `min_labelled_rows` labelled rows on each variant; else
    rolled back."""

    challenger_share: float = Field(0.5, gt=0, lt=1, description="The challenger's fixed share of the traffic.")
    duration_seconds: int = Field(
        7 * 86400, ge=1, le=180 * 86400, description="How long both variants serve before the decision."
    )
    check_interval_seconds: int = Field(
        3600, ge=1, le=86400, description="How often the waiting run checks that the endpoint still holds the split."
    )
    min_labelled_rows: int = Field(1000, ge=30, description="Per variant: fewer labelled rows is no promotion.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Level of the one-sided test that the challenger is better.")
    min_effect: float = Field(
        0.0, ge=0, description="Absolute improvement of the primary metric the challenger must show beyond chance."
    )
    bootstrap_samples: int = Field(2000, ge=200, le=20000, description="Resamples for metrics other than roc_auc.")
    stop_on_divergence: bool = Field(
        False,
        description="The guards at each check also stop the test on prediction divergence beyond the holdout's "
        "(always recorded); off by default, since a market that moved away from the holdout looks like divergence.",
    )

    @property
    def first_wait(self) -> dict[str, int]:
        """The state the test starts from (the `Start AB test` Pass state): the whole duration ahead, the first Wait."""
        return {
            "remaining_seconds": self.duration_seconds,
            "wait_seconds": min(self.check_interval_seconds, self.duration_seconds),
            "checks": 0,
        }


class GuardrailsSettings(_Strict):
    """SageMaker's deployment guardrails (`deploy.mode = "guardrails"`): the single-variant endpoint is updated with
    UpdateEndpoint's DeploymentConfig, a blue/green update whose traffic moves to the new fleet in one step
    (ALL_AT_ONCE), two (CANARY: `size`, then the rest) or steps of `size` (LINEAR), baking `wait_interval_seconds`
    after each; SageMaker rolls back when an alarm the stack created for the endpoint (5XX, mean ModelLatency) goes to
    ALARM during a bake. Limits are the API's (botocore's sagemaker service model, TrafficRoutingConfig and
    BlueGreenUpdatePolicy): CanarySize at most 50% of the fleet, LinearStepSize 10-50% of it, waits 0-3600 s, the
    maximum execution timeout 600-28800 s and larger than the waits it covers."""

    traffic_routing: Literal["ALL_AT_ONCE", "CANARY", "LINEAR"] = "ALL_AT_ONCE"
    size_type: Literal["CAPACITY_PERCENT", "INSTANCE_COUNT"] = "CAPACITY_PERCENT"
    size: int | None = Field(
        None, ge=1, description="CANARY: the canary's size; LINEAR: each step's size (percent or instances)."
    )
    wait_interval_seconds: int = Field(600, ge=0, le=3600, description="The bake after each traffic step.")
    termination_wait_seconds: int = Field(
        0, ge=0, le=3600, description="After the last bake, before the old fleet goes."
    )
    max_execution_timeout_seconds: int = Field(
        3600, ge=600, le=28800, description="The whole update; past it SageMaker rolls back."
    )
    max_model_latency_ms: float = Field(
        1000.0, gt=0, description="The latency alarm: mean ModelLatency over a minute above this rolls back."
    )
    max_5xx_per_minute: int = Field(1, ge=1, description="The 5XX alarm: this many 5XX in a minute rolls back.")
    # Judged by refit once SageMaker's update has ended on the new config (refit_core.guardrails.bake_verdict); a
    # fail is rolled back by a second UpdateEndpoint to the previous config.
    min_invocations: int = Field(
        20, ge=1, description="Fewer invocations in the judged window after the update and it is rolled back (quiet)."
    )
    max_p99_latency_ratio: float = Field(
        1.3,
        gt=1,
        description="Margin of the p99 rule: the new fleet's p99 after the update over the champion's before it.",
    )
    min_latency_samples: int = Field(100, ge=20, description="The p99 ratio is judged from this many samples each.")
    alpha: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="Level of the one-sided test that more of the new fleet's requests are over the p99 margin than "
        "the champion's were (refit_core.canary.p99_regression), and of the prediction-divergence test.",
    )
    champion_lookback_seconds: int = Field(
        3600, ge=60, le=86400, description="The champion's window before the update, for its p99 and outputs."
    )
    judge_seconds: int = Field(
        600,
        ge=60,
        le=3600,
        description="The window judged after the update ended, from its first whole minute (a whole number of minutes: "
        "SageMaker's metrics are per minute).",
    )
    divergence_min_samples: int = Field(
        100,
        ge=20,
        description="The prediction-divergence check is judged only with this many captured outputs in each window.",
    )

    @model_validator(mode="after")
    def _within_api_limits(self) -> GuardrailsSettings:
        if self.judge_seconds % 60:
            raise ValueError(
                f"deploy.guardrails.judge_seconds = {self.judge_seconds} must be a whole number of minutes (e.g. "
                f"{max(60, self.judge_seconds // 60 * 60)}): SageMaker's endpoint metrics are per minute, and the "
                "judged window must end where one does"
            )
        kind = self.traffic_routing
        if kind == "ALL_AT_ONCE":
            if self.size is not None:
                raise ValueError("deploy.guardrails.size applies to CANARY and LINEAR, not ALL_AT_ONCE; remove it")
        elif self.size is None:
            example = 10 if kind == "CANARY" else 25
            raise ValueError(f"deploy.guardrails.traffic_routing {kind} needs size (e.g. size = {example})")
        elif self.size_type == "CAPACITY_PERCENT":
            low, what = (1, "CanarySize") if kind == "CANARY" else (10, "LinearStepSize")
            if not low <= self.size <= 50:
                raise ValueError(
                    f"deploy.guardrails.size = {self.size}: SageMaker's {what} is {low}-50% of the fleet "
                    "(TrafficRoutingConfig)"
                )
        waits = self.bakes * self.wait_interval_seconds + self.termination_wait_seconds
        if self.max_execution_timeout_seconds <= waits:
            raise ValueError(
                f"deploy.guardrails.max_execution_timeout_seconds = {self.max_execution_timeout_seconds} must be "
                f"larger than the waits it covers ({self.bakes} bakes of wait_interval_seconds and "
                f"termination_wait_seconds: {waits} s), as BlueGreenUpdatePolicy requires"
            )
        return self

    @property
    def bakes(self) -> int:
        """Traffic steps, each followed by a bake: 1 (ALL_AT_ONCE), 2 (CANARY), ceil(100 / size) (LINEAR in percent;
        in instances it depends on the fleet, and the synth-time check counts them, refit_core.guardrails)."""
        if self.traffic_routing == "ALL_AT_ONCE":
            return 1
        if self.traffic_routing == "CANARY":
            return 2
        return -(-100 // self.size) if self.size_type == "CAPACITY_PERCENT" and self.size else 2


class AutoscalingSettings(_Strict):
    """Target tracking on the serving variant's `SageMakerVariantInvocationsPerInstance` (Application Auto Scaling):
    the instance count follows the traffic between `min_instances` and `max_instances`. refit carries it across every
    endpoint change (refit_core.capacity): deregistered before an UpdateEndpoint, registered again on the variant that
    serves once the endpoint is InService."""

    min_instances: int = Field(1, ge=1, le=100, description="Never fewer instances than this.")
    max_instances: int = Field(ge=1, le=100, description="Never more instances than this.")
    target_invocations_per_instance: float = Field(
        gt=0, description="Invocations per instance per minute the policy keeps the variant at."
    )
    scale_in_cooldown_seconds: int = Field(300, ge=0, le=3600, description="Wait after a scale-in before another.")
    scale_out_cooldown_seconds: int = Field(60, ge=0, le=3600, description="Wait after a scale-out before another.")

    @model_validator(mode="after")
    def _bounds_in_order(self) -> AutoscalingSettings:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"autoscaling.min_instances ({self.min_instances}) is above max_instances ({self.max_instances})"
            )
        return self


class CapacitySettings(_Strict):
    """How many instances serve (`deploy.capacity`): `instance_count` for each production variant refit creates (the
    champion, and the challenger during a canary), and optionally `autoscaling` on the serving variant."""

    instance_count: int = Field(1, ge=1, le=100, description="Instances of each production variant refit creates.")
    autoscaling: AutoscalingSettings | None = None

    @model_validator(mode="after")
    def _count_within_bounds(self) -> CapacitySettings:
        scaling = self.autoscaling
        if scaling is not None and not scaling.min_instances <= self.instance_count <= scaling.max_instances:
            raise ValueError(
                f"capacity.instance_count ({self.instance_count}) must lie within autoscaling's min_instances "
                f"({scaling.min_instances}) and max_instances ({scaling.max_instances})"
            )
        return self


class SyntheticTrafficSettings(_Strict):
    """`deploy.synthetic_traffic` (refit_core.synthetic): when a canary step (deploy.mode variants) or the shadow's bake
    fails only because its window was quiet, send each variant under the floor a window needs to be judged
    (`ModelConfig.requests_to_judge`: invocations, p99 samples, captured outputs) (floor - seen) requests
    replayed from this run's holdout rows, once, and judge the step again after `settle_seconds`. Off by default: a
    quiet window is then simply not promoted. The requests carry an InferenceId marked synthetic, so the monitor,
    ground truth and active learning never count them."""

    enabled: bool = False
    max_requests_per_variant: int = Field(
        200, ge=1, le=500, description="At most this many synthetic requests per variant and step."
    )
    rows_per_request: int = Field(1, ge=1, le=100, description="Holdout rows in each synthetic request.")
    settle_seconds: int = Field(
        120, ge=0, le=900, description="Wait after sending before the step is judged again (CloudWatch's delay)."
    )

    @property
    def replay_rows(self) -> int:
        """Holdout rows `train` keeps for replay: enough for two variants' requests without repeating a row."""
        return 2 * self.max_requests_per_variant * self.rows_per_request if self.enabled else 0


class DeploySettings(_Strict):
    """How a challenger reaches production (`deploy.mode`): `variants` (a second production variant that takes
    `canary.steps` of the traffic, each step judged against the champion), `guardrails` (SageMaker's blue/green
    deployment guardrails on a single-variant endpoint), `shadow` (the challenger gets a copy of live traffic whose
    responses are never returned) or `ab` (a fixed split for a set duration, decided on the live primary metric)."""

    mode: Literal["variants", "guardrails", "shadow", "ab"] = "variants"
    shadow: ShadowSettings = ShadowSettings()
    guardrails: GuardrailsSettings = GuardrailsSettings()
    ab: AbSettings = AbSettings()
    capacity: CapacitySettings = Field(default_factory=CapacitySettings)
    synthetic_traffic: SyntheticTrafficSettings = SyntheticTrafficSettings()

    @model_validator(mode="after")
    def _synthetic_traffic_where_it_is_judged(self) -> DeploySettings:
        if not self.synthetic_traffic.enabled or self.mode in ("variants", "shadow"):
            return self
        why = {
            "ab": "the A/B test is decided on joined ground truth, and replayed holdout rows are not live outcomes",
            "guardrails": "the whole fleet serves the challenger once SageMaker's update ends, so there is no champion variant "
            "to top up beside it, and replayed rows would be judged against the champion's live traffic before the update",
        }[self.mode]
        raise ValueError(
            f"deploy.synthetic_traffic.enabled is for deploy.mode 'variants' and 'shadow' only: {why}; "
            f"remove it or set it false with deploy.mode {self.mode!r}"
        )

    @model_validator(mode="after")
    def _autoscaling_where_it_is_carried(self) -> DeploySettings:
        if self.capacity.autoscaling is not None and self.mode in ("shadow", "guardrails"):
            raise ValueError(
                f"deploy.capacity.autoscaling is carried across the endpoint updates of the variants and ab modes "
                f"only; with deploy.mode {self.mode!r} remove it (instance_count still applies) or use 'variants'"
            )
        return self


class QualityAlarmSettings(_Strict):
    """The alarm on the live primary metric the monitor publishes (refit_core.monitor). It fires on the metric's
    *conservative* confidence bound (the upper bound for a metric to maximize, the lower for one to minimize), which
    the monitor publishes only when at least `monitor.min_labelled_rows` labelled rows are in its window: a retrain
    starts only when the whole interval is on the wrong side of `threshold`, for `evaluation_periods` monitor
    periods in a row, so a dip on a few hundred rows does not start one."""

    threshold: float
    evaluation_periods: int = Field(1, ge=1, le=24, description="Consecutive monitor periods in breach.")


class MonitorSettings(_Strict):
    """The production half of the loop (refit_core.monitor): what the endpoint captures, how often the monitor reads
    it, how the live primary metric is judged, and how much labelling effort active learning asks for. The quality
    alarm on what it publishes is `quality_alarm`."""

    capture_percent: int = Field(100, ge=1, le=100, description="Share of requests Data Capture records.")
    schedule: str | None = Field("rate(1 hour)", description="EventBridge schedule of the monitor, or none.")
    window_hours: float = Field(168, gt=0, le=24 * 90, description="Live metric: labelled rows this recent.")
    min_labelled_rows: int = Field(1000, ge=30, description="Fewer labelled rows: no alarm metric is published.")
    confidence: float = Field(0.95, ge=0.5, lt=1, description="Two-sided level of the live metric's interval.")
    labeling_budget_per_day: int = Field(200, ge=0, le=100_000, description="Active learning; 0 turns it off.")
    feedback: bool = Field(True, description="Labelled captured rows join the training history (feedback/).")

    @field_validator("schedule")
    @classmethod
    def _schedule_expression(cls, value: str | None) -> str | None:
        return _schedule(value)

    @property
    def period_seconds(self) -> int:
        """The monitor's period, from its schedule (a cron schedule counts as hourly): the alarm's period."""
        match = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)", self.schedule or "")
        if not match:
            return 3600
        unit = {"minute": 60, "hour": 3600, "day": 86400}[match.group(2).rstrip("s")]
        return max(60, int(match.group(1)) * unit)


class TrainingWindow(_Strict):
    """Which kept batches (objects under `training/<model>/`) a retrain trains on, besides the new batch, which is
    always trained on. A batch's age is its LastModified in `training/<model>/` (when a run kept it), measured from
    the run's start. `kind`: `all` (every kept batch), `last_batches` (the newest `batches` batches, the new one
    counted), `last_days` (kept batches at most `days` days old). `half_life_days` weights rows by recency
    (scikit-learn sample_weight 0.5 ** (age / half_life)); 0 or unset trains unweighted."""

    kind: Literal["all", "last_batches", "last_days"] = "all"
    batches: int | None = Field(None, ge=1, le=100_000, description="last_batches: how many, the new batch counted.")
    days: float | None = Field(None, gt=0, le=36_500, description="last_days: the oldest kept batch's age, in days.")
    half_life_days: float | None = Field(None, ge=0, description="Recency weights' half-life; 0 or unset: none.")

    @model_validator(mode="after")
    def _fields_fit_the_kind(self) -> TrainingWindow:
        needs = {"last_batches": "batches", "last_days": "days"}
        for kind, field in needs.items():
            if self.kind == kind and getattr(self, field) is None:
                raise ValueError(f"kind {kind!r} needs {field} (e.g. {field} = {5 if field == 'batches' else 30})")
            if self.kind != kind and getattr(self, field) is not None:
                raise ValueError(f"{field} applies only to kind {kind!r}, not {self.kind!r}; remove it or change kind")
        return self

    @property
    def weighted(self) -> bool:
        return bool(self.half_life_days)

    def describe(self) -> str:
        if self.kind == "last_batches":
            what = f"last {self.batches} batches"
        elif self.kind == "last_days":
            what = f"last {self.days:g} days"
        else:
            what = "all batches"
        return what + (f", half-life {self.half_life_days:g} days" if self.weighted else "")


class ModelConfig(_Strict):
    name: str
    problem_type: Literal["binary_classification", "regression"]
    target: str
    primary_metric: str
    metric_direction: Literal["maximize", "minimize"]
    categorical_columns: list[str] = Field(default_factory=list)
    id_column: str | None = None
    training_instance_type: str = "ml.m5.large"
    serving_instance_type: str = "ml.m5.large"
    holdout_fraction: float = Field(0.5, gt=0.05, lt=0.95, description="Share of the new batch held out for the gate.")
    schedule: str | None = Field("rate(1 day)", description="EventBridge schedule expression, or none.")
    seed: int = 42
    spot: SpotSettings = SpotSettings()
    search: SearchSettings = SearchSettings()
    training_window: TrainingWindow = TrainingWindow()
    monthly_training_budget_usd: float | None = Field(
        None, gt=0, description="Refuse to start a training job that could take this month's spend past it."
    )
    drift: DriftSettings = DriftSettings()
    quality: QualitySettings = QualitySettings()
    gate: GateSettings = GateSettings()
    canary: CanarySettings = CanarySettings()
    deploy: DeploySettings = DeploySettings()
    quality_alarm: QualityAlarmSettings | None = None
    monitor: MonitorSettings = MonitorSettings()
    approval: Literal["auto", "manual"] = "auto"
    approval_timeout_seconds: int = Field(3 * 86400, ge=5, le=365 * 86400)

    @field_validator("name")
    @classmethod
    def _name_is_resource_safe(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9-]{1,30}", value) or "--" in value or value.endswith("-"):
            raise ValueError(
                f"{value!r} must be 2-31 characters of lower-case letters, digits and single '-', starting with a "
                "letter and not ending with '-' (it becomes part of SageMaker, S3 and Step Functions names, where "
                "'--' separates it from generated parts)"
            )
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule_expression(cls, value: str | None) -> str | None:
        return _schedule(value)

    @model_validator(mode="after")
    def _metric_matches_problem(self) -> ModelConfig:
        known = CLASSIFICATION_METRICS if self.problem_type == "binary_classification" else REGRESSION_METRICS
        if self.primary_metric not in known:
            raise ValueError(
                f"primary_metric {self.primary_metric!r} does not fit problem_type {self.problem_type!r}; "
                f"use one of {sorted(known)}"
            )
        if known[self.primary_metric] != self.metric_direction:
            raise ValueError(
                f"metric_direction {self.metric_direction!r} is wrong for {self.primary_metric!r}: "
                f"it should be {known[self.primary_metric]!r}"
            )
        for metric in self.gate.floors:
            if metric not in known:
                raise ValueError(f"gate.floors names {metric!r}, which is not a metric for {self.problem_type!r}")
        for index, guard in enumerate(self.gate.guards):
            if guard.metric not in known:
                raise ValueError(
                    f"gate.guards.{index}.metric {guard.metric!r} is not a metric for {self.problem_type!r}; "
                    f"use one of {sorted(known)}"
                )
            if guard.segment_column == self.target:
                raise ValueError(f"gate.guards.{index}.segment_column must not be the target {self.target!r}")
        if self.target in self.categorical_columns:
            raise ValueError(f"target {self.target!r} must not also be listed in categorical_columns")
        return self

    @model_validator(mode="after")
    def _synthetic_traffic_reaches_the_floor(self) -> ModelConfig:
        synthetic = self.deploy.synthetic_traffic
        floor = self.requests_to_judge
        capture = f"monitor.capture_percent {self.monitor.capture_percent}"
        rows = f"synthetic_traffic.rows_per_request {synthetic.rows_per_request}"
        if self.deploy.mode == "shadow":
            shadow = self.deploy.shadow
            # The champion serves every request and the shadow sees sampling_percent of them.
            floor = math.ceil(floor * 100 / shadow.sampling_percent)
            where = (
                f"the {floor} requests a silent shadow bake needs (deploy.shadow.min_invocations "
                f"{shadow.min_invocations}, min_latency_samples {shadow.min_latency_samples}, "
                f"min_captured_predictions {shadow.min_captured_predictions}, sampling_percent "
                f"{shadow.sampling_percent}, {rows}, {capture})"
            )
        else:
            canary = self.canary
            where = (
                f"the {floor} requests per variant a step needs to be judged (canary.min_invocations "
                f"{canary.min_invocations}, min_latency_samples {canary.min_latency_samples}, divergence_min_samples "
                f"{canary.divergence_min_samples}, {rows}, {capture})"
            )
        if synthetic.enabled and synthetic.max_requests_per_variant < floor:
            raise ValueError(
                f"deploy.synthetic_traffic.max_requests_per_variant ({synthetic.max_requests_per_variant}) is below "
                f"{where}: a silent step could never be topped up to the floor; raise it to at least {floor}"
            )
        return self

    @property
    def requests_to_judge(self) -> int:
        """Requests each variant needs in a canary step's or the shadow's window for every comparison to be judged
        (a quiet window is not a pass), and what synthetic traffic tops a quiet window up to (refit_core.synthetic)."""
        rows, capture = self.deploy.synthetic_traffic.rows_per_request, self.monitor.capture_percent
        if self.deploy.mode == "shadow":
            shadow = self.deploy.shadow
            return judging_floor(
                shadow.min_invocations, shadow.min_latency_samples, shadow.min_captured_predictions, rows, capture
            )
        canary = self.canary
        return judging_floor(
            canary.min_invocations, canary.min_latency_samples, canary.divergence_min_samples, rows, capture
        )

    @model_validator(mode="after")
    def _ab_has_a_monitor(self) -> ModelConfig:
        if self.deploy.mode == "ab" and self.monitor.schedule is None:
            raise ValueError(
                "deploy.mode 'ab' is decided on the live metric the monitor computes from captured traffic and "
                "labels; set monitor.schedule (e.g. 'rate(1 hour)')"
            )
        return self

    @model_validator(mode="after")
    def _run_fits_an_execution(self) -> ModelConfig:
        if self.run_timeout_seconds > MAX_EXECUTION_SECONDS:
            raise ValueError(
                f"a run may take up to {self.run_timeout_seconds} s (training wait, approval_timeout_seconds, "
                f"canary.bake_seconds, deploy.ab.duration_seconds and endpoint updates), over Step Functions' "
                f"{MAX_EXECUTION_SECONDS} s limit for an execution; shorten approval_timeout_seconds, "
                "spot.max_wait_seconds or deploy.ab.duration_seconds"
            )
        return self

    @property
    def run_timeout_seconds(self) -> int:
        """The longest a retrain run may take, from this model's settings, with margin: the state machine's timeout.
        Training: the spot job's max wait, then an on-demand fallback's max runtime (parallel candidates run at the
        same time), each with a poll's delay; the manual-approval wait; a bake per canary step; three endpoint updates
        and one per further canary step; the Lambdas; in `deploy.mode = "ab"` the test's duration and its decision.
        A run past it is stopped by Step Functions and cleaned up by the run-end rule."""
        spot = self.spot
        training = (
            spot.effective_max_wait_seconds if spot.enabled else spot.max_runtime_seconds
        ) + TRAINING_POLL_SECONDS
        if spot.enabled and spot.fallback_to_on_demand:
            training += spot.max_runtime_seconds + TRAINING_POLL_SECONDS
        approval = self.approval_timeout_seconds if self.approval == "manual" else 0
        steps = len(self.canary.plan)
        bake = steps * self.canary.bake_seconds
        if self.deploy.mode == "shadow":  # one bake, three endpoint updates (shadow, promote or drop, restore)
            steps, bake = 1, self.deploy.shadow.bake_seconds
        endpoint = (3 + steps - 1) * (ENDPOINT_UPDATE_ALLOWANCE_SECONDS + ENDPOINT_POLL_SECONDS)
        if self.deploy.synthetic_traffic.enabled:  # a settle wait per topped-up step
            bake += steps * self.deploy.synthetic_traffic.settle_seconds
        total = training + approval + bake + endpoint + LAMBDA_ALLOWANCE_SECONDS
        if self.deploy.mode == "guardrails":  # SageMaker's update runs up to its own timeout, then rolls back;
            guarded = self.deploy.guardrails  # then refit judges a window from the next whole minute, read late
            total += guarded.max_execution_timeout_seconds + 60 + guarded.judge_seconds + GUARDRAILS_SETTLE_SECONDS
        if self.deploy.mode == "ab":  # the test's duration, and its decision
            total += self.deploy.ab.duration_seconds + AB_JUDGE_SECONDS
        return int(total * 1.1) + 3600

    @property
    def lock_seconds(self) -> int:
        """How long a run's single-flight lock lasts: longer than any run, so no second run drives the endpoint while
        the first may still; a run that ends any way (Finalize, or the run-end cleanup) releases it sooner."""
        return self.run_timeout_seconds + 3600

    @property
    def new_data_prefix(self) -> str:
        return f"incoming/{self.name}/"

    @property
    def training_data_prefix(self) -> str:
        return f"training/{self.name}/"

    @property
    def quarantine_prefix(self) -> str:
        """Where a batch the quality gate refused is copied, its reason in the run's audit record."""
        return f"quarantine/{self.name}/"

    @property
    def validation_data_prefix(self) -> str:
        """Optional fixed holdout: when anything is under it, both models are judged on it instead of a part of the
        new batch, and the whole batch is trained on."""
        return f"validation/{self.name}/"

    @property
    def baseline_data_prefix(self) -> str:
        """Optional drift reference: when anything is under it, the baseline profile is built from it instead of
        from the new batch."""
        return f"baseline/{self.name}/"

    @property
    def capture_prefix(self) -> str:
        """Data Capture's destination in the data bucket: `<prefix><endpoint>/<variant>/yyyy/mm/dd/hh/<file>.jsonl`."""
        return f"capture/{self.name}/"

    @property
    def ground_truth_prefix(self) -> str:
        """Labels for captured requests, by inference id (SageMaker's ground-truth merge format, CSV or JSON Lines)."""
        return f"ground-truth/{self.name}/"

    @property
    def feedback_prefix(self) -> str:
        """Captured requests joined with their labels, written by the monitor: batches of the training history."""
        return f"feedback/{self.name}/"

    @property
    def labeling_prefix(self) -> str:
        """Active learning's picks: a SageMaker Ground Truth input manifest per day and one object per request."""
        return f"labeling/{self.name}/"

    @property
    def monitoring_prefix(self) -> str:
        """The monitor's state, prediction parts and reports, in the artifact bucket."""
        return f"monitoring/{self.name}/"

    @property
    def segment_columns(self) -> list[str]:
        return sorted({g.segment_column for g in self.gate.guards if g.segment_column})

    @property
    def metrics(self) -> list[str]:
        known = CLASSIFICATION_METRICS if self.problem_type == "binary_classification" else REGRESSION_METRICS
        return list(known)

    def to_json(self) -> str:
        return self.model_dump_json()


# CloudWatch Logs accepts only these retention periods (PutRetentionPolicy).
LOG_RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)


class RetentionSettings(_Strict):
    """How long refit keeps logs and objects (S3 lifecycle rules on the shared buckets); `None` keeps them."""

    log_days: int = Field(365, description="The Lambdas' and state machines' log groups (one of CloudWatch's periods).")
    incoming_days: int | None = Field(
        None, ge=1, description="New-data batches under incoming/ (kept by default: the ledger and lineage name them)."
    )
    incoming_noncurrent_days: int | None = Field(90, ge=1, description="Overwritten versions under incoming/.")
    capture_days: int | None = Field(120, ge=1, description="Data Capture files under capture/.")
    feedback_noncurrent_days: int | None = Field(30, ge=1, description="Gathered feedback parts under feedback/.")
    checkpoint_days: int | None = Field(30, ge=1, description="Training checkpoints under checkpoints/.")
    job_data_days: int | None = Field(30, ge=1, description="Pinned copies of what each job read, under job-data/.")
    monitoring_days: int | None = Field(120, ge=1, description="The monitor's parts under monitoring/.")
    artifact_noncurrent_days: int | None = Field(90, ge=1, description="Overwritten versions in the artifact bucket.")

    @field_validator("log_days")
    @classmethod
    def _log_days_is_a_cloudwatch_period(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError(
                f"{value} is not a CloudWatch Logs retention period; use one of {list(LOG_RETENTION_DAYS)}"
            )
        return value


class ApprovalSettings(_Strict):
    """Who may decide a model's manual approval (`approval = "manual"` in a model's section), for every model of the
    project: one approver role per project (stacks/approvers.py)."""

    approvers: list[str] = Field(
        default_factory=list,
        description="IAM principal ARNs that may assume the approver role; empty: the account (its IAM policies "
        "decide who may assume it).",
    )
    separation_of_duties: bool = Field(
        False, description="The identity that started a run may not approve it (`refit approve` refuses)."
    )

    @field_validator("approvers")
    @classmethod
    def _principal_arns(cls, value: list[str]) -> list[str]:
        for arn in value:
            if not re.fullmatch(r"arn:aws[a-z-]*:iam::\d{12}:(root|(user|role)/[\w+=,.@/-]+)", arn):
                raise ValueError(
                    f"{arn!r} is not an IAM principal ARN; use arn:aws:iam::<account>:role/<name>, :user/<name> or "
                    ":root"
                )
        return value


class NetworkSettings(_Strict):
    """Where SageMaker runs the project's training jobs and endpoints (`[network]`, for every model): no VPC (the
    default: SageMaker's own network, the containers still network-isolated), an existing VPC (`vpc_id`,
    `subnet_ids`, `security_group_ids`), or `create = true` for a new one (private isolated subnets in two
    Availability Zones, no NAT, a security group without ingress, an S3 gateway endpoint; stacks/network.py)."""

    create: bool = Field(False, description="Create a minimal private VPC for SageMaker.")
    vpc_id: str | None = Field(None, description="An existing VPC (vpc-...); with subnet_ids and security_group_ids.")
    subnet_ids: list[str] = Field(
        default_factory=list, max_length=16, description="Private subnets of vpc_id (subnet-...), 1 to 16."
    )
    security_group_ids: list[str] = Field(
        default_factory=list, max_length=5, description="Security groups of vpc_id (sg-...), 1 to 5."
    )

    @field_validator("vpc_id")
    @classmethod
    def _vpc_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"vpc-(?:[0-9a-f]{8}|[0-9a-f]{17})", value):
            raise ValueError(f"{value!r} is not a VPC id (vpc- and 8 or 17 hexadecimal digits)")
        return value

    @field_validator("subnet_ids", "security_group_ids")
    @classmethod
    def _resource_ids(cls, value: list[str], info: ValidationInfo) -> list[str]:
        kind = "subnet" if info.field_name == "subnet_ids" else "sg"
        for item in value:
            if not re.fullmatch(rf"{kind}-(?:[0-9a-f]{{8}}|[0-9a-f]{{17}})", item):
                raise ValueError(f"{item!r} is not a {kind} id ({kind}- and 8 or 17 hexadecimal digits)")
        if len(set(value)) != len(value):
            raise ValueError(f"repeated ids: {value}")
        return value

    @model_validator(mode="after")
    def _one_way(self) -> NetworkSettings:
        existing = self.vpc_id is not None or self.subnet_ids or self.security_group_ids
        if self.create and existing:
            raise ValueError("either create = true or an existing vpc_id, subnet_ids and security_group_ids, not both")
        if existing and not (self.vpc_id and self.subnet_ids and self.security_group_ids):
            # SageMaker's VpcConfig requires both subnets and security groups; the VPC id is what they belong to.
            raise ValueError(
                "an existing VPC needs vpc_id, at least one of subnet_ids and at least one of security_group_ids"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.create or self.vpc_id is not None


MLFLOW_SERVER_ARN = re.compile(
    r"arn:aws[a-z-]*:sagemaker:[a-z]{2}(-[a-z]+)+-\d:\d{12}:mlflow-tracking-server/[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}"
)
MLFLOW_NAME_FIELDS = ("project", "model")
# A secret's full ARN: Secrets Manager appends '-' and 6 random characters to its name (an IAM grant on the ARN needs them).
SECRET_ARN = re.compile(
    r"arn:aws[a-z-]*:secretsmanager:[a-z]{2}(-[a-z]+)+-\d:\d{12}:secret:[A-Za-z0-9/_+=.@-]{1,512}-[A-Za-z0-9]{6}"
)


class MlflowSettings(_Strict):
    """`[mlflow]`: every run that trained a challenger is logged to this MLflow tracking server after it ends, and the
    challenger registered as a model version whose alias follows the deployment (refit_core.mlflow_sync)."""

    tracking_uri: str = Field(
        description="http(s)://host[:port][/path] of an MLflow server, or the ARN of a SageMaker managed MLflow "
        "tracking server (arn:aws:sagemaker:<region>:<account>:mlflow-tracking-server/<name>; SigV4-signed)."
    )
    experiment: str = Field("{project}/{model}", description="Experiment name; {project} and {model} are filled in.")
    registered_model: str = Field(
        "{project}-{model}", description="Registered model name; {project} and {model} are filled in."
    )
    timeout_seconds: int = Field(10, ge=1, le=60, description="Per HTTP request; a failed request is retried twice.")
    credentials_secret: str | None = Field(
        None,
        description='Full ARN of a Secrets Manager secret whose SecretString is JSON {"username": ..., '
        '"password": ...} (Basic) or {"token": ...} (Bearer), for an http(s) server that checks credentials.',
    )

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if value.startswith("arn:"):
            if not MLFLOW_SERVER_ARN.fullmatch(value):
                raise ValueError(
                    f"{value!r} is not a SageMaker MLflow tracking server ARN "
                    "(arn:aws:sagemaker:<region>:<account>:mlflow-tracking-server/<name>)"
                )
            return value
        if not re.fullmatch(r"https?://[^\s/:?#]+(:\d{1,5})?(/[^\s?#]*)?", value):
            raise ValueError(
                f"{value!r} is not an http(s) URI of an MLflow server (e.g. https://mlflow.example.com or "
                "http://127.0.0.1:5000) nor a SageMaker MLflow tracking server ARN"
            )
        return value.rstrip("/")

    @field_validator("credentials_secret")
    @classmethod
    def _secret(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not SECRET_ARN.fullmatch(value):
            raise ValueError(
                f"{value!r} is not the full ARN of a Secrets Manager secret "
                "(arn:aws:secretsmanager:<region>:<account>:secret:<name>-<6 characters>, as the console shows it)"
            )
        if str(info.data.get("tracking_uri", "")).startswith("arn:"):
            raise ValueError(
                "a SageMaker managed tracking server takes no credentials secret: refit signs its requests with SigV4 "
                "as the function's role (remove credentials_secret, or point tracking_uri at an http(s) server)"
            )
        return value

    @field_validator("experiment", "registered_model")
    @classmethod
    def _template(cls, value: str, info: ValidationInfo) -> str:
        try:
            filled = value.format(**{field: "x" for field in MLFLOW_NAME_FIELDS})
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"{value!r}: only {{project}} and {{model}} may be filled in ({error})") from None
        if not filled.strip() or len(filled) > 200:
            raise ValueError(f"{value!r} must name something (1-200 characters once filled in)")
        if info.field_name == "registered_model" and any(c in filled for c in "/:"):
            raise ValueError(f"{value!r}: MLflow refuses registered model names containing '/' or ':'")
        if info.field_name == "registered_model" and (filled == "." or filled.startswith("..")):
            # MLflow's registry treats the name as a path and refuses one that is '.' or climbs out ('..x').
            raise ValueError(f"{value!r}: MLflow refuses registered model names that are '.' or start with '..'")
        return value

    @property
    def server_arn(self) -> str | None:
        """The managed tracking server's ARN (the resource its IAM actions are scoped to), else None."""
        return self.tracking_uri if self.tracking_uri.startswith("arn:") else None

    def names(self, project: str, model: str) -> tuple[str, str]:
        """(experiment, registered model) of one model."""
        return (
            self.experiment.format(project=project, model=model),
            self.registered_model.format(project=project, model=model),
        )


class RefitConfig(_Strict):
    project: str = Field("refit", description="Prefixes every resource and names the stack.")
    notification_email: str | None = None
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    approval: ApprovalSettings = Field(default_factory=ApprovalSettings)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    instance_prices_usd_per_hour: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_INSTANCE_PRICES_USD_PER_HOUR)
    )
    serving_instance_prices_usd_per_hour: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SERVING_PRICES_USD_PER_HOUR)
    )
    mlflow: MlflowSettings | None = Field(None, description="Log runs to MLflow (opt-in); see README 'MLflow'.")
    models: list[ModelConfig] = Field(min_length=1)

    @field_validator("project")
    @classmethod
    def _project_is_resource_safe(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9]{1,20}", value):
            raise ValueError(
                f"{value!r} must be 2-21 lower-case letters and digits, starting with a letter: it names the stack "
                "and prefixes every resource as '{project}-{model}', so it has no '-' (project 'a' with model 'b-c' "
                "and project 'a-b' with model 'c' would share names)"
            )
        return value

    @model_validator(mode="after")
    def _unique_names_and_known_prices(self) -> RefitConfig:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {duplicates}")
        for model in self.models:
            model_prefix(self.project, model.name)
        for model in self.models:
            for instance in (model.training_instance_type,):
                if instance not in self.instance_prices_usd_per_hour:
                    raise ValueError(
                        f"model {model.name!r}: no price for training_instance_type {instance!r}; "
                        "add it under [instance_prices_usd_per_hour]"
                    )
            if model.serving_instance_type not in self.serving_instance_prices_usd_per_hour:
                raise ValueError(
                    f"model {model.name!r}: no hosting price for serving_instance_type "
                    f"{model.serving_instance_type!r}; add it under [serving_instance_prices_usd_per_hour]"
                )
        return self

    def prefix(self, model: str) -> str:
        """`{project}-{model}`: see refit_core.names."""
        return model_prefix(self.project, model)

    def model(self, name: str) -> ModelConfig:
        for model in self.models:
            if model.name == name:
                return model
        raise ConfigError(f"no model named {name!r} in the configuration; known: {[m.name for m in self.models]}")


def _describe_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid refit configuration"]
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see README 'Model configuration')"
        elif item["type"] == "missing":
            message = "required field is missing"
        lines.append(f"  - {location}: {message}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<config>") -> RefitConfig:
    try:
        return RefitConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe_errors(error, source)) from None


def load_config(path: str | Path) -> RefitConfig:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the refit configuration ({error.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    return parse_config(data, str(path))


def model_from_json(text: str) -> ModelConfig:
    """The one model's section, as passed to a Lambda in its environment."""
    try:
        return ModelConfig.model_validate(json.loads(text))
    except (ValidationError, json.JSONDecodeError) as error:
        raise ConfigError(f"REFIT_MODEL_CONFIG: invalid model configuration ({error})") from None
