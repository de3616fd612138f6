"""Problems found in desired-state files, and the error that carries them all."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.desired._spots import START, FieldPath, Spot, Spots, format_path
from reconciler.errors import ReconcilerError


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in one file, at a 1-based line and column."""

    file: str
    """The file as the user named it, or its folder joined with its name."""
    line: int
    column: int
    path: str
    """The field path, e.g. `images[0].aliases.latest`; empty for the file."""
    message: str
    hint: str | None = None
    """What to do about it, where that is known."""

    @classmethod
    def at(
        cls,
        file: str,
        spot: Spot,
        path: FieldPath,
        message: str,
        hint: str | None = None,
    ) -> Problem:
        """A problem at `spot`, with `path` rendered for people."""
        return cls(file, spot.line, spot.column, format_path(path), message, hint)

    @classmethod
    def of_file(cls, file: str, message: str, hint: str | None = None) -> Problem:
        """A problem with a whole file, reported at its start."""
        return cls(file, START.line, START.column, "", message, hint)

    def __str__(self) -> str:
        prefix = f"{self.file}:{self.line}:{self.column}:"
        if self.path:
            prefix += f" {self.path}:"
        text = f"{prefix} {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    @property
    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.file, self.line, self.column, self.path, self.message)


class DesiredStateError(ReconcilerError):
    """The desired state is invalid; `problems` lists every reason, in order."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(sorted(set(problems), key=lambda p: p.sort_key))
        super().__init__(_render(self.problems))


class FileReport:
    """Collects the problems of one file, placed by field path."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.spots = Spots()
        self.problems: list[Problem] = []
        self._unreadable: set[FieldPath] = set()

    def unreadable(self, path: FieldPath) -> None:
        """Note that the value at `path` is reported as unreadable YAML."""
        self._unreadable.add(path)

    def is_unreadable(self, path: FieldPath) -> bool:
        """Whether `path` is inside a value reported as unreadable YAML."""
        return any(path[:length] in self._unreadable for length in range(len(path) + 1))

    def add(
        self,
        path: FieldPath,
        message: str,
        hint: str | None = None,
        *,
        on_key: bool = False,
    ) -> None:
        """Report a problem at the value of `path`, or at its key."""
        spot = self.spots.key(path) if on_key else self.spots.value(path)
        self.add_at(
            spot,
            path,
            message,
            hint,
        )

    def add_at(
        self,
        spot: Spot,
        path: FieldPath,
        message: str,
        hint: str | None = None,
    ) -> None:
        """Report a problem at an explicit spot."""
        self.problems.append(
            Problem.at(
                self.file,
                spot,
                path,
                message,
                hint,
            )
        )

    def add_to_file(
        self, message: str, hint: str | None = None, *, at: Spot = START
    ) -> None:
        """Report a problem that concerns no one field, by default at 1:1."""
        self.add_at(at, (), message, hint)


def _render(problems: tuple[Problem, ...]) -> str:
    files = len({problem.file for problem in problems})
    summary = f"{_plural(len(problems), 'problem')} in {_plural(files, 'file')}"
    return "\n".join([*(str(problem) for problem in problems), summary])


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
