"""Pin every Dockerfile's base image to the digest its tag has now: `FROM image:tag@sha256:<digest>`.

    python -m scripts.refresh_base_images            # rewrite the FROM lines whose tag moved
    python -m scripts.refresh_base_images --check    # exit 1 (and say which) when a pin is not the tag's digest

Each tag is resolved through the registry's HTTP API (Docker Registry v2 / OCI distribution): an anonymous bearer
token from the realm the registry names in its `WWW-Authenticate` challenge, then `HEAD /v2/<repository>/manifests/
<tag>` accepting the multi-platform index types first, whose `Docker-Content-Digest` is the digest to pin (the
index's, so `docker build --platform linux/amd64` still picks the platform's image from it). Docker Hub names
(`python:3.11-slim-bookworm`) are `registry-1.docker.io/library/python`. Standard library only; nothing is pulled.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = ("functions/Dockerfile", "training_container/Dockerfile")
# Index (multi-platform) types first: a tag that names an index resolves to the index's digest.
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
FROM_LINE = re.compile(
    r"^(?P<keyword>FROM\s+)(?P<flags>(?:--\S+\s+)*)(?P<reference>\S+)(?P<rest>.*)$", re.IGNORECASE | re.MULTILINE
)
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class ImageReference:
    registry: str  # the API host, e.g. registry-1.docker.io, public.ecr.aws
    repository: str  # e.g. library/python, lambda/python
    tag: str
    digest: str | None
    name: str  # as written before the tag, e.g. python, public.ecr.aws/lambda/python

    @property
    def tagged(self) -> str:
        return f"{self.name}:{self.tag}"

    def pinned(self, digest: str) -> str:
        return f"{self.tagged}@{digest}"


def parse_reference(reference: str) -> ImageReference:
    """`[registry/]repository:tag[@sha256:...]`. A first component with a '.' or ':' (or `localhost`) is a registry;
    otherwise the image is Docker Hub's, and a one-part name is under `library/`."""
    name, _, digest = reference.partition("@")
    if digest and not DIGEST.fullmatch(digest):
        raise ValueError(f"{reference}: {digest!r} is not a sha256 digest")
    slash = name.rfind("/")
    if ":" not in name[slash + 1 :]:
        raise ValueError(f"{reference}: no tag; write the tag the digest belongs to (image:tag@sha256:...)")
    name, tag = name.rsplit(":", 1)
    first, _, remainder = name.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, remainder
    else:
        registry, repository = "registry-1.docker.io", name if "/" in name else f"library/{name}"
    return ImageReference(registry, repository, tag, digest or None, name)


def base_images(text: str) -> list[ImageReference]:
    """Every FROM line's image. A FROM naming an earlier build stage or a build argument is refused: every base must
    be an image this script can pin."""
    return [parse_reference(match["reference"]) for match in FROM_LINE.finditer(text)]


def rewrite(text: str, digests: dict[str, str]) -> str:
    """`text` with each FROM line's image pinned to `digests[image:tag]` (flags, `AS stage` and comments kept)."""

    def pin(match: re.Match[str]) -> str:
        image = parse_reference(match["reference"])
        return f"{match['keyword']}{match['flags']}{image.pinned(digests[image.tagged])}{match['rest']}"

    return FROM_LINE.sub(pin, text)


def parse_challenge(header: str) -> dict[str, str]:
    """`Bearer realm="https://auth.docker.io/token",service="registry.docker.io"` -> its parameters."""
    scheme, _, parameters = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise ValueError(f"unsupported registry authentication {scheme!r} ({header})")
    return {key.lower(): value for key, value in re.findall(r'(\w+)="([^"]*)"', parameters)}


Opener = Callable[[urllib.request.Request], Any]


def _open(request: urllib.request.Request) -> Any:
    return urllib.request.urlopen(request, timeout=30)  # noqa: S310 - https URLs built from the Dockerfile's registry


def resolve_digest(image: ImageReference, opener: Opener = _open) -> str:
    """The digest `image.tag` names now in its registry (anonymous pull access)."""
    url = f"https://{image.registry}/v2/{image.repository}/manifests/{image.tag}"
    headers = {"Accept": ", ".join(MANIFEST_TYPES)}
    request = urllib.request.Request(url, method="HEAD", headers=headers)
    try:
        response = opener(request)
    except urllib.error.HTTPError as error:
        if error.code != 401 or "www-authenticate" not in {k.lower() for k in error.headers}:
            raise
        challenge = parse_challenge(error.headers["WWW-Authenticate"])
        query = {"scope": f"repository:{image.repository}:pull"}
        if "service" in challenge:
            query["service"] = challenge["service"]
        token_url = f"{challenge['realm']}?{urllib.parse.urlencode(query)}"
        with opener(urllib.request.Request(token_url)) as token_response:
            body = json.loads(token_response.read())
        token = body.get("token") or body.get("access_token")
        if not token:
            raise ValueError(f"{token_url}: no token in the registry's answer") from None
        request = urllib.request.Request(url, method="HEAD", headers={**headers, "Authorization": f"Bearer {token}"})
        response = opener(request)
    with response:
        digest = response.headers.get("Docker-Content-Digest", "")
    if not DIGEST.fullmatch(digest):
        raise ValueError(f"{image.tagged}: the registry answered no sha256 digest ({digest!r})")
    return digest


def refresh(paths: list[Path], *, check: bool, opener: Opener = _open) -> list[str]:
    """Resolve every base image of `paths`; rewrite the files (or with `check` only report). Returns what changed."""
    changes = []
    for path in paths:
        text = path.read_text()
        digests = {image.tagged: resolve_digest(image, opener) for image in base_images(text)}
        for image in base_images(text):
            if image.digest != digests[image.tagged]:
                changes.append(f"{path}: {image.tagged} {image.digest or '(unpinned)'} -> {digests[image.tagged]}")
        if not check:
            updated = rewrite(text, digests)
            if updated != text:
                path.write_text(updated)
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a pin is out of date")
    parser.add_argument("dockerfiles", nargs="*", type=Path, help=f"default: {', '.join(DOCKERFILES)}")
    args = parser.parse_args(argv)
    paths = args.dockerfiles or [ROOT / name for name in DOCKERFILES]
    changes = refresh(paths, check=args.check)
    for change in changes:
        print(change)
    if not changes:
        print("every base image is pinned to its tag's current digest")
    return 1 if args.check and changes else 0


if __name__ == "__main__":
    sys.exit(main())
