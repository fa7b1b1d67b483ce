"""Helpers the end-to-end modules share: faulty challengers written over a run's model artifact, traffic during bakes,
and separate CloudWatch windows between runs."""

from __future__ import annotations

import io
import json
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import joblib
from botocore.exceptions import ClientError
from refit_core.artifacts import METADATA_FILE, MODEL_FILE
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from scripts.sample_data import churn_batch

SLOW_SECONDS = 0.4
TAIL_EVERY = 10  # "slow_tail": one request in this many is slow
# "slow_tenth": a few requests, each slow enough to dwarf a loaded machine's p99 (a champion p99 of 345 ms was seen
# at a load of 16 on two cores, against which a 1 s shadow was not 3 x slower)
TAIL_SLOW_SECONDS = 1.5


class _Evaluated:
    """Pickles as `eval(source)`: a function the serve process can load without importing this test module."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self):
        return (eval, (self.source,))

    def __call__(self, frame):
        return frame


FAULTS = {
    "5xx": "lambda frame: 1 // 0",  # not a ValueError/TypeError: serve answers 500
    "slow": f"lambda frame: (__import__('time').sleep({SLOW_SECONDS}), frame)[1]",
    # Slow on one request in TAIL_EVERY (a counter per serve process): the p99 regresses, the mean barely moves.
    "slow_tail": f"lambda frame, calls=__import__('itertools').count(): (__import__('time').sleep({SLOW_SECONDS}) "
    f"if next(calls) % {TAIL_EVERY} == 0 else None, frame)[1]",
    # Slow on one request in ten (a counter per serve process), TAIL_SLOW_SECONDS each: the p99 regresses and, at 10 of
    # a bake's 100 requests, significantly more of them are over the margin than the champion's (the p99 rule's
    # Fisher test at a shadow's alpha 0.01 needs more than the 5 that a ratio alone would have taken); the mean stays low.
    "slow_tenth": f"lambda frame, calls=__import__('itertools').count(): (__import__('time').sleep({TAIL_SLOW_SECONDS}) "
    "if next(calls) % 10 == 0 else None, frame)[1]",
    # Twice as slow: where the champion's p99 is judged on another window than the challenger's (deploy.mode guardrails)
    # and a busy machine's tail differs between the two.
    "slower": f"lambda frame: (__import__('time').sleep({2 * SLOW_SECONDS}), frame)[1]",
    # A feature-pipeline bug: tenure read in years. Answers without errors or delay, but not as the model did offline.
    "diverge": "lambda frame: frame.assign(tenure_months=frame['tenure_months'] / 12)",
}


def wrap_challenger(aws, fault: str, scratch: Path, artifact: str) -> None:
    """Rewrite the challenger's model.tar.gz with its pipeline behind a faulty first step."""
    bucket, key = artifact.removeprefix("s3://").split("/", 1)
    s3 = aws.client("s3")
    directory = scratch / fault
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()), mode="r:gz") as tar:
        tar.extractall(directory, filter="data")
    features = json.loads((directory / METADATA_FILE).read_text())["features"]
    sample = churn_batch(50, 1)[features]
    step = FunctionTransformer(func=_Evaluated(FAULTS[fault])).fit(sample)
    joblib.dump(Pipeline([("fault", step), ("model", joblib.load(directory / MODEL_FILE))]), directory / MODEL_FILE)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(directory.iterdir()):
            tar.add(path, arcname=path.name)
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())


class FaultAfterTraining:
    """A "Wait for training" hook: waits for the run's training job to end, then wraps its model artifact once."""

    def __init__(self, aws, fault: str, scratch: Path) -> None:
        self.aws, self.fault, self.scratch, self.done = aws, fault, scratch, False

    def __call__(self, state: str, seconds: int) -> None:
        if self.done:
            return
        sagemaker = self.aws.client("sagemaker")
        jobs = sagemaker.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]
        name = max(jobs, key=lambda job: job["CreationTime"])["TrainingJobName"]  # this run's, just started
        deadline = time.monotonic() + 300
        while (described := sagemaker.describe_training_job(TrainingJobName=name))["TrainingJobStatus"] == "InProgress":
            assert time.monotonic() < deadline, f"training job {name} did not end"
            time.sleep(0.2)
        if described["TrainingJobStatus"] == "Completed":
            wrap_challenger(self.aws, self.fault, self.scratch, described["ModelArtifacts"]["S3ModelArtifacts"])
            self.done = True


class Traffic:
    """Requests during each bake; with `fault`, the challenger is wrapped when its training ends (run_with)."""

    def __init__(
        self,
        aws,
        model: str,
        per_bake: int,
        fault: str | None = None,
        scratch: Path | None = None,
        clients: int = 4,
    ) -> None:
        """`clients` concurrent callers; one where latency is judged against a limit, as a local serve process has a
        single worker and concurrent requests would queue in front of a slow challenger."""
        self.aws, self.model, self.per_bake, self.fault, self.scratch = aws, model, per_bake, fault, scratch
        self.clients = clients
        self.bakes = 0
        self.variants: dict[str, int] = {}
        self.errors = 0
        self.last_request = datetime.now(UTC)

    def __call__(self, state: str, seconds: int) -> None:
        self.bakes += 1
        rows = churn_batch(self.per_bake, 100 + self.bakes, shift=1.0).drop(columns=["churned"])
        with ThreadPoolExecutor(self.clients) as clients:
            answered = list(clients.map(self._invoke, rows.to_csv(index=False, header=False).splitlines()))
        for variant in answered:
            if variant is None:
                self.errors += 1
            else:
                self.variants[variant] = self.variants.get(variant, 0) + 1
        self.aws.flush_capture()  # what the bake served is in S3 when the step is judged
        self.last_request = datetime.now(UTC)

    def _invoke(self, line: str) -> str | None:
        try:
            return self.aws.invoke_endpoint(self.model, line)["variant"]
        except ClientError:
            return None


LAST_TRAFFIC = {"at": datetime.now(UTC)}


def separate_windows(state: str, seconds: int) -> None:
    """CloudWatch windows start on a whole minute (a recent StartTime is rounded down) and the variant names are fixed:
    before a canary starts, let the minute of the previous run's last request pass, so its requests are not counted
    in this run's window (on AWS runs are minutes apart; here they are seconds)."""
    boundary = LAST_TRAFFIC["at"].replace(second=0, microsecond=0) + timedelta(minutes=1, seconds=1)
    time.sleep(max(0.0, (boundary - datetime.now(UTC)).total_seconds()))


def alarm_state(aws, alarm: str, expected: str, timeout: float = 5.0) -> str:
    """The alarm's state, read until it is `expected` or `timeout` s pass. The runtime puts an execution's AWS/States
    metrics (which the alarms on them are evaluated from) right after the execution's status is set, so a caller that
    has just seen a run end may read the alarm a moment before that."""
    cloudwatch, until = aws.client("cloudwatch"), time.monotonic() + timeout
    while True:
        state = cloudwatch.describe_alarms(AlarmNames=[alarm])["MetricAlarms"][0]["StateValue"]
        if state == expected or time.monotonic() > until:
            return state
        time.sleep(0.05)
