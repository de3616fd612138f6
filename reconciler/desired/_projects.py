"""Resolving the `projects:` entries of one file: Harbor projects to create."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from reconciler.desired._explain import validate
from reconciler.desired._problems import FileReport
from reconciler.desired._schema import ProjectEntry
from reconciler.desired._spots import FieldPath, Spot
from reconciler.desired.models import ProjectSettings
from reconciler.oci import InvalidReferenceError, Repository

# Harbor's rule for project names (src/common/utils/utils.go, 2.x): lower-case
# letters and digits, separated by single `.`, `_` or `-`, at most 255 long.
_PROJECT_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*\Z")
_MAX_NAME = 255


@dataclass(frozen=True, slots=True)
class DeclaredProject:
    """A project and where it is written."""

    settings: ProjectSettings
    file: str
    spot: Spot
    path: FieldPath


def resolve_project(
    address: str, data: Any, report: FileReport
) -> DeclaredProject | None:
    """The project at `host/name`, or None after reporting what is wrong."""
    where: FieldPath = ("projects", address)
    # `host/name:` with nothing after it asks for Harbor's default: private.
    entry = validate(ProjectEntry, {} if data is None else data, where, report)
    split = _split(address, where, report)
    if entry is None or split is None:
        return None
    host, name = split
    settings = ProjectSettings(host=host, name=name, public=entry.public)
    return DeclaredProject(settings, report.file, report.spots.key(where), where)


def _split(
    address: str, where: FieldPath, report: FileReport
) -> tuple[str, str] | None:
    """`host/name` as (host, name), or None after reporting what is wrong."""
    hint = "write the registry host and the project, e.g. harbor.example.com/library"
    try:
        repository = Repository.parse(address)
    except InvalidReferenceError as error:
        report.add(
            where, f"{address!r} is not a project: {error.message}", hint, on_key=True
        )
        return None
    name = repository.path
    if "/" in name:
        message = f"{address!r} names a repository, not a project"
        report.add(where, message, hint, on_key=True)
        return None
    if not _PROJECT_NAME.match(name) or len(name) > _MAX_NAME:
        message = f"{name!r} is not a valid Harbor project name"
        project_hint = (
            "lower-case letters and digits, separated by single '.', '_' or "
            "'-', e.g. platform-images"
        )
        report.add(where, message, project_hint, on_key=True)
        return None
    return repository.registry, name
