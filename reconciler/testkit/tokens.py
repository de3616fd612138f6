"""A token service that answers the way Harbor's ``/service/token`` does.

``GET /service/token?service=harbor-registry&scope=repository:NAME:pull,push``
with optional Basic credentials returns ``{"token", "access_token",
"expires_in", "issued_at"}``. The token is a JWT signed RS256 whose ``kid`` is
the libtrust key ID of the signing key, which is how Distribution's
``auth.token.rootcertbundle`` finds the key to verify it with.

What a token grants follows Harbor:

- valid credentials: the requested actions that the user's permissions allow;
- a bad password or an unknown user: HTTP 200 and a token that grants
  nothing (``"access": []``), never a 401;
- no credentials: an anonymous token that grants nothing.

Permissions are ``{repository glob: actions}``; the glob is matched with
`fnmatch.fnmatchcase` against the repository name, so ``library/*`` covers
``library/a`` and ``library/a/b``. The action ``*`` allows every action.
Only ``repository`` scopes are ever granted; ``registry:catalog:*`` is not.

Distribution accepts a token up to 60 seconds after its ``exp`` (clock-skew
leeway), so a short `TokenService.expires_in` makes clients renew on their
own schedule; it does not make the registry refuse the old token at once.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import fnmatch
import hashlib
import http.server
import json
import logging
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from reconciler.testkit.pki import CertificateFiles

__all__ = [
    "DEFAULT_ISSUER",
    "DEFAULT_SERVICE",
    "TOKEN_PATH",
    "Access",
    "TokenRequest",
    "TokenService",
    "UserTable",
    "decode_token",
    "libtrust_key_id",
]

logger = logging.getLogger(__name__)

DEFAULT_ISSUER = "harbor-token-issuer"
DEFAULT_SERVICE = "harbor-registry"
TOKEN_PATH = "/service/token"  # noqa: S105 - a URL path, not a secret
HARBOR_EXPIRES_IN = 1800  # Harbor's default token lifetime, in seconds
_SOCKET_TIMEOUT = 10.0

# username -> (password, {repository glob or "*": allowed actions})
UserTable = Mapping[str, tuple[str, Mapping[str, Set[str]]]]


@dataclass(frozen=True)
class Access:
    """One entry of a token's ``access`` claim."""

    type: str
    name: str
    actions: tuple[str, ...]

    def to_claim(self) -> dict[str, Any]:
        """Return the entry as it appears in the JWT."""
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


@dataclass(frozen=True)
class TokenRequest:
    """One request the token service answered, as the tests read it back.

    `username` is None for an anonymous request. `authenticated` is False for
    anonymous requests and for bad credentials alike. Passwords are never kept.
    """

    username: str | None
    scopes: tuple[str, ...]
    authenticated: bool
    access: tuple[Access, ...]


def libtrust_key_id(public_key: rsa.RSAPublicKey) -> str:
    """Return the libtrust key ID that Distribution matches against ``kid``.

    It is the base32 of the first 30 bytes of the SHA-256 of the DER
    SubjectPublicKeyInfo, in groups of four characters joined by colons.
    """
    der = public_key.public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def decode_token(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return a JWT's header and claims, without verifying the signature."""
    header, claims, _ = token.split(".")
    return _b64url_json(header), _b64url_json(claims)


class TokenService:
    """A Harbor-like token service over HTTPS on 127.0.0.1, in a daemon thread.

    `start` binds an ephemeral port; `realm` is then the URL to configure as
    the registry's ``auth.token.realm``. `root_cert_file` is the
    ``rootcertbundle``. `requests` and `request_count` record what was asked.

    `expires_in` (seconds) and `clock_offset` (seconds added to ``iat``,
    ``nbf`` and ``exp``, as from a token service whose clock is wrong) may be
    changed while the service runs. With an offset below
    ``-(expires_in + 60)`` the registry refuses every new token.
    """

    def __init__(
        self,
        tls: CertificateFiles,
        users: UserTable,
        workdir: Path,
        *,
        issuer: str = DEFAULT_ISSUER,
        service: str = DEFAULT_SERVICE,
        expires_in: int = HARBOR_EXPIRES_IN,
    ) -> None:
        self.users = users
        self.issuer = issuer
        self.service = service
        self.expires_in = expires_in
        self.clock_offset = 0
        self._tls = tls
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = libtrust_key_id(self._key.public_key())
        self.root_cert_file = _write_root_cert(workdir, self._key, issuer)
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._server: _TLSServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the service listens on; only while it runs."""
        if self._server is None:
            raise RuntimeError("the token service is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The service's base URL, for example ``https://127.0.0.1:40123``."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        """The token endpoint URL, as a registry puts it in ``WWW-Authenticate``."""
        return self.url + TOKEN_PATH

    @property
    def credentials(self) -> dict[str, str]:
        """The credentials table: username to password."""
        return {name: password for name, (password, _) in self.users.items()}

    @property
    def requests(self) -> list[TokenRequest]:
        """A copy of every request answered so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        """How many token requests were answered so far."""
        with self._lock:
            return len(self._requests)

    def clear_requests(self) -> None:
        """Forget the requests recorded so far."""
        with self._lock:
            self._requests.clear()

    def start(self) -> None:
        """Listen on an ephemeral port of 127.0.0.1 and serve in a daemon thread."""
        if self._server is not None:
            return
        server = _TLSServer(("127.0.0.1", 0), _Handler, self._server_context())
        server.token_service = self
        thread = threading.Thread(
            target=server.serve_forever,
            name="testkit-token-service",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Stop serving and close the socket; `start` may be called again."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    def __enter__(self) -> TokenService:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def issue(
        self,
        username: str | None,
        password: str | None,
        scopes: Sequence[str],
    ) -> dict[str, Any]:
        """Answer a token request, record it, and return the JSON response body."""
        authenticated = self._authenticate(username, password)
        access = self._grant(username, scopes) if authenticated else ()
        self._record(TokenRequest(username, tuple(scopes), authenticated, access))
        return self._response(username or "", access)

    def _authenticate(self, username: str | None, password: str | None) -> bool:
        if username is None or password is None or username not in self.users:
            return False
        expected = self.users[username][0]
        return secrets.compare_digest(expected.encode(), password.encode())

    def _grant(self, username: str | None, scopes: Sequence[str]) -> tuple[Access, ...]:
        permissions = self.users[username][1] if username else {}
        granted = (_grant_scope(permissions, scope) for scope in scopes)
        return tuple(access for access in granted if access is not None)

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _response(self, subject: str, access: tuple[Access, ...]) -> dict[str, Any]:
        now = int(time.time()) + self.clock_offset
        expires_in = self.expires_in
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + expires_in,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": [entry.to_claim() for entry in access],
        }
        token = self._sign(claims)
        issued_at = datetime.datetime.fromtimestamp(now, datetime.UTC)
        return {
            "token": token,
            "access_token": token,
            "expires_in": expires_in,
            "issued_at": issued_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def _sign(self, claims: Mapping[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "kid": self.key_id}
        signing_input = f"{_b64url_encode_json(header)}.{_b64url_encode_json(claims)}"
        signature = self._key.sign(
            signing_input.encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
        return f"{signing_input}.{_b64url(signature)}"

    def _server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._tls.cert_file, self._tls.key_file)
        return context


def _grant_scope(permissions: Mapping[str, Set[str]], scope: str) -> Access | None:
    """Intersect one requested scope with the user's permissions.

    Returns None when nothing is granted: the token then has no entry for
    that resource at all.

    A scope is ``type:name:actions``; the name may itself hold colons (a
    registry host with a port), so type and actions are split off the ends.
    """
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if kind != "repository" or not name:
        return None
    allowed = _allowed_actions(permissions, name)
    wanted = [action for action in actions.split(",") if action]
    granted = [a for a in wanted if a in allowed or "*" in allowed]
    if not granted:
        return None
    return Access("repository", name, tuple(dict.fromkeys(granted)))


def _allowed_actions(permissions: Mapping[str, Set[str]], name: str) -> set[str]:
    allowed: set[str] = set()
    for pattern, actions in permissions.items():
        if fnmatch.fnmatchcase(name, pattern):
            allowed |= actions
    return allowed


class _TLSServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server that does each TLS handshake in its own thread.

    Wrapping the listening socket would run handshakes in the accept loop,
    where one client that never finishes its handshake blocks all others.
    """

    token_service: TokenService

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(address, handler)
        self.context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(_SOCKET_TIMEOUT)
        try:
            tls_socket = self.context.wrap_socket(request, server_side=True)
        except OSError as error:
            # "Unknown CA" tests make exactly this happen; it is no failure.
            logger.debug("token service: TLS handshake failed: %s", error)
            return
        try:
            super().finish_request(tls_socket, client_address)
        finally:
            tls_socket.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``GET /service/token``; anything else is 404."""

    # Headers and body go out in two sends; with Nagle's algorithm the second
    # waits for the client's delayed ACK (~40 ms a token). Harbor's token
    # service, in Go, sets TCP_NODELAY too.
    disable_nagle_algorithm = True
    server: _TLSServer
    protocol_version = "HTTP/1.1"
    error_content_type = "application/json"
    error_message_format = (
        '{"errors": [{"code": "%(code)d", "message": "%(message)s"}]}'
    )
    timeout = _SOCKET_TIMEOUT  # ends idle keep-alive connections

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path != TOKEN_PATH:
            self.send_error(404)
            return
        query = urllib.parse.parse_qs(url.query)
        username, password = _basic_credentials(self.headers.get("Authorization"))
        body = self.server.token_service.issue(username, password, _scopes(query))
        self._send_json(body)

    def _send_json(self, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # The request line holds scopes only; Authorization is never logged.
        logger.debug("token service: " + format, *args)


def _scopes(query: Mapping[str, list[str]]) -> list[str]:
    # Docker sends one scope parameter per scope; some clients join several
    # with spaces into one parameter.
    return [scope for value in query.get("scope", []) for scope in value.split()]


def _basic_credentials(header: str | None) -> tuple[str | None, str | None]:
    """Return the username and password of a Basic header, or (None, None)."""
    if header is None:
        return None, None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon else (None, None)


def _write_root_cert(workdir: Path, key: rsa.RSAPrivateKey, issuer: str) -> Path:
    """Write a self-signed certificate for the signing key: the rootcertbundle."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "token-root.crt"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_encode_json(value: Mapping[str, Any]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode())


def _b64url_json(segment: str) -> dict[str, Any]:
    padded = segment + "=" * (-len(segment) % 4)
    value = json.loads(base64.urlsafe_b64decode(padded))
    if not isinstance(value, dict):
        raise ValueError("a JWT segment is not a JSON object")
    return value
