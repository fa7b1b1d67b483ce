"""The `refit` command: profile, drift and quality checks on files or s3:// URIs, with the same code the Lambdas run."""

from __future__ import annotations

import argparse
import json
import sys

import boto3
from refit_core.config import DriftSettings, QualitySettings
from refit_core.datasets import DataError, read_table
from refit_core.drift import detect_drift
from refit_core.profile import ProfileError, build_profile, dumps_profile, loads_profile
from refit_core.s3uri import is_s3_uri


def _read(location: str):
    return read_table(location, boto3.client("s3") if is_s3_uri(location) else None)


def _baseline(args: argparse.Namespace) -> dict:
    if args.baseline:
        with open(args.baseline, "rb") as handle:
            return loads_profile(handle.read(), args.baseline)
    return build_profile(_read(args.reference), target=args.target, categorical=args.categorical or [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="refit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    profile = commands.add_parser("profile", help="write a baseline profile of DATA")
    profile.add_argument("data")
    profile.add_argument("--target")
    profile.add_argument("--categorical", nargs="*")
    profile.add_argument("-o", "--output", required=True)
    for name in ("drift", "quality"):
        command = commands.add_parser(name, help=f"{name} of CURRENT against a baseline or a reference file")
        command.add_argument("reference", nargs="?")
        command.add_argument("current")
        command.add_argument("--baseline")
        command.add_argument("--target")
        command.add_argument("--categorical", nargs="*")
        command.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "profile":
            result = build_profile(_read(args.data), target=args.target, categorical=args.categorical or [])
            with open(args.output, "w") as handle:
                handle.write(dumps_profile(result))
            return 0
        if not args.baseline and not args.reference:
            parser.error("give --baseline or a REFERENCE file")
        baseline, current = _baseline(args), _read(args.current)
        if args.command == "drift":
            report = detect_drift(current, baseline, DriftSettings())
        else:
            from refit_core.quality import check_quality

            report = check_quality(current, baseline, QualitySettings(), DriftSettings().min_rows, args.current)
        print(json.dumps(report, indent=None if args.json else 1, default=float))
        return 0
    except (DataError, ProfileError, OSError) as error:
        print(f"refit: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
