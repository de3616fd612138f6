"""HTTP/1.1 keep-alive connections on the standard library, behind httpx's API.

The registry client sends thousands of small requests a run, and under the
GIL their cost is the client's CPU: httpx's default transport (httpcore and
h11) spent ~0.6 ms of it on each HEAD, `http.client` a fifth of that
(measured, bench/). `PooledTransport` keeps httpx's request, response and
error types, so the rest of the client, its retries and its error messages,
and tests that swap in `httpx.MockTransport`, see no difference.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from typing import NoReturn
from urllib.parse import urlsplit

import httpx

from reconciler.registry._settings import ConnectionSettings

_CHUNK = 64 * 1024
_MAX_LINE = 64 * 1024
_MAX_FIELDS = 100
# A reused connection that fails like this never reached the server's
# handler: the server had closed it while it sat in the pool.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


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


class _Response(http.client.HTTPResponse):
    """http.client's response, with a head parser of its own.

    `http.client` hands the head to the email package, which took a quarter
    of the CPU of each HEAD (measured), and takes a line that ends at EOF for
    a whole one, so a response cut off in its head would pass with a
    truncated header. This parser is plain, and strict about both. Bodies
    are read by http.client as before: it needs only the fields set here.
    """

    fields: list[tuple[str, str]]

    def __init__(
        self,
        sock: socket.socket,
        debuglevel: int = 0,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(sock, debuglevel, method, url)
        self._head_only = method == "HEAD"

    def begin(self) -> None:
        if self.headers is not None:
            return  # read already
        status, reason, version = self._status()
        while status == 100:  # an interim answer; the real one follows
            self._fields()
            status, reason, version = self._status()
        self.status = self.code = status
        self.reason = reason
        self.version = version
        self.fields = self._fields()
        message = http.client.HTTPMessage()
        for name, value in self.fields:
            message.set_raw(name, value)
        self.headers = self.msg = message
        self._frame(message)

    def _frame(self, message: http.client.HTTPMessage) -> None:
        """How the body is delimited, and whether the connection ends with it."""
        connection = (message.get("Connection") or "").lower()
        if self.version == 11:
            self.will_close = "close" in connection
        else:
            self.will_close = "keep-alive" not in connection
        encoding = (message.get("Transfer-Encoding") or "").lower()
        self.chunked = encoding == "chunked"
        self.chunk_left = None
        length = message.get("Content-Length")
        self.length = None
        if not self.chunked and length is not None:
            if not length.strip().isdigit():
                raise http.client.HTTPException(f"bad Content-Length {length!r}")
            self.length = int(length)
        if self.status in (204, 304) or 100 <= self.status < 200:
            self.length = 0
        if self._head_only:
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True  # the body runs to the end of the connection

    def _status(self) -> tuple[int, str, int]:
        line = self._line()
        if line is None:
            raise http.client.RemoteDisconnected(
                "the server closed the connection without answering"
            )
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        if version not in ("HTTP/1.1", "HTTP/1.0") or not code.isdigit():
            raise http.client.BadStatusLine(line)
        return int(code), reason.strip(), 11 if version == "HTTP/1.1" else 10

    def _fields(self) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = []
        while True:
            line = self._line()
            if line is None:
                raise http.client.IncompleteRead(b"", None)  # closed in the head
            if not line:
                return fields
            if line[0] in " \t" and fields:  # an obsolete folded line
                name, value = fields[-1]
                fields[-1] = (name, f"{value} {line.strip()}")
                continue
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise http.client.HTTPException(f"bad header line {line!r}")
            fields.append((name, value.strip()))
            if len(fields) > _MAX_FIELDS:
                raise http.client.HTTPException(f"over {_MAX_FIELDS} header fields")

    def _line(self) -> str | None:
        """One line of the head without its line end; None at the end of input."""
        raw = self.fp.readline(_MAX_LINE + 1)
        if len(raw) > _MAX_LINE:
            raise http.client.LineTooLong("header line")
        if not raw:
            return None
        if not raw.endswith(b"\n"):
            raise http.client.IncompleteRead(raw)  # closed inside the line
        return raw.rstrip(b"\r\n").decode("latin-1")


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
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        key = _key(request.url)
        connection, reused = self._checkout(key, request)
        try:
            response = _exchange(connection, request)
        except _STALE as error:
            connection.close()
            # Sent again only when nothing of it can have been handled, and
            # a body given as bytes can be sent twice.
            if not reused or not isinstance(request.stream, httpx.ByteStream):
                _fail(_stale_kind(error), error, request)
            connection = self._connect(key, request)
            try:
                response = _exchange(connection, request)
            except _STALE as again:
                connection.close()
                _fail(_stale_kind(again), again, request)
            except httpx.TransportError:
                connection.close()
                raise
        except httpx.TransportError:
            connection.close()
            raise
        return httpx.Response(
            response.status,
            headers=response.fields,
            stream=_Body(self, key, connection, response, request),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": response.reason.encode("ascii", "replace"),
            },
            request=request,
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [c for pool in self._idle.values() for c in pool]
            self._idle.clear()
        for connection in idle:
            connection.close()

    def _checkout(
        self, key: tuple[str, str, int], request: httpx.Request
    ) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            pool = self._idle.get(key)
            while pool:
                connection = pool.pop()
                if _usable(connection):
                    return connection, True
                connection.close()
        return self._connect(key, request), False

    def _connect(
        self, key: tuple[str, str, int], request: httpx.Request
    ) -> http.client.HTTPConnection:
        scheme, host, port = key
        connection: http.client.HTTPConnection
        if scheme == "https":
            connection = http.client.HTTPSConnection(
                host, port, timeout=self._connect_timeout, context=self._ssl_context
            )
        else:
            connection = http.client.HTTPConnection(
                host, port, timeout=self._connect_timeout
            )
        try:
            connection.connect()
        except TimeoutError as error:
            connection.close()
            raise httpx.ConnectTimeout(str(error), request=request) from error
        except OSError as error:  # refused, unreachable, TLS (ssl.SSLError)
            connection.close()
            raise httpx.ConnectError(str(error), request=request) from error
        connection.response_class = _Response
        assert connection.sock is not None
        connection.sock.settimeout(self._timeout)
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def _release(
        self, key: tuple[str, str, int], connection: http.client.HTTPConnection
    ) -> None:
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
        key: tuple[str, str, int],
        connection: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        request: httpx.Request,
    ) -> None:
        self._transport = transport
        self._key = key
        self._connection: http.client.HTTPConnection | None = connection
        self._response = response
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = self._response.read(_CHUNK)
            except TimeoutError as error:
                _fail(httpx.ReadTimeout, error, self._request)
            except http.client.IncompleteRead as error:
                _fail(httpx.RemoteProtocolError, error, self._request)
            except (http.client.HTTPException, OSError, ValueError) as error:
                _fail(httpx.ReadError, error, self._request)
            if chunk:
                yield chunk
            elif self._response.length:  # http.client does not raise on this
                raise httpx.RemoteProtocolError(
                    f"connection closed with {self._response.length} bytes of "
                    "the body still to come",
                    request=self._request,
                )
            else:
                return

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._response.isclosed() and not self._response.will_close:
            self._transport._release(self._key, connection)
        else:
            # Unread body, or the server will close: the connection is done.
            self._response.close()
            connection.close()


def _exchange(
    connection: http.client.HTTPConnection, request: httpx.Request
) -> _Response:
    """Send `request` on `connection` and read the response's head."""
    url = request.url
    target = url.raw_path.decode("ascii")
    try:
        connection.putrequest(
            request.method, target, skip_host=True, skip_accept_encoding=True
        )
        for name, value in request.headers.raw:
            connection.putheader(name.decode("latin-1"), value.decode("latin-1"))
        chunked = request.headers.get("Transfer-Encoding") == "chunked"
        if isinstance(request.stream, httpx.ByteStream):
            # Not `request.content`: a redirected request has only its stream.
            connection.endheaders(b"".join(request.stream) or None)
        else:
            connection.endheaders()
            _send_stream(connection, request, chunked=chunked)
    except _STALE:
        raise
    except TimeoutError as error:
        _fail(httpx.WriteTimeout, error, request)
    except OSError as error:
        _fail(httpx.WriteError, error, request)
    try:
        response = connection.getresponse()
    except _STALE:
        raise
    except TimeoutError as error:
        _fail(httpx.ReadTimeout, error, request)
    except (http.client.HTTPException, OSError) as error:
        _fail(httpx.RemoteProtocolError, error, request)
    assert isinstance(response, _Response)  # the connection's response_class
    return response


def _send_stream(
    connection: http.client.HTTPConnection, request: httpx.Request, *, chunked: bool
) -> None:
    assert isinstance(request.stream, httpx.SyncByteStream)
    for chunk in request.stream:
        if not chunk:
            continue
        if chunked:
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            connection.send(chunk)
    if chunked:
        connection.send(b"0\r\n\r\n")


def _fail(
    kind: type[httpx.TransportError], error: BaseException, request: httpx.Request
) -> NoReturn:
    raise kind(str(error) or type(error).__name__, request=request) from error


def _stale_kind(error: BaseException) -> type[httpx.TransportError]:
    if isinstance(error, http.client.RemoteDisconnected):
        return httpx.RemoteProtocolError
    return httpx.ReadError


def _usable(connection: http.client.HTTPConnection) -> bool:
    """An idle connection is usable while the server has sent nothing on it.

    Anything readable on an idle keep-alive connection is the server closing
    it (EOF) or junk; either way it must not carry the next request.
    """
    sock = connection.sock
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)


def _key(url: httpx.URL) -> tuple[str, str, int]:
    port = url.port or (443 if url.scheme == "https" else 80)
    return (url.scheme, url.host, port)
