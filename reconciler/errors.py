"""The project's errors.

Every error a user can meet derives from `ReconcilerError`, which carries a
one-line message (what happened, and why) and an optional hint (what to do).
The CLI catches it once and prints both; anything else is a bug.

    ReconcilerError
    ├── DesiredStateError      bad files, reported with file:line:column
    ├── RegistryError          anything that crossed HTTP (registry/_errors.py)
    │   ├── AuthenticationError
    │   ├── PermissionDeniedError
    │   ├── NotFoundError
    │   ├── TLSError / ConnectionFailedError
    │   └── DigestMismatchError, ManifestTooLargeError, ...
    ├── PlanError              live state that cannot be made desired
    └── ApplyError             a write failed part-way, or the plan was stale
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """An error with a message for people and, where known, what to do."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class PlanError(ReconcilerError):
    """The live registry cannot be brought to the desired state as written.

    `problems` lists each reason on its own, where there are several.
    """

    def __init__(
        self, message: str, *, hint: str | None = None, problems: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems or (message,)


class ApplyError(ReconcilerError):
    """A write failed, or a saved plan no longer matches the registry."""
