"""Resolving one file: its format version, registries, defaults and images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.desired._explain import describe_kind, validate
from reconciler.desired._images import DeclaredImage, resolve_defaults, resolve_image
from reconciler.desired._problems import FileReport
from reconciler.desired._projects import DeclaredProject, resolve_project
from reconciler.desired._registries import DeclaredRegistry, resolve_registry
from reconciler.desired._schema import SUPPORTED_VERSIONS, DocumentEntry
from reconciler.desired._spots import shorten
from reconciler.desired._yaml import Parsed


@dataclass(frozen=True, slots=True)
class Declarations:
    """What one file declares, leaving out every entry that has a problem."""

    registries: tuple[DeclaredRegistry, ...] = ()
    images: tuple[DeclaredImage, ...] = ()
    projects: tuple[DeclaredProject, ...] = ()


def declarations_of(
    parsed: Parsed, directory: Path, report: FileReport
) -> Declarations:
    """Resolve a parsed file; `directory` is where its relative paths start."""
    data = parsed.data
    if not isinstance(data, dict):
        message = "the file must be a mapping with version, registries, defaults"
        message += f" and images, not {describe_kind(data)}"
        report.add((), message, "start the file with `version: 1`")
        return Declarations()
    if not _supported_version(data, report):
        return Declarations()
    # Reports unknown sections and sections of the wrong type; the sections
    # that are fine are still checked below, entry by entry.
    validate(DocumentEntry, data, (), report)
    return Declarations(
        registries=_registries(data, directory, report),
        images=_images(data, report),
        projects=_projects(data, report),
    )


def _supported_version(data: dict[str, Any], report: FileReport) -> bool:
    if "version" not in data:
        hint = "start the file with `version: 1`"
        report.add(("version",), "missing required field 'version'", hint)
        return True  # read as version 1, the only one there is
    value = data["version"]
    if type(value) is int and value in SUPPORTED_VERSIONS:
        return True
    written = report.spots.written(("version",)) or describe_kind(value)
    shown = repr(value) if isinstance(value, str) else written
    supported = ", ".join(str(version) for version in SUPPORTED_VERSIONS)
    hint = f"supported versions: {supported}, written as a number"
    report.add(("version",), f"unsupported format version {shorten(shown)}", hint)
    return False


def _registries(
    data: dict[str, Any], directory: Path, report: FileReport
) -> tuple[DeclaredRegistry, ...]:
    entries = _section(data, "registries", dict)
    declared = (
        resolve_registry(
            host,
            entry,
            directory,
            report,
        )
        for host, entry in entries.items()
    )
    return tuple(registry for registry in declared if registry is not None)


def _projects(data: dict[str, Any], report: FileReport) -> tuple[DeclaredProject, ...]:
    entries = _section(data, "projects", dict)
    declared = (
        resolve_project(address, entry, report) for address, entry in entries.items()
    )
    return tuple(project for project in declared if project is not None)


def _images(data: dict[str, Any], report: FileReport) -> tuple[DeclaredImage, ...]:
    defaults = resolve_defaults(_section(data, "defaults", dict), report)
    entries = _section(data, "images", list)
    declared = (
        resolve_image(entry, ("images", index), defaults, report)
        for index, entry in enumerate(entries)
    )
    return tuple(image for image in declared if image is not None)


def _section(data: dict[str, Any], name: str, kind: type[Any]) -> Any:
    value = data.get(name)
    return value if isinstance(value, kind) else kind()
