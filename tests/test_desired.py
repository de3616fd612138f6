"""The desired-state loader: good files load, bad ones say where, why, what to do.

Bad inputs are golden files: `tests/data/desired/bad/NAME.yaml` (or a folder
`NAME/` of several files) is loaded and the error's text must equal
`NAME.expected`. `UPDATE_GOLDEN=1 pytest tests/test_desired.py` rewrites the
goldens; read every changed one before committing it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.desired import (
    Credentials,
    DesiredState,
    DesiredStateError,
    Image,
    Problem,
    RegistrySettings,
    load_desired,
)
from reconciler.oci import Platform, Reference, Repository

DATA = Path(__file__).parent / "data" / "desired"
BAD = DATA / "bad"
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"

AMD64 = Platform.parse("linux/amd64")
ARM64 = Platform.parse("linux/arm64")
JAVA_GDAL = "harbor.example.com/library/java-gdal-local"


@pytest.fixture
def in_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in the data folder, so that file names in messages are short."""
    monkeypatch.chdir(DATA)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder to write files in, which is also the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def known_to_docker(host: str) -> bool:
    """Docker's config as the golden cases see it: it knows the example Harbor."""
    return host == "harbor.example.com"


def load_error(*paths: Path | str, **kwargs: Any) -> DesiredStateError:
    """The error that loading `paths` raises."""
    with pytest.raises(DesiredStateError) as caught:
        load_desired([Path(path) for path in paths], **kwargs)
    return caught.value


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def bad_cases() -> Iterator[str]:
    for entry in sorted(BAD.iterdir()):
        if entry.suffix == ".yaml" or entry.is_dir():
            yield entry.name


# The valid example of the product brief.


def test_brief_example_loads_into_expected_model(in_data: None) -> None:
    """The java-gdal example loads with its registry, versions and aliases."""
    state = load_desired([Path("good")], known_hosts=known_to_docker)

    assert state == DesiredState(
        registries={
            "harbor.example.com": RegistrySettings(
                host="harbor.example.com",
                ca_file=(DATA / "certs" / "ca.crt").resolve(),
                credentials=Credentials("HARBOR_USERNAME", "HARBOR_PASSWORD"),
            )
        },
        images=(
            Image(
                repository=Repository.parse(JAVA_GDAL),
                versions=("3.11.3", "3.10.1", "3.9.2", "3.8.5"),
                platforms=(AMD64, ARM64),
                platform_tag="{version}-{arch}",
                source="harbor.example.com/library/java-gdal-local-{arch}:{version}",
                aliases={"latest": "3.11.3", "3.11": "3.11.3"},
                file="good/java-gdal.yaml",
                line=16,
            ),
        ),
    )


def test_brief_example_expands_to_platform_tags_sources_and_aliases(
    in_data: None,
) -> None:
    """Every version and platform gets its platform tag and its source."""
    (image,) = load_desired([Path("good")]).images

    assert image.platform_tag_for("3.8.5", ARM64) == "3.8.5-arm64"
    assert image.platform_ref("3.8.5", AMD64) == Reference.parse(
        f"{JAVA_GDAL}:3.8.5-amd64"
    )
    assert image.source_ref("3.10.1", ARM64) == Reference.parse(
        "harbor.example.com/library/java-gdal-local-arm64:3.10.1"
    )
    assert image.version_ref("3.9.2") == Reference.parse(f"{JAVA_GDAL}:3.9.2")
    assert image.alias_ref("3.11") == Reference.parse(f"{JAVA_GDAL}:3.11")
    assert image.aliases["latest"] == "3.11.3"
    assert len(image.tags()) == 4 + 4 * 2 + 2


def test_image_refuses_versions_and_aliases_it_does_not_have(in_data: None) -> None:
    """Asking for an unlisted version, platform or alias is a KeyError."""
    (image,) = load_desired([Path("good")]).images

    with pytest.raises(KeyError):
        image.version_ref("9.9.9")
    with pytest.raises(KeyError):
        image.platform_ref("3.8.5", Platform.parse("linux/s390x"))
    with pytest.raises(KeyError):
        image.alias_ref("stable")


def test_loaded_state_is_frozen(in_data: None) -> None:
    """Neither the state nor an image's aliases can be changed after loading."""
    state = load_desired([Path("good")])
    image = state.images[0]

    with pytest.raises(dataclasses.FrozenInstanceError):
        image.prune = True  # type: ignore[misc]  # the point of the test
    with pytest.raises(TypeError):
        image.aliases["stable"] = "3.8.5"  # type: ignore[index]  # read-only view
    with pytest.raises(TypeError):
        state.registries["x.example.com"] = state.registries["harbor.example.com"]  # type: ignore[index]  # read-only view


# Defaults and merging.


def test_built_in_defaults_apply_when_the_file_sets_none(folder: Path) -> None:
    """Without defaults, images are built for linux/amd64 and linux/arm64."""
    write(
        folder / "app.yaml",
        'version: 1\nimages:\n  - repository: r.example.com/app\n    versions: ["1"]\n',
    )

    (image,) = load_desired([Path("app.yaml")]).images

    assert image.platforms == (AMD64, ARM64)
    assert image.platform_tag == "{version}-{arch}"
    assert image.source_ref("1", AMD64) is None
    assert image.platform_ref("1", ARM64) == Reference.parse(
        "r.example.com/app:1-arm64"
    )


def test_defaults_apply_only_to_images_of_their_own_file(folder: Path) -> None:
    """A file's defaults do not leak into the images of another file."""
    write(
        folder / "a.yaml",
        "version: 1\ndefaults:\n  platforms: [linux/s390x]\n"
        '  platform_tag: "{arch}-{version}"\n'
        'images:\n  - repository: r.example.com/a\n    versions: ["1"]\n',
    )
    write(
        folder / "b.yaml",
        'version: 1\nimages:\n  - repository: r.example.com/b\n    versions: ["1"]\n',
    )

    a, b = load_desired([folder]).images

    assert (a.platforms, a.platform_tag_for("1", a.platforms[0])) == (
        (Platform.parse("linux/s390x"),),
        "s390x-1",
    )
    assert (b.platforms, b.platform_tag) == ((AMD64, ARM64), "{version}-{arch}")


def test_variant_placeholder_is_empty_without_a_variant(folder: Path) -> None:
    """`{variant}` gives `v7` for linux/arm/v7 and nothing for linux/amd64."""
    write(
        folder / "a.yaml",
        "version: 1\nimages:\n  - repository: r.example.com/a\n"
        '    versions: ["1"]\n    platforms: [linux/amd64, linux/arm/v7]\n'
        '    platform_tag: "{version}-{os}-{arch}{variant}"\n',
    )

    (image,) = load_desired([Path("a.yaml")]).images

    tags = [image.platform_tag_for("1", platform) for platform in image.platforms]
    assert tags == ["1-linux-amd64", "1-linux-armv7"]


def test_images_of_all_files_are_merged_and_sorted_by_repository(
    folder: Path,
) -> None:
    """Files in a folder tree are merged, and images sorted by repository."""
    for name, repository in [("z.yaml", "b"), ("sub/a.yml", "c"), ("m.yaml", "a")]:
        write(
            folder / "desired" / name,
            f"version: 1\nimages:\n  - repository: r.example.com/{repository}\n"
            '    versions: ["1"]\n',
        )
    write(folder / "desired" / "notes.txt", "not desired state")

    state = load_desired([Path("desired")])

    assert [str(image.repository) for image in state.images] == [
        "r.example.com/a",
        "r.example.com/b",
        "r.example.com/c",
    ]
    assert state.images[2].file == os.path.join("desired", "sub", "a.yml")


def test_file_with_only_registries_is_valid(folder: Path) -> None:
    """Registries may live in a file of their own, without images."""
    write(folder / "r.yaml", "version: 1\nregistries:\n  localhost:5000:\n")

    state = load_desired([Path("r.yaml")])

    assert state.registries["localhost:5000"] == RegistrySettings("localhost:5000")
    assert state.images == ()


def test_registry_configured_identically_in_two_files_is_valid(folder: Path) -> None:
    """Two files may repeat a registry entry as long as they agree."""
    entry = "version: 1\nregistries:\n  r.example.com:\n    kind: harbor\n"
    write(folder / "a.yaml", entry)
    write(folder / "b.yaml", entry)

    state = load_desired([folder])

    assert state.registries["r.example.com"].kind == "harbor"


def test_file_named_twice_is_loaded_once(folder: Path) -> None:
    """A file given itself and inside its folder is not a conflict with itself."""
    write(
        folder / "a.yaml",
        'version: 1\nimages:\n  - repository: r.example.com/a\n    versions: ["1"]\n',
    )

    state = load_desired([folder, folder / "a.yaml"])

    assert len(state.images) == 1


def test_known_hosts_is_asked_once_per_host_without_registries_entry(
    folder: Path,
) -> None:
    """Docker's config is consulted only for hosts the files do not configure."""
    write(
        folder / "a.yaml",
        "version: 1\nregistries:\n  r.example.com:\nimages:\n"
        '  - repository: r.example.com/a\n    versions: ["1", "2"]\n'
        "    source: ci.example.com/a-{arch}:{version}\n"
        '  - repository: r.example.com/b\n    versions: ["1"]\n'
        "    source: ci.example.com/b:{version}\n",
    )
    asked: list[str] = []

    def known_hosts(host: str) -> bool:
        asked.append(host)
        return True

    load_desired([folder], known_hosts=known_hosts)

    assert asked == ["ci.example.com"]


# Bad input: one golden per kind of problem.


@pytest.mark.parametrize("name", list(bad_cases()))
def test_bad_input_is_reported_as_in_golden_file(name: str, in_data: None) -> None:
    """Every problem is reported with file:line:column, path, message and hint."""
    error = load_error(Path("bad") / name, known_hosts=known_to_docker)
    golden = BAD / f"{Path(name).stem}.expected"

    if UPDATE_GOLDEN:
        golden.write_text(f"{error}\n")
    assert f"{error}\n" == golden.read_text()
    assert all(problem.line >= 1 for problem in error.problems)


def test_problems_are_structured_as_well_as_printed(in_data: None) -> None:
    """Each problem carries its file, position, path, message and hint."""
    error = load_error("bad/unknown_field.yaml")

    assert error.problems == (
        Problem(
            file="bad/unknown_field.yaml",
            line=5,
            column=5,
            path="images[0].platfroms",
            message="unknown field 'platfroms'",
            hint="did you mean 'platforms'?",
        ),
    )
    assert error.hint is None
    assert str(error).endswith("\n1 problem in 1 file")


def test_secrets_written_by_mistake_are_never_echoed(in_data: None) -> None:
    """A password put where an environment variable's name belongs is not shown."""
    error = load_error("bad/bad_env_name.yaml", "bad/secret_in_file.yaml")

    assert "hunter2" not in str(error)
    assert "s3cret" not in str(error)


def test_loading_nothing_is_a_programming_error() -> None:
    """An empty list of paths is refused; the CLI defaults to desired/."""
    with pytest.raises(ValueError, match="at least one path"):
        load_desired([])


def test_file_larger_than_one_mebibyte_is_refused_unread(folder: Path) -> None:
    """A file over 1 MiB is refused before parsing, whatever its content."""
    write(folder / "big.yaml", "version: 1\n" + "#" * (1024 * 1024))

    error = load_error("big.yaml")

    assert str(error) == (
        "big.yaml:1:1: the file is larger than 1 MiB\n"
        "  hint: split the desired state into several files in the folder\n"
        "1 problem in 1 file"
    )


def test_missing_path_and_empty_folder_are_reported(folder: Path) -> None:
    """A path that does not exist, and a folder with no YAML, are problems."""
    (folder / "empty").mkdir()

    error = load_error("nowhere", "empty")

    assert [str(problem) for problem in error.problems] == [
        "empty:1:1: no .yaml or .yml files in this folder",
        "nowhere:1:1: no such file or folder",
    ]


def test_symlink_out_of_the_folder_is_refused(folder: Path) -> None:
    """A link inside a folder that leads outside it is not followed."""
    outside = write(folder / "outside.yaml", "version: 1\n")
    write(folder / "desired" / "ok.yaml", "version: 1\n")
    (folder / "desired" / "link.yaml").symlink_to(outside)

    error = load_error("desired")

    (problem,) = error.problems
    assert (problem.file, problem.message) == (
        os.path.join("desired", "link.yaml"),
        f"symbolic link to {str(outside.resolve())!r}, outside 'desired'",
    )


def test_symlink_within_the_folder_is_followed(folder: Path) -> None:
    """A link that stays inside the folder is loaded like any file."""
    write(
        folder / "desired" / "real" / "a.yaml",
        'version: 1\nimages:\n  - repository: r.example.com/a\n    versions: ["1"]\n',
    )
    (folder / "desired" / "link.yaml").symlink_to(Path("real") / "a.yaml")

    state = load_desired([Path("desired")])

    assert len(state.images) == 1


# Robustness.


def test_loader_opens_no_socket(in_data: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading good and bad files never touches the network."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the loader opened a socket")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)

    load_desired([Path("good")], known_hosts=known_to_docker)
    for name in bad_cases():
        load_error(Path("bad") / name, known_hosts=known_to_docker)


YAMLISH = st.text(alphabet=" \t\n-:[]{},'\"#&*!|>?%@`.~0123456789abcversion")
LINES = st.lists(
    st.sampled_from(
        [
            "version: 1",
            "images:",
            "  - repository: r.example.com/a",
            "    versions: [1.0, '2']",
            "    aliases: {latest: '2', x: 3}",
            "    platforms: [linux/amd64, linux/arm64/v8]",
            "registries:",
            "  r.example.com: {insecure: yes}",
            "defaults: {platform_tag: '{arch}'}",
            "\t- x",
            "- &a [*a]",
        ]
    )
).map("\n".join)


@settings(max_examples=300, deadline=None)
@given(content=st.one_of(st.binary(), st.text(), YAMLISH, LINES))
def test_any_content_gives_a_state_or_located_problems(content: bytes | str) -> None:
    """Random bytes or text load, or fail with problems at lines >= 1; no crash."""
    data = content.encode() if isinstance(content, str) else content
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "random.yaml"
        path.write_bytes(data)
        outcome = load_or_error(path)

    if isinstance(outcome, DesiredStateError):
        assert outcome.problems
        assert all(problem.line >= 1 for problem in outcome.problems)
    else:
        assert isinstance(outcome, DesiredState)


def load_or_error(path: Path) -> DesiredState | DesiredStateError:
    """The state loaded from `path`, or the error that says why not."""
    try:
        return load_desired([path])
    except DesiredStateError as error:
        return error
