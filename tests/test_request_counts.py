"""What a run costs in requests, counted in the real registry's access log."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.testkit.registry import AccessEntry, RegistryServer
from reconciler.testkit.tokens import TokenService

from .scenario import IMAGE, VERSIONS, Scenario, with_own_cache

pytestmark = pytest.mark.registry


@pytest.fixture
def scenario(
    registry_token: RegistryServer,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Scenario:
    """The seed scenario, not applied, with an empty cache of its own."""
    return with_own_cache(registry_token, tmp_path, namespace, monkeypatch)


def requests(scenario: Scenario, mark: int, where: str) -> list[AccessEntry]:
    """Requests after `mark` to the target repository or to the sources."""
    prefix = f"/v2/{scenario.namespace}/{IMAGE}"
    repository = prefix + "/" if where == "target" else prefix + "-"
    return [
        entry
        for entry in scenario.server.access_log(since=mark)
        if entry.path.startswith(repository)
    ]


def kinds(entries: list[AccessEntry]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in entries:
        what = entry.path.split("/")[-2]  # manifests, blobs, tags or uploads
        key = f"{entry.method} {what}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_first_apply_reads_each_source_once_and_lists_the_new_repository(
    scenario: Scenario, token_service: TokenService
) -> None:
    """A new image: one HEAD finds its repository empty, one listing says so,
    each source manifest is read once with GET, and tokens come in batches."""
    mark = scenario.server.mark()
    token_service.clear_requests()

    result = scenario.run("apply", "--auto-approve")

    assert result.exit_code == 0, result.output
    sources = len(VERSIONS) * 2
    assert kinds(requests(scenario, mark, "source")) == {
        "GET manifests": sources,  # by tag; apply copies the same bytes
        "GET blobs": sources,  # the configs, for their platforms
    }
    target = kinds(requests(scenario, mark, "target"))
    assert target["HEAD manifests"] == 1
    assert target["GET tags"] == 1
    # 8 platform tags, 4 indexes and 2 aliases
    assert target["PUT manifests"] == sources + len(VERSIONS) + 2
    # one token to read everything, one to push and mount
    assert token_service.request_count == 2
    assert scenario.run("plan", "--detailed-exitcode").exit_code == 0


def test_new_version_of_an_existing_image_lists_no_tags(scenario: Scenario) -> None:
    """Where the repository's first address exists, nothing is listed."""
    scenario.write_desired(versions=VERSIONS[:-1])
    applied = scenario.run("apply", "--auto-approve")
    assert applied.exit_code == 0, applied.output
    scenario.write_desired()
    mark = scenario.server.mark()

    result = scenario.run("plan", "--detailed-exitcode")

    assert result.exit_code == 2, result.output
    target = kinds(requests(scenario, mark, "target"))
    assert "GET tags" not in target
    assert target["HEAD manifests"] == len(VERSIONS) * 3 + 2


def test_saved_plan_is_checked_with_one_head_an_address_and_batched_tokens(
    scenario: Scenario, token_service: TokenService, tmp_path: Path
) -> None:
    """Applying a saved plan reads each address it observed with one HEAD,
    and asks the tokens for all repositories together, as a plan does:
    the new process holds no token yet."""
    scenario.write_desired(versions=VERSIONS[:-1])
    applied = scenario.run("apply", "--auto-approve")
    assert applied.exit_code == 0, applied.output
    scenario.write_desired()
    saved = tmp_path / "saved.plan"
    planned = scenario.run("plan", "--out", str(saved))
    assert planned.exit_code == 0, planned.output
    mark = scenario.server.mark()
    token_service.clear_requests()

    result = scenario.run("apply", "--plan", str(saved))

    assert result.exit_code == 0, result.output
    sources = kinds(requests(scenario, mark, "source"))
    assert sources["HEAD manifests"] == len(VERSIONS) * 2
    target = kinds(requests(scenario, mark, "target"))
    assert target["HEAD manifests"] == len(VERSIONS) * 3 + 2
    # one token to read the target and both sources, one to push and mount
    assert token_service.request_count == 2
