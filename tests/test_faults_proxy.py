"""The registry client and the CLI through a fault-injecting proxy.

`FaultProxy` stands between the client and the real token-authenticated
registry; tokens come from the token service directly. Every fault ends
either in the right result or in a clear, typed error, never in a wrong
result. What the registry holds is read back directly, not through the proxy.
"""

from __future__ import annotations

import dataclasses
import json
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import httpx
import pytest
import stamina

from reconciler.oci import (
    Descriptor,
    Digest,
    ImageManifest,
    Index,
    Platform,
    Reference,
    Repository,
)
from reconciler.registry import (
    ConnectionFailedError,
    ConnectionSettings,
    Credentials,
    FetchedManifest,
    IntegrityError,
    RegistryClient,
    RetryPolicy,
    ServerError,
    TooManyRequestsError,
    blob_copy,
)
from reconciler.testkit.accounts import ADMIN
from reconciler.testkit.faults import (
    BLOBS,
    MANIFESTS,
    UPLOADS,
    Fault,
    FaultProxy,
    FaultRule,
)
from reconciler.testkit.images import PushedImage, push_image
from reconciler.testkit.pki import TestPKI
from reconciler.testkit.registry import RegistryServer

from .helpers import admin_of, client_for
from .scenario import ARCHES, VERSIONS, Scenario

FAST = RetryPolicy(attempts=6, deadline=10, wait_initial=0.05, wait_max=0.2)

# Faults the product promises to retry (429, 502-504, dropped connections),
# and the ones it may fail on, for the next run to converge: a 500 on a
# write, and bytes altered on the way.
RETRIED = (
    Fault.TOO_MANY_REQUESTS,
    Fault.BAD_GATEWAY,
    Fault.SERVICE_UNAVAILABLE,
    Fault.GATEWAY_TIMEOUT,
    Fault.RESET,
    Fault.RESET_MID_BODY,
    Fault.TRUNCATE,
    Fault.STALL,
)
FATAL = (Fault.INTERNAL_SERVER_ERROR, Fault.CORRUPT)
MAX_RUNS = 10
# The aliases `Scenario.write_desired` asks for by default.
ALIASES = ("latest", "3.11")


@pytest.fixture
def proxy(registry_token: RegistryServer, pki: TestPKI) -> Iterator[FaultProxy]:
    """A fault proxy in front of the token registry, with no rules yet."""
    with FaultProxy(registry_token, pki.server, pki.ca_file, seed=5) as started:
        yield started


@pytest.fixture
def image(registry_token: RegistryServer, namespace: str) -> PushedImage:
    """A small real image, pushed directly to the registry as `app:1.0`."""
    return push_image(
        registry_token,
        f"{namespace}/app",
        "1.0",
        credentials=admin_of(registry_token),
    )


def client_via(
    proxy: FaultProxy, *, retry: RetryPolicy = FAST, timeout: float = 30.0
) -> RegistryClient:
    """An admin client whose registry host is the proxy."""
    return RegistryClient(
        ConnectionSettings(proxy.host, ca_file=proxy.ca_file),
        credentials=Credentials(*proxy.credentials(ADMIN)),
        retry=retry,
        timeout=timeout,
    )


def ref_via(proxy: FaultProxy, image: PushedImage, identifier: str = "") -> Reference:
    """`image` by tag, or by `identifier` (``@sha256:…``), as seen through `proxy`."""
    return Reference.parse(f"{proxy.host}/{image.repository}{identifier or ':1.0'}")


def faulted(proxy: FaultProxy) -> list[Fault]:
    """The faults injected so far, in order."""
    return [event.fault for event in proxy.events if event.fault is not None]


# -- the proxy itself --------------------------------------------------------


def test_proxy_offers_only_http_1_1_and_keeps_connections_alive(
    proxy: FaultProxy,
) -> None:
    """An HTTP/2-capable client falls back to HTTP/1.1 and reuses one connection."""
    context = ssl.create_default_context(cafile=str(proxy.ca_file))
    url = f"{proxy.url}/v2/"

    with httpx.Client(verify=context, http2=True) as client:
        versions = {client.get(url).http_version for _ in range(5)}

    assert versions == {"HTTP/1.1"}
    assert proxy.connections_seen == 1
    assert proxy.requests_seen == 5


def test_reset_ends_only_its_own_connection(
    proxy: FaultProxy, image: PushedImage
) -> None:
    """Concurrent reads all succeed while a third of them are reset."""
    proxy.add(FaultRule(Fault.RESET, "GET", MANIFESTS, rate=0.3))
    ref = ref_via(proxy, image)

    with (
        client_via(proxy) as client,
        ThreadPoolExecutor(max_workers=16) as pool,
    ):
        fetched = list(pool.map(lambda _: client.manifest_get(ref), range(32)))

    assert {item.manifest.raw for item in fetched} == {image.manifest}
    assert proxy.faults_injected[Fault.RESET] >= 3


def test_same_seed_injects_the_same_faults(
    registry_token: RegistryServer, pki: TestPKI
) -> None:
    """Two proxies with one seed fault the same requests of the same sequence."""
    kinds = (Fault.SERVICE_UNAVAILABLE, Fault.RESET, Fault.TRUNCATE)
    logs = []
    for _ in range(2):
        with FaultProxy(registry_token, pki.server, pki.ca_file, seed=7) as proxy:
            proxy.add(FaultRule(kinds, rate=0.5))
            _get_each(proxy, [f"/v2/?n={number}" for number in range(20)])
        logs.append([event.fault for event in proxy.events])

    assert logs[0] == logs[1]
    assert len(set(logs[0])) >= 3  # forwarded, and at least two kinds


# -- status answers ----------------------------------------------------------


def test_429_with_retry_after_is_honoured_then_succeeds(
    proxy: FaultProxy, image: PushedImage
) -> None:
    """A 429 with Retry-After: 1 delays the retry by at least a second."""
    proxy.add(FaultRule(Fault.TOO_MANY_REQUESTS, "GET", MANIFESTS, times=1))

    with client_via(proxy) as client:
        fetched = client.manifest_get(ref_via(proxy, image))

    assert fetched.manifest.raw == image.manifest
    reads = [event for event in proxy.events if "/manifests/" in event.path]
    assert [event.fault for event in reads] == [Fault.TOO_MANY_REQUESTS, None]
    assert reads[1].at - reads[0].at >= 0.95


def test_429_past_the_deadline_ends_in_too_many_requests(
    proxy: FaultProxy, image: PushedImage
) -> None:
    """A Retry-After that would end past the deadline is not waited for."""
    proxy.add(FaultRule(Fault.TOO_MANY_REQUESTS, "HEAD", MANIFESTS))
    # Retry-After: 1 twice would end at 2 s, past the 1.5 s deadline.
    policy = RetryPolicy(attempts=20, deadline=1.5, wait_initial=0.05)
    started = time.monotonic()

    with (
        client_via(proxy, retry=policy) as client,
        pytest.raises(TooManyRequestsError) as caught,
    ):
        client.manifest_head(ref_via(proxy, image))

    assert 0.95 <= time.monotonic() - started < policy.deadline + 0.5
    assert proxy.faults_injected == {Fault.TOO_MANY_REQUESTS: 2}
    assert caught.value.status == 429
    assert caught.value.hint


def test_503_burst_then_success_returns_the_manifest(
    proxy: FaultProxy, image: PushedImage
) -> None:
    """Three 503s in a row are retried until the registry answers."""
    proxy.add(FaultRule(Fault.SERVICE_UNAVAILABLE, path=MANIFESTS, times=3))

    with client_via(proxy) as client:
        info = client.manifest_head(ref_via(proxy, image))

    assert info is not None
    assert info.digest == Digest(image.digest)
    assert proxy.faults_injected == {Fault.SERVICE_UNAVAILABLE: 3}


def test_persistent_503_gives_up_within_the_deadline_with_server_error(
    proxy: FaultProxy, image: PushedImage
) -> None:
    """A registry that never recovers ends in ServerError before the deadline."""
    proxy.add(FaultRule(Fault.SERVICE_UNAVAILABLE, path=MANIFESTS))
    policy = RetryPolicy(attempts=100, deadline=1.0, wait_initial=0.05, wait_max=0.2)
    started = time.monotonic()

    with (
        client_via(proxy, retry=policy) as client,
        pytest.raises(ServerError) as caught,
    ):
        client.manifest_get(ref_via(proxy, image))

    assert time.monotonic() - started < policy.deadline + policy.wait_max + 0.5
    assert caught.value.status == 503
    assert "read manifest" in caught.value.message
    assert proxy.faults_injected[Fault.SERVICE_UNAVAILABLE] >= 3


def test_500_is_retried_on_reads_but_not_on_writes(
    proxy: FaultProxy, image: PushedImage
) -> None:
    """A 500 on a read is retried; on a manifest push it is reported at once."""
    proxy.add(
        FaultRule(Fault.INTERNAL_SERVER_ERROR, path=MANIFESTS, nth=frozenset({1}))
    )
    proxy.add(FaultRule(Fault.INTERNAL_SERVER_ERROR, "PUT", MANIFESTS))

    with client_via(proxy) as client:
        info = client.manifest_head(ref_via(proxy, image))
        with pytest.raises(ServerError) as caught:
            client.manifest_put(
                ref_via(proxy, image, ":copy"), image.manifest, image.media_type
            )

    assert info is not None
    assert info.digest == Digest(image.digest)
    assert caught.value.status == 500
    assert "push manifest" in caught.value.message
    assert proxy.faults_injected == {Fault.INTERNAL_SERVER_ERROR: 2}


def test_500_on_the_api_ping_is_retried_like_any_read(
    proxy: FaultProxy, image: PushedImage
) -> None:
    """A 500 on the first GET /v2/ is retried, as on every other read."""
    proxy.add(FaultRule(Fault.INTERNAL_SERVER_ERROR, "GET", "/v2/", times=1))

    with client_via(proxy) as client:
        info = client.manifest_head(ref_via(proxy, image))

    assert info is not None
    assert info.digest == Digest(image.digest)


# -- dropped connections -----------------------------------------------------


@pytest.mark.parametrize("fault", [Fault.RESET, Fault.RESET_MID_BODY, Fault.TRUNCATE])
def test_dropped_manifest_read_is_retried_into_the_right_bytes(
    proxy: FaultProxy, image: PushedImage, fault: Fault
) -> None:
    """A connection dropped before or during the answer is read again, whole."""
    proxy.add(FaultRule(fault, "GET", MANIFESTS, nth=frozenset({1, 3})))

    # Two clients: one keeps what it read by digest for the run.
    with client_via(proxy) as client:
        first = client.manifest_get(ref_via(proxy, image))
    with client_via(proxy) as client:
        second = client.manifest_get(ref_via(proxy, image, f"@{image.digest}"))

    assert first.manifest.raw == image.manifest
    assert second.manifest.raw == image.manifest
    assert faulted(proxy) == [fault, fault]


def test_manifest_push_whose_answer_was_cut_off_is_retried(
    proxy: FaultProxy,
    image: PushedImage,
    registry_token: RegistryServer,
) -> None:
    """A manifest push whose answer was cut off is sent again, and lands."""
    proxy.add(FaultRule(Fault.RESET_MID_BODY, "PUT", MANIFESTS, times=1))
    target = ref_via(proxy, image, ":copy")

    with client_via(proxy) as client:
        pushed = client.manifest_put(target, image.manifest, image.media_type)

    assert pushed == Digest(image.digest)
    assert faulted(proxy) == [Fault.RESET_MID_BODY]
    with client_for(registry_token) as direct:
        info = direct.manifest_head(_direct(registry_token, target))
    assert info is not None
    assert info.digest == Digest(image.digest)


def test_stall_past_the_timeout_is_retried(
    proxy: FaultProxy, image: PushedImage
) -> None:
    """A registry silent past the client's timeout once is asked again."""
    proxy.add(FaultRule(Fault.STALL, "HEAD", MANIFESTS, times=1, stall=3.0))
    started = time.monotonic()

    with client_via(proxy, timeout=0.5) as client:
        info = client.manifest_head(ref_via(proxy, image))

    assert info is not None
    assert info.digest == Digest(image.digest)
    assert 0.5 <= time.monotonic() - started < 3.0


def test_stall_every_time_ends_in_connection_failed_naming_the_host(
    proxy: FaultProxy, image: PushedImage
) -> None:
    """A registry that never answers ends in ConnectionFailedError for its host."""
    proxy.add(FaultRule(Fault.STALL, "HEAD", MANIFESTS, stall=3.0))
    policy = RetryPolicy(attempts=2, deadline=5, wait_initial=0.05, wait_max=0.1)

    with (
        client_via(proxy, retry=policy, timeout=0.3) as client,
        pytest.raises(ConnectionFailedError) as caught,
    ):
        client.manifest_head(ref_via(proxy, image))

    assert proxy.host in caught.value.message
    assert "timed out" in caught.value.message


# -- altered content ---------------------------------------------------------


@pytest.mark.parametrize("by_digest", [False, True], ids=["by-tag", "by-digest"])
def test_altered_manifest_never_gives_wrong_bytes(
    proxy: FaultProxy, image: PushedImage, by_digest: bool
) -> None:
    """A manifest altered on the way is refused or read again, never returned."""
    proxy.add(FaultRule(Fault.CORRUPT, "GET", MANIFESTS, times=1))
    ref = ref_via(proxy, image, f"@{image.digest}" if by_digest else "")

    with client_via(proxy) as client:
        outcome = _read_or_refuse(client, ref)

    if isinstance(outcome, IntegrityError):
        assert "does not match its digest" in outcome.message
    else:
        assert outcome.manifest.raw == image.manifest
        assert outcome.info.digest == Digest(image.digest)
    assert faulted(proxy) == [Fault.CORRUPT]


def test_altered_config_blob_is_refused(proxy: FaultProxy, image: PushedImage) -> None:
    """A config blob altered on the way is an IntegrityError, not a platform."""
    proxy.add(FaultRule(Fault.CORRUPT, "GET", BLOBS))
    repository = Repository.parse(f"{proxy.host}/{image.repository}")

    with client_via(proxy) as client, pytest.raises(IntegrityError):
        client.blob_get(repository, Digest(image.config_digest))

    assert faulted(proxy) == [Fault.CORRUPT]


def test_source_dropped_during_a_cross_registry_copy_names_the_source(
    proxy: FaultProxy,
    image: PushedImage,
    registry_token: RegistryServer,
) -> None:
    """A source that drops the blob mid-stream is named in the error."""
    proxy.add(FaultRule(Fault.RESET_MID_BODY, "GET", BLOBS))
    source = Repository.parse(f"{proxy.host}/{image.repository}")
    target = Repository.parse(f"{registry_token.host}/{image.repository}-copy")

    with (
        client_via(proxy) as source_client,
        client_for(registry_token) as target_client,
        pytest.raises(ConnectionFailedError) as caught,
    ):
        blob_copy(_layer(image), source_client, source, target_client, target)

    assert proxy.host in caught.value.message


@pytest.mark.parametrize(
    ("side", "rule"),
    [
        ("source", FaultRule(Fault.RESET_MID_BODY, "GET", BLOBS, times=1)),
        ("source", FaultRule(Fault.SERVICE_UNAVAILABLE, "GET", BLOBS, times=1)),
        ("target", FaultRule(Fault.RESET, "PUT", UPLOADS, times=1)),
    ],
    ids=["source-reset-mid-body", "source-503", "target-upload-reset"],
)
def test_cross_registry_copy_survives_one_fault(
    proxy: FaultProxy,
    image: PushedImage,
    registry_token: RegistryServer,
    side: str,
    rule: FaultRule,
) -> None:
    """One dropped or refused request does not fail a cross-registry blob copy."""
    proxy.add(rule)
    faulty = Repository.parse(f"{proxy.host}/{image.repository}")
    healthy = Repository.parse(f"{registry_token.host}/{image.repository}")
    layer = _layer(image)

    with client_via(proxy) as via_proxy, client_for(registry_token) as direct:
        if side == "source":
            target = Repository.parse(f"{healthy}-copy")
            blob_copy(layer, via_proxy, faulty, direct, target)
        else:
            target = Repository.parse(f"{faulty}-copy")
            blob_copy(layer, direct, healthy, via_proxy, target)
        copied = direct.blob_head(Repository.parse(f"{healthy}-copy"), layer.digest)

    assert copied
    assert sum(proxy.faults_injected.values()) == 1


# -- the whole scenario ------------------------------------------------------


def test_seed_scenario_converges_through_random_faults(
    registry_token: RegistryServer,
    pki: TestPKI,
    tmp_path: Path,
    namespace: str,
) -> None:
    """With 20% of all requests faulted, repeated applies converge."""
    direct = Scenario(registry_token, tmp_path, namespace)
    direct.seed()
    with FaultProxy(registry_token, pki.server, pki.ca_file, seed=1) as proxy:
        # Scenario reads only `host`, `users` and `ca_file` off its server to
        # write the desired state and run the CLI; the proxy has all three.
        through = dataclasses.replace(direct, server=cast(RegistryServer, proxy))
        through.write_desired()
        # 17% retried faults, then 3% of all requests (3/83 of the rest)
        # failing the run: 20% in all.
        proxy.add(FaultRule(RETRIED, rate=0.17, stall=0.2, retry_after=0))
        proxy.add(FaultRule(FATAL, rate=0.03 / 0.83))

        # Backoff off, attempts kept: the waits are measured by the tests
        # above; here they would only make the run long.
        with stamina.set_testing(True, attempts=FAST.attempts, cap=True):
            _apply_until_done(through, direct)

        proxy.clear()
        injected = sum(proxy.faults_injected.values())
        assert 0.1 <= injected / proxy.requests_seen <= 0.3
        assert through.run("plan", "--detailed-exitcode").exit_code == 0
    _assert_converged(direct)


def _apply_until_done(through: Scenario, direct: Scenario) -> None:
    """Run ``apply --auto-approve`` until it exits 0, at most `MAX_RUNS` times.

    After every run, failed or not, each index in the registry is whole.
    """
    output = ""
    for _ in range(MAX_RUNS):
        result = through.run("apply", "--auto-approve")
        _assert_indexes_whole(direct)
        if result.exit_code == 0:
            return
        output = result.output
    pytest.fail(f"apply did not converge in {MAX_RUNS} runs; the last said:\n{output}")


def _assert_indexes_whole(scenario: Scenario) -> None:
    """Each index or alias there is lists children present, with their platforms."""
    with scenario.client() as client:
        for tag in (*VERSIONS, *ALIASES):
            if client.manifest_head(scenario.ref(tag)) is None:
                continue
            index = client.manifest_get(scenario.ref(tag)).manifest
            assert isinstance(index, Index)
            _children(client, scenario, index)


def _assert_converged(scenario: Scenario) -> None:
    """Each index lists the sources with their platforms; aliases follow."""
    with scenario.client() as client:
        for version in VERSIONS:
            index = client.manifest_get(scenario.ref(version)).manifest
            assert isinstance(index, Index)
            assert _children(client, scenario, index) == {
                Platform("linux", arch): Digest(scenario.sources[version, arch].digest)
                for arch in ARCHES
            }
        latest = client.manifest_head(scenario.ref("latest"))
        newest = client.manifest_head(scenario.ref(VERSIONS[0]))
    assert latest is not None
    assert newest is not None
    assert latest.digest == newest.digest


def _children(
    client: RegistryClient, scenario: Scenario, index: Index
) -> dict[Platform, Digest]:
    """The index's children by platform, each checked to exist with that platform."""
    repository = scenario.ref(VERSIONS[0]).repository
    children: dict[Platform, Digest] = {}
    for child in index.images:
        assert child.platform is not None
        image = client.manifest_get(repository.digest(child.digest)).manifest
        assert isinstance(image, ImageManifest)
        document = json.loads(client.blob_get(repository, image.config.digest))
        assert Platform(document["os"], document["architecture"]) == child.platform
        children[child.platform] = child.digest
    return children


def _get_each(proxy: FaultProxy, paths: list[str]) -> None:
    """GET each path through `proxy` in turn, once, ignoring the outcome."""
    context = ssl.create_default_context(cafile=str(proxy.ca_file))
    with httpx.Client(base_url=proxy.url, verify=context) as client:
        for path in paths:
            try:
                client.get(path)
            except httpx.TransportError:
                continue  # the fault this test counts


def _read_or_refuse(
    client: RegistryClient, ref: Reference
) -> FetchedManifest | IntegrityError:
    """The manifest `ref` points at, or the IntegrityError reading it raised."""
    try:
        return client.manifest_get(ref)
    except IntegrityError as error:
        return error


def _direct(server: RegistryServer, ref: Reference) -> Reference:
    """`ref` with its registry host swapped for the real registry's."""
    return Reference.parse(f"{server.host}/{ref.repository.path}:{ref.tag}")


def _layer(image: PushedImage) -> Descriptor:
    """The descriptor of the image's first layer."""
    blob = next(b for b in image.blobs if b.digest == image.layer_digests[0])
    return Descriptor(blob.media_type, Digest(blob.digest), blob.size)
