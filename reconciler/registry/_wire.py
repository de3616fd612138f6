"""HTTP/1.1 keep-alive connections on plain sockets, behind httpx's API.

The registry client sends thousands of small requests a run, and under the
GIL their cost is the client's CPU. Per HEAD against the test registry
(bench/): httpx's default transport (httpcore, h11) cost 0.8-1.1 ms of it,
the standard library's `http.client` 0.4-0.5 ms, and a socket with one
buffered reader 0.1 ms. `PooledTransport` is the last, as an httpx
transport: requests, responses and errors keep httpx's types, so the
client's retries and error messages, and tests that swap in
`httpx.MockTransport`, see no difference.

It speaks only what registries need: one request at a time per connection,
bodies framed by Content-Length, chunked, or the end of the connection, and
strictness where a lenient reader would pass on damage: a head or body cut
short, a malformed status line or field, a bad length are protocol errors.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit

import httpx

from reconciler.registry._settings import ConnectionSettings

_CHUNK = 64 * 1024
_MAX_LINE = 64 * 1024
_MAX_FIELDS = 100
_MAX_HEAD_LINES = 4 * _MAX_FIELDS  # folded lines included
_NO_BODY = frozenset({204, 304})

Key = tuple[str, str, int]  # scheme, host, port


def connection_pool(
    settings: ConnectionSettings, *, max_idle: int = 64, timeout: float = 30.0
) -> httpx.BaseTransport:
    """The transport for one registry: a `PooledTransport`, or, when the
    environment sends the registry through a proxy (HTTPS_PROXY, HTTP_PROXY
    or ALL_PROXY, less NO_PROXY), httpx's own transport through that proxy.
    Its token service is reached the same way.
    """
    context = settings.ssl_context()
    proxy = environment_proxy(settings.base_url)
    if proxy is None:
        return PooledTransport(context, max_idle=max_idle, timeout=timeout)
    limits = httpx.Limits(max_connections=max_idle, max_keepalive_connections=max_idle)
    return httpx.HTTPTransport(verify=context, proxy=proxy, limits=limits)


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for `url`, if any."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


class _Dropped(Exception):
    """The server closed the connection before answering at all."""


class _Malformed(Exception):
    """The response breaks HTTP/1.1 framing; the message says how."""


class _Connection:
    """One socket and its reader, carrying one exchange at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    def idle_and_open(self) -> bool:
        """Whether the server has sent nothing since the last response.

        Anything readable on an idle keep-alive connection is the server
        closing it (EOF) or junk; either way it must not carry a request.
        """
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def send(self, request: httpx.Request, head: bytes) -> None:
        """Send `head` (`head_of` the request) and `request`'s body."""
        stream = request.stream
        if isinstance(stream, httpx.ByteStream):
            # Not `request.content`: a redirected request has only its stream.
            self.sock.sendall(b"".join([head, *stream]))
            return
        self.sock.sendall(head)
        assert isinstance(stream, httpx.SyncByteStream)
        chunked = request.headers.get("Transfer-Encoding") == "chunked"
        for chunk in stream:
            if chunk:
                self.sock.sendall(
                    b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
                )
        if chunked:
            self.sock.sendall(b"0\r\n\r\n")

    def head(self, method: str) -> ResponseHead:
        """Read the response's status line and fields (after any 1xx)."""
        lines = self._head_lines()
        if lines is None:
            raise _Dropped("the server closed the connection without answering")
        status, reason, version = _status(lines[0])
        while 100 <= status < 200:  # interim answers; the real one follows
            lines = self._head_lines()
            if lines is None:
                raise _Malformed("the connection closed after an interim answer")
            status, reason, version = _status(lines[0])
        fields = _fields(lines[1:])
        return ResponseHead(
            status, reason, fields, _framing(method, status, version, fields)
        )

    def _head_lines(self) -> list[str] | None:
        """The next response head's lines, without line ends; None at the end.

        A head already whole in the read buffer, its lines ended by CRLF
        (as registries send them), is split in one go; anything else is
        read line by line. A readline per line was a third of the CPU of a
        pipelined HEAD (measured).
        """
        ahead = self.reader.peek(1)
        end = ahead.find(b"\r\n\r\n")
        if end >= 0:
            block = ahead[:end]
            if block.count(b"\n") == block.count(b"\r\n"):  # no bare LF
                self.reader.read(end + 4)
                return block.decode("latin-1").split("\r\n")
        first = self._line()
        if not first:
            return None if first is None else [first]  # "": no status line
        lines = [first]
        while line := self._line():
            lines.append(line)
            if len(lines) > _MAX_HEAD_LINES:
                raise _Malformed(f"over {_MAX_HEAD_LINES} lines in the response head")
        if line is None:
            raise _Malformed("the connection closed inside the response head")
        return lines

    def _line(self) -> str | None:
        """A line without its line end; None at the end of input."""
        raw = self.reader.readline(_MAX_LINE + 1)
        if len(raw) > _MAX_LINE:
            raise _Malformed(f"a line of the response head is over {_MAX_LINE} bytes")
        if not raw:
            return None
        if not raw.endswith(b"\n"):
            raise _Malformed("the connection closed inside a line of the head")
        return raw.rstrip(b"\r\n").decode("latin-1")


def _fields(lines: list[str]) -> list[tuple[str, str]]:
    """The header fields of a head's lines (status line excluded)."""
    fields: list[tuple[str, str]] = []
    for line in lines:
        if line[0] in " \t" and fields:  # an obsolete folded line
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _Malformed(f"bad header line {line[:100]!r}")
        fields.append((name, value.strip()))
        if len(fields) > _MAX_FIELDS:
            raise _Malformed(f"over {_MAX_FIELDS} header fields")
    return fields


@dataclass(frozen=True, slots=True)
class _Framing:
    """How the body is delimited, and whether the connection ends with it."""

    length: int | None  # None: chunked, or until the connection closes
    chunked: bool
    closes: bool


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A response's status line and header fields, as read."""

    status: int
    reason: str
    fields: list[tuple[str, str]]
    framing: _Framing

    def field(self, name: str) -> str | None:
        """The value of the first field called `name` (any case), if any."""
        wanted = name.lower()
        return next((v for n, v in self.fields if n.lower() == wanted), None)


def _status(line: str) -> tuple[int, str, str]:
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise _Malformed(f"bad status line {line[:100]!r}")
    return int(code), reason.strip(), version


def _framing(
    method: str, status: int, version: str, fields: list[tuple[str, str]]
) -> _Framing:
    named = {name.lower(): value for name, value in fields}
    connection = named.get("connection", "").lower()
    if version == "HTTP/1.1":
        closes = "close" in connection
    else:
        closes = "keep-alive" not in connection
    length = named.get("content-length")
    if length is not None and not length.strip().isdigit():
        raise _Malformed(f"bad Content-Length {length[:40]!r}")
    if method == "HEAD" or status in _NO_BODY:
        return _Framing(0, False, closes)
    if named.get("transfer-encoding", "").lower() == "chunked":
        return _Framing(None, True, closes)
    if length is None:
        return _Framing(None, False, True)  # the body runs to the end
    return _Framing(int(length), False, closes)


class PooledTransport(httpx.BaseTransport):
    """A thread-safe pool of keep-alive connections per scheme, host and port."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        max_idle: int = 64,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self._ssl_context = ssl_context
        self._max_idle = max_idle
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._idle: dict[Key, list[_Connection]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        key = _key(request.url)
        # Sent again only when nothing of it can have been handled, and a
        # body given as bytes can be sent twice.
        resendable = isinstance(request.stream, httpx.ByteStream)
        wire = head_of(request)  # refused before a connection is taken
        connection, head = self._answer(
            key, request, lambda c: c.send(request, wire), resendable
        )
        body = _Body(self, key, connection, head.framing, request)
        return _response(head, body, request)

    def exchange(
        self, request: httpx.Request, message: bytes, cap: int
    ) -> tuple[ResponseHead, bytes]:
        """Send `message`, a whole request as on the wire (`request_head`
        and its body), where `request` goes; return the answer's head and
        body. `request` only names the method and origin, also in errors:
        one can serve many exchanges.

        As `handle_request` without httpx's request and response objects,
        which cost more client CPU than the exchange (measured). A body
        over `cap` bytes is not read on: `BodyTooLarge`.
        """
        key = _key(request.url)
        connection, head = self._answer(
            key, request, lambda c: c.sock.sendall(message), True
        )
        body = _Body(self, key, connection, head.framing, request)
        try:
            length = head.framing.length
            if length is not None and length > cap:
                raise BodyTooLarge(length)
            data = bytearray()
            for chunk in body:
                data += chunk
                if len(data) > cap:
                    raise BodyTooLarge(None)
        finally:
            body.close()  # back to the pool only when read to the end
        return head, bytes(data)

    def _answer(
        self,
        key: Key,
        request: httpx.Request,
        send: Callable[[_Connection], None],
        resendable: bool,
    ) -> tuple[_Connection, ResponseHead]:
        """Send with `send` on a pooled connection and read the answer's head.

        A reused connection the server closed before answering is replaced,
        and the request sent again when `resendable`.
        """
        connection, reused = self._checkout(key, request)
        try:
            return connection, _exchange(connection, request, send)
        except _Dropped as error:
            connection.close()
            if not reused or not resendable:
                _fail(httpx.RemoteProtocolError, error, request)
        except httpx.TransportError:
            connection.close()
            raise
        connection = self._connect(key, request)
        try:
            return connection, _exchange(connection, request, send)
        except _Dropped as again:
            connection.close()
            _fail(httpx.RemoteProtocolError, again, request)
        except httpx.TransportError:
            connection.close()
            raise

    def pipeline(
        self, origin: httpx.URL, heads: Sequence[bytes]
    ) -> list[ResponseHead | None]:
        """Send bodiless HEADs to `origin` back to back on one connection,
        then read their answers in order (HTTP/1.1 pipelining).

        Each of `heads` is a request as it goes on the wire (`request_head`):
        the answers are their heads. Building an `httpx.Request` and an
        `httpx.Response` for each cost more CPU than the exchange itself
        (measured).

        Registries answer each request alone; what pipelining saves is the
        round trip and the wake-up between one answer and the next request.
        An answer that does not come (the connection closed, was cut, or
        said it closes) is None, as are all after it: the caller sends
        those again the usual way, with its retries and error reporting.
        """
        if not heads:
            return []
        request = httpx.Request("HEAD", origin)  # names the host in errors
        key = _key(origin)
        connection, _ = self._checkout(key, request)
        answers: list[ResponseHead | None] = [None] * len(heads)
        try:
            connection.sock.sendall(b"".join(heads))
            for i in range(len(heads)):
                head = answers[i] = connection.head("HEAD")
                if head.framing.closes:
                    connection.close()
                    return answers
        except (_Dropped, _Malformed, OSError):
            connection.close()
            return answers
        self._release(key, connection)
        return answers

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [c for pool in self._idle.values() for c in pool]
            self._idle.clear()
        for connection in idle:
            connection.close()

    def _checkout(self, key: Key, request: httpx.Request) -> tuple[_Connection, bool]:
        while True:
            with self._lock:
                pool = self._idle.get(key)
                connection = pool.pop() if pool else None
            if connection is None:
                return self._connect(key, request), False
            if connection.idle_and_open():
                return connection, True
            connection.close()

    def _connect(self, key: Key, request: httpx.Request) -> _Connection:
        scheme, host, port = key
        try:
            sock = socket.create_connection((host, port), self._connect_timeout)
        except TimeoutError as error:
            _fail(httpx.ConnectTimeout, error, request)
        except OSError as error:  # refused, unreachable, unknown host
            _fail(httpx.ConnectError, error, request)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self._ssl_context.wrap_socket(sock, server_hostname=host)
        except TimeoutError as error:
            sock.close()
            _fail(httpx.ConnectTimeout, error, request)
        except OSError as error:  # the TLS handshake (ssl.SSLError)
            sock.close()
            _fail(httpx.ConnectError, error, request)
        sock.settimeout(self._timeout)
        return _Connection(sock)

    def _release(self, key: Key, connection: _Connection) -> None:
        with self._lock:
            pool = self._idle.setdefault(key, [])
            if not self._closed and len(pool) < self._max_idle:
                pool.append(connection)
                return
        connection.close()


class _Body(httpx.SyncByteStream):
    """A response body; its connection goes back to the pool once read to the end."""

    def __init__(
        self,
        transport: PooledTransport,
        key: Key,
        connection: _Connection,
        framing: _Framing,
        request: httpx.Request,
    ) -> None:
        self._transport = transport
        self._key = key
        self._connection: _Connection | None = connection
        self._framing = framing
        self._request = request
        self._done = framing.length == 0

    def __iter__(self) -> Iterator[bytes]:
        connection = self._connection
        if connection is None or self._done:
            return
        try:
            if self._framing.chunked:
                yield from _chunked(connection)
            elif self._framing.length is not None:
                yield from _sized(connection, self._framing.length)
            else:
                yield from iter(lambda: connection.reader.read1(_CHUNK), b"")
        except TimeoutError as error:
            _fail(httpx.ReadTimeout, error, self._request)
        except _Malformed as error:
            _fail(httpx.RemoteProtocolError, error, self._request)
        except OSError as error:
            _fail(httpx.ReadError, error, self._request)
        self._done = True

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._done and not self._framing.closes:
            self._transport._release(self._key, connection)
        else:
            # Unread body, or the server will close: the connection is done.
            connection.close()


def _sized(connection: _Connection, length: int) -> Iterator[bytes]:
    left = length
    while left:
        chunk = connection.reader.read1(min(left, _CHUNK))
        if not chunk:
            raise _Malformed(
                f"connection closed with {left} bytes of the body still to come"
            )
        left -= len(chunk)
        yield chunk


def _chunked(connection: _Connection) -> Iterator[bytes]:
    reader = connection.reader
    while True:
        line = reader.readline(_MAX_LINE + 1)
        if not line.endswith(b"\n"):
            raise _Malformed("the connection closed inside a chunk size")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _Malformed(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            while reader.readline(_MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
                pass  # trailer fields, unused
            return
        yield from _sized(connection, size)
        if reader.readline(_MAX_LINE + 1) not in (b"\r\n", b"\n"):
            raise _Malformed("a chunk does not end with a line end")


def head_of(request: httpx.Request) -> bytes:
    """The request line and fields, ready to send; refused as `request_head`
    refuses them (`SplitField`).
    """
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), request.url.raw_path)]
    lines += [b"%s: %s\r\n" % pair for pair in request.headers.raw]
    lines.append(b"\r\n")
    head = b"".join(lines)
    if _splits(head, len(lines)):
        raise SplitField(request.method, request.url.raw_path.decode("latin-1"))
    return head


def request_head(method: str, target: str, fields: Mapping[str, str]) -> bytes:
    """The request line for `target` (a path and query) and `fields`, as sent
    on the wire, up to the blank line that ends them.

    Refuses a CR, LF or NUL anywhere, which would split the request
    (`SplitField`), and a character outside Latin-1 (`UnicodeEncodeError`).
    """
    text = "".join(
        [f"{method} {target} HTTP/1.1\r\n"]
        + [f"{name}: {value}\r\n" for name, value in fields.items()]
        + ["\r\n"]
    )
    head = text.encode("latin-1")
    if _splits(head, len(fields) + 2):
        raise SplitField(method, target)
    return head


class SplitField(ValueError):
    """A request's line or fields hold a CR, LF or NUL: it is not sent."""

    def __init__(self, method: str, target: str) -> None:
        super().__init__(f"a field of the {method} of {target!r} holds a line break")
        self.method = method
        self.target = target


def _splits(head: bytes, lines: int) -> bool:
    """Whether a head of `lines` lines holds a CR, LF or NUL of its own."""
    return head.count(b"\n") != lines or head.count(b"\r") != lines or b"\0" in head


class BodyTooLarge(Exception):
    """A response body over the reader's cap; `declared` when its length said so."""

    def __init__(self, declared: int | None) -> None:
        super().__init__(declared)
        self.declared = declared


def _response(
    head: ResponseHead, stream: httpx.SyncByteStream, request: httpx.Request
) -> httpx.Response:
    return httpx.Response(
        head.status,
        headers=head.fields,
        stream=stream,
        extensions={
            "http_version": b"HTTP/1.1",
            "reason_phrase": head.reason.encode("ascii", "replace"),
        },
        request=request,
    )


def _exchange(
    connection: _Connection,
    request: httpx.Request,
    send: Callable[[_Connection], None],
) -> ResponseHead:
    """Send `request` on `connection` with `send` and read the response's head."""
    try:
        send(connection)
    except (ConnectionResetError, BrokenPipeError) as error:
        raise _Dropped(str(error)) from error
    except TimeoutError as error:
        _fail(httpx.WriteTimeout, error, request)
    except OSError as error:
        _fail(httpx.WriteError, error, request)
    try:
        return connection.head(request.method)
    except ConnectionResetError as error:
        raise _Dropped(str(error)) from error
    except TimeoutError as error:
        _fail(httpx.ReadTimeout, error, request)
    except _Malformed as error:
        _fail(httpx.RemoteProtocolError, error, request)
    except OSError as error:
        _fail(httpx.ReadError, error, request)


def _fail(
    kind: type[httpx.TransportError], error: BaseException, request: httpx.Request
) -> NoReturn:
    raise kind(str(error) or type(error).__name__, request=request) from error


def _key(url: httpx.URL) -> Key:
    port = url.port or (443 if url.scheme == "https" else 80)
    return (url.scheme, url.host, port)
