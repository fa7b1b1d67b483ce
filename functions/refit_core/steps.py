"""The step contract: what each state of the retrain run writes into the execution's state, and the run state itself.

Each Lambda returns one of these models (serialized with `model_dump(mode="json")`, every field present, null when
unknown, so a JSONPath the state machine reads always resolves); the state machine writes it at its ResultPath
(`$.run`, `$.check`, ...); `RunState` is the whole accumulated state, which Finalize and the audit code parse.
`tests/infrastructure/test_step_contract.py` checks every `$.x.y` path and Choice literal of the synthesized
definition against these models.

Step models refuse fields they do not declare (a handler cannot add a key the contract does not know). The run state
ignores top-level keys it does not know, and `RunState.from_state` drops undeclared or invalid parts of a section with
a note instead of raising: the definition can only write the sections declared here (the infrastructure test checks
every ResultPath), so anything else came from a hand-written input, and Finalize must write a record whatever it got.

What rides in the state stays small (Step Functions caps a state at 256 KiB): per-column detail goes to S3 (the drift
report, gate.json) and the state carries its URI and a capped summary.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

MAX_LISTED = 10  # findings, failed guards: enough to say what went wrong; the full list is in S3 or countable
MAX_DRIFTED_NAMES = 50  # drifted feature names carried in the state (the count and the report have them all)

Trigger = Literal["manual", "s3", "schedule", "alarm", "queue"]


class Step(BaseModel):
    """A state's output: undeclared keys are an error where the model is built."""

    model_config = ConfigDict(extra="forbid")

    def to_state(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --- Prepare -> $.run ---------------------------------------------------------------------------------------------
class RunInfo(Step):
    run_id: str
    model: str | None = None
    trigger: Trigger | Literal["unknown"] = "unknown"
    reason: str | None = None
    force: bool = False
    data_uri: str | None = None
    started_at: str | None = None
    data_etag: str | None = None
    proceed: bool = True
    no_data: bool = False
    settled_by: str | None = None
    skip_outcome: Literal["queued", "already_checked"] | None = None  # why a run that did not proceed stopped
    claimed_batch: bool = False  # this run claimed its batch in the ledger; its end settles the ledger item
    queued: int = 0  # batches still waiting in the queue when this run started
    provenance: Literal["batch", "feedback"] = "batch"  # feedback: labelled captured traffic (refit_core.monitor)
    # redeploy: a manual rollback / promotion of a registered version (no check, training or gate)
    mode: Literal["retrain", "redeploy"] = "retrain"
    deploy_version: int | None = None
    deploy_kind: Literal["rollback", "promote"] | None = None
    deploy_force: bool = False  # deploy a version the registry marks Rejected
    requested_by: str | None = None


# --- CheckBatch -> $.check ----------------------------------------------------------------------------------------
class Finding(Step):
    check: str
    column: str | None = None
    severity: Literal["block", "warn"]
    observed: Any = None
    limit: Any = None
    message: str


class QualitySummary(Step):
    passed: bool
    n_rows: int | None = None
    reason: str | None = None
    findings: list[Finding] = Field(default_factory=list)  # the first MAX_LISTED blocking and warning findings
    n_blocking: int = 0
    n_warnings: int = 0

    @classmethod
    def of(cls, report: dict[str, Any]) -> QualitySummary:
        """From `check_quality`'s report: every finding counted, the first few of each severity kept."""
        findings = report.get("findings") or []
        blocking = [f for f in findings if f["severity"] == "block"]
        warnings = [f for f in findings if f["severity"] == "warn"]
        return cls(
            passed=report["passed"],
            n_rows=report.get("n_rows"),
            reason=report.get("reason"),
            findings=[Finding(**f) for f in blocking[:MAX_LISTED] + warnings[:MAX_LISTED]],
            n_blocking=len(blocking),
            n_warnings=len(warnings),
        )


class PerformanceSummary(Step):
    metric: str | None = None
    baseline: float | None = None
    current: float | None = None
    drifted: bool | None = None


class DriftSummary(Step):
    """The drift report's verdict; the per-column report is at `CheckResult.report_uri`."""

    drift_detected: bool
    drifted_features: list[str] = Field(default_factory=list)  # sorted, capped at MAX_DRIFTED_NAMES
    n_drifted_features: int = 0
    n_features: int = 0
    target_drifted: bool | None = None
    prediction_drifted: bool | None = None
    performance: PerformanceSummary | None = None

    @classmethod
    def of(cls, report: dict[str, Any]) -> DriftSummary:
        drifted = report.get("drifted_features") or []
        performance = report.get("performance")
        return cls(
            drift_detected=report["drift_detected"],
            drifted_features=drifted[:MAX_DRIFTED_NAMES],
            n_drifted_features=len(drifted),
            n_features=len(report.get("features") or {}),
            target_drifted=(report.get("target") or {}).get("drifted"),
            prediction_drifted=(report.get("prediction") or {}).get("drifted"),
            performance=PerformanceSummary(**{k: performance.get(k) for k in PerformanceSummary.model_fields})
            if performance
            else None,
        )


class Champion(Step):
    endpoint_config: str
    model_name: str
    model_data_url: str
    model_package_arn: str | None = None
    version: int | None = None
    baseline_uri: str | None = None
    model_sha256: str | None = None


class Decision(Step):
    action: Literal["train", "stop", "fail"]
    reason: str | None = None
    outcome: str | None = None  # for a stop: no_data, already_checked, no_drift


class CheckResult(Step):
    data_uri: str | None = None
    quality: QualitySummary | None = None
    drift: DriftSummary | None = None
    champion: Champion | None = None
    has_champion: bool = False
    champion_model_uri: str | None = None
    champion_sha256: str | None = None
    champion_config: str | None = None
    decision: Decision | None = None
    report_uri: str | None = None
    report_html_uri: str | None = None
    # The columns a job trains on: the baseline's (the champion's training data), or the first batch's own. Every
    # file a job reads must have them (matched by name); other columns are left out.
    train_columns: list[str] | None = None


# --- StartTraining / PollTraining / PickCandidate -> $.training -----------------------------------------------------
class CandidateSummary(Step):
    family: str | None = None
    job_name: str | None = None
    status: str | None = None
    cv_score: float | None = None
    estimated_cost_usd: float | None = None
    billable_seconds: float | None = None
    reason: str | None = None


class WindowSummary(Step):
    """The training window a job was given (refit_core.window); the objects and versions are in the manifest."""

    window: str
    kind: str
    n_batches: int  # batches trained on, the new one included
    n_kept_available: int  # kept batches in the history
    bytes: int | None = None
    oldest_age_days: float | None = None
    weighted: bool = False
    inputs_manifest_uri: str | None = None


class TrainingStep(Step):
    next: Literal["wait", "done", "fallback", "failed", "refused"]
    job_name: str | None = None
    attempt: int | None = None
    attempts: int | None = None
    spot: bool | None = None
    family: str | None = None
    status: str | None = None
    secondary_status: str | None = None
    failure_reason: str | None = None
    reason: str | None = None  # why training was refused (budget)
    training_seconds: float | None = None
    billable_seconds: float | None = None
    savings_percent: float | None = None
    estimated_cost_usd: float | None = None
    model_data_url: str | None = None
    output_path: str | None = None
    candidates: list[CandidateSummary] | None = None  # parallel candidates only
    chosen: str | None = None
    window: WindowSummary | None = None


# --- Gate -> $.gate ------------------------------------------------------------------------------------------------
class GateStep(Step):
    """The gate's verdict and headline numbers; every guard and segment is in `gate_uri` (gate.json)."""

    promote: bool
    reason: str
    test: str | None = None
    p_value: float | None = None
    primary_metric: str | None = None
    challenger: float | None = None
    champion: float | None = None
    difference: float | None = None
    improvement: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    required_improvement: float | None = None
    alpha: float | None = None
    min_improvement: float | None = None
    n_rows: int | None = None
    floors: list[dict[str, Any]] = Field(default_factory=list)  # one per configured floor
    failed_guards: list[dict[str, Any]] = Field(default_factory=list)  # the first MAX_LISTED that failed
    n_guards: int = 0
    all_metrics: dict[str, Any] | None = None
    intervals: dict[str, Any] | None = None
    evaluation_uri: str | None = None
    baseline_uri: str | None = None
    gate_uri: str | None = None

    @classmethod
    def of(cls, decision: dict[str, Any], **uris: Any) -> GateStep:
        guards = decision.get("guards") or []
        fields = {k: v for k, v in decision.items() if k in cls.model_fields}
        return cls(
            **fields,
            failed_guards=[g for g in guards if not g.get("holds")][:MAX_LISTED],
            n_guards=len(guards),
            **uris,
        )


# --- Register -> $.registry ----------------------------------------------------------------------------------------
class RegistryStep(Step):
    model_package_arn: str
    version: int | None = None
    approval: Literal["Approved", "PendingManualApproval", "Rejected"]
    lineage_uri: str | None = None


# --- Deploy (each action) -> $.deploy, $.endpoint, $.canary, $.shift, $.promotion, $.rollback, $.restore, $.scaling ---
class DeployStarted(Step):
    mode: Literal["create", "canary", "shadow", "guardrails"]
    previous_config: str | None = None
    expected_config: str
    challenger_model: str
    canary_weight: float | None = None  # the first step's share
    canary_steps: list[float] | None = None  # the plan: the challenger's share at each step
    deployment_config: dict[str, Any] | None = None  # guardrails: UpdateEndpoint's DeploymentConfig as sent
    deregistered: list[str] = Field(default_factory=list)  # variants whose scalable targets went before the update
    challenger_instances: int | None = None  # the canary's capacity and hosting price (refit_core.capacity)
    instance_type: str | None = None
    price_usd_per_hour: float | None = None
    challenger_since: str | None = None  # when the UpdateEndpoint that added the challenger was made


class RedeployStarted(Step):
    """The Deploy action `redeploy` (a manual rollback or promotion): the version it put on the endpoint, the config
    it asked for and the one it replaced (restored if the endpoint does not come InService on the new one)."""

    kind: Literal["rollback", "promote"]
    version: int
    model_package_arn: str
    model_data_url: str
    approval: str | None = None  # the version's ModelApprovalStatus when it was deployed
    forced: bool = False  # a Rejected version deployed on request
    model_name: str
    expected_config: str
    previous_config: str
    previous_version: int | None = None
    previous_package_arn: str | None = None
    deregistered: list[str] = Field(default_factory=list)


class Variant(Step):
    name: str
    weight: float


class EndpointView(Step):
    name: str
    status: str | None = None
    config: str | None = None
    failure_reason: str | None = None
    variants: list[Variant] = Field(default_factory=list)


class EndpointCheck(Step):
    next: Literal["ready", "wait", "failed"]
    reason: str | None = None
    name: str | None = None
    status: str | None = None
    config: str | None = None
    failure_reason: str | None = None
    variants: list[Variant] = Field(default_factory=list)
    canary_started_at: str | None = None


class AlarmView(Step):
    name: str
    state: str | None = None
    reason: str | None = None


class GuardrailsCheck(Step):
    """A guarded update (deploy.mode guardrails) as DescribeEndpoint shows it (guardrails_status): still under way
    (`wait`), SageMaker's rollback to the previous config (`rolled_back`, with the reason from the rollback alarms or
    FailureReason), `failed` (e.g. UpdateRollbackFailed) with the endpoint's state as seen, or the new config serving
    (`judge`: refit judges the window `judge_from`-`judge_until` only the new fleet served, read at `judge_at`). Then
    refit's verdict on that window (judge_guardrails, `bake`): `promoted`, or `rollback` (quiet, diverging predictions,
    a p99 over the champion's; the run returns the endpoint to the previous config)."""

    next: Literal["wait", "judge", "promoted", "rolled_back", "rollback", "failed"]
    reason: str
    name: str | None = None
    status: str | None = None
    config: str | None = None
    failure_reason: str | None = None
    variants: list[Variant] = Field(default_factory=list)
    expected_config: str
    previous_config: str
    alarms: list[AlarmView] = Field(default_factory=list)
    judge_from: str | None = None  # the judged window: from the first whole minute after the update ended
    judge_until: str | None = None
    judge_at: str | None = None  # when the window is read (its end and a settle), the Wait's timestamp
    bake: dict[str, Any] | None = None  # refit's verdict on the judged window (refit_core.guardrails.bake_verdict)
    checked_at: str | None = None


class VariantNumbers(Step):
    """One variant's numbers over a canary step's window (refit_core.canary.VariantWindow)."""

    invocations: float
    errors_4xx: float
    errors_5xx: float
    rate_4xx: float | None = None
    rate_5xx: float | None = None
    mean_latency_ms: float | None = None
    p99_latency_ms: float | None = None
    latency_samples: float | None = None


class SyntheticVariant(Step):
    """What one variant's top-up did: requests sent, answered, refused by the model (ModelError), and which
    production variant SageMaker said served them."""

    requests: int
    answered: int = 0
    model_errors: int = 0
    served_by: dict[str, int] = Field(default_factory=dict)


class SyntheticTraffic(Step):
    """The Deploy action `synthetic_traffic` (refit_core.synthetic): the requests replayed from the run's holdout rows
    to top up a quiet step, per variant. `step` -1 is the state before any top-up (the `No synthetic traffic yet`
    Pass)."""

    step: int
    requests: dict[str, int] = Field(default_factory=dict)
    variants: dict[str, SyntheticVariant] = Field(default_factory=dict)
    rows_per_request: int | None = None
    target_variants: bool | None = None
    inference_id_prefix: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


class CanaryStepVerdict(Step):
    """One judged step: the share planned, the weights the endpoint had, the window, both variants' numbers, the tests
    and the verdict."""

    step: int
    weight: float
    endpoint_weights: list[Variant] = Field(default_factory=list)
    window_start: str | None = None
    window_end: str | None = None
    healthy: bool
    reason: str
    challenger: VariantNumbers | None = None
    champion: VariantNumbers | None = None
    p_value_5xx: float | None = None
    p_value_4xx: float | None = None
    p99_latency_ratio: float | None = None
    p99_judged: bool | None = None
    p99_tail: dict[str, Any] | None = None  # refit_core.canary.p99_regression's test when the p99 is over the ratio
    alarm_state: str | None = None
    divergence: dict[str, Any] | None = None  # refit_core.divergence.prediction_divergence's result
    quiet: bool = False  # failed only for want of traffic (a comparison that could not be judged)
    synthetic: SyntheticTraffic | None = None  # the top-up this step was judged with (refit_core.synthetic)


class CanaryVerdict(Step):
    """The canary so far: every judged step in order, the last one's verdict and headline numbers, and what comes
    next (`shift` to `next_step` at `next_weight`, `promote`, or `rollback`). Before the first step is judged the state
    holds `healthy` false, no steps and `next` null."""

    healthy: bool
    reason: str
    next: Literal["shift", "promote", "rollback", "synthetic"] | None = None
    next_step: int | None = None
    next_weight: float | None = None
    # next "synthetic": the quiet step to top up and the requests per variant (refit_core.synthetic); the quiet
    # verdict is not in `steps`, the step is judged again after the top-up
    synthetic_step: int | None = None
    synthetic_requests: dict[str, int] | None = None
    steps: list[CanaryStepVerdict] = Field(default_factory=list)
    invocations: float | None = None
    errors_5xx: float | None = None
    error_rate: float | None = None
    mean_model_latency_ms: float | None = None
    alarm_state: str | None = None


class ShadowVerdict(Step):
    """`deploy.mode = "shadow"` after its bake (refit_core.shadow.shadow_verdict): both variants' numbers on the same
    window, the tests, the prediction comparison, the verdict and what comes next (`promote` or `rollback`, the drop).
    Before the verdict the state holds `healthy` false and `next` null."""

    healthy: bool
    reason: str
    next: Literal["promote", "rollback", "synthetic"] | None = None
    synthetic_step: int | None = None  # next "synthetic": as in CanaryVerdict
    synthetic_requests: dict[str, int] | None = None
    quiet: bool = False
    synthetic: SyntheticTraffic | None = None
    sampling_percent: int | None = None
    copied_share: float | None = None  # the shadow's invocations over the champion's in the window
    window_start: str | None = None
    window_end: str | None = None
    challenger: VariantNumbers | None = None
    champion: VariantNumbers | None = None
    p_value_5xx: float | None = None
    p_value_4xx: float | None = None
    p99_latency_ratio: float | None = None
    p99_judged: bool | None = None
    p99_tail: dict[str, Any] | None = None  # refit_core.canary.p99_regression's test when the p99 is over the ratio
    alarm_state: str | None = None
    divergence: dict[str, Any] | None = None  # refit_core.divergence.prediction_divergence's result, as the canary's
    capture_problems: dict[str, int] = Field(default_factory=dict)


class CanaryShift(Step):
    """The traffic shift to the next canary step (UpdateEndpointWeightsAndCapacities on the same endpoint config)."""

    step: int
    weight: float
    expected_config: str


class Promotion(Step):
    expected_config: str
    requested_at: str | None = None  # when the UpdateEndpoint was made
    deregistered: list[str] = Field(default_factory=list)


class Rollback(Step):
    expected_config: str | None = None
    changed: bool = False
    deleted: bool = False
    requested_at: str | None = None
    deregistered: list[str] = Field(default_factory=list)


class Scaling(Step):
    """The Deploy action `scale`: the serving variant registered for autoscaling (refit_core.capacity)."""

    registered: bool
    variant: str | None = None
    resource_id: str | None = None
    min_instances: int | None = None
    max_instances: int | None = None
    target_invocations_per_instance: float | None = None
    policy_name: str | None = None
    policy_arn: str | None = None


# --- Start A/B (Pass) / JudgeAb -> $.ab (deploy.mode = "ab", refit_core.ab_test) --------------------------------------
class AbVariant(Step):
    """One variant's live primary metric over the A/B test (refit_core.live_metrics.metric_interval)."""

    captured_rows: int = 0
    labelled_rows: int = 0
    value: float | None = None
    lower: float | None = None
    upper: float | None = None
    reason: str | None = None  # why the metric is undefined (no rows, one class)


class AbVerdict(Step):
    """The A/B test so far: `next` is `wait` (another Wait of `wait_seconds`; `remaining_seconds` of the duration are
    left after it) until the duration has passed, then the decision, taken once: `promote` (result `won`) or
    `rollback` (`lost`, `undecided`, `too_few_labels`; `errors` at any check, when the challenger's error alarm is in
    ALARM; `harmed` at any check, when the canary's rules on the window so far fail: 5XX/4XX against the champion, p99
    ratio, prediction divergence, fixed ceilings), with both variants' metrics and the test's evidence."""

    next: Literal["wait", "promote", "rollback"]
    started_at: str
    remaining_seconds: int
    wait_seconds: int = 0
    checks: int = 0
    result: Literal["won", "lost", "undecided", "too_few_labels", "errors", "harmed"] | None = None
    reason: str | None = None
    metric: str | None = None
    test: str | None = None
    alpha: float | None = None
    min_effect: float | None = None
    min_labelled_rows: int | None = None
    difference: float | None = None  # challenger - champion
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None  # H0: the challenger is not better by more than min_effect
    p_value_worse: float | None = None  # H0: the challenger is not worse
    champion: AbVariant | None = None
    challenger: AbVariant | None = None
    decided_at: str | None = None
    guards: dict[str, Any] | None = None  # the last check's canary rules on the window since the split began


# --- RequestApproval (task token) / ExpireApproval -> $.approval ----------------------------------------------------
class ApprovalRequested(Step):
    """What RequestApproval returns; the state gets the decision sent with the task token (`ApprovalDecision`)."""

    requested: bool
    version: int


class ApprovalDecision(Step):
    """The decision `refit approve` / `reject` sends with the task token, or ExpireApproval's on timeout. `by` is the
    decider's STS ARN (`timeout` for ExpireApproval); `started_by` the run's recorded starter (None: no human started
    it, or the input named none); `separation_of_duties` whether the rule was enforced for this decision."""

    approved: bool
    by: str | None = None
    reason: str | None = None
    session: str | None = None  # the decider's assumed-role session name, when the decider is a role session
    decided_at: str | None = None
    started_by: str | None = None
    trigger: str | None = None
    separation_of_duties: bool | None = None


# --- Finalize -> $.final -------------------------------------------------------------------------------------------
class AuditKey(Step):
    pk: str
    sk: str


class FinalStep(Step):
    status: Literal["SUCCEEDED", "FAILED", "SKIPPED"]
    outcome: str
    message: str
    audit_key: AuditKey


# --- MlflowSync (`[mlflow]` only) -> $.mlflow_challenger (after Register), $.mlflow (after Finalize) ------------
class MlflowLogged(BaseModel):
    """What an MLflow step did (refit_handlers.mlflow_sync), or its Catch's error (Error, Cause)."""

    model_config = ConfigDict(extra="ignore")

    logged: bool = False
    error: str | None = None
    run_id: str | None = None
    model_version: str | None = None
    aliases: dict[str, str | None] | None = None
    Error: str | None = None
    Cause: str | None = None


# --- Catch / Pass -> $.error, $.restore_error, $.approval_timeout ---------------------------------------------------
class StepError(BaseModel):
    """A caught error as Step Functions writes it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    Error: str | None = None
    Cause: str | None = None


# --- the run state -------------------------------------------------------------------------------------------------
class CandidateCheck(Step):
    """The part of the check each parallel candidate's branch receives (the Map's ItemSelector)."""

    data_uri: str | None = None
    champion_model_uri: str | None = None
    champion_sha256: str | None = None
    train_columns: list[str] | None = None


class CandidateBranch(BaseModel):
    """The state inside one branch of the parallel candidates' Map, and what the branch ends with."""

    model_config = ConfigDict(extra="ignore")

    family: str | None = None
    run: RunInfo | None = None
    check: CandidateCheck | None = None
    training: TrainingStep | None = None
    error: StepError | None = None


class RunState(BaseModel):
    """The execution's accumulated state: whatever steps ran. Every section is optional (a run that failed at its first
    step still gets an audit record)."""

    model_config = ConfigDict(extra="ignore")

    input: Any = None  # the execution input as given (any JSON), put under `input` by the first state
    run: RunInfo | None = None
    check: CheckResult | None = None
    families: list[str] | None = None
    candidates: list[CandidateBranch] | None = None
    training: TrainingStep | None = None
    gate: GateStep | None = None
    registry: RegistryStep | None = None
    approval: ApprovalDecision | None = None
    approval_timeout: StepError | None = None
    deploy: DeployStarted | None = None
    redeploy: RedeployStarted | None = None
    endpoint: EndpointCheck | None = None
    canary: CanaryVerdict | None = None
    shadow: ShadowVerdict | None = None
    guardrails: GuardrailsCheck | None = None
    ab: AbVerdict | None = None
    shift: CanaryShift | None = None
    synthetic: SyntheticTraffic | None = None
    promotion: Promotion | None = None
    rollback: Rollback | None = None
    restore: Rollback | None = None
    scaling: Scaling | None = None
    restore_error: StepError | None = None
    error: StepError | None = None
    mlflow_challenger: MlflowLogged | None = None
    final: FinalStep | None = None
    # After Finalize (`[mlflow]`): what `Log to MLflow` returned, or its caught error; the record has them already.
    mlflow: MlflowLogged | None = None
    mlflow_error: StepError | None = None

    @classmethod
    def from_state(cls, state: Any) -> tuple[RunState, list[str]]:
        """Parse what the state machine passed, never raising: a section that does not fit its model is kept without
        its undeclared keys, or dropped if it is still invalid, and each such repair is returned as a problem."""
        if not isinstance(state, dict):
            return cls(), [f"the run state is not an object: {type(state).__name__}"]
        sections: dict[str, Any] = {}
        problems: list[str] = []
        for name, field in cls.model_fields.items():
            if name not in state or state[name] is None:
                continue
            value = state[name]
            single = _section_model(field.annotation)
            if isinstance(value, dict) and single is not None:
                unknown = sorted(set(value) - set(single.model_fields))
                if unknown and single.model_config.get("extra") == "forbid":
                    problems.append(f"state.{name}: undeclared keys ignored: {', '.join(unknown)}")
                    value = {k: v for k, v in value.items() if k not in unknown}
            try:
                sections[name] = TypeAdapter(field.annotation).validate_python(value)
            except ValidationError as error:
                where = "; ".join(
                    f"state.{'.'.join([name, *(str(p) for p in e['loc'])])}: {e['msg']}" for e in error.errors()
                )
                problems.append(f"{where} (section ignored)"[:1000])
        return cls(**sections), problems


def _section_model(annotation: Any) -> type[BaseModel] | None:
    for candidate in getattr(annotation, "__args__", ()) or (annotation,):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None
