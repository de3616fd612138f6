"""The flow users run today, timed on a sample: skopeo copy, docker manifest.

For each version of each sampled image, one command after another, as the
shell scripts in the product brief do it:

- ``skopeo copy`` of each per-architecture source to its platform tag;
- ``docker manifest create`` of the version from the platform tags;
- ``docker manifest annotate`` of each platform tag with its os and arch;
- ``docker manifest push``.

``docker manifest`` is a client-only command: it talks to registries
directly and needs no daemon, only a ``DOCKER_CONFIG`` folder. The registry
is plain HTTP without authentication (``127.0.0.1`` is an insecure registry
to both tools), the easiest case for them: no TLS, no tokens. The
comparison flatters the old flow.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench._fleet import ARCHES, Fleet, Seeder
from reconciler.testkit.registry import AccessEntry, RegistryServer


@dataclass(frozen=True)
class LegacyRun:
    """The old flow over `versions` versions: time, requests, uploaded bytes."""

    versions: int
    seconds: float
    requests: int
    layer_uploads: int
    layer_bytes: int

    @property
    def per_version(self) -> float:
        """Seconds per version."""
        return self.seconds / self.versions


def legacy_flow(registry: RegistryServer, fleet: Fleet, workdir: Path) -> LegacyRun:
    """Seed `fleet`'s sources into `registry`, then time the old flow over it."""
    seeder = Seeder(registry, None)
    seeder.seed(fleet)
    env = {**os.environ, "DOCKER_CONFIG": str(workdir / "docker-config")}
    mark = registry.mark()
    started = time.monotonic()
    for target in fleet.targets():
        for version in fleet.version_tags():
            _one_version(registry.host, target, version, env)
    seconds = time.monotonic() - started
    log = registry.access_log(since=mark)
    layer = seeder.layer
    uploads = [e for e in log if _carries(e, layer.digest)]
    return LegacyRun(
        versions=fleet.images * fleet.versions,
        seconds=seconds,
        requests=len(log),
        layer_uploads=len(uploads),
        layer_bytes=len(uploads) * layer.size,
    )


def _one_version(host: str, target: str, version: str, env: dict[str, str]) -> None:
    index = f"{host}/{target}:{version}"
    tags = {arch: f"{index}-{arch}" for arch in ARCHES}
    for arch, tag in tags.items():
        _run(
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{host}/{target}-{arch}:{version}",
            f"docker://{tag}",
            env=env,
        )
    _run("docker", "manifest", "create", "--insecure", index, *tags.values(), env=env)
    for arch, tag in tags.items():
        _run(
            "docker",
            "manifest",
            "annotate",
            index,
            tag,
            "--os",
            "linux",
            "--arch",
            arch,
            env=env,
        )
    _run("docker", "manifest", "push", "--purge", "--insecure", index, env=env)


def _run(*args: str, env: dict[str, str]) -> None:
    result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr}")


def _carries(entry: AccessEntry, digest: str) -> bool:
    """Whether the request finished an upload of the blob `digest`."""
    return entry.is_blob_upload and digest in entry.query.get("digest", [])
