"""The planner: desired state and live state in, a frozen sorted plan out.

Pure: it reads nothing and writes nothing. "Unchanged" is decided by digest,
media type and size, never by comparing structures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.desired import DesiredState, Image
from reconciler.errors import PlanError
from reconciler.oci import (
    INDEX_MEDIA_TYPES,
    Descriptor,
    Digest,
    Platform,
    Reference,
    describe_media_type,
)
from reconciler.plan._build import (
    DesiredIndex,
    Source,
    SourceProblem,
    desired_index,
    resolve_source,
)
from reconciler.plan._explain import explain_index
from reconciler.plan.model import Action, Change, Child, Kind, Plan
from reconciler.plan.prune import plan_prunes
from reconciler.plan.state import LiveState


@dataclass(frozen=True, slots=True)
class _Version:
    """What the planner decided for one version: changes and its index digest."""

    changes: list[Change]
    index_digest: Digest
    index: DesiredIndex


def plan_changes(desired: DesiredState, live: LiveState) -> Plan:
    """Compute the changes that make the registry match `desired`.

    Raises `PlanError` listing every problem found, when any is.
    """
    changes: list[Change] = []
    warnings: list[str] = []
    problems: list[str] = []
    for image in desired.images:
        writes: list[Change] = []
        for version in image.versions:
            try:
                writes += _plan_version(image, version, live)
            except _VersionProblems as error:
                problems += error.problems
        changes += writes
        if image.prune and not problems:
            pruning = plan_prunes(image, live, writes, _claimed(desired, image))
            changes += pruning.changes
            warnings += pruning.warnings
    if problems:
        raise PlanError(problem_text(problems), problems=tuple(problems))
    ordered = tuple(sorted(changes, key=lambda change: change.sort_key))
    return Plan(ordered, live.observed(), tuple(warnings))


def _claimed(desired: DesiredState, image: Image) -> set[str]:
    """Every tag the desired state claims in the image's repository."""
    return {
        tag
        for other in desired.images
        if other.repository == image.repository
        for tag in other.tags()
    }


class _VersionProblems(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems)
        self.problems = problems


def _plan_version(image: Image, version: str, live: LiveState) -> list[Change]:
    sources = _sources(image, version, live)
    changes = [_platform_tag(image, version, s, live) for s in sources]
    index = desired_index(image, sources)
    index_change, index_digest = _version_index(image, version, index, live)
    changes += [index_change] if index_change else []
    changes += _aliases(image, version, index_digest, index, index_change, live)
    return [change for change in changes if change is not None]


def _sources(image: Image, version: str, live: LiveState) -> list[Source]:
    sources: list[Source] = []
    problems: list[str] = []
    for platform in image.platforms:
        try:
            sources.append(resolve_source(image, version, platform, live))
        except SourceProblem as error:
            problems.append(str(error))
    if problems:
        raise _VersionProblems(problems)
    return sources


def _platform_tag(
    image: Image, version: str, source: Source, live: LiveState
) -> Change | None:
    address = image.platform_ref(version, source.wanted)
    before = live.tags.get(address)
    wanted = source.descriptor
    if before is not None and before.digest == wanted.digest:
        return None
    return Change(
        action=Action.UPDATE if before else Action.CREATE,
        kind=Kind.TAG,
        address=address,
        before=before.digest if before else None,
        after=wanted.digest,
        media_type=wanted.media_type,
        size=wanted.size,
        platform=wanted.platform,
        source=source.reference if source.reference != address else None,
        copy_from=source.copy_from,
    )


def _version_index(
    image: Image, version: str, index: DesiredIndex, live: LiveState
) -> tuple[Change | None, Digest]:
    """The index change, if any, and the digest the version will point at."""
    address = image.version_ref(version)
    before = live.tags.get(address)
    if before is not None and _same_index(before, index, live):
        return None, before.digest
    live_children = live.indexes.get(before.digest, ()) if before else ()
    change = Change(
        action=Action.UPDATE if before else Action.CREATE,
        kind=Kind.INDEX,
        address=address,
        before=before.digest if before else None,
        after=index.digest,
        media_type=index.media_type,
        size=len(index.content),
        content=index.content,
        children=_child_changes(index.children, live_children),
        differences=_differences(before, index, live),
    )
    return change, index.digest


def _differences(
    before: Descriptor | None, index: DesiredIndex, live: LiveState
) -> tuple[str, ...]:
    if before is None:
        return ()
    if before.media_type not in INDEX_MEDIA_TYPES:
        return (
            f"the tag holds a {describe_media_type(before.media_type)}, not an index",
        )
    document = live.documents.get(before.digest)
    return explain_index(document, index.content) if document else ()


def _same_index(before: Descriptor, index: DesiredIndex, live: LiveState) -> bool:
    """Equal bytes, or an index by another tool with the same type and children."""
    if before.digest == index.digest:
        return True
    if before.media_type != index.media_type:
        return False
    children = live.indexes.get(before.digest)
    if children is None:
        return False
    return _child_set(children) == _child_set(index.children)


def _child_set(children: tuple[Descriptor, ...]) -> set[tuple[object, ...]]:
    return {(*c.key, c.platform.normalized() if c.platform else None) for c in children}


def _child_changes(
    wanted: tuple[Descriptor, ...], live: tuple[Descriptor, ...]
) -> tuple[Child, ...]:
    """Each child of the new index against the live one, removed ones last."""
    children = [
        Child(_platform(c), c.digest, _live_digest(live, _platform(c))) for c in wanted
    ]
    kept = [_platform(c) for c in wanted]
    for old in live:
        if not any(_platform(old).matches(p) for p in kept):
            children.append(Child(_platform(old), None, old.digest))
    return tuple(children)


def _platform(descriptor: Descriptor) -> Platform:
    assert descriptor.platform is not None  # index children all carry one
    return descriptor.platform


def _live_digest(live: tuple[Descriptor, ...], platform: Platform) -> Digest | None:
    match = next((c for c in live if c.platform and c.platform.matches(platform)), None)
    return match.digest if match else None


def _aliases(
    image: Image,
    version: str,
    index_digest: Digest,
    index: DesiredIndex,
    index_change: Change | None,
    live: LiveState,
) -> list[Change]:
    changes = []
    for alias in sorted(a for a, v in image.aliases.items() if v == version):
        change = _alias(image, alias, version, index_digest, index, index_change, live)
        if change is not None:
            changes.append(change)
    return changes


def _alias(
    image: Image,
    alias: str,
    version: str,
    index_digest: Digest,
    index: DesiredIndex,
    index_change: Change | None,
    live: LiveState,
) -> Change | None:
    address = image.alias_ref(alias)
    before = live.tags.get(address)
    if before is not None and before.digest == index_digest:
        return None
    version_ref = image.version_ref(version)
    # A planned index is pushed from its bytes; an existing one is copied.
    built = index_change is not None
    return Change(
        action=Action.UPDATE if before else Action.CREATE,
        kind=Kind.ALIAS,
        address=address,
        before=before.digest if before else None,
        after=index_digest,
        media_type=index.media_type if built else _live_type(version_ref, live),
        size=len(index.content) if built else _live_size(version_ref, live),
        content=index.content if built else None,
        copy_from=None if built else version_ref.repository.digest(index_digest),
        target=version_ref,
    )


def _live_type(ref: Reference, live: LiveState) -> str:
    found = live.tags.get(ref)
    return found.media_type if found else ""


def _live_size(ref: Reference, live: LiveState) -> int:
    found = live.tags.get(ref)
    return found.size if found else 0


def problem_text(problems: Sequence[str]) -> str:
    """The message of a `PlanError` listing `problems`."""
    count = len(problems)
    lines = "\n".join(f"  - {problem}" for problem in problems)
    noun = "problem" if count == 1 else "problems"
    return f"the plan cannot be made; {count} {noun}:\n{lines}"
