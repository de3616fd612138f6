"""--shard K/N: a stable split of the desired state by repository."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.desired import DesiredState, Image, ProjectSettings
from reconciler.oci import Platform, Repository
from reconciler.shard import InvalidShardError, Shard, choose_shard, shard_of

LINUX = (Platform.parse("linux/amd64"), Platform.parse("linux/arm64"))


def image(repository: str, version: str = "1.0") -> Image:
    return Image(
        repository=Repository.parse(repository),
        versions=(version,),
        platforms=LINUX,
        platform_tag="{version}-{arch}",
    )


def fleet(count: int) -> DesiredState:
    names = sorted(f"harbor.example.com/team-{i % 7}/app-{i}" for i in range(count))
    return DesiredState(images=tuple(image(name) for name in names))


@pytest.mark.parametrize("total", [1, 2, 3, 5, 8])
def test_shards_cover_every_image_exactly_once(total: int) -> None:
    """N shards partition the images: each lands in one shard, none is lost."""
    desired = fleet(200)
    parts = [Shard(k, total).select(desired).images for k in range(1, total + 1)]
    seen = [str(i.repository) for part in parts for i in part]
    assert sorted(seen) == sorted(str(i.repository) for i in desired.images)
    assert len(seen) == len(set(seen))


def test_shard_of_a_repository_is_pinned_across_runs_and_machines() -> None:
    """The split is sha256 of the full name mod N: these values never change."""
    name = "harbor.example.com/library/java-gdal-local"
    assert [shard_of(name, n) for n in (1, 2, 3, 4, 10)] == [1, 1, 2, 1, 3]
    assert shard_of("127.0.0.1:5000/library/x", 4) == 1


def test_shards_are_roughly_even() -> None:
    """With many repositories no shard holds far more than its share."""
    desired = fleet(400)
    sizes = [len(Shard(k, 4).select(desired).images) for k in range(1, 5)]
    assert min(sizes) > 70
    assert max(sizes) < 130


def test_images_of_one_repository_stay_together() -> None:
    """Two entries for one repository are planned by the same job."""
    same = "harbor.example.com/library/x"
    desired = DesiredState(images=(image(same, "1.0"), image(same, "2.0")))
    counts = [len(Shard(k, 3).select(desired).images) for k in (1, 2, 3)]
    assert sorted(counts) == [0, 0, 2]


def test_selecting_keeps_registries_and_order() -> None:
    """Only images are filtered; registry settings stay for every job."""
    desired = fleet(50)
    kept = Shard(2, 3).select(desired)
    assert kept.registries == desired.registries
    names = [str(i.repository) for i in kept.images]
    assert names == sorted(names)


def test_declared_projects_go_with_the_shards_that_use_them() -> None:
    """Each shard creates the projects its images need; an unused one, once."""
    host = "harbor.example.com"
    projects = {
        f"{host}/{name}": ProjectSettings(host, name) for name in ("team-0", "spare")
    }
    desired = dataclasses.replace(fleet(60), projects=projects)
    shards = [Shard(k, 3).select(desired) for k in (1, 2, 3)]
    for shard in shards:
        uses_team_0 = any(i.repository.project == "team-0" for i in shard.images)
        assert (f"{host}/team-0" in shard.projects) == uses_team_0
    assert sum(f"{host}/spare" in shard.projects for shard in shards) == 1


@pytest.mark.parametrize(
    ("text", "expected"), [("1/4", Shard(1, 4)), (" 3 / 3 ", Shard(3, 3))]
)
def test_shard_parses_k_of_n(text: str, expected: Shard) -> None:
    """K/N is read with K counted from 1, as GitLab counts jobs."""
    assert Shard.parse(text) == expected
    assert str(expected) == f"{expected.index}/{expected.total}"


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "1", "a/b", "1/2/3", "-1/2"])
def test_shard_refuses_what_is_not_k_of_n(text: str) -> None:
    """Anything but 1 <= K <= N is refused with a hint."""
    with pytest.raises(InvalidShardError) as caught:
        Shard.parse(text)
    assert caught.value.hint


def test_gitlab_parallel_variables_choose_the_shard() -> None:
    """CI_NODE_INDEX/CI_NODE_TOTAL (parallel: N) give the shard."""
    env = {"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "3"}
    assert choose_shard(None, env) == Shard(2, 3)


def test_option_wins_over_gitlab_variables() -> None:
    """An explicit --shard overrides what GitLab set."""
    env = {"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "3"}
    assert choose_shard("1/2", env) == Shard(1, 2)


@pytest.mark.parametrize("env", [{}, {"CI_NODE_TOTAL": "1"}, {"CI_NODE_INDEX": ""}])
def test_no_shard_without_a_node_index(env: dict[str, str]) -> None:
    """GitLab sets CI_NODE_TOTAL=1 on every job; only parallel jobs shard."""
    assert choose_shard(None, env) is None


def test_bad_gitlab_variables_are_an_error() -> None:
    """A node index that is not a number names both variables."""
    with pytest.raises(InvalidShardError, match="CI_NODE_INDEX"):
        choose_shard(None, {"CI_NODE_INDEX": "x", "CI_NODE_TOTAL": "3"})


def write_desired(folder: Path) -> Path:
    desired = folder / "desired"
    desired.mkdir()
    (desired / "images.yaml").write_text(
        "version: 1\n"
        "registries:\n"
        "  127.0.0.1:9:\n"
        "    insecure: true\n"
        "images:\n"
        "  - repository: 127.0.0.1:9/library/app\n"
        '    versions: ["1.0"]\n'
    )
    return folder


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_cli_refuses_a_bad_shard_before_any_network_call(
    tmp_path: Path, command: str
) -> None:
    """plan and apply reject --shard 0/2 at once; the registry is never asked."""
    folder = write_desired(tmp_path)
    result = CliRunner().invoke(
        main, ["--chdir", str(folder), command, "--shard", "0/2"]
    )
    assert result.exit_code == 1
    assert "invalid shard 0/2" in result.output


def test_cli_refuses_shard_with_a_saved_plan(tmp_path: Path) -> None:
    """A saved plan already holds one shard's changes."""
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    result = CliRunner().invoke(main, ["apply", "--plan", str(plan), "--shard", "1/2"])
    assert result.exit_code == 1
    assert "either --shard or --plan" in result.output
