"""The plan: what will change, exactly, and what was observed to decide it.

A plan is frozen and sorted. `apply` executes it as it is; it never decides
again. Every `after` digest is exact: index bytes are built at plan time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from reconciler.oci import Digest, Platform, Reference


class Action(StrEnum):
    """What happens to an address, in Terraform's words."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"

    @property
    def symbol(self) -> str:
        return {"create": "+", "update": "~", "delete": "-"}[self.value]


class Kind(StrEnum):
    """What an address holds: a platform tag, a version index or an alias."""

    TAG = "tag"
    INDEX = "index"
    ALIAS = "alias"


# Within a repository, children are written before the index that lists
# them, and an index before the aliases that point at it. Destroys come
# after every write, parents first, so no index loses a child it lists.
KIND_ORDER = {Kind.TAG: 0, Kind.INDEX: 1, Kind.ALIAS: 2}
DESTROY_ORDER = {Kind.ALIAS: 3, Kind.INDEX: 4, Kind.TAG: 5}


@dataclass(frozen=True, slots=True)
class Child:
    """One entry of a planned index, and what happens to it."""

    platform: Platform
    digest: Digest | None  # None when the child is removed
    before: Digest | None  # the digest the live index lists, if any

    @property
    def symbol(self) -> str:
        """`+` added, `-` removed, `~` changed, blank when unchanged."""
        if self.before is None:
            return "+"
        if self.digest is None:
            return "-"
        return "~" if self.digest != self.before else " "


@dataclass(frozen=True, slots=True)
class Change:
    """One write (or delete) at one address.

    `content` holds the exact bytes to push when the plan built them (an
    index); otherwise `copy_from` names the manifest to copy by digest.
    """

    action: Action
    kind: Kind
    address: Reference
    before: Digest | None
    after: Digest | None
    media_type: str
    size: int = 0
    platform: Platform | None = None
    source: Reference | None = None  # as written in the desired state
    copy_from: Reference | None = None  # repository@digest to read bytes from
    content: bytes | None = field(default=None, repr=False)
    children: tuple[Child, ...] = ()
    target: Reference | None = None  # for an alias: the version it follows
    differences: tuple[str, ...] = ()  # for an index: what differs, in words

    @property
    def sort_key(self) -> tuple[str, int, str]:
        order = DESTROY_ORDER if self.action is Action.DELETE else KIND_ORDER
        return (str(self.address.repository), order[self.kind], str(self.address))


@dataclass(frozen=True, slots=True)
class ProjectChange:
    """A Harbor project to create before any image is written into it.

    Kept apart from `Change`, whose address is always a tag: a project holds
    no manifest, and apply creates it before every write. Only `public` is
    set; everything else is Harbor's default.
    """

    host: str
    name: str
    public: bool = False
    action: Action = Action.CREATE

    @property
    def address(self) -> str:
        """`host/name`, as the plan shows it."""
        return f"{self.host}/{self.name}"

    @property
    def publicity(self) -> str:
        return "public" if self.public else "private"

    @property
    def before(self) -> Digest | None:
        """None: a project has no digest; shared with `Change` for reports."""
        return None

    @property
    def after(self) -> Digest | None:
        """None: a project has no digest; shared with `Change` for reports."""
        return None

    def holds(self, ref: Reference) -> bool:
        """Whether `ref` is in this project."""
        repository = ref.repository
        return repository.registry == self.host and repository.project == self.name


@dataclass(frozen=True, slots=True)
class Summary:
    """Counts in Terraform's words."""

    add: int
    change: int
    destroy: int

    @property
    def empty(self) -> bool:
        return not (self.add or self.change or self.destroy)


@dataclass(frozen=True, slots=True)
class Plan:
    """The changes, in apply order, and every address read to decide them."""

    changes: tuple[Change, ...]
    observed: Mapping[str, Digest | None]
    warnings: tuple[str, ...] = ()
    projects: tuple[ProjectChange, ...] = ()
    """Harbor projects to create first; each counts as one to add."""

    @property
    def summary(self) -> Summary:
        actions = [project.action for project in self.projects]
        actions += [change.action for change in self.changes]
        return Summary(
            add=actions.count(Action.CREATE),
            change=actions.count(Action.UPDATE),
            destroy=actions.count(Action.DELETE),
        )
