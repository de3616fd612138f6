"""Resolving the `registries:` entries of one file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.desired._explain import validate
from reconciler.desired._problems import FileReport
from reconciler.desired._schema import RegistryEntry
from reconciler.desired._spots import FieldPath, Spot
from reconciler.desired.models import Credentials, RegistrySettings
from reconciler.oci import InvalidReferenceError, Repository


@dataclass(frozen=True, slots=True)
class DeclaredRegistry:
    """Registry settings and where they are written."""

    settings: RegistrySettings
    file: str
    spot: Spot
    path: FieldPath


def resolve_registry(
    host: str, data: Any, directory: Path, report: FileReport
) -> DeclaredRegistry | None:
    """The settings for `host`, or None after reporting what is wrong."""
    where: FieldPath = ("registries", host)
    host_ok = _check_host(host, where, report)
    # `host:` with nothing after it asks for the defaults: HTTPS, Docker's
    # config for credentials.
    entry = validate(
        RegistryEntry,
        {} if data is None else data,
        where,
        report,
    )
    if entry is None or not host_ok:
        return None
    ca_ok = _check_ca_file(
        entry,
        directory,
        where,
        report,
    )
    if not (_check_consistent(entry, where, report) and ca_ok):
        return None
    ca_file = directory / entry.ca_file if entry.ca_file is not None else None
    settings = RegistrySettings(
        host=host,
        ca_file=ca_file.resolve() if ca_file is not None else None,
        insecure=entry.insecure,
        credentials=_credentials(entry),
        kind=entry.kind,
    )
    return DeclaredRegistry(settings, report.file, report.spots.key(where), where)


def _check_host(host: str, where: FieldPath, report: FileReport) -> bool:
    try:
        parsed = Repository.parse(f"{host}/probe").registry
    except InvalidReferenceError:
        parsed = None
    if parsed == host:
        return True
    hint = (
        "write host[:port], e.g. harbor.example.com or localhost:5000, "
        "without a scheme or a path"
    )
    report.add(
        where,
        f"{host!r} is not a registry host",
        hint,
        on_key=True,
    )
    return False


def _check_ca_file(
    entry: RegistryEntry, directory: Path, where: FieldPath, report: FileReport
) -> bool:
    if entry.ca_file is None:
        return True
    path = directory / entry.ca_file
    if path.is_file():
        return True
    message = f"ca_file {entry.ca_file!r} does not exist"
    hint = (
        "the path is relative to the folder of this file; "
        f"it points at {os.path.normpath(path)}"
    )
    report.add((*where, "ca_file"), message, hint)
    return False


def _check_consistent(
    entry: RegistryEntry, where: FieldPath, report: FileReport
) -> bool:
    if not (entry.insecure and entry.ca_file is not None):
        return True
    message = "contradicts ca_file: insecure means plain HTTP, where no CA is used"
    hint = "keep ca_file for HTTPS with a private CA, or insecure for plain HTTP"
    report.add(
        (*where, "insecure"),
        message,
        hint,
        on_key=True,
    )
    return False


def _credentials(entry: RegistryEntry) -> Credentials | None:
    if entry.credentials is None:
        return None
    return Credentials(entry.credentials.username_env, entry.credentials.password_env)
