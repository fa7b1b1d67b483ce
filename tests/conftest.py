"""Shared fixtures: the CDK app is synthesized once per test worker (python app.py with CDK_OUTDIR)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from refit_core.config import load_config
from refit_handlers.common import Settings

from scripts.local_aws.runtime import synthesize

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# Two xdist workers share the machine with the training processes the e2e tests start (one thread each): OpenMP
# threads in a worker's own scikit-learn fits oversubscribe the cores (a 3 s search test took 35 s). Set before
# anything here loads scikit-learn's OpenMP runtime.
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cloud_assembly(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("cdk") / "cdk.out")


@pytest.fixture(scope="session")
def two_models_assembly(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Project `other` with two models whose names prefix each other, churn and churn-eu (the whole churn section of
    refit.toml again under the longer name, with manual approval, so the template has an Approve function and its
    URL; separation of duties on), synthesized once per test worker."""
    text = (ROOT / "refit.toml").read_text()
    head, models = text.split("\n[[models]]", 1)
    assert 'project = "refit"' in head
    head = head.replace('project = "refit"', 'project = "other"\n\n[approval]\nseparation_of_duties = true\n')
    config = head + "\n[[models]]" + models
    manual = models.replace('name = "churn"', 'name = "churn-eu"\napproval = "manual"', 1)
    config += "\n[[models]]" + manual
    path = tmp_path_factory.mktemp("other") / "refit.toml"
    path.write_text(config)
    return synthesize(tmp_path_factory.mktemp("other-cdk") / "cdk.out", path)


GUARDRAILS_WAIT_SECONDS = 3
GUARDRAILS_SETTINGS = {
    "max_trials = 3": "max_trials = 1",
    "[models.monitor]": (
        '[models.deploy]\nmode = "guardrails"\n\n[models.deploy.guardrails]\ntraffic_routing = "ALL_AT_ONCE"\n'
        f"wait_interval_seconds = {GUARDRAILS_WAIT_SECONDS}\n\n[models.monitor]"
    ),
}


@pytest.fixture(scope="session")
def guardrails_assembly(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example model with deploy.mode guardrails (all at once, a bake of GUARDRAILS_WAIT_SECONDS) and one search
    trial, synthesized once per test worker."""
    config = config_variant(tmp_path_factory, "guardrails", GUARDRAILS_SETTINGS)
    return synthesize(tmp_path_factory.mktemp("cdk-guardrails") / "cdk.out", config)


def config_variant(tmp_path_factory: pytest.TempPathFactory, name: str, replacements: dict[str, str]) -> Path:
    """refit.toml with some settings changed, for a module that needs the example model configured otherwise."""
    text = (ROOT / "refit.toml").read_text()
    for old, new in replacements.items():
        assert old in text, f"refit.toml no longer contains {old!r}"
        text = text.replace(old, new)
    path = tmp_path_factory.mktemp(name) / "refit.toml"
    path.write_text(text)
    return path


def handler_settings(**model_updates: object) -> Settings:
    """Lambda settings for the example model (refit.toml) on buckets `data` / `art` and table `audit`."""
    config = load_config(ROOT / "refit.toml")
    return Settings(
        model=config.model("churn").model_copy(update=model_updates),
        data_bucket="data",
        artifact_bucket="art",
        audit_table="audit",
        topic_arn="t",
        endpoint_name="e",
        model_package_group="g",
        sagemaker_role_arn="arn:aws:iam::123456789012:role/r",
        image_uri="img:1",
        canary_alarm="a",
        instance_prices=config.instance_prices_usd_per_hour,
        code_version="c",
        kms_key_arn="arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000",
    )


def create_audit_table(dynamodb: object) -> None:
    """The audit table's key schema (pk = model, sk = run#<started>#<run id> | lock), as the stack creates it."""
    dynamodb.create_table(
        TableName="audit",
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
    )
