"""Debian's ``docker-registry`` (CNCF Distribution 2.8), run as a subprocess.

`RegistryServer` writes a ``config.yml`` into its work directory and serves
on ``127.0.0.1:<free port>`` with filesystem storage in that directory, over
TLS with a certificate from `reconciler.testkit.pki` or, when asked, over
plain HTTP. Authentication is one of:

- ``"none"``: anonymous pull and push;
- ``"htpasswd"``: Basic, from a bcrypt htpasswd file written for `users`;
- ``"token"``: Bearer tokens from a `TokenService`, as Harbor does it.

The registry's stdout and stderr go to ``registry.log``. Distribution writes
two kinds of line there: logrus records (``time="..." level=info msg=...``)
and, with ``log.accesslog`` enabled, one Apache combined-format line per
request, which `RegistryServer.access_log` parses (one line, split here)::

    127.0.0.1 - - [03/Dec/2026:16:16:12 +0000]
      "POST /v2/a/b/blobs/uploads/ HTTP/1.1" 202 0 "" "curl/7.88.1"

How a blob upload shows up in that log:

- a cross-repository mount is ``POST /v2/<name>/blobs/uploads/?mount=<digest>
  &from=<other>``; 201 means mounted and no bytes moved, while 202 means the
  registry refused the mount (blob or permission missing) and opened an
  ordinary upload session instead;
- an ordinary upload is ``POST /v2/<name>/blobs/uploads/`` (202), then
  optional ``PATCH`` chunks (202) and a closing ``PUT ...?digest=`` (201);
- a monolithic upload is a single ``POST ...?digest=`` with the bytes (201).

So "no layer was uploaded" means `blob_uploads` is empty: no PATCH or PUT on
``/blobs/uploads/``, and no POST carrying ``digest=``.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.parse
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import httpx
import yaml

from reconciler.testkit.pki import CertificateFiles
from reconciler.testkit.tokens import TokenService

__all__ = [
    "AccessEntry",
    "AuthMode",
    "RegistryBinaryMissingError",
    "RegistryServer",
    "RegistryStartError",
    "bcrypt_hash",
    "free_port",
]

logger = logging.getLogger(__name__)

AuthMode = Literal["none", "htpasswd", "token"]

REGISTRY_BINARY = "docker-registry"
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0
_LOG_SYNC_TIMEOUT = 5.0
_SYNC_PARAM = "testkit-sync"
_READY_PARAM = "testkit-ready"
# Go's bcrypt accepts costs from 4; the registry checks the hash on every
# request, so the cheapest cost keeps the tests fast.
_BCRYPT_COST = 4

# Apache combined log format, as gorilla/handlers writes it for Distribution.
_ACCESS_LINE = re.compile(
    r"^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]*)\] "
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) (?P<protocol>[^"]*)" '
    r"(?P<status>\d{3}) (?P<size>\d+|-)"
)


class RegistryStartError(RuntimeError):
    """The registry process did not come up; the message ends with its log."""


class RegistryBinaryMissingError(RegistryStartError):
    """``docker-registry`` is not on PATH."""


@dataclass(frozen=True)
class AccessEntry:
    """One request from the registry's access log.

    `uri` is the request target exactly as sent (still percent-encoded);
    `path` and `query` are its two halves.
    """

    method: str
    uri: str
    status: int
    size: int
    user: str

    @property
    def path(self) -> str:
        """The request path, without the query."""
        return self.uri.partition("?")[0]

    @property
    def query(self) -> dict[str, list[str]]:
        """The query parameters."""
        return urllib.parse.parse_qs(self.uri.partition("?")[2])

    @property
    def is_blob_upload(self) -> bool:
        """Whether this request carried blob bytes (see the module docstring)."""
        if "/blobs/uploads/" not in self.path:
            return False
        if self.method in ("PATCH", "PUT"):
            return True
        return self.method == "POST" and "digest" in self.query

    @property
    def is_blob_mount(self) -> bool:
        """Whether this request mounted a blob from another repository."""
        mount = self.method == "POST" and "mount" in self.query
        return mount and self.status == 201


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bcrypt_hash(password: str) -> str:
    """Return a bcrypt hash of `password` that Distribution's htpasswd accepts.

    Uses the `bcrypt` package when installed, else the C library's crypt(3)
    through the standard `crypt` module (Python 3.12 and older; Debian's
    libxcrypt implements bcrypt).
    """
    try:
        bcrypt: Any = importlib.import_module("bcrypt")
    except ImportError:
        return _crypt_bcrypt(password)
    salt = bcrypt.gensalt(rounds=_BCRYPT_COST)
    return str(bcrypt.hashpw(password.encode(), salt).decode())


def _crypt_bcrypt(password: str) -> str:
    try:
        with warnings.catch_warnings():
            # Deprecated since 3.11 and gone in 3.13, where `bcrypt` is needed.
            warnings.simplefilter("ignore", DeprecationWarning)
            crypt: Any = importlib.import_module("crypt")
    except ImportError as error:
        message = "htpasswd needs bcrypt: install the 'bcrypt' package"
        raise RuntimeError(message) from error
    salt = crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=2**_BCRYPT_COST)
    hashed = crypt.crypt(password, salt)
    if not isinstance(hashed, str) or not hashed.startswith("$2"):
        raise RuntimeError("the C library's crypt(3) cannot make bcrypt hashes")
    return hashed


class RegistryServer:
    """One ``docker-registry`` process with its own storage, port and log.

    `start` returns once ``GET /v2/`` answers 200 or 401. `stop` ends the
    process; a later `start` serves the same storage on the same port, which
    is how tests make the registry die in the middle of a run.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        auth: AuthMode = "none",
        tls: CertificateFiles | None = None,
        ca_file: Path | None = None,
        users: Mapping[str, str] | None = None,
        token_service: TokenService | None = None,
        binary: str = REGISTRY_BINARY,
        die_with_parent: bool = True,
        storage_dir: Path | None = None,
    ) -> None:
        """Prepare a registry in `workdir`; nothing runs until `start`.

        `tls` is the server's certificate and `ca_file` the CA that clients
        must trust; without `tls` the registry speaks plain HTTP. `users`
        (username to password) is required for ``"htpasswd"``; for
        ``"token"`` the users are the token service's. With
        `die_with_parent`, the process gets SIGTERM when the thread that
        called `start` exits, so a crashed test run leaks no registry.
        Blobs and manifests go to `storage_dir` (default: `workdir`/storage);
        benchmarks put it on a memory filesystem.
        """
        _check_settings(auth, users, token_service, tls, ca_file)
        self.workdir = workdir
        self.auth: AuthMode = auth
        self.token_service = token_service
        self.users: dict[str, str] = _users_for(auth, users, token_service)
        self.ca_file = ca_file
        self.cert_dir = _cert_dir(workdir, self.ca_file)
        self.port = free_port()
        self.storage_dir = storage_dir or workdir / "storage"
        self.log_file = workdir / "registry.log"
        self.config_file = workdir / "config.yml"
        self._tls = tls
        self._binary = binary
        self._die_with_parent = die_with_parent
        self._http_secret = secrets.token_hex(16)
        self._process: subprocess.Popen[bytes] | None = None
        self._baseline = 0

    @property
    def scheme(self) -> str:
        """``https``, or ``http`` when the registry runs without TLS."""
        return "https" if self._tls is not None else "http"

    @property
    def host(self) -> str:
        """The registry host as it appears in references: ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL, for example ``https://127.0.0.1:40123``."""
        return f"{self.scheme}://{self.host}"

    @property
    def running(self) -> bool:
        """Whether the registry process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The registry's process ID while it runs (benchmarks read its CPU)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def credentials(self, username: str) -> tuple[str, str]:
        """Return ``(username, password)`` for one of `users`."""
        return username, self.users[username]

    def verify(self) -> ssl.SSLContext | bool:
        """Return what an httpx client should pass as ``verify=``."""
        if self.ca_file is None:
            return False
        return ssl.create_default_context(cafile=str(self.ca_file))

    def start(self) -> None:
        """Start the registry and wait until it answers; no-op if it runs."""
        if self.running:
            return
        if self.token_service is not None:
            self.token_service.start()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._process = self._spawn()
        _register(self)
        self._wait_until_ready()

    def stop(self, *, graceful: bool = True) -> None:
        """End the process: SIGTERM, or SIGKILL when not `graceful`."""
        process, self._process = self._process, None
        _RUNNING.pop(id(self), None)
        if process is None or process.poll() is not None:
            return
        if graceful:
            process.terminate()
        else:
            process.kill()
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> RegistryServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def mark(self) -> int:
        """Return a position in the access log, for ``since=`` arguments."""
        return self._sync_log_count()

    def clear_log(self) -> None:
        """Make `access_log` and `count` ignore every request made so far."""
        self._baseline = self.mark()

    def access_log(self, since: int | None = None) -> list[AccessEntry]:
        """Return the requests logged after `since` (default: `clear_log`).

        Waits until every request answered so far has been written, by
        sending a marker request and reading until it appears. The
        testkit's own requests (readiness checks, markers) are left out.
        """
        self._sync_log_count()
        entries = self._read_entries()
        return entries[self._baseline if since is None else since :]

    def count(
        self,
        method: str,
        path_regex: str,
        *,
        status: int | None = None,
        since: int | None = None,
    ) -> int:
        """Count logged requests whose method matches and path fully matches."""
        pattern = re.compile(path_regex)
        return sum(
            1
            for entry in self.access_log(since)
            if entry.method == method.upper()
            and pattern.fullmatch(entry.path)
            and (status is None or entry.status == status)
        )

    def blob_uploads(
        self,
        repository: str | None = None,
        *,
        since: int | None = None,
    ) -> list[AccessEntry]:
        """Return the requests that carried blob bytes into `repository`, or any."""
        prefix = f"/v2/{repository}/blobs/" if repository else "/v2/"
        return [
            entry
            for entry in self.access_log(since)
            if entry.is_blob_upload and entry.path.startswith(prefix)
        ]

    def blob_mounts(
        self,
        repository: str | None = None,
        *,
        since: int | None = None,
    ) -> list[AccessEntry]:
        """Return the successful cross-repository mounts into `repository`."""
        prefix = f"/v2/{repository}/blobs/" if repository else "/v2/"
        return [
            entry
            for entry in self.access_log(since)
            if entry.is_blob_mount and entry.path.startswith(prefix)
        ]

    def log_tail(self, lines: int = 30) -> str:
        """Return the last lines of the registry's log, for failure messages."""
        if not self.log_file.exists():
            return ""
        text = self.log_file.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": self.host,
                # A fixed secret keeps upload sessions valid across a restart.
                "secret": self._http_secret,
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        if self._tls is not None:
            config["http"]["tls"] = {
                "certificate": str(self._tls.cert_file),
                "key": str(self._tls.key_file),
            }
        if self.auth != "none":
            config["auth"] = self._auth_config()
        return config

    def _auth_config(self) -> dict[str, Any]:
        if self.auth == "htpasswd":
            return {"htpasswd": {"realm": "testkit", "path": str(self._htpasswd())}}
        assert self.token_service is not None  # checked by _check_settings
        service = self.token_service
        return {
            "token": {
                "realm": service.realm,
                "service": service.service,
                "issuer": service.issuer,
                "rootcertbundle": str(service.root_cert_file),
            }
        }

    def _htpasswd(self) -> Path:
        path = self.workdir / "htpasswd"
        lines = [f"{name}:{bcrypt_hash(pw)}\n" for name, pw in self.users.items()]
        path.write_text("".join(lines))
        path.chmod(0o600)
        return path

    def _write_config(self) -> None:
        text = yaml.safe_dump(self._config(), sort_keys=False)
        self.config_file.write_text(text)

    def _spawn(self) -> subprocess.Popen[bytes]:
        binary = shutil.which(self._binary)
        if binary is None:
            raise RegistryBinaryMissingError(_missing_binary_message(self._binary))
        command = [binary, "serve", str(self.config_file)]
        setpriv = shutil.which("setpriv")
        if self._die_with_parent and setpriv is not None:
            command = [setpriv, "--pdeathsig", "TERM", "--", *command]
        logger.info("starting %s on %s", self._binary, self.url)
        with self.log_file.open("ab") as log:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.workdir,
            )

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        with self._client() as client:
            while time.monotonic() < deadline:
                if self._process is None or self._process.poll() is not None:
                    self._fail("the registry exited during start-up")
                if _answers(client, f"{self.url}/v2/?{_READY_PARAM}=1"):
                    return
                time.sleep(0.05)
        self._fail(f"the registry did not answer within {_START_TIMEOUT:.0f}s")

    def _fail(self, message: str) -> NoReturn:
        self.stop(graceful=False)
        detail = f"{message} at {self.url}; its log ends with:\n{self.log_tail()}"
        raise RegistryStartError(detail)

    def _client(self) -> httpx.Client:
        """A client for the testkit's own requests (readiness, log sync)."""
        verify = self.verify()
        if isinstance(verify, ssl.SSLContext):
            # Served on purpose with a certificate for another name (the
            # wrong-host tests), the registry is still up: check the chain only.
            verify.check_hostname = False
        return httpx.Client(verify=verify, trust_env=False, timeout=5.0)

    def _sync_log_count(self) -> int:
        """Wait until the log holds every answered request; return how many."""
        if not self.running:
            return len(self._read_entries())
        marker = secrets.token_hex(8)
        with self._client() as client:
            client.get(f"{self.url}/v2/?{_SYNC_PARAM}={marker}")
        deadline = time.monotonic() + _LOG_SYNC_TIMEOUT
        while time.monotonic() < deadline:
            if f"{_SYNC_PARAM}={marker}" in self._read_log():
                return len(self._read_entries())
            time.sleep(0.02)
        raise RuntimeError(
            f"the registry did not log a request within {_LOG_SYNC_TIMEOUT}s"
        )

    def _read_log(self) -> str:
        if not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")

    def _read_entries(self) -> list[AccessEntry]:
        entries = (_parse_access_line(line) for line in self._read_log().splitlines())
        return [entry for entry in entries if entry is not None and not _is_own(entry)]


def _parse_access_line(line: str) -> AccessEntry | None:
    """Parse one combined-format line; None for logrus lines and anything else."""
    match = _ACCESS_LINE.match(line)
    if match is None:
        return None
    size = match["size"]
    return AccessEntry(
        method=match["method"],
        uri=match["uri"],
        status=int(match["status"]),
        size=0 if size == "-" else int(size),
        user=match["user"],
    )


def _is_own(entry: AccessEntry) -> bool:
    """Whether the testkit itself sent this request (readiness or log sync)."""
    return entry.path == "/v2/" and (
        _SYNC_PARAM in entry.query or _READY_PARAM in entry.query
    )


def _answers(client: httpx.Client, url: str) -> bool:
    try:
        response = client.get(url)
    except httpx.TransportError:
        return False
    return response.status_code in (200, 401)


def _check_settings(
    auth: AuthMode,
    users: Mapping[str, str] | None,
    token_service: TokenService | None,
    tls: CertificateFiles | None,
    ca_file: Path | None,
) -> None:
    if auth == "htpasswd" and not users:
        raise ValueError("htpasswd authentication needs users")
    if auth == "token" and token_service is None:
        raise ValueError("token authentication needs a token service")
    if (tls is None) != (ca_file is None):
        raise ValueError("TLS needs both a server certificate and the CA file")


def _users_for(
    auth: AuthMode,
    users: Mapping[str, str] | None,
    token_service: TokenService | None,
) -> dict[str, str]:
    if auth == "token" and token_service is not None:
        return token_service.credentials
    return dict(users or {})


def _cert_dir(workdir: Path, ca_file: Path | None) -> Path | None:
    """Lay out a ``--cert-dir`` for skopeo: the CA as ``ca.crt``, nothing else."""
    if ca_file is None:
        return None
    cert_dir = workdir / "certs.d"
    cert_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca_file, cert_dir / "ca.crt")
    return cert_dir


def _missing_binary_message(binary: str) -> str:
    return (
        f"{binary!r} is not on PATH: the tests run Debian's docker-registry "
        "(CNCF Distribution). `.ci/run` installs it; by hand: "
        "apt-get install docker-registry skopeo"
    )


_RUNNING: dict[int, RegistryServer] = {}


def _register(server: RegistryServer) -> None:
    _RUNNING[id(server)] = server


@atexit.register
def _stop_all() -> None:
    # The fixtures stop every registry; this is the safety net for scripts.
    for server in list(_RUNNING.values()):
        server.stop()
    _RUNNING.clear()
