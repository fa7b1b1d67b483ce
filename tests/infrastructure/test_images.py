"""Both images can be built: every pin in an image's requirements resolves to a binary wheel for the Python and the
glibc of that image's base. No Docker engine is needed (none runs in CI): pip resolves the requirements for the
image's platform (`--dry-run --only-binary=:all: --platform ... --python-version ...`) against the package index,
so a pin that has no wheel for the image fails here instead of at `cdk deploy`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from scripts.refresh_base_images import DOCKERFILES, base_images

ROOT = Path(__file__).resolve().parents[2]

# What each base image runs: (Python, glibc). A Dockerfile whose base is not listed fails the test, so a new base
# cannot slip in unchecked. Amazon Linux 2023 (the Lambda 3.12+ base) ships glibc 2.34; Debian 12 (bookworm) 2.36.
# AWS's Lambda bases for Python 3.8-3.11 are Amazon Linux 2 (glibc 2.26), listed so the test shows why they fail.
BASE_IMAGES = {
    "public.ecr.aws/lambda/python:3.12": ("3.12", (2, 34)),
    "public.ecr.aws/lambda/python:3.13": ("3.13", (2, 34)),
    "public.ecr.aws/lambda/python:3.11": ("3.11", (2, 26)),
    "python:3.11-slim-bookworm": ("3.11", (2, 36)),
}
IMAGES = {
    "lambda": (ROOT / "functions" / "Dockerfile", ROOT / "functions" / "requirements.txt"),
    "training": (ROOT / "training_container" / "Dockerfile", ROOT / "training_container" / "requirements.txt"),
}


def base_image(dockerfile: Path) -> str:
    """The one base image's `image:tag` (its digest pin aside)."""
    bases = base_images(dockerfile.read_text())
    assert len(bases) == 1, f"{dockerfile}: expected one FROM line, found {bases}"
    return bases[0].tagged


def dockerfiles() -> list[Path]:
    """The project's Dockerfiles: those git tracks (the installed environments, .venv*, hold packages' own)."""
    tracked = subprocess.run(
        ["git", "ls-files", "--", "Dockerfile*", "**/Dockerfile*"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return sorted(ROOT / name for name in tracked)


def test_every_base_image_is_pinned_by_digest():
    """A tag moves; a digest does not. Every Dockerfile's FROM names `image:tag@sha256:...`, and the refresh script
    (scripts/refresh_base_images.py) knows every Dockerfile."""
    found = dockerfiles()
    assert [path.relative_to(ROOT).as_posix() for path in found] == sorted(DOCKERFILES)
    for path in found:
        for image in base_images(path.read_text()):
            assert image.digest is not None, f"{path}: FROM {image.tagged} is not pinned by digest"


def platform_tags(glibc: tuple[int, int]) -> list[str]:
    """Every manylinux tag a glibc of that version accepts (pip takes the list as given, newest first)."""
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014_x86_64", 12: "manylinux2010_x86_64", 5: "manylinux1_x86_64"}
    return tags + [tag for m, tag in legacy.items() if m <= minor]


def resolve(requirements: Path, python: str, glibc: tuple[int, int], report: Path) -> subprocess.CompletedProcess:
    platforms = [arg for tag in platform_tags(glibc) for arg in ("--platform", tag)]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--only-binary=:all:",
            "--target",
            str(report.parent / "never-written"),
            "--python-version",
            python,
            "--implementation",
            "cp",
            *platforms,
            "--quiet",
            "--report",
            str(report),
            "-r",
            str(requirements),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_pin_has_a_wheel_for_the_image_platform(image, tmp_path):
    dockerfile, requirements = IMAGES[image]
    base = base_image(dockerfile)
    assert base in BASE_IMAGES, f"{dockerfile}: base {base} has no (Python, glibc) entry in this test; add it"
    python, glibc = BASE_IMAGES[base]
    result = resolve(requirements, python, glibc, tmp_path / "report.json")
    assert result.returncode == 0, f"{image} image ({base}): {result.stderr[-1500:]}"
    installed = {
        item["metadata"]["name"].lower().replace("_", "-")
        for item in json.loads((tmp_path / "report.json").read_text())["install"]
    }
    for line in requirements.read_text().splitlines():
        name = line.split("#")[0].strip().split("==")[0]
        if name:
            assert name.lower().replace("_", "-") in installed, f"{name} was not resolved for the {image} image"
    assert not (tmp_path / "never-written").exists()


def test_the_amazon_linux_2_lambda_base_cannot_install_the_pins(tmp_path):
    """The defect this guards against: the Python 3.11 Lambda base (glibc 2.26) has no wheel for numpy 2.4.6."""
    python, glibc = BASE_IMAGES["public.ecr.aws/lambda/python:3.11"]
    result = resolve(IMAGES["lambda"][1], python, glibc, tmp_path / "report.json")
    assert result.returncode != 0 and "No matching distribution found for numpy" in result.stderr


def project_pins() -> dict[str, str]:
    """The versions the suite runs with: pyproject.toml's pinned dependencies and constraints.txt."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    lines = dependencies + (ROOT / "constraints.txt").read_text().splitlines()
    pins = {}
    for line in lines:
        requirement = line.split("#")[0].strip()
        if "==" in requirement:
            name, version = requirement.split("==", 1)
            pins[re.sub(r"\[.*\]", "", name).strip().lower()] = version.strip()
    return pins


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_pins_are_the_project_pins(image):
    """An image installs the versions the tests ran, not others."""
    pins = project_pins()
    for line in IMAGES[image][1].read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if requirement:
            name, version = requirement.split("==")
            assert pins.get(name.lower()) == version, (
                f"{image}: {requirement}, but the project pins {pins.get(name.lower())}"
            )


def test_every_image_is_built_for_the_architecture_it_runs_on(cloud_assembly):
    """An image built on an arm64 laptop without a platform would not start on x86_64 Lambdas or ml.m5 instances. (The
    training asset names its platform; CDK derives the Lambda asset's from the functions' x86_64 architecture.)"""
    assets = json.loads((cloud_assembly / "refit.assets.json").read_text())["dockerImages"]
    assert len(assets) == 2
    for image in assets.values():
        assert image["source"].get("platform") == "linux/amd64", image["source"]
