"""The shape of a desired-state file (format version 1), as pydantic models.

These models check types and field names only; what the values mean (valid
tags, platforms, templates, clashes) is checked while resolving them. Models
are strict: YAML reads `3.10` as the number 3.1, so a number is never taken
where a string is meant.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN)]

SUPPORTED_VERSIONS = (1,)

DEFAULT_PLATFORMS = ("linux/amd64", "linux/arm64")
DEFAULT_PLATFORM_TAG = "{version}-{arch}"


class _Entry(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class CredentialsEntry(_Entry):
    """Where the username and password of a registry come from."""

    username_env: EnvName
    """Name of the environment variable holding the username."""
    password_env: EnvName
    """Name of the environment variable holding the password or token."""


class RegistryEntry(_Entry):
    """How to connect to one registry host."""

    ca_file: str | None = None
    """PEM bundle to trust, relative to the file that names it."""
    insecure: bool = False
    """Plain HTTP; only ever when written here."""
    credentials: CredentialsEntry | None = None
    kind: Literal["auto", "registry", "harbor"] = "auto"
    """Whether Harbor's REST API may be used; `auto` finds out."""


class DefaultsEntry(_Entry):
    """Values for the images of the same file that do not set their own."""

    platforms: list[str] | None = None
    platform_tag: str | None = None


class ImageEntry(_Entry):
    """One multi-platform image: a repository and the versions to publish."""

    repository: str
    versions: list[str]
    platforms: list[str] | None = None
    source: str | None = None
    """Template of the reference each platform image is copied from."""
    platform_tag: str | None = None
    """Template of the tag each platform image gets in `repository`."""
    aliases: dict[str, str] = Field(default_factory=dict)
    """Alias tag to the version it points at."""
    index_media_type: Literal["oci", "docker"] | None = None
    prune: bool = False


class ProjectEntry(_Entry):
    """A Harbor project that apply creates when it is missing."""

    public: bool = False
    """Whether anyone may pull without signing in; Harbor's default is private."""


class DocumentEntry(_Entry):
    """The top level; its sections are checked entry by entry afterwards."""

    version: Any = None
    registries: dict[str, Any] | None = None
    projects: dict[str, Any] | None = None
    defaults: dict[str, Any] | None = None
    images: list[Any] | None = None
