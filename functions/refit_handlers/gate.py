"""Gate the challenger against the champion on the same holdout rows, then register it with its evidence."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel
from refit_core.artifacts import archive_model_sha256
from refit_core.divergence import holdout_reference
from refit_core.gate import champion_expected, gate_training_outputs, read_predictions
from refit_core.lineage import LINEAGE_FORMAT
from refit_core.s3uri import S3Uri
from refit_core.steps import GateStep, RegistryStep
from refit_core.synthetic import HOLDOUT_ROWS_FILE, holdout_rows_key
from refit_core.training import inputs_manifest_key, read_training_outputs

from refit_handlers.common import Settings, client, parse, settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()


class GateEvent(BaseModel):
    run_id: str
    job_name: str
    output_path: str
    model_data_url: str
    has_champion: bool


class RegisterEvent(BaseModel):
    run_id: str
    trigger: str
    data_uri: str
    job_name: str
    model_data_url: str
    gate: GateStep
    evaluation_uri: str
    baseline_uri: str


def gate(event: GateEvent, config: Settings, s3: Any) -> GateStep:
    """The full decision (every guard and segment) goes to gate.json; the state carries its verdict and numbers."""
    model = config.model
    files = read_training_outputs(s3, event.output_path, event.job_name)
    decision, evaluation = gate_training_outputs(
        model,
        files["evaluation.json"],
        files["holdout_predictions.csv"],
        f"{event.output_path.rstrip('/')}/{event.job_name}/output",
        has_champion=event.has_champion,
    )
    decision = json.loads(json.dumps(decision, default=float))
    decision["all_metrics"] = evaluation["metrics"]
    decision["intervals"] = evaluation.get("intervals")
    if champion_expected(evaluation):
        # What the canary's prediction-divergence check compares live outputs against (refit_core.divergence).
        predictions = read_predictions(files["holdout_predictions.csv"], "holdout_predictions.csv")
        decision["divergence_reference"] = holdout_reference(
            predictions["champion"].to_numpy(dtype=float), predictions["challenger"].to_numpy(dtype=float), model.seed
        )
    run_prefix = S3Uri(config.artifact_bucket, f"reports/{model.name}/{event.run_id}")
    baseline = S3Uri(config.artifact_bucket, f"models/{model.name}/{event.run_id}/baseline.json")
    s3.put_object(Bucket=baseline.bucket, Key=baseline.key, Body=files["baseline.json"], ContentType="application/json")
    evaluation_uri = run_prefix.join("evaluation.json")
    s3.put_object(
        Bucket=evaluation_uri.bucket,
        Key=evaluation_uri.key,
        Body=files["evaluation.json"],
        ContentType="application/json",
    )
    if HOLDOUT_ROWS_FILE in files:  # deploy.synthetic_traffic: the rows a quiet step is topped up with
        replay = S3Uri(config.artifact_bucket, holdout_rows_key(model.name, event.run_id))
        s3.put_object(
            Bucket=replay.bucket, Key=replay.key, Body=files[HOLDOUT_ROWS_FILE], ContentType="application/jsonlines"
        )
    gate_uri = run_prefix.join("gate.json")
    s3.put_object(
        Bucket=gate_uri.bucket,
        Key=gate_uri.key,
        Body=json.dumps(decision, indent=1).encode(),
        ContentType="application/json",
    )
    return GateStep.of(decision, evaluation_uri=str(evaluation_uri), baseline_uri=str(baseline), gate_uri=str(gate_uri))


def image_digest(ecr: Any, image_uri: str) -> str:
    """The registry digest of the training/hosting image (the URI's tag is the CDK asset's content hash)."""
    repository_path, _, tag = image_uri.rpartition(":")
    repository = repository_path.split("/", 1)[1]
    images = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])["imageDetails"]
    return images[0]["imageDigest"]


def register(event: RegisterEvent, config: Settings, sagemaker: Any, s3: Any, ecr: Any) -> RegistryStep:
    """Every challenger is registered, approved, pending approval or rejected, with its lineage and the evidence."""
    model = config.model
    decision = event.gate.model_dump(mode="json")
    if event.gate.gate_uri:  # the full decision, every guard included (the state carries only the failed ones)
        gate_uri = S3Uri.parse(event.gate.gate_uri)
        decision = json.loads(s3.get_object(Bucket=gate_uri.bucket, Key=gate_uri.key)["Body"].read())
    if not event.gate.promote:
        approval = "Rejected"
    else:
        approval = "PendingManualApproval" if model.approval == "manual" else "Approved"
    manifest_key = inputs_manifest_key(model.name, event.run_id, event.job_name)
    manifest = json.loads(s3.get_object(Bucket=config.artifact_bucket, Key=manifest_key)["Body"].read())
    lineage_uri = S3Uri(config.artifact_bucket, f"models/{model.name}/{event.run_id}/lineage.json")
    # What every loader checks before unpickling the model (refit_core.artifacts); the registry is the record.
    artifact = S3Uri.parse(event.model_data_url)
    model_sha256 = archive_model_sha256(s3.get_object(Bucket=artifact.bucket, Key=artifact.key)["Body"])
    challenger = event.gate.challenger
    champion = event.gate.champion
    metadata = {
        "run_id": event.run_id,
        "trigger": event.trigger,
        "training_job": event.job_name,
        "training_data": event.data_uri,
        "lineage_uri": str(lineage_uri),
        "baseline_uri": event.baseline_uri,
        "evaluation_uri": event.evaluation_uri,
        "code_version": config.code_version,
        "primary_metric": model.primary_metric,
        "challenger_value": f"{challenger:.6f}" if challenger is not None else "",
        "champion_value": f"{champion:.6f}" if champion is not None else "",
        "gate_test": str(event.gate.test),
        "gate_p_value": str(event.gate.p_value),
        "model_sha256": model_sha256,
    }
    response = sagemaker.create_model_package(
        ModelPackageGroupName=config.model_package_group,
        ModelPackageDescription=event.gate.reason[:1000],
        ModelApprovalStatus=approval,
        InferenceSpecification={
            "Containers": [{"Image": config.image_uri, "ModelDataUrl": event.model_data_url}],
            "SupportedContentTypes": ["text/csv", "application/json"],
            "SupportedResponseMIMETypes": ["text/csv", "application/json"],
            "SupportedRealtimeInferenceInstanceTypes": [model.serving_instance_type],
        },
        ModelMetrics={
            "ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": event.evaluation_uri}}
        },
        CustomerMetadataProperties={k: v[:256] for k, v in metadata.items() if v},
    )
    arn = response["ModelPackageArn"]
    version = sagemaker.describe_model_package(ModelPackageName=arn).get("ModelPackageVersion")
    lineage = {
        "format": LINEAGE_FORMAT,
        "model": model.name,
        "version": version,
        "model_package_arn": arn,
        "approval": approval,
        "run_id": event.run_id,
        "trigger": event.trigger,
        "training_job": event.job_name,
        "model_data_url": event.model_data_url,
        "model_sha256": model_sha256,
        "inputs": manifest["inputs"],
        "window": manifest.get("window"),  # the training window resolved at run time (refit_core.window)
        "hyperparameters": json.loads(manifest["hyperparameters"]["config"]),
        "image_uri": manifest["image_uri"],
        "image_digest": image_digest(ecr, manifest["image_uri"]),
        "code_version": config.code_version,
        "baseline_uri": event.baseline_uri,
        "evaluation_uri": event.evaluation_uri,
        "metrics": event.gate.all_metrics,
        "gate": {
            k: decision.get(k)
            for k in (
                "promote",
                "reason",
                "test",
                "p_value",
                "challenger",
                "champion",
                "improvement",
                "ci_low",
                "ci_high",
                "required_improvement",
                "guards",
                "floors",
            )
        },
    }
    s3.put_object(
        Bucket=lineage_uri.bucket,
        Key=lineage_uri.key,
        Body=json.dumps(lineage, indent=1).encode(),
        ContentType="application/json",
    )
    return RegistryStep(model_package_arn=arn, version=version, approval=approval, lineage_uri=str(lineage_uri))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def gate_handler(event: dict, context: Any) -> dict:
    config = settings()
    decision = gate(parse(GateEvent, event), config, client("s3"))
    metrics.add_dimension(name="Model", value=config.model.name)
    metrics.add_metric(name="ChallengerPromoted", unit=MetricUnit.Count, value=int(decision.promote))
    logger.info("gate decided", extra={"promote": decision.promote, "reason": decision.reason})
    return decision.to_state()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def register_handler(event: dict, context: Any) -> dict:
    return register(
        parse(RegisterEvent, event), settings(), client("sagemaker"), client("s3"), client("ecr")
    ).to_state()
