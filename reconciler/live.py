"""Read the live state the planner needs, concurrently.

Every address is read with one HEAD. GET is used only for what HEAD cannot
tell: the config platform of a source image and the children of a source
index (both cached on disk by digest, as they never change; see
`reconciler.cache`), and the children of a version index whose digest
differs from the one the plan would build. With nothing in that cache, as
on a first run, sources are read with GET straight away, since their
manifests are needed anyway.

A repository whose first address is missing may not exist at all, or be
new: its tags are listed, and only the listed addresses are read. A new
image then costs two requests, not one per address.

Tokens for every repository read are asked for up front, many repositories
per token request, before the HEADs start.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from reconciler.cache import FactCache
from reconciler.desired import DesiredState
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
from reconciler.registry import IntegrityError, ManifestInfo, RegistryError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Measured (bench/): 8 beat 4, 16 and 32 on 2 cores while the client spent
# ~1 ms of CPU a request; at ~0.7 ms, 8, 16, 32 and 64 are within noise.
DEFAULT_WORKERS = 8
# HEADs sent back to back on one connection (HTTP/1.1 pipelining).
PIPELINE = 16


@dataclass
class LiveFacts:
    """What has been read so far; filled in steps, frozen into a LiveState."""

    tags: dict[Reference, Descriptor | None] = field(default_factory=dict)
    platforms: dict[Digest, Platform] = field(default_factory=dict)
    indexes: dict[Digest, tuple[Descriptor, ...]] = field(default_factory=dict)
    repository_tags: dict[Repository, tuple[str, ...]] = field(default_factory=dict)
    documents: dict[Digest, bytes] = field(default_factory=dict)

    def freeze(self) -> LiveState:
        return LiveState(
            dict(self.tags),
            dict(self.platforms),
            dict(self.indexes),
            dict(self.repository_tags),
            dict(self.documents),
        )


def read_live(
    desired: DesiredState,
    registries: Registries,
    *,
    workers: int = DEFAULT_WORKERS,
    cache: FactCache | None = None,
) -> LiveState:
    """Read every address `desired` touches, and what the plan needs about it.

    `cache` defaults to the one the environment names (`FactCache`).
    """
    cache = FactCache.from_environment() if cache is None else cache
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read") as pool:
        reader = _Reader(registries, pool, cache)
        facts = LiveFacts()
        addresses = read_addresses(desired)
        reader.prefetch_tokens(addresses)
        fetch = set() if reader.cache.has_platforms() else _sources(desired)
        facts.tags = reader.get_all(fetch) | reader.head_all(addresses - fetch)
        _read_sources(desired, reader, facts)
        _read_drifted_indexes(desired, reader, facts)
        _read_pruned_repositories(desired, reader, facts)
    logger.info("read %d addresses", len(facts.tags))
    return facts.freeze()


def read_digests(
    registries: Registries,
    refs: Iterable[Reference],
    *,
    workers: int = DEFAULT_WORKERS,
) -> dict[Reference, Digest | None]:
    """What each of `refs` points at now, each read with one HEAD.

    Read as a plan reads: tokens for every repository asked for up front,
    many repositories per token request, then the HEADs pipelined.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read") as pool:
        found = read_descriptors(registries, refs, pool)
    return {ref: None if d is None else d.digest for ref, d in found.items()}


def read_descriptors(
    registries: Registries, refs: Iterable[Reference], pool: ThreadPoolExecutor
) -> dict[Reference, Descriptor | None]:
    """What each of `refs` points at, read as in `read_digests` on `pool`."""
    unique = sorted(set(refs))
    reader = _Reader(registries, pool, FactCache.disabled())
    reader.prefetch_tokens(unique)
    return reader.heads(unique)


class _Reader:
    """Reads through the registries, many at once."""

    def __init__(
        self, registries: Registries, pool: ThreadPoolExecutor, cache: FactCache
    ) -> None:
        self._registries = registries
        self._pool = pool
        self.cache = cache

    def map(self, function: Callable[[T], R], items: Iterable[T]) -> list[R]:
        return list(self._pool.map(function, items))

    def prefetch_tokens(self, refs: Iterable[Reference]) -> None:
        """Ask each registry for pull tokens on every repository of `refs`."""
        by_host: dict[str, set[Repository]] = {}
        for ref in refs:
            by_host.setdefault(ref.registry, set()).add(ref.repository)
        for host, repositories in sorted(by_host.items()):
            self._registries.client(host).prefetch_tokens(
                sorted(repositories), each=self.map
            )

    def head_all(self, refs: Iterable[Reference]) -> dict[Reference, Descriptor | None]:
        """What each of `refs` points at, skipping tags a listing shows missing.

        The first reference of each repository with more than two is read
        first; where it is missing, the repository's tags are listed.
        """
        unique = sorted(set(refs))
        by_repository: dict[Repository, list[Reference]] = {}
        for ref in unique:
            by_repository.setdefault(ref.repository, []).append(ref)
        probes = [group[0] for group in by_repository.values() if len(group) > 2]
        found = self.heads(probes)
        unseen = [probe.repository for probe in probes if found[probe] is None]
        listed = dict(zip(unseen, self.map(self._listed, unseen), strict=True))
        rest = [
            ref
            for ref in unique
            if ref not in found and _may_exist(ref, listed.get(ref.repository))
        ]
        found |= self.heads(rest)
        return {ref: found.get(ref) for ref in unique}

    def heads(self, refs: list[Reference]) -> dict[Reference, Descriptor | None]:
        """HEAD `refs` (sorted), `PIPELINE` at a time on a connection."""
        batches = []
        for _, same_host in itertools.groupby(refs, key=lambda ref: ref.registry):
            group = tuple(same_host)
            batches += [group[i : i + PIPELINE] for i in range(0, len(group), PIPELINE)]
        read = self.map(self._head_batch, batches)
        return {
            ref: found
            for batch, descriptors in zip(batches, read, strict=True)
            for ref, found in zip(batch, descriptors, strict=True)
        }

    def _head_batch(self, refs: tuple[Reference, ...]) -> list[Descriptor | None]:
        client = self._registries.client(refs[0].registry)
        return [
            None
            if info is None
            else Descriptor(info.media_type, info.digest, info.size)
            for info in client.manifest_heads(refs)
        ]

    def get_all(self, refs: Iterable[Reference]) -> dict[Reference, Descriptor | None]:
        """Like `head_all`, reading the manifests too; the client keeps them."""
        return self._read(self.get, sorted(set(refs)))

    def get(self, ref: Reference) -> Descriptor | None:
        fetched = self._registries.client(ref.registry).manifest_find(ref)
        return None if fetched is None else _described(fetched.info)

    def _read(
        self,
        function: Callable[[Reference], Descriptor | None],
        refs: list[Reference],
    ) -> dict[Reference, Descriptor | None]:
        return dict(zip(refs, self.map(function, refs), strict=True))

    def _listed(self, repository: Repository) -> frozenset[str] | None:
        """The repository's tags, or None when it may not be listed."""
        try:
            return frozenset(self.tags(repository))
        except RegistryError as error:
            logger.debug("cannot list the tags of %s: %s", repository, error)
            return None

    def tags(self, repository: Repository) -> tuple[str, ...]:
        """Every tag of the repository."""
        client = self._registries.client(repository.registry)
        return tuple(sorted(client.tag_list(repository)))

    def index(self, repository: Repository, digest: Digest) -> Index:
        """An index, read by digest."""
        manifest = self._get(repository, digest)
        if not isinstance(manifest, Index):
            raise IntegrityError(f"{repository}@{digest} is not an index")
        return manifest

    def platform(self, repository: Repository, digest: Digest) -> Platform:
        """The platform an image's config declares."""
        manifest = self._get(repository, digest)
        if not isinstance(manifest, ImageManifest):
            raise IntegrityError(f"{repository}@{digest} is not an image manifest")
        client = self._registries.client(repository.registry)
        config = client.blob_get(repository, manifest.config.digest)
        return _config_platform(repository, digest, config)

    def _get(self, repository: Repository, digest: Digest) -> ImageManifest | Index:
        client = self._registries.client(repository.registry)
        return client.manifest_get(repository.digest(digest)).manifest


def _described(info: ManifestInfo | None) -> Descriptor | None:
    return None if info is None else Descriptor(info.media_type, info.digest, info.size)


def _sources(desired: DesiredState) -> set[Reference]:
    return {ref for ref, _ in source_references(desired)}


def _may_exist(ref: Reference, listed: frozenset[str] | None) -> bool:
    """Whether `ref` needs reading, given its repository's tags if listed."""
    return listed is None or ref.tag is None or ref.tag in listed


def _read_sources(desired: DesiredState, reader: _Reader, facts: LiveFacts) -> None:
    """Children of source indexes, then the platform of every source image."""
    wanted = [(ref, p, facts.tags[ref]) for ref, p in source_references(desired)]
    present = [(ref, p, found) for ref, p, found in wanted if found is not None]
    index_sources = {
        (ref.repository, found.digest)
        for ref, _, found in present
        if found.media_type in INDEX_MEDIA_TYPES
    }
    recalled = _recall_children(reader.cache, facts, index_sources)
    _read_children(reader, facts, index_sources - recalled)
    images = {
        (ref.repository, d)
        for ref, p, found in present
        for d in _image_digest(found, p, facts)
    }
    todo = sorted(_unknown_platforms(reader.cache, facts, images))
    for (_, digest), platform in zip(
        todo, reader.map(lambda rd: reader.platform(*rd), todo), strict=True
    ):
        facts.platforms[digest] = platform
        reader.cache.put_platform(digest, platform)


def _recall_children(
    cache: FactCache, facts: LiveFacts, indexes: set[tuple[Repository, Digest]]
) -> set[tuple[Repository, Digest]]:
    """Fill in the children of `indexes` that the cache knows; return those."""
    recalled = set()
    for repository, digest in indexes:
        children = facts.indexes.get(digest) or cache.children(digest)
        if children is not None:
            facts.indexes[digest] = children
            recalled.add((repository, digest))
    return recalled


def _unknown_platforms(
    cache: FactCache, facts: LiveFacts, images: set[tuple[Repository, Digest]]
) -> set[tuple[Repository, Digest]]:
    """The images whose platform neither the run nor the cache knows."""
    unknown = set()
    for repository, digest in images:
        platform = facts.platforms.get(digest) or cache.platform(digest)
        if platform is None:
            unknown.add((repository, digest))
        else:
            facts.platforms[digest] = platform
    return unknown


def _image_digest(
    found: Descriptor, platform: Platform, facts: LiveFacts
) -> list[Digest]:
    if found.media_type not in INDEX_MEDIA_TYPES:
        return [found.digest]
    child = pick_child(facts.indexes.get(found.digest, ()), platform)
    return [child.digest] if child else []


def _read_children(
    reader: _Reader, facts: LiveFacts, indexes: set[tuple[Repository, Digest]]
) -> None:
    # Children recalled from the cache come without the document, which the
    # plan shows differences from; those are read here.
    todo = sorted((r, d) for r, d in indexes if d not in facts.documents)
    results = reader.map(lambda rd: reader.index(*rd), todo)
    for (_, digest), index in zip(todo, results, strict=True):
        facts.indexes[digest] = index.images
        facts.documents[digest] = index.raw
        reader.cache.put_children(digest, index.images)


def _read_drifted_indexes(
    desired: DesiredState, reader: _Reader, facts: LiveFacts
) -> None:
    """Children of version indexes that differ from what the plan would build."""
    drifted: set[tuple[Repository, Digest]] = set()
    live = facts.freeze()
    for image in desired.images:
        for version in image.versions:
            found = live.tags.get(image.version_ref(version))
            if found is None or found.media_type not in INDEX_MEDIA_TYPES:
                continue
            expected = expected_digest(image, version, live)
            if found.digest != expected:
                drifted.add((image.repository, found.digest))
    _read_children(reader, facts, drifted)


def _config_platform(repository: Repository, digest: Digest, config: bytes) -> Platform:
    platform = Platform.from_config(config)
    if platform is None:
        raise IntegrityError(
            f"the image config of {repository}@{digest.short} declares no platform",
            hint="rebuild the image; its config lacks os and architecture",
        )
    return platform


def _read_pruned_repositories(
    desired: DesiredState, reader: _Reader, facts: LiveFacts
) -> None:
    """Every tag of repositories that prune, and the children of their indexes.

    Pruning must know every tag on a manifest before deleting it, and every
    index that stays and could list it.
    """
    repositories = sorted({i.repository for i in desired.images if i.prune})
    listed = reader.map(reader.tags, repositories)
    facts.repository_tags.update(zip(repositories, listed, strict=True))
    unread = [
        r.tag(t) for r, tags in zip(repositories, listed, strict=True) for t in tags
    ]
    facts.tags.update(reader.head_all(ref for ref in unread if ref not in facts.tags))
    indexes = {
        (ref.repository, found.digest)
        for ref in unread
        if (found := facts.tags.get(ref)) and found.media_type in INDEX_MEDIA_TYPES
    }
    _read_children(reader, facts, indexes)
