"""Small helpers shared by tests: clients and credentials for test registries."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.registry import (
    ConnectionSettings,
    Credentials,
    RegistryClient,
    RetryPolicy,
)
from reconciler.testkit.accounts import ADMIN
from reconciler.testkit.registry import RegistryServer

if TYPE_CHECKING:
    from .scenario import Scenario

FAST_RETRY = RetryPolicy(attempts=3, deadline=10, wait_initial=0.05, wait_max=0.2)


def admin_of(server: RegistryServer) -> tuple[str, str] | None:
    """The admin's (user, password) where the registry has users, else None."""
    return server.credentials(ADMIN) if server.users else None


def settings_for(
    server: RegistryServer, *, ca_file: Path | None = None, insecure: bool = False
) -> ConnectionSettings:
    """Connection settings trusting the test CA (or `ca_file`)."""
    return ConnectionSettings(
        server.host, ca_file=ca_file or server.ca_file, insecure=insecure
    )


def client_for(
    server: RegistryServer,
    user: str | None = ADMIN,
    *,
    password: str | None = None,
    settings: ConnectionSettings | None = None,
) -> RegistryClient:
    """A client of `server` logged in as `user` (anonymous without users)."""
    credentials = None
    if user is not None and server.users:
        credentials = Credentials(user, password or server.users[user])
    return RegistryClient(
        settings or settings_for(server), credentials=credentials, retry=FAST_RETRY
    )


def run_on_terminal(scenario: Scenario, *answers: str) -> tuple[int, str]:
    """Run apply with a pseudo-terminal as stdin and stdout; type `answers`."""
    primary, secondary = pty.openpty()
    env = {
        **os.environ,
        "HARBOR_USERNAME": scenario.user,
        "HARBOR_PASSWORD": scenario.server.users[scenario.user],
    }
    command = [
        sys.executable,
        "-m",
        "reconciler",
        "--chdir",
        str(scenario.workdir),
        "apply",
    ]
    process = subprocess.Popen(
        command, stdin=secondary, stdout=secondary, stderr=secondary, env=env
    )
    os.close(secondary)
    output = b""
    for answer in answers:
        output += _read_until(primary, b"Enter a value")
        os.write(primary, answer.encode() + b"\n")
    output += _read_until(primary, None)
    os.close(primary)
    return process.wait(timeout=60), output.decode(errors="replace")


def _read_until(fd: int, marker: bytes | None, timeout: float = 60) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (marker is None or marker not in data):
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        data += chunk
    return data
