"""How to reach one registry: scheme, trust, and where credentials come from."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

# Where Docker keeps per-registry CAs; users already have theirs here.
DOCKER_CERTS_DIR = Path("/etc/docker/certs.d")


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Connection settings of one registry host."""

    host: str
    ca_file: Path | None = None
    insecure: bool = False
    username_env: str | None = None
    password_env: str | None = None
    certs_dir: Path = DOCKER_CERTS_DIR
    kind: str = "auto"
    """`harbor`, `registry`, or `auto`: ask the host whether it runs Harbor."""

    @property
    def base_url(self) -> str:
        scheme = "http" if self.insecure else "https"
        return f"{scheme}://{self.host}"

    def ca_source(self) -> Path | None:
        """The CA bundle to trust: `ca_file`, else Docker's `certs.d/<host>/ca.crt`."""
        if self.ca_file is not None:
            return self.ca_file
        docker_ca = self.certs_dir / self.host / "ca.crt"
        return docker_ca if docker_ca.is_file() else None

    def ssl_context(self) -> ssl.SSLContext:
        """A verifying context that trusts only the configured CA, if there is one.

        An explicit `cafile` keeps OpenSSL from reading SSL_CERT_FILE and
        friends, so the environment never overrides the configured CA.
        """
        ca = self.ca_source()
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        _load_client_certs(context, self.certs_dir / self.host)
        return context


def _load_client_certs(context: ssl.SSLContext, folder: Path) -> None:
    # Docker's convention: client.cert with client.key beside it, for mTLS.
    if not folder.is_dir():
        return
    for cert in sorted(folder.glob("*.cert")):
        key = cert.with_suffix(".key")
        if key.is_file():
            context.load_cert_chain(cert, key)
