"""A Harbor stand-in: Harbor's REST API over the content of a real registry.

`HarborStandIn` listens on 127.0.0.1 over TLS (the test PKI's server
certificate) and serves:

- ``/api/v2.0``: ``systeminfo``, ``ping``, projects (get, head, create),
  the artifacts of a repository with their tags and index references, tag
  creation and deletion, tag immutability rules, and the current account's
  permissions. Artifacts are read from the real registry, as its admin, on
  every request; projects, rules and accounts are the stand-in's own.
- ``/v2/``: a reverse proxy to the real registry, with the checks Harbor's
  core makes before its registry sees a request: the project must exist
  (401), a proxy-cache project takes no writes (403), an existing tag under
  an immutability rule takes no manifest (412), and a project's storage
  limit holds (403 "Quota exceeded"). Authentication stays the registry's.

As Harbor does, every ``/api/`` answer sets a ``sid`` session cookie, and a
write that carries it back is refused with 403 (the CSRF check). Lists come
in pages (``page``, ``page_size`` up to 100) with ``X-Total-Count`` and
``Link``; errors are ``{"errors": [{"code": ..., "message": ...}]}`` with
Harbor's codes and messages.

`SwaggerContract` checks answers against Harbor's OpenAPI description.
What the stand-in does not do is listed in tests/README.md.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import http.server
import json
import logging
import re
import secrets
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from reconciler.testkit.accounts import ADMIN, READER, ROBOT, TOKEN_USERS
from reconciler.testkit.pki import CertificateFiles
from reconciler.testkit.registry import RegistryServer

__all__ = [
    "API_PREFIX",
    "HarborAccount",
    "HarborProject",
    "HarborRequest",
    "HarborStandIn",
    "Role",
    "SwaggerContract",
    "default_accounts",
]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v2.0"
Role = Literal["projectAdmin", "maintainer", "developer", "guest", "limitedGuest"]
Policy = tuple[str, str]  # (resource, action), relative to a project

HARBOR_VERSION = "v2.15.2-testkit"
_TIME = "2024-01-01T00:00:00.000Z"
_NEVER = "0001-01-01T00:00:00.000Z"  # Harbor's pull_time of a never-pulled tag
_SOCKET_TIMEOUT = 30.0
_MAX_PAGE_SIZE = 100
_DEFAULT_PAGE_SIZE = 10  # the OpenAPI description's default
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "content-length",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
_PROJECT_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_V2_PATH = re.compile(
    r"^/v2/(?P<name>.+?)/(?P<kind>manifests|blobs|tags)/(?P<rest>.*)$"
)


# Accounts and roles ---------------------------------------------------------


def _policies(text: str) -> frozenset[Policy]:
    """Read "resource:action,action resource:action" into policies."""
    policies: set[Policy] = set()
    for item in text.split():
        resource, _, actions = item.partition(":")
        policies.update((resource, action) for action in actions.split(","))
    return frozenset(policies)


# The project roles' policies for the resources the reconciler touches, as
# Harbor defines them (src/common/rbac/project/rbac_role.go).
ROLE_POLICIES: Mapping[Role, frozenset[Policy]] = {
    "projectAdmin": _policies(
        "repository:create,read,update,delete,list,pull,push "
        "artifact:create,read,delete,list tag:list,create,delete "
        "immutable-tag:create,update,delete,list"
    ),
    "maintainer": _policies(
        "repository:create,read,update,delete,list,pull,push "
        "artifact:create,read,delete,list tag:list,create,delete "
        "immutable-tag:create,update,delete,list"
    ),
    "developer": _policies(
        "repository:create,read,update,list,pull,push "
        "artifact:create,read,list tag:list,create"
    ),
    "guest": _policies("repository:read,list,pull artifact:read,list tag:list"),
    "limitedGuest": _policies("repository:list,pull artifact:read,list tag:list"),
}
# What anyone, signed in or not, may do in a public project.
PUBLIC_POLICIES = _policies("repository:list,pull artifact:read,list tag:list")
# Harbor's role IDs (src/common/const.go), for current_user_role_ids.
_ROLE_IDS: Mapping[Role, int] = {
    "projectAdmin": 1,
    "developer": 2,
    "guest": 3,
    "maintainer": 4,
    "limitedGuest": 5,
}


@dataclass(frozen=True)
class HarborAccount:
    """A user or robot account of the stand-in.

    `roles` maps a project name (or ``"*"``, every project) to a role;
    `permissions` gives a robot account its explicit policies per project
    (or ``"*"``), as Harbor's robot accounts have them. A system `admin`
    may do everything everywhere.
    """

    name: str
    password: str = field(repr=False)
    admin: bool = False
    roles: Mapping[str, Role] = field(default_factory=dict)
    permissions: Mapping[str, frozenset[Policy]] = field(default_factory=dict)

    @property
    def is_robot(self) -> bool:
        """Whether this is a robot account (`robot$project+name`)."""
        return self.name.startswith("robot$")

    def policies(self, project: HarborProject) -> frozenset[Policy]:
        """What this account may do in `project`."""
        if self.admin:
            return ROLE_POLICIES["projectAdmin"]
        granted = set(PUBLIC_POLICIES if project.public else ())
        role = self.roles.get(project.name) or self.roles.get("*")
        if role is not None:
            granted |= ROLE_POLICIES[role]
        granted |= self.permissions.get(project.name, frozenset())
        granted |= self.permissions.get("*", frozenset())
        return frozenset(granted)

    def role_ids(self, project: HarborProject) -> list[int]:
        role = self.roles.get(project.name) or self.roles.get("*")
        return [_ROLE_IDS[role]] if role else []

    def can_read(self, project: HarborProject) -> bool:
        """Whether the account may read the project itself."""
        return self.admin or bool(self.policies(project))


def default_accounts() -> tuple[HarborAccount, ...]:
    """The accounts of `reconciler.testkit.accounts`, as Harbor would hold them:
    ADMIN a system admin, READER a guest everywhere, ROBOT a robot account
    with pull and push in ``library``.
    """
    robot = _policies("repository:pull,push artifact:read,list tag:list,create")
    return (
        HarborAccount(ADMIN, TOKEN_USERS[ADMIN][0], admin=True),
        HarborAccount(READER, TOKEN_USERS[READER][0], roles={"*": "guest"}),
        HarborAccount(ROBOT, TOKEN_USERS[ROBOT][0], permissions={"library": robot}),
    )


@dataclass(frozen=True)
class HarborProject:
    """A project of the stand-in.

    `immutable_tags` are doublestar patterns; each becomes one tag
    immutability rule for every repository of the project. `storage_limit`
    is the project's quota in bytes (None: unlimited); `storage_used` what
    it holds already. `project_id` 0 is assigned when the project is added.
    """

    name: str
    public: bool = False
    proxy_cache: bool = False
    immutable_tags: tuple[str, ...] = ()
    storage_limit: int | None = None
    storage_used: int = 0
    project_id: int = 0

    def is_immutable(self, tag: str) -> bool:
        """Whether a rule of this project makes `tag` immutable once it exists."""
        return any(_glob(pattern).fullmatch(tag) for pattern in self.immutable_tags)


@dataclass(frozen=True)
class HarborRequest:
    """One request the stand-in answered. `path` is as sent, still encoded."""

    method: str
    path: str
    query: Mapping[str, Sequence[str]]
    account: str | None
    status: int
    cookie: bool


def _glob(pattern: str) -> re.Pattern[str]:
    """A doublestar pattern (``**``, ``*``, ``?``, ``{a,b}``) as a regex."""
    out: list[str] = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**", index):
            out.append(".*")
            index += 2
            continue
        char = pattern[index]
        out.append(_GLOB_CHARS.get(char) or re.escape(char))
        index += 1
    return re.compile("".join(out))


_GLOB_CHARS = {"*": "[^/]*", "?": "[^/]", "{": "(?:", "}": ")", ",": "|"}


# The real registry -----------------------------------------------------------


@dataclass(frozen=True)
class _Manifest:
    digest: str
    media_type: str
    data: bytes = field(repr=False)

    def json(self) -> dict[str, Any]:
        value = json.loads(self.data)
        return value if isinstance(value, dict) else {}

    @property
    def is_index(self) -> bool:
        return "manifests" in self.json()


class _Upstream:
    """The real registry, read and written as its admin, and the proxy's client.

    Manifests and blobs are cached by digest, which never changes content.
    """

    def __init__(self, registry: RegistryServer) -> None:
        self.registry = registry
        self._admin = registry.credentials(ADMIN) if registry.users else None
        self._client = httpx.Client(
            base_url=registry.url,
            verify=registry.verify(),
            trust_env=False,
            timeout=_SOCKET_TIMEOUT,
        )
        self._authorization: dict[str, str] = {}
        self._lock = threading.Lock()
        self._manifests: dict[tuple[str, str], _Manifest] = {}
        self._blobs: dict[str, bytes] = {}

    def close(self) -> None:
        self._client.close()

    def tags(self, repository: str) -> list[str]:
        response = self._admin_request("GET", repository, "tags/list?n=10000")
        if response.status_code == 404:
            return []
        _expect(response, 200)
        return sorted(response.json().get("tags") or [])

    def manifest(self, repository: str, reference: str) -> _Manifest | None:
        cached = self._manifests.get((repository, reference))
        if cached is not None:
            return cached
        headers = {"Accept": _MANIFEST_ACCEPT}
        response = self._admin_request(
            "GET", repository, f"manifests/{reference}", headers
        )
        if response.status_code == 404:
            return None
        _expect(response, 200)
        return self._remember(repository, response)

    def blob(self, repository: str, digest: str) -> bytes:
        if digest not in self._blobs:
            response = self._admin_request("GET", repository, f"blobs/{digest}")
            _expect(response, 200)
            self._blobs[digest] = response.content
        return self._blobs[digest]

    def manifest_put(self, repository: str, tag: str, manifest: _Manifest) -> None:
        headers = {"Content-Type": manifest.media_type}
        path = f"manifests/{tag}"
        response = self._admin_request("PUT", repository, path, headers, manifest.data)
        _expect(response, 201)

    def manifest_delete(self, repository: str, digest: str) -> None:
        response = self._admin_request("DELETE", repository, f"manifests/{digest}")
        _expect(response, 202)

    def forward(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> httpx.Response:
        """Send a client's request on, with its own authorization."""
        return self._client.request(method, target, headers=headers, content=body)

    def _remember(self, repository: str, response: httpx.Response) -> _Manifest:
        media_type = response.headers.get("Content-Type", "").partition(";")[0]
        digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
        manifest = _Manifest(digest, media_type, response.content)
        # By digest only: the content behind a digest never changes.
        self._manifests[(repository, digest)] = manifest
        return manifest

    def _admin_request(
        self,
        method: str,
        repository: str,
        rest: str,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        url = f"/v2/{repository}/{rest}"
        for attempt in range(2):
            sent = {**(headers or {}), **self._auth_header(repository)}
            response = self._client.request(method, url, headers=sent, content=content)
            if response.status_code != 401 or attempt:
                return response
            self._authorize(repository, response.headers.get("WWW-Authenticate", ""))
        return response

    def _auth_header(self, repository: str) -> dict[str, str]:
        with self._lock:
            value = self._authorization.get(repository)
        return {"Authorization": value} if value else {}

    def _authorize(self, repository: str, challenge: str) -> None:
        if self._admin is None:
            return
        scheme, _, rest = challenge.partition(" ")
        if scheme.lower() == "basic":
            value = _basic_header(*self._admin)
        else:
            value = "Bearer " + self._token(repository, rest)
        with self._lock:
            self._authorization[repository] = value

    def _token(self, repository: str, challenge: str) -> str:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = {
            "service": params.get("service", ""),
            "scope": f"repository:{repository}:pull,push,delete",
        }
        assert self._admin is not None
        response = self._client.get(
            params["realm"],
            params=query,
            headers={"Authorization": _basic_header(*self._admin)},
        )
        _expect(response, 200)
        body = response.json()
        return str(body.get("token") or body["access_token"])


def _expect(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        request = response.request
        raise RuntimeError(
            f"registry answered {response.status_code} to {request.method} "
            f"{request.url.path}: {response.text[:300]}"
        )


def _basic_header(username: str, password: str) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return f"Basic {token}"


# Harbor's view of the registry -------------------------------------------------


class _Ids:
    """Stable numeric IDs for repositories, artifacts and tags, as Harbor's
    database would give them.
    """

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def of(self, kind: str, key: str) -> int:
        with self._lock:
            return self._ids.setdefault((kind, key), len(self._ids) + 1)


@dataclass
class _Repository:
    """One repository as Harbor's artifact API shows it."""

    project: HarborProject
    name: str  # inside the project: "a/b" of "library/a/b"
    upstream: _Upstream
    ids: _Ids

    @property
    def path(self) -> str:
        return f"{self.project.name}/{self.name}"

    @property
    def repository_id(self) -> int:
        return self.ids.of("repository", self.path)

    def artifacts(self) -> dict[str, tuple[_Manifest, list[str]]]:
        """Every manifest Harbor would list, by digest, with its tags: the
        tagged ones and the children of indexes.
        """
        found: dict[str, tuple[_Manifest, list[str]]] = {}
        for tag in self.upstream.tags(self.path):
            manifest = self.upstream.manifest(self.path, tag)
            if manifest is not None:
                found.setdefault(manifest.digest, (manifest, []))[1].append(tag)
        for manifest, _ in list(found.values()):
            self._add_children(manifest, found)
        return dict(sorted(found.items()))

    def find(self, reference: str) -> tuple[_Manifest, list[str]] | None:
        """The artifact a tag or digest names, with its tags."""
        artifacts = self.artifacts()
        if reference in artifacts:
            return artifacts[reference]
        return next((a for a in artifacts.values() if reference in a[1]), None)

    def to_json(
        self, manifest: _Manifest, tags: Sequence[str], options: _ArtifactOptions
    ) -> dict[str, Any]:
        """An `Artifact` of the OpenAPI description."""
        document: dict[str, Any] = {
            "id": self.ids.of("artifact", f"{self.path}@{manifest.digest}"),
            "type": "IMAGE",
            "media_type": self._media_type(manifest),
            "manifest_media_type": manifest.media_type,
            "project_id": self.project.project_id,
            "repository_id": self.repository_id,
            "repository_name": self.path,
            "digest": manifest.digest,
            "size": self._size(manifest),
            "push_time": _TIME,
            "pull_time": _NEVER,
            "extra_attrs": self._extra_attrs(manifest),
        }
        references = self._references(manifest)
        if references:
            document["references"] = references
        if options.with_tag and tags:
            document["tags"] = [self._tag(manifest, t, options) for t in sorted(tags)]
        return document

    def _add_children(
        self, manifest: _Manifest, found: dict[str, tuple[_Manifest, list[str]]]
    ) -> None:
        for entry in manifest.json().get("manifests") or ():
            digest = str(entry.get("digest", ""))
            if digest in found:
                continue
            child = self.upstream.manifest(self.path, digest)
            if child is not None:
                found[digest] = (child, [])
                self._add_children(child, found)

    def _media_type(self, manifest: _Manifest) -> str:
        # Harbor's artifact media type is the config's for an image, and the
        # manifest's own for an index (src/controller/artifact/abstractor.go).
        if manifest.is_index:
            return manifest.media_type
        config = manifest.json().get("config") or {}
        return str(config.get("mediaType") or manifest.media_type)

    def _size(self, manifest: _Manifest) -> int:
        # Harbor: manifest + config + layers for an image; the index plus
        # the size of each child for an index.
        document = manifest.json()
        if manifest.is_index:
            children = (self._child_size(e) for e in document.get("manifests") or ())
            return len(manifest.data) + sum(children)
        blobs = [document.get("config") or {}, *(document.get("layers") or [])]
        return len(manifest.data) + sum(int(b.get("size", 0)) for b in blobs)

    def _child_size(self, entry: Mapping[str, Any]) -> int:
        child = self.upstream.manifest(self.path, str(entry.get("digest", "")))
        return self._size(child) if child is not None else 0

    def _extra_attrs(self, manifest: _Manifest) -> dict[str, Any]:
        if manifest.is_index:
            return {}
        config_digest = (manifest.json().get("config") or {}).get("digest")
        if not config_digest:
            return {}
        config = json.loads(self.upstream.blob(self.path, str(config_digest)))
        keys = ("architecture", "os", "variant", "created", "author", "config")
        return {key: config[key] for key in keys if config.get(key) is not None}

    def _references(self, manifest: _Manifest) -> list[dict[str, Any]]:
        parent = self.ids.of("artifact", f"{self.path}@{manifest.digest}")
        return [
            self._reference(parent, entry)
            for entry in manifest.json().get("manifests") or ()
        ]

    def _reference(self, parent: int, entry: Mapping[str, Any]) -> dict[str, Any]:
        digest = str(entry.get("digest", ""))
        reference: dict[str, Any] = {
            "parent_id": parent,
            "child_id": self.ids.of("artifact", f"{self.path}@{digest}"),
            "child_digest": digest,
        }
        if isinstance(entry.get("platform"), dict):
            reference["platform"] = dict(entry["platform"])
        if isinstance(entry.get("annotations"), dict):
            reference["annotations"] = dict(entry["annotations"])
        return reference

    def _tag(
        self, manifest: _Manifest, name: str, options: _ArtifactOptions
    ) -> dict[str, Any]:
        immutable = options.with_immutable_status and self.project.is_immutable(name)
        return {
            "id": self.ids.of("tag", f"{self.path}:{name}"),
            "repository_id": self.repository_id,
            "artifact_id": self.ids.of("artifact", f"{self.path}@{manifest.digest}"),
            "name": name,
            "push_time": _TIME,
            "pull_time": _NEVER,
            "immutable": immutable,
        }


@dataclass(frozen=True)
class _ArtifactOptions:
    with_tag: bool = True
    with_immutable_status: bool = False


# The server ------------------------------------------------------------------


class HarborStandIn:
    """Harbor's REST API and /v2 front over one real registry; see the module."""

    def __init__(
        self,
        registry: RegistryServer,
        tls: CertificateFiles,
        *,
        projects: Iterable[HarborProject] = (),
        accounts: Iterable[HarborAccount] | None = None,
    ) -> None:
        """Prepare a stand-in in front of `registry`; nothing runs until `start`.

        `tls` is the server certificate (for 127.0.0.1); clients trust
        `registry.ca_file`. Without `accounts`, `default_accounts()`.
        """
        self.registry = registry
        self.ca_file = registry.ca_file
        self._tls = tls
        self._lock = threading.RLock()
        self._projects: dict[str, HarborProject] = {}
        self._accounts = {a.name: a for a in accounts or default_accounts()}
        self._requests: list[HarborRequest] = []
        self.ids = _Ids()
        self.upstream = _Upstream(registry)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        for project in projects:
            self.add_project(project)

    # -- configuration ------------------------------------------------------

    def add_project(self, project: HarborProject) -> HarborProject:
        """Add or replace a project; returns it with its project ID."""
        with self._lock:
            previous = self._projects.get(project.name)
            number = project.project_id or (previous.project_id if previous else 0)
            added = replace(project, project_id=number or self._next_project_id())
            self._projects[project.name] = added
            return added

    def project(self, name: str) -> HarborProject | None:
        """The project called `name`, or None."""
        with self._lock:
            return self._projects.get(name)

    def project_by_id(self, project_id: int) -> HarborProject | None:
        with self._lock:
            found = (p for p in self._projects.values() if p.project_id == project_id)
            return next(found, None)

    def add_account(self, account: HarborAccount) -> None:
        """Add or replace an account."""
        with self._lock:
            self._accounts[account.name] = account

    def account(self, name: str) -> HarborAccount | None:
        with self._lock:
            return self._accounts.get(name)

    # -- what was asked ------------------------------------------------------

    @property
    def requests(self) -> list[HarborRequest]:
        """Every request answered since the start or the last `clear_requests`."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def record(self, request: HarborRequest) -> None:
        with self._lock:
            self._requests.append(request)

    # -- running ---------------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as it appears in references."""
        if self._server is None:
            raise RuntimeError("the Harbor stand-in is not running")
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def start(self) -> None:
        """Listen on an ephemeral port and serve in a thread; no-op if serving."""
        if self._server is not None:
            return
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._tls.cert_file, self._tls.key_file)
        server = _Server(("127.0.0.1", 0), _Handler, context, self)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # `stop` waits for one poll
            name="testkit-harbor",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Stop serving and close the sockets."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        # A later `start` gets a fresh connection pool; caches go with it.
        self.upstream.close()
        self.upstream = _Upstream(self.registry)

    def __enter__(self) -> HarborStandIn:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- used by the handler ---------------------------------------------------

    def authenticate(self, header: str | None) -> HarborAccount | Literal[False] | None:
        """The account of a Basic header; None for none; False for a bad one."""
        if header is None:
            return None
        username, password = _basic_credentials(header)
        account = self.account(username or "")
        if account is None or password is None:
            return False
        if not secrets.compare_digest(account.password.encode(), password.encode()):
            return False
        return account

    def repository(self, project: HarborProject, name: str) -> _Repository:
        return _Repository(project, name, self.upstream, self.ids)

    def create_project(self, project: HarborProject, creator: HarborAccount) -> None:
        """Add a project made through the API; its creator becomes its admin."""
        with self._lock:
            self.add_project(project)
            roles = {**creator.roles, project.name: "projectAdmin"}
            self._accounts[creator.name] = replace(creator, roles=roles)

    def charge(self, project: HarborProject, size: int) -> tuple[int, int] | None:
        """Count `size` bytes against the project's quota, or, when they do not
        fit, return (usage after, limit) and count nothing.
        """
        with self._lock:
            current = self._projects.get(project.name, project)
            used = current.storage_used + size
            if current.storage_limit is not None and used > current.storage_limit:
                return used, current.storage_limit
            self._projects[project.name] = replace(current, storage_used=used)
            return None

    def _next_project_id(self) -> int:
        return max((p.project_id for p in self._projects.values()), default=0) + 1


class _Server(http.server.ThreadingHTTPServer):
    """A threading HTTPS server that does each TLS handshake in its own thread."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        context: ssl.SSLContext,
        harbor: HarborStandIn,
    ) -> None:
        super().__init__(address, handler)
        self.context = context
        self.harbor = harbor

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(_SOCKET_TIMEOUT)
        try:
            tls_socket = self.context.wrap_socket(request, server_side=True)
        except OSError as error:
            logger.debug("harbor stand-in: TLS handshake failed: %s", error)
            return
        try:
            super().finish_request(tls_socket, client_address)
        finally:
            tls_socket.close()


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


def _json_answer(status: int, document: Any, **headers: str) -> _Answer:
    return _Answer(status, json.dumps(document).encode(), headers)


def _error(status: int, code: str, message: str, **headers: str) -> _Answer:
    """Harbor's error body (src/lib/http/error.go)."""
    return _json_answer(
        status, {"errors": [{"code": code, "message": message}]}, **headers
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes to the REST API or the /v2 proxy; see `HarborStandIn`."""

    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = _SOCKET_TIMEOUT

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("harbor stand-in: " + format, *args)

    @property
    def harbor(self) -> HarborStandIn:
        return self.server.harbor

    def _dispatch(self) -> None:
        path, _, query = self.path.partition("?")
        body = self._read_body()
        account = self.harbor.authenticate(self.headers.get("Authorization"))
        if self.command in _WRITES and self._carries_session():
            # Harbor checks CSRF only for requests with a session
            # (src/server/middleware/csrf); a client has no token to show.
            answer = _error(403, "FORBIDDEN", "CSRF token not found in request")
        elif path.startswith("/v2/") or path == "/v2":
            answer = _V2Front(self.harbor, self).answer(path, query, body)
        elif path.startswith(API_PREFIX + "/"):
            api = _Api(self.harbor, self.command, self.headers, account)
            answer = api.answer(path.removeprefix(API_PREFIX), query, body)
        else:
            answer = _error(404, "NOT_FOUND", f"{path} was not found")
        # Recorded before answering, so a client that has its answer can
        # already read the request in `requests`.
        self._record(path, query, account, answer.status)
        self._send(answer, is_api=path.startswith("/api/"))

    def _carries_session(self) -> bool:
        cookies = self.headers.get_all("Cookie") or []
        return any(re.search(r"(^|;)\s*sid=", value) for value in cookies)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return bytes(body)
            body += self.rfile.read(size)
            self.rfile.readline()

    def _send(self, answer: _Answer, *, is_api: bool) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.body or "Content-Type" not in answer.headers:
            self.send_header("Content-Type", answer.content_type)
        if "Content-Length" not in answer.headers:
            self.send_header("Content-Length", str(len(answer.body)))
        if is_api:
            # Harbor's session cookie, which a client must not send back.
            self.send_header("Set-Cookie", f"sid={secrets.token_hex(16)}; Path=/")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    def _record(
        self,
        path: str,
        query: str,
        account: HarborAccount | Literal[False] | None,
        status: int,
    ) -> None:
        self.harbor.record(
            HarborRequest(
                method=self.command,
                path=path,
                query=urllib.parse.parse_qs(query),
                account=account.name if account else None,
                status=status,
                cookie=self._carries_session(),
            )
        )


# The REST API -----------------------------------------------------------------


Params = Mapping[str, str]
Query = Mapping[str, list[str]]
_Endpoint = Callable[["_Api", Params, Query, bytes], "_Answer"]


def _route(
    method: str, template: str, handler: _Endpoint
) -> tuple[str, re.Pattern[str], _Endpoint]:
    """A route: `{name}` in `template` matches one raw (still encoded) segment."""
    parts = re.split(r"\{(\w+)\}", template)
    pattern = "".join(
        f"(?P<{part}>[^/]+)" if index % 2 else re.escape(part)
        for index, part in enumerate(parts)
    )
    return method, re.compile(f"^{pattern}$"), handler


class _Api:
    """One request to /api/v2.0, answered as Harbor's handlers answer it."""

    def __init__(
        self,
        harbor: HarborStandIn,
        method: str,
        headers: Any,
        account: HarborAccount | Literal[False] | None,
    ) -> None:
        self.harbor = harbor
        self.method = method
        self.headers = headers
        self.account = account

    def answer(self, path: str, query: str, body: bytes) -> _Answer:
        if self.account is False:
            return _error(401, "UNAUTHORIZED", "invalid credentials")
        for method, pattern, handler in _ROUTES:
            match = pattern.match(path)
            if match and method == self.method:
                # Harbor's router decodes the path once before the handler.
                params = {
                    k: urllib.parse.unquote(v) for k, v in match.groupdict().items()
                }
                return handler(self, params, urllib.parse.parse_qs(query), body)
        return _error(404, "NOT_FOUND", f"{API_PREFIX}{path} was not found")

    # -- access ------------------------------------------------------------------

    @property
    def signed_in(self) -> HarborAccount | None:
        return self.account or None

    def _refused(self) -> _Answer:
        # RequireProjectAccess: 401 for anonymous, else 403, whether or not
        # the project exists (src/server/v2.0/handler/base.go).
        if self.signed_in is None:
            return _error(401, "UNAUTHORIZED", "unauthorized")
        return _error(403, "FORBIDDEN", "forbidden")

    def _require(self, name: str, policy: Policy) -> HarborProject | _Answer:
        project = self.harbor.project(name)
        if project is None or policy not in self._policies(project):
            return self._refused()
        return project

    def _policies(self, project: HarborProject) -> frozenset[Policy]:
        if self.signed_in is None:
            return PUBLIC_POLICIES if project.public else frozenset()
        return self.signed_in.policies(project)

    def _repository(
        self, params: Mapping[str, str], policy: Policy
    ) -> _Repository | _Answer:
        found = self._require(params["project"], policy)
        if isinstance(found, _Answer):
            return found
        # The router decoded the path once; a name still holding "/" was
        # encoded once only, and Harbor's router finds no route for it.
        name = urllib.parse.unquote(params["repository"])
        if "/" in params["repository"]:
            return _error(404, "NOT_FOUND", "the route was not found")
        return self.harbor.repository(found, name)

    # -- system ----------------------------------------------------------------

    def systeminfo(self, *_: Any) -> _Answer:
        info: dict[str, Any] = {
            "auth_mode": "db_auth",
            "primary_auth_mode": False,
            "self_registration": False,
            "banner_message": "",
            "current_time": _now(),
        }
        if self.signed_in is not None:
            host = self.headers.get("Host", "")
            info |= {
                "harbor_version": HARBOR_VERSION,
                "external_url": f"https://{host}",
                "registry_url": host,
                "project_creation_restriction": "everyone",
                "has_ca_root": False,
                "read_only": False,
                "notification_enable": True,
                "registry_storage_provider_name": "filesystem",
            }
        return _json_answer(200, info)

    def ping(self, *_: Any) -> _Answer:
        return _Answer(200, b"Pong", content_type="text/plain")

    # -- projects ----------------------------------------------------------------

    def project_head(
        self, _: Any, query: Mapping[str, list[str]], __: bytes
    ) -> _Answer:
        if self.signed_in is None:
            return _error(401, "UNAUTHORIZED", "unauthorized")
        name = (query.get("project_name") or [""])[0]
        if self.harbor.project(name) is None:
            return _error(404, "NOT_FOUND", f"project {name} not found")
        return _Answer(200)

    def project_create(self, _: Any, __: Any, body: bytes) -> _Answer:
        account = self.signed_in
        if account is None:
            return _error(401, "UNAUTHORIZED", "unauthorized")
        if account.is_robot:
            return _error(403, "FORBIDDEN", "forbidden")
        request = _json_object(body)
        name = str(request.get("project_name") or "")
        if not _PROJECT_NAME.match(name):
            return _error(400, "BAD_REQUEST", f"invalid project name {name!r}")
        if self.harbor.project(name) is not None:
            return _error(409, "CONFLICT", f"The project named {name} already exists")
        public = str((request.get("metadata") or {}).get("public")).lower() == "true"
        self.harbor.create_project(HarborProject(name, public=public), account)
        created = self.harbor.project(name)
        assert created is not None
        location = f"{API_PREFIX}/projects/{created.project_id}"
        return _Answer(201, headers={"Location": location})

    def project_get(self, params: Mapping[str, str], *_: Any) -> _Answer:
        project = self._project_named(params["ident"])
        if project is None or not self._can_read(project):
            return self._refused()
        return _json_answer(200, self._project_json(project))

    def _project_named(self, ident: str) -> HarborProject | None:
        by_name = self.headers.get("X-Is-Resource-Name", "").lower() == "true"
        if not by_name and ident.isdigit():
            return self.harbor.project_by_id(int(ident))
        return self.harbor.project(ident)

    def _can_read(self, project: HarborProject) -> bool:
        if self.signed_in is None:
            return project.public
        return self.signed_in.can_read(project)

    def _project_json(self, project: HarborProject) -> dict[str, Any]:
        account = self.signed_in
        role_ids = account.role_ids(project) if account else []
        document: dict[str, Any] = {
            "project_id": project.project_id,
            "owner_id": 1,
            "owner_name": ADMIN,
            "name": project.name,
            "creation_time": _TIME,
            "update_time": _TIME,
            "deleted": False,
            "togglable": True,
            "repo_count": 0,
            "current_user_role_id": role_ids[0] if role_ids else 0,
            "current_user_role_ids": role_ids,
            "metadata": {"public": "true" if project.public else "false"},
            "cve_allowlist": {
                "id": project.project_id,
                "project_id": project.project_id,
                "items": [],
                "creation_time": _TIME,
                "update_time": _TIME,
            },
        }
        if project.proxy_cache:
            # Set only for a proxy-cache project: the upstream registry's ID.
            document["registry_id"] = 1
        return document

    # -- artifacts and tags ------------------------------------------------------

    def artifacts(
        self, params: Mapping[str, str], query: Mapping[str, list[str]], _: bytes
    ) -> _Answer:
        repository = self._repository(params, ("artifact", "list"))
        if isinstance(repository, _Answer):
            return repository
        options = _ArtifactOptions(
            with_tag=_query_flag(query, "with_tag", default=True),
            with_immutable_status=_query_flag(query, "with_immutable_status"),
        )
        items = [
            repository.to_json(manifest, tags, options)
            for manifest, tags in repository.artifacts().values()
        ]
        return _page(
            items,
            query,
            f"{API_PREFIX}/projects/{params['project']}"
            f"/repositories/{urllib.parse.quote(params['repository'])}/artifacts",
        )

    def tag_create(self, params: Mapping[str, str], _: Any, body: bytes) -> _Answer:
        repository = self._repository(params, ("tag", "create"))
        if isinstance(repository, _Answer):
            return repository
        if repository.project.proxy_cache:
            # requireNonProxyCacheProject (src/server/v2.0/handler/artifact.go)
            message = "the operation isn't supported for a proxy cache project"
            return _error(405, "METHOD_NOT_ALLOWED", message)
        found = repository.find(params["reference"])
        if found is None:
            return _not_found_artifact(repository, params["reference"])
        name = str(_json_object(body).get("name") or "")
        if name in repository.upstream.tags(repository.path):
            number = repository.repository_id
            message = f"tag {name} already exists under the repository {number}"
            return _error(409, "CONFLICT", message)
        repository.upstream.manifest_put(repository.path, name, found[0])
        return _Answer(201)

    def tag_delete(self, params: Mapping[str, str], *_: Any) -> _Answer:
        repository = self._repository(params, ("tag", "delete"))
        if isinstance(repository, _Answer):
            return repository
        found = repository.find(params["reference"])
        if found is None:
            return _not_found_artifact(repository, params["reference"])
        manifest, tags = found
        tag = params["tag"]
        if tag not in tags:
            artifact = repository.ids.of(
                "artifact", f"{repository.path}@{manifest.digest}"
            )
            return _error(
                404, "NOT_FOUND", f"tag {tag} attached to artifact {artifact} not found"
            )
        if repository.project.is_immutable(tag):
            message = f"the tag {tag} configured as immutable, cannot be deleted"
            return _error(412, "PRECONDITION", message)
        _untag(repository, manifest, tags, tag)
        return _Answer(200)

    # -- rules and permissions -------------------------------------------------

    def immutable_rules(
        self, params: Mapping[str, str], query: Mapping[str, list[str]], _: bytes
    ) -> _Answer:
        project = self._project_named(params["ident"])
        policy = ("immutable-tag", "list")
        if project is None or policy not in self._policies(project):
            return self._refused()
        rules = [
            _rule_json(index, pattern)
            for index, pattern in enumerate(project.immutable_tags, start=1)
        ]
        return _page(
            rules, query, f"{API_PREFIX}/projects/{params['ident']}/immutabletagrules"
        )

    def permissions(self, _: Any, query: Mapping[str, list[str]], __: bytes) -> _Answer:
        account = self.signed_in
        if account is None:
            return _error(401, "UNAUTHORIZED", "unauthorized")
        scope = (query.get("scope") or [""])[0]
        relative = _query_flag(query, "relative")
        match = re.fullmatch(r"/project/(\d+)", scope)
        project = self.harbor.project_by_id(int(match[1])) if match else None
        policies = sorted(account.policies(project)) if project else []
        prefix = "" if relative else f"{scope}/"
        return _json_answer(
            200, [{"resource": prefix + r, "action": a} for r, a in policies]
        )


_ARTIFACT = "/projects/{project}/repositories/{repository}/artifacts/{reference}"
_ROUTES: tuple[tuple[str, re.Pattern[str], _Endpoint], ...] = (
    _route("GET", "/systeminfo", _Api.systeminfo),
    _route("GET", "/ping", _Api.ping),
    _route("HEAD", "/projects", _Api.project_head),
    _route("POST", "/projects", _Api.project_create),
    _route("GET", "/projects/{ident}", _Api.project_get),
    _route(
        "GET", "/projects/{project}/repositories/{repository}/artifacts", _Api.artifacts
    ),
    _route("POST", _ARTIFACT + "/tags", _Api.tag_create),
    _route("DELETE", _ARTIFACT + "/tags/{tag}", _Api.tag_delete),
    _route("GET", "/projects/{ident}/immutabletagrules", _Api.immutable_rules),
    _route("GET", "/users/current/permissions", _Api.permissions),
)


def _untag(
    repository: _Repository, manifest: _Manifest, tags: Sequence[str], tag: str
) -> None:
    """Remove one tag in the registry, keeping the artifact as Harbor does.

    Distribution 2.8 deletes manifests, not tags: the manifest goes, then
    comes back by digest (an index may list it) and under its other tags.
    """
    upstream = repository.upstream
    upstream.manifest_delete(repository.path, manifest.digest)
    for reference in [manifest.digest, *(t for t in tags if t != tag)]:
        upstream.manifest_put(repository.path, reference, manifest)


def _not_found_artifact(repository: _Repository, reference: str) -> _Answer:
    message = f"artifact {repository.path}@{reference} not found"
    return _error(404, "NOT_FOUND", message)


def _rule_json(rule_id: int, pattern: str) -> dict[str, Any]:
    """An `ImmutableRule` for tags matching `pattern`, in every repository."""
    return {
        "id": rule_id,
        "priority": 0,
        "disabled": False,
        "action": "immutable",
        "template": "immutable_template",
        "params": {},
        "tag_selectors": [
            {"kind": "doublestar", "decoration": "matches", "pattern": pattern}
        ],
        "scope_selectors": {
            "repository": [
                {"kind": "doublestar", "decoration": "repoMatches", "pattern": "**"}
            ]
        },
    }


def _page(items: Sequence[Any], query: Mapping[str, list[str]], path: str) -> _Answer:
    """One page of `items`, with X-Total-Count and Harbor's Link header."""
    try:
        number = int((query.get("page") or ["1"])[0])
        size = int((query.get("page_size") or [str(_DEFAULT_PAGE_SIZE)])[0])
    except ValueError:
        return _error(400, "BAD_REQUEST", "page and page_size must be integers")
    if number < 1 or not 1 <= size <= _MAX_PAGE_SIZE:
        message = f"page must be 1 or more and page_size 1 to {_MAX_PAGE_SIZE}"
        return _error(400, "BAD_REQUEST", message)
    chunk = list(items[(number - 1) * size : number * size])
    headers = {"X-Total-Count": str(len(items))}
    links = _links(query, path, number, size, len(items))
    if links:
        headers["Link"] = links
    return _json_answer(200, chunk, **headers)


def _links(
    query: Mapping[str, list[str]], path: str, number: int, size: int, total: int
) -> str:
    """Harbor's Link header: `<url>; rel="prev"` and `<url>; rel="next"`."""
    links = []
    if number > 1 and (number - 1) * size < total:
        links.append(f'<{_page_url(query, path, number - 1, size)}>; rel="prev"')
    if number * size < total:
        links.append(f'<{_page_url(query, path, number + 1, size)}>; rel="next"')
    return " , ".join(links)


def _page_url(query: Mapping[str, list[str]], path: str, number: int, size: int) -> str:
    params = {key: values[0] for key, values in query.items()}
    params |= {"page": str(number), "page_size": str(size)}
    return f"{path}?{urllib.parse.urlencode(params)}"


def _query_flag(
    query: Mapping[str, list[str]], name: str, *, default: bool = False
) -> bool:
    values = query.get(name)
    return values[0].lower() == "true" if values else default


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _now() -> str:
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _basic_credentials(header: str) -> tuple[str | None, str | None]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon else (None, None)


# The /v2 front -----------------------------------------------------------------


class _V2Front:
    """Harbor core's checks on a /v2 request, then the real registry's answer."""

    def __init__(self, harbor: HarborStandIn, handler: _Handler) -> None:
        self.harbor = harbor
        self.handler = handler
        self.method = handler.command

    def answer(self, path: str, query: str, body: bytes) -> _Answer:
        match = _V2_PATH.match(path)
        if match is not None:
            refusal = self._refusal(match["name"], match["kind"], match["rest"], body)
            if refusal is not None:
                return refusal
        return self._forward(path + (f"?{query}" if query else ""), body)

    def _refusal(self, name: str, kind: str, rest: str, body: bytes) -> _Answer | None:
        """Harbor's refusal of the request, in the order of its middlewares."""
        project_name = name.split("/", 1)[0]
        project = self.harbor.project(project_name)
        if project is None:
            return self._missing_project(project_name)
        if self.method not in _WRITES or kind == "tags":
            return None
        if project.proxy_cache:
            message = f"can not push artifact to a proxy project: {project.name}"
            return _error(403, "DENIED", message)
        if kind == "manifests" and self.method == "PUT":
            immutable = self._immutable(project, name, rest)
            if immutable is not None:
                return immutable
        return self._quota(project, len(body))

    def _missing_project(self, name: str) -> _Answer | None:
        # v2auth answers 401 with a Basic challenge when the request carried
        # credentials; without any, the registry's own challenge comes first.
        if self.handler.headers.get("Authorization") is None:
            return None
        message = f"project not found, name: {name}"
        challenge = {"Www-Authenticate": 'Basic realm="harbor"'}
        return _error(401, "UNAUTHORIZED", message, **challenge)

    def _immutable(self, project: HarborProject, name: str, tag: str) -> _Answer | None:
        # Only an existing tag is protected (src/server/middleware/immutable).
        if tag.startswith("sha256:") or not project.is_immutable(tag):
            return None
        if self.harbor.upstream.manifest(name, tag) is None:
            return None
        repository = name.split("/", 1)[1]
        message = (
            f"Failed to process request due to '{repository}:{tag}' configured "
            "as immutable."
        )
        return _error(412, "PRECONDITION", message)

    def _quota(self, project: HarborProject, size: int) -> _Answer | None:
        refused = self.harbor.charge(project, size)
        if refused is None:
            return None
        used, limit = refused
        message = (
            "Quota exceeded when processing the request of adding "
            f"{_bytes(size)} of storage resource, which when updated to current "
            f"usage of {_bytes(used)} will exceed the configured upper limit of "
            f"{_bytes(limit)}."
        )
        return _error(403, "DENIED", message)

    def _forward(self, target: str, body: bytes) -> _Answer:
        headers = {
            name: value
            for name, value in self.handler.headers.items()
            if name.lower() not in _HOP_BY_HOP and name.lower() != "cookie"
        }
        response = self.harbor.upstream.forward(self.method, target, headers, body)
        # Content-Type goes in `content_type`: kept here too, it would be
        # sent twice, and a client would read both values joined by a comma.
        kept = {
            name: value
            for name, value in response.headers.items()
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-type"
        }
        if self.method == "HEAD":
            kept["Content-Length"] = response.headers.get("Content-Length", "0")
        content_type = response.headers.get("Content-Type", "application/octet-stream")
        return _Answer(response.status_code, response.content, kept, content_type)


def _bytes(size: int) -> str:
    """A size as Harbor's quota messages write it, e.g. "1.25 KiB"."""
    if size < 1024:
        return f"{size} B"
    scaled, unit = size / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if scaled < 1024:
            break
        scaled, unit = scaled / 1024, bigger
    return f"{scaled:.2f} {unit}"


# The contract with Harbor's OpenAPI description ---------------------------------


class SwaggerContract:
    """Harbor's OpenAPI description (Swagger 2.0), to check answers against.

    Stricter than the description itself in one way: an object may hold no
    property the description does not declare, so the stand-in cannot
    invent fields. Looser in one: a schema that is just ``type: object``
    accepts any value, as go-swagger maps it to ``interface{}`` and Harbor
    puts strings there (``extra_attrs``, rule ``params``).
    """

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self.base_path = str(document.get("basePath", ""))
        self._paths: list[tuple[re.Pattern[str], int, str]] = sorted(
            (
                (_template(template), -template.count("{"), template)
                for template in document.get("paths", {})
            ),
            key=lambda item: item[1],
            reverse=True,
        )

    @classmethod
    def load(cls, path: Path) -> SwaggerContract:
        """Read the description from a YAML file."""
        # libyaml's loader, where installed, reads the 300 KB file 10x faster.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        text = path.read_text(encoding="utf-8")
        return cls(yaml.load(text, Loader=loader))  # noqa: S506  # a safe loader either way

    def operation(self, method: str, path: str) -> tuple[str, Mapping[str, Any]] | None:
        """The path template and operation that `method` and a raw `path`
        (with the base path) meet, or None.
        """
        relative = path.removeprefix(self.base_path)
        for pattern, _, template in self._paths:
            operation = self.document["paths"][template].get(method.lower())
            if operation is not None and pattern.fullmatch(relative):
                return template, operation
        return None

    def problems(self, method: str, path: str, status: int, body: bytes) -> list[str]:
        """What is wrong with an answer: an unknown operation, an undocumented
        success status, or a body that does not fit the documented schema.

        An error status the operation does not document is checked against
        `Errors`: Harbor answers 403 where the description lists only 401
        (RequireProjectAccess), with its one error body.
        """
        found = self.operation(method, path)
        if found is None:
            return [f"{method} {path}: no such operation in the description"]
        template, operation = found
        where = f"{method} {template} -> {status}"
        response = operation.get("responses", {}).get(str(status))
        if response is None and status < 400:
            return [f"{where}: status not documented"]
        schema = (
            self._response_schema(response)
            if response is not None
            else self.ref("#/definitions/Errors")
        )
        if schema is None or method == "HEAD":
            return []
        if not body:
            return [f"{where}: no body, where the description has one"]
        document = json.loads(body)
        return [f"{where}: {problem}" for problem in self.validate(document, schema)]

    def ref(self, pointer: str) -> Mapping[str, Any]:
        """The object a ``#/...`` pointer names."""
        node: Any = self.document
        for part in pointer.removeprefix("#/").split("/"):
            node = node[part]
        return node  # type: ignore[no-any-return]  # the description is a tree of dicts

    def validate(
        self, value: Any, schema: Mapping[str, Any], where: str = "$"
    ) -> list[str]:
        """Every way `value` breaks `schema`, each with its JSON path."""
        schema = self._resolved(schema)
        if value is None:
            return [] if schema.get("x-nullable") else [f"{where}: null is not allowed"]
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            return self._object(value, schema, where)
        if kind == "array":
            return self._array(value, schema, where)
        return _scalar(value, schema, where)

    def _response_schema(self, response: Mapping[str, Any]) -> Mapping[str, Any] | None:
        response = self._resolved(response)
        schema = response.get("schema")
        return schema if isinstance(schema, Mapping) else None

    def _resolved(self, node: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in node:
            extra = {k: v for k, v in node.items() if k != "$ref"}
            node = {**self.ref(str(node["$ref"])), **extra}
        return node

    def _object(self, value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        if not properties and extra is None:
            return []  # bare `type: object`: any value (see the class docstring)
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        problems = [
            f"{where}: missing required {name!r}"
            for name in schema.get("required", ())
            if name not in value
        ]
        for name, item in value.items():
            path = f"{where}.{name}"
            if name in properties:
                problems += self.validate(item, properties[name], path)
            elif isinstance(extra, Mapping):
                problems += self.validate(item, extra, path)
            else:
                problems.append(f"{path}: not declared in the description")
        return problems

    def _array(self, value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
        if not isinstance(value, list):
            return [f"{where}: expected an array, got {type(value).__name__}"]
        items = schema.get("items", {})
        return [
            problem
            for index, item in enumerate(value)
            for problem in self.validate(item, items, f"{where}[{index}]")
        ]


_DATE_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
)
_SCALARS: Mapping[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _scalar(value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    kind = schema.get("type")
    if kind is None:
        return []
    expected = _SCALARS.get(str(kind), ())
    wrong_bool = kind in ("integer", "number") and isinstance(value, bool)
    if not isinstance(value, expected) or wrong_bool:
        return [f"{where}: expected {kind}, got {type(value).__name__} {value!r}"]
    if _bad_date_time(value, schema):
        return [f"{where}: {value!r} is not an RFC 3339 date-time"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of {schema['enum']}"]
    if "maximum" in schema and value > schema["maximum"]:
        return [f"{where}: {value!r} is over {schema['maximum']}"]
    return []


def _bad_date_time(value: Any, schema: Mapping[str, Any]) -> bool:
    if schema.get("format") != "date-time" or not isinstance(value, str):
        return False
    return _DATE_TIME.match(value) is None


def _template(template: str) -> re.Pattern[str]:
    """A path template, `{name}` standing for one raw segment."""
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile(
        "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
    )
