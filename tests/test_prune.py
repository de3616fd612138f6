"""Pruning: what an image once produced and no longer lists is destroyed, safely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.oci import Repository
from reconciler.testkit.accounts import ADMIN
from reconciler.testkit.images import push_index
from reconciler.testkit.registry import RegistryServer

from .helpers import run_on_terminal
from .scenario import Scenario

PRUNE = "    prune: true\n"
REST = ("3.11.3", "3.10.1", "3.9.2")


@pytest.fixture
def applied(registry_token: RegistryServer, namespace: str, tmp_path: Path) -> Scenario:
    """The seed scenario with prune: true, applied."""
    scenario = Scenario(registry_token, tmp_path, namespace, user=ADMIN)
    scenario.seed()
    scenario.write_desired(extra=PRUNE)
    assert scenario.run("apply", "--auto-approve").exit_code == 0
    return scenario


def tags_of(scenario: Scenario) -> set[str]:
    """The target repository's tags, read back from the registry."""
    with scenario.client() as client:
        return set(client.tag_list(scenario.ref("x").repository))


def planned(scenario: Scenario) -> dict[str, tuple[str, str]]:
    document = json.loads(scenario.run("plan", "--json").stdout)
    return {
        c["address"].rsplit(":", 1)[1]: (c["action"], c["kind"])
        for c in document["changes"]
    }


def test_removed_version_destroys_its_index_and_platform_tags_only(
    applied: Scenario,
) -> None:
    """Dropping 3.8.5 removes 3.8.5, 3.8.5-amd64 and 3.8.5-arm64, nothing else."""
    before = tags_of(applied)
    applied.write_desired(versions=REST, extra=PRUNE)

    assert planned(applied) == {
        "3.8.5": ("delete", "index"),
        "3.8.5-amd64": ("delete", "tag"),
        "3.8.5-arm64": ("delete", "tag"),
    }
    result = applied.run("apply", "--auto-approve")

    assert result.exit_code == 0, result.output
    assert "Apply complete! 0 added, 0 changed, 3 destroyed." in result.stdout
    assert tags_of(applied) == before - {"3.8.5", "3.8.5-amd64", "3.8.5-arm64"}
    assert applied.run("plan", "--detailed-exitcode").exit_code == 0
    source = Repository(
        applied.server.host, f"{applied.namespace}/java-gdal-local-amd64"
    )
    with applied.client() as client:  # sources live in their own repositories
        assert client.manifest_head(source.tag("3.8.5")) is not None


def test_destroys_are_listed_last_and_counted(applied: Scenario) -> None:
    """The text plan puts destroys in their own closing section; JSON counts them."""
    applied.write_desired(versions=REST, extra=PRUNE, aliases={"latest": "3.10.1"})

    text = applied.run("plan").stdout
    document = json.loads(applied.run("plan", "--json").stdout)

    assert document["summary"] == {"add": 0, "change": 1, "destroy": 3}
    section = text.index("Destroys")
    assert text.index("~ alias") < section
    assert text.index("- index") > section
    assert "Plan: 0 to add, 1 to change, 3 to destroy." in text
    # The 3.11 alias shares its manifest with 3.11.3, which stays: deleting
    # the manifest would delete 3.11.3 too, and Distribution has no tag delete.
    assert ":3.11 is no longer desired but is kept" in text
    assert document["warnings"]


def test_removed_aliased_version_takes_its_alias(applied: Scenario) -> None:
    """Dropping 3.11.3 and its alias 3.11 while latest moves to 3.10.1."""
    applied.write_desired(versions=REST[1:], extra=PRUNE, aliases={"latest": "3.10.1"})

    assert planned(applied) == {
        "latest": ("update", "alias"),
        "3.11": ("delete", "alias"),
        "3.11.3": ("delete", "index"),
        "3.11.3-amd64": ("delete", "tag"),
        "3.11.3-arm64": ("delete", "tag"),
        "3.8.5": ("delete", "index"),
        "3.8.5-amd64": ("delete", "tag"),
        "3.8.5-arm64": ("delete", "tag"),
    }
    assert applied.run("apply", "--auto-approve").exit_code == 0
    assert "3.11" not in tags_of(applied)
    assert "latest" in tags_of(applied)
    assert applied.run("plan", "--detailed-exitcode").exit_code == 0


def test_child_shared_with_a_kept_version_survives(
    registry_token: RegistryServer, namespace: str, tmp_path: Path
) -> None:
    """A manifest also tagged for a version that stays is kept, with a warning."""
    scenario = Scenario(registry_token, tmp_path, namespace, user=ADMIN)
    scenario.seed(versions=("3.9.2", "3.8.5"))
    scenario.push_source("3.8.5", "amd64", seed="3.9.2-amd64")  # same image
    scenario.write_desired(versions=("3.9.2", "3.8.5"), aliases={}, extra=PRUNE)
    assert scenario.run("apply", "--auto-approve").exit_code == 0
    scenario.write_desired(versions=("3.9.2",), aliases={}, extra=PRUNE)

    result = scenario.run("plan")

    assert "3.8.5-amd64 is no longer desired but is kept" in result.stdout
    assert planned(scenario) == {
        "3.8.5": ("delete", "index"),
        "3.8.5-arm64": ("delete", "tag"),
    }
    assert scenario.run("apply", "--auto-approve").exit_code == 0
    assert {"3.9.2", "3.9.2-amd64", "3.9.2-arm64", "3.8.5-amd64"} <= tags_of(scenario)
    assert "3.8.5" not in tags_of(scenario)


def test_without_prune_nothing_is_destroyed(applied: Scenario) -> None:
    """Removing a version from a file without prune plans no destroy."""
    applied.write_desired(versions=REST)

    result = applied.run("plan", "--detailed-exitcode")

    assert result.exit_code == 0
    assert "No changes." in result.stdout


def test_tags_outside_the_namespace_are_left_alone(applied: Scenario) -> None:
    """An index named nightly, and a platform-like tag of no version, survive."""
    sources = applied.sources
    nightly = push_index(
        applied.server,
        f"{applied.namespace}/java-gdal-local",
        "nightly",
        [
            (sources[("3.8.5", "amd64")], "linux/amd64"),
            (sources[("3.8.5", "arm64")], "linux/arm64"),
        ],
        fmt="oci",
        credentials=applied.admin,
    )
    push_index(
        applied.server,
        f"{applied.namespace}/java-gdal-local",
        "edge-amd64",
        [(sources[("3.9.2", "amd64")], "linux/amd64")],
        fmt="oci",
        credentials=applied.admin,
    )
    applied.write_desired(versions=REST, extra=PRUNE)

    changes = planned(applied)

    assert "nightly" not in changes
    assert "edge-amd64" not in changes
    assert changes["3.8.5"] == ("delete", "index")
    # nightly lists the 3.8.5 children: deleting them would break it.
    assert "3.8.5-amd64" not in changes
    assert applied.run("apply", "--auto-approve").exit_code == 0
    with applied.client() as client:
        found = client.manifest_head(applied.ref("nightly"))
    assert found is not None
    assert found.digest == nightly.digest


def test_destroying_on_a_terminal_asks_twice(applied: Scenario) -> None:
    """A plan that destroys asks again; "no" the second time writes nothing."""
    applied.write_desired(versions=REST, extra=PRUNE)
    before = tags_of(applied)
    mark = applied.server.mark()

    status, output = run_on_terminal(applied, "yes", "no")

    assert status == 1
    assert "Really destroy them?" in output
    assert tags_of(applied) == before
    assert applied.server.count("DELETE", r".*", since=mark) == 0


def test_two_entries_for_one_repository_do_not_prune_each_other(
    applied: Scenario,
) -> None:
    """A pruning entry leaves alone the versions another entry claims."""
    host, namespace = applied.server.host, applied.namespace
    source = f"{host}/{namespace}/java-gdal-local-{{arch}}:{{version}}"
    second = (
        f"  - repository: {applied.repository}\n"
        '    versions: ["3.8.5"]\n'
        f"    source: {source}\n"
    )
    applied.write_desired(versions=REST, extra=PRUNE + second)

    result = applied.run("plan", "--detailed-exitcode")

    assert result.exit_code == 0, result.output
