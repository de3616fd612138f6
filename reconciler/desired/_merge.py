"""Merging the declarations of all files into one desired state.

What no single file can get wrong on its own is checked here: an address
claimed twice, a registry configured two ways, a registry host with no way
to connect.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import fields

from reconciler.desired._document import Declarations
from reconciler.desired._images import DeclaredImage, HostUse
from reconciler.desired._problems import Problem
from reconciler.desired._projects import DeclaredProject
from reconciler.desired._registries import DeclaredRegistry
from reconciler.desired.models import DesiredState, ProjectSettings, RegistrySettings

KnownHosts = Callable[[str], bool]


def merge(
    files: Sequence[Declarations],
    known_hosts: KnownHosts | None,
    problems: list[Problem],
) -> DesiredState:
    """One state from all files, with every conflict added to `problems`."""
    registries = _merge_registries(
        [registry for file in files for registry in file.registries], problems
    )
    images = [image for file in files for image in file.images]
    _check_addresses(images, problems)
    if known_hosts is not None:
        _check_hosts(images, registries.keys(), known_hosts, problems)
    projects = _merge_projects(
        [project for file in files for project in file.projects], registries, problems
    )
    ordered = sorted(
        images, key=lambda d: (d.image.repository, d.image.file, d.spot.line)
    )
    return DesiredState(
        registries=registries,
        images=tuple(d.image for d in ordered),
        projects=projects,
    )


def _merge_registries(
    declared: Sequence[DeclaredRegistry], problems: list[Problem]
) -> dict[str, RegistrySettings]:
    first: dict[str, DeclaredRegistry] = {}
    for registry in declared:
        seen = first.setdefault(registry.settings.host, registry)
        if seen.settings != registry.settings:
            problems.append(_registry_conflict(seen, registry))
    return {host: registry.settings for host, registry in first.items()}


def _registry_conflict(first: DeclaredRegistry, again: DeclaredRegistry) -> Problem:
    differ = [
        field.name
        for field in fields(RegistrySettings)
        if getattr(first.settings, field.name) != getattr(again.settings, field.name)
    ]
    verb = "differs" if len(differ) == 1 else "differ"
    message = f"registry {again.settings.host} is configured differently in "
    message += f"{first.file}:{first.spot.line}: {', '.join(differ)} {verb}"
    hint = "configure each registry in one file, or the same way in every file"
    return Problem.at(
        again.file,
        again.spot,
        again.path,
        message,
        hint,
    )


def _merge_projects(
    declared: Sequence[DeclaredProject],
    registries: dict[str, RegistrySettings],
    problems: list[Problem],
) -> dict[str, ProjectSettings]:
    """Projects by address; one declared two ways is a problem naming both files."""
    first: dict[str, DeclaredProject] = {}
    for project in declared:
        address = project.settings.address
        seen = first.setdefault(address, project)
        if seen.settings != project.settings:
            problems.append(_project_conflict(seen, project))
        registry = registries.get(project.settings.host)
        if registry is not None and registry.kind == "registry":
            problems.append(_project_on_plain_registry(project))
    return {address: project.settings for address, project in first.items()}


def _project_conflict(first: DeclaredProject, again: DeclaredProject) -> Problem:
    def shown(project: DeclaredProject) -> str:
        return "public" if project.settings.public else "private"

    message = (
        f"project {again.settings.address} is declared {shown(again)} here and "
        f"{shown(first)} in {first.file}:{first.spot.line}"
    )
    hint = "declare each project in one file, or the same way in every file"
    return Problem.at(again.file, again.spot, again.path, message, hint)


def _project_on_plain_registry(project: DeclaredProject) -> Problem:
    host = project.settings.host
    message = f"projects are Harbor's, but registry {host} is declared kind: registry"
    hint = f"remove the project, or set kind: harbor (or auto) for {host}"
    return Problem.at(project.file, project.spot, project.path, message, hint)


def _check_addresses(images: Sequence[DeclaredImage], problems: list[Problem]) -> None:
    # The product brief: an address claimed by two files is an error that
    # names both. One problem per pair of images, naming the first address.
    owners: dict[str, int] = {}
    clashes: dict[tuple[int, int], list[str]] = {}
    for index, declared in enumerate(images):
        for tag in declared.image.tags():
            address = f"{declared.image.repository}:{tag}"
            owner = owners.setdefault(address, index)
            if owner != index:
                clashes.setdefault((owner, index), []).append(address)
    for (owner, index), addresses in clashes.items():
        problems.append(_address_clash(images[owner], images[index], addresses))


def _address_clash(
    owner: DeclaredImage, claimant: DeclaredImage, addresses: Sequence[str]
) -> Problem:
    image = owner.image
    message = (
        f"{addresses[0]} is also claimed by the image at {image.file}:{image.line}"
    )
    if len(addresses) > 1:
        message += f", and {len(addresses) - 1} more tags"
    hint = "each tag belongs to one image: remove it from one of them"
    return Problem.at(
        claimant.image.file,
        claimant.spot,
        claimant.path,
        message,
        hint,
    )


def _check_hosts(
    images: Sequence[DeclaredImage],
    configured: Collection[str],
    known_hosts: KnownHosts,
    problems: list[Problem],
) -> None:
    # Each host is looked up once, and reported where it is first used.
    checked = set(configured)
    for declared in images:
        for use in declared.hosts:
            if use.host not in checked and not known_hosts(use.host):
                problems.append(_unknown_host(declared.image.file, use))
            checked.add(use.host)


def _unknown_host(file: str, use: HostUse) -> Problem:
    message = f"registry {use.host} has no connection settings: no registries "
    message += "entry, and no credentials in Docker's config"
    hint = (
        f"add a registries entry for {use.host} (`{use.host}: {{}}` connects "
        f"anonymously over HTTPS), or run `docker login {use.host}`"
    )
    return Problem.at(
        file,
        use.spot,
        use.path,
        message,
        hint,
    )
