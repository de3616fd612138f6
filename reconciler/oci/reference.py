"""References: `registry/repository[:tag][@digest]`.

The grammar is the distribution spec's, with one restriction: the registry
host is always written out. A desired state that reached Docker Hub by
accident would be a bad surprise, so `library/x` alone is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reconciler.errors import ReconcilerError
from reconciler.oci.digest import Digest, InvalidDigestError

_HOST = re.compile(
    r"^(?:localhost|\[[0-9a-fA-F:]+\]|"
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*)(?::[0-9]{1,5})?\Z"
)
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_MAX_NAME = 255


class InvalidReferenceError(ReconcilerError):
    """A string is not a valid repository, tag or reference."""


def validate_tag(tag: str) -> str:
    """Return `tag` when it is a valid OCI tag, else raise."""
    if not _TAG.match(tag):
        raise InvalidReferenceError(
            f"invalid tag {tag!r}",
            hint="a tag is 1 to 128 letters, digits, '_', '.' or '-', "
            "and does not start with '.' or '-'",
        )
    return tag


@dataclass(frozen=True, slots=True, order=True)
class Repository:
    """A repository in a registry, e.g. `harbor.example.com/library/x`."""

    registry: str
    path: str

    @classmethod
    def parse(cls, text: str) -> Repository:
        """Parse `host[:port]/path`, with the host written out."""
        host, _, path = text.partition("/")
        if not path or not _looks_like_host(host):
            raise InvalidReferenceError(
                f"invalid repository {text!r}: it does not start with a registry host",
                hint="write the registry host first, "
                "e.g. harbor.example.com/library/name",
            )
        if not _HOST.match(host):
            raise InvalidReferenceError(f"invalid registry host {host!r} in {text!r}")
        _check_path(text, path)
        return cls(host, path)

    def tag(self, tag: str) -> Reference:
        """The reference to `tag` in this repository."""
        return Reference(self, tag=validate_tag(tag))

    def digest(self, digest: Digest) -> Reference:
        """The reference to `digest` in this repository."""
        return Reference(self, digest=digest)

    @property
    def project(self) -> str:
        """The first path component, which Harbor calls the project."""
        return self.path.split("/", 1)[0]

    def __str__(self) -> str:
        return f"{self.registry}/{self.path}"


@dataclass(frozen=True, slots=True, order=True)
class Reference:
    """A tag or a digest in a repository; the tag is mutable, the digest not."""

    repository: Repository
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse `host/path[:tag][@digest]`; at least one of tag or digest."""
        name, at, digest_text = text.partition("@")
        digest = _parse_digest(text, digest_text) if at else None
        host, slash, rest = name.partition("/")
        path, colon, tag = rest.rpartition(":") if ":" in rest else (rest, "", "")
        repository = Repository.parse(f"{host}{slash}{path}")
        if colon:
            validate_tag(tag)
        if not colon and digest is None:
            raise InvalidReferenceError(
                f"invalid reference {text!r}: it names no tag or digest",
                hint="add :tag or @sha256:…",
            )
        return cls(repository, tag or None, digest)

    @property
    def registry(self) -> str:
        return self.repository.registry

    @property
    def identifier(self) -> str:
        """What goes after `/manifests/` in a URL: the digest, else the tag."""
        return str(self.digest) if self.digest is not None else str(self.tag)

    def __post_init__(self) -> None:
        if self.tag is None and self.digest is None:
            raise InvalidReferenceError(f"reference to {self.repository} has no tag")

    def __str__(self) -> str:
        text = str(self.repository)
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _looks_like_host(component: str) -> bool:
    # Docker's rule for telling a host from the first path component.
    return "." in component or ":" in component or component == "localhost"


def _check_path(text: str, path: str) -> None:
    if len(text) > _MAX_NAME:
        raise InvalidReferenceError(
            f"invalid repository {text!r}: longer than {_MAX_NAME} characters"
        )
    for component in path.split("/"):
        if not _PATH_COMPONENT.match(component):
            raise InvalidReferenceError(
                f"invalid repository {text!r}: path component {component!r} "
                "is not allowed",
                hint="path components are lower-case letters and digits, "
                "separated by '.', '_', '__' or '-'",
            )


def _parse_digest(text: str, digest_text: str) -> Digest:
    try:
        return Digest(digest_text)
    except InvalidDigestError as error:
        raise InvalidReferenceError(f"invalid reference {text!r}: {error}") from None
