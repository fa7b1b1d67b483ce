"""Builds the CDK app from a configuration file; used by app.py, the tests and the local runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from aws_cdk import App, Environment, Validations
from cdk_nag import AwsSolutionsChecks
from refit_core.config import ConfigError, load_config
from refit_core.names import stack_name

from stacks.refit_stack import RefitStack

REPO_ROOT = Path(__file__).resolve().parent.parent


def code_version(root: Path) -> str:
    """The git commit the stack is synthesized from (`-dirty` with uncommitted changes); recorded in each model's
    lineage. Outside a git checkout: 'unknown'."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def cdk_json_context(root: Path = REPO_ROOT) -> dict:
    """What the CDK CLI hands the app (CDK_CONTEXT_JSON) when it runs cdk.json's "app": the context (feature flags)
    and the CLI settings that shape the template (version reporting, path and asset metadata, both on unless cdk.json
    turns them off). A plain `python app.py` (the tests, the local runtime) applies the same, so it synthesizes the
    template `cdk synth` / `cdk deploy` do (before, it skipped the flags: 98 IAM statements against the CLI's 72)."""
    settings = json.loads((root / "cdk.json").read_text())
    return {
        **settings.get("context", {}),
        "aws:cdk:version-reporting": settings.get("versionReporting", True),
        "aws:cdk:enable-path-metadata": settings.get("pathMetadata", True),
        "aws:cdk:enable-asset-metadata": settings.get("assetMetadata", True),
    }


def build_app(config_path: str, outdir: str | None = None) -> App:
    try:
        config = load_config(config_path)
    except ConfigError as error:
        print(f"refit: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    app = App(outdir=outdir, context=cdk_json_context()) if outdir else App(context=cdk_json_context())
    RefitStack(
        app,
        stack_name(config.project),
        config=config,
        env=Environment(account=None, region=None),
        description="refit: keeps tabular SageMaker models fresh",
    )
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app
