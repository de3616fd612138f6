"""The connection pool under the registry client, against small real servers.

Distribution never closes an idle keep-alive connection within a test's
time, nor cuts a body short, so these servers do it on purpose, over TCP.
"""

from __future__ import annotations

import contextlib
import io
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from reconciler.registry._wire import (
    BodyTooLarge,
    PooledTransport,
    ResponseHead,
    SplitField,
    environment_proxy,
    request_head,
)

# One HTTP/1.1 exchange: the request head and body the server read, and what
# it does next: (response bytes, whether to close the connection after). A
# list of pieces is sent piece by piece, a moment apart.
Handler = Callable[[bytes, bytes], tuple[bytes | list[bytes], bool]]


class Server:
    """A plain-HTTP server on 127.0.0.1 that counts connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.bodies: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        with conn, reader, contextlib.suppress(OSError):  # a client may reset
            while True:
                head = _read_head(reader)
                if not head:
                    return
                body = _read_body(reader, head)
                self.requests.append(head)
                self.bodies.append(body)
                answer, close = self.handler(head, body)
                for piece in [answer] if isinstance(answer, bytes) else answer:
                    conn.sendall(piece)
                    time.sleep(0.05)
                if close:
                    return


def _read_head(reader: io.BufferedReader) -> bytes:
    lines: list[bytes] = []
    while True:
        line = reader.readline()
        if not line:
            return b""
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)
        lines.append(line)


def _read_body(reader: io.BufferedReader, head: bytes) -> bytes:
    headers = _headers(head)
    if "content-length" in headers:
        return reader.read(int(headers["content-length"]))
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int(reader.readline().strip(), 16)
            chunk = reader.read(size + 2)
            if size == 0:
                return body
            body += chunk[:-2]
    return b""


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    pairs = (line.split(":", 1) for line in lines if ":" in line)
    return {name.strip().lower(): value.strip() for name, value in pairs}


def _ok(body: bytes = b"hello") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@contextlib.contextmanager
def serving(handler: Handler) -> Iterator[Server]:
    server = Server(handler)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def transport() -> Iterator[PooledTransport]:
    pooled = PooledTransport(ssl.create_default_context(), timeout=5.0)
    yield pooled
    pooled.close()


def _send(
    transport: PooledTransport,
    method: str,
    url: str,
    content: bytes | Iterator[bytes] | None = None,
) -> httpx.Response:
    request = httpx.Request(method, url, content=content)
    response = transport.handle_request(request)
    response.read()
    response.close()
    return response


def test_keep_alive_connection_is_reused(transport: PooledTransport) -> None:
    """GETs and HEADs one after another share one connection."""

    def handler(head: bytes, _: bytes) -> tuple[bytes, bool]:
        return _ok(b"" if head.startswith(b"HEAD") else b"hi"), False

    with serving(handler) as server:
        statuses = [
            _send(transport, method, server.url("/x")).status_code
            for method in ("GET", "HEAD", "GET", "HEAD")
        ]
    assert statuses == [200] * 4
    assert server.connections == 1
    assert len(server.requests) == 4


def test_connection_the_server_closed_is_replaced(transport: PooledTransport) -> None:
    """A keep-alive connection the server dropped while idle is not used again."""
    with serving(lambda *_: (_ok(), True)) as server:  # closes after each answer
        bodies = [_send(transport, "GET", server.url("/x")).content for _ in range(3)]
    assert bodies == [b"hello"] * 3
    assert server.connections == 3


def test_request_lost_on_a_reused_connection_is_sent_again(
    transport: PooledTransport,
) -> None:
    """A server that closes a connection without answering makes a new one."""
    answered: list[int] = []

    def handler(head: bytes, _: bytes) -> tuple[bytes, bool]:
        if len(answered) == 1:
            answered.append(0)
            return b"", True  # read the second request, then hang up silently
        answered.append(0)
        return _ok(), False

    with serving(handler) as server:
        first = _send(transport, "PUT", server.url("/x"), content=b"one")
        second = _send(transport, "PUT", server.url("/x"), content=b"two")
    assert (first.status_code, second.status_code) == (200, 200)
    assert server.bodies == [b"one", b"two", b"two"]
    assert server.connections == 2


def test_streamed_body_is_not_sent_twice(transport: PooledTransport) -> None:
    """A streamed upload lost on a reused connection fails rather than resends."""
    answered: list[int] = []

    def handler(head: bytes, _: bytes) -> tuple[bytes, bool]:
        answered.append(0)
        return (_ok(), False) if len(answered) == 1 else (b"", True)

    with serving(handler) as server:
        _send(transport, "GET", server.url("/warm"))
        with pytest.raises(httpx.RemoteProtocolError):
            _send(
                transport,
                "PUT",
                server.url("/blob"),
                content=iter([b"ab", b"cd"]),
            )
    assert server.bodies[1] == b"abcd"  # sent chunked, once
    assert len(server.requests) == 2


def test_short_body_is_an_error(transport: PooledTransport) -> None:
    """A body cut before its Content-Length is a protocol error, not short data."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"
    with (
        serving(lambda *_: (answer, True)) as server,
        pytest.raises(httpx.RemoteProtocolError, match="91 bytes"),
    ):
        _send(transport, "GET", server.url("/x"))


def test_unread_body_closes_the_connection(transport: PooledTransport) -> None:
    """A response closed before its body is read does not return to the pool."""
    with serving(lambda *_: (_ok(b"x" * 100_000), False)) as server:
        response = transport.handle_request(httpx.Request("GET", server.url("/big")))
        response.close()
        assert _send(transport, "GET", server.url("/big")).content == b"x" * 100_000
    assert server.connections == 2


def test_refused_connection_is_a_connect_error(transport: PooledTransport) -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    with pytest.raises(httpx.ConnectError) as caught:
        _send(transport, "GET", f"http://127.0.0.1:{port}/v2/")
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


def test_silent_server_is_a_read_timeout() -> None:
    pooled = PooledTransport(ssl.create_default_context(), timeout=0.3)
    gate = threading.Event()

    def handler(head: bytes, _: bytes) -> tuple[bytes, bool]:
        gate.wait(5)
        return b"", True

    with serving(handler) as server:
        with pytest.raises(httpx.ReadTimeout):
            _send(pooled, "GET", server.url("/slow"))
        gate.set()
    pooled.close()


def test_blank_line_for_a_status_line_fails_at_once() -> None:
    """A server that sends an empty line and holds on is not waited for."""
    pooled = PooledTransport(ssl.create_default_context(), timeout=3.0)
    with serving(lambda *_: (b"\r\n", False)) as server:
        started = time.monotonic()
        with pytest.raises(httpx.RemoteProtocolError, match="status line"):
            _send(pooled, "GET", server.url("/x"))
        assert time.monotonic() - started < 1.5
    pooled.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nX-Folded: one\r\n two\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Folded: one two\r\n"
        b"Content-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-Folded: one two\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\no\r\n1\r\nk\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nX-Folded: one two\r\n\r\nok",  # ends with the connection
    ],
    ids=["folded", "continue", "chunked", "until-close"],
)
def test_response_heads_and_bodies_are_read_as_sent(
    transport: PooledTransport, answer: bytes
) -> None:
    with serving(lambda *_: (answer, True)) as server:
        response = _send(transport, "GET", server.url("/x"))
    assert response.status_code == 200
    assert response.headers["X-Folded"] == "one two"
    assert response.content == b"ok"


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (
            [
                b"HTTP/1.1 200 OK\r\nX-Folded: one\r\n",
                b" two\r\nContent-Length: 2\r\n\r\nok",
            ],
            b"ok",
        ),
        (
            b"HTTP/1.1 200 OK\nX-Folded: one two\nContent-Length: 6\n\nok\r\n\r\n",
            b"ok\r\n\r\n",
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-Folded: one two\n"
            b"Content-Length: 6\r\n\r\nok\r\n\r\n",
            b"ok\r\n\r\n",
        ),
    ],
    ids=["head-in-pieces", "bare-lf-body-with-crlfcrlf", "one-bare-lf"],
)
@pytest.mark.parametrize("pipelined", [False, True])
def test_heads_that_are_not_whole_at_once_or_not_crlf_are_read_line_by_line(
    transport: PooledTransport,
    answer: bytes | list[bytes],
    body: bytes,
    pipelined: bool,
) -> None:
    """A head split across reads, or with bare LF line ends, is read as sent;
    a CRLF CRLF in the body is not taken for the end of the head."""
    with serving(lambda *_: (answer, False)) as server:
        if pipelined:
            (head,) = _pipeline(transport, server, 1)
            assert head is not None
            assert (head.status, head.field("X-Folded")) == (200, "one two")
            return
        response = _send(transport, "GET", server.url("/x"))
    assert response.headers["X-Folded"] == "one two"
    assert response.content == body


@pytest.mark.parametrize(
    "answer",
    [
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 101 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nDocker-Content-Digest: sha256:9ed4cf1e",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n",
    ],
    ids=[
        "not-http",
        "bad-code",
        "no-colon",
        "bad-length",
        "too-many",
        "too-long",
        "cut-inside-a-line",  # a truncated digest must not pass for a digest
        "cut-between-lines",
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_malformed_heads_are_protocol_errors(
    transport: PooledTransport, answer: bytes, method: str
) -> None:
    with (
        serving(lambda *_: (answer, True)) as server,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        _send(transport, method, server.url("/v2/x/manifests/1"))


@pytest.mark.parametrize(
    ("environment", "url", "expected"),
    [
        ({}, "https://r.test", None),
        ({"HTTPS_PROXY": "http://p:3128"}, "https://r.test", "http://p:3128"),
        ({"HTTPS_PROXY": "p:3128"}, "https://r.test", "http://p:3128"),
        ({"HTTPS_PROXY": "http://p:3128"}, "http://r.test:5000", None),
        ({"ALL_PROXY": "http://p:3128"}, "http://r.test:5000", "http://p:3128"),
        (
            {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "r.test"},
            "https://r.test:443",
            None,
        ),
    ],
)
def test_proxy_named_by_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    url: str,
    expected: str | None,
) -> None:
    for name in ("HTTP", "HTTPS", "ALL", "NO"):
        monkeypatch.delenv(f"{name}_PROXY", raising=False)
        monkeypatch.delenv(f"{name.lower()}_proxy", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert environment_proxy(url) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nok\r\n0\r\n\r\n",  # not a hexadecimal size
        b"4\r\nok",  # the connection closes inside a chunk
        b"2\r\nokXX1\r\n!\r\n0\r\n\r\n",  # a chunk runs past its size
        b"2\r\nok\r\n",  # the connection closes before the last chunk
    ],
    ids=["bad-size", "cut-inside", "overlong", "no-last-chunk"],
)
def test_broken_chunked_bodies_are_protocol_errors(
    transport: PooledTransport, body: bytes
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    with (
        serving(lambda *_: (answer, True)) as server,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        _send(transport, "GET", server.url("/v2/x/tags/list"))


def _pipeline(
    transport: PooledTransport, server: Server, count: int
) -> list[ResponseHead | None]:
    host = f"127.0.0.1:{server.port}"
    heads = [
        request_head("HEAD", f"/v2/x/manifests/{i}", {"Host": host})
        for i in range(count)
    ]
    return transport.pipeline(httpx.URL(server.url("")), heads)


def test_pipelined_heads_share_one_connection(transport: PooledTransport) -> None:
    """HEADs sent back to back are answered in order, on one connection."""

    def handler(head: bytes, _: bytes) -> tuple[bytes, bool]:
        tag = head.split(b" ")[1].rsplit(b"/", 1)[1]
        return b"HTTP/1.1 200 OK\r\nX-Tag: %s\r\nContent-Length: 9\r\n\r\n" % tag, False

    with serving(handler) as server:
        answers = _pipeline(transport, server, 5)
        again = _pipeline(transport, server, 2)  # the connection is reused

    assert [a.field("x-tag") if a else None for a in answers] == list("01234")
    assert [a.status if a else None for a in again] == [200, 200]
    assert server.connections == 1
    assert len(server.requests) == 7


@pytest.mark.parametrize(
    "third",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",  # and the server hangs up
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nDocker-Content-Digest: sha256:9e",
    ],
    ids=["closed", "says-close", "garbage", "cut"],
)
def test_pipeline_stops_at_the_first_answer_that_does_not_come_whole(
    transport: PooledTransport, third: bytes
) -> None:
    """Answers before the break are kept; the rest are None, for a resend."""
    served: list[int] = []

    def handler(head: bytes, _: bytes) -> tuple[bytes, bool]:
        served.append(0)
        if len(served) < 3:
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", False
        return third, True

    with serving(handler) as server:
        answers = _pipeline(transport, server, 5)

    statuses = [a.status if a else None for a in answers]
    if b"200 OK\r\nC" in third:
        assert statuses == [404, 404, 200, None, None]
    else:
        assert statuses == [404, 404, None, None, None]


@pytest.mark.parametrize(
    ("target", "fields"),
    [
        ("/v2/x/manifests/1", {"Authorization": "Bearer a\r\nX-Injected: 1"}),
        ("/v2/x/manifests/1", {"Authorization": "Bearer a\nX-Injected: 1"}),
        ("/v2/x/manifests/1", {"Authorization": "Bearer a\rb"}),
        ("/v2/x/manifests/1", {"Accept": "a\0b"}),
        ("/v2/x/manifests/1 HTTP/1.1\r\nX-Injected: 1\r\nY:", {}),
    ],
    ids=["crlf", "lf", "cr", "nul", "in-target"],
)
def test_hand_built_head_refuses_what_would_split_it(
    target: str, fields: dict[str, str]
) -> None:
    with pytest.raises(SplitField, match="line break"):
        request_head("HEAD", target, fields)


@pytest.mark.parametrize(
    "headers",
    [{"Content-Type": "a\r\nX-Injected: 1"}, {"X-Tag": "a\nb"}, {"X-Tag": "a\0b"}],
    ids=["crlf", "lf", "nul"],
)
def test_httpx_request_that_would_split_is_never_sent(
    transport: PooledTransport, headers: dict[str, str]
) -> None:
    """The httpx path (streamed bodies, other origins) refuses as by hand,
    before it takes a connection from the pool.
    """
    with serving(lambda head, body: (_ok(), False)) as server:
        _send(transport, "GET", server.url("/first"))
        body = iter([b"a", b"b"])
        request = httpx.Request("PUT", server.url("/x"), headers=headers, content=body)
        with pytest.raises(SplitField, match="line break"):
            transport.handle_request(request)
        _send(transport, "GET", server.url("/last"))

    sent = [head.split(b" ", 2)[1] for head in server.requests]
    assert sent == [b"/first", b"/last"]
    assert server.connections == 1  # the refusal kept no connection


def test_hand_built_head_is_what_httpx_would_send() -> None:
    fields = {"User-Agent": "reconciler/1", "Accept": "a, b"}
    url = "https://r.test:5000/v2/x/manifests/sha256:" + "0" * 64
    request = httpx.Request("HEAD", url, headers=fields)
    sent = {name.decode(): value.decode() for name, value in request.headers.raw}
    by_hand = request_head("HEAD", request.url.raw_path.decode(), sent)
    wire = b"HEAD %s HTTP/1.1\r\n" % request.url.raw_path
    wire += b"".join(b"%s: %s\r\n" % pair for pair in request.headers.raw) + b"\r\n"
    assert by_hand == wire


def _exchange(
    transport: PooledTransport, server: Server, method: str, body: bytes, cap: int
) -> tuple[ResponseHead, bytes]:
    fields = {"Host": f"127.0.0.1:{server.port}", "Content-Length": str(len(body))}
    message = request_head(method, "/x", fields) + body
    return transport.exchange(httpx.Request(method, server.url("")), message, cap)


def test_exchange_sent_again_on_a_reused_connection_the_server_dropped(
    transport: PooledTransport,
) -> None:
    """A request written as bytes is resent once, as handle_request does."""
    answered: list[int] = []

    def handler(head: bytes, _: bytes) -> tuple[bytes, bool]:
        answered.append(0)
        if len(answered) == 2:
            return b"", True  # read the second request, then hang up silently
        return _ok(), False

    with serving(handler) as server:
        first = _exchange(transport, server, "PUT", b"one", 100)
        second = _exchange(transport, server, "PUT", b"two", 100)
    assert [(head.status, body) for head, body in (first, second)] == [
        (200, b"hello"),
        (200, b"hello"),
    ]
    assert server.bodies == [b"one", b"two", b"two"]
    assert server.connections == 2


@pytest.mark.parametrize(
    ("answer", "declared"),
    [
        (_ok(b"x" * 101), 101),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"9\r\n123456789\r\n" * 20
            + b"0\r\n\r\n",
            None,
        ),
    ],
    ids=["declared", "chunked"],
)
def test_exchange_stops_at_the_cap(
    transport: PooledTransport, answer: bytes, declared: int | None
) -> None:
    """Over the cap, the body is not read on and the connection not reused."""
    with serving(lambda *_: (answer, False)) as server:
        with pytest.raises(BodyTooLarge) as caught:
            _exchange(transport, server, "GET", b"", 100)
        head, body = _exchange(transport, server, "GET", b"", 1_000)
    assert caught.value.declared == declared
    assert head.status == 200
    assert len(body) in (101, 180)
    assert server.connections == 2
