"""A fleet of per-architecture images, its desired state, and a fast seeder.

Image `i` of a fleet is the target repository ``<ns>/app-<i>``, made from
the sources ``<ns>/app-<i>-amd64`` and ``-arm64``, at `versions` versions.
Fleets are nested: the first 100 images of a 400-image fleet are the
100-image fleet, so one seeded registry serves every scale.

Seeding pushes one layer once and mounts it into every source repository;
each source image gets its own config (so every manifest, and every
digest, differs, as in a real fleet), and repositories are pushed in
parallel.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench._stack import Stack
from reconciler.testkit.images import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    Blob,
    RegistryEndpoint,
    build_image,
)

ARCHES = ("amd64", "arm64")
BASE_REPOSITORY = "base"
_IMAGES_PER_FILE = 100


@dataclass(frozen=True)
class Fleet:
    """`images` images, each with `versions` versions for both `ARCHES`."""

    images: int
    versions: int = 4
    namespace: str = "bench"

    def targets(self) -> list[str]:
        """The target repositories, without a registry host."""
        return [f"{self.namespace}/app-{i:04d}" for i in range(self.images)]

    def version_tags(self) -> list[str]:
        """The version tags every image has."""
        return [f"1.{v}.0" for v in range(self.versions)]

    def sources(self) -> list[str]:
        """The source repositories, one per target and architecture."""
        return [f"{t}-{arch}" for t in self.targets() for arch in ARCHES]

    def repositories(self) -> list[str]:
        """Every repository a plan of the fleet reads."""
        return [*self.targets(), *self.sources()]

    def references(self) -> list[tuple[str, str]]:
        """Every (repository, tag) a plan of the fleet reads, once each."""
        tags = self.version_tags()
        refs = [(target, tag) for target in self.targets() for tag in tags]
        refs += [
            (target, f"{tag}-{arch}")
            for target in self.targets()
            for tag in tags
            for arch in ARCHES
        ]
        refs += [(source, tag) for source in self.sources() for tag in tags]
        return refs


def write_desired(folder: Path, fleet: Fleet, host: str, ca_file: Path) -> Path:
    """Write the fleet's desired state under `folder`; return its `desired/`."""
    desired = folder / "desired"
    desired.mkdir(parents=True, exist_ok=True)
    (folder / "ca.crt").write_bytes(ca_file.read_bytes())
    targets = fleet.targets()
    for start in range(0, len(targets), _IMAGES_PER_FILE):
        chunk = targets[start : start + _IMAGES_PER_FILE]
        registries = _registries_yaml(host) if start == 0 else ""
        text = f"version: 1\n{registries}images:\n"
        text += "".join(_image_yaml(host, t, fleet.version_tags()) for t in chunk)
        (desired / f"fleet-{start // _IMAGES_PER_FILE:03d}.yaml").write_text(text)
    return desired


def _registries_yaml(host: str) -> str:
    return (
        f"registries:\n  {host}:\n    ca_file: ../ca.crt\n    credentials:\n"
        "      username_env: HARBOR_USERNAME\n      password_env: HARBOR_PASSWORD\n"
    )


def _image_yaml(host: str, target: str, versions: Sequence[str]) -> str:
    quoted = ", ".join(f'"{v}"' for v in versions)
    return (
        f"  - repository: {host}/{target}\n"
        f"    versions: [{quoted}]\n"
        f"    source: {host}/{target}-{{arch}}:{{version}}\n"
    )


class Pusher:
    """A minimal, thread-safe pusher with one connection pool.

    `tokens` maps a repository to the bearer token to use for it; without
    it requests are anonymous (a registry without authentication).
    """

    def __init__(self, endpoint: RegistryEndpoint, connections: int) -> None:
        verify: ssl.SSLContext | bool = False
        if endpoint.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(endpoint.ca_file))
        self._client = httpx.Client(
            base_url=endpoint.url,
            verify=verify,
            trust_env=False,
            timeout=60.0,
            limits=httpx.Limits(max_connections=connections),
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def upload(self, repository: str, blob: Blob, token: str | None) -> None:
        """Upload a blob with POST and PUT."""
        started = self._send("POST", f"/v2/{repository}/blobs/uploads/", token)
        location = started.headers["Location"]
        separator = "&" if "?" in location else "?"
        url = f"{location}{separator}digest={blob.digest}"
        self._send("PUT", url, token, content=blob.data)

    def mount(
        self, repository: str, blob: Blob, source: str, token: str | None
    ) -> None:
        """Mount a blob from `source`; the registry must not answer 202."""
        query = f"mount={blob.digest}&from={source}"
        reply = self._send("POST", f"/v2/{repository}/blobs/uploads/?{query}", token)
        if reply.status_code != 201:
            raise RuntimeError(f"mount into {repository} answered {reply.status_code}")

    def manifest(
        self, repository: str, tag: str, data: bytes, token: str | None
    ) -> None:
        """PUT a Docker v2 manifest under `tag`."""
        self._send(
            "PUT",
            f"/v2/{repository}/manifests/{tag}",
            token,
            content=data,
            headers={"Content-Type": DOCKER_MANIFEST},
        )

    def _send(
        self,
        method: str,
        url: str,
        token: str | None,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        reply = self._client.request(method, url, content=content, headers=all_headers)
        if reply.status_code >= 300:
            raise RuntimeError(f"{method} {url}: {reply.status_code} {reply.text}")
        return reply


@dataclass(frozen=True)
class _Layer:
    blob: Blob
    diff_id: str


def _layer() -> _Layer:
    """The one small layer every source image shares."""
    image = build_image(seed="bench-shared-layer")
    diff_id = json.loads(image.config.data)["rootfs"]["diff_ids"][0]
    return _Layer(image.layers[0], str(diff_id))


def _source_image(layer: _Layer, repository: str, tag: str, arch: str) -> bytes:
    """A manifest with a config of its own, naming its repository and tag."""
    config = _config(layer, repository, tag, arch)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.blob.descriptor()],
    }
    return json.dumps(manifest, indent=3).encode()


def _config(layer: _Layer, repository: str, tag: str, arch: str) -> Blob:
    document = {
        "architecture": arch,
        "os": "linux",
        "config": {"Labels": {"org.example.bench": f"{repository}:{tag}"}},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
    }
    return Blob(DOCKER_CONFIG, json.dumps(document, sort_keys=True).encode())


class Seeder:
    """Pushes the source images of fleets, many repositories at once."""

    def __init__(
        self, endpoint: RegistryEndpoint, stack: Stack | None, workers: int = 16
    ) -> None:
        self._endpoint = endpoint
        self._stack = stack
        self._workers = workers
        self._layer = _layer()

    @property
    def layer(self) -> Blob:
        """The layer every source image shares."""
        return self._layer.blob

    def seed(self, fleet: Fleet) -> int:
        """Push every source image of `fleet`; return how many."""
        sources = fleet.sources()
        base = f"{fleet.namespace}/{BASE_REPOSITORY}"
        pusher = Pusher(self._endpoint, self._workers)
        try:
            pusher.upload(base, self._layer.blob, self._token([base]))
            with ThreadPoolExecutor(self._workers) as pool:
                done = pool.map(
                    lambda s: self._seed_one(pusher, s, base, fleet), sources
                )
                return sum(done)
        finally:
            pusher.close()

    def _seed_one(self, pusher: Pusher, source: str, base: str, fleet: Fleet) -> int:
        token = self._token([source, base])
        arch = source.rsplit("-", 1)[1]
        pusher.mount(source, self._layer.blob, base, token)
        for tag in fleet.version_tags():
            manifest = _source_image(self._layer, source, tag, arch)
            config = _config(self._layer, source, tag, arch)
            pusher.upload(source, config, token)
            pusher.manifest(source, tag, manifest, token)
        return fleet.versions

    def _token(self, repositories: Sequence[str]) -> str | None:
        if self._stack is None:
            return None
        return self._stack.mint([f"repository:{r}:pull,push" for r in repositories])


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    """`items` in consecutive slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
