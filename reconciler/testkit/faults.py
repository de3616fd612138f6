"""A fault-injecting HTTPS proxy in front of a test registry.

`FaultProxy` listens on ``127.0.0.1:<free port>``, terminates TLS with a
certificate of the test PKI, and forwards each HTTP/1.1 request to the
upstream registry over its own TLS connection, byte for byte: the request
line, every header (``Host`` included, so the registry builds upload
``Location`` URLs that point back at the proxy) and the body. Answers come
back the same way, ``Location`` and ``WWW-Authenticate`` untouched. The
token realm is not proxied: clients reach the token service directly.

Faults are chosen per request by `FaultRule` objects the test adds and
removes at runtime. A rule selects requests by method and path, and fires on
a seeded random fraction of them, on chosen ordinal positions, or on the
next N. A fault only ever ends the one client connection it happens on.

What each `Fault` does to the client:

- ``429``: an answer with ``Retry-After``, request not forwarded;
- ``500``, ``502``, ``503``, ``504``: an error answer, request not forwarded;
- ``reset``: the connection is reset before any answer;
- ``reset-mid-body``: the headers and half the body are sent, then a reset
  (a bodiless answer is cut in the middle of its headers instead);
- ``stall``: nothing is sent for `FaultRule.stall` seconds, then the
  connection is closed;
- ``truncate``: the headers, with the real ``Content-Length``, and half the
  body are sent, then the connection is closed cleanly;
- ``corrupt``: the answer is sent whole, headers unchanged, with one hex
  digit of the last ``sha256:`` digest in its body changed, so the JSON is
  still valid and still a manifest, but it no longer matches its digest.

The client side offers only ``http/1.1`` in ALPN, so HTTP/2 clients fall
back to HTTP/1.1, which is what lets the proxy cut a response mid-body.
Bodies are held in memory whole: test images are small.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal

from reconciler.testkit.pki import CertificateFiles
from reconciler.testkit.registry import RegistryServer

__all__ = [
    "ANY_PATH",
    "BLOBS",
    "MANIFESTS",
    "UPLOADS",
    "Fault",
    "FaultEvent",
    "FaultProxy",
    "FaultRule",
]

logger = logging.getLogger(__name__)

# Path patterns for `FaultRule.path`, matched against the whole path.
ANY_PATH = r".*"
MANIFESTS = r"/v2/.+/manifests/[^/]+"
BLOBS = r"/v2/.+/blobs/sha256:[0-9a-f]{64}"
UPLOADS = r"/v2/.+/blobs/uploads/.*"

_STOP_TIMEOUT = 10.0
# Headers are small; this bounds what one request line and headers may take.
_HEAD_LIMIT = 1024 * 1024
_FLUSH_WAIT = 0.05
# A client gone silent must not hold a closing connection for long.
_CLOSE_WAIT = 1.0
_BODILESS_STATUSES = frozenset({204, 304})
_HEX = "0123456789abcdef"
_LAST_DIGEST = re.compile(rb"sha256:[0-9a-f]{64}(?!.*sha256:[0-9a-f]{64})", re.S)


class Fault(StrEnum):
    """What the proxy does to a request instead of forwarding it faithfully."""

    TOO_MANY_REQUESTS = "429"
    INTERNAL_SERVER_ERROR = "500"
    BAD_GATEWAY = "502"
    SERVICE_UNAVAILABLE = "503"
    GATEWAY_TIMEOUT = "504"
    RESET = "reset"
    RESET_MID_BODY = "reset-mid-body"
    STALL = "stall"
    TRUNCATE = "truncate"
    CORRUPT = "corrupt"

    @property
    def status(self) -> int | None:
        """The HTTP status this fault answers with, if it is a status fault."""
        return int(self.value) if self.value.isdigit() else None


@dataclass(frozen=True)
class FaultRule:
    """Which requests get which fault.

    A request matches when `method` (any if None) equals its method and
    `path` (a regex) matches its whole path, query left out. Of matching
    requests, counted from 1 since the rule was added, the rule fires on
    those whose ordinal is in `nth` (all when None), with probability `rate`
    from the proxy's seeded generator, at most `times` times (no limit when
    None). `fault` may be a tuple: each firing then picks one at random.
    `retry_after` is the ``Retry-After`` of a 429 (None: no header);
    `stall` is how long a stall lasts before the connection is closed.
    """

    fault: Fault | tuple[Fault, ...]
    method: str | None = None
    path: str = ANY_PATH
    rate: float = 1.0
    times: int | None = None
    nth: frozenset[int] | None = None
    retry_after: int | None = 1
    stall: float = 5.0

    def matches(self, method: str, path: str) -> bool:
        """Whether the rule selects this request."""
        if self.method is not None and self.method.upper() != method:
            return False
        return re.fullmatch(self.path, path) is not None


@dataclass(frozen=True)
class FaultEvent:
    """One request the proxy saw, and the fault it injected (None: forwarded).

    `at` is when the request had arrived whole, in `time.monotonic` seconds.
    """

    method: str
    path: str
    fault: Fault | None
    at: float


@dataclass
class _RuleState:
    """A rule and how often it matched and fired; guarded by the proxy's lock."""

    rule: FaultRule
    seen: int = 0
    fired: int = 0

    def fire(self, rng: random.Random) -> Fault | None:
        """Count one matching request; return the fault if the rule fires."""
        self.seen += 1
        rule = self.rule
        if rule.times is not None and self.fired >= rule.times:
            return None
        if rule.nth is not None and self.seen not in rule.nth:
            return None
        if rule.rate < 1.0 and rng.random() >= rule.rate:
            return None
        self.fired += 1
        if isinstance(rule.fault, Fault):
            return rule.fault
        return rng.choice(rule.fault)


@dataclass(frozen=True)
class _Decision:
    fault: Fault
    rule: FaultRule


@dataclass
class _Message:
    """One HTTP/1.1 request or response, as raw bytes on the wire."""

    head: bytes
    body: bytes = b""
    chunked: bool = False
    # The sender closes the connection after this message.
    closes: bool = False

    @property
    def start_line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    def header(self, name: str) -> str | None:
        """The first value of header `name`, case-insensitively."""
        wanted = name.lower().encode()
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == wanted:
                return value.strip().decode("latin-1")
        return None

    def wants_close(self) -> bool:
        """Whether the ``Connection`` header asks to close after this message."""
        return "close" in (self.header("Connection") or "").lower()


class _UpstreamClosedError(ConnectionError):
    """The upstream closed a kept-alive connection before answering."""


class FaultProxy:
    """A TLS proxy to one registry that injects the faults its rules select.

    It looks like a `RegistryServer` to tests: `host`, `url`, `ca_file`,
    `users` and `credentials` describe the proxied registry as reached
    through the proxy. Thread-safe: rules may change while requests flow.
    """

    def __init__(
        self,
        upstream: RegistryServer | str,
        tls: CertificateFiles,
        ca_file: Path,
        *,
        seed: int = 0,
        users: Mapping[str, str] | None = None,
    ) -> None:
        """Prepare a proxy to `upstream` (a server, or its ``https://`` URL).

        `tls` is the proxy's certificate; `ca_file` is the CA that clients
        trust and that the upstream's certificate is checked against.
        `users` defaults to the upstream server's.
        """
        url = upstream.url if isinstance(upstream, RegistryServer) else upstream
        parts = urllib.parse.urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream URL needs a host and a port: {url!r}")
        self.upstream_url = url
        self.ca_file = ca_file
        if users is None and isinstance(upstream, RegistryServer):
            users = upstream.users
        self.users: dict[str, str] = dict(users or {})
        self._upstream_address = (parts.hostname, parts.port)
        self._upstream_tls = (
            _client_context(ca_file) if parts.scheme == "https" else None
        )
        self._server_tls = _server_context(tls)
        self._random = random.Random(seed)  # noqa: S311 - reproducible faults
        self._lock = threading.Lock()
        self._rules: list[_RuleState] = []
        self._events: list[FaultEvent] = []
        self._injected: Counter[Fault] = Counter()
        self._connections_seen = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- what tests see ------------------------------------------------------

    @property
    def host(self) -> str:
        """The proxy as a registry host in references: ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The proxy's base URL, ``https://127.0.0.1:PORT``."""
        return f"https://{self.host}"

    def credentials(self, username: str) -> tuple[str, str]:
        """Return ``(username, password)`` for one of `users`."""
        return username, self.users[username]

    @property
    def requests_seen(self) -> int:
        """How many requests arrived, faulted or not."""
        with self._lock:
            return len(self._events)

    @property
    def connections_seen(self) -> int:
        """How many client connections were accepted."""
        with self._lock:
            return self._connections_seen

    @property
    def faults_injected(self) -> Counter[Fault]:
        """How many faults of each kind were injected (a copy)."""
        with self._lock:
            return Counter(self._injected)

    @property
    def events(self) -> list[FaultEvent]:
        """Every request seen, in the order handled, with its fault (a copy)."""
        with self._lock:
            return list(self._events)

    def add(self, rule: FaultRule) -> None:
        """Apply `rule` to requests from now on, after the rules added before."""
        with self._lock:
            self._rules.append(_RuleState(rule))

    def clear(self) -> None:
        """Remove every rule; counts and events are kept."""
        with self._lock:
            self._rules.clear()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Listen on a free loopback port and serve in a background thread."""
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        self._server = loop.run_until_complete(
            asyncio.start_server(
                self._serve_connection,
                "127.0.0.1",
                0,
                ssl=self._server_tls,
                limit=_HEAD_LIMIT,
            )
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"fault-proxy-{self.port}", daemon=True
        )
        self._thread.start()
        logger.info("fault proxy %s -> %s", self.url, self.upstream_url)

    def stop(self) -> None:
        """Close every connection, stop the thread; no-op when not running."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        future.result(timeout=_STOP_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=_STOP_TIMEOUT)
        loop.close()
        self._loop = self._thread = self._server = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    # -- one client connection -----------------------------------------------

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve requests on one kept-alive client connection until it ends."""
        task = asyncio.current_task()
        assert task is not None  # start_server runs each connection in a task
        self._connections.add(task)
        with self._lock:
            self._connections_seen += 1
        upstream = _Upstream(self._upstream_address, self._upstream_tls)
        try:
            await self._serve_requests(reader, writer, upstream)
        except (OSError, EOFError, asyncio.LimitOverrunError, ValueError) as error:
            # A client that hangs up, or sends garbage, ends only its own
            # connection; the proxy keeps serving everyone else.
            logger.debug("fault proxy: connection ended: %r", error)
        except asyncio.CancelledError:
            # `stop` cancels every connection. Ending quietly, at the top of
            # the task, keeps Python 3.11's stream callback from logging it.
            pass
        finally:
            upstream.close()
            await _close(writer)
            self._connections.discard(task)

    async def _serve_requests(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: _Upstream,
    ) -> None:
        """Answer requests in turn until the client or a fault ends the connection."""
        while True:
            request = await _read_request(reader)
            if request is None:
                return
            arrived = time.monotonic()
            method, path = _method_and_path(request)
            outcome = await _outcome(self._decide(method, path), request, upstream)
            # Recorded before the client hears anything, so that a test that
            # got its answer always finds the event in the log.
            self._record(FaultEvent(method, path, outcome.fault, arrived))
            await _deliver(outcome, writer)
            if outcome.ending != "keep" or request.wants_close():
                return

    def _decide(self, method: str, path: str) -> _Decision | None:
        """The first rule that fires for this request wins."""
        with self._lock:
            for state in self._rules:
                if not state.rule.matches(method, path):
                    continue
                fault = state.fire(self._random)
                if fault is not None:
                    return _Decision(fault, state.rule)
        return None

    def _record(self, event: FaultEvent) -> None:
        if event.fault is not None:
            logger.info(
                "fault proxy: %s on %s %s", event.fault, event.method, event.path
            )
        with self._lock:
            self._events.append(event)
            if event.fault is not None:
                self._injected[event.fault] += 1


# -- faults ------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    """What the client gets: `data`, then the connection kept, closed or reset.

    A stall waits `wait` seconds before closing.
    """

    data: bytes
    fault: Fault | None
    ending: Literal["keep", "close", "reset"]
    wait: float = 0.0


async def _outcome(
    decision: _Decision | None, request: _Message, upstream: _Upstream
) -> _Outcome:
    """Forward `request` unless the fault forbids it, and shape the answer."""
    if decision is None:
        response = await upstream.exchange(request)
        return _Outcome(response.head + response.body, None, _ending(response))
    fault, rule = decision.fault, decision.rule
    if fault.status is not None:
        answer = _status_answer(fault, request, rule.retry_after)
        return _Outcome(answer, fault, "keep")
    if fault is Fault.RESET:
        return _Outcome(b"", fault, "reset")
    if fault is Fault.STALL:
        return _Outcome(b"", fault, "close", wait=rule.stall)
    response = await upstream.exchange(request)
    if fault is Fault.CORRUPT:
        return _corrupt(response)
    ending: Literal["reset", "close"] = (
        "reset" if fault is Fault.RESET_MID_BODY else "close"
    )
    return _Outcome(_cut(response), fault, ending)


async def _deliver(outcome: _Outcome, writer: asyncio.StreamWriter) -> None:
    """Send what the outcome says, then end the connection as it says."""
    if outcome.data:
        writer.write(outcome.data)
        await writer.drain()
    if outcome.wait:
        await asyncio.sleep(outcome.wait)
    if outcome.ending == "reset":
        if outcome.data:
            # Let the partial answer leave before the reset discards it.
            await asyncio.sleep(_FLUSH_WAIT)
        _reset(writer)


def _ending(response: _Message) -> Literal["keep", "close"]:
    return "close" if response.closes or response.wants_close() else "keep"


def _corrupt(response: _Message) -> _Outcome:
    """`response` with its body altered; unchanged when it has no body."""
    body = _dechunked(response) if response.chunked else response.body
    if not body:
        return _Outcome(response.head, None, _ending(response))
    altered = _altered(body)
    if response.chunked:
        framed = f"{len(altered):x}\r\n".encode() + altered + b"\r\n0\r\n\r\n"
    else:
        framed = altered
    return _Outcome(response.head + framed, Fault.CORRUPT, _ending(response))


def _altered(body: bytes) -> bytes:
    """`body` with one byte changed: a digest's hex digit where there is one.

    Changing a digit of the last digest keeps the JSON valid and the
    manifest parseable, which is the nastiest case: only the digest check
    can tell. Other bodies get their middle byte flipped.
    """
    match = _LAST_DIGEST.search(body)
    if match is None:
        middle = len(body) // 2
        return body[:middle] + bytes([body[middle] ^ 0x01]) + body[middle + 1 :]
    spot = match.end() - 1
    digit = _HEX[(_HEX.index(chr(body[spot])) + 1) % len(_HEX)]
    return body[:spot] + digit.encode() + body[spot + 1 :]


def _cut(response: _Message) -> bytes:
    """The first part of a response: headers and half the body, or half the head."""
    if response.body:
        return response.head + response.body[: len(response.body) // 2]
    return response.head[: len(response.head) // 2]


def _status_answer(fault: Fault, request: _Message, retry_after: int | None) -> bytes:
    """A registry-style error answer; no body to a HEAD, as HTTP requires."""
    status = fault.status
    assert status is not None
    code = "TOOMANYREQUESTS" if status == 429 else "UNAVAILABLE"
    message = f"injected by the fault proxy: {status}"
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
    ]
    if status == 429 and retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head if request.start_line.startswith("HEAD ") else head + body


_REASONS = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close cleanly, so that what was sent arrives; a no-op after a reset."""
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(writer.wait_closed(), _CLOSE_WAIT)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with a TCP RST, not a FIN: no close_notify, no EOF."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER with a zero timeout makes close() send RST.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# -- upstream ------------------------------------------------------------------


@dataclass
class _Upstream:
    """One kept-alive connection to the registry, for one client connection."""

    address: tuple[str, int]
    tls: ssl.SSLContext | None
    _reader: asyncio.StreamReader | None = field(default=None, init=False)
    _writer: asyncio.StreamWriter | None = field(default=None, init=False)

    async def exchange(self, request: _Message) -> _Message:
        """Send `request` and read the answer; a 502 when the registry is gone.

        A kept-alive connection the registry closed while idle is opened
        again once, as HTTP clients do, since the request never arrived.
        """
        try:
            try:
                return await self._round_trip(request)
            except _UpstreamClosedError:
                return await self._round_trip(request)
        except (OSError, EOFError) as error:
            # Nothing was sent to the client yet: answer as a gateway does.
            self.close()
            logger.debug("fault proxy: upstream failed: %r", error)
            return _Message(_bad_gateway_head(str(error)), closes=True)

    async def _round_trip(self, request: _Message) -> _Message:
        reused = self._writer is not None
        reader, writer = await self._connection()
        writer.write(request.head + request.body)
        await writer.drain()
        response = await _read_response(reader, request)
        if response is None:
            self.close()
            if reused:
                raise _UpstreamClosedError("upstream closed an idle connection")
            raise ConnectionResetError("upstream closed without answering")
        if response.closes or response.wants_close():
            self.close()
        return response

    async def _connection(
        self,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            host, port = self.address
            self._reader, self._writer = await asyncio.open_connection(
                host, port, ssl=self.tls, limit=_HEAD_LIMIT
            )
        return self._reader, self._writer

    def close(self) -> None:
        """Drop the connection; the next exchange opens a new one."""
        if self._writer is not None:
            self._writer.transport.abort()
        self._reader = self._writer = None


def _bad_gateway_head(why: str) -> bytes:
    body = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": why}]})
    return (
        "HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


# -- HTTP/1.1 framing --------------------------------------------------------


async def _read_request(reader: asyncio.StreamReader) -> _Message | None:
    """Read one request, or None when the client closed between requests."""
    head = await _read_head(reader)
    if head is None:
        return None
    request = _Message(head)
    if (request.header("Transfer-Encoding") or "").lower() == "chunked":
        request.chunked = True
        request.body = await _read_chunked(reader)
    else:
        request.body = await reader.readexactly(_content_length(request) or 0)
    return request


async def _read_response(
    reader: asyncio.StreamReader, request: _Message
) -> _Message | None:
    """Read the answer to `request`, or None when the peer closed first."""
    head = await _read_head(reader)
    if head is None:
        return None
    response = _Message(head)
    status = int(response.start_line.split(" ", 2)[1])
    if request.start_line.startswith("HEAD ") or status in _BODILESS_STATUSES:
        return response
    if (response.header("Transfer-Encoding") or "").lower() == "chunked":
        response.chunked = True
        response.body = await _read_chunked(reader)
        return response
    length = _content_length(response)
    if length is None:
        # No framing: the body runs until the server closes (RFC 9112 6.3).
        response.body = await reader.read()
        response.closes = True
    else:
        response.body = await reader.readexactly(length)
    return response


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            return None
        raise


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """Read a chunked body and return it still framed, exactly as received."""
    raw = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        raw += line
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        raw += await reader.readexactly(size + 2)
    while True:  # trailer fields, then the empty line that ends the body
        line = await reader.readuntil(b"\r\n")
        raw += line
        if line == b"\r\n":
            return bytes(raw)


def _dechunked(message: _Message) -> bytes:
    data, body = message.body, bytearray()
    while True:
        line, _, data = data.partition(b"\r\n")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            return bytes(body)
        body += data[:size]
        data = data[size + 2 :]


def _content_length(message: _Message) -> int | None:
    value = message.header("Content-Length")
    return int(value) if value is not None else None


def _method_and_path(request: _Message) -> tuple[str, str]:
    method, target, _ = request.start_line.split(" ", 2)
    return method, urllib.parse.urlsplit(target).path


# -- TLS ---------------------------------------------------------------------


def _server_context(tls: CertificateFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    # Only HTTP/1.1: an HTTP/2 client must fall back, and HTTP/1.1 is what
    # lets the proxy cut a response at a chosen byte.
    context.set_alpn_protocols(["http/1.1"])
    return context


def _client_context(ca_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["http/1.1"])
    return context
