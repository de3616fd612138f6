"""Small helpers shared by tests: clients and credentials for test registries."""

from __future__ import annotations

from pathlib import Path

from reconciler.registry import (
    ConnectionSettings,
    Credentials,
    RegistryClient,
    RetryPolicy,
)
from reconciler.testkit.accounts import ADMIN
from reconciler.testkit.registry import RegistryServer

FAST_RETRY = RetryPolicy(attempts=3, deadline=10, wait_initial=0.05, wait_max=0.2)


def admin_of(server: RegistryServer) -> tuple[str, str] | None:
    """The admin's (user, password) where the registry has users, else None."""
    return server.credentials(ADMIN) if server.users else None


def settings_for(
    server: RegistryServer, *, ca_file: Path | None = None, insecure: bool = False
) -> ConnectionSettings:
    """Connection settings trusting the test CA (or `ca_file`)."""
    return ConnectionSettings(
        server.host, ca_file=ca_file or server.ca_file, insecure=insecure
    )


def client_for(
    server: RegistryServer,
    user: str | None = ADMIN,
    *,
    password: str | None = None,
    settings: ConnectionSettings | None = None,
) -> RegistryClient:
    """A client of `server` logged in as `user` (anonymous without users)."""
    credentials = None
    if user is not None and server.users:
        credentials = Credentials(user, password or server.users[user])
    return RegistryClient(
        settings or settings_for(server), credentials=credentials, retry=FAST_RETRY
    )
