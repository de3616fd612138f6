"""Transport failures told in words: which host, why, and what to do."""

from __future__ import annotations

import ssl
from typing import TypeVar

import httpx

from reconciler.registry._errors import (
    ConnectionFailedError,
    RegistryError,
    Reply,
    TLSError,
)
from reconciler.registry._retry import is_transient
from reconciler.registry._settings import ConnectionSettings

E = TypeVar("E", bound=BaseException)


def explain_transport_error(
    error: httpx.TransportError, settings: ConnectionSettings
) -> RegistryError:
    """Translate an httpx transport error for `settings.host`."""
    explained = _explain(error, settings)
    explained.transient = is_transient(error)
    return explained


def _explain(
    error: httpx.TransportError, settings: ConnectionSettings
) -> RegistryError:
    host = settings.host
    verify = _find(error, ssl.SSLCertVerificationError)
    if verify is not None:
        return _certificate_error(verify, settings)
    if _find(error, ssl.SSLError) is not None or _mentions_tls(error):
        return TLSError(
            f"TLS handshake with {host} failed: {error}",
            hint=f"{host} may not speak TLS on this port; if it is a plain-HTTP "
            "registry, set insecure: true for it (credentials then travel in clear)",
        )
    if _refused(error):
        return ConnectionFailedError(
            f"connection to {host} refused: nothing listens there",
            hint="check the host and port, and that the registry is running",
        )
    if isinstance(error, httpx.TimeoutException):
        return ConnectionFailedError(
            f"timed out talking to {host}: {type(error).__name__}",
            hint="the registry or the network is slow or down; try again",
        )
    return ConnectionFailedError(
        f"connection to {host} failed: {error or type(error).__name__}"
    )


def plain_http_to_tls_port(reply: Reply) -> bool:
    """Whether a plain-HTTP request reached a TLS port (Go's servers say so)."""
    return reply.status == 400 and b"HTTPS server" in reply.body[:512]


def tls_port_error(settings: ConnectionSettings) -> TLSError:
    """The error for a registry set `insecure: true` that speaks HTTPS."""
    return TLSError(
        f"{settings.host} speaks HTTPS, but the registry is configured as "
        "plain HTTP (insecure: true)",
        hint=f"remove insecure: true for {settings.host}, and give its CA "
        "in ca_file if it is private",
    )


def _certificate_error(
    error: ssl.SSLCertVerificationError, settings: ConnectionSettings
) -> TLSError:
    host = settings.host
    where = settings.ca_source()
    if error.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_
        return TLSError(
            f"the TLS certificate of {host} is not valid for that name: "
            f"{error.verify_message}",
            hint=f"use the host name the certificate was issued for, or reissue "
            f"it with {host.split(':')[0]} in its subject alternative names",
        )
    trusted = f"the CA in {where}" if where else "the system's CAs"
    return TLSError(
        f"the TLS certificate of {host} is not signed by {trusted}: "
        f"{error.verify_message}",
        hint=f"put the registry's CA in ca_file for {host}, or in "
        f"{settings.certs_dir / host / 'ca.crt'}",
    )


def _find(error: BaseException, kind: type[E]) -> E | None:
    cause: BaseException | None = error
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, kind):
            return cause
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return None


def _mentions_tls(error: BaseException) -> bool:
    text = str(error).upper()
    return any(word in text for word in ("SSL", "WRONG_VERSION_NUMBER", "TLS"))


def _refused(error: BaseException) -> bool:
    return (
        _find(error, ConnectionRefusedError) is not None
        or "refused" in str(error).lower()
    )
