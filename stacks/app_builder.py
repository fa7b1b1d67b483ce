"""Builds the CDK app from a configuration file; used by app.py, the tests and the local runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from aws_cdk import App, Environment, Validations
from cdk_nag import AwsSolutionsChecks
from refit_core.config import ConfigError, load_config
from refit_core.names import stack_name

from stacks.refit_stack import RefitStack


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


def build_app(config_path: str, outdir: str | None = None) -> App:
    try:
        config = load_config(config_path)
    except ConfigError as error:
        print(f"refit: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    app = App(outdir=outdir) if outdir else App()
    RefitStack(
        app,
        stack_name(config.project),
        config=config,
        env=Environment(account=None, region=None),
        description="refit: keeps tabular SageMaker models fresh",
    )
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app
