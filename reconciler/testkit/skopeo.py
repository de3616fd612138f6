"""Read back what was pushed with ``skopeo``, a client independent of ours.

skopeo trusts the CA through ``--cert-dir``, a directory of ``*.crt`` files
(`RegistryServer.cert_dir`). It is never given the environment's CA bundle,
and without credentials it is told ``--no-creds`` so that no Docker or
Podman auth file on the machine changes what it sees.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Protocol

from reconciler.testkit.images import Credentials

__all__ = [
    "SkopeoError",
    "SkopeoTarget",
    "inspect",
    "inspect_raw",
    "pull",
    "skopeo_flags",
]

SKOPEO_BINARY = "skopeo"
_TIMEOUT = 60.0


class SkopeoError(RuntimeError):
    """skopeo failed; the message holds its stderr."""


class SkopeoTarget(Protocol):
    """A registry as skopeo needs it; `RegistryServer` is one."""

    @property
    def host(self) -> str:
        """``host:port``."""
        ...

    @property
    def cert_dir(self) -> Path | None:
        """A directory holding the CA as ``ca.crt``; None for plain HTTP."""
        ...


def skopeo_flags(
    target: SkopeoTarget,
    credentials: Credentials | None,
    *,
    prefix: str = "",
) -> list[str]:
    """Return the TLS and credential flags; `prefix` is ``src-`` for copy."""
    if target.cert_dir is None:
        flags = [f"--{prefix}tls-verify=false"]
    else:
        flags = [f"--{prefix}tls-verify=true", f"--{prefix}cert-dir={target.cert_dir}"]
    if credentials is None:
        return [*flags, f"--{prefix}no-creds"]
    username, password = credentials
    return [*flags, f"--{prefix}creds={username}:{password}"]


def inspect_raw(
    target: SkopeoTarget,
    reference: str,
    *,
    credentials: Credentials | None = None,
) -> bytes:
    """Return the manifest bytes of ``<host>/<reference>``, exactly as stored."""
    flags = skopeo_flags(target, credentials)
    return _run(["inspect", "--raw", *flags, _docker_ref(target, reference)])


def inspect(
    target: SkopeoTarget,
    reference: str,
    *,
    credentials: Credentials | None = None,
    override_os: str | None = None,
    override_arch: str | None = None,
    override_variant: str | None = None,
) -> dict[str, Any]:
    """Return skopeo's summary of the image one platform resolves to.

    For an index, ``Architecture``, ``Os`` and ``Layers`` come from the child
    chosen for the (overridden) platform, but ``Digest`` is the digest of the
    index itself. skopeo 1.9 prints no variant. Use `pull` for the child's
    digest.
    """
    command = [*_overrides(override_os, override_arch, override_variant), "inspect"]
    command += [*skopeo_flags(target, credentials), _docker_ref(target, reference)]
    value = json.loads(_run(command))
    if not isinstance(value, dict):
        raise SkopeoError("skopeo inspect printed no JSON object")
    return value


def pull(
    target: SkopeoTarget,
    reference: str,
    destination: Path,
    *,
    credentials: Credentials | None = None,
    override_os: str | None = None,
    override_arch: str | None = None,
    override_variant: str | None = None,
) -> bytes:
    """Copy one image, with its blobs, into the directory `destination`.

    For an index, skopeo picks the child for the (overridden) platform, the
    way ``docker pull`` does. Returns the manifest bytes it stored, so the
    pulled child's digest is their SHA-256.
    """
    # The policy decides which signatures a copy requires; reading our own
    # test registry into a directory needs none.
    command = ["--insecure-policy"]
    command += _overrides(override_os, override_arch, override_variant)
    command += ["copy", *skopeo_flags(target, credentials, prefix="src-")]
    command += [_docker_ref(target, reference), f"dir:{destination}"]
    _run(command)
    return (destination / "manifest.json").read_bytes()


def _overrides(os: str | None, arch: str | None, variant: str | None) -> list[str]:
    values = {"os": os, "arch": arch, "variant": variant}
    return [f"--override-{name}={value}" for name, value in values.items() if value]


def _docker_ref(target: SkopeoTarget, reference: str) -> str:
    return f"docker://{target.host}/{reference}"


def _run(arguments: list[str]) -> bytes:
    binary = shutil.which(SKOPEO_BINARY)
    if binary is None:
        raise SkopeoError("skopeo is not on PATH: `.ci/run` installs it")
    try:
        result = subprocess.run(
            [binary, *arguments],
            capture_output=True,
            timeout=_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        # Not re-raised as is: its message would show --creds.
        message = f"skopeo did not finish within {_TIMEOUT:.0f}s"
        raise SkopeoError(message) from None
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        raise SkopeoError(f"skopeo failed: {stderr}")
    return result.stdout
