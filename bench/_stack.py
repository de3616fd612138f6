"""The servers a benchmark runs against, all on 127.0.0.1.

- `token_stack`: Debian's docker-registry over TLS with a Harbor-like token
  service, as the reconciler meets Harbor;
- `plain_registry`: the same registry over plain HTTP without
  authentication, the easiest case for the tools users run today.

Either keeps its blobs and manifests in `storage` when given (the cold
apply runs once with it in memory), else in its own folder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from reconciler.testkit.accounts import ADMIN, TOKEN_USERS
from reconciler.testkit.pki import TestPKI, create_pki
from reconciler.testkit.registry import RegistryServer
from reconciler.testkit.tokens import TokenService


@dataclass(frozen=True)
class Stack:
    """A TLS registry, its token service, and the CA that signed both."""

    workdir: Path
    pki: TestPKI
    tokens: TokenService
    registry: RegistryServer

    @property
    def ca_file(self) -> Path:
        """The CA clients must trust."""
        return self.pki.ca_file

    @property
    def admin(self) -> tuple[str, str]:
        """Username and password of the account allowed everything."""
        return self.registry.credentials(ADMIN)

    def mint(self, scopes: Sequence[str]) -> str:
        """A token for `scopes`, signed by the token service's own key.

        Made in process, so it is neither an HTTP request nor counted by the
        benchmarks; the service's request record is cleared again.
        """
        username, password = self.admin
        token = str(self.tokens.issue(username, password, scopes)["token"])
        self.tokens.clear_requests()
        return token


@contextmanager
def token_stack(workdir: Path, storage: Path | None = None) -> Iterator[Stack]:
    """Start a token service and a TLS registry that trusts it; stop both."""
    pki = create_pki(workdir / "pki")
    with TokenService(pki.server, TOKEN_USERS, workdir / "tokens") as tokens:
        registry = RegistryServer(
            workdir / "registry",
            auth="token",
            tls=pki.server,
            ca_file=pki.ca_file,
            token_service=tokens,
            storage_dir=storage,
        )
        with registry:
            yield Stack(workdir, pki, tokens, registry)


@contextmanager
def plain_registry(
    workdir: Path, storage: Path | None = None
) -> Iterator[RegistryServer]:
    """Start a plain-HTTP registry without authentication; stop it."""
    with RegistryServer(workdir / "plain-registry", storage_dir=storage) as registry:
        yield registry
