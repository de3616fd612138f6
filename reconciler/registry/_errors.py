"""Errors from talking to a registry, and the one place statuses map to them.

RegistryError                 status and registry error codes kept
├── AuthenticationError       credentials refused (401, or an empty grant)
├── PermissionDeniedError     authenticated, but not allowed (403, partial grant)
├── NotFoundError             404 for a manifest, blob or repository
├── TooManyRequestsError      429 that outlasted the retry deadline
├── ServerError               5xx that outlasted the retry deadline
├── ConnectionFailedError     refused, reset, timed out, DNS
├── TLSError                  certificate or protocol trouble
└── IntegrityError            bytes that do not match their digest, or too many
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx

from reconciler.errors import ReconcilerError


@dataclass(frozen=True, slots=True)
class RegistryErrorDetail:
    """One entry of a registry's `{"errors": [...]}` body."""

    code: str
    message: str


class RegistryError(ReconcilerError):
    """A registry refused or failed a request."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        status: int | None = None,
        details: tuple[RegistryErrorDetail, ...] = (),
        transient: bool = False,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.details = details
        self.transient = transient
        """Whether trying the whole operation again may succeed."""

    @property
    def codes(self) -> tuple[str, ...]:
        """The registry's error codes, e.g. `MANIFEST_UNKNOWN`."""
        return tuple(detail.code for detail in self.details)


class AuthenticationError(RegistryError):
    """The registry or its token service did not accept the credentials."""


class PermissionDeniedError(RegistryError):
    """The credentials are valid but do not allow the action."""


class NotFoundError(RegistryError):
    """The manifest, blob or repository does not exist."""


class TooManyRequestsError(RegistryError):
    """The registry kept rate-limiting past the retry deadline."""


class ServerError(RegistryError):
    """The registry kept failing past the retry deadline."""


class ConnectionFailedError(RegistryError):
    """No HTTP exchange could be completed with the registry."""


class TLSError(RegistryError):
    """TLS could not be set up: unknown CA, wrong name, or wrong protocol."""


class IntegrityError(RegistryError):
    """Content does not match its digest, is truncated, or is too large."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A response whose body was read, within a size cap."""

    status: int
    reason: str
    headers: httpx.Headers
    body: bytes


def parse_error_body(reply: Reply) -> tuple[RegistryErrorDetail, ...]:
    """Read the distribution spec's error body, tolerating anything else."""
    try:
        document = json.loads(reply.body[:65536])
    except (ValueError, UnicodeDecodeError):
        return ()
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return ()
    return tuple(
        RegistryErrorDetail(str(e.get("code", "")), str(e.get("message", "")))
        for e in errors
        if isinstance(e, dict)
    )


def error_for_reply(reply: Reply, action: str) -> RegistryError:
    """Turn a failed reply into a typed error: "failed to <action>: <why>"."""
    status = reply.status
    details = parse_error_body(reply)
    said = "; ".join(f"{d.code}: {d.message}" for d in details if d.code or d.message)
    reason = f"{status} {reply.reason}" + (f" ({said})" if said else "")
    message = f"failed to {action}: {reason}"
    kind, hint = _classify(status)
    transient = status in (429, 502, 503, 504)
    return kind(message, hint=hint, status=status, details=details, transient=transient)


def _classify(status: int) -> tuple[type[RegistryError], str | None]:
    if status == 401:
        return AuthenticationError, "check the credentials for this registry"
    if status == 403:
        return PermissionDeniedError, "grant the user this action on the repository"
    if status == 404:
        return NotFoundError, None
    if status == 429:
        return TooManyRequestsError, "the registry is rate-limiting; try again later"
    if status >= 500:
        return ServerError, "the registry failed; look at its logs"
    return RegistryError, None
