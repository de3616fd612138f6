"""A client for Harbor's REST API (`/api/v2.0`): projects, artifacts, tags,
tag immutability rules and the account's permissions.

Harbor's behaviour shapes it:

- Basic auth goes with every request, and no cookie is ever kept. Harbor
  answers with a session cookie (`sid`); a request that carries it back is
  put through the CSRF check, which refuses writes without a CSRF token.
  Only /api/ requests without a session skip the check
  (src/server/middleware/csrf).
- Repository names are URL-encoded twice in paths (see `_paths`).
- Lists come in pages of at most 100 (`page`, `page_size`), and
  `X-Total-Count` tells how many items there are in all.
- A missing project and a project the account may not see both answer 403
  on project-scoped endpoints (`RequireProjectAccess`); `HEAD
  /projects?project_name=` tells the two apart.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from reconciler.harbor._paths import (
    project_segment,
    reference_segment,
    repository_segment,
)
from reconciler.harbor.errors import (
    HarborError,
    ProjectNotReadableError,
    explain_harbor_refusal,
    project_not_found,
)
from reconciler.harbor.models import (
    Artifact,
    ImmutableRule,
    Permission,
    Project,
)
from reconciler.registry import (
    Credentials,
    RegistryError,
    RetryPolicy,
    connection_pool,
)
from reconciler.registry._cookies import NoCookies
from reconciler.registry._errors import (
    IntegrityError,
    Reply,
    error_for_reply,
    parse_error_body,
)
from reconciler.registry._retry import RETRY_STATUSES, RetryableStatus
from reconciler.registry._settings import ConnectionSettings
from reconciler.registry._transport_errors import explain_transport_error

__all__ = ["API_PREFIX", "MAX_PAGE_SIZE", "HarborClient"]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v2.0"
MAX_PAGE_SIZE = 100  # the OpenAPI description's maximum for page_size
_MAX_BODY = 16 * 1024 * 1024
_MAX_PAGES = 10_000
_SAFE_METHODS = frozenset({"GET", "HEAD"})
# Without it Harbor reads an all-digit project name as a project ID.
_BY_NAME = {"X-Is-Resource-Name": "true"}


class HarborClient:
    """Talks to one Harbor's REST API; thread-safe, and cheap to share."""

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        credentials: Credentials | None = None,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        page_size: int = MAX_PAGE_SIZE,
    ) -> None:
        """Prepare a client; nothing is sent until a method is called.

        `page_size` (1 to 100) is how many items each page of a list asks for.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1 to {MAX_PAGE_SIZE}: {page_size}")
        self.settings = settings
        self._who = credentials.username if credentials else "anonymous"
        self._retry = retry or RetryPolicy()
        self._page_size = page_size
        self._http = httpx.Client(
            base_url=f"{settings.base_url}{API_PREFIX}",
            auth=_basic(credentials),
            cookies=NoCookies(),
            transport=transport or connection_pool(settings, timeout=timeout),
            timeout=httpx.Timeout(timeout, connect=10.0),
            follow_redirects=False,
        )

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def account(self) -> str:
        """Who the client signs in as, for messages: a user, a robot, or anonymous."""
        return self._who

    @property
    def signed_in(self) -> bool:
        """Whether the client sends credentials."""
        return self._who != "anonymous"

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> HarborClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- detection -----------------------------------------------------------

    def detect(self) -> bool:
        """Whether the host runs Harbor: `GET /systeminfo` answers a JSON object.

        A plain registry answers 404 (or 401, 403) there. Connection and TLS
        failures raise, as they would for the registry API.
        """
        reply = self._request(
            "GET",
            "/systeminfo",
            action=f"detect whether {self.host} runs Harbor",
            allow=tuple(range(300, 500)),
        )
        if reply.status != 200:
            logger.debug("%s is no Harbor: /systeminfo -> %d", self.host, reply.status)
            return False
        try:
            return isinstance(json.loads(reply.body), dict)
        except ValueError:
            return False

    # -- projects ------------------------------------------------------------

    def project_get(self, name: str) -> Project | None:
        """The project called `name`, or None when Harbor has none.

        Raises `ProjectNotReadableError` when the project exists but the
        account may not read it.
        """
        action = f"read project {name}"
        reply = self._request(
            "GET",
            f"/projects/{project_segment(name)}",
            action=action,
            headers=_BY_NAME,
            allow=(403, 404),
        )
        if reply.status == 200:
            return Project.from_json(_json(reply, action))
        if reply.status == 404 or not self.project_exists(name):
            return None
        raise ProjectNotReadableError(
            f"failed to {action}: the project exists, but {self._who} may not read it",
            hint=f"give {self._who} a role in project {name} (guest is enough), "
            "or, for a robot account, permission to read the project",
            status=reply.status,
            details=parse_error_body(reply),
        )

    def project_exists(self, name: str) -> bool:
        """Whether Harbor has a project called `name`, visible or not."""
        reply = self._request(
            "HEAD",
            "/projects",
            action=f"check whether project {name} exists",
            params={"project_name": name},
            allow=(404,),
        )
        return reply.status == 200

    def project_create(self, name: str, *, public: bool) -> Project:
        """Create a project, public or private, with Harbor's defaults otherwise."""
        action = f"create project {name}"
        # metadata.public is a string; the top-level `public` is deprecated.
        body = {"project_name": name, "metadata": {"public": _flag(public)}}
        self._request("POST", "/projects", action=action, json_body=body)
        logger.info("created Harbor project %s (%s)", name, _publicity(public))
        created = self.project_get(name)
        if created is None:
            raise HarborError(
                f"failed to {action}: Harbor said it was created, but has no such "
                "project"
            )
        return created

    # -- artifacts and tags --------------------------------------------------

    def artifacts(
        self,
        project: str,
        repository: str,
        *,
        with_tag: bool = True,
        with_immutable_status: bool = True,
    ) -> list[Artifact]:
        """Every artifact of `project`/`repository`, children of indexes too.

        `repository` is the name inside the project (`a/b` of `library/a/b`).
        A repository that does not exist has no artifacts.
        """
        params = {
            "with_tag": _flag(with_tag),
            "with_immutable_status": _flag(with_immutable_status),
        }
        items = self._paged(
            project,
            f"{_repository_path(project, repository)}/artifacts",
            action=f"list artifacts of {project}/{repository}",
            params=params,
        )
        return [Artifact.from_json(item) for item in items]

    def tag_create(
        self, project: str, repository: str, reference: str, tag: str
    ) -> None:
        """Tag the artifact `reference` (a digest or a tag) as `tag`.

        Harbor refuses a tag the repository has already (`TagExistsError`).
        """
        path = f"{_artifact_path(project, repository, reference)}/tags"
        self._in_project(
            project,
            "POST",
            path,
            action=f"create tag {project}/{repository}:{tag}",
            json_body={"name": tag},
        )
        logger.info("tagged %s/%s@%s as %s", project, repository, reference, tag)

    def tag_delete(
        self, project: str, repository: str, reference: str, tag: str
    ) -> None:
        """Delete `tag` from the artifact `reference`; the artifact stays."""
        artifact = _artifact_path(project, repository, reference)
        path = f"{artifact}/tags/{reference_segment(tag)}"
        self._in_project(
            project,
            "DELETE",
            path,
            action=f"delete tag {project}/{repository}:{tag}",
        )
        logger.info("deleted tag %s/%s:%s", project, repository, tag)

    # -- rules and permissions -----------------------------------------------

    def immutable_rules(self, project: str) -> list[ImmutableRule]:
        """The project's tag immutability rules, disabled ones included."""
        items = self._paged(
            project,
            f"/projects/{project_segment(project)}/immutabletagrules",
            action=f"list tag immutability rules of project {project}",
            headers=_BY_NAME,
        )
        return [ImmutableRule.from_json(item) for item in items]

    def permissions(self, project: str | Project) -> frozenset[Permission]:
        """What the account may do in the project, as (resource, action) pairs,
        e.g. ("repository", "push").
        """
        found = project if isinstance(project, Project) else self.project_get(project)
        if found is None:
            raise project_not_found(str(project), "read permissions in the project")
        action = f"read permissions of {self._who} in project {found.name}"
        reply = self._request(
            "GET",
            "/users/current/permissions",
            action=action,
            # relative=true names resources as "repository", not
            # "/project/1/repository".
            params={"scope": f"/project/{found.project_id}", "relative": "true"},
        )
        return frozenset(
            _permission(item, action) for item in _json_list(reply, action)
        )

    # -- plumbing ------------------------------------------------------------

    def _paged(
        self,
        project: str,
        path: str,
        *,
        action: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[Any]:
        """Every item of a paged list in `project`, page after page."""
        seen = 0
        for page in range(1, _MAX_PAGES + 1):
            query = {
                **(params or {}),
                "page": str(page),
                "page_size": str(self._page_size),
            }
            reply = self._in_project(
                project,
                "GET",
                path,
                action=action,
                params=query,
                headers=headers,
                allow=(404,),
            )
            if reply.status == 404:
                return
            items = _json_list(reply, action)
            yield from items
            seen += len(items)
            if not _more_pages(reply, seen, len(items), self._page_size):
                return
        raise HarborError(
            f"failed to {action}: Harbor gave more than {_MAX_PAGES} pages"
        )

    def _in_project(
        self,
        project: str,
        method: str,
        path: str,
        *,
        action: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        allow: tuple[int, ...] = (),
    ) -> Reply:
        """Send a project-scoped request; a 403 for a missing project says so."""
        reply = self._request(
            method,
            path,
            action=action,
            params=params,
            headers=headers,
            json_body=json_body,
            allow=(*allow, 403),
        )
        if reply.status != 403:
            return reply
        explained = explain_harbor_refusal(reply.status, reply.body, action)
        if explained is not None:
            raise explained
        if not self.project_exists(project):
            raise project_not_found(
                project, action, status=403, details=parse_error_body(reply)
            )
        raise error_for_reply(reply, action)

    def _request(
        self,
        method: str,
        path: str,
        *,
        action: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        allow: tuple[int, ...] = (),
    ) -> Reply:
        """Send, retrying safe methods; return a 2xx or allowed reply."""
        safe = method in _SAFE_METHODS

        def attempt() -> Reply:
            reply = self._send(method, path, params, headers, json_body)
            if safe and reply.status in RETRY_STATUSES:
                raise RetryableStatus(reply)
            return reply

        try:
            reply = self._retry.call(attempt) if safe else attempt()
        except RetryableStatus as error:
            raise _refusal(error.reply, action) from None
        except httpx.TransportError as error:
            raise explain_transport_error(error, self.settings) from error
        if 200 <= reply.status < 300 or reply.status in allow:
            return reply
        raise _refusal(reply, action)

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        json_body: Any,
    ) -> Reply:
        started = time.monotonic()
        with self._http.stream(
            method, path, params=params, headers=headers, json=json_body
        ) as response:
            body = _read_capped(response, path)
        logger.debug(
            "harbor %s %s%s -> %d (%.0f ms)",
            method,
            API_PREFIX,
            path,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return Reply(
            response.status_code, response.reason_phrase, response.headers, body
        )


def _basic(credentials: Credentials | None) -> httpx.BasicAuth | None:
    # httpx sends Basic with every request, never waiting for a challenge.
    if credentials is None:
        return None
    return httpx.BasicAuth(credentials.username, credentials.password)


def _repository_path(project: str, repository: str) -> str:
    return (
        f"/projects/{project_segment(project)}"
        f"/repositories/{repository_segment(repository)}"
    )


def _artifact_path(project: str, repository: str, reference: str) -> str:
    path = _repository_path(project, repository)
    return f"{path}/artifacts/{reference_segment(reference)}"


def _refusal(reply: Reply, action: str) -> RegistryError:
    explained = explain_harbor_refusal(reply.status, reply.body, action)
    return explained or error_for_reply(reply, action)


def _more_pages(reply: Reply, seen: int, count: int, page_size: int) -> bool:
    """Whether another page may hold more, by X-Total-Count, else by Link."""
    if count == 0:
        return False
    total = str(reply.headers.get("X-Total-Count", ""))
    if total.isdigit():
        return seen < int(total)
    if "Link" in reply.headers:
        return 'rel="next"' in str(reply.headers["Link"])
    return count == page_size


def _read_capped(response: httpx.Response, path: str) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > _MAX_BODY:
            raise IntegrityError(
                f"Harbor's answer to {API_PREFIX}{path} exceeds {_MAX_BODY} bytes"
            )
    return bytes(body)


def _json(reply: Reply, action: str) -> Any:
    try:
        return json.loads(reply.body)
    except ValueError:
        raise HarborError(
            f"failed to {action}: Harbor's answer is not JSON",
            hint="a proxy in front of Harbor may have answered instead",
            status=reply.status,
        ) from None


def _json_list(reply: Reply, action: str) -> list[Any]:
    document = _json(reply, action)
    if document is None:  # Harbor writes `null` for an empty list
        return []
    if not isinstance(document, list):
        raise HarborError(f"failed to {action}: Harbor's answer is not a JSON list")
    return document


def _permission(item: Any, action: str) -> Permission:
    if not isinstance(item, dict):
        raise HarborError(f"failed to {action}: a permission is not a JSON object")
    return str(item.get("resource", "")), str(item.get("action", ""))


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _publicity(public: bool) -> str:
    return "public" if public else "private"
