"""Builds the CDK app from a configuration file; used by app.py, the tests and the local runtime."""

from __future__ import annotations

import hashlib
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


SOURCE_FOLDERS = ("functions", "training_container", "stacks")


def source_digest(root: Path) -> str:
    """A digest of the code that is deployed (the functions, the training image and the stacks): what identifies the
    code when there is no git checkout to ask (a source archive, a git that refuses the folder's owner)."""
    digest = hashlib.sha256()
    files = sorted(
        path
        for folder in SOURCE_FOLDERS
        for path in (root / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def code_version(root: Path) -> str:
    """What each model's lineage names as the code it was trained and gated by: the git commit the stack is
    synthesized from (`-dirty` with uncommitted changes), or `source-<digest>` of the deployed code outside a git
    checkout. Never a placeholder: lineage that cannot tell two deployments apart is no lineage."""
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
        return f"source-{source_digest(root)}"
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


# CloudFormation's limit on a template read from S3, where `cdk deploy` uploads it (cdk.out's file, byte for byte).
TEMPLATE_MAX_BYTES = 1_000_000


def template_too_large(stack: str, template: Path) -> str | None:
    """Why CloudFormation would refuse this stack's template for its size, or None. CDK itself refuses a stack of over
    500 resources at synth, not a template of over 1 MB: without this, a project of five models synthesized cleanly
    and failed at `cdk deploy`."""
    size = template.stat().st_size
    if size <= TEMPLATE_MAX_BYTES:
        return None
    return (
        f"stack {stack}: the template is {size:,} bytes; CloudFormation accepts at most {TEMPLATE_MAX_BYTES:,} "
        "(a model of the example's shape adds about 210 KB): put some models in another project (a refit.toml "
        "with another `project`)"
    )


def synthesize_app(config_path: str) -> None:
    """`python app.py`: build, synthesize, and refuse a template CloudFormation would refuse (exit 2, one line)."""
    assembly = build_app(config_path).synth()
    for stack in assembly.stacks:
        problem = template_too_large(stack.stack_name, Path(stack.template_full_path))
        if problem:
            print(f"refit: {problem}", file=sys.stderr)
            raise SystemExit(2)


def build_app(config_path: str, outdir: str | None = None) -> App:
    try:
        config = load_config(config_path)
    except ConfigError as error:
        print(f"refit: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    app = App(outdir=outdir, context=cdk_json_context()) if outdir else App(context=cdk_json_context())
    try:
        RefitStack(
            app,
            stack_name(config.project),
            config=config,
            code_version=code_version(REPO_ROOT),
            env=Environment(account=None, region=None),
            description="refit: keeps tabular SageMaker models fresh",
        )
    except ConfigError as error:  # a configuration only the stack can judge (e.g. stacks.guardrails)
        print(f"refit: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app
