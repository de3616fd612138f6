"""Two runs at once on one desired state: each ends cleanly, the registry as desired.

The runs are real `reconciler` processes. Each imports everything first,
then waits for a shared signal, so that their plans and writes overlap
instead of following each other by the second Python needs to start.

Distribution's filesystem storage rewrites a link file in place, so a
manifest pushed while the other run links the same blob or child is often
refused (400 MANIFEST_BLOB_UNKNOWN); apply tries such a change again a few
times. Each run ends in success or a clear error, no index is ever broken
and no tag leaves its old or planned digest, and the registry ends as
desired when either run succeeded, or else after the next run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from reconciler.apply import apply_plan
from reconciler.oci import OCI_INDEX, Digest, Reference, build_index
from reconciler.plan import Action, Change, Kind, Plan
from reconciler.registries import Registries
from reconciler.registry import ConnectionSettings
from reconciler.testkit.accounts import ADMIN, ROBOT
from reconciler.testkit.chaos import (
    Address,
    Checker,
    Fleet,
    Found,
    digest_of,
    planned_digests,
    run_cli,
    seed_fleet,
)
from reconciler.testkit.faults import FaultProxy
from reconciler.testkit.pki import TestPKI
from reconciler.testkit.registry import RegistryServer

WRITE_METHODS = ("PUT", "POST", "PATCH", "DELETE")
WRITES = r"/v2/.*/(manifests/.*|blobs/uploads/.*)"
_STARTED_TOGETHER = """
import pathlib, sys, time
from reconciler.cli import main
ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.002)
main(sys.argv[3:], prog_name="reconciler")
"""


@dataclass(frozen=True)
class Ended:
    """How one process ended."""

    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Fixture:
    """A seeded fleet, a desired state for it, and the credentials to apply it."""

    server: RegistryServer
    fleet: Fleet
    workdir: Path
    desired: Path
    env: Mapping[str, str]

    @property
    def admin(self) -> tuple[str, str]:
        """Who reads the registry back."""
        return self.server.credentials(ADMIN)


@pytest.fixture
def seeded(registry_token: RegistryServer, unique_slug: str, tmp_path: Path) -> Fixture:
    """Six images at two versions, seeded, with a desired state naming the registry."""
    fleet = Fleet(6, 2, namespace=f"library/{unique_slug}")
    seed_fleet(registry_token, fleet, registry_token.credentials(ADMIN))
    assert registry_token.ca_file is not None
    desired = fleet.write_desired(tmp_path, registry_token.host, registry_token.ca_file)
    env = {
        "HARBOR_USERNAME": ROBOT,
        "HARBOR_PASSWORD": registry_token.users[ROBOT],
        "RECONCILER_CACHE_DIR": str(tmp_path / "cache"),
    }
    return Fixture(registry_token, fleet, tmp_path, desired, env)


def run_together(
    workdir: Path, env: Mapping[str, str], *commands: Sequence[str]
) -> list[Ended]:
    """Start one process per command, release them at once, and wait for all."""
    go = workdir / "go"
    processes = []
    for number, command in enumerate(commands):
        ready = workdir / f"ready-{number}"
        processes.append((ready, _launch(ready, go, env, command)))
    _wait_for(ready for ready, _ in processes)
    go.touch()
    return [_ended(process) for _, process in processes]


def _launch(
    ready: Path, go: Path, env: Mapping[str, str], command: Sequence[str]
) -> subprocess.Popen[str]:
    arguments = [sys.executable, "-c", _STARTED_TOGETHER, str(ready), str(go)]
    return subprocess.Popen(
        [*arguments, *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def _wait_for(paths: Iterator[Path], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for path in list(paths):
        while not path.exists():
            assert time.monotonic() < deadline, f"{path} never appeared"
            time.sleep(0.01)


def _ended(process: subprocess.Popen[str]) -> Ended:
    stdout, stderr = process.communicate(timeout=120)
    return Ended(process.returncode, stdout, stderr)


def assert_clean(ended: Ended) -> None:
    """Exit 0, or exit 1 with an error message; never a traceback."""
    assert ended.returncode in (0, 1), ended.stderr
    assert "Traceback" not in ended.stderr + ended.stdout
    if ended.returncode == 1:
        # Not necessarily the first line: -v logs may come first.
        errors = [
            line for line in ended.stderr.splitlines() if line.startswith("Error: ")
        ]
        assert errors, ended.stderr


def assert_safe(
    fixture: Fixture,
    before: Mapping[Address, Found | None],
    planned: Mapping[Address, Digest | None],
) -> None:
    """No index lacks a child, and every tag is at its old or its planned digest."""
    allowed = {
        a: frozenset({digest_of(found), planned.get(a, digest_of(found))})
        for a, found in before.items()
    }
    with Checker(fixture.server, fixture.fleet, fixture.admin) as checker:
        now = checker.snapshot()
        assert checker.broken_indexes(now) == []
        assert checker.misplaced(now, allowed) == []


def assert_converged(
    fixture: Fixture, planned: Mapping[Address, Digest | None]
) -> None:
    """The plan sees no change, and every planned address holds its digest."""
    result = run_cli(["plan", "--detailed-exitcode", str(fixture.desired)], fixture.env)
    assert result.exit_code == 0, result.stdout + result.stderr
    with Checker(fixture.server, fixture.fleet, fixture.admin) as checker:
        now = checker.snapshot()
        assert checker.broken_indexes(now) == []
    assert {a: digest_of(now[a]) for a in planned} == planned


def converge(fixture: Fixture, outcomes: Sequence[Ended]) -> None:
    """When every run failed, one more apply finishes the job, as promised."""
    if any(ended.returncode == 0 for ended in outcomes):
        return
    again = run_cli(["apply", "--auto-approve", str(fixture.desired)], fixture.env)
    assert again.exit_code == 0, again.stderr


def snapshot(fixture: Fixture) -> dict[Address, Found | None]:
    """What every address of the fleet holds now, read directly."""
    with Checker(fixture.server, fixture.fleet, fixture.admin) as checker:
        return checker.snapshot()


def plan_saved_through(proxy: FaultProxy, fixture: Fixture) -> Path:
    """A plan saved for the fleet reached through `proxy`.

    Applied, it goes through the proxy, which records its requests apart
    from those of any other run.
    """
    assert fixture.server.ca_file is not None
    via = fixture.workdir / "via-proxy"
    desired = fixture.fleet.write_desired(via, proxy.host, fixture.server.ca_file)
    saved = fixture.workdir / "plan.json"
    made = run_cli(["plan", "--out", str(saved), str(desired)], fixture.env)
    assert made.exit_code == 0, made.stderr
    return saved


def test_two_applies_at_once_end_cleanly_and_converge(seeded: Fixture) -> None:
    """Both exit 0 or 1 with an error, break nothing, and the registry converges."""
    planned = planned_digests(seeded.desired, seeded.env)
    before = snapshot(seeded)
    apply = ["apply", "--auto-approve", str(seeded.desired)]

    outcomes = run_together(seeded.workdir, seeded.env, apply, apply)

    for ended in outcomes:
        assert_clean(ended)
        # Each planned before the other was done: the runs overlapped.
        assert "\nPlan: " in ended.stdout
        assert "No changes." not in ended.stdout
    assert_safe(seeded, before, planned)
    converge(seeded, outcomes)
    assert_converged(seeded, planned)


def test_saved_plan_made_stale_by_another_apply_is_refused_and_writes_nothing(
    seeded: Fixture,
) -> None:
    """Another apply moves the tags a saved plan observed: "plan is stale"."""
    saved = seeded.workdir / "plan.json"
    made = run_cli(["plan", "--out", str(saved), str(seeded.desired)], seeded.env)
    assert made.exit_code == 0
    other = run_cli(["apply", "--auto-approve", str(seeded.desired)], seeded.env)
    assert other.exit_code == 0
    mark = seeded.server.mark()

    stale = run_cli(["apply", "--plan", str(saved)], seeded.env)

    assert stale.exit_code == 1
    assert stale.crash is None
    assert "plan is stale" in stale.stderr
    moved = f"{seeded.server.host}/{seeded.fleet.targets()[2]}:1.0.0-amd64"
    assert f"  {moved}: absent at plan time, now sha256:" in stale.stderr
    assert _writes(seeded.server, mark) == 0


def test_saved_plan_racing_another_apply_is_applied_or_refused_cleanly(
    seeded: Fixture, pki: TestPKI
) -> None:
    """Racing an apply, a saved plan is applied, or refused as stale unwritten."""
    planned = planned_digests(seeded.desired, seeded.env)
    before = snapshot(seeded)
    with FaultProxy(seeded.server, pki.server, pki.ca_file) as proxy:
        saved = plan_saved_through(proxy, seeded)
        seen = len(proxy.events)

        saved_run, fresh_run = run_together(
            seeded.workdir,
            seeded.env,
            ["apply", "--plan", str(saved)],
            ["apply", "--auto-approve", str(seeded.desired)],
        )
        saved_writes = [e for e in proxy.events[seen:] if e.method in WRITE_METHODS]

    for ended in (saved_run, fresh_run):
        assert_clean(ended)
    if "plan is stale" in saved_run.stderr:
        assert saved_writes == []
    else:  # checked before the other run wrote: applied, or failed a write
        assert saved_writes
    assert_safe(seeded, before, planned)
    converge(seeded, (saved_run, fresh_run))
    assert_converged(seeded, planned)


def _writes(server: RegistryServer, mark: int) -> int:
    return sum(server.count(m, WRITES, since=mark) for m in WRITE_METHODS)


def test_push_refused_while_another_run_links_its_blobs_is_tried_again() -> None:
    """A push refused as "blob unknown" once, as under a concurrent run, lands."""
    content = build_index(OCI_INDEX, [])
    change = Change(
        Action.CREATE,
        Kind.INDEX,
        Reference.parse("registry.test/library/app:1.0"),
        before=None,
        after=Digest.of(content),
        media_type=OCI_INDEX,
        content=content,
    )
    pushes: list[int] = []

    def registry(request: httpx.Request) -> httpx.Response:
        if request.method != "PUT":
            return httpx.Response(200)
        pushes.append(len(pushes))
        if len(pushes) == 1:
            return httpx.Response(400, json=_BLOB_UNKNOWN)
        digest = {"Docker-Content-Digest": str(Digest.of(content))}
        return httpx.Response(201, headers=digest)

    settings = {"registry.test": ConnectionSettings("registry.test")}
    transport = httpx.MockTransport(registry)
    with Registries(settings, transport=transport) as registries:
        report = apply_plan(Plan((change,), {}), registries)

    assert [change.address for change, _ in report.failed] == []
    assert len(pushes) == 2


# What Distribution 2.8 answered in the runs above, word for word.
_BLOB_UNKNOWN = {
    "errors": [
        {
            "code": "DIGEST_INVALID",
            "message": "provided digest did not match uploaded content",
        },
        {"code": "MANIFEST_BLOB_UNKNOWN", "message": "blob unknown to registry"},
    ]
}
