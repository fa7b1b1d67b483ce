"""Builds the CDK app from a configuration file; used by app.py, the tests and the local runtime."""

from __future__ import annotations

import sys

from aws_cdk import App, Environment, Validations
from cdk_nag import AwsSolutionsChecks
from refit_core.config import ConfigError, load_config

from stacks.refit_stack import RefitStack

STACK_NAME = "Refit"


def build_app(config_path: str, outdir: str | None = None) -> App:
    try:
        config = load_config(config_path)
    except ConfigError as error:
        print(f"refit: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    app = App(outdir=outdir) if outdir else App()
    RefitStack(
        app,
        STACK_NAME,
        config=config,
        env=Environment(account=None, region=None),
        description="refit: keeps tabular SageMaker models fresh",
    )
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app
