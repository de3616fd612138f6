"""Which registry hosts run Harbor, and one REST client for each that does.

A host is Harbor when its registry entry says `kind: harbor`, not Harbor when
it says `kind: registry`, and otherwise when `GET /api/v2.0/systeminfo`
answers a JSON object: one request per host and run, sent without
credentials (Harbor answers it to anyone; a plain registry gets no password
it did not ask for).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

import httpx

from reconciler.harbor.client import HarborClient
from reconciler.harbor.errors import HarborError
from reconciler.registry import ConnectionSettings, RetryPolicy, resolve_credentials

__all__ = ["HarborSites"]

logger = logging.getLogger(__name__)


class HarborSites:
    """Detection results and Harbor clients of a run, by host; thread-safe."""

    def __init__(
        self,
        settings: Mapping[str, ConnectionSettings],
        *,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """Prepare; nothing is sent until a host is asked about."""
        self._settings = dict(settings)
        self._transport = transport
        self._retry = retry
        self._known: dict[str, bool] = {}
        self._asking: dict[str, threading.Lock] = {}
        self._clients: dict[str, HarborClient] = {}
        self._lock = threading.Lock()

    def detect(self, hosts: Iterable[str]) -> frozenset[str]:
        """The hosts among `hosts` that run Harbor, asked concurrently."""
        unique = sorted(set(hosts))
        if not unique:
            return frozenset()
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="detect") as pool:
            answers = list(pool.map(self.is_harbor, unique))
        return frozenset(h for h, yes in zip(unique, answers, strict=True) if yes)

    def is_harbor(self, host: str) -> bool:
        """Whether `host` runs Harbor; asked at most once per run."""
        with self._lock:
            asking = self._asking.setdefault(host, threading.Lock())
        with asking:
            if host not in self._known:
                self._known[host] = self._ask(host)
            return self._known[host]

    def client(self, host: str) -> HarborClient:
        """The REST client for `host`, signed in as the registry client is.

        Raises `HarborError` for a host that does not run Harbor.
        """
        if not self.is_harbor(host):
            raise HarborError(f"{host} does not run Harbor; its REST API is not used")
        with self._lock:
            if host not in self._clients:
                self._clients[host] = self._connect(host, signed_in=True)
            return self._clients[host]

    def close(self) -> None:
        """Close every client's connections."""
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def _ask(self, host: str) -> bool:
        kind = self._settings_of(host).kind
        if kind in ("harbor", "registry"):
            logger.debug("%s is declared kind: %s", host, kind)
            return kind == "harbor"
        with self._connect(host, signed_in=False) as anonymous:
            found = anonymous.detect()
        if found:
            logger.info("%s runs Harbor: checking its rules through its REST API", host)
        else:
            logger.debug("%s does not run Harbor; Harbor's checks are skipped", host)
        return found

    def _connect(self, host: str, *, signed_in: bool) -> HarborClient:
        settings = self._settings_of(host)
        return HarborClient(
            settings,
            credentials=resolve_credentials(settings) if signed_in else None,
            transport=self._transport,
            retry=self._retry,
        )

    def _settings_of(self, host: str) -> ConnectionSettings:
        return self._settings.get(host) or ConnectionSettings(host)
