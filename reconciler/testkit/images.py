"""Build and push small but real images and indexes over the registry API.

This is the testkit's own minimal client, independent of the reconciler's,
so that tests do not check the product with itself. It speaks anonymous,
Basic and Bearer (following ``WWW-Authenticate`` to the token realm).

Images are deterministic: the same arguments give the same digests, and a
different `seed` gives different layer bytes. A layer is a real gzip'd tar
holding a text file and some pseudo-random bytes; the config carries the
platform and ``rootfs.diff_ids``. Formats:

- ``"docker"``: Docker image manifest v2 schema 2, and Docker manifest lists;
- ``"oci"``: OCI image manifests, and OCI image indexes.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import ssl
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_LAYER",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "MANIFEST_ACCEPT",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_MANIFEST",
    "Blob",
    "BuiltImage",
    "Credentials",
    "Endpoint",
    "FetchedManifest",
    "ImageFormat",
    "Platform",
    "PushError",
    "PushedImage",
    "PushedIndex",
    "RegistryEndpoint",
    "build_image",
    "manifest_delete",
    "manifest_get",
    "manifest_put",
    "push_image",
    "push_index",
    "sha256_digest",
]

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
IN_TOTO = "application/vnd.in-toto+json"
MANIFEST_ACCEPT = ", ".join(
    [OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST]
)

ImageFormat = Literal["docker", "oci"]
Credentials = tuple[str, str]

_MEDIA_TYPES: Mapping[ImageFormat, tuple[str, str, str, str]] = {
    # format: (manifest, config, layer, index)
    "docker": (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST_LIST),
    "oci": (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, OCI_INDEX),
}
# Fixed timestamps make the same seed give the same bytes, run after run.
_CREATED = "2024-01-01T00:00:00Z"
_MTIME = 1704067200
_TIMEOUT = 30.0


class PushError(RuntimeError):
    """The registry refused a push, or answered something unexpected."""


class RegistryEndpoint(Protocol):
    """Where to push: a `RegistryServer`, an `Endpoint`, or anything alike."""

    @property
    def url(self) -> str:
        """The base URL, ``https://host:port``."""
        ...

    @property
    def ca_file(self) -> Path | None:
        """The CA to verify the registry with; None for plain HTTP."""
        ...


@dataclass(frozen=True)
class Endpoint:
    """A registry given by URL and CA file."""

    url: str
    ca_file: Path | None = None


@dataclass(frozen=True)
class Platform:
    """An image platform: ``os/architecture[/variant]``."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``linux/arm64`` or ``linux/arm/v7``."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"not a platform (os/arch[/variant]): {text!r}")
        return cls(*parts)

    def __str__(self) -> str:
        parts = [self.os, self.architecture, self.variant]
        return "/".join(part for part in parts if part)

    def to_json(self) -> dict[str, str]:
        """Return the platform as an index entry carries it."""
        value = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            value["variant"] = self.variant
        return value


@dataclass(frozen=True)
class Blob:
    """Content-addressed bytes: a config or a layer."""

    media_type: str
    data: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        """The blob's ``sha256:`` digest."""
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        """The blob's size in bytes."""
        return len(self.data)

    def descriptor(self) -> dict[str, Any]:
        """Return the descriptor that points at this blob."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class BuiltImage:
    """An image built in memory: its manifest and every blob it references."""

    media_type: str
    manifest: bytes = field(repr=False)
    config: Blob
    layers: tuple[Blob, ...]
    platform: Platform

    @property
    def digest(self) -> str:
        """The manifest's digest."""
        return sha256_digest(self.manifest)

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """The config and the layers."""
        return (self.config, *self.layers)


@dataclass(frozen=True)
class PushedImage:
    """An image as pushed: where it is, its digest, and what it is made of."""

    repository: str
    tag: str | None
    digest: str
    media_type: str
    size: int
    manifest: bytes = field(repr=False)
    config_digest: str
    layer_digests: tuple[str, ...]
    platform: Platform
    blobs: tuple[Blob, ...] = field(repr=False)

    def descriptor(self) -> dict[str, Any]:
        """Return the descriptor of the manifest (no platform)."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class PushedIndex:
    """An index or manifest list as pushed, with the images it lists."""

    repository: str
    tag: str | None
    digest: str
    media_type: str
    size: int
    manifest: bytes = field(repr=False)
    children: tuple[tuple[PushedImage, Platform], ...]
    attestations: tuple[PushedImage, ...] = ()


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest read back from a registry."""

    digest: str
    media_type: str
    data: bytes = field(repr=False)

    def json(self) -> dict[str, Any]:
        """Return the manifest parsed as JSON."""
        value = json.loads(self.data)
        if not isinstance(value, dict):
            raise ValueError("the manifest is not a JSON object")
        return value


def sha256_digest(data: bytes) -> str:
    """Return ``sha256:<hex>`` of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build_image(
    *,
    os: str = "linux",
    architecture: str = "amd64",
    variant: str | None = None,
    fmt: ImageFormat = "docker",
    seed: str = "testkit",
    layers: int = 1,
    layer_size: int = 1024,
) -> BuiltImage:
    """Build an image in memory; the same arguments give the same digests."""
    platform = Platform(os, architecture, variant)
    manifest_type, config_type, layer_type, _ = _MEDIA_TYPES[fmt]
    tars = [_layer_tar(seed, index, layer_size) for index in range(layers)]
    layer_blobs = tuple(Blob(layer_type, _gzip(tar)) for tar in tars)
    config = Blob(config_type, _config_json(platform, seed, tars))
    manifest = _manifest_json(manifest_type, config, layer_blobs)
    return BuiltImage(manifest_type, manifest, config, layer_blobs, platform)


def push_image(
    target: RegistryEndpoint,
    repository: str,
    tag: str | None,
    *,
    os: str = "linux",
    architecture: str = "amd64",
    variant: str | None = None,
    fmt: ImageFormat = "docker",
    seed: str = "testkit",
    layers: int = 1,
    credentials: Credentials | None = None,
) -> PushedImage:
    """Build an image and push its blobs and manifest to `repository:tag`.

    With `tag` None the manifest is pushed by digest only. Blobs the
    repository already holds are not uploaded again.
    """
    image = build_image(
        os=os,
        architecture=architecture,
        variant=variant,
        fmt=fmt,
        seed=seed,
        layers=layers,
    )
    with _session(target, repository, credentials) as session:
        for blob in image.blobs:
            session.blob_upload(blob)
        session.manifest_put(tag or image.digest, image.manifest, image.media_type)
    return _pushed(repository, tag, image)


def push_index(
    target: RegistryEndpoint,
    repository: str,
    tag: str | None,
    children: Sequence[tuple[PushedImage, Platform | str]],
    *,
    fmt: ImageFormat = "docker",
    attestations: bool = False,
    credentials: Credentials | None = None,
) -> PushedIndex:
    """Push an index (``oci``) or manifest list (``docker``) of `children`.

    Each child is listed with the platform given here, which may differ from
    its config on purpose. Children pushed to another repository are first
    copied into `repository` by digest (blobs mounted), because registries
    refuse an index whose children are elsewhere. With `attestations`, each
    child gets an in-toto attestation manifest listed as ``unknown/unknown``,
    the way ``docker buildx`` does it; that needs ``fmt="oci"``.
    """
    if attestations and fmt != "oci":
        raise ValueError("attestation entries need an OCI index (fmt='oci')")
    listed = [(child, _platform(platform)) for child, platform in children]
    sources = sorted({child.repository for child, _ in listed} - {repository})
    with _session(target, repository, credentials, sources) as session:
        extra = _children_push(session, listed, attestations=attestations)
        media_type = _MEDIA_TYPES[fmt][3]
        data = _index_json(media_type, listed, extra)
        session.manifest_put(tag or sha256_digest(data), data, media_type)
    return PushedIndex(
        repository=repository,
        tag=tag,
        digest=sha256_digest(data),
        media_type=media_type,
        size=len(data),
        manifest=data,
        children=tuple(listed),
        attestations=tuple(_pushed(repository, None, a) for a in extra),
    )


def _children_push(
    session: _Session,
    children: Sequence[tuple[PushedImage, Platform]],
    *,
    attestations: bool,
) -> list[BuiltImage]:
    """Put every child, and its attestation if asked, in the session's repository."""
    for child, _ in children:
        session.image_copy(child)
    extra = [_attestation(child) for child, _ in children] if attestations else []
    for attestation in extra:
        session.image_push(attestation)
    return extra


def manifest_get(
    target: RegistryEndpoint,
    repository: str,
    reference: str,
    *,
    credentials: Credentials | None = None,
) -> FetchedManifest:
    """GET a manifest by tag or digest, accepting all four media types."""
    with _session(target, repository, credentials, pull_only=True) as session:
        return session.manifest_get(reference)


def manifest_put(
    target: RegistryEndpoint,
    repository: str,
    reference: str,
    data: bytes,
    media_type: str,
    *,
    credentials: Credentials | None = None,
) -> str:
    """PUT manifest bytes as they are (for example, to move a tag by hand)."""
    with _session(target, repository, credentials) as session:
        return session.manifest_put(reference, data, media_type)


def manifest_delete(
    target: RegistryEndpoint,
    repository: str,
    digest: str,
    *,
    credentials: Credentials | None = None,
) -> None:
    """DELETE a manifest by digest; every tag pointing at it goes with it."""
    with _session(target, repository, credentials) as session:
        session.manifest_delete(digest)


def _pushed(repository: str, tag: str | None, image: BuiltImage) -> PushedImage:
    return PushedImage(
        repository=repository,
        tag=tag,
        digest=image.digest,
        media_type=image.media_type,
        size=len(image.manifest),
        manifest=image.manifest,
        config_digest=image.config.digest,
        layer_digests=tuple(layer.digest for layer in image.layers),
        platform=image.platform,
        blobs=image.blobs,
    )


def _platform(value: Platform | str) -> Platform:
    return value if isinstance(value, Platform) else Platform.parse(value)


# Building -----------------------------------------------------------------


def _layer_tar(seed: str, index: int, size: int) -> bytes:
    """Return an uncompressed tar; its bytes depend only on the arguments."""
    noise = hashlib.shake_256(f"{seed}/{index}".encode()).digest(size)
    files = {
        f"testkit/layer-{index}.txt": f"seed={seed} layer={index}\n".encode(),
        f"testkit/layer-{index}.bin": noise,
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(_tar_entry("testkit/", 0, tarfile.DIRTYPE, 0o755))
        for name, data in files.items():
            entry = _tar_entry(name, len(data), tarfile.REGTYPE, 0o644)
            tar.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


def _tar_entry(name: str, size: int, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode, info.mtime = size, kind, mode, _MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def _config_json(platform: Platform, seed: str, tars: Sequence[bytes]) -> bytes:
    config: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": _CREATED,
        "config": {"Labels": {"org.example.testkit.seed": seed}},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(t) for t in tars]},
        "history": [{"created": _CREATED, "created_by": "testkit"} for _ in tars],
    }
    if platform.variant:
        config["variant"] = platform.variant
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def _manifest_json(media_type: str, config: Blob, layers: Sequence[Blob]) -> bytes:
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    # Three-space indentation, as the Docker CLI writes manifests.
    return json.dumps(manifest, indent=3).encode()


def _index_json(
    media_type: str,
    children: Sequence[tuple[PushedImage, Platform]],
    attestations: Sequence[BuiltImage],
) -> bytes:
    entries = [{**child.descriptor(), "platform": p.to_json()} for child, p in children]
    for (child, _), attestation in zip(children, attestations, strict=False):
        entries.append(_attestation_entry(attestation, child.digest))
    index = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    return json.dumps(index, indent=3).encode()


def _attestation(child: PushedImage) -> BuiltImage:
    """Build a buildx-like attestation manifest for `child`."""
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{"name": "testkit", "digest": {"sha256": child.digest[7:]}}],
        "predicate": {},
    }
    layer = Blob(IN_TOTO, json.dumps(statement, sort_keys=True).encode())
    platform = Platform("unknown", "unknown")
    config = Blob(OCI_CONFIG, _attestation_config(layer))
    manifest = _manifest_json(OCI_MANIFEST, config, [layer])
    return BuiltImage(OCI_MANIFEST, manifest, config, (layer,), platform)


def _attestation_config(layer: Blob) -> bytes:
    config = {
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    }
    return json.dumps(config, sort_keys=True).encode()


def _attestation_entry(attestation: BuiltImage, child_digest: str) -> dict[str, Any]:
    return {
        "mediaType": attestation.media_type,
        "digest": attestation.digest,
        "size": len(attestation.manifest),
        "platform": attestation.platform.to_json(),
        "annotations": {
            "vnd.docker.reference.digest": child_digest,
            "vnd.docker.reference.type": "attestation-manifest",
        },
    }


# Talking to the registry --------------------------------------------------


@contextmanager
def _session(
    target: RegistryEndpoint,
    repository: str,
    credentials: Credentials | None,
    sources: Sequence[str] = (),
    *,
    pull_only: bool = False,
) -> Iterator[_Session]:
    actions = "pull" if pull_only else "pull,push"
    scopes = [f"repository:{repository}:{actions}"]
    scopes += [f"repository:{source}:pull" for source in sources]
    verify: ssl.SSLContext | bool = False
    if target.ca_file is not None:
        # Never the environment's CA bundle (SSL_CERT_FILE and friends).
        verify = ssl.create_default_context(cafile=str(target.ca_file))
    client = httpx.Client(
        base_url=target.url,
        verify=verify,
        trust_env=False,
        timeout=_TIMEOUT,
    )
    with client:
        yield _Session(client, repository, credentials, scopes)


class _Session:
    """One repository on one registry, with the authorization it earned.

    A request answered 401 is retried once with the authorization the
    ``WWW-Authenticate`` challenge asks for: Basic credentials, or a Bearer
    token fetched from the realm for every scope this session needs.
    """

    def __init__(
        self,
        client: httpx.Client,
        repository: str,
        credentials: Credentials | None,
        scopes: Sequence[str],
    ) -> None:
        self._client = client
        self._repository = repository
        self._credentials = credentials
        self._scopes = list(scopes)
        self._authorization: str | None = None

    def image_push(self, image: BuiltImage) -> None:
        """Upload the blobs an image needs, then its manifest by digest."""
        for blob in image.blobs:
            self.blob_upload(blob)
        self.manifest_put(image.digest, image.manifest, image.media_type)

    def image_copy(self, image: PushedImage) -> None:
        """Copy an image into this repository by digest, mounting its blobs."""
        if image.repository == self._repository:
            return
        for blob in image.blobs:
            self.blob_mount(blob, image.repository)
        self.manifest_put(image.digest, image.manifest, image.media_type)

    def blob_exists(self, digest: str) -> bool:
        """HEAD a blob: whether the repository holds it."""
        response = self._request("HEAD", f"{self._base}/blobs/{digest}")
        return response.status_code == 200

    def blob_upload(self, blob: Blob) -> None:
        """Upload a blob with POST then PUT, unless the repository holds it."""
        if self.blob_exists(blob.digest):
            return
        response = self._request("POST", f"{self._base}/blobs/uploads/")
        self._expect(response, 202, f"start upload of {blob.digest}")
        self._upload_finish(response, blob)

    def blob_mount(self, blob: Blob, source: str) -> None:
        """Mount a blob from `source`, uploading it when the mount is refused."""
        if self.blob_exists(blob.digest):
            return
        query = f"mount={blob.digest}&from={source}"
        response = self._request("POST", f"{self._base}/blobs/uploads/?{query}")
        if response.status_code == 201:
            return
        self._expect(response, 202, f"mount {blob.digest} from {source}")
        self._upload_finish(response, blob)

    def manifest_put(self, reference: str, data: bytes, media_type: str) -> str:
        """PUT manifest bytes; return the digest the registry reports."""
        response = self._request(
            "PUT",
            f"{self._base}/manifests/{reference}",
            headers={"Content-Type": media_type},
            content=data,
        )
        self._expect(response, 201, f"put manifest {reference}")
        expected = sha256_digest(data)
        digest = str(response.headers.get("Docker-Content-Digest", expected))
        if digest != expected:
            raise PushError(f"registry reports digest {digest} for {reference}")
        return digest

    def manifest_get(self, reference: str) -> FetchedManifest:
        """GET a manifest and check its bytes against their digest."""
        response = self._request(
            "GET",
            f"{self._base}/manifests/{reference}",
            headers={"Accept": MANIFEST_ACCEPT},
        )
        self._expect(response, 200, f"get manifest {reference}")
        media_type = response.headers.get("Content-Type", "").partition(";")[0]
        return FetchedManifest(
            sha256_digest(response.content), media_type, response.content
        )

    def manifest_delete(self, digest: str) -> None:
        """DELETE a manifest by digest."""
        response = self._request("DELETE", f"{self._base}/manifests/{digest}")
        self._expect(response, 202, f"delete manifest {digest}")

    @property
    def _base(self) -> str:
        return f"/v2/{self._repository}"

    def _upload_finish(self, started: httpx.Response, blob: Blob) -> None:
        # The Location carries the upload state in its query: append the
        # digest to it, since httpx's params= would replace that query.
        location = started.headers["Location"]
        separator = "&" if "?" in location else "?"
        response = self._request(
            "PUT",
            f"{location}{separator}digest={blob.digest}",
            headers={"Content-Type": "application/octet-stream"},
            content=blob.data,
        )
        self._expect(response, 201, f"upload {blob.digest}")

    def _request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        response = self._send(method, url, headers, content)
        if response.status_code != 401:
            return response
        challenge = response.headers.get("WWW-Authenticate", "")
        self._authorization = self._authorize(challenge)
        return self._send(method, url, headers, content)

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        content: bytes | None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if self._authorization is not None:
            all_headers["Authorization"] = self._authorization
        return self._client.request(method, url, headers=all_headers, content=content)

    def _authorize(self, challenge: str) -> str:
        scheme, _, _ = challenge.partition(" ")
        if scheme.lower() == "basic":
            return _basic_header(self._require_credentials())
        if scheme.lower() == "bearer":
            return "Bearer " + self._token(_challenge_params(challenge))
        raise PushError(f"unsupported authentication challenge: {challenge!r}")

    def _token(self, params: Mapping[str, str]) -> str:
        scopes = [*self._scopes, *params.get("scope", "").split()]
        pairs = [("service", params.get("service", ""))]
        pairs += [("scope", scope) for scope in dict.fromkeys(scopes)]
        query = httpx.QueryParams(tuple(pairs))
        headers = {}
        if self._credentials is not None:
            headers["Authorization"] = _basic_header(self._credentials)
        response = self._client.get(params["realm"], params=query, headers=headers)
        self._expect(response, 200, "get a token")
        body = response.json()
        return str(body.get("token") or body["access_token"])

    def _require_credentials(self) -> Credentials:
        if self._credentials is None:
            raise PushError(f"the registry wants credentials for {self._repository}")
        return self._credentials

    def _expect(self, response: httpx.Response, status: int, action: str) -> None:
        if response.status_code == status:
            return
        body = response.text[:500]
        message = (
            f"failed to {action} in {self._repository}: "
            f"HTTP {response.status_code} {response.request.method} "
            f"{response.request.url.path}: {body}"
        )
        raise PushError(message)


_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def _challenge_params(challenge: str) -> dict[str, str]:
    return dict(_CHALLENGE_PARAM.findall(challenge))


def _basic_header(credentials: Credentials) -> str:
    username, password = credentials
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return f"Basic {token}"
