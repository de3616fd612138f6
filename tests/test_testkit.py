"""The testkit itself: real registries, Harbor-like tokens, and real images."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from reconciler.testkit import skopeo
from reconciler.testkit.accounts import ADMIN, READER, ROBOT
from reconciler.testkit.images import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    ImageFormat,
    PushError,
    build_image,
    manifest_delete,
    manifest_get,
    push_image,
    push_index,
    sha256_digest,
)
from reconciler.testkit.pki import TestPKI
from reconciler.testkit.registry import RegistryServer
from reconciler.testkit.tokens import TokenService, decode_token, libtrust_key_id

pytestmark = pytest.mark.registry

MEDIA_TYPES = {"docker": DOCKER_MANIFEST, "oci": OCI_MANIFEST}
StartRegistry = Callable[..., RegistryServer]


def admin(server: RegistryServer) -> tuple[str, str] | None:
    """The credentials that may push to `server`, or None when it needs none."""
    return server.credentials(ADMIN) if server.users else None


def token_request(
    pki: TestPKI,
    service: TokenService,
    scopes: list[str],
    auth: tuple[str, str] | None = None,
) -> httpx.Response:
    """Ask the token service for `scopes`, the way a registry client does."""
    params = [("service", "harbor-registry")] + [("scope", s) for s in scopes]
    verify = ssl.create_default_context(cafile=str(pki.ca_file))
    with httpx.Client(verify=verify, trust_env=False) as client:
        return client.get(service.realm, params=tuple(params), auth=auth)


def granted(response: httpx.Response) -> list[dict[str, Any]]:
    """The ``access`` claim of the token in a token response."""
    _, claims = decode_token(response.json()["token"])
    access = claims["access"]
    assert isinstance(access, list)
    return access


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_pushed_image_reads_back_with_skopeo(
    registry: RegistryServer,
    namespace: str,
    fmt: ImageFormat,
) -> None:
    """An image pushed in each auth mode and format reads back byte for byte."""
    creds = admin(registry)
    image = push_image(registry, f"{namespace}/app", "1.0", fmt=fmt, credentials=creds)

    raw = skopeo.inspect_raw(registry, f"{namespace}/app:1.0", credentials=creds)

    assert sha256_digest(raw) == image.digest
    assert json.loads(raw)["mediaType"] == MEDIA_TYPES[fmt]
    assert image.media_type == MEDIA_TYPES[fmt]


def test_image_config_carries_platform_and_diff_ids() -> None:
    """The config names the platform and the digests of the uncompressed layers."""
    image = build_image(architecture="arm", variant="v7", layers=2)

    config = json.loads(image.config.data)

    assert (config["os"], config["architecture"], config["variant"]) == (
        "linux",
        "arm",
        "v7",
    )
    assert len(config["rootfs"]["diff_ids"]) == 2
    assert config["rootfs"]["diff_ids"][0] != image.layers[0].digest


def test_same_seed_gives_same_digest_and_other_seed_other_layers() -> None:
    """Images are deterministic per seed, and seeds change the layer bytes."""
    first = build_image(seed="a", fmt="oci")
    again = build_image(seed="a", fmt="oci")
    other = build_image(seed="b", fmt="oci")

    assert first.digest == again.digest
    assert first.layers[0].digest != other.layers[0].digest


def test_index_children_resolve_per_platform(
    registry: RegistryServer,
    namespace: str,
    tmp_path: Path,
) -> None:
    """skopeo pulls the child an index lists for the requested platform."""
    creds = admin(registry)
    amd64 = push_image(registry, f"{namespace}/app", "amd64", credentials=creds)
    arm64 = push_image(
        registry,
        f"{namespace}/app",
        "arm64",
        architecture="arm64",
        seed="arm",
        credentials=creds,
    )
    children = [(amd64, "linux/amd64"), (arm64, "linux/arm64")]
    index = push_index(registry, f"{namespace}/app", "1.0", children, credentials=creds)

    raw = skopeo.inspect_raw(registry, f"{namespace}/app:1.0", credentials=creds)
    pulled = skopeo.pull(
        registry,
        f"{namespace}/app:1.0",
        tmp_path / "pulled",
        credentials=creds,
        override_arch="arm64",
    )

    assert sha256_digest(raw) == index.digest
    assert json.loads(raw)["mediaType"] == DOCKER_MANIFEST_LIST
    assert sha256_digest(pulled) == arm64.digest


def test_index_from_other_repositories_mounts_blobs(
    registry_token: RegistryServer,
    namespace: str,
) -> None:
    """Children pushed elsewhere are copied into the index's repository by mount."""
    creds = registry_token.credentials(ADMIN)
    amd64 = push_image(registry_token, f"{namespace}/src-amd64", "1", credentials=creds)
    mark = registry_token.mark()

    index = push_index(
        registry_token,
        f"{namespace}/app",
        "1",
        [(amd64, "linux/amd64")],
        fmt="oci",
        attestations=True,
        credentials=creds,
    )

    uploads = registry_token.blob_uploads(f"{namespace}/app", since=mark)
    mounts = registry_token.blob_mounts(f"{namespace}/app", since=mark)
    assert len(mounts) == 2  # the config and the one layer
    assert len(uploads) == 2  # the attestation's config and layer, which are new
    fetched = manifest_get(registry_token, f"{namespace}/app", "1", credentials=creds)
    assert (fetched.digest, fetched.media_type) == (index.digest, OCI_INDEX)
    platforms = [entry["platform"] for entry in fetched.json()["manifests"]]
    assert platforms[1] == {"architecture": "unknown", "os": "unknown"}


def test_access_log_counts_one_push(registry: RegistryServer, namespace: str) -> None:
    """The access log shows one manifest PUT and the blob uploads of a push."""
    creds = admin(registry)
    mark = registry.mark()

    push_image(registry, f"{namespace}/app", "1", layers=2, credentials=creds)
    manifest_path = rf"/v2/{namespace}/app/manifests/[^/]+"

    assert registry.count("PUT", manifest_path, status=201, since=mark) == 1
    assert len(registry.blob_uploads(f"{namespace}/app", since=mark)) == 3


def test_repeated_push_uploads_no_blob(
    registry: RegistryServer, namespace: str
) -> None:
    """A blob that HEAD finds in the repository is not uploaded again."""
    creds = admin(registry)
    push_image(registry, f"{namespace}/app", "1", credentials=creds)
    registry.clear_log()

    push_image(registry, f"{namespace}/app", "2", credentials=creds)

    assert registry.blob_uploads(f"{namespace}/app") == []
    assert registry.count("PUT", rf"/v2/{namespace}/app/manifests/2") == 1


def test_restart_keeps_content_and_port(
    start_registry: StartRegistry,
    tmp_path: Path,
) -> None:
    """A stopped and restarted registry serves the same content on the same port."""
    server = start_registry()
    image = push_image(server, "library/app", "1")
    host = server.host

    server.stop()
    assert not server.running
    server.start()

    assert server.host == host
    raw = skopeo.inspect_raw(server, "library/app:1")
    assert sha256_digest(raw) == image.digest


def test_push_over_plain_http(registry_http: RegistryServer, namespace: str) -> None:
    """A registry started without TLS takes pushes over plain HTTP."""
    image = push_image(registry_http, f"{namespace}/app", "1")

    raw = skopeo.inspect_raw(registry_http, f"{namespace}/app:1")

    assert registry_http.url.startswith("http://")
    assert sha256_digest(raw) == image.digest


def test_robot_account_pushes_with_dollar_in_name(
    registry_basic: RegistryServer,
    registry_token: RegistryServer,
    namespace: str,
) -> None:
    """A robot account's ``$`` survives Basic auth and token requests."""
    for server in (registry_basic, registry_token):
        creds = server.credentials(ROBOT)
        image = push_image(server, f"{namespace}/app", "1", credentials=creds)

        raw = skopeo.inspect_raw(server, f"{namespace}/app:1", credentials=creds)

        assert sha256_digest(raw) == image.digest


def test_robot_cannot_push_outside_its_project(
    registry_token: RegistryServer,
    unique_slug: str,
) -> None:
    """The robot's token grants nothing outside ``library/*``, so a push fails."""
    creds = registry_token.credentials(ROBOT)

    with pytest.raises(PushError, match="HTTP 401"):
        push_image(registry_token, f"other/{unique_slug}", "1", credentials=creds)


def test_admin_token_may_delete(registry_token: RegistryServer, namespace: str) -> None:
    """The admin's token carries ``delete``, which Distribution wants for DELETE."""
    creds = registry_token.credentials(ADMIN)
    image = push_image(registry_token, f"{namespace}/app", "1", credentials=creds)

    manifest_delete(registry_token, f"{namespace}/app", image.digest, credentials=creds)

    with pytest.raises(PushError, match="HTTP 404"):
        manifest_get(registry_token, f"{namespace}/app", "1", credentials=creds)


def test_bad_password_gets_200_and_empty_access(
    pki: TestPKI,
    token_service: TokenService,
) -> None:
    """Like Harbor, bad credentials get a token that grants nothing, not a 401."""
    scopes = ["repository:library/app:pull,push"]

    wrong = token_request(pki, token_service, scopes, (ADMIN, "wrong"))
    unknown = token_request(pki, token_service, scopes, ("nobody", "x"))
    anonymous = token_request(pki, token_service, scopes)

    for response in (wrong, unknown, anonymous):
        assert response.status_code == 200
        assert granted(response) == []
    assert token_service.requests[-3].authenticated is False


def test_reader_is_granted_pull_only(
    pki: TestPKI,
    token_service: TokenService,
) -> None:
    """A pull-only user asking for pull and push is granted pull."""
    scopes = ["repository:library/app:pull,push", "repository:other/x:pull"]
    credentials = (READER, token_service.credentials[READER])

    response = token_request(pki, token_service, scopes, credentials)

    assert granted(response) == [
        {"type": "repository", "name": "library/app", "actions": ["pull"]},
        {"type": "repository", "name": "other/x", "actions": ["pull"]},
    ]
    last = token_service.requests[-1]
    assert (last.username, last.scopes, last.authenticated) == (
        READER,
        tuple(scopes),
        True,
    )


def test_token_response_shape_and_expiry(
    pki: TestPKI,
    token_service: TokenService,
) -> None:
    """The response has Harbor's four fields and honours the configured lifetime."""
    before = token_service.request_count
    token_service.expires_in = 7
    try:
        response = token_request(pki, token_service, [])
    finally:
        token_service.expires_in = 1800

    body = response.json()
    _, claims = decode_token(body["token"])
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["access_token"] == body["token"]
    assert body["expires_in"] == 7
    assert claims["exp"] - claims["iat"] == 7
    assert body["issued_at"].endswith("Z")
    assert token_service.request_count == before + 1


def test_token_is_rs256_with_libtrust_kid(
    pki: TestPKI,
    token_service: TokenService,
) -> None:
    """The token verifies with the rootcertbundle key named by its libtrust kid."""
    token = token_request(pki, token_service, []).json()["token"]
    header, claims = decode_token(token)
    root = x509.load_pem_x509_certificate(token_service.root_cert_file.read_bytes())
    key = root.public_key()
    assert isinstance(key, rsa.RSAPublicKey)

    signing_input, _, signature = token.rpartition(".")
    key.verify(
        _b64url_decode(signature),
        signing_input.encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    assert header == {"typ": "JWT", "alg": "RS256", "kid": libtrust_key_id(key)}
    assert (claims["iss"], claims["aud"]) == ("harbor-token-issuer", "harbor-registry")


def test_token_from_a_late_clock_is_refused_by_the_registry(
    registry_token: RegistryServer,
    token_service: TokenService,
    namespace: str,
) -> None:
    """With the token clock far behind, the registry refuses even the admin."""
    creds = registry_token.credentials(ADMIN)
    token_service.clock_offset = -(token_service.expires_in + 120)
    try:
        with pytest.raises(PushError, match="HTTP 401"):
            push_image(registry_token, f"{namespace}/app", "1", credentials=creds)
    finally:
        token_service.clock_offset = 0

    push_image(registry_token, f"{namespace}/app", "1", credentials=creds)


def test_libtrust_key_id_is_twelve_groups_of_four(token_service: TokenService) -> None:
    """A libtrust key ID is 48 base32 characters in colon-separated groups of four."""
    groups = token_service.key_id.split(":")

    assert len(groups) == 12
    assert all(len(group) == 4 and group.isalnum() for group in groups)


def test_unrelated_ca_and_wrong_host_are_rejected(
    pki: TestPKI,
    registry_none: RegistryServer,
    start_registry: StartRegistry,
) -> None:
    """The unrelated CA does not verify the registry; the wrong-host cert fails."""
    wrong_host = start_registry(tls=pki.wrong_host)
    other = ssl.create_default_context(cafile=str(pki.other_ca.cert_file))
    right = ssl.create_default_context(cafile=str(pki.ca_file))

    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{registry_none.url}/v2/", verify=other, trust_env=False)
    with pytest.raises(httpx.ConnectError, match="mismatch"):
        httpx.get(f"{wrong_host.url}/v2/", verify=right, trust_env=False)


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
