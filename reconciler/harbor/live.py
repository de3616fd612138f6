"""Read the live state through Harbor's artifact API, for hosts that run Harbor.

One listing per repository (`artifacts?with_tag=true&with_immutable_status=
true`, 100 a page) tells every tag's digest and media type, each index's
children with their platforms (`references[]`) and each image's platform
(`extra_attrs`). Harbor counts none of it as a pull; a GET of a manifest on
/v2 is one, and resets the `pull_time` that retention rules go by.

What the artifact API cannot tell is read through /v2, as `reconciler.live`
reads it, so that the plan is the one the /v2 reader would make:

- a manifest's exact size, which Harbor's `size` is not (it adds config and
  layers): one HEAD for each source image (its size goes into the index
  bytes), for each version an alias is to move to (the alias copies it),
  and for each tag that pruning may destroy (the plan shows its size);
- index bytes, where the plan compares or explains them: source indexes,
  and version indexes that differ from the plan's (GET);
- a variant Harbor does not keep: Harbor 2.x copies only `architecture`
  and `os` from the config into `extra_attrs`
  (controller/artifact/processor/image/manifest_v2.go), so for arm and
  arm64, where variants are usual, the config is read (GET).

The live state says that Harbor hosts delete single tags (`tag_deletion`):
pruning there deletes a tag through Harbor's tag API and keeps the manifest.

Hosts that do not run Harbor are read through /v2 throughout. Sizes the
plan never reads (targets it does not copy, children of indexes it only
searches for a digest) are `UNKNOWN_SIZE`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from reconciler.desired import DesiredState
from reconciler.harbor.errors import ProjectNotFoundError
from reconciler.harbor.models import Artifact
from reconciler.harbor.sites import HarborSites
from reconciler.live import LiveFacts, read_descriptors
from reconciler.oci import (
    INDEX_MEDIA_TYPES,
    Descriptor,
    Digest,
    ImageManifest,
    Index,
    Platform,
    Reference,
    Repository,
)
from reconciler.plan._build import (
    expected_digest,
    pick_child,
    read_addresses,
    source_references,
)
from reconciler.plan.state import LiveState
from reconciler.registries import Registries
from reconciler.registry import IntegrityError, PermissionDeniedError

__all__ = [
    "UNKNOWN_SIZE",
    "HarborReading",
    "RepositoryView",
    "artifact_platform",
    "read_harbor_live",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_WORKERS = 32
UNKNOWN_SIZE = 0
"""The size of a descriptor whose exact size the plan never reads."""

# Architectures whose images commonly declare a variant (arm/v6, arm/v7,
# arm64/v8); an `extra_attrs` without one says nothing about theirs.
_VARIANT_ARCHITECTURES = frozenset({"arm", "arm64"})
# Tags cosign and friends attach to a digest: never pruned (plan.prune).
_ATTACHED = re.compile(r"^sha256-[a-f0-9]{64}(\.[a-z]+)?$")


@dataclass(frozen=True, slots=True)
class RepositoryView:
    """One repository as Harbor's artifact API lists it."""

    repository: Repository
    by_digest: Mapping[Digest, Artifact] = field(default_factory=dict)
    by_tag: Mapping[str, Artifact] = field(default_factory=dict)
    project_missing: bool = False
    """Harbor has no project for the repository; it then has no artifacts."""

    @classmethod
    def of(
        cls, repository: Repository, artifacts: Iterable[Artifact]
    ) -> RepositoryView:
        """A view of the listed `artifacts`."""
        listed = list(artifacts)
        by_tag = {tag.name: a for a in listed for tag in a.tags}
        return cls(repository, {a.digest: a for a in listed}, by_tag)

    @property
    def tags(self) -> tuple[str, ...]:
        """Every tag of the repository, sorted."""
        return tuple(sorted(self.by_tag))

    def descriptor(self, tag: str) -> Descriptor | None:
        """What `tag` points at, its size unknown; None when there is no such tag."""
        found = self.by_tag.get(tag)
        if found is None:
            return None
        return Descriptor(found.manifest_media_type, found.digest, UNKNOWN_SIZE)

    def is_immutable(self, tag: str) -> bool:
        """Whether a tag immutability rule protects `tag` (listed with its status)."""
        found = self.by_tag.get(tag)
        marked = found.tag(tag) if found is not None else None
        return marked is not None and marked.immutable

    def children(self, digest: Digest) -> tuple[Descriptor, ...] | None:
        """The platform children of the index `digest`, their sizes unknown."""
        index = self.by_digest.get(digest)
        if index is None or not index.is_index:
            return None
        return tuple(
            Descriptor(
                self._media_type(r.child_digest),
                r.child_digest,
                UNKNOWN_SIZE,
                r.platform,
            )
            for r in index.references
            if r.platform is not None and not r.is_attestation
        )

    def _media_type(self, digest: Digest) -> str:
        child = self.by_digest.get(digest)
        return child.manifest_media_type if child is not None else ""


@dataclass(frozen=True, slots=True)
class HarborReading:
    """The live state, and the listings it was read from, by repository."""

    live: LiveState
    views: Mapping[Repository, RepositoryView]


def artifact_platform(artifact: Artifact) -> Platform | None:
    """The platform `extra_attrs` gives an image, or None when it cannot tell.

    It cannot tell without `os` and `architecture`, nor for an arm image
    whose attributes have no `variant` key, which Harbor 2.x never writes.
    """
    attrs = artifact.extra_attrs
    os_, architecture = attrs.get("os"), attrs.get("architecture")
    if not (isinstance(os_, str) and isinstance(architecture, str)):
        return None
    if not (os_ and architecture):
        return None
    variant = attrs.get("variant")
    if isinstance(variant, str):
        return Platform(os_, architecture, variant or None)
    if architecture in _VARIANT_ARCHITECTURES:
        return None
    return Platform(os_, architecture)


def read_harbor_live(
    desired: DesiredState,
    registries: Registries,
    harbor_hosts: frozenset[str],
    *,
    workers: int = DEFAULT_WORKERS,
) -> HarborReading:
    """Read what `reconciler.live.read_live` reads, through the artifact API
    on `harbor_hosts` and through /v2 elsewhere.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="harbor") as pool:
        reading = _Reading(registries, pool)
        reading.list_repositories(_repositories(desired, harbor_hosts))
        reading.read_addresses(read_addresses(desired))
        reading.read_sources(desired)
        reading.read_alias_targets(desired)
        reading.read_drifted_indexes(desired)
        reading.read_pruned_repositories(desired)
    logger.info(
        "read %d addresses, %d repositories through Harbor's artifact API",
        len(reading.facts.tags),
        len(reading.views),
    )
    live = dataclasses.replace(reading.facts.freeze(), tag_deletion=harbor_hosts)
    return HarborReading(live, dict(reading.views))


class _Reading:
    """One run of the reader: the listings, the facts, and the pool."""

    def __init__(self, registries: Registries, pool: ThreadPoolExecutor) -> None:
        self._registries = registries
        self._harbor: HarborSites = registries.harbor
        self._pool = pool
        self.views: dict[Repository, RepositoryView] = {}
        self.facts = LiveFacts()

    # -- the steps, in the order of reconciler.live ---------------------------

    def list_repositories(self, repositories: Iterable[Repository]) -> None:
        """List the artifacts of every repository, concurrently."""
        todo = sorted(set(repositories))
        for repository, view in zip(todo, self._map(self._list, todo), strict=True):
            if view is not None:
                self.views[repository] = view

    def read_addresses(self, refs: Iterable[Reference]) -> None:
        """What each address points at: from a listing, else by HEAD."""
        unlisted = set()
        for ref in set(refs):
            view = self.views.get(ref.repository)
            if view is None:
                unlisted.add(ref)
            else:
                self.facts.tags[ref] = view.descriptor(str(ref.tag))
        self._heads(unlisted)

    def read_sources(self, desired: DesiredState) -> None:
        """Exact sources, the children of source indexes, then source platforms."""
        sources = source_references(desired)
        self._exact({ref for ref, _ in sources if self._is_image(ref)})
        present = [(r, p, f) for r, p in sources if (f := self.facts.tags.get(r))]
        indexes = {
            (ref.repository, found.digest)
            for ref, _, found in present
            if found.media_type in INDEX_MEDIA_TYPES
        }
        self._read_indexes(indexes)
        images = {
            (ref.repository, digest)
            for ref, platform, found in present
            for digest in self._image_digest(found, platform)
        }
        self._read_platforms(images)

    def read_alias_targets(self, desired: DesiredState) -> None:
        """Exact versions that an alias is to move to: the alias copies them."""
        self._exact(
            image.version_ref(version)
            for image in desired.images
            for alias, version in image.aliases.items()
            if self._alias_moves(image.alias_ref(alias), image.version_ref(version))
        )

    def read_drifted_indexes(self, desired: DesiredState) -> None:
        """The bytes of version indexes that differ from what the plan builds."""
        live = self.facts.freeze()
        drifted = set()
        for image in desired.images:
            for version in image.versions:
                found = live.tags.get(image.version_ref(version))
                if found is None or found.media_type not in INDEX_MEDIA_TYPES:
                    continue
                if found.digest != expected_digest(image, version, live):
                    drifted.add((image.repository, found.digest))
        self._read_indexes(drifted)

    def read_pruned_repositories(self, desired: DesiredState) -> None:
        """Every tag of repositories that prune, and the children of their
        indexes; exact sizes for the tags pruning may destroy.
        """
        pruning = sorted({image.repository for image in desired.images if image.prune})
        listed = self._map(self._repository_tags, pruning)
        self.facts.repository_tags.update(zip(pruning, listed, strict=True))
        refs = [r.tag(t) for r, tags in zip(pruning, listed, strict=True) for t in tags]
        self.read_addresses(ref for ref in refs if ref not in self.facts.tags)
        claimed = {i.repository.tag(t) for i in desired.images for t in i.tags()}
        self._exact(
            ref
            for ref in refs
            if ref not in claimed and not _ATTACHED.match(str(ref.tag))
        )
        self._read_pruned_indexes(refs)

    # -- reading one thing -----------------------------------------------------

    def _list(self, repository: Repository) -> RepositoryView | None:
        """The repository's listing; None when the account may not list it,
        and then it is read through /v2, as a plain registry is.
        """
        client = self._harbor.client(repository.registry)
        project, _, name = repository.path.partition("/")
        if not name:
            # Harbor keeps every repository in a project; the checks say so.
            return RepositoryView(repository, project_missing=True)
        try:
            artifacts = client.artifacts(project, name)
        except ProjectNotFoundError:
            # Reported by the plan's Harbor checks, with what to do.
            return RepositoryView(repository, project_missing=True)
        except PermissionDeniedError as error:
            # A robot may pull without the artifact list permission.
            logger.info("reading %s through /v2: %s", repository, error.message)
            return None
        return RepositoryView.of(repository, artifacts)

    def _heads(self, refs: Iterable[Reference]) -> None:
        """HEAD `refs` through /v2 as the /v2 reader does: tokens up front,
        many repositories a request, then the HEADs pipelined.
        """
        self.facts.tags.update(read_descriptors(self._registries, refs, self._pool))

    def _exact(self, refs: Iterable[Reference]) -> None:
        """HEAD the listed `refs` whose exact size the plan reads."""
        self._heads(ref for ref in refs if ref.repository in self.views)

    def _is_image(self, ref: Reference) -> bool:
        found = self.facts.tags.get(ref)
        return found is not None and found.media_type not in INDEX_MEDIA_TYPES

    def _alias_moves(self, alias: Reference, version: Reference) -> bool:
        target = self.facts.tags.get(version)
        now = self.facts.tags.get(alias)
        return target is not None and (now is None or now.digest != target.digest)

    def _image_digest(self, found: Descriptor, platform: Platform) -> list[Digest]:
        if found.media_type not in INDEX_MEDIA_TYPES:
            return [found.digest]
        child = pick_child(self.facts.indexes.get(found.digest, ()), platform)
        return [child.digest] if child else []

    def _read_indexes(self, indexes: set[tuple[Repository, Digest]]) -> None:
        """Read indexes by GET on /v2: the plan needs their bytes."""
        todo = sorted((r, d) for r, d in indexes if d not in self.facts.documents)
        for (_, digest), index in zip(
            todo, self._map(lambda rd: self._index(*rd), todo), strict=True
        ):
            self.facts.indexes[digest] = index.images
            self.facts.documents[digest] = index.raw

    def _read_pruned_indexes(self, refs: Iterable[Reference]) -> None:
        """Children of the indexes in pruning repositories: from `references[]`
        where listed (pruning reads only their digests), else by GET.
        """
        unread: set[tuple[Repository, Digest]] = set()
        for ref in refs:
            found = self.facts.tags.get(ref)
            if found is None or found.media_type not in INDEX_MEDIA_TYPES:
                continue
            if found.digest in self.facts.indexes:
                continue
            view = self.views.get(ref.repository)
            children = view.children(found.digest) if view is not None else None
            if children is None:
                unread.add((ref.repository, found.digest))
            else:
                self.facts.indexes[found.digest] = children
        self._read_indexes(unread)

    def _read_platforms(self, images: set[tuple[Repository, Digest]]) -> None:
        """Platforms from `extra_attrs` where they tell, else from the config."""
        todo = []
        for repository, digest in sorted(images):
            if digest in self.facts.platforms:
                continue
            platform = self._listed_platform(repository, digest)
            if platform is None:
                todo.append((repository, digest))
            else:
                self.facts.platforms[digest] = platform
        read = self._map(lambda rd: self._config_platform(*rd), todo)
        for (_, digest), platform in zip(todo, read, strict=True):
            self.facts.platforms[digest] = platform

    def _listed_platform(
        self, repository: Repository, digest: Digest
    ) -> Platform | None:
        view = self.views.get(repository)
        artifact = view.by_digest.get(digest) if view is not None else None
        return artifact_platform(artifact) if artifact is not None else None

    def _repository_tags(self, repository: Repository) -> tuple[str, ...]:
        view = self.views.get(repository)
        if view is not None:
            return view.tags
        client = self._registries.client(repository.registry)
        return tuple(sorted(client.tag_list(repository)))

    def _index(self, repository: Repository, digest: Digest) -> Index:
        client = self._registries.client(repository.registry)
        manifest = client.manifest_get(repository.digest(digest)).manifest
        if not isinstance(manifest, Index):
            raise IntegrityError(f"{repository}@{digest} is not an index")
        return manifest

    def _config_platform(self, repository: Repository, digest: Digest) -> Platform:
        client = self._registries.client(repository.registry)
        manifest = client.manifest_get(repository.digest(digest)).manifest
        if not isinstance(manifest, ImageManifest):
            raise IntegrityError(f"{repository}@{digest} is not an image manifest")
        config = client.blob_get(repository, manifest.config.digest)
        return _platform_of_config(repository, digest, config)

    def _map(self, function: Callable[[T], R], items: Iterable[T]) -> list[R]:
        return list(self._pool.map(function, items))


def _repositories(
    desired: DesiredState, harbor_hosts: frozenset[str]
) -> set[Repository]:
    """The repositories to list: every one on a Harbor host that is read."""
    found = {ref.repository for ref in read_addresses(desired)}
    found |= {image.repository for image in desired.images if image.prune}
    return {r for r in found if r.registry in harbor_hosts}


def _platform_of_config(
    repository: Repository, digest: Digest, config: bytes
) -> Platform:
    # The same reading, and the same error, as reconciler.live's.
    platform = Platform.from_config(config)
    if platform is None:
        raise IntegrityError(
            f"the image config of {repository}@{digest.short} declares no platform",
            hint="rebuild the image; its config lacks os and architecture",
        )
    return platform
