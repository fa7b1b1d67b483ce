"""Shared fixtures: each shared CDK assembly is synthesized once per test session (tests/assemblies.py)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest
from refit_core.config import load_config
from refit_handlers.common import Settings

from tests import assemblies

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# Two xdist workers share the machine with the training processes the e2e tests start (one thread each): OpenMP
# threads in a worker's own scikit-learn fits oversubscribe the cores (a 3 s search test took 35 s). Set before
# anything here loads scikit-learn's OpenMP runtime.
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under xdist, the controller starts every shared synthesis at once (tests/assemblies.py): the workers run unit
    tests while they synthesize, and wait only if they need one before it is done."""
    config = session.config
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    if config.args and all("unit" in arg for arg in config.args):
        return  # a unit-test run needs no assembly
    # pytest's private `_tmp_path_factory`, on purpose: no public API serves here. The controller runs no fixtures, so
    # the `tmp_path_factory` fixture never exists in it, and pytest exposes the session's base temp to hooks only
    # through this attribute. The folder must be the one xdist makes each worker's base temp in (a worker reads it back
    # as `tmp_path_factory.getbasetemp().parent`, assemblies.session_root), and xdist computes that from this same
    # attribute (xdist/workermanage.py: `config._tmp_path_factory.getbasetemp() / "popen-gwN"`). A public substitute (a
    # folder of our own handed to the workers through xdist's pytest_configure_node) would re-implement pytest's
    # --basetemp and its retention of old runs' folders. A pytest without the attribute fails here, at session start.
    root = config._tmp_path_factory.getbasetemp()
    for name in assemblies.SHARED:
        assemblies.start(root, name)


# The longest modules first. With --dist loadfile a worker runs a whole module, in collection order; the longest
# (the staged canary's bakes, about 7 minutes) started last would leave the other worker idle at the end.
LONGEST_MODULES = (
    "tests/e2e/test_guardrails_mode.py",
    "tests/e2e/test_staged_canary.py",
    "tests/e2e/test_ab_test.py",
    "tests/e2e/test_batch_queue.py",
    "tests/e2e/test_retrain_loop.py",
    "tests/e2e/test_closed_loop.py",
    "tests/e2e/test_shadow_deploy.py",
    "tests/e2e/test_local_up_with_aws_cli.py",
    "tests/e2e/test_manual_approval_and_lineage.py",
    "tests/e2e/test_airflow_dag.py",
    "tests/e2e/test_mlflow.py",
)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {module: position for position, module in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: order kept within


def shared_assembly(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    return assemblies.assembly(assemblies.session_root(tmp_path_factory.getbasetemp()), name)


@pytest.fixture(scope="session")
def cloud_assembly(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """refit.toml as it is."""
    return shared_assembly(tmp_path_factory, "default")


@pytest.fixture(scope="session")
def two_models_assembly(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Project `other` with two models whose names prefix each other, churn and churn-eu (manual approval)."""
    return shared_assembly(tmp_path_factory, "two-models")


@pytest.fixture(scope="session")
def modes_assembly(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model per deploy-mode module (assemblies.MODES_MODELS): staged, shadow, guard."""
    return shared_assembly(tmp_path_factory, "modes")


@pytest.fixture(scope="session")
def runs_assembly(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """assemblies.RUNS_MODELS: abtest, capacity, manual (the project's approval settings)."""
    return shared_assembly(tmp_path_factory, "runs")


@pytest.fixture(scope="session")
def runs_config(runs_assembly: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The configuration file runs_assembly was synthesized from (for the CLI)."""
    return assemblies.config_path(assemblies.session_root(tmp_path_factory.getbasetemp()), "runs")


@pytest.fixture(scope="session")
def training_assembly(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """assemblies.TRAINING_MODELS: parallel, hygiene, window."""
    return shared_assembly(tmp_path_factory, "training")


def config_variant(tmp_path_factory: pytest.TempPathFactory, name: str, replacements: dict[str, str]) -> Path:
    """refit.toml with some settings changed, for a module that needs the example model configured otherwise."""
    text = (ROOT / "refit.toml").read_text()
    for old, new in replacements.items():
        assert old in text, f"refit.toml no longer contains {old!r}"
        text = text.replace(old, new)
    path = tmp_path_factory.mktemp(name) / "refit.toml"
    path.write_text(text)
    return path


def import_or_skip(module: str, reason: str) -> ModuleType:
    """pytest.importorskip, except under CI (CI set), where a missing optional dependency fails instead: `make test`
    installs every extra, so a skip there would hide a broken install."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=reason)


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
