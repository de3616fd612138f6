"""Pruning: which tags an image once produced and no longer wants. Pure.

An image's own namespace is recognised from its templates, because the
registry keeps no record of who wrote a tag:

- a *version* of the image is a tag holding an index, for which at least one
  tag matching `platform_tag` with that version exists (this tool always
  writes platform tags before the index, so its versions all have them);
- its *platform tags* are the tags matching `platform_tag` for one of its
  versions, kept or pruned;
- its *aliases* are other tags pointing at one of its version indexes.

Anything else (`nightly`, a signature tag, a platform tag of a version that
never had an index here) is outside the namespace and never touched.

Registries delete manifests, not tags (Distribution 2.8 has no tag delete),
and deleting a manifest removes every tag on it. So a tag is destroyed only
when its manifest carries no tag that stays and is no child of an index that
stays; otherwise the plan warns and skips it. Harbor deletes single tags
(`LiveState.tag_deletion`), so there every unwanted tag is destroyed.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from reconciler.desired import Image
from reconciler.oci import INDEX_MEDIA_TYPES, Descriptor, Digest, Reference
from reconciler.oci.platform import KNOWN_ARCHITECTURES, KNOWN_OS
from reconciler.plan.model import Action, Change, Kind
from reconciler.plan.state import LiveState

# Tags that cosign and friends attach to a digest; never part of a namespace.
_ATTACHED = re.compile(r"^sha256-[a-f0-9]{64}(\.[a-z]+)?$")

_GROUPS = {
    "version": r"(?P<version>[A-Za-z0-9_][A-Za-z0-9_.-]*?)",
    "os": "(?P<os>" + "|".join(sorted(KNOWN_OS)) + ")",
    "arch": "(?P<arch>" + "|".join(sorted(KNOWN_ARCHITECTURES)) + ")",
    "variant": r"(?P<variant>[a-z0-9]*)",
}


@dataclass(frozen=True, slots=True)
class Pruning:
    """Destroys for one image, and warnings for what could not be removed."""

    changes: tuple[Change, ...]
    warnings: tuple[str, ...]


def plan_prunes(
    image: Image, live: LiveState, writes: Iterable[Change], claimed: Iterable[str]
) -> Pruning:
    """Destroys that remove what `image` produced and no longer lists.

    `claimed` holds every tag that any image of the desired state claims in
    the repository, so that two entries for one repository never prune each
    other's tags.
    """
    listed = live.repository_tags.get(image.repository)
    if listed is None:
        return Pruning((), ())
    after = _digests_after(image, live, writes, listed)
    wanted = set(image.tags()) | set(claimed)
    doomed = _namespace_leftovers(image, live, listed, wanted)
    staying = {tag: digest for tag, digest in after.items() if tag not in doomed}
    changes, warnings = [], []
    # Where a tag is deleted on its own, its manifest and the rest stay.
    alone = image.repository.registry in live.tag_deletion
    for tag, kind in sorted(doomed.items()):
        reason = None if alone else _unsafe(after[tag], staying, live)
        if reason:
            warnings.append(
                f"{image.repository}:{tag} is no longer desired but is kept: {reason}"
            )
        else:
            changes.append(_destroy(image.repository.tag(tag), kind, live))
    return Pruning(tuple(changes), tuple(warnings))


def template_pattern(template: str) -> re.Pattern[str]:
    """A regex matching the tags `template` can produce, capturing the version."""
    parts = []
    used: set[str] = set()
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is None:
            continue
        parts.append(f"(?P={name})" if name in used else _GROUPS[name])
        used.add(name)
    return re.compile("".join(parts))


def _namespace_leftovers(
    image: Image, live: LiveState, listed: Iterable[str], wanted: set[str]
) -> dict[str, Kind]:
    """Tags of the image's namespace that are not wanted, with their kind."""
    pattern = template_pattern(image.platform_tag)
    candidates = [t for t in listed if t not in wanted and not _ATTACHED.match(t)]
    platform_of = {t: m["version"] for t in listed if (m := pattern.fullmatch(t))}
    has_platform_tags = set(platform_of.values())
    versions = {
        t for t in candidates if t in has_platform_tags and _is_index(image, t, live)
    }
    ours = versions | set(image.versions)
    doomed = dict.fromkeys(versions, Kind.INDEX)
    doomed |= {
        t: Kind.TAG
        for t in candidates
        if t not in doomed and platform_of.get(t) in ours
    }
    indexes = {_digest(image, v, live) for v in versions} | _wanted_indexes(image, live)
    doomed |= {
        t: Kind.ALIAS
        for t in candidates
        if t not in doomed and _digest(image, t, live) in indexes - {None}
    }
    return doomed


def _wanted_indexes(image: Image, live: LiveState) -> set[Digest | None]:
    return {_digest(image, version, live) for version in image.versions}


def _is_index(image: Image, tag: str, live: LiveState) -> bool:
    found = live.tags.get(image.repository.tag(tag))
    return found is not None and found.media_type in INDEX_MEDIA_TYPES


def _digest(image: Image, tag: str, live: LiveState) -> Digest | None:
    found = live.tags.get(image.repository.tag(tag))
    return found.digest if found else None


def _digests_after(
    image: Image, live: LiveState, writes: Iterable[Change], listed: Iterable[str]
) -> dict[str, Digest]:
    """What every tag of the repository will point at once the writes are done."""
    after = {
        tag: digest
        for tag in listed
        if (digest := _digest(image, tag, live)) is not None
    }
    for change in writes:
        if change.address.repository == image.repository and change.after:
            after[str(change.address.tag)] = change.after
    return after


def _unsafe(
    digest: Digest, staying: Mapping[str, Digest], live: LiveState
) -> str | None:
    """Why deleting the manifest `digest` would hurt something that stays."""
    others = sorted(tag for tag, d in staying.items() if d == digest)
    if others:
        return (
            f"its manifest {digest.short} also carries {', '.join(others)}, and "
            "deleting a manifest deletes every tag on it"
        )
    parents = sorted(
        tag
        for tag, d in staying.items()
        if any(child.digest == digest for child in live.indexes.get(d, ()))
    )
    if parents:
        return f"its manifest {digest.short} is listed by {', '.join(parents)}"
    return None


def _destroy(ref: Reference, kind: Kind, live: LiveState) -> Change:
    found: Descriptor | None = live.tags.get(ref)
    assert found is not None  # every listed tag was read
    return Change(
        action=Action.DELETE,
        kind=kind,
        address=ref,
        before=found.digest,
        after=None,
        media_type=found.media_type,
        size=found.size,
    )
