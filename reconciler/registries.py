"""One registry client per host, made on first use and closed together."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import httpx

from reconciler.desired import DesiredState
from reconciler.harbor.sites import HarborSites
from reconciler.registry import (
    ConnectionSettings,
    RegistryClient,
    RetryPolicy,
    resolve_credentials,
)


def connection_settings(desired: DesiredState) -> dict[str, ConnectionSettings]:
    """The connection settings of every registry the desired state configures."""
    settings = {}
    for host, entry in desired.registries.items():
        credentials = entry.credentials
        settings[host] = ConnectionSettings(
            host=host,
            ca_file=entry.ca_file,
            insecure=entry.insecure,
            username_env=credentials.username_env if credentials else None,
            password_env=credentials.password_env if credentials else None,
            kind=entry.kind,
        )
    return settings


class Registries:
    """The clients of a run, by host; hosts without settings use TLS defaults."""

    def __init__(
        self,
        settings: Mapping[str, ConnectionSettings],
        *,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = dict(settings)
        self._transport = transport
        self._retry = retry
        self._clients: dict[str, RegistryClient] = {}
        self._lock = threading.Lock()
        self.harbor = HarborSites(self.settings, transport=transport, retry=retry)
        """Which hosts run Harbor, and their REST clients."""

    def client(self, host: str) -> RegistryClient:
        """The client for `host`, with credentials resolved on first use."""
        with self._lock:
            if host not in self._clients:
                self._clients[host] = self._connect(host)
            return self._clients[host]

    def close(self) -> None:
        """Close every client's connections."""
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
        self.harbor.close()

    def __enter__(self) -> Registries:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _connect(self, host: str) -> RegistryClient:
        settings = self.settings.get(host) or ConnectionSettings(host)
        return RegistryClient(
            settings,
            credentials=resolve_credentials(settings),
            transport=self._transport,
            retry=self._retry,
        )
