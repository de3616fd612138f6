"""plan: the seed scenario, drift, platform checks and the rendered text.

Every test runs the command line against the real token-auth registry and
decides nothing from mocks: drift is made by writing to the registry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconciler.oci import DOCKER_MANIFEST_LIST
from reconciler.testkit.images import manifest_delete, manifest_put, push_index
from reconciler.testkit.registry import RegistryServer

from .scenario import Scenario

GOLDEN = Path(__file__).parent / "data" / "plans"


@pytest.fixture
def scenario(
    registry_token: RegistryServer, namespace: str, tmp_path: Path
) -> Scenario:
    """The seed scenario: 8 single-arch sources and a desired file for them."""
    made = Scenario(registry_token, tmp_path, namespace)
    made.seed()
    made.write_desired()
    return made


@pytest.fixture
def applied(scenario: Scenario) -> Scenario:
    """The seed scenario, applied."""
    result = scenario.run("apply", "--auto-approve")
    assert result.exit_code == 0, result.output
    return scenario


def check_golden(name: str, text: str) -> None:
    """Compare with tests/data/plans/NAME; UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


def changes(scenario: Scenario) -> dict[str, tuple[str, str]]:
    """address -> (action, kind), from plan --json."""
    result = scenario.run("plan", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    return {
        scenario.normalize(c["address"]): (c["action"], c["kind"])
        for c in document["changes"]
    }


def test_seed_scenario_plans_tags_indexes_and_aliases(scenario: Scenario) -> None:
    """8 platform tags, 4 indexes and 2 aliases to add; --detailed-exitcode exits 2."""
    result = scenario.run("plan", "--detailed-exitcode")

    assert result.exit_code == 2, result.output
    assert "Plan: 14 to add, 0 to change, 0 to destroy." in result.output
    check_golden("create.txt", scenario.normalize(result.stdout))


def test_json_plan_agrees_with_text(scenario: Scenario) -> None:
    """--json lists the same changes and summary as the text."""
    text = scenario.run("plan").stdout
    document = json.loads(scenario.run("plan", "--json").stdout)

    assert document["format_version"] == "1"
    assert document["summary"] == {"add": 14, "change": 0, "destroy": 0}
    kinds = sorted(c["kind"] for c in document["changes"])
    assert kinds == ["alias"] * 2 + ["index"] * 4 + ["tag"] * 8
    for change in document["changes"]:
        assert f"+ {change['kind']} {change['address']}" in text
        assert change["before"] is None
        assert change["after"].startswith("sha256:")
    index = next(c for c in document["changes"] if c["address"].endswith(":3.8.5"))
    assert [c["platform"] for c in index["children"]] == ["linux/amd64", "linux/arm64"]
    assert index["children"][0]["digest"] == scenario.sources[("3.8.5", "amd64")].digest


def test_converged_registry_has_no_changes(applied: Scenario) -> None:
    """After apply, the plan is empty and --detailed-exitcode exits 0."""
    result = applied.run("plan", "--detailed-exitcode")

    assert result.exit_code == 0, result.output
    check_golden("no-changes.txt", applied.normalize(result.stdout))


def test_rebuilt_source_updates_its_tag_and_index_only(applied: Scenario) -> None:
    """A new arm64 build of 3.9.2 changes 3.9.2-arm64 and 3.9.2, nothing else."""
    applied.push_source("3.9.2", "arm64", seed="rebuilt")

    assert changes(applied) == {
        "registry.test/library/ns/java-gdal-local:3.9.2-arm64": ("update", "tag"),
        "registry.test/library/ns/java-gdal-local:3.9.2": ("update", "index"),
    }
    result = applied.run("plan", "--detailed-exitcode")
    assert result.exit_code == 2
    check_golden("rebuilt-source.txt", applied.normalize(result.stdout))


def test_rebuilt_aliased_version_moves_its_aliases(applied: Scenario) -> None:
    """A rebuilt 3.11.3 source moves latest and 3.11 along with the index."""
    applied.push_source("3.11.3", "amd64", seed="rebuilt")

    assert changes(applied) == {
        "registry.test/library/ns/java-gdal-local:3.11.3-amd64": ("update", "tag"),
        "registry.test/library/ns/java-gdal-local:3.11.3": ("update", "index"),
        "registry.test/library/ns/java-gdal-local:3.11": ("update", "alias"),
        "registry.test/library/ns/java-gdal-local:latest": ("update", "alias"),
    }


def test_platform_tag_repointed_by_hand_is_drift(applied: Scenario) -> None:
    """3.8.5-amd64 moved to the arm64 image shows ~ on that tag alone."""
    arm = applied.sources[("3.8.5", "arm64")]
    manifest_put(
        applied.server,
        f"{applied.namespace}/java-gdal-local",
        "3.8.5-amd64",
        arm.manifest,
        arm.media_type,
        credentials=applied.admin,
    )

    assert changes(applied) == {
        "registry.test/library/ns/java-gdal-local:3.8.5-amd64": ("update", "tag"),
    }


def test_deleted_index_is_created_again(applied: Scenario) -> None:
    """A deleted version index shows + for that index alone."""
    with applied.client() as client:
        found = client.manifest_head(applied.ref("3.8.5"))
    assert found is not None
    manifest_delete(
        applied.server,
        f"{applied.namespace}/java-gdal-local",
        found.digest,
        credentials=applied.admin,
    )

    assert changes(applied) == {
        "registry.test/library/ns/java-gdal-local:3.8.5": ("create", "index"),
    }


def test_index_written_by_another_tool_with_same_children_is_no_change(
    applied: Scenario,
) -> None:
    """Different bytes, same children, platforms and media type: no drift."""
    sources = applied.sources
    pushed = push_index(
        applied.server,
        f"{applied.namespace}/java-gdal-local",
        "3.8.5",
        [
            (sources[("3.8.5", "amd64")], "linux/amd64"),
            (sources[("3.8.5", "arm64")], "linux/arm64"),
        ],
        fmt="docker",
        credentials=applied.admin,
    )
    with applied.client() as client:
        ours = client.manifest_get(applied.ref("3.9.2")).manifest.raw
    assert pushed.media_type == DOCKER_MANIFEST_LIST
    assert pushed.manifest.replace(b"3.8.5", b"") != ours

    result = applied.run("plan", "--detailed-exitcode")
    assert result.exit_code == 0, result.output


def test_added_platform_gains_one_child(applied: Scenario) -> None:
    """Adding linux/arm/v7 to the file adds its tags and one child per index."""
    for version in ("3.11.3", "3.10.1", "3.9.2", "3.8.5"):
        applied.push_source(version, "arm/v7")
    applied.write_desired(
        platforms=("linux/amd64", "linux/arm64", "linux/arm/v7"),
        extra='    platform_tag: "{version}-{arch}{variant}"\n',
    )

    planned = changes(applied)

    assert planned["registry.test/library/ns/java-gdal-local:3.8.5-armv7"] == (
        "create",
        "tag",
    )
    assert planned["registry.test/library/ns/java-gdal-local:3.8.5"] == (
        "update",
        "index",
    )
    result = applied.run("plan")
    block = result.stdout.split("java-gdal-local:3.8.5 will be updated in place")[1]
    block = block.split("\n\n")[0]
    assert "+ linux/arm/v7" in block
    assert "~ linux/amd64" not in block
    assert block.count("\n    + ") == 1


def test_source_with_wrong_platform_fails_naming_both(scenario: Scenario) -> None:
    """An amd64 image pushed as the arm64 source is a plan error, exit 1."""
    scenario.push_source("3.8.5", "arm64", config_arch="amd64", seed="mislabelled")

    result = scenario.run("plan", "--detailed-exitcode")

    assert result.exit_code == 1
    assert "java-gdal-local-arm64:3.8.5" in result.stderr
    assert "linux/arm64" in result.stderr
    assert "linux/amd64" in result.stderr
    assert "Traceback" not in result.output
    check_golden("error-platform.txt", scenario.normalize(result.stderr))


def test_missing_source_fails_naming_it(scenario: Scenario) -> None:
    """A version whose source was never pushed is a plan error naming the reference."""
    scenario.write_desired(versions=("3.11.3", "9.9.9"), aliases={})

    result = scenario.run("plan", "--detailed-exitcode")

    assert result.exit_code == 1
    assert "java-gdal-local-amd64:9.9.9 does not exist" in result.stderr
    assert "java-gdal-local-arm64:9.9.9 does not exist" in result.stderr


def test_oci_sources_give_an_oci_index(
    registry_token: RegistryServer, namespace: str, tmp_path: Path
) -> None:
    """OCI platform manifests are gathered into an OCI image index."""
    scenario = Scenario(registry_token, tmp_path, namespace, fmt="oci")
    scenario.seed(versions=("3.8.5",))
    scenario.write_desired(versions=("3.8.5",), aliases={})

    document = json.loads(scenario.run("plan", "--json").stdout)

    index = next(c for c in document["changes"] if c["kind"] == "index")
    assert index["media_type"] == "application/vnd.oci.image.index.v1+json"


def test_without_source_the_platform_tags_are_the_sources(applied: Scenario) -> None:
    """With no source template, existing platform tags feed the index."""
    text = (applied.workdir / "desired" / "java-gdal.yaml").read_text()
    lines = [line for line in text.splitlines() if "source:" not in line]
    (applied.workdir / "desired" / "java-gdal.yaml").write_text("\n".join(lines) + "\n")

    assert applied.run("plan", "--detailed-exitcode").exit_code == 0


def test_without_source_a_missing_platform_tag_is_an_error(applied: Scenario) -> None:
    """A version whose platform tags do not exist, and no source, cannot be planned."""
    applied.write_desired(versions=("3.8.5", "4.0.0"), aliases={})
    text = (applied.workdir / "desired" / "java-gdal.yaml").read_text()
    lines = [line for line in text.splitlines() if "source:" not in line]
    (applied.workdir / "desired" / "java-gdal.yaml").write_text("\n".join(lines) + "\n")

    result = applied.run("plan", "--detailed-exitcode")

    assert result.exit_code == 1
    assert "java-gdal-local:4.0.0-amd64 does not exist" in result.stderr
    assert "no source" in result.stderr


def test_index_of_another_media_type_says_what_differs(applied: Scenario) -> None:
    """An OCI index where a Docker manifest list is wanted is rewritten, and why."""
    sources = applied.sources
    push_index(
        applied.server,
        f"{applied.namespace}/java-gdal-local",
        "3.8.5",
        [
            (sources[("3.8.5", "amd64")], "linux/amd64"),
            (sources[("3.8.5", "arm64")], "linux/arm64"),
        ],
        fmt="oci",
        credentials=applied.admin,
    )

    result = applied.run("plan")

    assert changes(applied) == {
        "registry.test/library/ns/java-gdal-local:3.8.5": ("update", "index"),
    }
    block = result.stdout.split("will be updated in place")[1]
    assert "differs" in block
    assert "mediaType changed" in block
    assert "application/vnd.oci.image.index.v1+json" in block
