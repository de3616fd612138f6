"""A client for one registry: manifests, blobs and tags over the distribution API.

One `RegistryClient` per registry host, shared by every thread of a run: it
holds one pool of keep-alive connections, one token cache and one cache of
config blobs. Methods name the resource first, as the
API does: `manifest_head`, `manifest_put`, `blob_mount`, `tag_list`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote, urljoin

import httpx

from reconciler import __version__
from reconciler.oci import (
    MANIFEST_ACCEPT,
    MANIFEST_MEDIA_TYPES,
    Digest,
    InvalidDigestError,
    Manifest,
    Reference,
    Repository,
    parse_manifest,
)
from reconciler.registry._auth import Authenticator, Challenge, Scopes, batch_scopes
from reconciler.registry._cookies import NoCookies
from reconciler.registry._credentials import Credentials
from reconciler.registry._errors import (
    IntegrityError,
    RegistryError,
    Reply,
    error_for_reply,
)
from reconciler.registry._retry import (
    RetryableStatus,
    RetryPolicy,
    retry_statuses,
)
from reconciler.registry._settings import ConnectionSettings
from reconciler.registry._transport_errors import (
    explain_transport_error,
    plain_http_to_tls_port,
    tls_port_error,
)
from reconciler.registry._wire import (
    BodyTooLarge,
    PooledTransport,
    SplitField,
    connection_pool,
    head_of,
    request_head,
)

logger = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_KEEP_MANIFEST_BYTES = 64 * 1024
_PULL = frozenset({"pull"})
_PUSH = frozenset({"pull", "push"})
_TAG_PAGE = 1000
_USER_AGENT = f"reconciler/{__version__}"
_SENDS_BODY = frozenset({"POST", "PUT", "PATCH"})  # Content-Length even when empty
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TARGET = re.compile(r"/[!-~]*")  # visible ASCII: no space, CR or LF

T = TypeVar("T")


def _each(function: Callable[[Scopes], None], batches: list[Scopes]) -> None:
    for batch in batches:
        function(batch)


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    """What a HEAD tells about a manifest: digest, media type and size."""

    digest: Digest
    media_type: str
    size: int


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    """A manifest read with GET: its description and its verified bytes."""

    info: ManifestInfo
    manifest: Manifest


class RegistryClient:
    """Talks to one registry; thread-safe, and cheap to share."""

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        credentials: Credentials | None = None,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy | None = None,
        max_connections: int = 64,
        timeout: float = 30.0,
    ) -> None:
        self.settings = settings
        self._retry = retry or RetryPolicy()
        # HTTP/1.1 on purpose: httpcore's HTTP/2 connection, shared by
        # threads, sent frames Go's server rejected with PROTOCOL_ERROR under
        # load, and one HTTP/2 connection per thread was slower (measured).
        self._transport = transport or connection_pool(
            settings, max_idle=max_connections, timeout=timeout
        )
        # Requests that follow redirects, and token requests, go through
        # httpx's client; the rest are handed to the transport directly.
        self._http = httpx.Client(
            transport=self._transport,
            timeout=httpx.Timeout(timeout, connect=10.0),
            follow_redirects=False,
            cookies=NoCookies(),
            headers={"User-Agent": _USER_AGENT},
        )
        self._auth = Authenticator(
            self._http,
            settings.host,
            credentials,
            registry_is_tls=not settings.insecure,
        )
        self._origin = httpx.URL(settings.base_url)
        self._url_prefix = settings.base_url + "/"
        self._placeholders: dict[str, httpx.Request] = {}
        # The Host field httpx would send, for requests built by hand.
        self._host_field = httpx.Request("GET", self._origin).headers["Host"]
        self._pinged = False
        self._ping_lock = threading.Lock()
        self._configs: dict[Digest, bytes] = {}
        self._manifests: dict[Reference, FetchedManifest] = {}
        self._landed: set[tuple[Repository, Digest]] = set()
        self._landing: dict[tuple[Repository, Digest], threading.Lock] = {}
        self._landing_lock = threading.Lock()

    @property
    def retry(self) -> RetryPolicy:
        """How this client retries; copies across registries use it too."""
        return self._retry

    @property
    def host(self) -> str:
        return self.settings.host

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()  # closes the transport too

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- manifests -----------------------------------------------------------

    def manifest_head(self, ref: Reference) -> ManifestInfo | None:
        """Describe the manifest `ref` points at, or None when there is none."""
        reply = self._request(
            "HEAD",
            self._manifest_url(ref),
            action=f"read manifest {ref}",
            scopes={ref.repository.path: _PULL},
            headers={"Accept": MANIFEST_ACCEPT},
            allow=(404,),
        )
        return self._head_info(ref, reply.status, reply.headers.get)

    def manifest_heads(self, refs: Sequence[Reference]) -> list[ManifestInfo | None]:
        """`manifest_head` of each of `refs`, HTTP/1.1-pipelined where it can be.

        The HEADs go out back to back on one connection. Any of them not
        answered 200 or 404 by then (a 401, a 429, a dropped connection) is
        sent again alone, with the usual retries and errors.
        """
        if not isinstance(self._transport, PooledTransport) or len(refs) < 2:
            return [self.manifest_head(ref) for ref in refs]
        try:
            self._ensure_pinged()
            heads = [self._head_request(ref) for ref in refs]
        except (RegistryError, httpx.TransportError, SplitField, UnicodeEncodeError):
            # Told the usual way, by the first HEAD that meets it.
            return [self.manifest_head(ref) for ref in refs]
        try:
            answers = self._transport.pipeline(self._origin, heads)
        except httpx.TransportError:  # no connection: each HEAD tells why
            answers = [None] * len(heads)
        logger.debug("pipelined %d HEADs", len(heads))
        infos: list[ManifestInfo | None] = []
        for ref, answer in zip(refs, answers, strict=True):
            if answer is None or answer.status not in (200, 404):
                infos.append(self.manifest_head(ref))
            else:
                infos.append(self._head_info(ref, answer.status, answer.field))
        return infos

    def _head_request(self, ref: Reference) -> bytes:
        scopes = {ref.repository.path: _PULL}
        fields = {
            "Host": self._host_field,
            "User-Agent": _USER_AGENT,
            "Accept": MANIFEST_ACCEPT,
            **self._auth.header(scopes, scopes),
        }
        target = f"/v2/{ref.repository.path}/manifests/{ref.identifier}"
        return request_head("HEAD", target, fields)

    def _head_info(
        self, ref: Reference, status: int, field: Callable[[str], str | None]
    ) -> ManifestInfo | None:
        """What a HEAD answered `status`, with header fields by `field`, says."""
        if status == 404:
            return None
        digest = _digest_in(ref, field("Docker-Content-Digest"))
        media_type = _media_type(field("Content-Type"))
        if digest is None or media_type not in MANIFEST_MEDIA_TYPES:
            # Not every registry sends a digest, or a manifest Content-Type,
            # on HEAD; then only the bytes can tell.
            exact = ref.repository.digest(digest) if digest else ref
            return self.manifest_get(exact).info
        if ref.digest is not None and digest != ref.digest:
            raise IntegrityError(
                f"registry answered {ref} with a different digest, {digest}"
            )
        return ManifestInfo(digest, media_type, int(field("Content-Length") or 0))

    def manifest_get(self, ref: Reference) -> FetchedManifest:
        """Read a manifest's bytes, capped at 4 MiB and checked against its digest.

        A manifest read is kept for the run by digest (small ones): content
        by digest never changes, and apply copies what the plan just read.
        """
        found = self._manifest_read(ref, missing_ok=False)
        assert found is not None
        return found

    def manifest_find(self, ref: Reference) -> FetchedManifest | None:
        """Like `manifest_get`, but None when there is no such manifest."""
        return self._manifest_read(ref, missing_ok=True)

    def _manifest_read(
        self, ref: Reference, *, missing_ok: bool
    ) -> FetchedManifest | None:
        if ref.digest is not None:
            kept = self._manifests.get(ref)
            if kept is not None:
                return kept
        fetched = self._manifest_fetch(ref, missing_ok=missing_ok)
        if fetched is not None and fetched.info.size <= _KEEP_MANIFEST_BYTES:
            self._manifests[ref.repository.digest(fetched.info.digest)] = fetched
        return fetched

    def _manifest_fetch(
        self, ref: Reference, *, missing_ok: bool
    ) -> FetchedManifest | None:
        reply = self._request(
            "GET",
            self._manifest_url(ref),
            action=f"read manifest {ref}",
            scopes={ref.repository.path: _PULL},
            headers={"Accept": MANIFEST_ACCEPT},
            cap=MAX_MANIFEST_BYTES,
            allow=(404,) if missing_ok else (),
        )
        if reply.status == 404:
            return None
        computed = Digest.of(reply.body)
        claimed = ref.digest or _header_digest(ref, reply) or computed
        if computed != claimed:
            raise IntegrityError(
                f"manifest {ref} does not match its digest: the registry served "
                f"{computed.short}, expected {claimed.short}",
                hint="the registry or a proxy in between altered the content",
            )
        manifest = _parse(ref, reply)
        # The bytes say what they are; a Content-Type may be wrong.
        info = ManifestInfo(computed, manifest.media_type, len(reply.body))
        return FetchedManifest(info, manifest)

    def manifest_put(self, ref: Reference, raw: bytes, media_type: str) -> Digest:
        """Push `raw` exactly as given, and check the digest the registry reports."""
        expected = Digest.of(raw)
        reply = self._request(
            "PUT",
            self._manifest_url(ref),
            action=f"push manifest {ref}",
            scopes={ref.repository.path: _PUSH},
            headers={"Content-Type": media_type},
            content=raw,
        )
        returned = reply.headers.get("Docker-Content-Digest")
        if returned and returned != expected:
            raise IntegrityError(
                f"pushed manifest {ref} as {expected.short}, but the registry "
                f"stored {returned}",
                hint="the registry rewrote the manifest; it cannot be used here",
            )
        logger.debug("pushed %s (%s)", ref, expected.short)
        return expected

    def manifest_delete(self, repository: Repository, digest: Digest) -> None:
        """Delete a manifest by digest, with every tag on it."""
        self._request(
            "DELETE",
            f"{self._base(repository)}/manifests/{digest}",
            action=f"delete manifest {repository}@{digest}",
            scopes={repository.path: frozenset({"pull", "push", "delete"})},
            allow=(404,),
        )

    # -- blobs ---------------------------------------------------------------

    def blob_head(self, repository: Repository, digest: Digest) -> bool:
        """Whether the repository has the blob."""
        reply = self._request(
            "HEAD",
            f"{self._base(repository)}/blobs/{digest}",
            action=f"check blob {digest.short} in {repository}",
            scopes={repository.path: _PULL},
            allow=(404,),
        )
        return reply.status == 200

    def blob_get(self, repository: Repository, digest: Digest) -> bytes:
        """Read a small blob (a config), verified, and cached for the run."""
        cached = self._configs.get(digest)
        if cached is not None:
            return cached
        reply = self._request(
            "GET",
            f"{self._base(repository)}/blobs/{digest}",
            action=f"read blob {digest.short} from {repository}",
            scopes={repository.path: _PULL},
            cap=MAX_MANIFEST_BYTES,
            follow_redirects=True,
        )
        if not digest.verifies(reply.body):
            raise IntegrityError(
                f"blob {digest.short} from {repository} does not match its digest"
            )
        self._configs[digest] = reply.body
        return reply.body

    def blob_mount(
        self, repository: Repository, digest: Digest, source: Repository
    ) -> str | None:
        """Mount a blob from `source`; None when done, else an upload URL.

        The registry answers 202 with an upload session instead of mounting
        when it cannot (source not readable, or a blob it does not link).
        """
        mount = quote(str(digest), safe="")
        reply = self._request(
            "POST",
            f"{self._base(repository)}/blobs/uploads/?mount={mount}&from={source.path}",
            action=f"mount blob {digest.short} from {source} into {repository}",
            scopes={repository.path: _PUSH, source.path: _PULL},
            required={repository.path: _PUSH},
        )
        if reply.status == 201:
            return None
        return self._upload_location(repository, reply)

    def blob_once(
        self, repository: Repository, digest: Digest, land: Callable[[], T]
    ) -> T | None:
        """Run `land` to bring a blob into `repository`, once per client.

        Returns its result, or None when the blob already landed in this
        run. Concurrent callers for one blob wait for the first; if it
        fails, the next one tries. Distribution's filesystem storage
        rewrites a blob's link file in place when it is mounted again, and
        a manifest PUT reading the link meanwhile fails with "blob unknown";
        mounting each blob once per repository avoids that, and requests.
        """
        key = (repository, digest)
        with self._landing_lock:
            landing = self._landing.setdefault(key, threading.Lock())
        with landing:
            if key in self._landed:
                return None
            result = land()
            self._landed.add(key)
        return result

    def blob_upload_start(self, repository: Repository) -> str:
        """Open an upload session and return its URL."""
        reply = self._request(
            "POST",
            f"{self._base(repository)}/blobs/uploads/",
            action=f"start a blob upload to {repository}",
            scopes={repository.path: _PUSH},
        )
        return self._upload_location(repository, reply)

    def blob_upload(
        self,
        repository: Repository,
        location: str,
        digest: Digest,
        size: int,
        chunks: Iterator[bytes],
    ) -> None:
        """Finish an upload session with one streamed PUT of the whole blob."""
        # The session URL carries state in its query; `params=` would replace
        # it, so the digest is appended to the URL text instead.
        separator = "&" if "?" in location else "?"
        url = f"{location}{separator}digest={quote(str(digest), safe='')}"
        self._request(
            "PUT",
            url,
            action=f"upload blob {digest.short} to {repository}",
            scopes={repository.path: _PUSH},
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
            },
            content=chunks,
            retry=False,  # a consumed stream cannot be sent again
        )

    @contextmanager
    def blob_stream(
        self, repository: Repository, digest: Digest
    ) -> Iterator[Iterator[bytes]]:
        """Open a blob for streaming; redirects are followed without credentials."""
        url = f"{self._base(repository)}/blobs/{digest}"
        self._ensure_pinged()
        headers = self._auth.header({repository.path: _PULL}, {repository.path: _PULL})
        try:
            with self._http.stream(
                "GET", url, headers=headers, follow_redirects=True
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise error_for_reply(
                        _reply(response, response.content),
                        f"read blob {digest.short} from {repository}",
                    )
                yield self._explained(response.iter_bytes())
        except httpx.TransportError as error:
            raise explain_transport_error(error, self.settings) from error

    def _explained(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Chunks whose transport errors name this registry, not the reader's."""
        try:
            yield from chunks
        except httpx.TransportError as error:
            raise explain_transport_error(error, self.settings) from error

    # -- tags ----------------------------------------------------------------

    def tag_list(self, repository: Repository, page_size: int = _TAG_PAGE) -> list[str]:
        """Every tag of the repository, following `Link` pagination."""
        url: str | None = f"{self._base(repository)}/tags/list?n={page_size}"
        tags: list[str] = []
        while url is not None:
            reply = self._request(
                "GET",
                url,
                action=f"list tags of {repository}",
                scopes={repository.path: _PULL},
                cap=MAX_MANIFEST_BYTES,
                allow=(404,),
            )
            if reply.status == 404:
                return []
            tags.extend(_tags_in(repository, reply))
            url = _next_link(self.settings.base_url, reply)
        return tags

    # -- tokens --------------------------------------------------------------

    def prefetch_tokens(
        self,
        repositories: Iterable[Repository],
        *,
        each: Callable[[Callable[[Scopes], None], list[Scopes]], object] = _each,
    ) -> int:
        """Ask ahead for pull tokens on `repositories`, many per token request.

        Without it, each repository costs one token request when first read.
        `each(function, batches)` runs the requests, e.g. on a thread pool.
        Returns how many token requests were needed; 0 when the registry
        does not use Bearer tokens.
        """
        groups = [{r.path: _PULL} for r in sorted(set(repositories))]
        return self.prefetch_scopes(groups, each=each)

    def prefetch_push_tokens(
        self,
        pushes: Mapping[Repository, Iterable[Repository]],
        *,
        each: Callable[[Callable[[Scopes], None], list[Scopes]], object] = _each,
    ) -> int:
        """Ask ahead for tokens to push to each repository and mount into it
        from the repositories it maps to; see `prefetch_tokens`.
        """
        groups = [
            {
                **{source.path: _PULL for source in sources},
                target.path: _PUSH,
            }
            for target, sources in sorted(pushes.items())
        ]
        return self.prefetch_scopes(groups, each=each)

    def prefetch_scopes(
        self,
        groups: Iterable[Scopes],
        *,
        each: Callable[[Callable[[Scopes], None], list[Scopes]], object] = _each,
    ) -> int:
        """Fetch tokens for scope groups, packed many groups per token request.

        Each group ends up in one token whole, so a request needing all of
        a group's scopes finds a token for it.
        """
        wanted = list(groups)

        def prefetch() -> int:
            self._ensure_pinged()
            if not self._auth.challenge or self._auth.challenge.scheme != "bearer":
                return 0
            batches: list[Scopes] = list(batch_scopes(self._auth.uncovered(wanted)))
            each(self._auth.prefetch, batches)
            return len(batches)

        try:
            fetched = self._retry.call(prefetch)  # idempotent: covered sets are skipped
        except RetryableStatus as error:
            raise error_for_reply(error.reply, f"get tokens from {self.host}") from None
        except httpx.TransportError as error:
            raise explain_transport_error(error, self.settings) from error
        logger.debug("prefetched %d tokens for %d scope groups", fetched, len(wanted))
        return fetched

    # -- plumbing ------------------------------------------------------------

    def _base(self, repository: Repository) -> str:
        return f"{self.settings.base_url}/v2/{repository.path}"

    def _manifest_url(self, ref: Reference) -> str:
        return f"{self._base(ref.repository)}/manifests/{ref.identifier}"

    def _upload_location(self, repository: Repository, reply: Reply) -> str:
        location = str(reply.headers.get("Location", ""))
        if reply.status != 202 or not location:
            raise RegistryError(
                f"failed to start a blob upload to {repository}: {reply.status} "
                "without an upload location"
            )
        return urljoin(self.settings.base_url + "/", location)

    def _request(
        self,
        method: str,
        url: str,
        *,
        action: str,
        scopes: Scopes,
        required: Scopes | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        allow: tuple[int, ...] = (),
        cap: int = 65536,
        follow_redirects: bool = False,
        retry: bool = True,
    ) -> Reply:
        """Send with authentication and retries; return a 2xx or allowed reply."""

        def attempt() -> Reply:
            self._ensure_pinged()
            reply = self._send(
                method,
                url,
                scopes,
                required or scopes,
                headers,
                content,
                cap,
                follow_redirects,
            )
            if retry and reply.status in retry_statuses(method):
                raise RetryableStatus(reply)
            return reply

        try:
            reply = self._retry.call(attempt) if retry else attempt()
        except RetryableStatus as error:
            raise error_for_reply(error.reply, action) from None
        except httpx.TransportError as error:
            raise explain_transport_error(error, self.settings) from error
        if not (200 <= reply.status < 300 or reply.status in allow):
            raise error_for_reply(reply, action)
        return reply

    def _send(
        self,
        method: str,
        url: str,
        scopes: Scopes,
        required: Scopes,
        headers: Mapping[str, str] | None,
        content: bytes | Iterator[bytes] | None,
        cap: int,
        follow_redirects: bool,
    ) -> Reply:
        # A streamed body is consumed by the first send and cannot be resent.
        resendable = content is None or isinstance(content, bytes)
        for retried_auth in (False, True):
            request_headers = {
                "User-Agent": _USER_AGENT,
                **(headers or {}),
                **self._auth.header(scopes, required),
            }
            started = time.monotonic()
            reply = self._exchange(
                method, url, request_headers, content, cap, follow_redirects
            )
            logger.debug(
                "%s %s -> %d (%.0f ms)",
                method,
                _path_only(url),
                reply.status,
                (time.monotonic() - started) * 1000,
            )
            if reply.status != 401 or retried_auth or not resendable:
                return reply
            if not self._relearn(reply, scopes):
                return reply
        return reply

    def _exchange(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | Iterator[bytes] | None,
        cap: int,
        follow_redirects: bool,
    ) -> Reply:
        """One request and its answer, the body read within `cap` bytes.

        To this registry through the pool, a request with its body in
        bytes is written by hand (`PooledTransport.exchange`); the rest go
        through httpx.
        """
        target = self._own_target(url, content)
        if target is None or not isinstance(content, bytes | None):
            try:
                request = httpx.Request(method, url, headers=headers, content=content)
                head_of(request)  # refused here whatever the transport (a proxy's)
                if follow_redirects:
                    response = self._http.send(
                        request, stream=True, follow_redirects=True
                    )
                else:
                    response = self._transport.handle_request(request)
            except (SplitField, UnicodeEncodeError) as error:
                raise _unsendable(method, _path_only(url), error) from None
            try:
                return _reply(response, _read_capped(response, cap, url, method))
            finally:
                response.close()
        assert isinstance(self._transport, PooledTransport)
        body = content or b""
        fields = {"Host": self._host_field, **headers}
        if body or method in _SENDS_BODY:
            fields["Content-Length"] = str(len(body))
        try:
            message = request_head(method, target, fields) + body
        except (SplitField, UnicodeEncodeError) as error:
            raise _unsendable(method, target, error) from None
        try:
            head, data = self._transport.exchange(self._to(method), message, cap)
        except BodyTooLarge as error:
            raise _too_large(url, cap, error.declared) from None
        reply = Reply(head.status, head.reason, httpx.Headers(head.fields), data)
        location = reply.headers.get("Location")
        if follow_redirects and reply.status in _REDIRECTS and location:
            return self._redirected(httpx.URL(url).join(location), headers, cap)
        return reply

    def _to(self, method: str) -> httpx.Request:
        """A `method` request to this registry's origin, for `exchange`."""
        placeholder = self._placeholders.get(method)
        if placeholder is None:
            placeholder = self._placeholders[method] = httpx.Request(
                method, self._origin
            )
        return placeholder

    def _own_target(
        self, url: str, content: bytes | Iterator[bytes] | None
    ) -> str | None:
        """The request target of `url` when it can be sent by hand, else None."""
        if not isinstance(self._transport, PooledTransport):
            return None
        if not url.startswith(self._url_prefix):
            return None
        target = url[len(self._url_prefix) - 1 :]
        return target if _TARGET.fullmatch(target) else None

    def _redirected(self, url: httpx.URL, headers: dict[str, str], cap: int) -> Reply:
        """GET where a redirect pointed, with no credentials for another origin;
        httpx follows any further redirect with the same rule.
        """
        origin = self._origin
        if (url.scheme, url.host, url.port) != (
            origin.scheme,
            origin.host,
            origin.port,
        ):
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        try:
            request = httpx.Request("GET", url, headers=headers)
            response = self._http.send(request, stream=True, follow_redirects=True)
        except (SplitField, UnicodeEncodeError) as error:
            raise _unsendable("GET", _path_only(str(url)), error) from None
        try:
            return _reply(response, _read_capped(response, cap, str(url)))
        finally:
            response.close()

    def _relearn(self, reply: Reply, scopes: Scopes) -> bool:
        """After a 401, drop stale tokens; say whether a retry could help."""
        header = reply.headers.get("WWW-Authenticate")
        if not header:
            return False
        challenge = Challenge.parse(header)
        if challenge.scheme != "bearer":
            self._auth.learn(challenge)
            return False
        self._auth.learn(challenge)
        self._auth.forget(scopes)
        return True

    def _ensure_pinged(self) -> None:
        if self._pinged:
            return
        with self._ping_lock:
            if not self._pinged:
                self._ping()
                self._pinged = True

    def _ping(self) -> None:
        # GET /v2/ tells how the registry wants to be authenticated.
        response = self._http.get(f"{self.settings.base_url}/v2/")
        reply = _reply(response, response.content[:512])
        logger.debug("GET /v2/ -> %d", reply.status)
        if self.settings.insecure and plain_http_to_tls_port(reply):
            raise tls_port_error(self.settings)
        if reply.status == 401 and "WWW-Authenticate" in reply.headers:
            self._auth.learn(Challenge.parse(reply.headers["WWW-Authenticate"]))
        elif reply.status in retry_statuses("GET"):
            raise RetryableStatus(reply)
        elif reply.status != 200:
            raise error_for_reply(reply, f"reach the registry API of {self.host}")


def _reply(response: httpx.Response, body: bytes) -> Reply:
    return Reply(response.status_code, response.reason_phrase, response.headers, body)


def _read_capped(
    response: httpx.Response, cap: int, url: str, method: str = "GET"
) -> bytes:
    """Read at most `cap` bytes of body, failing rather than reading on."""
    declared = response.headers.get("Content-Length")
    # A HEAD's Content-Length is what a GET would send; it has no body.
    if method != "HEAD" and declared and declared.isdigit() and int(declared) > cap:
        raise _too_large(url, cap, int(declared))
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > cap:
            raise _too_large(url, cap, None)
    return bytes(body)


def _too_large(url: str, cap: int, declared: int | None) -> IntegrityError:
    if declared is None:
        return IntegrityError(f"response from {_path_only(url)} exceeds {cap} bytes")
    return IntegrityError(
        f"response from {_path_only(url)} is {declared} bytes, over the "
        f"{cap}-byte limit",
        hint="manifests over 4 MiB are refused, as registries do",
    )


def _unsendable(method: str, target: str, error: ValueError) -> RegistryError:
    """The refusal of a request whose fields HTTP cannot carry as they are."""
    if isinstance(error, SplitField):
        why = "a header field holds a line break, which would split the request"
    else:
        why = "a header field holds a character that HTTP fields cannot carry"
    return RegistryError(
        f"refusing to send {method} {target}: {why}",
        hint="the value came from a registry's answer (such as a manifest's "
        "media type); check what that registry serves",
    )


def _header_digest(ref: Reference, reply: Reply) -> Digest | None:
    return _digest_in(ref, reply.headers.get("Docker-Content-Digest"))


def _digest_in(ref: Reference, value: str | None) -> Digest | None:
    if not value:
        return None
    try:
        return Digest(value)
    except InvalidDigestError as error:
        raise IntegrityError(f"registry gave a bad digest for {ref}: {error}") from None


def _content_type(reply: Reply) -> str:
    return _media_type(reply.headers.get("Content-Type"))


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip()


def _parse(ref: Reference, reply: Reply) -> Manifest:
    declared = _content_type(reply)
    hint = declared if declared in MANIFEST_MEDIA_TYPES else None
    try:
        return parse_manifest(reply.body, hint)
    except RegistryError:
        raise
    except Exception as error:
        raise IntegrityError(f"manifest {ref} cannot be read: {error}") from None


def _tags_in(repository: Repository, reply: Reply) -> list[str]:
    try:
        tags = json.loads(reply.body).get("tags") or []
    except (ValueError, AttributeError):
        raise RegistryError(f"tag list of {repository} is not JSON") from None
    return [str(tag) for tag in tags]


def _next_link(base_url: str, reply: Reply) -> str | None:
    link = str(reply.headers.get("Link", ""))
    if not link or 'rel="next"' not in link:
        return None
    target = link.split(";", 1)[0].strip().strip("<>")
    return urljoin(base_url + "/", target)


def _path_only(url: str) -> str:
    # Upload URLs carry state tokens in their query; keep logs to the path.
    return url.split("?", 1)[0]
