"""The registry client against Debian's real docker-registry, in each auth mode."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    Descriptor,
    Digest,
    ImageManifest,
    Platform,
    Reference,
    Repository,
    build_index,
)
from reconciler.registry import (
    AuthenticationError,
    BlobCopy,
    ConnectionFailedError,
    ConnectionSettings,
    Credentials,
    PermissionDeniedError,
    PooledTransport,
    RegistryClient,
    RegistryError,
    TLSError,
    blob_copy,
)
from reconciler.testkit.accounts import ADMIN, READER, ROBOT
from reconciler.testkit.images import (
    PushedImage,
    manifest_get,
    manifest_put,
    push_image,
)
from reconciler.testkit.pki import TestPKI
from reconciler.testkit.registry import RegistryServer, free_port
from reconciler.testkit.tokens import TokenService

from .helpers import FAST_RETRY, admin_of, client_for, settings_for


def seed(
    server: RegistryServer, repository: str, tag: str, **options: Any
) -> PushedImage:
    """Push a small real image as the admin."""
    return push_image(server, repository, tag, credentials=admin_of(server), **options)


def ref(server: RegistryServer, text: str) -> Reference:
    return Reference.parse(f"{server.host}/{text}")


def test_manifest_read_by_tag_and_by_digest(
    registry: RegistryServer, namespace: str
) -> None:
    """HEAD and GET by tag and by digest agree with what was pushed."""
    pushed = seed(registry, f"{namespace}/app", "1.0")
    with client_for(registry) as client:
        by_tag = client.manifest_head(ref(registry, f"{namespace}/app:1.0"))
        fetched = client.manifest_get(ref(registry, f"{namespace}/app@{pushed.digest}"))

    assert by_tag is not None
    assert by_tag.digest == pushed.digest
    assert by_tag.media_type == DOCKER_MANIFEST
    assert by_tag.size == pushed.size
    assert fetched.manifest.raw == pushed.manifest
    assert isinstance(fetched.manifest, ImageManifest)


@pytest.mark.parametrize(
    ("media_type", "refusal"),
    [
        ("application/json\r\nX-Injected: 1", "holds a line break"),
        ("application/json; x=\u20ac", "holds a character that HTTP fields cannot"),
    ],
    ids=["line-break", "beyond-latin-1"],
)
def test_field_http_cannot_carry_is_never_sent(
    registry: RegistryServer, namespace: str, media_type: str, refusal: str
) -> None:
    """A media type that would split the PUT, or that no field can hold: refused
    with a RegistryError before anything is sent.
    """
    pushed = seed(registry, f"{namespace}/app", "1.0")
    address = ref(registry, f"{namespace}/app:copy")
    with client_for(registry) as client:
        client.manifest_head(ref(registry, f"{namespace}/app:1.0"))  # warm
        mark = registry.mark()
        with pytest.raises(RegistryError, match=refusal):
            client.manifest_put(address, pushed.manifest, media_type)

    assert registry.access_log(since=mark) == []


def test_manifest_over_64_kib_reads_with_one_head(
    registry: RegistryServer, namespace: str
) -> None:
    """A HEAD's Content-Length is the manifest's size, not a body to cap."""
    pushed = seed(registry, f"{namespace}/app", "small")
    document = json.loads(pushed.manifest)
    document["annotations"] = {"org.example.notes": "n" * 100_000}
    big = json.dumps(document).encode()
    digest = manifest_put(
        registry,
        f"{namespace}/app",
        "big",
        big,
        DOCKER_MANIFEST,
        credentials=admin_of(registry),
    )
    with client_for(registry) as client:
        found = client.manifest_head(ref(registry, f"{namespace}/app:big"))

    assert found is not None
    assert (found.digest, found.size) == (digest, len(big))


def test_missing_manifest_heads_to_none(
    registry: RegistryServer, namespace: str
) -> None:
    """A tag that does not exist is None, not an error."""
    with client_for(registry) as client:
        assert client.manifest_head(ref(registry, f"{namespace}/nothing:1")) is None


def test_pushed_index_reads_back_byte_for_byte(
    registry: RegistryServer, namespace: str
) -> None:
    """An index pushed from exact bytes is stored and served as those bytes."""
    amd = seed(registry, f"{namespace}/app", "amd")
    arm = seed(registry, f"{namespace}/app", "arm", architecture="arm64", seed="arm")
    children = [
        Descriptor(
            DOCKER_MANIFEST, Digest(amd.digest), amd.size, Platform.parse("linux/amd64")
        ),
        Descriptor(
            DOCKER_MANIFEST, Digest(arm.digest), arm.size, Platform.parse("linux/arm64")
        ),
    ]
    raw = build_index(DOCKER_MANIFEST_LIST, children)
    target = ref(registry, f"{namespace}/app:1.0")

    with client_for(registry) as client:
        digest = client.manifest_put(target, raw, DOCKER_MANIFEST_LIST)

    assert digest == Digest.of(raw)
    stored = manifest_get(
        registry, f"{namespace}/app", "1.0", credentials=admin_of(registry)
    )
    assert stored.data == raw


def test_blobs_mount_across_repositories_without_upload(
    registry: RegistryServer, namespace: str
) -> None:
    """Copying an image to another repository mounts every blob; no byte moves."""
    pushed = seed(registry, f"{namespace}/src-amd64", "1.0", layers=3)
    source = Repository(registry.host, f"{namespace}/src-amd64")
    target = Repository(registry.host, f"{namespace}/app")
    mark = registry.mark()

    with client_for(registry) as client:
        manifest = client.manifest_get(source.digest(Digest(pushed.digest))).manifest
        assert isinstance(manifest, ImageManifest)
        results = [blob_copy(b, client, source, client, target) for b in manifest.blobs]
        client.manifest_put(target.tag("1.0"), manifest.raw, manifest.media_type)

    assert results == [BlobCopy.MOUNTED] * 4
    assert registry.blob_uploads(since=mark) == []
    assert len(registry.blob_mounts(target.path, since=mark)) == 4


class NoMount(httpx.BaseTransport):
    """Strips `mount=`/`from=` from uploads, as a registry that never mounts would."""

    def __init__(self, verify: ssl.SSLContext) -> None:
        self._inner = httpx.HTTPTransport(verify=verify)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and "mount" in request.url.params:
            request.url = request.url.copy_remove_param("mount").copy_remove_param(
                "from"
            )
        return self._inner.handle_request(request)


def test_mount_answered_with_202_streams_the_blob(
    registry_token: RegistryServer, namespace: str
) -> None:
    """When the registry opens an upload instead of mounting, the blob is streamed."""
    server = registry_token
    pushed = seed(server, f"{namespace}/src", "1.0")
    source = Repository(server.host, f"{namespace}/src")
    target = Repository(server.host, f"{namespace}/copy")
    settings = settings_for(server)
    transport = NoMount(settings.ssl_context())
    credentials = Credentials(*server.credentials(ADMIN))
    mark = server.mark()

    with RegistryClient(
        settings, credentials=credentials, transport=transport
    ) as client:
        layer = Descriptor("", Digest(pushed.layer_digests[0]), pushed.blobs[1].size)
        how = blob_copy(layer, client, source, client, target)
        assert client.blob_head(target, layer.digest)

    assert how is BlobCopy.UPLOADED
    uploads = server.blob_uploads(target.path, since=mark)
    assert [e.method for e in uploads] == ["PUT"]


def test_blob_streams_between_registries(
    registry_none: RegistryServer, registry_basic: RegistryServer, namespace: str
) -> None:
    """Across registries there is no mount: the blob is streamed, and only once."""
    pushed = seed(registry_none, f"{namespace}/src", "1.0")
    source = Repository(registry_none.host, f"{namespace}/src")
    target = Repository(registry_basic.host, f"{namespace}/dst")
    layer = Descriptor("", Digest(pushed.layer_digests[0]), pushed.blobs[1].size)

    with client_for(registry_none) as src, client_for(registry_basic) as dst:
        first = blob_copy(layer, src, source, dst, target)
        second = blob_copy(layer, src, source, dst, target)

    assert (first, second) == (BlobCopy.UPLOADED, BlobCopy.PRESENT)


class Paginating(httpx.BaseTransport):
    """Serves the real registry's tag list in pages of `n`, with Link headers.

    Distribution 2.8 ignores `n` on tag lists (only the catalog pages), so
    the paging is done here, over the real registry's answer.
    """

    def __init__(self, verify: ssl.SSLContext) -> None:
        self._inner = httpx.HTTPTransport(verify=verify)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/tags/list"):
            return self._inner.handle_request(request)
        size = int(request.url.params.get("n", "100"))
        last = request.url.params.get("last")
        request.url = request.url.copy_remove_param("n").copy_remove_param("last")
        response = self._inner.handle_request(request)
        response.read()
        document = json.loads(response.content)
        tags = sorted(document["tags"])
        start = tags.index(last) + 1 if last else 0
        page = tags[start : start + size]
        headers = {"Content-Type": "application/json"}
        if start + size < len(tags):
            next_url = request.url.copy_set_param("n", str(size)).copy_set_param(
                "last", page[-1]
            )
            headers["Link"] = f'<{next_url.raw_path.decode()}>; rel="next"'
        return httpx.Response(200, json={**document, "tags": page}, headers=headers)


def test_tag_list_follows_pagination(registry: RegistryServer, namespace: str) -> None:
    """More tags than one page holds are all listed, following Link headers."""
    tags = [f"v{i}" for i in range(7)]
    for tag in tags:
        seed(registry, f"{namespace}/many", tag)
    settings = settings_for(registry)
    admin = admin_of(registry)
    credentials = Credentials(*admin) if admin else None
    transport = Paginating(settings.ssl_context())
    mark = registry.mark()

    with RegistryClient(
        settings, credentials=credentials, transport=transport
    ) as client:
        listed = client.tag_list(
            Repository(registry.host, f"{namespace}/many"), page_size=3
        )

    assert sorted(listed) == tags
    assert len(listed) == len(tags)
    assert registry.count("GET", rf"/v2/{namespace}/many/tags/list", since=mark) == 3


def test_tag_list_of_missing_repository_is_empty(
    registry: RegistryServer, namespace: str
) -> None:
    """A repository that does not exist has no tags."""
    with client_for(registry) as client:
        assert client.tag_list(Repository(registry.host, f"{namespace}/none")) == []


@pytest.mark.parametrize("server_name", ["registry_basic", "registry_token"])
def test_bad_password_is_an_authentication_error_naming_user_and_host(
    request: pytest.FixtureRequest, server_name: str, namespace: str
) -> None:
    """A wrong password says authentication failed, for whom and where."""
    server: RegistryServer = request.getfixturevalue(server_name)
    seed(server, f"{namespace}/app", "1.0")

    with (
        client_for(server, ADMIN, password="bad-secret-123") as client,
        pytest.raises(AuthenticationError) as caught,
    ):
        client.manifest_head(ref(server, f"{namespace}/app:1.0"))

    text = str(caught.value)
    assert server.host in text
    assert "bad-secret-123" not in text
    if server_name == "registry_token":
        assert "'admin'" in text


def test_no_credentials_on_a_private_registry_says_how_to_add_them(
    registry_token: RegistryServer, namespace: str
) -> None:
    """Anonymous access to a registry that needs login names the settings to set."""
    with (
        RegistryClient(settings_for(registry_token)) as client,
        pytest.raises(AuthenticationError) as caught,
    ):
        client.manifest_head(ref(registry_token, f"{namespace}/app:1.0"))

    assert "username_env" in str(caught.value)


def test_pull_only_user_pushing_gets_permission_error(
    registry_token: RegistryServer, namespace: str
) -> None:
    """A pull-only user is refused push with the repository and action named."""
    pushed = seed(registry_token, f"{namespace}/app", "1.0")
    mark = registry_token.mark()

    with (
        client_for(registry_token, READER) as client,
        pytest.raises(PermissionDeniedError) as caught,
    ):
        client.manifest_put(
            ref(registry_token, f"{namespace}/app:2.0"),
            pushed.manifest,
            DOCKER_MANIFEST,
        )

    text = str(caught.value)
    assert f"{namespace}/app" in text
    assert "push" in text
    assert registry_token.count("PUT", r".*", since=mark) == 0


def test_robot_account_with_dollar_pushes(
    registry_token: RegistryServer, namespace: str
) -> None:
    """Harbor's robot$project+name accounts authenticate and push."""
    pushed = seed(registry_token, f"{namespace}/app", "1.0")

    with client_for(registry_token, ROBOT) as client:
        digest = client.manifest_put(
            ref(registry_token, f"{namespace}/app:robot"),
            pushed.manifest,
            DOCKER_MANIFEST,
        )

    assert digest == pushed.digest


def test_tokens_are_cached_per_scope_and_renewed(
    registry_token: RegistryServer, token_service: TokenService, namespace: str
) -> None:
    """Many reads of one repository need one token; expiry fetches a new one."""
    seed(registry_token, f"{namespace}/app", "1.0")
    address = ref(registry_token, f"{namespace}/app:1.0")
    token_service.clear_requests()

    with client_for(registry_token) as client:
        for _ in range(20):
            client.manifest_head(address)
        assert token_service.request_count == 1
        client._auth._tokens[0].expires_at = 0  # as if an hour had passed
        client.manifest_head(address)

    assert token_service.request_count == 2


def test_unknown_ca_names_host_and_where_to_put_the_ca(
    registry_none: RegistryServer, pki: TestPKI, namespace: str
) -> None:
    """A certificate from a CA we were not told about is a TLS error with a hint."""
    settings = settings_for(registry_none, ca_file=pki.other_ca.cert_file)

    with (
        client_for(registry_none, settings=settings) as client,
        pytest.raises(TLSError) as caught,
    ):
        client.manifest_head(ref(registry_none, f"{namespace}/app:1"))

    assert registry_none.host in str(caught.value)
    assert "ca_file" in str(caught.value)
    assert "certs.d" in str(caught.value)


def test_environment_ca_variables_do_not_override_configured_ca(
    registry_none: RegistryServer,
    pki: TestPKI,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SSL_CERT_FILE and REQUESTS_CA_BUNDLE pointing elsewhere change nothing."""
    seed(registry_none, f"{namespace}/app", "1.0")
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, str(pki.other_ca.cert_file))
    monkeypatch.setenv("SSL_CERT_DIR", str(pki.other_ca.cert_file.parent))

    with client_for(registry_none) as client:
        found = client.manifest_head(ref(registry_none, f"{namespace}/app:1.0"))

    assert found is not None


def test_ca_from_docker_certs_d_is_used(
    registry_none: RegistryServer, tmp_path: Path, namespace: str
) -> None:
    """Without ca_file, /etc/docker/certs.d/<host>/ca.crt is where the CA comes from."""
    seed(registry_none, f"{namespace}/app", "1.0")
    folder = tmp_path / registry_none.host
    folder.mkdir()
    assert registry_none.ca_file is not None
    (folder / "ca.crt").write_bytes(registry_none.ca_file.read_bytes())
    settings = ConnectionSettings(registry_none.host, certs_dir=tmp_path)

    with client_for(registry_none, settings=settings) as client:
        assert (
            client.manifest_head(ref(registry_none, f"{namespace}/app:1.0")) is not None
        )


def test_wrong_hostname_is_named(start_registry: object, pki: TestPKI) -> None:
    """A certificate for another name is told apart from an unknown CA."""
    server = start_registry(tls=pki.wrong_host)  # type: ignore[operator]  # fixture factory

    with client_for(server) as client, pytest.raises(TLSError) as caught:
        client.manifest_head(ref(server, "library/app:1"))

    assert "not valid for that name" in str(caught.value)


def test_plain_http_registry_refused_without_insecure(
    registry_http: RegistryServer,
) -> None:
    """A plain-HTTP registry is not silently used over HTTP; the error says how."""
    settings = ConnectionSettings(registry_http.host)

    with (
        RegistryClient(settings, retry=FAST_RETRY) as client,
        pytest.raises(TLSError) as caught,
    ):
        client.manifest_head(ref(registry_http, "library/app:1"))

    assert registry_http.host in str(caught.value)
    assert "insecure: true" in str(caught.value)


def test_plain_http_registry_works_with_insecure(
    registry_http: RegistryServer, namespace: str
) -> None:
    """With insecure: true said explicitly, plain HTTP is used."""
    pushed = seed(registry_http, f"{namespace}/app", "1.0")
    settings = ConnectionSettings(registry_http.host, insecure=True)

    with RegistryClient(settings) as client:
        found = client.manifest_head(ref(registry_http, f"{namespace}/app:1.0"))

    assert found is not None
    assert found.digest == pushed.digest


def test_tls_registry_configured_insecure_says_it_speaks_https(
    registry_none: RegistryServer,
) -> None:
    """Plain HTTP sent to a TLS port is reported as such, not as a bad request."""
    settings = ConnectionSettings(registry_none.host, insecure=True)

    with (
        RegistryClient(settings, retry=FAST_RETRY) as client,
        pytest.raises(TLSError) as caught,
    ):
        client.manifest_head(ref(registry_none, "library/app:1"))

    assert "speaks HTTPS" in str(caught.value)


@pytest.mark.parametrize("pipelined", [False, True])
def test_refused_connection_names_host_and_fails_fast(pipelined: bool) -> None:
    """Nothing listening is reported at once, with the host."""
    host = f"127.0.0.1:{free_port()}"
    address = Reference.parse(f"{host}/library/app:1")

    with (
        RegistryClient(ConnectionSettings(host), retry=FAST_RETRY) as client,
        pytest.raises(ConnectionFailedError) as caught,
    ):
        client.manifest_heads([address] * (2 if pipelined else 1))

    assert host in str(caught.value)
    assert "refused" in str(caught.value)


@pytest.fixture
def docker_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty DOCKER_CONFIG folder for the test."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    return tmp_path


def test_credentials_from_docker_config_auths(
    registry_basic: RegistryServer, docker_config_dir: Path, namespace: str
) -> None:
    """`docker login`'s base64 auth entry is used when no env vars are named."""
    import base64

    seed(registry_basic, f"{namespace}/app", "1.0")
    user, password = registry_basic.credentials(ROBOT)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config = {"auths": {f"https://{registry_basic.host}": {"auth": auth}}}
    (docker_config_dir / "config.json").write_text(json.dumps(config))

    from reconciler.registry import resolve_credentials

    settings = settings_for(registry_basic)
    with RegistryClient(settings, credentials=resolve_credentials(settings)) as client:
        assert (
            client.manifest_head(ref(registry_basic, f"{namespace}/app:1.0"))
            is not None
        )


def test_credentials_from_a_docker_credential_helper(
    registry_token: RegistryServer,
    docker_config_dir: Path,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """credHelpers runs docker-credential-<name> get, with the host on stdin."""
    from reconciler.registry import resolve_credentials

    seed(registry_token, f"{namespace}/app", "1.0")
    user, password = registry_token.credentials(ROBOT)
    helper = docker_config_dir / "docker-credential-test"
    answer = json.dumps(
        {"ServerURL": registry_token.host, "Username": user, "Secret": password}
    )
    helper.write_text(f"#!/bin/sh\nread host\ncat <<'EOF'\n{answer}\nEOF\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{docker_config_dir}{os.pathsep}{os.environ['PATH']}")
    config = {"credHelpers": {registry_token.host: "test"}}
    (docker_config_dir / "config.json").write_text(json.dumps(config))

    settings = settings_for(registry_token)
    credentials = resolve_credentials(settings)
    assert credentials is not None
    assert credentials.username == user
    with RegistryClient(settings, credentials=credentials) as client:
        assert (
            client.manifest_head(ref(registry_token, f"{namespace}/app:1.0"))
            is not None
        )


def test_credentials_from_named_environment_variables(
    registry_token: RegistryServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """username_env/password_env name the variables; a robot's $ survives."""
    from reconciler.registry import resolve_credentials

    seed(registry_token, f"{namespace}/app", "1.0")
    user, password = registry_token.credentials(ROBOT)
    monkeypatch.setenv("HARBOR_USERNAME", user)
    monkeypatch.setenv("HARBOR_PASSWORD", password)
    settings = ConnectionSettings(
        registry_token.host,
        ca_file=registry_token.ca_file,
        username_env="HARBOR_USERNAME",
        password_env="HARBOR_PASSWORD",
    )

    credentials = resolve_credentials(settings)

    assert credentials == Credentials(user, password)
    with RegistryClient(settings, credentials=credentials) as client:
        assert (
            client.manifest_head(ref(registry_token, f"{namespace}/app:1.0"))
            is not None
        )


def test_no_secret_reaches_the_logs(
    registry_token: RegistryServer,
    token_service: TokenService,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At DEBUG, an authenticated push and read log neither password nor token."""
    pushed = seed(registry_token, f"{namespace}/app", "1.0")
    _user, password = registry_token.credentials(ROBOT)
    caplog.set_level(logging.DEBUG)
    # The command line, run in process by earlier tests, keeps its records
    # from the root logger, where caplog listens.
    monkeypatch.setattr(logging.getLogger("reconciler"), "propagate", True)
    caplog.set_level(logging.DEBUG, logger="reconciler")
    token_service.clear_requests()

    with client_for(registry_token, ROBOT) as client:
        client.manifest_put(
            ref(registry_token, f"{namespace}/app:2.0"),
            pushed.manifest,
            DOCKER_MANIFEST,
        )
        client.manifest_get(ref(registry_token, f"{namespace}/app:2.0"))
        tokens = [t.value for t in client._auth._tokens]
        with pytest.raises(AuthenticationError) as caught:
            client_for(registry_token, ROBOT, password="not-" + password).manifest_head(
                ref(registry_token, f"{namespace}/app:1.0")
            )

    logged = caplog.text + str(caught.value)
    assert tokens
    assert token_service.request_count >= 1
    assert "DEBUG" in caplog.text
    assert password not in logged
    for token in tokens:
        assert token not in logged
        assert token[:40] not in logged
    assert "Authorization" not in logged


def test_token_refused_by_the_registry_is_renewed_once(
    registry_token: RegistryServer, token_service: TokenService, namespace: str
) -> None:
    """A cached token the registry answers with 401 is dropped and fetched again."""
    seed(registry_token, f"{namespace}/app", "1.0")
    address = ref(registry_token, f"{namespace}/app:1.0")
    with client_for(registry_token) as client:
        token_service.clock_offset = -(token_service.expires_in + 180)
        try:
            with pytest.raises(AuthenticationError):
                client.manifest_head(address)  # every token is expired on arrival
        finally:
            token_service.clock_offset = 0
        token_service.clear_requests()

        found = client.manifest_head(address)

    assert found is not None
    assert token_service.request_count == 1


class ConnectProxy:
    """An HTTP proxy that tunnels CONNECT requests and records their targets."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            head += chunk
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            client.close()
            return
        self.tunnels.append(target)
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def test_https_proxy_from_the_environment_is_used(
    registry_token: RegistryServer,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTPS_PROXY routes every request to the registry through the proxy."""
    pushed = seed(registry_token, f"{namespace}/app", "1.0")
    proxy = ConnectProxy()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    direct: list[object] = []
    connect = PooledTransport._connect

    def counted(self: PooledTransport, *args: Any) -> Any:
        direct.append(args)
        return connect(self, *args)

    monkeypatch.setattr(PooledTransport, "_connect", counted)
    try:
        with client_for(registry_token) as client:
            info = client.manifest_head(ref(registry_token, f"{namespace}/app:1.0"))
    finally:
        proxy.close()

    assert info is not None
    assert info.digest == Digest(pushed.digest)
    assert registry_token.host in proxy.tunnels
    assert direct == []  # no connection around the proxy


@pytest.mark.parametrize(
    ("media_type", "refusal"),
    [
        ("application/json\r\nX-Injected: 1", "holds a line break"),
        ("application/json; x=\u20ac", "holds a character that HTTP fields cannot"),
    ],
    ids=["line-break", "beyond-latin-1"],
)
def test_field_http_cannot_carry_is_refused_through_a_proxy_too(
    registry_token: RegistryServer,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    media_type: str,
    refusal: str,
) -> None:
    """Through the environment's proxy (httpx's own transport), the same
    refusal as direct, and nothing reaches the registry.
    """
    pushed = seed(registry_token, f"{namespace}/app", "1.0")
    proxy = ConnectProxy()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    try:
        with client_for(registry_token) as client:
            client.manifest_head(ref(registry_token, f"{namespace}/app:1.0"))  # warm
            mark = registry_token.mark()
            with pytest.raises(RegistryError, match=refusal):
                client.manifest_put(
                    ref(registry_token, f"{namespace}/app:copy"),
                    pushed.manifest,
                    media_type,
                )
    finally:
        proxy.close()

    assert registry_token.host in proxy.tunnels  # the proxy was in the way
    assert registry_token.access_log(since=mark) == []


def test_pipelined_heads_answer_as_single_heads(
    registry: RegistryServer, namespace: str
) -> None:
    """manifest_heads gives what manifest_head gives, one HEAD per reference."""
    pushed = [seed(registry, f"{namespace}/app", tag) for tag in ("1.0", "2.0")]
    refs = [
        ref(registry, f"{namespace}/app:{tag}")
        for tag in ("1.0", "nope", "2.0", "gone")
    ]
    mark = registry.mark()

    with client_for(registry) as client:
        piped = client.manifest_heads(refs)
    with client_for(registry) as client:
        single = [client.manifest_head(r) for r in refs]

    assert piped == single
    assert [info.digest if info else None for info in piped] == [
        Digest(pushed[0].digest),
        None,
        Digest(pushed[1].digest),
        None,
    ]
    heads = registry.count("HEAD", rf"/v2/{namespace}/app/manifests/.+", since=mark)
    assert heads == 2 * len(refs)


def test_pipelined_heads_refused_401_are_sent_again_with_a_new_token(
    registry_token: RegistryServer, token_service: TokenService, namespace: str
) -> None:
    """A pipeline answered 401 (an expired token) ends like single HEADs: renewed."""
    pushed = seed(registry_token, f"{namespace}/app", "1.0")
    refs = [ref(registry_token, f"{namespace}/app:{tag}") for tag in ("1.0", "2.0")]
    with client_for(registry_token) as client:
        token_service.clock_offset = -(token_service.expires_in + 180)
        try:
            client.prefetch_tokens([refs[0].repository])  # expired on arrival
        finally:
            token_service.clock_offset = 0
        token_service.clear_requests()

        found = client.manifest_heads(refs)

    assert [info.digest if info else None for info in found] == [
        Digest(pushed.digest),
        None,
    ]
    assert token_service.request_count == 1
