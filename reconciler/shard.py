"""Split the desired state across parallel jobs, by repository.

Shard ``K/N`` (``K`` from 1, as GitLab counts) keeps the images whose
repository falls in it: the SHA-256 of the repository's full name, registry
host included, read as a number, modulo ``N``, plus one. The split depends on
the name alone, so it is the same on every run and every machine, and ``N``
jobs cover every image exactly once. Everything of one repository lands in
one shard, so its version indexes, platform tags, aliases and pruning are
planned together.

Without ``--shard``, GitLab's ``CI_NODE_INDEX`` and ``CI_NODE_TOTAL`` (set in
jobs with ``parallel: N``) choose the shard; without them, there is none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.desired import DesiredState, Image
from reconciler.errors import ReconcilerError

__all__ = ["InvalidShardError", "Shard", "choose_shard", "shard_of"]

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class InvalidShardError(ReconcilerError):
    """A shard is not ``K/N`` with 1 <= K <= N."""


def shard_of(repository: str, total: int) -> int:
    """The shard, from 1 to `total`, that `repository` belongs to."""
    number = int.from_bytes(hashlib.sha256(repository.encode()).digest(), "big")
    return number % total + 1


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` of `total`, counted from 1."""

    index: int
    total: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.total:
            raise InvalidShardError(
                f"invalid shard {self.index}/{self.total}: K must be from 1 to N",
                hint="write --shard K/N, e.g. --shard 1/4 for the first of four jobs",
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Read ``K/N``."""
        match = _SHARD.match(text)
        if match is None:
            raise InvalidShardError(
                f"invalid shard {text!r}: expected K/N",
                hint="write --shard K/N, e.g. --shard 1/4 for the first of four jobs",
            )
        return cls(int(match[1]), int(match[2]))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Shard | None:
        """GitLab's ``CI_NODE_INDEX``/``CI_NODE_TOTAL``, or None when not set."""
        env = os.environ if environ is None else environ
        index, total = env.get("CI_NODE_INDEX"), env.get("CI_NODE_TOTAL")
        if not index:
            return None
        if not (index.isdigit() and total and total.isdigit()):
            raise InvalidShardError(
                f"CI_NODE_INDEX={index!r} and CI_NODE_TOTAL={total!r} do not name "
                "a shard",
                hint="both must be whole numbers, as GitLab sets them for "
                "parallel jobs; or pass --shard K/N",
            )
        return cls(int(index), int(total))

    def owns(self, repository: str) -> bool:
        """Whether `repository` (its full name, host first) is in this shard."""
        return shard_of(repository, self.total) == self.index

    def select(self, desired: DesiredState) -> DesiredState:
        """The part of `desired` whose images are in this shard.

        A declared Harbor project goes with every shard that has images in
        it, since they need it first (creating one that another shard just
        made is no error); one that no image uses goes to one shard, by its
        own name.
        """
        images = tuple(i for i in desired.images if self.owns(str(i.repository)))
        used = {_project_of(i) for i in desired.images}
        mine = {_project_of(i) for i in images}
        projects = {
            address: project
            for address, project in desired.projects.items()
            if address in mine or (address not in used and self.owns(address))
        }
        return dataclasses.replace(desired, images=images, projects=projects)

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"


def _project_of(image: Image) -> str:
    """`host/project` of the image's repository, as `projects:` keys it."""
    return f"{image.repository.registry}/{image.repository.project}"


def choose_shard(
    option: str | None, environ: Mapping[str, str] | None = None
) -> Shard | None:
    """The `--shard` option if given, else GitLab's variables, else None."""
    if option is not None:
        return Shard.parse(option)
    return Shard.from_environment(environ)
