"""Registries that answer what no honest registry would: the plan stays safe.

Distribution cannot be made to answer these, so a small server of this
file's own stands in: real HTTP over TLS signed by the test CA, answering
from a table and recording every request it gets, headers included. The
command line runs against it as against any registry. Over 4 MiB with and
without Content-Length is covered at the client in test_registry_faults.py;
here a body that never ends is met by the command line.
"""

from __future__ import annotations

import http.server
import json
import secrets
import ssl
import threading
import time
import tracemalloc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from reconciler.cli import main
from reconciler.testkit.images import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    BuiltImage,
    build_image,
    sha256_digest,
)
from reconciler.testkit.pki import CertificateFiles, TestPKI
from reconciler.testkit.registry import RegistryServer

USER, PASSWORD = "robot$library+ci", "evil-test-pass"
ENV = {"EVIL_USER": USER, "EVIL_PASSWORD": PASSWORD}
Body = bytes | Iterator[bytes]


@dataclass(frozen=True)
class Answer:
    """What the server sends back for one route."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Body = b""


@dataclass(frozen=True)
class Seen:
    """One request the server got."""

    method: str
    path: str
    headers: Mapping[str, str]


class Server:
    """An HTTP(S) server on 127.0.0.1 that answers from `routes` and records all.

    Routes are keyed by method and path (the query left out); anything else
    answers 404 in the registry's way. With `basic`, a request without an
    Authorization header is answered 401 with a Basic challenge first.
    """

    def __init__(self, tls: CertificateFiles | None, *, basic: bool = False) -> None:
        self.routes: dict[tuple[str, str], Answer] = {}
        self.seen: list[Seen] = []
        self._basic = basic
        context = None
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert_file, tls.key_file)
        self._http = _Listener(("127.0.0.1", 0), _Handler, context, self)
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self.scheme = "https" if context else "http"

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self._http.server_address[1]}"

    @property
    def url(self) -> str:
        """The base URL."""
        return f"{self.scheme}://{self.host}"

    def __enter__(self) -> Server:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)

    def answer(self, handler: _Handler) -> None:
        """Record the request, then send its route's answer."""
        path = handler.path.split("?", 1)[0]
        headers = dict(handler.headers.items())
        self.seen.append(Seen(handler.command, path, headers))
        if self._basic and "Authorization" not in handler.headers:
            challenge = {"WWW-Authenticate": 'Basic realm="evil"'}
            _send(handler, Answer(401, challenge, b"{}"))
            return
        missing = Answer(404, {"Content-Type": "application/json"}, _UNKNOWN)
        _send(handler, self._route(handler.command, path) or missing)

    def _route(self, command: str, path: str) -> Answer | None:
        found = self.routes.get((command, path))
        if found is None and command == "GET" and "/manifests/" in path:
            # A tag serves what its digest serves, as on a registry.
            tagged = self.routes.get(("HEAD", path))
            digest = tagged.headers.get("Docker-Content-Digest") if tagged else None
            if digest:
                by_digest = f"{path.rsplit('/', 1)[0]}/{digest}"
                found = self.routes.get(("GET", by_digest))
        return found


_UNKNOWN = b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}'


class _Listener(http.server.ThreadingHTTPServer):
    """Each connection's TLS handshake runs in that connection's thread."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        context: ssl.SSLContext | None,
        owner: Server,
    ) -> None:
        super().__init__(address, handler)
        self.context = context
        self.owner = owner

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(10)
        try:
            wrapped = self.context.wrap_socket(request, server_side=True)
        except OSError:
            return  # a client that gave up on the handshake
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Listener
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.owner.answer(self)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read `Server.seen` instead."""


def _send(handler: _Handler, answer: Answer) -> None:
    """Send `answer`: a known length, or chunks until the client hangs up."""
    handler.send_response(answer.status)
    for name, value in answer.headers.items():
        handler.send_header(name, value)
    if isinstance(answer.body, bytes):
        if "Content-Length" not in answer.headers:
            handler.send_header("Content-Length", str(len(answer.body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(answer.body)
        return
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    try:
        for chunk in answer.body:
            handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    except OSError:
        handler.close_connection = True  # the client stopped reading: good


# -- the scene ------------------------------------------------------------


@dataclass
class Scene:
    """A server holding one source image, and a desired state asking for it."""

    server: Server
    image: BuiltImage
    workdir: Path
    ca_file: Path

    @property
    def source(self) -> str:
        return "/v2/library/app-amd64"

    def serve_source(self, content_type: str = DOCKER_MANIFEST) -> None:
        """The source tag, its manifest by digest, and its config blob."""
        image = self.image
        described = {
            "Docker-Content-Digest": image.digest,
            "Content-Type": content_type,
        }
        head = {**described, "Content-Length": str(len(image.manifest))}
        self.server.routes |= {
            ("HEAD", f"{self.source}/manifests/1.0"): Answer(200, head),
            ("HEAD", f"{self.source}/manifests/{image.digest}"): Answer(200, head),
            ("GET", f"{self.source}/manifests/{image.digest}"): Answer(
                200, described, image.manifest
            ),
            ("GET", f"{self.source}/blobs/{image.config.digest}"): Answer(
                200, {}, image.config.data
            ),
            ("GET", "/v2/"): Answer(200, {}, b"{}"),
        }

    def desired(self, extra: str = "") -> Path:
        """A desired state for `library/app:1.0`, linux/amd64 only, on the server."""
        folder = self.workdir / "desired"
        folder.mkdir(exist_ok=True)
        host = self.server.host
        (folder / "app.yaml").write_text(
            f"version: 1\nregistries:\n  {host}:\n    ca_file: {self.ca_file}\n"
            "    credentials:\n      username_env: EVIL_USER\n"
            f"      password_env: EVIL_PASSWORD\n{extra}"
            f"images:\n  - repository: {host}/library/app\n"
            '    versions: ["1.0"]\n    platforms: [linux/amd64]\n'
            f"    source: {host}/library/app-{{arch}}:{{version}}\n"
        )
        return folder

    def run(self, *args: str) -> Result:
        """The command line, in process, with the credentials in the environment.

        Its cache of facts by digest is this test's own, and starts empty.
        """
        env = {**ENV, "RECONCILER_CACHE_DIR": str(self.workdir / "cache")}
        return CliRunner().invoke(main, list(args), env=env)


@pytest.fixture
def scene(pki: TestPKI, tmp_path: Path) -> Iterator[Scene]:
    """A TLS server with Basic authentication and one source image on it."""
    with Server(pki.server, basic=True) as server:
        image = build_image(seed=f"evil-{secrets.token_hex(8)}")
        yield Scene(server, image, tmp_path, pki.ca_file)


def credentials_in(requests: list[Seen]) -> list[Seen]:
    """The requests that carried any credential: header, cookie or password."""
    return [
        seen
        for seen in requests
        if {"authorization", "cookie"} & {k.lower() for k in seen.headers}
        or PASSWORD in json.dumps([seen.path, dict(seen.headers)])
    ]


# -- redirects ---------------------------------------------------------------


def test_config_redirected_to_another_host_gets_no_credentials(
    scene: Scene, pki: TestPKI
) -> None:
    """A 307 to another host for a config blob is followed without Authorization."""
    scene.serve_source()
    config = scene.image.config
    with Server(pki.server) as elsewhere:
        # Another host name, on another port: another origin.
        blob = f"https://localhost:{elsewhere.host.split(':')[1]}/b/{config.digest}"
        scene.server.routes[("GET", f"{scene.source}/blobs/{config.digest}")] = Answer(
            307, {"Location": f"{blob}?signature=abc"}
        )
        elsewhere.routes[("GET", f"/b/{config.digest}")] = Answer(200, {}, config.data)

        result = scene.run("plan", str(scene.desired()))

    assert result.exit_code == 0, result.output
    assert "Plan: 2 to add" in result.stdout
    assert [seen.method for seen in elsewhere.seen] == ["GET"]
    assert credentials_in(elsewhere.seen) == []
    assert credentials_in(scene.server.seen)  # they were sent where they belong


def test_redirect_within_the_registry_keeps_credentials_until_it_leaves(
    scene: Scene, pki: TestPKI
) -> None:
    """A 307 to another path of the same origin is followed with Authorization
    (the registry asks for it there too); its next 307, to another origin,
    without.
    """
    scene.serve_source()
    config = scene.image.config
    hop = f"/hop/{config.digest}"
    with Server(pki.server) as elsewhere:
        blob = f"https://localhost:{elsewhere.host.split(':')[1]}/b/{config.digest}"
        scene.server.routes |= {
            ("GET", f"{scene.source}/blobs/{config.digest}"): Answer(
                307, {"Location": hop}
            ),
            ("GET", hop): Answer(307, {"Location": blob}),
        }
        elsewhere.routes[("GET", f"/b/{config.digest}")] = Answer(200, {}, config.data)

        result = scene.run("plan", str(scene.desired()))

    assert result.exit_code == 0, result.output
    hops = [seen for seen in scene.server.seen if seen.path == hop]
    assert len(hops) == 1
    assert credentials_in(hops) == hops
    assert [seen.method for seen in elsewhere.seen] == ["GET"]
    assert credentials_in(elsewhere.seen) == []


def test_layers_streamed_through_a_redirect_get_no_credentials(
    scene: Scene, pki: TestPKI, registry_none: RegistryServer, tmp_path: Path
) -> None:
    """Copying to another registry, blobs follow a redirect without Authorization."""
    scene.serve_source()
    image = scene.image
    with Server(pki.server) as elsewhere:
        port = elsewhere.host.split(":")[1]
        for blob in image.blobs:
            path = f"{scene.source}/blobs/{blob.digest}"
            location = f"https://localhost:{port}/b/{blob.digest}"
            scene.server.routes[("GET", path)] = Answer(307, {"Location": location})
            elsewhere.routes[("GET", f"/b/{blob.digest}")] = Answer(200, {}, blob.data)
        target = f"{registry_none.host}/{tmp_path.name.lower()}/app"
        desired = scene.desired(
            extra=f"  {registry_none.host}:\n    ca_file: {scene.ca_file}\n"
        )
        text = (desired / "app.yaml").read_text()
        target_line = f"repository: {scene.server.host}/library/app"
        (desired / "app.yaml").write_text(
            text.replace(target_line, f"repository: {target}")
        )

        result = scene.run("apply", "--auto-approve", str(desired))

    assert result.exit_code == 0, result.output
    assert "Apply complete! 2 added" in result.stdout
    fetched = {seen.path.rsplit("/", 1)[1] for seen in elsewhere.seen}
    assert fetched == {blob.digest for blob in image.blobs}
    assert credentials_in(elsewhere.seen) == []


# -- a token realm in clear ------------------------------------------------


def test_token_realm_on_plain_http_is_never_asked(pki: TestPKI, tmp_path: Path) -> None:
    """An HTTPS registry naming an http:// realm: refused, the realm never hears."""
    with Server(None) as realm, Server(pki.server) as registry:
        challenge = f'Bearer realm="{realm.url}/service/token",service="evil"'
        registry.routes[("GET", "/v2/")] = Answer(401, {"WWW-Authenticate": challenge})
        scene = Scene(registry, build_image(seed="realm"), tmp_path, pki.ca_file)

        result = scene.run("plan", str(scene.desired()))

    assert result.exit_code == 1
    assert realm.seen == []
    assert f"sends clients to a token service over plain HTTP ({realm.url}" in (
        result.stderr
    )
    assert "refusing to send credentials in clear" in result.stderr
    assert "Traceback" not in result.output
    assert PASSWORD not in result.output


@pytest.mark.parametrize("token", ["evil\r\nX-Injected: 1", "evil\nX-Injected: 1"])
def test_token_that_would_split_a_request_is_refused(
    pki: TestPKI, tmp_path: Path, token: str
) -> None:
    """A token service whose token holds a line break: nothing is sent with it."""
    with Server(pki.server) as registry:
        scene = Scene(registry, build_image(seed="split"), tmp_path, pki.ca_file)
        scene.serve_source()
        challenge = f'Bearer realm="{registry.url}/service/token",service="evil"'
        registry.routes |= {
            ("GET", "/v2/"): Answer(401, {"WWW-Authenticate": challenge}),
            ("GET", "/service/token"): Answer(
                200,
                {"Content-Type": "application/json"},
                json.dumps({"token": token}).encode(),
            ),
        }

        result = scene.run("plan", str(scene.desired()))

    assert result.exit_code == 1
    assert "gave a token with characters a token cannot hold" in result.stderr
    assert "Traceback" not in result.output
    assert not [seen for seen in registry.seen if "X-Injected" in seen.headers]
    assert not [seen for seen in registry.seen if "evil" in str(seen.headers)]


# -- indexes that lie --------------------------------------------------------


def test_index_that_lists_itself_is_refused_without_looping(scene: Scene) -> None:
    """A source index whose child, when read, is the index again: a clear error."""
    scene.serve_source()
    child = scene.image.digest
    index = _manifest_list(child, len(scene.image.manifest))
    digest = sha256_digest(index)
    list_type = {"Content-Type": DOCKER_MANIFEST_LIST}
    scene.server.routes |= {
        ("HEAD", f"{scene.source}/manifests/1.0"): Answer(
            200, {**list_type, "Docker-Content-Digest": digest}, index
        ),
        ("GET", f"{scene.source}/manifests/{digest}"): Answer(200, list_type, index),
        # Asked for the child, the registry serves the index itself.
        ("GET", f"{scene.source}/manifests/{child}"): Answer(200, list_type, index),
    }
    started = time.monotonic()

    result = scene.run("plan", str(scene.desired()))

    assert result.exit_code == 1
    assert time.monotonic() - started < 10
    assert f"library/app-amd64@{child} does not match its digest" in result.stderr
    assert "Traceback" not in result.output


def test_index_whose_child_is_an_index_is_refused(scene: Scene) -> None:
    """A source index listing an index for the platform: refused, naming it."""
    scene.serve_source()
    inner = _manifest_list(scene.image.digest, len(scene.image.manifest))
    outer = _manifest_list(sha256_digest(inner), len(inner), DOCKER_MANIFEST_LIST)
    list_type = {"Content-Type": DOCKER_MANIFEST_LIST}
    for data, tag in ((outer, "1.0"), (inner, None)):
        digest = sha256_digest(data)
        head = {**list_type, "Docker-Content-Digest": digest}
        if tag:
            scene.server.routes[("HEAD", f"{scene.source}/manifests/{tag}")] = Answer(
                200, head, data
            )
        scene.server.routes[("GET", f"{scene.source}/manifests/{digest}")] = Answer(
            200, head, data
        )

    result = scene.run("plan", str(scene.desired()))

    assert result.exit_code == 1
    assert f"library/app-amd64@{sha256_digest(inner)}" in result.stderr
    assert "is not an image manifest" in result.stderr
    assert "Traceback" not in result.output


def _manifest_list(child: str, size: int, media_type: str = DOCKER_MANIFEST) -> bytes:
    entry = {
        "mediaType": media_type,
        "digest": child,
        "size": size,
        "platform": {"architecture": "amd64", "os": "linux"},
    }
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": [entry],
    }
    return json.dumps(document).encode()


# -- what a body says it is, and how long it is ------------------------------


def test_manifest_served_with_a_wrong_content_type_keeps_its_own_media_type(
    scene: Scene,
) -> None:
    """A Docker manifest served as text/plain is still planned as a Docker manifest."""
    scene.serve_source(content_type="text/plain; charset=utf-8")

    result = scene.run("plan", "--json", str(scene.desired()))

    assert result.exit_code == 0, result.output
    changes = {c["kind"]: c for c in json.loads(result.stdout)["changes"]}
    assert changes["tag"]["media_type"] == DOCKER_MANIFEST
    assert changes["index"]["media_type"] == DOCKER_MANIFEST_LIST


def test_manifest_that_never_ends_is_cut_at_4_mib(scene: Scene) -> None:
    """A manifest streamed without end: refused at the cap, in bounded memory."""
    scene.serve_source()
    digest = scene.image.digest
    endless = Answer(200, {"Content-Type": DOCKER_MANIFEST}, _forever())
    scene.server.routes[("GET", f"{scene.source}/manifests/{digest}")] = endless
    tracemalloc.start()
    started = time.monotonic()
    try:
        result = scene.run("plan", str(scene.desired()))
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    assert result.exit_code == 1
    assert time.monotonic() - started < 10
    assert peak < 64 * 1024 * 1024
    assert "exceeds 4194304 bytes" in result.stderr
    assert "Traceback" not in result.output


def _forever() -> Iterator[bytes]:
    chunk = b" " * 65536
    while True:
        yield chunk
