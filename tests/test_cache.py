"""The on-disk cache of immutable facts, and a no-op plan that reads only HEADs."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from reconciler.cache import FactCache, cache_dir
from reconciler.oci import DOCKER_MANIFEST, Descriptor, Digest, Platform
from reconciler.testkit.registry import RegistryServer
from reconciler.testkit.tokens import TokenService

from .scenario import Scenario, with_own_cache

ARM64 = Platform("linux", "arm64", "v8")
DIGEST = Digest.of(b"an image manifest")
INDEX = Digest.of(b"an index")
CHILDREN = (
    Descriptor(DOCKER_MANIFEST, Digest.of(b"amd64"), 528, Platform("linux", "amd64")),
    Descriptor(DOCKER_MANIFEST, Digest.of(b"arm64"), 529, ARM64),
)


def entry_path(cache: FactCache, kind: str, digest: Digest) -> Path:
    assert cache.directory is not None
    return (
        cache.directory / "v1" / kind / "sha256" / digest.hex[:2] / f"{digest.hex}.json"
    )


def test_facts_survive_between_caches_on_one_folder(tmp_path: Path) -> None:
    """What one run learns, the next run reads back unchanged."""
    FactCache(tmp_path).put_platform(DIGEST, ARM64)
    FactCache(tmp_path).put_children(INDEX, CHILDREN)
    later = FactCache(tmp_path)
    assert later.platform(DIGEST) == ARM64
    assert later.children(INDEX) == CHILDREN


def test_unknown_digests_miss(tmp_path: Path) -> None:
    """Nothing is made up for a digest never stored."""
    cache = FactCache(tmp_path)
    assert cache.platform(DIGEST) is None
    assert cache.children(INDEX) is None


def test_a_disabled_cache_remembers_nothing(tmp_path: Path) -> None:
    """FactCache.disabled() writes no file and always misses."""
    cache = FactCache.disabled()
    cache.put_platform(DIGEST, ARM64)
    assert cache.platform(DIGEST) is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text.replace("arm64", "amd64"),  # content changed
        lambda text: text[: len(text) // 2],  # torn write
        lambda text: "",  # empty file after a crash
        lambda text: "[1, 2]",  # not an entry
        lambda text: text.replace('"checksum": "', '"checksum": "0'),
    ],
)
def test_a_corrupt_entry_is_ignored(
    tmp_path: Path, damage: Callable[[str], str]
) -> None:
    """An entry failing its checksum is a miss, never a wrong platform."""
    cache = FactCache(tmp_path)
    cache.put_platform(DIGEST, ARM64)
    path = entry_path(cache, "platform", DIGEST)
    path.write_text(damage(path.read_text()))
    assert cache.platform(DIGEST) is None


def test_an_entry_moved_to_another_digest_is_ignored(tmp_path: Path) -> None:
    """A sound entry under the wrong name is not believed."""
    cache = FactCache(tmp_path)
    cache.put_platform(DIGEST, ARM64)
    other = Digest.of(b"another manifest")
    target = entry_path(cache, "platform", other)
    target.parent.mkdir(parents=True, exist_ok=True)
    entry_path(cache, "platform", DIGEST).rename(target)
    assert cache.platform(other) is None


def test_a_corrupt_entry_is_healed_by_the_next_write(tmp_path: Path) -> None:
    """The run that reads the fact from the registry rewrites the entry."""
    cache = FactCache(tmp_path)
    cache.put_platform(DIGEST, ARM64)
    entry_path(cache, "platform", DIGEST).write_text("garbage")
    cache.put_platform(DIGEST, ARM64)
    assert cache.platform(DIGEST) == ARM64


def test_an_unwritable_folder_is_no_error(tmp_path: Path) -> None:
    """The cache is an optimisation: a folder that is a file only disables it."""
    blocked = tmp_path / "file"
    blocked.write_text("")
    cache = FactCache(blocked)
    cache.put_platform(DIGEST, ARM64)
    assert cache.platform(DIGEST) is None


def write_many(folder: str) -> int:
    """Write every test fact 50 times; runs in another process."""
    cache = FactCache(Path(folder))
    for _ in range(50):
        cache.put_platform(DIGEST, ARM64)
        cache.put_children(INDEX, CHILDREN)
    return 0


def test_concurrent_processes_and_threads_leave_sound_entries(tmp_path: Path) -> None:
    """Atomic renames: racing writers of one entry never leave it torn."""
    with ProcessPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(write_many, str(tmp_path)) for _ in range(3)]
        threads = [
            threading.Thread(target=write_many, args=(str(tmp_path),)) for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [f.result() for f in futures] == [0, 0, 0]
    cache = FactCache(tmp_path)
    assert cache.platform(DIGEST) == ARM64
    assert cache.children(INDEX) == CHILDREN
    leftovers = [p.name for p in tmp_path.rglob(".tmp-*")]
    assert leftovers == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RECONCILER_CACHE_DIR": "/c", "XDG_CACHE_HOME": "/x"}, Path("/c")),
        ({"XDG_CACHE_HOME": "/x", "HOME": "/h"}, Path("/x/reconciler")),
        ({"XDG_CACHE_HOME": "relative", "HOME": "/h"}, Path("/h/.cache/reconciler")),
        ({"HOME": "/h"}, Path("/h/.cache/reconciler")),
        ({"RECONCILER_NO_CACHE": "1", "RECONCILER_CACHE_DIR": "/c"}, None),
        ({"RECONCILER_NO_CACHE": "0", "HOME": "/h"}, Path("/h/.cache/reconciler")),
    ],
)
def test_cache_folder_follows_the_environment(
    env: dict[str, str], expected: Path | None
) -> None:
    """RECONCILER_CACHE_DIR, then XDG_CACHE_HOME, then ~/.cache; or off."""
    assert cache_dir(env) == expected


def test_entries_are_plain_json_with_a_checksum(tmp_path: Path) -> None:
    """An entry names its kind and digest, so it can be checked by hand."""
    cache = FactCache(tmp_path)
    cache.put_platform(DIGEST, ARM64)
    entry = json.loads(entry_path(cache, "platform", DIGEST).read_text())
    assert entry["kind"] == "platform"
    assert entry["digest"] == DIGEST
    assert entry["value"] == {"os": "linux", "architecture": "arm64", "variant": "v8"}
    assert len(entry["checksum"]) == 64


# Against the real registry --------------------------------------------------------


@pytest.fixture
def applied(
    registry_token: RegistryServer,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Scenario:
    """The seed scenario applied, with the cache in a folder of the test's own."""
    scenario = with_own_cache(registry_token, tmp_path, namespace, monkeypatch)
    result = scenario.run("apply", "--auto-approve")
    assert result.exit_code == 0, result.output
    return scenario


def reads(scenario: Scenario, mark: int) -> dict[str, int]:
    """Manifest and blob reads after `mark`, by method."""
    log = scenario.server.access_log(since=mark)
    counts = {"HEAD": 0, "GET": 0}
    for entry in log:
        if "/manifests/" in entry.path or "/blobs/" in entry.path:
            counts[entry.method] = counts.get(entry.method, 0) + 1
    return counts


@pytest.mark.registry
def test_noop_plan_with_a_warm_cache_reads_only_heads(
    applied: Scenario, token_service: TokenService
) -> None:
    """Platforms come from the cache, and one token covers all three repositories."""
    mark = applied.server.mark()
    token_service.clear_requests()
    result = applied.run("plan", "--detailed-exitcode")
    assert result.exit_code == 0, result.output
    counted = reads(applied, mark)
    assert counted["GET"] == 0
    # 4 versions x (index, 2 platform tags, 2 sources), and 2 aliases
    assert counted["HEAD"] == 4 * 5 + 2
    assert token_service.request_count == 1


@pytest.mark.registry
def test_plan_over_a_corrupt_cache_is_still_right(applied: Scenario) -> None:
    """Damaged entries are read again from the registry; the plan is unchanged."""
    cache = Path(applied.workdir / "cache")
    for entry in cache.rglob("*.json"):
        entry.write_text(entry.read_text().replace("arm64", "amd64"))
    mark = applied.server.mark()
    result = applied.run("plan", "--detailed-exitcode")
    assert result.exit_code == 0, result.output
    assert reads(applied, mark)["GET"] > 0
