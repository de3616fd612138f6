"""Convergence under random faults, and rate limits at the command line.

A fleet of 20 images x 3 versions x 2 platforms is applied through the
fault proxy, with faults on every kind of request, until a run exits 0;
`reconciler.testkit.chaos` runs it and checks the invariants after every
run, reading the registry directly (its docstring lists them). The checker
itself is shown to see what it must. What `tests/test_faults_proxy.py`
proves for the client (Retry-After honoured, a deadline kept) is proved here
for the command line.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import stamina

from reconciler.testkit.accounts import ADMIN
from reconciler.testkit.chaos import (
    ATTEMPTS,
    Address,
    Checker,
    Fleet,
    digest_of,
    prepare_rig,
    run_chaos,
    seed_fleet,
)
from reconciler.testkit.faults import (
    ANY_PATH,
    MANIFESTS,
    Fault,
    FaultProxy,
    FaultRule,
)
from reconciler.testkit.images import manifest_delete, manifest_get, manifest_put
from reconciler.testkit.pki import TestPKI
from reconciler.testkit.registry import RegistryServer

from .scenario import Scenario

SEEDS = (11, 23, 37)
FAULT_RATE = 0.15
MAX_RUNS = 12
FLEET_IMAGES, FLEET_VERSIONS = 20, 3
# Every platform tag, index and alias, less image 0's platform tags, which
# the seeding makes right already.
PLANNED = FLEET_IMAGES * FLEET_VERSIONS * 3 + FLEET_IMAGES - FLEET_VERSIONS * 2
WRITES = r"/v2/.*/(manifests/.*|blobs/uploads/.*)"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def proxy(registry_token: RegistryServer, pki: TestPKI) -> Iterator[FaultProxy]:
    """A fault proxy in front of the token registry, with no rules yet."""
    with FaultProxy(registry_token, pki.server, pki.ca_file, seed=3) as started:
        yield started


@pytest.fixture
def through(
    registry_token: RegistryServer,
    proxy: FaultProxy,
    namespace: str,
    tmp_path: Path,
) -> Scenario:
    """One version of the seed scenario, its desired state naming the proxy."""
    direct = Scenario(registry_token, tmp_path, namespace)
    direct.seed(versions=("3.8.5",))
    # Scenario reads only `host`, `users` and `ca_file` off its server.
    via = dataclasses.replace(direct, server=cast(RegistryServer, proxy))
    via.write_desired(versions=("3.8.5",), aliases={})
    return via


# -- the fleet -------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_fleet_converges_through_random_faults_keeping_every_invariant(
    registry_token: RegistryServer,
    pki: TestPKI,
    tmp_path: Path,
    unique_slug: str,
    seed: int,
) -> None:
    """Applies through 15% faulted requests converge, and no invariant breaks."""
    fleet = Fleet(FLEET_IMAGES, FLEET_VERSIONS, namespace=f"library/{unique_slug}")
    with FaultProxy(registry_token, pki.server, pki.ca_file, seed=seed) as proxy:
        rig = prepare_rig(registry_token, proxy, fleet, tmp_path)
        # Backoff off, attempts kept: the waits are measured below and in
        # test_faults_proxy.py; here they would only make the runs long.
        with stamina.set_testing(True, attempts=ATTEMPTS, cap=True):
            report = run_chaos(rig, rate=FAULT_RATE, max_runs=MAX_RUNS)

    assert report.violations == [], report.summary()
    assert report.converged, report.summary()
    assert report.planned == PLANNED
    assert 0.1 <= sum(report.faults.values()) / report.requests <= 0.2
    assert len(report.faults) >= 7, report.faults  # nearly every kind met


def test_chaos_command_converges_and_says_so() -> None:
    """The documented command starts everything itself and exits 0 when it holds."""
    command = [sys.executable, "-m", "reconciler.testkit.chaos", "--seed", "5"]
    options = ["--fault-rate", "0.2", "--images", "2", "--versions", "1"]

    done = subprocess.run(
        [*command, *options],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "converged: yes" in done.stdout
    assert "invariants broken: 0" in done.stdout
    assert done.stdout.rstrip().endswith("CHAOS OK")


# -- the checker sees what it must -------------------------------------------


@pytest.fixture
def small_fleet(registry_token: RegistryServer, unique_slug: str) -> Fleet:
    """Two images at one version, seeded: image 1 is on a stale index."""
    fleet = Fleet(2, 1, namespace=f"library/{unique_slug}")
    seed_fleet(registry_token, fleet, registry_token.credentials(ADMIN))
    return fleet


def test_checker_flags_a_tag_moved_to_an_unplanned_digest(
    registry_token: RegistryServer, small_fleet: Fleet
) -> None:
    """A tag moved by hand to another manifest is reported, old and new digest."""
    admin = registry_token.credentials(ADMIN)
    target = small_fleet.targets()[0]
    other = manifest_get(registry_token, target, "1.0.0-arm64", credentials=admin)
    with Checker(registry_token, small_fleet, admin) as checker:
        before = checker.snapshot()
        allowed = {a: frozenset({digest_of(i)}) for a, i in before.items()}
        manifest_put(
            registry_token,
            target,
            "1.0.0-amd64",
            other.data,
            other.media_type,
            credentials=admin,
        )

        problems = checker.misplaced(checker.snapshot(), allowed)

    assert problems == [
        f"{target}:1.0.0-amd64 is at {other.digest[:19]}, expected one of "
        f"{digest_of(before[Address(target, '1.0.0-amd64')]).short}"  # type: ignore[union-attr]  # present
    ]


def test_checker_flags_an_index_whose_child_is_gone(
    registry_token: RegistryServer, small_fleet: Fleet
) -> None:
    """An index listing a manifest deleted from its repository is broken."""
    admin = registry_token.credentials(ADMIN)
    stale = small_fleet.targets()[1]
    index = manifest_get(registry_token, stale, "1.0.0", credentials=admin)
    (child,) = index.json()["manifests"]
    with Checker(registry_token, small_fleet, admin) as checker:
        assert checker.broken_indexes(checker.snapshot()) == []
        manifest_delete(registry_token, stale, child["digest"], credentials=admin)

        problems = checker.broken_indexes(checker.snapshot())

    assert len(problems) == 1
    assert problems[0].endswith(
        f"lists {child['digest'][:19]}, which is not in the repository"
    )


def test_checker_flags_a_write_no_plan_or_fault_explains(
    registry_token: RegistryServer, small_fleet: Fleet
) -> None:
    """A settled tag PUT again is a rewrite, unless the proxy cut an answer off."""
    admin = registry_token.credentials(ADMIN)
    target = small_fleet.targets()[0]
    settled = Address(target, "1.0.0-amd64")
    same = manifest_get(registry_token, target, settled.tag, credentials=admin)
    with Checker(registry_token, small_fleet, admin) as checker:
        mark = registry_token.mark()
        manifest_put(
            registry_token,
            target,
            settled.tag,
            same.data,
            same.media_type,
            credentials=admin,
        )

        rewritten = checker.rewrites(mark, {settled}, Counter())
        explained = checker.rewrites(mark, {settled}, Counter({settled: 1}))

    assert rewritten == [
        f"{settled} was written once, although it held its planned digest "
        "when the run started"
    ]
    assert explained == []


# -- rate limits at the command line -----------------------------------------


def test_apply_waits_as_long_as_retry_after_asks(
    through: Scenario, proxy: FaultProxy
) -> None:
    """A 429 with Retry-After: 2 on a push delays that push by two seconds."""
    proxy.add(
        FaultRule(Fault.TOO_MANY_REQUESTS, "PUT", MANIFESTS, times=1, retry_after=2)
    )

    result = through.run("apply", "--auto-approve")

    assert result.exit_code == 0, result.output
    (limited,) = [e for e in proxy.events if e.fault is Fault.TOO_MANY_REQUESTS]
    again = [e for e in proxy.events if (e.method, e.path) == ("PUT", limited.path)]
    assert [e.fault for e in again] == [Fault.TOO_MANY_REQUESTS, None]
    assert again[1].at - limited.at >= 1.95


def test_apply_facing_a_permanent_rate_limit_gives_up_saying_so(
    through: Scenario, proxy: FaultProxy, registry_token: RegistryServer
) -> None:
    """A Retry-After past the deadline ends apply at once: exit 1, "rate-limiting"."""
    proxy.add(FaultRule(Fault.TOO_MANY_REQUESTS, path=ANY_PATH, retry_after=3600))
    mark = registry_token.mark()
    started = time.monotonic()

    result = through.run("apply", "--auto-approve")

    assert result.exit_code == 1
    assert time.monotonic() - started < 10
    assert "429 Too Many Requests" in result.stderr
    assert "the registry is rate-limiting" in result.stderr
    assert "Traceback" not in result.output
    assert registry_token.count("PUT", WRITES, since=mark) == 0


def test_retries_leave_no_bare_library_lines_on_stderr(
    through: Scenario, proxy: FaultProxy
) -> None:
    """A retried 503 is silent without -v: stderr has no stray library lines."""
    proxy.add(FaultRule(Fault.SERVICE_UNAVAILABLE, "HEAD", MANIFESTS, times=2))
    user = through.user
    env = {
        **os.environ,
        "HARBOR_USERNAME": user,
        "HARBOR_PASSWORD": through.server.users[user],
    }
    command = [sys.executable, "-m", "reconciler", "--chdir", str(through.workdir)]

    done = subprocess.run(
        [*command, "apply", "--auto-approve"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert proxy.faults_injected == {Fault.SERVICE_UNAVAILABLE: 2}
    assert "stamina" not in done.stderr
