"""Harbor's refusals in Harbor's terms, and the one place they are mapped.

RegistryError
└── HarborError                  Harbor refused for a reason of its own
    ├── ImmutableTagError        412: a tag immutability rule protects the tag
    ├── QuotaExceededError       403 "Quota exceeded": the project's quota is full
    ├── ProxyCacheProjectError   403 or 405: the project is a proxy cache
    ├── ProjectNotFoundError     401, 403 or 404: the project does not exist
    ├── ProjectNotReadableError  403: the project exists, the account may not read it
    ├── ProjectExistsError       409 on project creation
    ├── TagExistsError           409 on tag creation
    └── CsrfRefusedError         403: a write carried Harbor's session cookie

The 403 kinds are also `PermissionDeniedError`s and `ProjectNotFoundError` is
a `NotFoundError`, so code written for plain registries still catches them.

`explain_harbor_refusal` reads a status and an error body; both the REST
client and the /v2 path (through `explain_registry_error`, for an error that
`reconciler.registry` already raised) call it. Harbor sends the same body on
both APIs: ``{"errors": [{"code": "...", "message": "..."}]}``.
"""

from __future__ import annotations

import re

import httpx

from reconciler.registry._errors import (
    NotFoundError,
    PermissionDeniedError,
    RegistryError,
    RegistryErrorDetail,
    Reply,
    parse_error_body,
)

__all__ = [
    "CsrfRefusedError",
    "HarborError",
    "ImmutableTagError",
    "ProjectExistsError",
    "ProjectNotFoundError",
    "ProjectNotReadableError",
    "ProxyCacheProjectError",
    "QuotaExceededError",
    "TagExistsError",
    "explain_harbor_refusal",
    "explain_registry_error",
    "project_not_found",
]

Details = tuple[RegistryErrorDetail, ...]

# What Harbor writes, by version (src/server/middleware/v2auth, the project
# controller): "project not found, name: x" on /v2, "project x not found" in
# the REST API.
_MISSING_PROJECT = re.compile(
    r"project not found, name: (?P<a>[^\s,;]+)|project (?P<b>[^\s,;]+) not found"
)
# "Failed to process request due to 'a/b:1.0' configured as immutable." on a
# manifest push; "the tag 1.0 configured as immutable, cannot be deleted" on
# a tag deletion; "The tag:a/b:1.0 is immutable" before Harbor 2.0.
_IMMUTABLE_TAG = re.compile(
    r"'(?P<ref>[^']+)' configured as immutable"
    r"|the tag (?P<tag>\S+) configured as immutable"
    r"|tag:(?P<old>\S+) is immutable"
)
_PROXY_PROJECT = re.compile(r"proxy (?:cache )?project(?::\s*(?P<name>\S+))?")


class HarborError(RegistryError):
    """Harbor refused an operation for a reason of its own."""


class ImmutableTagError(HarborError):
    """A tag immutability rule protects the tag from any change."""


class QuotaExceededError(HarborError, PermissionDeniedError):
    """The project's storage quota has no room for the push."""


class ProxyCacheProjectError(HarborError, PermissionDeniedError):
    """The project is a proxy cache, which takes no pushes and no new tags."""


class ProjectNotFoundError(HarborError, NotFoundError):
    """The project does not exist."""


class ProjectNotReadableError(HarborError, PermissionDeniedError):
    """The project exists, but the account may not read its settings."""


class ProjectExistsError(HarborError):
    """A project of that name exists already."""


class TagExistsError(HarborError):
    """The repository has a tag of that name already."""


class CsrfRefusedError(HarborError, PermissionDeniedError):
    """Harbor's CSRF check refused a write that carried its session cookie."""


def explain_harbor_refusal(status: int, body: bytes, action: str) -> HarborError | None:
    """The Harbor error for a refused `action`, or None when Harbor meant nothing
    more than a plain registry would (then `error_for_reply` applies).
    """
    reply = Reply(status, "", httpx.Headers(), body)
    return _explain(status, parse_error_body(reply), action)


def explain_registry_error(error: RegistryError, action: str) -> RegistryError:
    """`error` told in Harbor's terms where Harbor meant more, else `error` itself."""
    if error.status is None or isinstance(error, HarborError):
        return error
    return _explain(error.status, error.details, action) or error


def _explain(status: int, details: Details, action: str) -> HarborError | None:
    """Map a refusal to its Harbor meaning: the only table of them."""
    text = " ".join(detail.message for detail in details)
    lowered = text.lower()
    if status == 412 and "signature" not in lowered:
        return _immutable(status, details, action, text)
    if status == 403 and "quota exceeded" in lowered:
        return _quota(status, details, action)
    if status in (403, 405) and (proxy := _PROXY_PROJECT.search(lowered)):
        return _proxy_cache(status, details, action, proxy["name"])
    if status in (401, 403, 404) and (missing := _MISSING_PROJECT.search(text)):
        return _missing_project(status, details, action, missing["a"] or missing["b"])
    if status == 403 and "csrf" in lowered:
        return _csrf(status, details, action)
    if status == 409:
        return _conflict(status, details, action, lowered)
    return None


def _said(status: int, details: Details) -> str:
    words = "; ".join(f"{d.code}: {d.message}" for d in details if d.code or d.message)
    return f"Harbor answered {status}" + (f" ({words})" if words else "")


def _immutable(status: int, details: Details, action: str, text: str) -> HarborError:
    match = _IMMUTABLE_TAG.search(text)
    named = next((group for group in match.groups() if group), None) if match else None
    what = f"tag {named}" if named else "the tag"
    return ImmutableTagError(
        f"failed to {action}: {what} is immutable under a tag immutability rule "
        f"of its project; {_said(status, details)}",
        hint="Harbor refuses every change to an immutable tag, even to the same "
        "digest: leave the tag out of the desired state, or have a project "
        "admin exclude it from the rule (Project > Policy > Tag Immutability)",
        status=status,
        details=details,
    )


def _quota(status: int, details: Details, action: str) -> HarborError:
    return QuotaExceededError(
        f"failed to {action}: the project's storage quota is exceeded; "
        f"{_said(status, details)}",
        hint="raise the project's quota (Administration > Project Quotas), or "
        "delete unused artifacts and run garbage collection to free space",
        status=status,
        details=details,
    )


def _proxy_cache(
    status: int, details: Details, action: str, name: str | None
) -> HarborError:
    project = f"project {name}" if name else "the project"
    return ProxyCacheProjectError(
        f"failed to {action}: {project} is a proxy cache, and Harbor takes no "
        f"pushes or new tags there; {_said(status, details)}",
        hint="a proxy-cache project only mirrors its upstream registry: target "
        "an ordinary project instead",
        status=status,
        details=details,
    )


def _missing_project(
    status: int, details: Details, action: str, name: str
) -> HarborError:
    return project_not_found(name, action, status=status, details=details)


def project_not_found(
    name: str,
    action: str,
    *,
    status: int | None = None,
    details: Details = (),
) -> ProjectNotFoundError:
    """The error for `action` in project `name`, which Harbor does not have."""
    said = f"; {_said(status, details)}" if status is not None else ""
    return ProjectNotFoundError(
        f"failed to {action}: Harbor has no project {name}{said}",
        hint=f"create project {name} in Harbor, declare it under projects: in "
        "the desired state, or correct the project in the repository name",
        status=status,
        details=details,
    )


def _csrf(status: int, details: Details, action: str) -> HarborError:
    return CsrfRefusedError(
        f"failed to {action}: Harbor's CSRF check refused a write that carried "
        f"its session cookie; {_said(status, details)}",
        hint="Harbor skips the check only for requests without a session "
        "cookie: make sure no proxy in between adds cookies",
        status=status,
        details=details,
    )


def _conflict(status: int, details: Details, action: str, lowered: str) -> HarborError:
    if "project" in lowered and "tag" not in lowered:
        return ProjectExistsError(
            f"failed to {action}: the project exists already; {_said(status, details)}",
            hint="nothing to create: read the project instead",
            status=status,
            details=details,
        )
    return TagExistsError(
        f"failed to {action}: the repository has that tag already; "
        f"{_said(status, details)}",
        hint="Harbor creates a tag only where there is none: delete the "
        "existing tag first, or push the manifest under the tag instead",
        status=status,
        details=details,
    )
