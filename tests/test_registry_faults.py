"""Faults a real registry cannot be made to produce on demand, via MockTransport.

Each ends either in a correct result or in a clear, typed error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from reconciler.oci import DOCKER_MANIFEST, Digest, Reference
from reconciler.registry import (
    ConnectionFailedError,
    ConnectionSettings,
    IntegrityError,
    PermissionDeniedError,
    RegistryClient,
    RetryPolicy,
    ServerError,
    TooManyRequestsError,
)

HOST = "registry.test"
REF = Reference.parse(f"{HOST}/library/x:1.0")
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "c", "digest": str(Digest.of(b"c")), "size": 1},
        "layers": [],
    }
).encode()
FAST = RetryPolicy(attempts=5, deadline=10, wait_initial=0.01, wait_max=0.05)

Handler = Callable[[httpx.Request], httpx.Response]


def client_for(handler: Handler, retry: RetryPolicy = FAST) -> RegistryClient:
    """A client whose every request after the ping goes to `handler`."""

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200)
        return handler(request)

    settings = ConnectionSettings(HOST)
    return RegistryClient(settings, transport=httpx.MockTransport(route), retry=retry)


def manifest_response(body: bytes = MANIFEST, **headers: str) -> httpx.Response:
    return httpx.Response(
        200,
        content=body,
        headers={
            "Content-Type": DOCKER_MANIFEST,
            "Docker-Content-Digest": str(Digest.of(MANIFEST)),
            **headers,
        },
    )


def sequence(*responses: Callable[[], httpx.Response]) -> tuple[Handler, list[float]]:
    """A handler answering with each response in turn; records call times."""
    calls: list[float] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        return queue.pop(0)() if len(queue) > 1 else queue[0]()

    return handler, calls


class BrokenStream(httpx.SyncByteStream):
    """Yields part of a body, then fails the way a dropped connection does."""

    def __init__(self, data: bytes, error: Exception) -> None:
        self._data = data
        self._error = error

    def __iter__(self) -> Iterator[bytes]:
        yield self._data
        raise self._error


def test_429_with_retry_after_waits_that_long_then_succeeds() -> None:
    """A 429 with Retry-After: 1 delays the retry by at least one second."""
    handler, calls = sequence(
        lambda: httpx.Response(429, headers={"Retry-After": "1"}),
        manifest_response,
    )

    fetched = client_for(handler).manifest_get(REF)

    assert fetched.info.digest == Digest.of(MANIFEST)
    assert calls[1] - calls[0] >= 0.95


def test_retry_after_beyond_the_deadline_gives_up_with_a_clear_error() -> None:
    """A Retry-After longer than the deadline stops at once with a typed error."""
    handler, calls = sequence(
        lambda: httpx.Response(429, headers={"Retry-After": "3600"})
    )
    started = time.monotonic()

    with pytest.raises(TooManyRequestsError) as caught:
        client_for(handler).manifest_get(REF)

    assert time.monotonic() - started < 5
    assert len(calls) == 1
    assert "429" in caught.value.message
    assert caught.value.hint


def test_503_then_success_returns_the_manifest() -> None:
    """Transient 503s are retried until the registry answers."""
    handler, calls = sequence(
        lambda: httpx.Response(503),
        lambda: httpx.Response(502),
        manifest_response,
    )

    fetched = client_for(handler).manifest_get(REF)

    assert fetched.manifest.raw == MANIFEST
    assert len(calls) == 3


def test_persistent_503_ends_in_server_error_with_status() -> None:
    """A registry that keeps failing ends in ServerError carrying the status."""
    handler, calls = sequence(lambda: httpx.Response(503))

    with pytest.raises(ServerError) as caught:
        client_for(handler).manifest_head(REF)

    assert caught.value.status == 503
    assert len(calls) == FAST.attempts


def test_connection_reset_mid_body_is_retried() -> None:
    """A body cut off by a reset is read again from the start."""
    handler, calls = sequence(
        lambda: httpx.Response(
            200,
            stream=BrokenStream(
                MANIFEST[:10], httpx.ReadError("connection reset by peer")
            ),
            headers={"Content-Type": DOCKER_MANIFEST},
        ),
        manifest_response,
    )

    fetched = client_for(handler).manifest_get(REF)

    assert fetched.manifest.raw == MANIFEST
    assert len(calls) == 2


def test_resets_that_never_stop_end_in_connection_error() -> None:
    """Resets past the retry budget give a ConnectionFailedError naming the host."""
    handler, _ = sequence(
        lambda: httpx.Response(
            200,
            stream=BrokenStream(
                b"{", httpx.RemoteProtocolError("peer closed connection")
            ),
        )
    )

    with pytest.raises(ConnectionFailedError) as caught:
        client_for(handler).manifest_get(REF)

    assert HOST in caught.value.message


def test_digest_mismatch_is_an_integrity_error() -> None:
    """Bytes that do not hash to the digest the registry claimed are refused."""
    tampered = MANIFEST.replace(b'"layers"', b'"layers" ')
    handler, _ = sequence(lambda: manifest_response(tampered))

    with pytest.raises(IntegrityError) as caught:
        client_for(handler).manifest_get(REF)

    assert "does not match its digest" in caught.value.message


def test_digest_mismatch_by_digest_reference() -> None:
    """Reading by digest checks the bytes against that digest, header or not."""
    ref = REF.repository.digest(Digest.of(b"something else"))
    handler, _ = sequence(lambda: httpx.Response(200, content=MANIFEST))

    with pytest.raises(IntegrityError):
        client_for(handler).manifest_get(ref)


def test_truncated_body_is_refused() -> None:
    """A body shorter than the manifest fails its digest check, not parsing later."""
    handler, _ = sequence(lambda: manifest_response(MANIFEST[: len(MANIFEST) // 2]))

    with pytest.raises(IntegrityError):
        client_for(handler).manifest_get(REF)


def test_oversized_manifest_is_refused_without_reading_it_all() -> None:
    """A manifest over 4 MiB is refused, whether or not Content-Length says so."""
    big = b"x" * (4 * 1024 * 1024 + 1)
    declared, _ = sequence(lambda: manifest_response(big))
    undeclared, _ = sequence(
        lambda: httpx.Response(
            200, stream=httpx.ByteStream(big), headers={"Content-Type": DOCKER_MANIFEST}
        )
    )

    for handler in (declared, undeclared):
        with pytest.raises(IntegrityError) as caught:
            client_for(handler).manifest_get(REF)
        assert "limit" in caught.value.message or "exceeds" in caught.value.message


def test_registry_error_body_is_kept_in_the_error() -> None:
    """The registry's error codes survive into the typed error."""
    body = {
        "errors": [
            {"code": "DENIED", "message": "requested access to the resource is denied"}
        ]
    }
    handler, _ = sequence(lambda: httpx.Response(403, json=body))

    with pytest.raises(PermissionDeniedError) as caught:
        client_for(handler).manifest_put(REF, MANIFEST, DOCKER_MANIFEST)

    assert caught.value.status == 403
    assert caught.value.codes == ("DENIED",)
    assert "push manifest" in str(caught.value)


def test_put_checks_the_digest_the_registry_returns() -> None:
    """A registry that stored other bytes than were sent is caught."""
    handler, _ = sequence(
        lambda: httpx.Response(
            201, headers={"Docker-Content-Digest": str(Digest.of(b"other"))}
        )
    )

    with pytest.raises(IntegrityError):
        client_for(handler).manifest_put(REF, MANIFEST, DOCKER_MANIFEST)
