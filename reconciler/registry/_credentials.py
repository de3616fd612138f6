"""Where usernames and passwords come from, in order.

1. The environment variables a registry entry names.
2. Docker's config (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`):
   `credHelpers[host]`, then `auths[host]`, then `credsStore`.

Secrets live only in `Credentials` objects, whose repr hides them.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reconciler.errors import ReconcilerError
from reconciler.registry._settings import ConnectionSettings

logger = logging.getLogger(__name__)

_HELPER_TIMEOUT = 30


class CredentialsError(ReconcilerError):
    """Credentials were named but could not be read."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and its password; the password never shows in a repr."""

    username: str
    password: str = field(repr=False)


def resolve_credentials(settings: ConnectionSettings) -> Credentials | None:
    """Credentials for the host, or None to go anonymous."""
    if settings.username_env or settings.password_env:
        return _from_environment(settings)
    return docker_config().credentials_for(settings.host)


def _from_environment(settings: ConnectionSettings) -> Credentials:
    names = (settings.username_env or "", settings.password_env or "")
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        raise CredentialsError(
            f"credentials for {settings.host}: environment variable "
            f"{', '.join(missing)} is not set or empty",
            hint="export it in the job, e.g. from a masked CI/CD variable",
        )
    return Credentials(os.environ[names[0]], os.environ[names[1]])


@dataclass(frozen=True, slots=True)
class DockerConfig:
    """The parts of Docker's config.json that say how to log in."""

    path: Path
    auths: dict[str, Any] = field(default_factory=dict)
    cred_helpers: dict[str, str] = field(default_factory=dict)
    creds_store: str | None = None

    def has_host(self, host: str) -> bool:
        """Whether this config could give credentials for `host`."""
        return bool(self.creds_store or host in self.cred_helpers or host in self.auths)

    def credentials_for(self, host: str) -> Credentials | None:
        """Credentials for `host` from a helper or `auths`, else None."""
        if host in self.cred_helpers:
            return _from_helper(self.cred_helpers[host], host)
        if host in self.auths:
            return _from_auth_entry(self.path, host, self.auths[host])
        if self.creds_store:
            return _from_helper(self.creds_store, host)
        return None


def docker_config() -> DockerConfig:
    """Read Docker's config; a missing file is an empty config."""
    folder = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    path = Path(folder) / "config.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return DockerConfig(path)
    except (OSError, ValueError) as error:
        raise CredentialsError(f"cannot read Docker config {path}: {error}") from None
    if not isinstance(document, dict):
        raise CredentialsError(f"Docker config {path} is not a JSON object")
    return DockerConfig(
        path,
        auths=_by_host(document.get("auths")),
        cred_helpers={
            k: str(v) for k, v in _by_host(document.get("credHelpers")).items()
        },
        creds_store=document.get("credsStore") or None,
    )


def _by_host(section: Any) -> dict[str, Any]:
    # Keys may be written as URLs ("https://host/v1/"); Docker matches by host.
    if not isinstance(section, dict):
        return {}
    return {_host_of(key): value for key, value in section.items()}


def _host_of(key: str) -> str:
    return urlsplit(key).netloc if "://" in key else key.split("/", 1)[0]


def _from_auth_entry(path: Path, host: str, entry: Any) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]))
    if not entry.get("auth"):
        return None
    try:
        user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise CredentialsError(
            f"the auth entry for {host} in {path} is not base64 of user:password",
            hint=f"run docker login {host} again",
        ) from None
    return Credentials(user, password)


def _from_helper(helper: str, host: str) -> Credentials | None:
    program = f"docker-credential-{helper}"
    logger.debug("asking %s for credentials of %s", program, host)
    try:
        result = subprocess.run(
            [program, "get"],
            input=host,
            capture_output=True,
            text=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CredentialsError(
            f"credential helper {program} for {host} failed: {error}",
            hint=f"install {program}, or remove it from Docker's config",
        ) from None
    return _helper_answer(program, host, result)


def _helper_answer(
    program: str, host: str, result: subprocess.CompletedProcess[str]
) -> Credentials | None:
    # Helpers say "credentials not found" on stdout or stderr with exit 1.
    if result.returncode != 0:
        if "not found" in (result.stdout + result.stderr).lower():
            return None
        raise CredentialsError(
            f"credential helper {program} for {host} exited {result.returncode}"
        )
    try:
        answer = json.loads(result.stdout)
        username, secret = str(answer["Username"]), str(answer["Secret"])
    except (ValueError, KeyError, TypeError):
        raise CredentialsError(f"credential helper {program} gave no JSON") from None
    if username == "<token>":
        raise CredentialsError(
            f"credential helper {program} gave an identity token for {host}",
            hint="identity tokens are not supported; log in with a password "
            "or a robot account",
        )
    return Credentials(username, secret)
