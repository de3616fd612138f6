"""What the planner is told about the registry: the live state, read elsewhere."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.oci import Descriptor, Digest, Platform, Reference, Repository


@dataclass(frozen=True, slots=True)
class LiveState:
    """The registry as it was read, for the addresses the desired state touches.

    `tags` maps every address read to what it points at (digest, media type,
    size; no platform), or None when there is no such tag. `platforms` gives
    the platform of image manifests, read from their configs; `indexes` the
    children of the indexes that had to be read, attestations left out.
    `repository_tags` lists every tag of the repositories of images that
    prune; each of those tags is in `tags` too. `documents` keeps the bytes
    of the indexes that were read, to tell people what differs in them.
    """

    tags: Mapping[Reference, Descriptor | None]
    platforms: Mapping[Digest, Platform]
    indexes: Mapping[Digest, tuple[Descriptor, ...]]
    repository_tags: Mapping[Repository, tuple[str, ...]] = field(default_factory=dict)
    documents: Mapping[Digest, bytes] = field(default_factory=dict)
    tag_deletion: frozenset[str] = frozenset()
    """Hosts that delete one tag and keep its manifest (Harbor's tag API),
    where pruning never has to delete a manifest other tags still carry.
    """

    def observed(self) -> dict[str, Digest | None]:
        """Each address read and its digest, as saved with a plan."""
        return {
            str(ref): found.digest if found else None
            for ref, found in sorted(self.tags.items(), key=lambda item: str(item[0]))
        }
