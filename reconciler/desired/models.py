"""The desired state, resolved: every value checked, every default applied.

Instances are immutable; mappings are read-only views.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from reconciler.desired._template import render
from reconciler.oci import Platform, Reference, Repository

RegistryKind = Literal["auto", "registry", "harbor"]
IndexMediaType = Literal["oci", "docker"]


@dataclass(frozen=True, slots=True)
class Credentials:
    """Names of the environment variables that hold a registry's credentials."""

    username_env: str
    password_env: str


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """How to connect to one registry host."""

    host: str
    ca_file: Path | None = None
    """An existing PEM bundle, as an absolute path."""
    insecure: bool = False
    """Plain HTTP instead of HTTPS."""
    credentials: Credentials | None = None
    """None: Docker's config, else anonymous."""
    kind: RegistryKind = "auto"


@dataclass(frozen=True, slots=True)
class ProjectSettings:
    """A Harbor project the desired state wants to exist; apply creates it.

    Only whether it is public is set, and only when it is created.
    """

    host: str
    name: str
    public: bool = False

    @property
    def address(self) -> str:
        """`host/name`, as `projects:` keys it."""
        return f"{self.host}/{self.name}"


@dataclass(frozen=True, slots=True)
class Image:
    """One repository's desired versions, platform tags and aliases."""

    repository: Repository
    versions: tuple[str, ...]
    platforms: tuple[Platform, ...]
    platform_tag: str
    """Template of each platform image's tag in `repository`."""
    source: str | None = None
    """Template of each platform image's source; None: the platform tag is."""
    aliases: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Alias tag to the version whose index it points at."""
    index_media_type: IndexMediaType | None = None
    """None: follow the children's media types."""
    prune: bool = False
    file: str = ""
    """The file that declares the image, as the user named it."""
    line: int = 0
    """The line where the image's entry starts."""

    def __post_init__(self) -> None:
        # Frozen all the way down: nobody can add an alias after loading.
        object.__setattr__(self, "aliases", MappingProxyType(dict(self.aliases)))

    def platform_tag_for(self, version: str, platform: Platform) -> str:
        """The tag of `version`'s image for `platform` in `repository`."""
        self._check(version, platform)
        return render(self.platform_tag, version, platform)

    def platform_ref(self, version: str, platform: Platform) -> Reference:
        """Where `version`'s image for `platform` is tagged in `repository`."""
        return self.repository.tag(self.platform_tag_for(version, platform))

    def version_ref(self, version: str) -> Reference:
        """Where the index of `version` is tagged."""
        self._check(version)
        return self.repository.tag(version)

    def alias_ref(self, alias: str) -> Reference:
        """Where `alias` is tagged; it points at the index of `aliases[alias]`."""
        if alias not in self.aliases:
            raise KeyError(f"{alias!r} is not an alias of {self.repository}")
        return self.repository.tag(alias)

    def source_ref(self, version: str, platform: Platform) -> Reference | None:
        """Where `version`'s image for `platform` comes from; None: it exists."""
        self._check(version, platform)
        if self.source is None:
            return None
        return Reference.parse(render(self.source, version, platform))

    def tags(self) -> tuple[str, ...]:
        """Every tag the image claims in `repository`, sorted."""
        platform_tags = (
            self.platform_tag_for(version, platform)
            for version in self.versions
            for platform in self.platforms
        )
        return tuple(sorted({*self.versions, *platform_tags, *self.aliases}))

    def _check(self, version: str, platform: Platform | None = None) -> None:
        if version not in self.versions:
            raise KeyError(f"{version!r} is not a version of {self.repository}")
        if platform is not None and platform not in self.platforms:
            raise KeyError(f"{platform} is not a platform of {self.repository}")


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Everything the files ask for, merged."""

    registries: Mapping[str, RegistrySettings] = field(default_factory=dict, hash=False)
    """Connection settings by registry host."""
    images: tuple[Image, ...] = ()
    """Sorted by repository."""
    projects: Mapping[str, ProjectSettings] = field(default_factory=dict, hash=False)
    """Harbor projects to create when missing, by `host/name`."""

    def __post_init__(self) -> None:
        registries = dict(sorted(self.registries.items()))
        object.__setattr__(self, "registries", MappingProxyType(registries))
        projects = dict(sorted(self.projects.items()))
        object.__setattr__(self, "projects", MappingProxyType(projects))
