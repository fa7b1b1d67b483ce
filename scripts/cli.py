"""The `refit` command. Data checks run the same code as the Lambdas; registry commands work against AWS (default
credentials) or the local runtime (inside its mock).

    refit profile DATA [--target COL] [--categorical COL ...] -o baseline.json
    refit drift (--baseline baseline.json | REFERENCE) CURRENT [--model NAME] [--target COL] [--json]
    refit quality (--baseline baseline.json | REFERENCE) CURRENT [--model NAME] [--json]
    refit gate EVALUATION_DIR --model NAME            (evaluation.json + holdout_predictions.csv of a training job)
    refit approve MODEL VERSION [--comment TEXT]      (a run waiting for manual approval continues: the model's Approve
    refit reject MODEL VERSION [--comment TEXT]        function decides as the caller AWS verified; run_commands.py)
    refit lineage MODEL [VERSION]
    refit diff MODEL V1 V2
    refit land MODEL FILE | trigger MODEL | runs MODEL | show RUN_ID | status MODEL   (scripts/run_commands.py)
    refit rollback MODEL [--to VERSION] | promote MODEL VERSION   (serve a registered version again, as a run)
    refit feedback MODEL FILE [--dry-run] [--json]    (validate a ground-truth label file and upload it)
    refit report RUN_ID [-o run.html] [--json]        (one self-contained HTML page of a run; exit 2: no such run)
    refit local up [--port 4566] [--workdir DIR] [--assembly cdk.out]   (the stack on a local AWS server until Ctrl-C)
    refit grafana MODEL [-o dashboard.json]           (a Grafana dashboard over CloudWatch; the `grafana` extra)

drift and quality use the settings (and, for a REFERENCE, the column roles) of the model named by --model, or of
the configuration's only model, as the run's CheckBatch does. --config goes before or after the command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
from botocore.exceptions import BotoCoreError, ClientError
from refit_core.batch import BatchStats
from refit_core.capture import captured_keys, list_capture_objects
from refit_core.config import ConfigError, ModelConfig, load_config
from refit_core.datasets import DataError, iter_parts, read_table
from refit_core.drift import detect_drift
from refit_core.gate import GateInputError, gate_training_outputs
from refit_core.ground_truth import ground_truth_key, read_labels
from refit_core.lineage import diff
from refit_core.profile import ProfileError, build_profile, categorical_columns, dumps_profile, loads_profile
from refit_core.quality import check_quality
from refit_core.report import render_html
from refit_core.s3uri import S3Uri, is_s3_uri

from scripts import run_commands
from scripts.run_report import ReportError, report_command
from scripts.run_report import add_parser as add_report_parser

DEFAULT_CONFIG = os.environ.get("REFIT_CONFIG", str(Path(__file__).resolve().parent.parent / "refit.toml"))


class CliError(Exception):
    """A problem the user can fix; printed as one line on stderr."""


def _read(location: str) -> pd.DataFrame:
    return read_table(location, boto3.client("s3") if is_s3_uri(location) else None)


def _read_bytes(location: str) -> bytes:
    if is_s3_uri(location):
        uri = S3Uri.parse(location)
        try:
            return boto3.client("s3").get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read()
        except ClientError as error:
            raise CliError(f"{location}: cannot read ({error.response['Error'].get('Code')})") from None
    try:
        return Path(location).read_bytes()
    except OSError as error:
        raise CliError(f"{location}: cannot read ({error.strerror})") from None


def _checked_model(args: argparse.Namespace) -> ModelConfig:
    """The model whose checks `drift` / `quality` apply: --model, or the configuration's only model."""
    config = load_config(args.config)
    if args.model:
        return config.model(args.model)
    if len(config.models) > 1:
        names = ", ".join(m.name for m in config.models)
        raise CliError(f"{args.config} configures several models ({names}): pass --model NAME")
    return config.models[0]


def _baseline(args: argparse.Namespace, model: ModelConfig) -> dict:
    """The stored baseline, or a profile of REFERENCE built with the model's column roles, as training builds it."""
    if args.baseline:
        return loads_profile(_read_bytes(args.baseline), args.baseline)
    target = args.target or model.target
    categorical = (
        list(args.categorical)
        if args.categorical is not None
        else categorical_columns(model.categorical_columns, target, model.problem_type)
    )
    return build_profile(_read(args.reference), target=target, categorical=categorical, id_column=model.id_column)


class FeedbackRefused(CliError):
    """A label file that cannot be read at all or holds no valid label: nothing is uploaded (exit code 2)."""

    def __init__(self, message: str, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.summary = summary


def feedback_command(args: argparse.Namespace, now: datetime | None = None) -> dict[str, Any]:
    """Validate a label file (refit_core.ground_truth), check its keys against the requests Data Capture recorded in
    the last `monitor.window_hours`, and upload it unchanged under the model's ground-truth prefix (bad lines
    included: the monitor counts them again). Raises FeedbackRefused for an unreadable file or one without a valid
    label; the summary says what was found either way."""
    config = load_config(args.config)
    model = config.model(args.model)
    now = now or datetime.now(UTC)
    try:
        data = _read_bytes(args.file)
    except CliError as error:
        raise FeedbackRefused(str(error)) from None
    name = S3Uri.parse(args.file).key.rsplit("/", 1)[-1] if is_s3_uri(args.file) else Path(args.file).name
    labels = read_labels(data.splitlines(), source=name, problem_type=model.problem_type, label_time=now)
    # --data-bucket, else the stack's (or $REFIT_STACK_OUTPUTS') output: the one place that finds the resources
    bucket = run_commands.Resources.from_args(args, config).data_bucket
    s3 = boto3.client("s3")
    wanted, found = set(labels.frame["key"]), set()
    files = records = 0
    capture_problems: dict[str, int] = {}
    try:
        since = now - timedelta(hours=model.monitor.window_hours)
        for item in list_capture_objects(s3, bucket, model.capture_prefix, since):
            body = s3.get_object(Bucket=bucket, Key=item.key)["Body"]
            keys = captured_keys(body.iter_lines(), source=f"s3://{bucket}/{item.key}", problem_type=model.problem_type)
            found.update(wanted.intersection(keys.keys))
            files, records = files + 1, records + keys.records
            for kind, count in keys.problems.items():
                capture_problems[kind] = capture_problems.get(kind, 0) + count
    except ClientError as error:
        raise CliError(f"cannot read captures in s3://{bucket}/{model.capture_prefix} ({error})") from None
    unknown = [key for key in labels.frame["key"] if key not in found]
    problems = {**labels.problems, "unknown_id": len(unknown)}
    examples = {kind: list(messages) for kind, messages in labels.examples_by_kind.items()}
    if unknown:
        examples["unknown_id"] = [f"{name}: {key!r} was not captured in the last window" for key in unknown[:3]]
    summary: dict[str, Any] = {
        "model": model.name,
        "file": args.file,
        "rows": labels.rows,
        "accepted": len(labels.frame),
        "matched": len(labels.frame) - len(unknown),
        "problems": problems,
        "examples": examples,
        "captured": {
            "bucket": bucket,
            "prefix": model.capture_prefix,
            "window_hours": model.monitor.window_hours,
            "capture_percent": model.monitor.capture_percent,
            "files": files,
            "records": records,
            "problems": {kind: count for kind, count in capture_problems.items() if count},
        },
        "uploaded": None,
        "dry_run": bool(args.dry_run),
    }
    if labels.frame.empty:
        raise FeedbackRefused(f"{args.file}: no valid label; nothing uploaded", summary)
    if not args.dry_run:
        # A unique name: a second upload of the same file name in the same hour must not replace the first.
        stem, dot, suffix = name.partition(".")
        unique = f"{stem}-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}{dot}{suffix}"
        key = ground_truth_key(model.ground_truth_prefix, unique, now)
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=data)
        except ClientError as error:
            raise CliError(f"cannot upload to s3://{bucket}/{key} ({error})") from None
        summary["uploaded"] = f"s3://{bucket}/{key}"
    return summary


def render_feedback(summary: dict[str, Any]) -> str:
    """The one-screen text form of `refit feedback`'s summary."""
    captured = summary["captured"]
    lines = [
        f"refit feedback {summary['model']} {summary['file']}",
        f"  rows read        {summary['rows']:>9,}",
        f"  labels accepted  {summary['accepted']:>9,}  ({summary['matched']:,} for captured requests)",
    ]
    for kind, count in summary["problems"].items():
        if count:
            lines.append(f"  {kind:<16} {count:>9,}")
            lines.extend(f"      {example}" for example in summary["examples"].get(kind, []))
    if summary["problems"].get("unknown_id") and captured["capture_percent"] < 100:
        lines.append(
            f"      (Data Capture records {captured['capture_percent']}% of requests: the rest have no capture)"
        )
    lines.append(
        f"  checked against  {captured['records']:,} captured records in {captured['files']:,} files of the last "
        f"{captured['window_hours']:g} h (s3://{captured['bucket']}/{captured['prefix']})"
    )
    if captured["problems"]:
        lines.append(f"  capture problems {', '.join(f'{k} {v:,}' for k, v in captured['problems'].items())}")
    if summary["uploaded"]:
        lines.append(f"uploaded {summary['uploaded']}")
    elif summary["dry_run"]:
        lines.append("dry run: nothing uploaded")
    return "\n".join(lines)


def _package_group(args: argparse.Namespace) -> str:
    config = load_config(args.config)
    config.model(args.model)
    return config.prefix(args.model)


def _lineage(sagemaker: Any, group: str, version: int | None) -> dict[str, Any]:
    packages = sagemaker.list_model_packages(
        ModelPackageGroupName=group, SortBy="CreationTime", SortOrder="Descending", MaxResults=100
    )["ModelPackageSummaryList"]
    if version is not None:
        packages = [p for p in packages if p.get("ModelPackageVersion") == version]
    if not packages:
        raise CliError(f"no version {version} in model package group {group}" if version else f"{group} is empty")
    package = sagemaker.describe_model_package(ModelPackageName=packages[0]["ModelPackageArn"])
    metadata = package.get("CustomerMetadataProperties", {})
    if "lineage_uri" not in metadata:
        raise CliError(f"{package['ModelPackageArn']} has no lineage_uri (not registered by refit)")
    lineage = json.loads(_read_bytes(metadata["lineage_uri"]))
    lineage["approval"] = package.get("ModelApprovalStatus")
    lineage["approval_description"] = package.get("ApprovalDescription")
    return lineage


def gate_command(args: argparse.Namespace) -> dict[str, Any]:
    """The Gate Lambda's decision on a training job's output (the folder of its output.tar.gz, unpacked): whether a
    champion is compared comes from the job's evaluation.json, as in the run."""
    model = load_config(args.config).model(args.model)
    folder = args.evaluation.rstrip("/")
    evaluation = _read_bytes(f"{folder}/evaluation.json")
    predictions = _read_bytes(f"{folder}/holdout_predictions.csv")
    return gate_training_outputs(model, evaluation, predictions, folder)[0]


def grafana_command(args: argparse.Namespace, out: Any, err: Any) -> int:
    """`refit grafana MODEL`: the dashboard JSON of scripts.grafana_dashboard (exit 2: a model not configured)."""
    try:
        from scripts.grafana_dashboard import dashboard_json  # the SDK only when asked for
    except ImportError as error:
        print(f"refit: {error.name} is not installed: pip install 'refit[grafana]'", file=err)
        return 1
    try:
        config = load_config(args.config)
        text = dashboard_json(
            config.model(args.model), config.prefix(args.model), region=args.region, datasource_uid=args.datasource_uid
        )
    except ConfigError as error:
        print(f"refit: {error}", file=err)
        return 2
    if args.output:
        Path(args.output).write_text(text + "\n")
    else:
        print(text, file=out)
    return 0


def main(argv: list[str] | None = None, out: Any = None, err: Any = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    parser = argparse.ArgumentParser(prog="refit", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="model configuration file (refit.toml)")
    # --config is accepted after the command too; there it is only set when given (the main parser's default stays).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="model configuration file (refit.toml)")
    commands = parser.add_subparsers(dest="command", required=True)
    profile = commands.add_parser("profile", help="write a baseline profile of DATA", parents=[common])
    profile.add_argument("data")
    profile.add_argument("--target")
    profile.add_argument("--categorical", nargs="*")
    profile.add_argument("-o", "--output", required=True)
    for name in ("drift", "quality"):
        command = commands.add_parser(
            name, help=f"{name} of CURRENT against a baseline or a reference file", parents=[common]
        )
        command.add_argument("reference", nargs="?")
        command.add_argument("current")
        command.add_argument("--baseline")
        command.add_argument("--model", help="whose drift and quality settings apply (default: the only model)")
        command.add_argument("--target")
        command.add_argument("--categorical", nargs="*")
        command.add_argument("--json", action="store_true")
        if name == "drift":
            command.add_argument("--html", help="also write a self-contained HTML report here")
    gate = commands.add_parser(
        "gate", help="gate a challenger on a training job's holdout predictions", parents=[common]
    )
    gate.add_argument("evaluation", help="folder or s3:// prefix holding evaluation.json and holdout_predictions.csv")
    gate.add_argument("--model", required=True)
    lineage = commands.add_parser("lineage", help="where a model version came from", parents=[common])
    lineage.add_argument("model")
    lineage.add_argument("version", type=int, nargs="?")
    difference = commands.add_parser("diff", help="what changed between two model versions", parents=[common])
    difference.add_argument("model")
    difference.add_argument("v1", type=int)
    difference.add_argument("v2", type=int)
    feedback = commands.add_parser(
        "feedback", help="validate a ground-truth label file and upload it for the monitor", parents=[common]
    )
    feedback.add_argument("model")
    feedback.add_argument("file", help="labels: Model Monitor merge format, JSON Lines or CSV (inference_id,label)")
    feedback.add_argument("--dry-run", action="store_true", help="validate and check ids only; upload nothing")
    feedback.add_argument("--json", action="store_true")
    feedback.add_argument("--data-bucket", help="the data bucket (default: the stack's DataBucket output)")
    feedback.add_argument("--stack", help="the deployed stack (default: the configuration's project name)")
    add_report_parser(commands, common)
    run_commands.add_parsers(commands, common)
    local = commands.add_parser("local", help="the embedded local AWS as a server (`refit local up`)")
    up = local.add_subparsers(dest="local_command", required=True).add_parser(
        "up", help="serve the stack on 127.0.0.1 until Ctrl-C", parents=[common]
    )
    up.add_argument("--port", type=int, default=4566, help="port on 127.0.0.1 (default 4566)")
    up.add_argument("--workdir", type=Path, default=Path(".refit-local"), help="synthesis, logs and outputs.json")
    up.add_argument(
        "--assembly",
        type=Path,
        help="stand up this synthesized cloud assembly (a cdk.out of `cdk synth`) instead of synthesizing --config",
    )
    grafana = commands.add_parser(
        "grafana", help="write the model's Grafana dashboard (CloudWatch data source) as JSON", parents=[common]
    )
    grafana.add_argument("model")
    grafana.add_argument("-o", "--output", help="write it here (default: standard output)")
    grafana.add_argument("--region", default="default", help="CloudWatch region (default: the data source's own)")
    grafana.add_argument("--datasource-uid", help="this CloudWatch data source (default: a `datasource` variable)")
    args = parser.parse_args(argv)
    if args.command == "grafana":
        return grafana_command(args, out, err)
    if args.command == "local":
        from scripts.local_aws.server import local_up  # moto's server only when asked for

        return local_up(
            port=args.port, config=Path(args.config), workdir=args.workdir, assembly=args.assembly, out=out, err=err
        )
    if args.command in run_commands.COMMANDS:
        return run_commands.run(args, out, err)
    try:
        if args.command == "report":
            try:
                config = load_config(args.config)
                if args.model:
                    config.model(args.model)  # an unknown model is bad input, named before any AWS call
                resources = run_commands.Resources.from_args(args, config)  # the stack's outputs, read once
                report_command(args, config, resources.audit_table, boto3.client, out, resources.state_machine_arn)
            except (ReportError, run_commands.CommandError) as error:
                print(f"refit: {error}", file=err)
                return error.exit_code
            except ConfigError as error:  # bad input, as in the run commands: exit 2
                print(f"refit: {error}", file=err)
                return 2
            except BotoCoreError as error:  # no endpoint, region or credentials while finding the stack
                print(f"refit: {error}; check AWS_ENDPOINT_URL, the region and the credentials", file=err)
                return 1
            return 0
        if args.command == "feedback":
            try:
                summary = feedback_command(args)
            except ConfigError as error:  # bad input, as in the run commands: exit 2
                print(f"refit: {error}", file=err)
                return 2
            except run_commands.CommandError as error:  # finding the data bucket (the stack's outputs), as in report
                print(f"refit: {error}", file=err)
                return error.exit_code
            except FeedbackRefused as refused:
                if refused.summary is not None:
                    print(json.dumps(refused.summary) if args.json else render_feedback(refused.summary), file=out)
                print(f"refit: {refused}", file=err)
                return 2
            print(json.dumps(summary) if args.json else render_feedback(summary), file=out)
            return 0
        if args.command == "profile":
            result = build_profile(_read(args.data), target=args.target, categorical=args.categorical or [])
            Path(args.output).write_text(dumps_profile(result))
            return 0
        if args.command in ("drift", "quality"):
            if not args.baseline and not args.reference:
                parser.error("give --baseline or a REFERENCE file")
            model = _checked_model(args)
            baseline = _baseline(args, model)
            s3 = boto3.client("s3") if is_s3_uri(args.current) else None
            parts = (part for _, part in iter_parts(args.current, s3))
            # One streamed pass: a CURRENT larger than memory is fine (the REFERENCE form reads REFERENCE whole).
            stats = BatchStats.of(parts, baseline, duplicates=args.command == "quality")
            if args.command == "drift":
                report = detect_drift(stats, model.drift)
                if args.html:
                    Path(args.html).write_text(render_html(report, stats, f"refit drift: {args.current}"))
            else:
                report = check_quality(stats, model.quality, model.drift.min_rows, args.current)
        elif args.command == "gate":
            report = gate_command(args)
        elif args.command == "lineage":
            report = _lineage(boto3.client("sagemaker"), _package_group(args), args.version)
        else:
            group, sagemaker = _package_group(args), boto3.client("sagemaker")
            report = diff(_lineage(sagemaker, group, args.v1), _lineage(sagemaker, group, args.v2))
        print(json.dumps(report, indent=None if getattr(args, "json", False) else 1, default=float), file=out)
        return 0
    except (DataError, ProfileError, ConfigError, GateInputError, CliError, OSError) as error:
        print(f"refit: {error}", file=err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
