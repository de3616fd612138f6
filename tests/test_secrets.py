"""Secrets never leave: not in output, logs, the plan file or any file a run writes.

The whole scenario runs as real processes at the most verbose level (`-vv`,
every HTTP request logged) as the robot account ``robot$library+ci``, whose
``$`` must survive the environment, Basic authentication and the token
service. Every token the token service issued during the runs is recorded
as it leaves the service, and searched for, with the password and every
Authorization value the runs could have sent.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.testkit.accounts import ROBOT
from reconciler.testkit.registry import RegistryServer
from reconciler.testkit.tokens import TokenService, decode_token

from .scenario import Scenario

VERSIONS = ("3.9.2", "3.8.5")


@dataclass
class Issued:
    """Every token the token service handed out while the tests watched."""

    tokens: list[str] = field(default_factory=list)


@pytest.fixture
def issued(token_service: TokenService, monkeypatch: pytest.MonkeyPatch) -> Issued:
    """Record each token as the service issues it, for the runs to be searched."""
    record = Issued()
    issue = token_service.issue

    def recording(*args: Any, **kwargs: Any) -> dict[str, Any]:
        answer = issue(*args, **kwargs)
        record.tokens.append(str(answer["token"]))
        return answer

    monkeypatch.setattr(token_service, "issue", recording)
    return record


@pytest.fixture
def scenario(
    registry_token: RegistryServer, namespace: str, tmp_path: Path
) -> Scenario:
    """The seed scenario at two versions, as the robot account."""
    made = Scenario(registry_token, tmp_path / "work", namespace, user=ROBOT)
    made.seed(versions=VERSIONS)
    made.write_desired(versions=VERSIONS, aliases={"latest": VERSIONS[0]})
    return made


@dataclass(frozen=True)
class Run:
    """One command line run: its arguments and everything it printed."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def run(scenario: Scenario, *args: str, password: str | None = None) -> Run:
    """``reconciler -vv ARGS`` as a process, as the robot, in the scenario's folder."""
    user = scenario.user
    env = {
        **os.environ,
        "HARBOR_USERNAME": user,
        "HARBOR_PASSWORD": password or scenario.server.users[user],
        "RECONCILER_CACHE_DIR": str(scenario.workdir / "cache"),
    }
    command = [sys.executable, "-m", "reconciler", "-vv"]
    done = subprocess.run(
        [*command, "--chdir", str(scenario.workdir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    return Run(args, done.returncode, done.stdout, done.stderr)


def secrets_of(scenario: Scenario, issued: Issued, *passwords: str) -> list[str]:
    """Every value that must never show: passwords, tokens, Authorization values."""
    user = scenario.user
    found: list[str] = []
    for password in passwords:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        found += [password, pair, f"Basic {pair}"]
    for token in issued.tokens:
        _, claims, signature = token.split(".")
        # The JWT header is the same for every token; its claims and
        # signature are what make it a credential.
        found += [token, claims, signature, f"Bearer {token[:16]}"]
    return found


def texts(runs: list[Run], folder: Path) -> dict[str, str]:
    """What the runs printed, and every file under `folder`: plans, caches, logs."""
    found = {f"{r.args} stdout": r.stdout for r in runs}
    found |= {f"{r.args} stderr": r.stderr for r in runs}
    files = (path for path in folder.rglob("*") if path.is_file())
    return found | {str(path): path.read_text(errors="replace") for path in files}


def test_whole_scenario_at_debug_leaks_no_secret(
    scenario: Scenario, issued: Issued, token_service: TokenService
) -> None:
    """validate, plan --out, plan --json, apply and plan at -vv print no secret."""
    password = scenario.server.users[ROBOT]
    token_service.clear_requests()

    runs = [
        run(scenario, "validate"),
        run(scenario, "plan", "--out", "plan.json"),
        run(scenario, "plan", "--json"),
        run(scenario, "apply", "--auto-approve"),
        run(scenario, "plan", "--detailed-exitcode"),
    ]

    assert [r.returncode for r in runs] == [0, 0, 0, 0, 0], runs[-2].stderr
    assert "DEBUG" in runs[3].stderr  # the most verbose logs were on
    assert issued.tokens  # and the runs did use tokens
    places = texts(runs, scenario.workdir)
    for secret in secrets_of(scenario, issued, password):
        leaks = [place for place, text in places.items() if secret in text]
        assert leaks == [], f"{secret[:12]}… leaked in {leaks}"
    for place, text in places.items():
        assert "authorization:" not in text.lower(), place
    assert "plan.json" in " ".join(places)


def test_robot_account_with_a_dollar_works_end_to_end(
    scenario: Scenario, token_service: TokenService
) -> None:
    """robot$library+ci authenticates through the environment and gets its grant."""
    token_service.clear_requests()

    applied = run(scenario, "apply", "--auto-approve")

    assert applied.returncode == 0, applied.stderr
    asked = {request.username for request in token_service.requests}
    assert asked == {"robot$library+ci"}
    assert all(request.authenticated for request in token_service.requests)
    pushes = [
        access
        for request in token_service.requests
        for access in request.access
        if "push" in access.actions
    ]
    target = f"{scenario.namespace}/java-gdal-local"
    assert {access.name for access in pushes} == {target}
    with scenario.client() as client:
        assert client.manifest_head(scenario.ref("latest")) is not None


def test_wrong_password_is_named_as_such_and_never_echoed(
    scenario: Scenario, issued: Issued
) -> None:
    """A refused password: an authentication error for the user; the password unseen."""
    wrong = "not-the-robot-pass-$x"

    refused = run(scenario, "plan", password=wrong)

    assert refused.returncode == 1
    assert "authentication failed for user 'robot$library+ci'" in refused.stderr
    assert scenario.server.host in refused.stderr
    for secret in secrets_of(scenario, issued, wrong):
        assert secret not in refused.stdout + refused.stderr
    assert all(not decode_token(token)[1]["access"] for token in issued.tokens)
