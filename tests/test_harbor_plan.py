"""plan and apply on Harbor: its rules checked before any write, its artifact API.

The Harbor stand-in fronts the real token registry: desired files name the
stand-in's host, sources are pushed straight into the registry, and what
apply wrote is read back from the registry itself. Writes are counted in the
registry's access log; what the reconciler sent to Harbor, in the stand-in's
record of requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import Result

from reconciler.desired import DesiredStateError, load_desired
from reconciler.desired.jsonschema import desired_state_schema
from reconciler.harbor import Artifact
from reconciler.harbor.live import artifact_platform
from reconciler.oci import DOCKER_MANIFEST_LIST, Digest, Platform, Reference
from reconciler.testkit.accounts import ADMIN, ROBOT
from reconciler.testkit.harbor import HarborAccount, HarborProject, HarborStandIn
from reconciler.testkit.images import manifest_get, push_index
from reconciler.testkit.pki import TestPKI
from reconciler.testkit.registry import RegistryServer
from reconciler.testkit.tokens import TokenService

from .scenario import IMAGE, VERSIONS, Scenario

WRITES = r"/v2/.*/(manifests/.*|blobs/uploads/.*)"
FEW = ("3.11.3", "3.9.2")
"""Versions of the small fleet; the comparisons use all of VERSIONS."""
PULL_ONLY = frozenset(
    {("repository", "pull"), ("artifact", "read"), ("artifact", "list")}
)


@pytest.fixture(autouse=True)
def _no_fact_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run reads the registry afresh, so that request counts compare."""
    monkeypatch.setenv("RECONCILER_NO_CACHE", "1")


@pytest.fixture
def harbor(registry_token: RegistryServer, pki: TestPKI) -> Iterator[HarborStandIn]:
    """A stand-in with a public `library`, before the token registry."""
    stand_in = HarborStandIn(
        registry_token, pki.server, projects=[HarborProject("library", public=True)]
    )
    with stand_in:
        yield stand_in


@dataclass
class Fleet:
    """The seed scenario's sources in the registry, planned through Harbor.

    The sources stay in `library`; the target is `project`/<slug>/IMAGE.
    """

    scenario: Scenario
    harbor: HarborStandIn
    project: str = "library"
    versions: tuple[str, ...] = FEW

    @property
    def target(self) -> str:
        """The target repository's path, without the host."""
        slug = self.scenario.namespace.split("/", 1)[1]
        return f"{self.project}/{slug}/{IMAGE}"

    def address(self, tag: str) -> str:
        return f"{self.harbor.host}/{self.target}:{tag}"

    def write(
        self,
        *,
        kind: str = "auto",
        aliases: dict[str, str] | None = None,
        projects: dict[str, bool] | None = None,
        prune: bool = False,
        versions: tuple[str, ...] | None = None,
    ) -> None:
        """Write the desired state for the stand-in's host."""
        host = self.harbor.host
        versions = self.versions if versions is None else versions
        shown = {"latest": "3.11.3", "3.11": "3.11.3"} if aliases is None else aliases
        lines = [
            "version: 1",
            "registries:",
            f"  {host}:",
            "    ca_file: ../ca.crt",
            f"    kind: {kind}",
            "    credentials: {username_env: HARBOR_USERNAME, "
            "password_env: HARBOR_PASSWORD}",
        ]
        if projects:
            lines.append("projects:")
            lines += [
                f"  {host}/{name}: {{public: {str(public).lower()}}}"
                for name, public in projects.items()
            ]
        source = f"{host}/{self.scenario.namespace}/{IMAGE}-{{arch}}:{{version}}"
        lines += [
            "images:",
            f"  - repository: {host}/{self.target}",
            f"    versions: [{', '.join(json.dumps(v) for v in versions)}]",
            f"    source: {source}",
            f"    prune: {str(prune).lower()}",
            f"    aliases: {json.dumps(shown)}",
        ]
        folder = self.scenario.workdir / "desired"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "java-gdal.yaml").write_text("\n".join(lines) + "\n")

    def run(self, *args: str) -> Result:
        return self.scenario.run(*args)

    def json_plan(self) -> dict[str, Any]:
        result = self.run("plan", "--json")
        assert result.exit_code == 0, result.output
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def held(self, tag: str) -> str:
        """The digest the registry itself holds at `tag` of the target."""
        server = self.scenario.server
        found = manifest_get(server, self.target, tag, credentials=self.scenario.admin)
        return found.digest


def seeded(
    registry: RegistryServer,
    harbor: HarborStandIn,
    namespace: str,
    workdir: Path,
    versions: tuple[str, ...],
) -> Fleet:
    """Single-arch sources of `versions` in `library`, and a desired state."""
    scenario = Scenario(registry, workdir, namespace)
    scenario.seed(versions=versions)
    assert registry.ca_file is not None
    (workdir / "ca.crt").write_bytes(registry.ca_file.read_bytes())
    made = Fleet(scenario, harbor, versions=versions)
    made.write()
    return made


@pytest.fixture
def fleet(
    registry_token: RegistryServer,
    harbor: HarborStandIn,
    namespace: str,
    tmp_path: Path,
) -> Fleet:
    """Two versions of two platforms, with two aliases, to make in `library`."""
    return seeded(registry_token, harbor, namespace, tmp_path, FEW)


@pytest.fixture
def full_fleet(
    registry_token: RegistryServer,
    harbor: HarborStandIn,
    namespace: str,
    tmp_path: Path,
) -> Fleet:
    """The seed scenario: four versions of two platforms, with two aliases."""
    return seeded(registry_token, harbor, namespace, tmp_path, VERSIONS)


def in_project(fleet: Fleet, project: str, user: str = ADMIN) -> Fleet:
    """The same sources, targeted at another project, planned as `user`."""
    fleet.scenario.user = user
    moved = Fleet(fleet.scenario, fleet.harbor, project, fleet.versions)
    moved.write()
    return moved


def writes_since(server: RegistryServer, mark: int) -> int:
    """Manifest and blob writes the registry logged after `mark`."""
    return sum(
        server.count(method, WRITES, since=mark)
        for method in ("PUT", "POST", "PATCH", "DELETE")
    )


def assert_refused_before_any_write(fleet: Fleet, *phrases: str) -> None:
    """plan and apply both exit 1 naming `phrases`, and nothing is written."""
    server = fleet.scenario.server
    mark = server.mark()

    planned = fleet.run("plan")
    applied = fleet.run("apply", "--auto-approve")

    for result in (planned, applied):
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        for phrase in phrases:
            assert phrase in result.stderr
    assert writes_since(server, mark) == 0


# Refusals at plan time ---------------------------------------------------------


def test_missing_project_stops_the_plan_before_any_write(
    fleet: Fleet, unique_slug: str
) -> None:
    """A target project Harbor lacks is a plan error that says how to create it."""
    missing = in_project(fleet, unique_slug)

    assert_refused_before_any_write(
        missing, f"Harbor has no project {unique_slug!r}", "projects:"
    )


def test_proxy_cache_project_stops_the_plan_before_any_write(
    fleet: Fleet, unique_slug: str
) -> None:
    """A proxy-cache target project is a plan error: Harbor takes no pushes there."""
    fleet.harbor.add_project(HarborProject(unique_slug, proxy_cache=True))
    mirror = in_project(fleet, unique_slug)

    assert_refused_before_any_write(mirror, "is a proxy cache", "ordinary project")


def test_immutable_tag_the_plan_would_move_stops_the_plan(fleet: Fleet) -> None:
    """A rebuilt source whose tags are immutable is refused, naming tag and rule."""
    fleet.scenario.user = ADMIN
    make_converged(fleet)
    fleet.harbor.add_project(
        HarborProject("library", public=True, immutable_tags=("3.9.2*",))
    )
    fleet.scenario.push_source("3.9.2", "arm64", seed="rebuilt")

    assert_refused_before_any_write(
        fleet,
        f"{fleet.address('3.9.2-arm64')}: the plan would move this tag",
        "tags matching '3.9.2*'",
        "immutable",
    )


def test_pull_only_robot_stops_the_plan_before_any_write(fleet: Fleet) -> None:
    """A robot account Harbor lets only pull is refused before the first write."""
    password = fleet.scenario.server.users[ROBOT]
    fleet.harbor.add_account(
        HarborAccount(ROBOT, password, permissions={"library": PULL_ONLY})
    )

    assert_refused_before_any_write(fleet, f"{ROBOT} may not push to project library")


def test_converged_fleet_plans_with_a_pull_only_robot(fleet: Fleet) -> None:
    """Push is checked only where the plan writes: a drift check may pull only."""
    make_converged(fleet)
    password = fleet.scenario.server.users[ROBOT]
    fleet.harbor.add_account(
        HarborAccount(ROBOT, password, permissions={"library": PULL_ONLY})
    )

    result = fleet.run("plan", "--detailed-exitcode")

    assert result.exit_code == 0, result.output


# projects: ---------------------------------------------------------------------


def test_declared_project_is_created_first_then_its_images(
    fleet: Fleet, unique_slug: str
) -> None:
    """A saved plan creates the private project, then the images, read back."""
    created = in_project(fleet, unique_slug)
    created.write(projects={unique_slug: False})
    saved = fleet.scenario.workdir / "plan.json"

    report = fleet.scenario.workdir / "report.json"

    planned = created.run("plan", "--out", str(saved), "--gitlab-report", str(report))
    document = created.json_plan()
    applied = created.run("apply", "--plan", str(saved))

    assert planned.exit_code == 0, planned.output
    assert f"+ project {fleet.harbor.host}/{unique_slug} (private)" in planned.stdout
    assert "Plan: 9 to add, 0 to change, 0 to destroy." in planned.stdout
    assert document["changes"][0] == {
        "action": "create",
        "kind": "project",
        "address": f"{fleet.harbor.host}/{unique_slug}",
        "before": None,
        "after": None,
        "public": False,
    }
    assert document["summary"] == {"add": 9, "change": 0, "destroy": 0}
    counts = json.loads(report.read_text())
    assert counts == {"create": 9, "update": 0, "delete": 0}
    assert applied.exit_code == 0, applied.output
    assert "Apply complete! 9 added" in applied.stdout
    project = fleet.harbor.project(unique_slug)
    assert project is not None
    assert project.public is False
    sources = fleet.scenario.sources
    assert created.held("3.9.2-arm64") == sources[("3.9.2", "arm64")].digest
    index = manifest_get(
        fleet.scenario.server,
        created.target,
        "3.9.2",
        credentials=fleet.scenario.admin,
    )
    assert index.media_type == DOCKER_MANIFEST_LIST
    assert created.run("plan", "--detailed-exitcode").exit_code == 0


def test_declared_project_cannot_be_created_by_a_robot(
    fleet: Fleet, unique_slug: str
) -> None:
    """Harbor lets robots create no project: the plan says so before any write."""
    created = in_project(fleet, unique_slug, user=ROBOT)
    created.write(projects={unique_slug: True})

    assert_refused_before_any_write(created, "cannot create projects")


# The artifact reader -------------------------------------------------------------


def make_created(fleet: Fleet) -> None:
    """Nothing applied yet: every address is to be created."""


def make_converged(fleet: Fleet) -> None:
    """Applied: the plan is empty."""
    result = fleet.run("apply", "--auto-approve")
    assert result.exit_code == 0, result.output


def make_drifted(fleet: Fleet) -> None:
    """Applied, then a rebuilt source, an index rewritten by another tool in
    OCI, a tag moved by hand, and a new alias of an unchanged version.
    """
    make_converged(fleet)
    scenario = fleet.scenario
    scenario.push_source("3.9.2", "arm64", seed="rebuilt")
    sources = scenario.sources
    push_index(
        scenario.server,
        fleet.target,
        "3.8.5",
        [
            (sources[("3.8.5", "amd64")], "linux/amd64"),
            (sources[("3.8.5", "arm64")], "linux/arm64"),
        ],
        fmt="oci",
        credentials=scenario.admin,
    )
    moved = sources[("3.10.1", "arm64")]
    with scenario.client() as client:
        client.manifest_put(
            _ref(fleet, "3.10.1-amd64"), moved.manifest, moved.media_type
        )
    fleet.write(aliases={"latest": "3.11.3", "3.11": "3.11.3", "stable": "3.10.1"})


def make_pruned(fleet: Fleet) -> None:
    """Applied, then 3.8.5 dropped from a pruning image: three destroys."""
    fleet.scenario.user = ADMIN
    make_converged(fleet)
    fleet.write(prune=True, versions=VERSIONS[:3])


def _ref(fleet: Fleet, tag: str) -> Reference:
    return Reference.parse(f"{fleet.scenario.server.host}/{fleet.target}:{tag}")


def plan_and_count(fleet: Fleet) -> tuple[dict[str, Any], dict[str, int]]:
    """`plan --json`, and the requests it sent to Harbor, by API.

    The stand-in records what the reconciler sent it.
    """
    fleet.harbor.clear_requests()
    document = fleet.json_plan()
    sent = fleet.harbor.requests
    counts = {
        "v2": sum(r.path.startswith("/v2/") for r in sent),
        "v2 GET": sum(r.path.startswith("/v2/") and r.method == "GET" for r in sent),
        "api": sum(r.path.startswith("/api/") for r in sent),
    }
    return document, counts


@pytest.mark.parametrize(
    "make",
    [make_created, make_drifted, make_converged, make_pruned],
    ids=["created", "drifted", "converged", "pruned"],
)
def test_artifact_reader_plans_exactly_as_the_v2_reader(
    full_fleet: Fleet, make: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same `--json` plan from the artifact API as from /v2, in fewer /v2 requests.

    Fewer requests in all, too, once the fleet exists: for a fleet not yet
    made, the /v2 reader lists each missing repository's tags once and reads
    its sources with GET, which is as cheap as the artifact listings.
    """
    fleet = full_fleet
    make(fleet)
    desired = fleet.scenario.workdir / "desired" / "java-gdal.yaml"
    text = desired.read_text()

    through_artifacts, harbor = plan_and_count(fleet)
    desired.write_text(text.replace("kind: auto", "kind: registry"))
    through_v2, plain = plan_and_count(fleet)

    assert through_artifacts == through_v2
    assert plain["api"] == 0  # kind: registry asks Harbor nothing
    assert harbor["v2"] < plain["v2"]
    assert harbor["v2 GET"] <= plain["v2 GET"]
    if make is not make_created:
        assert harbor["v2"] + harbor["api"] < plain["v2"]
    with capsys.disabled():
        print(f"\n  {make.__name__}: artifact API {harbor}, /v2 only {plain}")


def test_artifact_reader_heads_ride_on_tokens_asked_together(
    full_fleet: Fleet, token_service: TokenService
) -> None:
    """The HEADs the artifact reader still sends through /v2 (the exact size
    of each source image) come with one token request for all their
    repositories, not one request per repository, and one HEAD an image.
    """
    make_converged(full_fleet)
    full_fleet.harbor.clear_requests()
    token_service.clear_requests()

    assert full_fleet.run("plan", "--detailed-exitcode").exit_code == 0

    heads = [r for r in full_fleet.harbor.requests if r.method == "HEAD"]
    assert len(heads) == 2 * len(VERSIONS)  # amd64 and arm64 sources
    assert len({head.path.split("/manifests/")[0] for head in heads}) == 2
    assert token_service.request_count == 1


# Pruning with Harbor's tag API ------------------------------------------------------


def test_prune_deletes_a_tag_alone_where_harbor_can(fleet: Fleet) -> None:
    """An alias dropped from the file is destroyed; its index keeps its other tags."""
    fleet.scenario.user = ADMIN
    make_converged(fleet)
    index = fleet.held("3.11.3")
    fleet.write(prune=True, aliases={"latest": "3.11.3"})
    desired = fleet.scenario.workdir / "desired" / "java-gdal.yaml"
    text = desired.read_text()

    desired.write_text(text.replace("kind: auto", "kind: registry"))
    through_v2 = fleet.run("plan")
    desired.write_text(text)
    planned = fleet.run("plan")
    applied = fleet.run("apply", "--auto-approve")

    assert "3.11 is no longer desired but is kept" in through_v2.stdout
    assert f"- alias {fleet.address('3.11')}" in planned.stdout
    assert "Plan: 0 to add, 0 to change, 1 to destroy." in planned.stdout
    assert applied.exit_code == 0, applied.output
    with fleet.scenario.client() as client:
        assert client.manifest_head(_ref(fleet, "3.11")) is None
    assert fleet.held("3.11.3") == fleet.held("latest") == index
    assert fleet.run("plan", "--detailed-exitcode").exit_code == 0


# Refusals at apply time ----------------------------------------------------------


def test_apply_tells_harbors_412_as_an_immutable_tag(fleet: Fleet) -> None:
    """A rule made between plan and apply: the 412 names the tag and what to do."""
    make_converged(fleet)
    fleet.scenario.push_source("3.9.2", "arm64", seed="rebuilt")
    saved = fleet.scenario.workdir / "plan.json"
    assert fleet.run("plan", "--out", str(saved)).exit_code == 0
    before = fleet.held("3.9.2-arm64")
    fleet.harbor.add_project(
        HarborProject("library", public=True, immutable_tags=("3.9.2-arm64",))
    )

    result = fleet.run("apply", "--plan", str(saved))

    assert result.exit_code == 1, result.output
    line = next(
        x for x in result.stderr.splitlines() if "failed  " in x and "3.9.2-arm64" in x
    )
    assert "is immutable under a tag immutability rule" in line
    assert "skipped " in result.stderr  # the index waits on its child
    assert fleet.held("3.9.2-arm64") == before


# Detection -----------------------------------------------------------------------


def test_plain_registry_is_asked_once_whether_it_runs_harbor(
    registry_token: RegistryServer, namespace: str, tmp_path: Path
) -> None:
    """One systeminfo request per host, answered 404, and the /v2 reader as before."""
    scenario = Scenario(registry_token, tmp_path, namespace)
    scenario.seed(versions=("3.8.5",))
    scenario.write_desired(versions=("3.8.5",), aliases={})
    mark = registry_token.mark()

    result = scenario.run("plan")

    assert result.exit_code == 0, result.output
    api = [e for e in registry_token.access_log(mark) if e.path.startswith("/api/")]
    assert [(e.method, e.path, e.status) for e in api] == [
        ("GET", "/api/v2.0/systeminfo", 404)
    ]


# projects: in the files ------------------------------------------------------------


def test_project_declared_two_ways_names_both_files(tmp_path: Path) -> None:
    """One project, public in one file and private in another, is a problem."""
    folder = tmp_path / "desired"
    folder.mkdir()
    head = "version: 1\nregistries:\n  harbor.example.com: {}\nprojects:\n"
    (folder / "a.yaml").write_text(head + "  harbor.example.com/team: {}\n")
    (folder / "b.yaml").write_text(
        head + "  harbor.example.com/team:\n    public: true\n"
    )

    with pytest.raises(DesiredStateError) as caught:
        load_desired([folder])

    [problem] = caught.value.problems
    assert (problem.file, problem.line, problem.column) == (
        str(folder / "b.yaml"),
        5,
        3,
    )
    assert "declared public here and private in" in problem.message
    assert str(folder / "a.yaml") in problem.message


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("harbor.example.com/a/b", "names a repository, not a project"),
        ("harbor.example.com/Team", "is not a project"),
        ("team", "is not a project"),
    ],
)
def test_project_address_must_be_host_and_project(
    tmp_path: Path, key: str, message: str
) -> None:
    """A `projects:` key is host/project, nothing more, nothing less."""
    path = tmp_path / "d.yaml"
    path.write_text(f"version: 1\nprojects:\n  {key}: {{public: false}}\n")

    with pytest.raises(DesiredStateError) as caught:
        load_desired([path])

    [problem] = caught.value.problems
    assert (problem.line, problem.column) == (3, 3)
    assert message in problem.message


def test_schema_knows_projects() -> None:
    """Editors accept `projects:` with `public`, and flag any other setting."""
    validator = jsonschema.Draft202012Validator(desired_state_schema())
    good = {"version": 1, "projects": {"h.example.com/team": {"public": True}}}
    bad = {"version": 1, "projects": {"h.example.com/team": {"quota": 1}}}

    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors(bad))


# Platforms from extra_attrs --------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"os": "linux", "architecture": "amd64"}, Platform("linux", "amd64")),
        ({"os": "linux", "architecture": "arm", "variant": "v7"}, "linux/arm/v7"),
        ({"os": "linux", "architecture": "arm64", "variant": ""}, "linux/arm64"),
        ({"os": "linux", "architecture": "arm64"}, None),
        ({"architecture": "amd64"}, None),
        ({}, None),
    ],
)
def test_extra_attrs_give_a_platform_only_when_they_can_tell(
    attrs: dict[str, str], expected: Platform | str | None
) -> None:
    """Harbor keeps no variant, so an arm image without one is read from /v2."""
    artifact = Artifact(
        digest=Digest("sha256:" + "0" * 64),
        media_type="application/vnd.docker.container.image.v1+json",
        manifest_media_type="application/vnd.docker.distribution.manifest.v2+json",
        size=1,
        extra_attrs=attrs,
    )
    wanted = Platform.parse(expected) if isinstance(expected, str) else expected

    assert artifact_platform(artifact) == wanted
