"""Chaos: apply a fleet through a fault proxy until it converges, checking invariants.

Run it with::

    python -m reconciler.testkit.chaos --seed 7 --fault-rate 0.1 \\
        [--images 20 --versions 3 --max-runs 15 --fatal-share 0.05 --backoff]

It starts a TLS registry with Harbor-like token authentication and a
`FaultProxy` in front of it, seeds a `Fleet` of per-architecture images,
writes one desired-state folder that names the proxy as the registry, and
runs ``reconciler apply --auto-approve`` through the proxy, with faults on
a fraction of every kind of request (the token service is not proxied),
until a run exits 0 or `max_runs` runs have failed. Before the first run,
``plan --json`` records the planned digest of every address. After every
run, and at the end, a `Checker` reads the registry directly, not through
the proxy, and checks:

1. every tag holding an index lists children that exist in its repository,
   each with the platform its image config declares;
2. every tag points at the digest it had before the first run, or at the
   digest planned for it; at nothing else;
3. nothing was written twice: in the registry's access log, no run
   ``PUT`` a tag that already held its planned digest when the run
   started (a later run never rewrites what an earlier one completed),
   and within a run a tag is ``PUT`` once, plus once per answer to a ``PUT``
   of it that the proxy cut off (the registry stored that one, but the
   client could not know);
4. no run crashed with a traceback;
5. at the end the registry is the desired state: ``plan
   --detailed-exitcode`` exits 0, and every address holds its planned
   digest.

Of the faults, a `fatal_share` are kinds the product does not retry (500 on
a write, bytes altered on the way): they fail the run, and the next run must
pick up. The rest (429, 502, 503, 504, resets, truncated and stalled
answers) are retried within the run. By default backoff waits are turned
off (stamina's testing mode, attempts kept) so that a run takes seconds;
``--backoff`` keeps the real waits, ``Retry-After`` included.

The proxy's generator is seeded, but which request meets which fault also
depends on how concurrent requests interleave: a seed reproduces the mix
and the rate of faults, not each fault.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import json
import re
import ssl
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import stamina
from click.testing import CliRunner

from reconciler.cli import main as cli_main
from reconciler.oci import Digest, Platform, Reference
from reconciler.testkit.accounts import ADMIN, ROBOT, TOKEN_USERS
from reconciler.testkit.faults import Fault, FaultEvent, FaultProxy, FaultRule
from reconciler.testkit.images import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    Blob,
    build_image,
    sha256_digest,
)
from reconciler.testkit.pki import create_pki
from reconciler.testkit.registry import RegistryServer
from reconciler.testkit.tokens import TokenService

__all__ = [
    "FATAL",
    "RETRIED",
    "Address",
    "ChaosReport",
    "ChaosRig",
    "Checker",
    "CliResult",
    "Fleet",
    "Found",
    "RunRecord",
    "digest_of",
    "fault_rules",
    "planned_digests",
    "prepare_rig",
    "run_chaos",
    "run_cli",
    "seed_fleet",
]

# Faults the product retries within a run, and those that fail a change
# (a 500 on a write; bytes altered on the way) for the next run to redo.
RETRIED = (
    Fault.TOO_MANY_REQUESTS,
    Fault.BAD_GATEWAY,
    Fault.SERVICE_UNAVAILABLE,
    Fault.GATEWAY_TIMEOUT,
    Fault.RESET,
    Fault.RESET_MID_BODY,
    Fault.TRUNCATE,
    Fault.STALL,
)
FATAL = (Fault.INTERNAL_SERVER_ERROR, Fault.CORRUPT)
# Faults that forward the request, then cut the answer off.
_CUT = frozenset({Fault.RESET_MID_BODY, Fault.TRUNCATE})
# stamina's attempts when backoff is off: the product's default policy's.
ATTEMPTS = 8
_STALL = 0.2
_WORKERS = 16
_ACCEPT = {"Accept": MANIFEST_ACCEPT}
_INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_PUT_MANIFEST = re.compile(r"/v2/(?P<repository>.+)/manifests/(?P<tag>[^/]+)")


class Address(NamedTuple):
    """A tag in a repository, without the registry host (which differs by route)."""

    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}"

    @classmethod
    def of(cls, reference: str) -> Address:
        """The address of a full reference such as ``host/lib/app:1.0``."""
        ref = Reference.parse(reference)
        assert ref.tag is not None, f"{reference} names no tag"
        return cls(ref.repository.path, ref.tag)


@dataclass(frozen=True)
class Fleet:
    """`images` images, each at `versions` versions on `arches`, with an alias.

    Image `i` is the target repository ``<namespace>/app-<i>``, made from the
    sources ``<namespace>/app-<i>-<arch>``; its alias ``latest`` follows the
    newest version.
    """

    images: int = 20
    versions: int = 3
    namespace: str = "library/chaos"
    arches: tuple[str, ...] = ("amd64", "arm64")

    def targets(self) -> list[str]:
        """The target repositories, without a registry host."""
        return [f"{self.namespace}/app-{i:02d}" for i in range(self.images)]

    def version_tags(self) -> list[str]:
        """The versions, newest first."""
        return [f"1.{v}.0" for v in reversed(range(self.versions))]

    @property
    def base(self) -> str:
        """The repository the shared layer is first uploaded to."""
        return f"{self.namespace}/base"

    def source(self, target: str, arch: str) -> str:
        """The source repository of `target` for `arch`."""
        return f"{target}-{arch}"

    def repositories(self) -> list[str]:
        """Every repository of the fleet: base, targets and sources."""
        sources = [self.source(t, a) for t in self.targets() for a in self.arches]
        return [self.base, *self.targets(), *sources]

    def addresses(self) -> list[Address]:
        """Every tag the desired state names: targets' and sources'."""
        found: list[Address] = []
        for target in self.targets():
            found.append(Address(target, "latest"))
            for version in self.version_tags():
                found.append(Address(target, version))
                for arch in self.arches:
                    found.append(Address(target, f"{version}-{arch}"))
                    found.append(Address(self.source(target, arch), version))
        return found

    def write_desired(self, workdir: Path, host: str, ca_file: Path) -> Path:
        """Write ``desired/fleet.yaml`` for registry `host`; return the folder."""
        folder = workdir / "desired"
        folder.mkdir(parents=True, exist_ok=True)
        (workdir / "ca.crt").write_bytes(ca_file.read_bytes())
        (folder / "fleet.yaml").write_text(self._yaml(host))
        return folder

    def _yaml(self, host: str) -> str:
        versions = ", ".join(f'"{v}"' for v in self.version_tags())
        platforms = ", ".join(f"linux/{arch}" for arch in self.arches)
        head = (
            f"version: 1\nregistries:\n  {host}:\n    ca_file: ../ca.crt\n"
            "    credentials:\n      username_env: HARBOR_USERNAME\n"
            "      password_env: HARBOR_PASSWORD\n"
            f"defaults:\n  platforms: [{platforms}]\n"
            '  platform_tag: "{version}-{arch}"\nimages:\n'
        )
        images = "".join(
            f"  - repository: {host}/{target}\n"
            f"    versions: [{versions}]\n"
            f"    source: {host}/{target}-{{arch}}:{{version}}\n"
            f'    aliases:\n      latest: "{self.version_tags()[0]}"\n'
            for target in self.targets()
        )
        return head + images


def seed_fleet(
    server: RegistryServer,
    fleet: Fleet,
    credentials: tuple[str, str] | None,
    *,
    workers: int = 8,
) -> None:
    """Push every source, concurrently, then some state the plan must fix or keep.

    One layer is uploaded once and mounted everywhere; each source has a
    config of its own, so every manifest and digest differs. Then:

    - image 0 has its platform tags already right: planned as no change,
      they must never be written;
    - image 1 has its oldest version, and ``latest``, on a stale index that
      lists one platform only: planned as updates.
    """
    with _Registry(server, fleet.repositories(), credentials) as registry:
        layer = registry.base_layer(fleet.base)
        sources = [(t, a) for t in fleet.targets() for a in fleet.arches]
        images: dict[tuple[str, str, str], _Image] = {}
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for made in pool.map(
                lambda source: _push_sources(registry, fleet, layer, *source), sources
            ):
                images.update(made)
        _seed_drift(registry, fleet, images)


def _push_sources(
    registry: _Registry, fleet: Fleet, layer: Blob, target: str, arch: str
) -> dict[tuple[str, str, str], _Image]:
    """Every version of one source repository, pushed in turn.

    One repository per worker: Distribution's filesystem storage races on
    concurrent links of one blob into one repository.
    """
    repository = fleet.source(target, arch)
    registry.mount(repository, layer, fleet.base)
    made = {}
    for version in fleet.version_tags():
        image = _Image.build(layer, arch, f"{target}:{version}:{arch}")
        registry.upload(repository, image.config)
        registry.manifest_put(repository, version, image.manifest, DOCKER_MANIFEST)
        made[(target, version, arch)] = image
    return made


def _seed_drift(
    registry: _Registry, fleet: Fleet, images: Mapping[tuple[str, str, str], _Image]
) -> None:
    targets = fleet.targets()
    if len(targets) < 2:
        return
    settled, stale = targets[0], targets[1]
    for version in fleet.version_tags():
        for arch in fleet.arches:
            image = images[(settled, version, arch)]
            registry.image(settled, f"{version}-{arch}", image, fleet.base)
    oldest, arch = fleet.version_tags()[-1], fleet.arches[0]
    child = images[(stale, oldest, arch)]
    registry.image(stale, child.digest, child, fleet.base)
    index = _manifest_list([(child, arch)])
    for tag in (oldest, "latest"):
        registry.manifest_put(stale, tag, index, DOCKER_MANIFEST_LIST)


@dataclass(frozen=True)
class _Image:
    """A Docker v2 image built in memory: the shared layer and its own config."""

    layer: Blob
    config: Blob
    manifest: bytes = field(repr=False)

    @classmethod
    def build(cls, layer: Blob, arch: str, seed: str) -> _Image:
        """An image for linux/`arch`; `seed` makes its config and digest unique."""
        diff_id = sha256_digest(gzip.decompress(layer.data))
        config = {
            "architecture": arch,
            "os": "linux",
            "config": {"Labels": {"org.example.chaos.seed": seed}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
        blob = Blob(DOCKER_CONFIG, json.dumps(config, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": blob.descriptor(),
            "layers": [layer.descriptor()],
        }
        return cls(layer, blob, json.dumps(manifest, indent=3).encode())

    @property
    def digest(self) -> str:
        """The manifest's digest."""
        return sha256_digest(self.manifest)


def _manifest_list(children: Sequence[tuple[_Image, str]]) -> bytes:
    entries = [
        {
            "mediaType": DOCKER_MANIFEST,
            "digest": child.digest,
            "size": len(child.manifest),
            "platform": {"architecture": arch, "os": "linux"},
        }
        for child, arch in children
    ]
    document = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST}
    return json.dumps({**document, "manifests": entries}, indent=3).encode()


class Found(NamedTuple):
    """What a HEAD of a tag found: the manifest's digest and media type."""

    digest: Digest
    media_type: str


class _Registry:
    """A small client of one registry, independent of the reconciler's.

    One pool of connections and one token for every repository it was made
    for: the fleet the product meets, and the reading back of what it did,
    are not the product's own work.
    """

    def __init__(
        self,
        server: RegistryServer,
        repositories: Sequence[str],
        credentials: tuple[str, str] | None,
    ) -> None:
        verify: ssl.SSLContext | bool = False
        if server.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(server.ca_file))
        self._http = httpx.Client(
            base_url=server.url,
            verify=verify,
            trust_env=False,
            timeout=30.0,
            limits=httpx.Limits(max_connections=_WORKERS),
        )
        self._repositories = list(repositories)
        self._credentials = credentials
        self._headers = self._authorization()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> _Registry:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------

    def head(self, repository: str, tag: str) -> Found | None:
        """The manifest `repository:tag` points at, or None."""
        url = f"/v2/{repository}/manifests/{tag}"
        response = self._send("HEAD", url, (200, 404), headers=_ACCEPT)
        if response.status_code == 404:
            return None
        media_type = response.headers.get("Content-Type", "").split(";")[0]
        return Found(Digest(response.headers["Docker-Content-Digest"]), media_type)

    def manifest(self, repository: str, digest: Digest) -> dict[str, Any] | None:
        """The manifest `repository@digest` as JSON, checked; None when absent."""
        url = f"/v2/{repository}/manifests/{digest}"
        response = self._send("GET", url, (200, 404), headers=_ACCEPT)
        if response.status_code == 404:
            return None
        return _verified_json(digest, response.content)

    def blob(self, repository: str, digest: Digest) -> dict[str, Any] | None:
        """A JSON blob (a config), checked; None when absent."""
        url = f"/v2/{repository}/blobs/{digest}"
        response = self._send("GET", url, (200, 404), follow_redirects=True)
        if response.status_code == 404:
            return None
        return _verified_json(digest, response.content)

    # -- writing -------------------------------------------------------------

    def base_layer(self, repository: str) -> Blob:
        """Upload the layer every image shares; return it."""
        layer = build_image(seed="chaos-base").layers[0]
        self.upload(repository, layer)
        return layer

    def image(self, repository: str, tag: str, image: _Image, base: str) -> None:
        """Mount the layer from `base`, upload the config, and put the manifest."""
        self.mount(repository, image.layer, base)
        self.upload(repository, image.config)
        self.manifest_put(repository, tag, image.manifest, DOCKER_MANIFEST)

    def upload(self, repository: str, blob: Blob) -> None:
        """Upload a blob: POST for a session, PUT with the bytes."""
        started = self._send("POST", f"/v2/{repository}/blobs/uploads/", (202,))
        location = started.headers["Location"]
        separator = "&" if "?" in location else "?"
        url = f"{location}{separator}digest={blob.digest}"
        self._send("PUT", url, (201,), content=blob.data)

    def mount(self, repository: str, blob: Blob, source: str) -> None:
        """Mount a blob from `source`; the registry must not answer 202."""
        query = f"mount={blob.digest}&from={source}"
        self._send("POST", f"/v2/{repository}/blobs/uploads/?{query}", (201,))

    def manifest_put(
        self, repository: str, tag: str, data: bytes, media_type: str
    ) -> None:
        """PUT manifest bytes under `tag` (or a digest)."""
        headers = {"Content-Type": media_type}
        url = f"/v2/{repository}/manifests/{tag}"
        self._send("PUT", url, (201,), content=data, headers=headers)

    # -- plumbing ------------------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        expected: tuple[int, ...],
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        for renewed in (False, True):
            response = self._http.request(
                method,
                url,
                content=content,
                headers={**self._headers, **(headers or {})},
                follow_redirects=follow_redirects,
            )
            if response.status_code != 401 or renewed:
                break
            self._headers = self._authorization()  # the token expired
        if response.status_code not in expected:
            raise RuntimeError(
                f"{method} {url.split('?')[0]} answered "
                f"{response.status_code}: {response.text[:300]}"
            )
        return response

    def _authorization(self) -> dict[str, str]:
        """The header for every request: Basic, or one Bearer token for all."""
        challenge = self._http.get("/v2/").headers.get("WWW-Authenticate", "")
        scheme, _, rest = challenge.partition(" ")
        if not challenge or self._credentials is None:
            return {}
        if scheme.lower() == "basic":
            pair = base64.b64encode(":".join(self._credentials).encode()).decode()
            return {"Authorization": f"Basic {pair}"}
        params = dict(_CHALLENGE_PARAM.findall(rest))
        query = [("service", params.get("service", ""))]
        query += [("scope", f"repository:{r}:pull,push") for r in self._repositories]
        reply = self._http.get(params["realm"], params=query, auth=self._credentials)
        reply.raise_for_status()
        return {"Authorization": f"Bearer {reply.json()['token']}"}


def _verified_json(digest: Digest, data: bytes) -> dict[str, Any]:
    if not digest.verifies(data):
        raise RuntimeError(f"the registry served other bytes for {digest}")
    document = json.loads(data)
    if not isinstance(document, dict):
        raise RuntimeError(f"{digest} is not a JSON object")
    return document


@dataclass(frozen=True)
class CliResult:
    """How one run of the command line ended."""

    exit_code: int
    stdout: str
    stderr: str
    crash: str | None
    """The traceback of an exception the command line let escape, if any."""


def run_cli(args: Sequence[str], env: Mapping[str, str]) -> CliResult:
    """Run ``reconciler ARGS`` in this process, with `env` added to the environment."""
    result = CliRunner().invoke(cli_main, list(args), env=dict(env))
    crash = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        crash = "".join(traceback.format_exception(result.exception))
    elif "Traceback" in result.stderr:
        crash = result.stderr
    return CliResult(result.exit_code, result.stdout, result.stderr, crash)


class Checker:
    """Reads the registry directly (never through the proxy) and checks invariants."""

    def __init__(
        self,
        server: RegistryServer,
        fleet: Fleet,
        credentials: tuple[str, str] | None,
    ) -> None:
        self._registry = _Registry(server, fleet.repositories(), credentials)
        self._server = server
        self._fleet = fleet
        self._indexes: dict[tuple[str, Digest], list[Any] | None] = {}
        self._platforms: dict[tuple[str, Digest], Platform] = {}

    def close(self) -> None:
        """Close the connections."""
        self._registry.close()

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def snapshot(self) -> dict[Address, Found | None]:
        """What every address of the fleet holds now."""
        addresses = self._fleet.addresses()
        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            found = list(pool.map(lambda a: self._registry.head(*a), addresses))
        return dict(zip(addresses, found, strict=True))

    def misplaced(
        self,
        now: Mapping[Address, Found | None],
        allowed: Mapping[Address, frozenset[Digest | None]],
    ) -> list[str]:
        """Tags at a digest that is neither their old one nor their planned one."""
        return [
            f"{address} is at {_shown(digest_of(found))}, expected one of "
            f"{', '.join(sorted(_shown(d) for d in allowed[address]))}"
            for address, found in sorted(now.items())
            if digest_of(found) not in allowed[address]
        ]

    def broken_indexes(self, now: Mapping[Address, Found | None]) -> list[str]:
        """Indexes whose children are missing, or not of the platform listed."""
        indexes = sorted(
            {
                (address.repository, found.digest)
                for address, found in now.items()
                if found is not None and found.media_type in _INDEX_TYPES
            }
        )
        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            found = list(pool.map(lambda index: self._index_problems(*index), indexes))
        return [problem for problems in found for problem in problems]

    def rewrites(
        self, since: int, settled: set[Address], cut: Counter[Address]
    ) -> list[str]:
        """Manifest PUTs since log position `since` that no plan or fault explains.

        A run may PUT each tag not yet `settled` once, plus once more for
        each answer to a PUT of it that the proxy cut off (`cut`): the
        registry stored that one, but the client could not know. A tag
        settled when the run began may only be PUT again after such a cut,
        and a tag of the fleet's repositories that the desired state does
        not name, never.
        """
        named = set(self._fleet.addresses())
        ours = set(self._fleet.repositories())
        found = (
            _rewrite(
                address,
                count,
                named=address in named,
                settled=address in settled,
                cut=cut[address],
            )
            for address, count in sorted(self.manifest_puts(since).items())
            if address.repository in ours
        )
        return [problem for problem in found if problem is not None]

    def manifest_puts(self, since: int) -> Counter[Address]:
        """How many manifest PUTs of each tag the registry took since `since`.

        Only accepted PUTs (2xx) wrote anything: one refused, for a token
        to fetch first (401) or a bad body, changed nothing.
        """
        return Counter(
            address
            for entry in self._server.access_log(since)
            if 200 <= entry.status < 300
            and (address := _put_address(entry.method, entry.path)) is not None
        )

    def _index_problems(self, repository: str, digest: Digest) -> list[str]:
        entries = self._entries(repository, digest)
        if entries is None:
            return [f"{repository}@{digest.short} is not an index"]
        listed = f"{repository}@{digest.short} lists"
        return [
            f"{listed} {problem}"
            for entry in entries
            if (problem := self._child_problem(repository, entry))
        ]

    def _entries(self, repository: str, digest: Digest) -> list[Any] | None:
        """An index's entries, read once: content by digest never changes."""
        key = (repository, digest)
        if key not in self._indexes:
            index = self._registry.manifest(repository, digest) or {}
            entries = index.get("manifests")
            self._indexes[key] = entries if isinstance(entries, list) else None
        return self._indexes[key]

    def _child_problem(self, repository: str, entry: dict[str, Any]) -> str | None:
        """What is wrong with one index entry, if anything."""
        child = Digest(entry["digest"])
        claimed = Platform.from_json(entry.get("platform") or {})
        if self._registry.head(repository, child) is None:
            return f"{child.short}, which is not in the repository"
        actual = self._platform(repository, child)
        if actual is None:
            return f"{child.short}, whose config is not in the repository"
        if not actual.matches(claimed):
            return f"{child.short} as {claimed}, but its config says {actual}"
        return None

    def _platform(self, repository: str, digest: Digest) -> Platform | None:
        """The platform an image's config declares, read once per image."""
        key = (repository, digest)
        if key not in self._platforms:
            manifest = self._registry.manifest(repository, digest) or {}
            described = manifest.get("config")
            if not isinstance(described, dict) or "digest" not in described:
                return None
            config = self._registry.blob(repository, Digest(described["digest"]))
            if config is None:
                return None
            self._platforms[key] = Platform.from_json(config)
        return self._platforms[key]


def digest_of(found: Found | None) -> Digest | None:
    """The digest of what a HEAD found; None when nothing was there."""
    return found.digest if found is not None else None


def _rewrite(
    address: Address, count: int, *, named: bool, settled: bool, cut: int
) -> str | None:
    """What is wrong with `count` writes of `address` in one run, if anything."""
    if not named:
        return f"{address} was written, but nothing names it"
    allowed = cut + (not settled)
    if count <= allowed:
        return None
    if settled:
        why = "although it held its planned digest when the run started"
    else:
        why = f"where {_times(allowed)} would do"
    return f"{address} was written {_times(count)}, {why}"


def _times(count: int) -> str:
    return {1: "once", 2: "twice"}.get(count, f"{count} times")


def _shown(digest: Digest | None) -> str:
    return digest.short if digest is not None else "absent"


def _cut_puts(events: Sequence[FaultEvent]) -> Counter[Address]:
    """Manifest PUTs the registry got but whose answer the proxy cut off."""
    return Counter(
        address
        for event in events
        if event.fault in _CUT
        and (address := _put_address(event.method, event.path)) is not None
    )


def _put_address(method: str, path: str) -> Address | None:
    match = _PUT_MANIFEST.fullmatch(path)
    if method != "PUT" or match is None or match["tag"].startswith("sha256:"):
        return None
    return Address(match["repository"], match["tag"])


def fault_rules(rate: float, fatal_share: float) -> list[FaultRule]:
    """Rules that fault `rate` of all requests, `fatal_share` of them fatally."""
    retried = rate * (1 - fatal_share)
    fatal = rate * fatal_share
    return [
        FaultRule(RETRIED, rate=retried, stall=_STALL, retry_after=1),
        # The second rule sees only what the first let through.
        FaultRule(FATAL, rate=fatal / (1 - retried)),
    ]


@dataclass(frozen=True)
class ChaosRig:
    """A seeded registry, the proxy in front of it, and a desired state naming it."""

    server: RegistryServer
    proxy: FaultProxy
    fleet: Fleet
    desired: Path
    env: Mapping[str, str] = field(repr=False)
    """The credentials the command line reads, as environment variables."""
    admin: tuple[str, str] | None = field(repr=False)
    """Who the checker reads the registry as."""


def prepare_rig(
    server: RegistryServer,
    proxy: FaultProxy,
    fleet: Fleet,
    workdir: Path,
    *,
    user: str = ROBOT,
) -> ChaosRig:
    """Seed `fleet` into `server` and write its desired state for `proxy`."""
    admin = server.credentials(ADMIN) if server.users else None
    seed_fleet(server, fleet, admin)
    assert server.ca_file is not None, "the chaos rig needs a TLS registry"
    desired = fleet.write_desired(workdir, proxy.host, server.ca_file)
    # Facts the command line caches by digest stay in the work folder: every
    # rig starts cold, and leaves the user's cache alone.
    env = {"RECONCILER_CACHE_DIR": str(workdir / "cache")}
    if server.users:
        env |= {"HARBOR_USERNAME": user, "HARBOR_PASSWORD": server.users[user]}
    return ChaosRig(server, proxy, fleet, desired, env, admin)


@dataclass(frozen=True)
class RunRecord:
    """One apply: how it ended, how long it took, and what the proxy did to it."""

    number: int
    exit_code: int
    seconds: float
    requests: int
    faults: int
    said: str
    """Its last line of output, or the first line of its error."""


@dataclass
class ChaosReport:
    """Every run, every invariant broken, and whether the registry converged."""

    planned: int = 0
    runs: list[RunRecord] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    converged: bool = False
    faults: Counter[Fault] = field(default_factory=Counter)
    requests: int = 0
    """Requests through the proxy while faults were on."""
    puts: Counter[Address] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        """Whether it converged with every invariant kept."""
        return self.converged and not self.violations

    def summary(self) -> str:
        """The report for people."""
        lines = [f"planned changes: {self.planned}"]
        lines += [
            f"run {r.number}: exit {r.exit_code} in {r.seconds:.1f}s, "
            f"{r.faults} faults in {r.requests} requests: {r.said}"
            for r in self.runs
        ]
        kinds = ", ".join(f"{k.value} {n}" for k, n in sorted(self.faults.items()))
        lines.append(f"faults injected: {sum(self.faults.values())} ({kinds})")
        lines.append(f"requests during the runs: {self.requests}")
        repeated = sum(1 for count in self.puts.values() if count > 1)
        lines.append(
            f"manifest PUTs: {sum(self.puts.values())} on {len(self.puts)} tags, "
            f"of which {repeated} again after the proxy cut an answer off"
        )
        lines.append(f"converged: {'yes' if self.converged else 'no'}")
        lines.append(f"invariants broken: {len(self.violations)}")
        lines += [f"  {violation}" for violation in self.violations]
        lines.append("CHAOS OK" if self.ok else "CHAOS FAILED")
        return "\n".join(lines)


def run_chaos(
    rig: ChaosRig,
    *,
    rate: float,
    fatal_share: float = 0.05,
    max_runs: int = 15,
) -> ChaosReport:
    """Plan, then apply through faults until done, checking invariants throughout."""
    report = ChaosReport()
    mark = rig.server.mark()
    with Checker(rig.server, rig.fleet, rig.admin) as checker:
        planned = planned_digests(rig.desired, rig.env)
        report.planned = len(planned)
        before = checker.snapshot()
        goal = _Goal.of(before, planned)
        for rule in fault_rules(rate, fatal_share):
            rig.proxy.add(rule)
        try:
            now = _apply_until_done(rig, checker, report, goal, before, max_runs)
        finally:
            rig.proxy.clear()
        _check_final(rig, report, goal, now)
        report.puts = checker.manifest_puts(mark)
    report.faults = rig.proxy.faults_injected
    report.requests = sum(run.requests for run in report.runs)
    return report


@dataclass(frozen=True)
class _Goal:
    """Where each address must end, and where it may be on the way."""

    expected: Mapping[Address, Digest | None]
    allowed: Mapping[Address, frozenset[Digest | None]]

    @classmethod
    def of(
        cls,
        before: Mapping[Address, Found | None],
        planned: Mapping[Address, Digest | None],
    ) -> _Goal:
        """Planned digests where the plan changes them; else the digest before."""
        was = {a: digest_of(found) for a, found in before.items()}
        expected = {a: planned.get(a, digest) for a, digest in was.items()}
        allowed = {a: frozenset({was[a], expected[a]}) for a in was}
        return cls(expected, allowed)

    def settled(self, now: Mapping[Address, Found | None]) -> set[Address]:
        """The addresses already at their expected digest."""
        return {a for a, found in now.items() if digest_of(found) == self.expected[a]}


def planned_digests(
    desired: Path, env: Mapping[str, str]
) -> dict[Address, Digest | None]:
    """The digest ``plan --json`` plans for each address it changes."""
    result = run_cli(["plan", "--json", str(desired)], env)
    if result.exit_code != 0:
        raise RuntimeError(f"the plan before chaos failed:\n{result.stderr}")
    document = json.loads(result.stdout)
    return {
        Address.of(change["address"]): Digest(change["after"])
        if change["after"]
        else None
        for change in document["changes"]
    }


def _apply_until_done(
    rig: ChaosRig,
    checker: Checker,
    report: ChaosReport,
    goal: _Goal,
    now: dict[Address, Found | None],
    max_runs: int,
) -> dict[Address, Found | None]:
    """Apply until a run exits 0; check after each; return the last snapshot."""
    for number in range(1, max_runs + 1):
        settled = goal.settled(now)
        mark, seen = rig.server.mark(), len(rig.proxy.events)
        result, record = _timed_apply(rig, number)
        report.runs.append(record)
        now = checker.snapshot()
        found = checker.misplaced(now, goal.allowed) + checker.broken_indexes(now)
        found += checker.rewrites(mark, settled, _cut_puts(rig.proxy.events[seen:]))
        if result.crash is not None:
            found.append(f"apply crashed:\n{result.crash}")
        report.violations += [f"run {number}: {problem}" for problem in found]
        if result.exit_code == 0:
            break
    return now


def _timed_apply(rig: ChaosRig, number: int) -> tuple[CliResult, RunRecord]:
    requests = rig.proxy.requests_seen
    faults = sum(rig.proxy.faults_injected.values())
    started = time.monotonic()
    result = run_cli(["apply", "--auto-approve", str(rig.desired)], rig.env)
    record = RunRecord(
        number,
        result.exit_code,
        time.monotonic() - started,
        rig.proxy.requests_seen - requests,
        sum(rig.proxy.faults_injected.values()) - faults,
        _said(result),
    )
    return result, record


def _check_final(
    rig: ChaosRig,
    report: ChaosReport,
    goal: _Goal,
    now: Mapping[Address, Found | None],
) -> None:
    """Converged: the plan sees no change, and every address is where planned."""
    result = run_cli(["plan", "--detailed-exitcode", str(rig.desired)], rig.env)
    differ = [
        f"{address} is at {_shown(digest_of(found))}, planned "
        f"{_shown(goal.expected[address])}"
        for address, found in sorted(now.items())
        if digest_of(found) != goal.expected[address]
    ]
    report.converged = result.exit_code == 0 and not differ
    if report.runs and report.runs[-1].exit_code == 0:
        # A run said it was done: then the registry must agree.
        report.violations += [f"at the end: {problem}" for problem in differ]
        if result.exit_code != 0:
            report.violations.append(
                f"at the end: plan --detailed-exitcode exited {result.exit_code}"
            )


def _said(result: CliResult) -> str:
    """The line that tells how a run ended: its last, or its error's first."""
    if result.exit_code == 0:
        lines = result.stdout.strip().splitlines()
        return lines[-1].strip() if lines else ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    return errors[0] if errors else f"exit {result.exit_code}"


# -- the command -------------------------------------------------------------


@contextlib.contextmanager
def _started_rig(workdir: Path, fleet: Fleet, seed: int) -> Iterator[ChaosRig]:
    """A throw-away PKI, token service, registry and proxy, with the fleet seeded."""
    pki = create_pki(workdir / "pki")
    with contextlib.ExitStack() as stack:
        tokens = stack.enter_context(
            TokenService(pki.server, TOKEN_USERS, workdir / "tokens")
        )
        registry = stack.enter_context(
            RegistryServer(
                workdir / "registry",
                auth="token",
                tls=pki.server,
                ca_file=pki.ca_file,
                token_service=tokens,
            )
        )
        proxy = stack.enter_context(
            FaultProxy(registry, pki.server, pki.ca_file, seed=seed)
        )
        yield prepare_rig(registry, proxy, fleet, workdir)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reconciler.testkit.chaos",
        description="Apply a fleet through random faults until it converges, "
        "checking the invariants after every run.",
    )
    parser.add_argument("--seed", type=int, default=0, help="the proxy's seed")
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.1,
        help="fraction of requests faulted, 0 to 0.9 (default 0.1)",
    )
    parser.add_argument(
        "--fatal-share",
        type=float,
        default=0.05,
        help="fraction of the faults that are not retried: 500 on writes, "
        "altered bytes (default 0.05)",
    )
    parser.add_argument(
        "--images", type=int, default=20, help="images in the fleet (default 20)"
    )
    parser.add_argument(
        "--versions", type=int, default=3, help="versions of each (default 3)"
    )
    parser.add_argument(
        "--max-runs",
        type=int,
        default=15,
        help="applies allowed before giving up (default 15)",
    )
    parser.add_argument(
        "--backoff",
        action="store_true",
        help="keep real backoff waits and Retry-After (slower)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.fault_rate <= 0.9 or not 0 <= args.fatal_share <= 1:
        parser.error("--fault-rate must be in [0, 0.9], --fatal-share in [0, 1]")
    if args.images < 1 or args.versions < 1 or args.max_runs < 1:
        parser.error("--images, --versions and --max-runs must be at least 1")
    return args


@contextlib.contextmanager
def _backoff(*, real: bool) -> Iterator[None]:
    """Real backoff waits, or none (stamina's testing mode, attempts kept)."""
    if real:
        yield
        return
    with stamina.set_testing(True, attempts=ATTEMPTS, cap=True):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chaos check; print a summary; return 0 when it held, else 1."""
    args = _arguments(argv)
    fleet = Fleet(args.images, args.versions)
    with (
        tempfile.TemporaryDirectory(prefix="reconciler-chaos-") as folder,
        _started_rig(Path(folder), fleet, args.seed) as rig,
        _backoff(real=args.backoff),
    ):
        print(
            f"chaos: seed {args.seed}, fault rate {args.fault_rate}, "
            f"{fleet.images} images x {fleet.versions} versions x "
            f"{len(fleet.arches)} platforms, through {rig.proxy.url}",
            flush=True,
        )
        report = run_chaos(
            rig,
            rate=args.fault_rate,
            fatal_share=args.fatal_share,
            max_runs=args.max_runs,
        )
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
