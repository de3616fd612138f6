"""import: desired state written from what exists, and planned back to no change.

Each fleet shape is built on the real token registry: by this tool, by the
`docker manifest` flow (children pushed by digest, no platform tags), with
aliases, and as OCI indexes with attestation entries. The round trip writes
the imported YAML to a folder and plans it with `--detailed-exitcode`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from reconciler.adopt import parse_targets, version_tag
from reconciler.cli import main
from reconciler.testkit.images import (
    ImageFormat,
    PushedImage,
    manifest_get,
    push_image,
    push_index,
)
from reconciler.testkit.registry import RegistryServer

from .scenario import ARCHES, IMAGE, Scenario

IMPORTED = "imported"
PLATFORMS = {"amd64": "linux/amd64", "arm64": "linux/arm64/v8"}


@pytest.fixture
def scenario(
    registry_token: RegistryServer, namespace: str, tmp_path: Path
) -> Scenario:
    """An empty scenario on the Harbor-like token registry."""
    return Scenario(registry_token, tmp_path, namespace)


def run_import(
    scenario: Scenario, *references: str, password: str | None = None
) -> Result:
    """Run `import` with the test CA, as the scenario's user (or `password`)."""
    env = {
        "HARBOR_USERNAME": scenario.user,
        "HARBOR_PASSWORD": password or scenario.server.users[scenario.user],
    }
    arguments = [
        "--chdir",
        str(scenario.workdir),
        "import",
        "--ca-file",
        f"{scenario.server.host}={scenario.server.ca_file}",
        "--username-env",
        "HARBOR_USERNAME",
        "--password-env",
        "HARBOR_PASSWORD",
        *(references or (scenario.repository,)),
    ]
    return CliRunner().invoke(main, arguments, env=env)


def import_to_folder(scenario: Scenario, *references: str) -> str:
    """Import, check the exit code, and write the YAML where plan will read it."""
    result = run_import(scenario, *references)
    assert result.exit_code == 0, result.output
    folder = scenario.workdir / IMPORTED
    folder.mkdir(exist_ok=True)
    (folder / "imported.yaml").write_text(result.stdout)
    return result.stdout


def images_of(text: str) -> list[dict[str, Any]]:
    """The image entries of an imported document."""
    images = yaml.safe_load(text)["images"]
    assert isinstance(images, list)
    return images


def comments(text: str) -> str:
    """The comments of a document as one line, as a person reads them."""
    said = [line.strip(" #-") for line in text.splitlines() if "#" in line]
    return " ".join(said)


def plan_json(scenario: Scenario) -> dict[str, Any]:
    """The JSON plan of the imported folder."""
    result = scenario.run("plan", "--json", IMPORTED)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def push_fleet(
    scenario: Scenario,
    versions: Sequence[str],
    *,
    siblings: bool = True,
    platform_tags: bool = False,
    fmt: ImageFormat = "docker",
    attestations: bool = False,
    aliases: Sequence[tuple[str, str]] = (),
    image: str = IMAGE,
) -> None:
    """Push indexes of `image` as `docker manifest` or `buildx` leave them.

    Children go to sibling repositories `<image>-<arch>:<version>` (or, with
    `siblings` False, only by digest into the target), and the index lists
    arm64 as `linux/arm64/v8`, as `docker manifest annotate` writes it.
    """
    for version in versions:
        target = f"{scenario.namespace}/{image}"
        children = [
            _child(scenario, target, version, arch, siblings, platform_tags, fmt)
            for arch in ARCHES
        ]
        for tag in (version, *(a for a, v in aliases if v == version)):
            push_index(
                scenario.server,
                target,
                tag,
                children,
                fmt=fmt,
                attestations=attestations,
                credentials=scenario.admin,
            )


def _child(
    scenario: Scenario,
    target: str,
    version: str,
    arch: str,
    siblings: bool,
    platform_tags: bool,
    fmt: ImageFormat,
) -> tuple[PushedImage, str]:
    pushed = push_image(
        scenario.server,
        f"{target}-{arch}" if siblings else target,
        version if siblings else None,
        architecture=arch,
        fmt=fmt,
        seed=f"{version}-{arch}",
        credentials=scenario.admin,
    )
    if platform_tags:
        push_image(
            scenario.server,
            target,
            f"{version}-{arch}",
            architecture=arch,
            fmt=fmt,
            seed=f"{version}-{arch}",
            credentials=scenario.admin,
        )
    return pushed, PLATFORMS[arch]


def test_fleet_made_by_this_tool_round_trips_to_no_changes(
    scenario: Scenario,
) -> None:
    """The seed scenario with aliases, applied, imports to a file that plans nothing."""
    scenario.seed()
    scenario.write_desired()
    assert scenario.run("apply", "--auto-approve").exit_code == 0

    text = import_to_folder(scenario)

    assert scenario.run("validate", IMPORTED).exit_code == 0
    assert scenario.run("plan", "--detailed-exitcode", IMPORTED).exit_code == 0
    [image] = images_of(text)
    assert image["versions"] == ["3.11.3", "3.10.1", "3.9.2", "3.8.5"]
    assert image["platforms"] == ["linux/amd64", "linux/arm64"]
    assert image["platform_tag"] == "{version}-{arch}"
    assert image["source"] == f"{scenario.repository}-{{arch}}:{{version}}"
    assert image["aliases"] == {"latest": "3.11.3", "3.11": "3.11.3"}
    assert "index_media_type" not in image


def test_docker_manifest_flow_plans_only_new_platform_tags(
    scenario: Scenario,
) -> None:
    """Children without tags get a source and free platform tags; no index changes."""
    push_fleet(scenario, ["1.1.0", "1.0.0"], aliases=[("latest", "1.1.0")])

    text = import_to_folder(scenario)
    changes = plan_json(scenario)["changes"]

    [image] = images_of(text)
    assert image["source"] == f"{scenario.repository}-{{arch}}:{{version}}"
    assert image["platforms"] == ["linux/amd64", "linux/arm64/v8"]
    assert image["aliases"] == {"latest": "1.1.0"}
    assert "plan will add 1.1.0-amd64, 1.1.0-arm64" in comments(text)
    assert {(c["action"], c["kind"]) for c in changes} == {("create", "tag")}
    assert sorted(c["address"].rpartition(":")[2] for c in changes) == [
        "1.0.0-amd64",
        "1.0.0-arm64",
        "1.1.0-amd64",
        "1.1.0-arm64",
    ]


def test_docker_manifest_flow_converges_after_one_apply(scenario: Scenario) -> None:
    """Applying the imported file adds the platform tags, then plans nothing."""
    push_fleet(scenario, ["1.0.0"])
    import_to_folder(scenario)
    before = _index_digest(scenario, "1.0.0")

    applied = scenario.run("apply", "--auto-approve", IMPORTED)

    assert applied.exit_code == 0, applied.output
    assert "2 added, 0 changed, 0 destroyed" in applied.stdout
    assert scenario.run("plan", "--detailed-exitcode", IMPORTED).exit_code == 0
    assert _index_digest(scenario, "1.0.0") == before


def _index_digest(scenario: Scenario, tag: str) -> str:
    found = manifest_get(
        scenario.server,
        f"{scenario.namespace}/{IMAGE}",
        tag,
        credentials=scenario.admin,
    )
    return found.digest


def test_children_held_nowhere_else_are_sourced_from_their_own_index(
    scenario: Scenario,
) -> None:
    """Without sibling repositories, the source is the version's own index."""
    push_fleet(scenario, ["2.0.0"], siblings=False)

    text = import_to_folder(scenario)
    changes = plan_json(scenario)["changes"]

    [image] = images_of(text)
    assert image["source"] == f"{scenario.repository}:{{version}}"
    assert "from its own index" in comments(text)
    assert {(c["action"], c["kind"]) for c in changes} == {("create", "tag")}


def test_oci_indexes_with_attestations_round_trip_to_no_changes(
    scenario: Scenario,
) -> None:
    """Attestation entries neither block the import nor show up as drift."""
    push_fleet(
        scenario,
        ["4.2.0", "4.1.0"],
        platform_tags=True,
        fmt="oci",
        attestations=True,
        aliases=[("latest", "4.2.0"), ("4", "4.2.0")],
    )

    text = import_to_folder(scenario)

    assert scenario.run("plan", "--detailed-exitcode", IMPORTED).exit_code == 0
    [image] = images_of(text)
    assert image["platform_tag"] == "{version}-{arch}"
    assert image["aliases"] == {"latest": "4.2.0", "4": "4.2.0"}
    assert "4.2.0: 2 attestation entries (unknown/unknown) ignored" in comments(text)


def test_sibling_indexes_made_by_buildx_are_found_as_the_source(
    scenario: Scenario,
) -> None:
    """A per-arch source that is itself an index with an attestation is matched."""
    target = f"{scenario.namespace}/{IMAGE}"
    children = []
    for arch in ARCHES:
        image = push_image(
            scenario.server,
            f"{target}-{arch}",
            None,
            architecture=arch,
            fmt="oci",
            seed=f"buildx-{arch}",
            credentials=scenario.admin,
        )
        push_index(
            scenario.server,
            f"{target}-{arch}",
            "3.0.0",
            [(image, f"linux/{arch}")],
            fmt="oci",
            attestations=True,
            credentials=scenario.admin,
        )
        children.append((image, f"linux/{arch}"))
    push_index(
        scenario.server,
        target,
        "3.0.0",
        children,
        fmt="oci",
        attestations=True,
        credentials=scenario.admin,
    )

    text = import_to_folder(scenario)
    changes = plan_json(scenario)["changes"]

    [image_entry] = images_of(text)
    assert image_entry["source"] == f"{scenario.repository}-{{arch}}:{{version}}"
    assert {(c["action"], c["kind"]) for c in changes} == {("create", "tag")}


def test_docker_list_of_oci_children_keeps_its_media_type(
    scenario: Scenario,
) -> None:
    """index_media_type is written only where the default would differ."""
    push_fleet(scenario, ["5.0.0"], platform_tags=True, fmt="oci")
    children = [
        (
            push_image(
                scenario.server,
                f"{scenario.namespace}/{IMAGE}-{a}",
                "6.0.0",
                architecture=a,
                fmt="oci",
                seed=f"6-{a}",
                credentials=scenario.admin,
            ),
            f"linux/{a}",
        )
        for a in ARCHES
    ]
    push_index(
        scenario.server,
        f"{scenario.namespace}/{IMAGE}",
        "6.0.0",
        children,
        fmt="docker",
        credentials=scenario.admin,
    )

    text = import_to_folder(scenario)

    assert scenario.run("validate", IMPORTED).exit_code == 0
    types = {tuple(i["versions"]): i.get("index_media_type") for i in images_of(text)}
    assert types == {("6.0.0",): "docker", ("5.0.0",): None}
    assert "split into 2 image entries" in comments(text)
    changes = plan_json(scenario)["changes"]
    assert {(c["action"], c["kind"]) for c in changes} == {("create", "tag")}


def test_unexpressible_and_unrelated_tags_are_reported_as_comments(
    scenario: Scenario,
) -> None:
    """Mis-annotated indexes, single images and signatures are named, not dropped."""
    push_fleet(scenario, ["1.0.0"], platform_tags=True)
    amd = scenario.push_source("9.9.9", "amd64")
    target = f"{scenario.namespace}/{IMAGE}"
    push_index(
        scenario.server,
        target,
        "broken",
        [(amd, "linux/arm64"), (amd, "linux/amd64")],
        credentials=scenario.admin,
    )
    loose = [
        push_image(
            scenario.server,
            target,
            None,
            architecture=arch,
            seed=f"loose-{arch}",
            credentials=scenario.admin,
        )
        for arch in ARCHES
    ]
    push_index(
        scenario.server,
        target,
        "8.0.0",
        [(loose[0], "linux/arm64"), (loose[1], "linux/amd64")],
        credentials=scenario.admin,
    )
    push_image(scenario.server, target, "single", credentials=scenario.admin)
    push_image(
        scenario.server, target, f"sha256-{'a' * 64}.sig", credentials=scenario.admin
    )

    text = import_to_folder(scenario)

    assert scenario.run("plan", "--detailed-exitcode", IMPORTED).exit_code == 0
    assert "left out broken: it lists two children for linux/amd64" in comments(text)
    assert "left out 8.0.0: its index mislabels children" in comments(text)
    assert "left alone, as no version lists them: single" in comments(text)
    assert "left alone: 1 signature tag (" in comments(text)


def test_platform_from_config_wins_over_the_index_annotation(
    scenario: Scenario,
) -> None:
    """An index that mislabels its children is imported as its configs say."""
    amd = scenario.push_source("7.0.0", "amd64")
    arm = scenario.push_source("7.0.0", "arm64")
    target = f"{scenario.namespace}/{IMAGE}"
    push_index(
        scenario.server,
        target,
        "7.0.0",
        [(amd, "linux/arm64"), (arm, "linux/amd64")],
        credentials=scenario.admin,
    )

    text = import_to_folder(scenario)
    changes = plan_json(scenario)["changes"]

    assert "plan will rewrite the index with linux/amd64" in comments(text)
    assert [c["kind"] for c in changes if c["kind"] != "tag"] == ["index"]


def test_importing_a_tag_takes_its_version_and_aliases_only(scenario: Scenario) -> None:
    """repository:alias imports the version it points at, with its aliases."""
    push_fleet(
        scenario, ["1.1.0", "1.0.0"], platform_tags=True, aliases=[("latest", "1.1.0")]
    )

    text = import_to_folder(scenario, f"{scenario.repository}:latest")

    [image] = images_of(text)
    assert image["versions"] == ["1.1.0"]
    assert image["aliases"] == {"latest": "1.1.0"}
    assert scenario.run("plan", "--detailed-exitcode", IMPORTED).exit_code == 0


def test_several_repositories_import_into_one_document(
    scenario: Scenario,
) -> None:
    """Each repository gets its entry; their registry is configured once."""
    push_fleet(scenario, ["1.0.0"], platform_tags=True)
    push_fleet(scenario, ["2.0.0"], platform_tags=True, image="other")
    other = f"{scenario.server.host}/{scenario.namespace}/other"

    text = import_to_folder(scenario, scenario.repository, other)

    assert scenario.run("plan", "--detailed-exitcode", IMPORTED).exit_code == 0
    assert [i["repository"] for i in images_of(text)] == [scenario.repository, other]
    assert list(yaml.safe_load(text)["registries"]) == [scenario.server.host]


def test_insecure_registry_is_written_with_a_credentials_hint(
    registry_http: RegistryServer, namespace: str, tmp_path: Path
) -> None:
    """--insecure gives `insecure: true`; no credentials leaves a commented hint."""
    scenario = Scenario(registry_http, tmp_path, namespace)
    push_fleet(scenario, ["1.0.0"], platform_tags=True)

    result = scenario.run(
        "import", "--insecure", registry_http.host, scenario.repository
    )

    assert result.exit_code == 0, result.output
    (tmp_path / IMPORTED).mkdir()
    (tmp_path / IMPORTED / "imported.yaml").write_text(result.stdout)
    assert scenario.run("plan", "--detailed-exitcode", IMPORTED).exit_code == 0
    assert yaml.safe_load(result.stdout)["registries"] == {
        registry_http.host: {"insecure": True}
    }
    assert "#   username_env: REGISTRY_USERNAME" in result.stdout


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("library/no-host", "does not start with a registry host"),
        ("{repository}@sha256:" + "0" * 64, "not a digest"),
        ("{host}/library/absent-repository", "it has no tags"),
        ("{repository}:absent", "does not exist"),
        ("{repository}:1.0.0-amd64", "not an index"),
    ],
)
def test_import_of_nothing_importable_exits_1(
    scenario: Scenario, reference: str, message: str
) -> None:
    """A reference with no index behind it is an error that says so."""
    if reference.startswith("{repository}:"):
        push_fleet(scenario, ["1.0.0"], platform_tags=True)
    text = reference.format(host=scenario.server.host, repository=scenario.repository)

    result = run_import(scenario, text)

    assert result.exit_code == 1
    assert message in result.stderr
    assert result.stdout == ""


def test_wrong_password_is_an_authentication_error(scenario: Scenario) -> None:
    """Harbor's empty grant for a bad password is reported as such, exit 1."""
    push_fleet(scenario, ["1.0.0"], platform_tags=True)

    result = run_import(scenario, password="wrong")

    assert result.exit_code == 1
    assert "authentication failed" in result.stderr


@pytest.mark.parametrize(
    ("tags", "version"),
    [
        (["latest", "3.11", "3.11.3"], "3.11.3"),
        (["stable", "1"], "1"),
        (["latest", "edge"], "edge"),
        (["latest"], "latest"),
        (["v2.0", "2.0"], "2.0"),
    ],
)
def test_version_is_the_most_version_like_tag(tags: list[str], version: str) -> None:
    """The version has the most dots, then digits; never `latest` if avoidable."""
    assert version_tag(tags) == version


def test_references_name_repositories_or_tags_with_ports() -> None:
    """host:port/path is a whole repository; host:port/path:tag one tag in it."""
    targets = parse_targets(
        ["localhost:5000/a/b", "localhost:5000/a/c:1", "localhost:5000/a/b:2"]
    )

    assert [(str(t.repository), t.tags) for t in targets] == [
        ("localhost:5000/a/b", None),
        ("localhost:5000/a/c", frozenset({"1"})),
    ]
