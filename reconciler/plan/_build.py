"""Pure steps shared by the live reader and the planner.

Which child of a source index serves a platform, what the desired index of a
version is, and where its children come from. No I/O.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from reconciler.desired import DesiredState, Image
from reconciler.oci import (
    DOCKER_MANIFEST_LIST,
    INDEX_MEDIA_TYPES,
    OCI_INDEX,
    Descriptor,
    Digest,
    Platform,
    Reference,
    build_index,
    index_media_type_for,
)
from reconciler.plan.state import LiveState

_INDEX_TYPES = {"oci": OCI_INDEX, "docker": DOCKER_MANIFEST_LIST}


class SourceProblem(Exception):
    """A source that cannot serve its platform; the message says why."""


@dataclass(frozen=True, slots=True)
class Source:
    """The platform manifest that a platform tag must point at."""

    wanted: Platform
    reference: Reference  # as the desired state names it
    descriptor: Descriptor  # its digest, media type, size and config platform

    @property
    def copy_from(self) -> Reference:
        """The manifest by digest, in the repository that holds it."""
        return self.reference.repository.digest(self.descriptor.digest)


@dataclass(frozen=True, slots=True)
class DesiredIndex:
    """The exact bytes of a version's index, and its digest."""

    media_type: str
    content: bytes
    children: tuple[Descriptor, ...]

    @property
    def digest(self) -> Digest:
        return Digest.of(self.content)


@functools.lru_cache(maxsize=1 << 16)
def source_reference(image: Image, version: str, platform: Platform) -> Reference:
    """Where the platform manifest comes from: `source`, else the platform tag.

    Kept: a plan asks several times for each, and each answer renders a
    template and parses a reference.
    """
    return image.source_ref(version, platform) or image.platform_ref(version, platform)


def pick_child(
    children: tuple[Descriptor, ...], platform: Platform
) -> Descriptor | None:
    """The child of a source index that the index itself lists for `platform`."""
    return next(
        (c for c in children if c.platform and c.platform.matches(platform)), None
    )


def resolve_source(
    image: Image, version: str, platform: Platform, live: LiveState
) -> Source:
    """The manifest that serves `platform`, its platform checked against its config."""
    ref = source_reference(image, version, platform)
    found = live.tags.get(ref)
    if found is None:
        raise SourceProblem(_missing(image, ref))
    if found.media_type in INDEX_MEDIA_TYPES:
        found = _child_of(ref, found, platform, live)
    actual = live.platforms.get(found.digest)
    if actual is None:
        raise SourceProblem(f"the platform of {ref} ({found.digest.short}) is unknown")
    if not actual.matches(platform):
        raise SourceProblem(
            f"{ref} was listed for {platform}, but its image config says {actual}"
        )
    descriptor = Descriptor(found.media_type, found.digest, found.size, actual)
    return Source(platform, ref, descriptor)


def desired_index(image: Image, sources: list[Source]) -> DesiredIndex:
    """Build the version's index from its sources, in the file's platform order."""
    children = tuple(source.descriptor for source in sources)
    if image.index_media_type:
        media_type = _INDEX_TYPES[image.index_media_type]
    else:
        media_type = index_media_type_for(c.media_type for c in children)
    return DesiredIndex(media_type, build_index(media_type, children), children)


def _child_of(
    ref: Reference, index: Descriptor, platform: Platform, live: LiveState
) -> Descriptor:
    children = live.indexes.get(index.digest)
    if children is None:
        raise SourceProblem(f"the children of source index {ref} were not read")
    child = pick_child(children, platform)
    if child is None:
        listed = ", ".join(str(c.platform) for c in children) or "none"
        raise SourceProblem(
            f"source index {ref} has no child for {platform} (it lists {listed})"
        )
    return child


def _missing(image: Image, ref: Reference) -> str:
    if image.source is None:
        return (
            f"{ref} does not exist, and the image has no source to create it "
            "from; push it, or add a source template"
        )
    return f"source {ref} does not exist; push it first, or fix the source template"


def read_addresses(desired: DesiredState) -> set[Reference]:
    """Every address a plan reads: the image's own tags and every source."""
    refs: set[Reference] = set()
    for image in desired.images:
        refs.update(image.repository.tag(tag) for tag in image.tags())
        refs.update(ref for ref, _ in _image_sources(image))
    return refs


def source_references(desired: DesiredState) -> set[tuple[Reference, Platform]]:
    """Each source reference with the platform it must serve."""
    return {pair for image in desired.images for pair in _image_sources(image)}


def expected_digest(image: Image, version: str, live: LiveState) -> Digest | None:
    """The digest of the index the plan would build, or None if it cannot."""
    try:
        sources = [resolve_source(image, version, p, live) for p in image.platforms]
    except SourceProblem:
        return None  # the planner reports it
    return desired_index(image, sources).digest


def _image_sources(image: Image) -> set[tuple[Reference, Platform]]:
    return {
        (source_reference(image, version, platform), platform)
        for version in image.versions
        for platform in image.platforms
    }
