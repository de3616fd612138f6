"""What Harbor's REST API says about projects, artifacts, rules and permissions.

Each type reads itself from Harbor's JSON with `from_json`, which raises
`HarborError` for a document that lacks what the type needs. Fields Harbor
may leave out (go-swagger drops empty values) get their empty value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.harbor.errors import HarborError
from reconciler.oci import INDEX_MEDIA_TYPES, Digest, InvalidDigestError, Platform

__all__ = [
    "REPOSITORY_PULL",
    "REPOSITORY_PUSH",
    "TAG_CREATE",
    "TAG_DELETE",
    "Artifact",
    "ArtifactReference",
    "ArtifactTag",
    "ImmutableRule",
    "Permission",
    "Project",
    "Selector",
]

# (resource, action), as `GET /users/current/permissions?relative=true` lists
# them for a project scope; Harbor's RBAC names (src/common/rbac/const.go).
Permission = tuple[str, str]
REPOSITORY_PULL: Permission = ("repository", "pull")
REPOSITORY_PUSH: Permission = ("repository", "push")
TAG_CREATE: Permission = ("tag", "create")
TAG_DELETE: Permission = ("tag", "delete")


@dataclass(frozen=True, slots=True)
class Project:
    """A Harbor project: the first component of every repository path in it."""

    name: str
    project_id: int
    public: bool
    registry_id: int | None = None
    """The upstream registry of a proxy-cache project; None for an ordinary one."""

    @property
    def is_proxy_cache(self) -> bool:
        """Whether Harbor refuses pushes here because it mirrors a registry."""
        return self.registry_id is not None

    @classmethod
    def from_json(cls, document: Any) -> Project:
        """Read a `Project` definition of the OpenAPI description."""
        data = _object(document, "project")
        metadata = data.get("metadata") or {}
        # Harbor omits registry_id (an int64 with omitempty) for an ordinary
        # project, so 0 and absent both mean "not a proxy cache".
        registry_id = data.get("registry_id") or None
        return cls(
            name=_string(data, "name", "project"),
            project_id=_integer(data, "project_id", "project"),
            # metadata.public is the string "true" or "false".
            public=str(metadata.get("public", "false")).lower() == "true",
            registry_id=int(registry_id) if registry_id is not None else None,
        )


@dataclass(frozen=True, slots=True)
class ArtifactTag:
    """A tag on an artifact; `immutable` is known only when it was asked for."""

    name: str
    immutable: bool = False

    @classmethod
    def from_json(cls, document: Any) -> ArtifactTag:
        data = _object(document, "tag")
        return cls(_string(data, "name", "tag"), bool(data.get("immutable", False)))


@dataclass(frozen=True, slots=True)
class ArtifactReference:
    """A child of an index, with the platform its entry in the index claims."""

    child_digest: Digest
    platform: Platform | None
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_attestation(self) -> bool:
        """Whether this entry is an attestation (`unknown/unknown`), not an image."""
        return self.platform is not None and self.platform.is_unknown

    @classmethod
    def from_json(cls, document: Any) -> ArtifactReference:
        data = _object(document, "reference")
        platform = data.get("platform")
        return cls(
            child_digest=_digest(data, "child_digest", "reference"),
            platform=Platform.from_json(platform)
            if isinstance(platform, dict)
            else None,
            annotations=_strings(data.get("annotations")),
        )


@dataclass(frozen=True, slots=True)
class Artifact:
    """A manifest in a Harbor repository, with its tags and, for an index, children.

    `size` is Harbor's: manifest, config and layers for an image, and the
    index plus its children for an index. It is not the manifest's size,
    which only the registry API tells.
    """

    digest: Digest
    media_type: str
    manifest_media_type: str
    size: int
    tags: tuple[ArtifactTag, ...] = ()
    references: tuple[ArtifactReference, ...] = ()
    extra_attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        """Whether the manifest is an OCI index or a Docker manifest list."""
        return self.manifest_media_type in INDEX_MEDIA_TYPES

    @property
    def tag_names(self) -> tuple[str, ...]:
        """The names of the artifact's tags."""
        return tuple(tag.name for tag in self.tags)

    def tag(self, name: str) -> ArtifactTag | None:
        """The tag called `name`, or None."""
        return next((tag for tag in self.tags if tag.name == name), None)

    @classmethod
    def from_json(cls, document: Any) -> Artifact:
        """Read an `Artifact` definition of the OpenAPI description."""
        data = _object(document, "artifact")
        extra = data.get("extra_attrs")
        return cls(
            digest=_digest(data, "digest", "artifact"),
            media_type=str(data.get("media_type") or ""),
            manifest_media_type=_string(data, "manifest_media_type", "artifact"),
            size=int(data.get("size") or 0),
            tags=tuple(ArtifactTag.from_json(t) for t in data.get("tags") or ()),
            references=tuple(
                ArtifactReference.from_json(r) for r in data.get("references") or ()
            ),
            extra_attrs=extra if isinstance(extra, dict) else {},
        )


@dataclass(frozen=True, slots=True)
class Selector:
    """One pattern of a rule: `decoration` is `matches`, `excludes`,
    `repoMatches` or `repoExcludes`; `pattern` is a doublestar glob.
    """

    decoration: str
    pattern: str
    kind: str = "doublestar"

    @property
    def excludes(self) -> bool:
        return "xclude" in self.decoration

    def describe(self) -> str:
        verb = "not matching" if self.excludes else "matching"
        return f"{verb} {self.pattern!r}"

    def selects(self, value: str) -> bool:
        """Whether the selector keeps `value`: a match, or for `excludes` none."""
        return (doublestar(self.pattern).fullmatch(value) is not None) != self.excludes

    @classmethod
    def from_json(cls, document: Any) -> Selector:
        data = _object(document, "selector")
        return cls(
            decoration=str(data.get("decoration") or "matches"),
            pattern=str(data.get("pattern") or ""),
            kind=str(data.get("kind") or "doublestar"),
        )


@dataclass(frozen=True, slots=True)
class ImmutableRule:
    """A tag immutability rule: tags it selects, in repositories it selects,
    cannot be moved or deleted once they exist.
    """

    rule_id: int
    disabled: bool
    tag_selectors: tuple[Selector, ...]
    repository_selectors: tuple[Selector, ...]

    def protects(self, repository: str, tag: str) -> bool:
        """Whether the rule, enabled, protects `tag` in `repository` (the name
        inside the project, as Harbor's repository selectors match it).
        """
        if self.disabled:
            return False
        tags = all(s.selects(tag) for s in self.tag_selectors)
        return tags and all(s.selects(repository) for s in self.repository_selectors)

    def describe(self) -> str:
        """The rule's effect for people, e.g. "tags matching 'v*' in
        repositories matching '**' are immutable".
        """
        tags = " and ".join(s.describe() for s in self.tag_selectors) or "all"
        repositories = " and ".join(s.describe() for s in self.repository_selectors)
        where = f" in repositories {repositories}" if repositories else ""
        state = " (disabled)" if self.disabled else ""
        return f"tags {tags}{where} are immutable{state}"

    @classmethod
    def from_json(cls, document: Any) -> ImmutableRule:
        """Read an `ImmutableRule` definition of the OpenAPI description."""
        data = _object(document, "immutable rule")
        scopes = data.get("scope_selectors")
        repositories = scopes.get("repository") if isinstance(scopes, dict) else None
        return cls(
            rule_id=int(data.get("id") or 0),
            disabled=bool(data.get("disabled", False)),
            tag_selectors=tuple(
                Selector.from_json(s) for s in data.get("tag_selectors") or ()
            ),
            repository_selectors=tuple(
                Selector.from_json(s) for s in repositories or ()
            ),
        )


def doublestar(pattern: str) -> re.Pattern[str]:
    """A doublestar glob as Harbor's rules read it (github.com/bmatcuk/
    doublestar): `**` any path, `*` and `?` within one path segment,
    `[...]` a class, `{a,b}` alternatives.
    """
    out: list[str] = []
    depth = last = 0
    for match in _GLOB_TOKEN.finditer(pattern):
        out.append(re.escape(pattern[last : match.start()]))
        piece = match.group()
        if piece in "{}" and (piece == "{" or depth):
            depth += 1 if piece == "{" else -1
            out.append("(?:" if piece == "{" else ")")
        else:
            out.append(_glob_part(piece, depth))
        last = match.end()
    out.append(re.escape(pattern[last:]))
    try:
        return re.compile("".join(out))
    except re.error:  # an unclosed `{` or a bad class: Harbor matches nothing
        return re.compile(r"(?!)")


_GLOB_TOKEN = re.compile(r"\*\*|\*|\?|\[!?[^\]]+\]|[{},]")
_GLOB_PARTS = {"**": ".*", "*": "[^/]*", "?": "[^/]"}


def _glob_part(piece: str, depth: int) -> str:
    """One piece of a glob as a regex; `,` and `}` are literal outside braces."""
    if piece.startswith("["):
        body = piece[1:-1].replace("\\", "\\\\")
        return f"[^{body[1:]}]" if body.startswith("!") else f"[{body}]"
    if piece == ",":
        return "|" if depth else ","
    return _GLOB_PARTS.get(piece) or re.escape(piece)


def _object(document: Any, what: str) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise HarborError(f"Harbor answered a {what} that is not a JSON object")
    return document


def _string(data: Mapping[str, Any], key: str, what: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise HarborError(f"Harbor answered a {what} without {key}")
    return value


def _integer(data: Mapping[str, Any], key: str, what: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise HarborError(f"Harbor answered a {what} without a numeric {key}")
    return value


def _digest(data: Mapping[str, Any], key: str, what: str) -> Digest:
    try:
        return Digest(_string(data, key, what))
    except InvalidDigestError as error:
        raise HarborError(
            f"Harbor answered a {what} with a bad {key}: {error}"
        ) from None


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(key): str(item) for key, item in value.items()}
