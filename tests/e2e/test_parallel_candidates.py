"""`search.parallel_jobs`: one training job per family at once (a Step Functions Map), the best cross-validated
candidate goes to the gate, and the run pays for — and records — every job. The tests share one runtime and run in
order: the first lands the batch the later forced runs train on."""

from __future__ import annotations

import json

import pytest

from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes

MODEL = "parallel"  # hgb and linear as parallel training jobs, one trial each (tests/assemblies.py)


@pytest.fixture(scope="module")
def aws(training_assembly, tmp_path_factory):
    with LocalRuntime(
        training_assembly, tmp_path_factory.mktemp("runtime-parallel"), spot_discount=0.7, seed=11
    ) as runtime:
        yield runtime


def test_the_parallel_template_has_a_map_of_training_jobs(training_assembly):
    """(cdk-nag and cfn-lint on this project: tests/infrastructure/test_stack.py.)"""
    template = json.loads((training_assembly / "refit.template.json").read_text())
    machine = next(
        r
        for logical, r in template["Resources"].items()
        if r["Type"] == "AWS::StepFunctions::StateMachine" and logical.startswith(f"Model{MODEL}RetrainStateMachine")
    )
    definition = json.dumps(machine["Properties"]["DefinitionString"])
    assert '\\"Train candidates\\":{\\"Type\\":\\"Map\\"' in definition and "Pick best candidate" in definition


def record_for(aws, execution_arn):
    return next(r for r in aws.audit_records(MODEL) if r["execution"] == execution_arn.rsplit(":", 1)[-1])


def cv_score(aws, job_name):
    """The best cross-validated score the job reported, read from its own evaluation.json."""
    from refit_core.training import best_cv_score, read_training_outputs

    job = aws.client("sagemaker").describe_training_job(TrainingJobName=job_name)
    files = read_training_outputs(aws.client("s3"), job["OutputDataConfig"]["S3OutputPath"], job_name)
    return best_cv_score(json.loads(files["evaluation.json"]))


def test_each_family_trains_as_its_own_job_and_the_best_cv_score_is_gated(aws):
    execution = aws.wait_for(aws.land_batch(MODEL, "first.csv", to_csv_bytes(churn_batch(3000, 1))))
    assert execution["status"] == "SUCCEEDED"
    record = record_for(aws, execution["executionArn"])
    assert record["outcome"] == "deployed_first"
    training = record["training"]
    jobs = {c["family"]: c["job_name"] for c in training["candidates"]}
    assert set(jobs) == {"hgb", "linear"} and all(jobs[f].endswith(f"-{f}-s1") for f in jobs)
    scores = {family: cv_score(aws, job) for family, job in jobs.items()}
    assert {c["family"]: float(c["cv_score"]) for c in training["candidates"]} == pytest.approx(scores)
    best = max(scores, key=scores.get)  # roc_auc: higher is better
    assert training["chosen"] == best and training["job_name"] == jobs[best]
    costs = [float(c["estimated_cost_usd"]) for c in training["candidates"]]
    assert all(cost > 0 for cost in costs)
    assert float(training["estimated_cost_usd"]) == pytest.approx(sum(costs), abs=1e-6)
    # Each job searched its own family only, with its own checkpoints.
    for family, job_name in jobs.items():
        job = aws.client("sagemaker").describe_training_job(TrainingJobName=job_name)
        channel = next(c for c in job["InputDataConfig"] if c["ChannelName"] == "config")
        bucket, prefix = channel["DataSource"]["S3DataSource"]["S3Uri"].removeprefix("s3://").split("/", 1)
        settings = aws.client("s3").get_object(Bucket=bucket, Key=f"{prefix}config.json")["Body"].read()
        assert json.loads(settings)["families"] == [family]
        assert job["CheckpointConfig"]["S3Uri"].endswith(f"/{record['run_id']}/{family}/")
    # The registered, serving model is the chosen job's artifact.
    packages = aws.client("sagemaker").list_model_packages(ModelPackageGroupName=aws.model(MODEL).package_group)
    package = aws.client("sagemaker").describe_model_package(
        ModelPackageName=packages["ModelPackageSummaryList"][0]["ModelPackageArn"]
    )
    model_url = package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
    assert f"/{jobs[best]}/" in model_url
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}
    assert f"candidate {best}:" in aws.published_summaries()[-1]["message"]


def test_a_failed_candidate_leaves_the_other_to_be_gated(aws):
    aws.next_training_outcome("internal_error", "InternalServerError: the instance failed")
    execution = aws.wait_for(aws.start_run(MODEL, {"force": True, "reason": "one candidate fails"}))
    record = record_for(aws, execution["executionArn"])
    statuses = {c["family"]: c["status"] for c in record["training"]["candidates"]}
    assert sorted(statuses.values()) == ["Completed", "Failed"]
    survivor = next(family for family, status in statuses.items() if status == "Completed")
    assert record["training"]["chosen"] == survivor
    assert record["gate"] is not None and record["gate"]["reason"]
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}


def test_a_candidate_without_spot_capacity_falls_back_and_resumes_its_own_checkpoints(aws):
    aws.next_training_outcome("capacity", after_folds=1)  # whichever candidate's job starts first
    execution = aws.wait_for(aws.start_run(MODEL, {"force": True, "reason": "spot capacity runs out"}))
    record = record_for(aws, execution["executionArn"])
    assert execution["status"] == "SUCCEEDED", record["message"]
    jobs = {c["family"]: c["job_name"] for c in record["training"]["candidates"]}
    fell_back = [family for family, job in jobs.items() if job.endswith(f"-{family}-od2")]
    assert len(fell_back) == 1 and all(jobs[f].endswith(f"-{f}-s1") for f in jobs if f not in fell_back)
    for family in jobs:
        key = f"checkpoints/{MODEL}/{record['run_id']}/{family}/events.jsonl"
        body = aws.client("s3").get_object(Bucket=aws.artifact_bucket, Key=key)["Body"].read().decode()
        events = [json.loads(line) for line in body.splitlines()]
        done = [e["key"] for e in events if e["event"] == "fold_done"]
        assert len(done) == len(set(done)) == 3 and all(fold.startswith(f"{family}:") for fold in done)
        resumed = [e["finished"] for e in events if e["event"] == "resumed"]
        assert (len(resumed) == 1 and 1 <= len(resumed[0]) < 3) if family in fell_back else resumed == []
