"""`make demo`: the whole retraining loop on the embedded local AWS, from synthesis to a promoted canary.

1. synthesize the CDK app (the template `cdk deploy` would deploy) and stand it up in moto;
2. land the first batch under the new-data prefix: the S3 event trains and deploys the first model;
3. send traffic to the endpoint;
4. land a drifted batch: the S3 event starts a retrain; the challenger is gated against the champion on the
   same rows, registered, and shipped as a canary that takes traffic during its bake, then promoted;
5. land a batch without drift: the run ends "no drift";
6. production: traffic from a new market (a concept the model never saw) flows with an InferenceId per request and
   Data Capture records it; labels arrive (`refit feedback`); the monitor joins them, the live metric falls, and the
   quality alarm fires on its own; the run it starts retrains on the labelled traffic, gates, canaries and promotes
   the challenger; more traffic and labels show the live metric recover.
"""

from __future__ import annotations

import gc
import shutil
import sys
import time
from pathlib import Path

from scripts.local_aws.cloud_assembly import Synthesis

STARTED = time.monotonic()
ROOT = Path(__file__).resolve().parent.parent
WORKDIR = ROOT / ".refit-demo"


def start_synthesis() -> Synthesis:
    """A new demo directory (the last demo's assembly, job folders and logs would only pile up) and `python app.py`
    running in it, started before this module loads moto, pandas and refit: they load while the CDK app synthesizes."""
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir()
    return Synthesis(WORKDIR / "cdk.out")


SYNTHESIS = start_synthesis() if __name__ == "__main__" else None

import argparse  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from datetime import datetime  # noqa: E402

import pandas as pd  # noqa: E402

from scripts.cli import feedback_command  # noqa: E402
from scripts.local_aws.runtime import LocalRuntime  # noqa: E402
from scripts.sample_data import churn_batch, to_csv_bytes  # noqa: E402

MODEL = "churn"
# Requests during the canary's bake: the challenger (20%) needs 100 ModelLatency samples for its p99 to be judged
# (canary.min_latency_samples), and a quiet window is not promoted.
BAKE_REQUESTS = 700
POLL_STATES = {"Wait for training", "Poll training", "Training finished?"}


def say(message: str) -> None:
    print(message, flush=True)


class Phases:
    """Wall time per step of the demo, printed as a table at the end (where a slow machine spends its seconds)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - started

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def table(self) -> str:
        total = sum(self.seconds.values())
        width = max(len(name) for name in self.seconds)
        lines = [f"{'phase':<{width}}  seconds  share"]
        lines += [f"{name:<{width}}  {value:7.1f}  {value / total:5.0%}" for name, value in self.seconds.items()]
        lines.append(f"{'total':<{width}}  {total:7.1f}")
        return "\n".join(lines)


def since_start(aws: LocalRuntime, execution_arn: str) -> Callable[[dict], float]:
    """Seconds from an execution's start to a history event (the event's own timestamp, not when it was read)."""
    start: datetime = aws.client("stepfunctions").describe_execution(executionArn=execution_arn)["startDate"]
    return lambda event: (event["timestamp"] - start).total_seconds()


def send_traffic(aws: LocalRuntime, requests: int, seed: int, **market: float) -> dict[str, int]:
    """One-row requests from the market `market` describes (scripts.sample_data.churn_batch's shift, new_market)."""
    rows = churn_batch(requests, seed, **market).drop(columns=["churned"])
    served: dict[str, int] = {}
    for line in rows.to_csv(index=False, header=False).splitlines():
        variant = aws.invoke_endpoint(MODEL, line)["variant"]
        served[variant] = served.get(variant, 0) + 1
    return served


def run_and_report(aws: LocalRuntime, title: str, batch_name: str, body: bytes) -> dict:
    say(f"\n=== {title}: s3://{aws.data_bucket}/incoming/{MODEL}/{batch_name}")
    execution_arn = aws.land_batch(MODEL, batch_name, body)
    say(f"    S3 Object Created -> EventBridge -> execution {execution_arn.rsplit(':', 1)[-1]}")
    seen: set[str] = set()
    elapsed = since_start(aws, execution_arn)

    def entered(name: str, event: dict) -> None:
        if name in POLL_STATES and name in seen:
            return  # training is polled every minute on AWS; show the loop once
        seen.add(name)
        say(f"    [{elapsed(event):5.1f}s] {name}")

    aws.wait_for(execution_arn, timeout=600, on_state=entered)
    record = next(r for r in aws.audit_records(MODEL) if r["execution"] == execution_arn.rsplit(":", 1)[-1])
    summary(record)
    return record


def summary(record: dict) -> None:
    say(f"    --- {record['status']} / {record['outcome']}: {record['message']}")
    say(f"    why it ran : {record['trigger']} - {record['trigger_reason']}")
    if record.get("drift"):
        say(f"    drift      : detected={record['drift']['detected']} drifted={record['drift']['drifted_features']}")
        performance = record["drift"].get("performance")
        if performance:
            say(
                f"    serving    : {performance['metric']} {float(performance['current']):.4f} on this batch vs "
                f"{float(performance['baseline']):.4f} on its holdout; predictions drifted="
                f"{record['drift'].get('prediction_drifted')}"
            )
    gate = record.get("gate")
    if gate:
        champion = "none" if gate["champion"] is None else f"{float(gate['champion']):.4f}"
        say(f"    {gate['primary_metric']:<11}: challenger {float(gate['challenger']):.4f} vs champion {champion}")
        say(f"    decision   : {'promote' if gate['promote'] else 'keep champion'} - {gate['reason']}")
    if record.get("registry"):
        say(f"    registry   : version {record['registry']['version']} ({record['registry']['approval']})")
    training = record.get("training")
    if training:
        say(
            f"    cost       : job {training['job_name']} spot={training['spot']} "
            f"training={training['training_seconds']}s billable={training['billable_seconds']}s "
            f"savings={training['savings_percent']}% est=${training['estimated_cost_usd']}"
        )
    if record.get("canary"):
        canary = record["canary"]
        say(f"    canary     : healthy={canary['healthy']} invocations={canary['invocations']} - {canary['reason']}")
    if record.get("endpoint"):
        weights = {v["name"]: float(v["weight"]) for v in record["endpoint"]["variants"]}
        say(f"    endpoint   : {record['endpoint']['name']} {record['endpoint']['status']} weights={weights}")
    say(f"    audit id   : {record['pk']} / {record['sk']}")


ROWS_PER_REQUEST = 40


def production_traffic(aws: LocalRuntime, rows: int, seed: int, tag: str) -> pd.DataFrame:
    """Requests of 40 rows from the new market, each with an InferenceId; returns the rows with their join keys
    (`<InferenceId>:<row>`, README 'Ground truth'), as a label writer would know them."""
    frame = churn_batch(rows, seed, shift=1.0, new_market=0.4)
    keys: list[str] = []
    for start in range(0, rows, ROWS_PER_REQUEST):
        part = frame.iloc[start : start + ROWS_PER_REQUEST]
        inference_id = f"{tag}-{start // ROWS_PER_REQUEST:05d}"
        body = part.drop(columns=["churned"]).to_csv(index=False, header=False)
        aws.invoke_endpoint(MODEL, body, inference_id=inference_id)
        keys += [f"{inference_id}:{i}" for i in range(len(part))]
    aws.flush_capture()
    return frame.assign(inference_id=keys)


def send_labels(aws: LocalRuntime, frame: pd.DataFrame, name: str) -> None:
    """`refit feedback churn FILE`: validate the labels, check them against the captured requests, upload."""
    labels = WORKDIR / name
    frame[["inference_id", "churned"]].rename(columns={"churned": "label"}).to_csv(labels, index=False)
    arguments = argparse.Namespace(
        config=str(ROOT / "refit.toml"), model=MODEL, file=str(labels), data_bucket=aws.data_bucket, dry_run=False
    )
    summary = feedback_command(arguments)
    say(
        f"    refit feedback {MODEL} {name}: {summary['accepted']:,} labels, {summary['matched']:,} for captured "
        f"requests -> {summary['uploaded']}"
    )


def monitor(aws: LocalRuntime) -> dict:
    result = aws.run_monitor(MODEL)
    champion = result["variants"].get("champion", {})
    live, estimated = champion.get("live", {}), champion.get("estimated")
    if live.get("value") is not None:
        line = (
            f"    monitor    : live {live['metric']} {live['value']:.3f} ({live['confidence']:.0%} CI "
            f"{live['lower']:.3f}-{live['upper']:.3f}, n = {live['n']:,})"
        )
        say(line + (f"; estimated from the scores alone {estimated:.3f}" if estimated is not None else ""))
    say(f"    decision   : {result['decision']['reason']}")
    say(f"    report     : {result['report_html_uri']}")
    return result


def alarm_state(aws: LocalRuntime) -> str:
    name = aws.model(MODEL).quality_alarm
    alarm = aws.client("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"][0]
    return f"{name} is {alarm['StateValue']}"


def closed_loop(aws: LocalRuntime, phases: Phases, market: dict[str, float]) -> None:
    """Production traffic from a new market, labels, the alarm and its retrain; `market` is what the canary's bake
    sends, moved here to the new market (production_traffic's)."""
    market.update(shift=1.0, new_market=0.4)
    with phases("production traffic and labels"):
        say("\n=== Production: traffic from a new market, captured with an InferenceId per request")
        before = production_traffic(aws, 2000, seed=21, tag="week1")
        captured = aws.client("s3").list_objects_v2(Bucket=aws.data_bucket, Prefix=f"capture/{MODEL}/")["KeyCount"]
        say(f"    {len(before)} rows in {len(before) // ROWS_PER_REQUEST} requests; {captured} Data Capture file(s)")
        send_labels(aws, before, "labels-week1.csv")
    with phases("monitor, alarm fires"):
        runs_before = {e["executionArn"] for e in aws.executions(MODEL)}
        say("    the monitor's schedule fires:")
        monitor(aws)
        say(f"    alarm      : {alarm_state(aws)}")
        started = [e for e in aws.executions(MODEL) if e["executionArn"] not in runs_before]
    if not started:
        raise SystemExit("the quality alarm did not start a run")
    say("\n=== The run the quality alarm started")
    seen: set[str] = set()
    execution_arn = started[0]["executionArn"]
    elapsed = since_start(aws, execution_arn)

    def entered(name: str, event: dict) -> None:
        if name not in seen:
            seen.add(name)
            say(f"    [{elapsed(event):5.1f}s] {name}")

    with phases("alarm run: retrain on feedback, gate, canary, promote"):
        aws.wait_for(execution_arn, timeout=600, on_state=entered)
        summary(next(r for r in aws.audit_records(MODEL) if r["execution"] == execution_arn.rsplit(":", 1)[-1]))
    with phases("recovery: traffic, labels, monitor"):
        say("\n=== After the promotion: the same market, new labels")
        after = production_traffic(aws, 2000, seed=22, tag="week2")
        send_labels(aws, after, "labels-week2.csv")
        monitor(aws)
        say(f"    alarm      : {alarm_state(aws)}")


def main() -> int:
    phases = Phases()
    say("refit demo: synthesizing the CDK app (python app.py; moto, pandas and refit load meanwhile) ...")
    synthesis = SYNTHESIS or start_synthesis()
    phases.add("imports (moto, pandas, refit), synthesis running", time.monotonic() - STARTED)
    with phases("synthesis, the rest (python app.py)"):
        assembly = synthesis.wait()
    say(f"    synthesized in {time.monotonic() - STARTED:.1f}s; standing it up on the embedded local AWS (moto)")
    stand_up = time.monotonic()
    with LocalRuntime(assembly, WORKDIR / "runtime", spot_discount=0.7, seed=7) as aws:
        phases.add("stand up on moto", time.monotonic() - stand_up)
        say(
            f"    data bucket {aws.data_bucket}; {len(aws.stack.functions)} Lambdas; state machine "
            f"{aws.model(MODEL).state_machine_arn.rsplit(':', 1)[-1]}"
        )
        with phases("first batch: train, gate, deploy"):
            first = to_csv_bytes(churn_batch(2000, 1))
            run_and_report(aws, "First batch (no model serving yet)", "2026-11-01.csv", first)
        with phases("traffic to the champion"):
            say("\n=== Traffic to the champion")
            say(f"    served by: {send_traffic(aws, 50, seed=11)}")

        # A bake is judged on the traffic of its time: the market the latest batch came from (the closed loop moves it
        # to the new market before its alarm run).
        market = {"shift": 1.0}
        aws.on_wait(
            "Bake canary",
            lambda state, seconds: say(
                f"    (bake: {seconds}s on AWS; sending traffic now) served by: "
                f"{send_traffic(aws, BAKE_REQUESTS, 12, **market)}"
            ),
        )
        with phases("drifted batch: retrain, gate, canary, promote"):
            drifted = to_csv_bytes(churn_batch(2000, 2, shift=1.0))
            record = run_and_report(aws, "Drifted batch", "2026-11-15.csv", drifted)
            report_uri = (record.get("drift") or {}).get("report_uri")
            if report_uri:
                say(f"    drift report: {report_uri}")
        with phases("batch without drift"):
            steady = to_csv_bytes(churn_batch(2000, 3, shift=1.0))
            run_and_report(aws, "Batch without drift", "2026-11-22.csv", steady)
        closed_loop(aws, phases, market)
        say(
            f"\nSNS summaries published: {len(aws.published_summaries())}; "
            f"audit records: {len(aws.audit_records(MODEL))}"
        )
        shut_down = time.monotonic()
    phases.add("shut down (serve processes, capture flush)", time.monotonic() - shut_down)
    say(f"\nrefit demo finished in {time.monotonic() - STARTED:.1f}s wall time")
    say("\nwhere the time went:\n" + phases.table())
    return 0


if __name__ == "__main__":
    code = main()
    # Everything is written and every process stopped; what is left is the interpreter's teardown, whose collections
    # over moto's ~350,000 objects took 4-8 s after the demo had finished. Frozen objects are not collected.
    gc.freeze()
    sys.exit(code)
