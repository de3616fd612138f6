"""Shared fixtures: a test CA, Harbor-like tokens and real registries.

Session-scoped registries are shared by every test, so each test works in
its own repositories under `namespace`. A test that stops or breaks a
registry starts its own with `start_registry`.

The accounts are `reconciler.testkit.accounts`; each authenticated registry
lists them, with their passwords, in ``server.users``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.testkit.accounts import BASIC_USERS, TOKEN_USERS
from reconciler.testkit.pki import TestPKI, create_pki
from reconciler.testkit.registry import (
    RegistryBinaryMissingError,
    RegistryServer,
)
from reconciler.testkit.tokens import TokenService

StartRegistry = Callable[..., RegistryServer]


@pytest.fixture(scope="session", autouse=True)
def fact_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fact cache of the test session's own, so ~/.cache stays untouched."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECONCILER_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """The test CA, an unrelated CA, and server certificates."""
    return create_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def token_service(
    pki: TestPKI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TokenService]:
    """The Harbor-like token service that `registry_token` trusts."""
    service = TokenService(pki.server, TOKEN_USERS, tmp_path_factory.mktemp("tokens"))
    with service:
        yield service


@pytest.fixture(scope="session")
def registry_none(
    pki: TestPKI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RegistryServer]:
    """A TLS registry that lets anyone pull and push."""
    server = RegistryServer(
        tmp_path_factory.mktemp("registry-none"),
        tls=pki.server,
        ca_file=pki.ca_file,
    )
    yield from _serve(server)


@pytest.fixture(scope="session")
def registry_basic(
    pki: TestPKI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RegistryServer]:
    """A TLS registry with htpasswd (Basic) authentication."""
    server = RegistryServer(
        tmp_path_factory.mktemp("registry-basic"),
        auth="htpasswd",
        tls=pki.server,
        ca_file=pki.ca_file,
        users=BASIC_USERS,
    )
    yield from _serve(server)


@pytest.fixture(scope="session")
def registry_token(
    pki: TestPKI,
    token_service: TokenService,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RegistryServer]:
    """A TLS registry that takes Bearer tokens from `token_service`, like Harbor."""
    server = RegistryServer(
        tmp_path_factory.mktemp("registry-token"),
        auth="token",
        tls=pki.server,
        ca_file=pki.ca_file,
        token_service=token_service,
    )
    yield from _serve(server)


@pytest.fixture(scope="session")
def registry_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A plain-HTTP registry without authentication, for ``insecure: true``."""
    server = RegistryServer(tmp_path_factory.mktemp("registry-http"))
    yield from _serve(server)


@pytest.fixture(params=["registry_none", "registry_basic", "registry_token"])
def registry(request: pytest.FixtureRequest) -> RegistryServer:
    """Each TLS registry in turn: anonymous, Basic, then Bearer."""
    server = request.getfixturevalue(request.param)
    assert isinstance(server, RegistryServer)
    return server


@pytest.fixture
def start_registry(
    pki: TestPKI,
    tmp_path: Path,
) -> Iterator[StartRegistry]:
    """A factory for a registry of the test's own, stopped when the test ends.

    Takes `RegistryServer`'s keyword arguments; TLS with the test CA unless
    ``tls=None, ca_file=None`` is passed.
    """
    started: list[RegistryServer] = []

    def start(**options: Any) -> RegistryServer:
        options.setdefault("tls", pki.server)
        options.setdefault("ca_file", pki.ca_file)
        workdir = tmp_path / f"registry-{len(started)}"
        server = RegistryServer(workdir, **options)
        started.append(server)
        _start(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def unique_slug(request: pytest.FixtureRequest) -> str:
    """A repository path component unique to this test, named after it."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return f"{name[:40].strip('-')}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(unique_slug: str) -> str:
    """A repository prefix in the ``library`` project unique to this test."""
    return f"library/{unique_slug}"


def _serve(server: RegistryServer) -> Iterator[RegistryServer]:
    _start(server)
    try:
        yield server
    finally:
        server.stop()


def _start(server: RegistryServer) -> None:
    """Start `server`; a missing docker-registry fails the test, never skips it."""
    try:
        server.start()
    except RegistryBinaryMissingError as error:
        message = str(error)
    else:
        return
    pytest.fail(message, pytrace=False)
