"""scripts/refresh_base_images.py offline: reading image references and FROM lines, rewriting them, and the registry
conversation (challenge, anonymous token, HEAD with the index types) against a recorded-shape fake; no network."""

from __future__ import annotations

import email.message
import io
import json
import urllib.error
import urllib.request

import pytest

from scripts.refresh_base_images import (
    MANIFEST_TYPES,
    ImageReference,
    base_images,
    parse_challenge,
    parse_reference,
    refresh,
    resolve_digest,
    rewrite,
)

OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64


@pytest.mark.parametrize(
    ("reference", "registry", "repository", "tag", "digest"),
    [
        ("python:3.11-slim-bookworm", "registry-1.docker.io", "library/python", "3.11-slim-bookworm", None),
        (f"python:3.11-slim-bookworm@{OLD}", "registry-1.docker.io", "library/python", "3.11-slim-bookworm", OLD),
        ("bitnami/python:3.11", "registry-1.docker.io", "bitnami/python", "3.11", None),
        (f"public.ecr.aws/lambda/python:3.12@{OLD}", "public.ecr.aws", "lambda/python", "3.12", OLD),
        ("localhost:5000/team/img:v1", "localhost:5000", "team/img", "v1", None),
    ],
)
def test_references_name_their_registry_repository_tag_and_digest(reference, registry, repository, tag, digest):
    image = parse_reference(reference)
    assert (image.registry, image.repository, image.tag, image.digest) == (registry, repository, tag, digest)
    assert image.pinned(NEW) == f"{reference.split('@')[0]}@{NEW}"


@pytest.mark.parametrize(
    ("reference", "message"),
    [("python", "no tag"), ("localhost:5000/img", "no tag"), ("python:3.11@sha256:abc", "not a sha256 digest")],
)
def test_a_reference_that_cannot_be_pinned_is_refused(reference, message):
    with pytest.raises(ValueError, match=message):
        parse_reference(reference)


DOCKERFILE = f"""# comment FROM python:2
FROM --platform=linux/amd64 python:3.11-slim-bookworm@{OLD} AS build
RUN echo FROM nothing
from public.ecr.aws/lambda/python:3.12
"""


def test_from_lines_are_rewritten_to_the_digest_and_nothing_else_changes():
    images = base_images(DOCKERFILE)
    assert [i.tagged for i in images] == ["python:3.11-slim-bookworm", "public.ecr.aws/lambda/python:3.12"]
    updated = rewrite(DOCKERFILE, {"python:3.11-slim-bookworm": NEW, "public.ecr.aws/lambda/python:3.12": NEW})
    assert updated.splitlines() == [
        "# comment FROM python:2",
        f"FROM --platform=linux/amd64 python:3.11-slim-bookworm@{NEW} AS build",
        "RUN echo FROM nothing",
        f"from public.ecr.aws/lambda/python:3.12@{NEW}",
    ]


def test_the_bearer_challenge_is_read():
    header = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"'
    assert parse_challenge(header) == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io"}
    with pytest.raises(ValueError, match="unsupported registry authentication 'Basic'"):
        parse_challenge('Basic realm="x"')


class Response(io.BytesIO):
    def __init__(self, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        super().__init__(body)
        self.headers = email.message.Message()
        for key, value in (headers or {}).items():
            self.headers[key] = value


class Registry:
    """A registry that challenges an anonymous HEAD, issues a token for pull scope, and answers the digest."""

    def __init__(self, digest: str, realm: str = "https://auth.example/token") -> None:
        self.digest, self.realm, self.requests = digest, realm, []

    def __call__(self, request: urllib.request.Request) -> Response:
        self.requests.append(request)
        if request.full_url.startswith(self.realm):
            return Response(json.dumps({"token": "t0k"}).encode())
        if request.get_header("Authorization") != "Bearer t0k":
            headers = email.message.Message()
            headers["WWW-Authenticate"] = f'Bearer realm="{self.realm}",service="registry.example"'
            raise urllib.error.HTTPError(request.full_url, 401, "Unauthorized", headers, None)
        return Response(headers={"Docker-Content-Digest": self.digest})


def test_a_tag_resolves_through_the_token_challenge_to_its_index_digest():
    registry = Registry(NEW)
    image = ImageReference("public.ecr.aws", "lambda/python", "3.12", None, "public.ecr.aws/lambda/python")
    assert resolve_digest(image, registry) == NEW
    first, token, head = registry.requests
    assert first.get_method() == "HEAD" and head.get_method() == "HEAD"
    assert head.full_url == "https://public.ecr.aws/v2/lambda/python/manifests/3.12"
    assert head.get_header("Accept").split(", ")[:2] == list(MANIFEST_TYPES[:2])  # the multi-platform index first
    assert (
        "scope=repository%3Alambda%2Fpython%3Apull" in token.full_url and "service=registry.example" in token.full_url
    )


def test_refresh_rewrites_stale_pins_and_check_only_reports(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(DOCKERFILE)
    changes = refresh([dockerfile], check=True, opener=Registry(NEW))
    assert len(changes) == 2 and dockerfile.read_text() == DOCKERFILE
    refresh([dockerfile], check=False, opener=Registry(NEW))
    assert {i.digest for i in base_images(dockerfile.read_text())} == {NEW}
    assert refresh([dockerfile], check=True, opener=Registry(NEW)) == []
    with pytest.raises(ValueError, match="no sha256 digest"):
        refresh([dockerfile], check=True, opener=Registry("sha256:short"))
