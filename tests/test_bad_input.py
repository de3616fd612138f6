"""Bad input, exhaustively: every broken desired state fails cleanly, with a place.

The corpus is `tests/data/corpus/`: one file (or folder) per failure class
of the product brief and more. Inputs that are big, binary, or links, pipes
and devices are made at test time in `tmp_path`. Every case runs through the
command line, `validate` and `plan`, and must end with exit 1, a message
with `FILE:LINE:COLUMN:`, no traceback, in bounded time and memory:

- in process, with the peak of Python allocations measured;
- the hostile ones (huge, deep, exploding, or able to block a reader) as
  real subprocesses under `setrlimit` and a watchdog, with the child's peak
  resident memory read back from `wait4`.

Then property tests (hypothesis) of the OCI value types: every input gives
a value or the module's typed error, never another exception, and what
prints parses back to the same value.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reconciler.cli import main
from reconciler.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Digest,
    ImageManifest,
    Index,
    InvalidDigestError,
    InvalidManifestError,
    InvalidPlatformError,
    InvalidReferenceError,
    Platform,
    Reference,
    Repository,
    build_index,
    parse_manifest,
    validate_tag,
)
from reconciler.oci.platform import KNOWN_ARCHITECTURES, KNOWN_OS

CORPUS = Path(__file__).parent / "data" / "corpus"
HEADER = "version: 1\nregistries:\n  harbor.example.com: {}\n"
IMAGE = "images:\n  - repository: harbor.example.com/library/app\n"
COMMANDS = ("validate", "plan")
# Bounds: generous for a loaded two-core machine, tight for a runaway.
SECONDS = 10.0
PYTHON_PEAK = 64 * 1024 * 1024  # bytes allocated by Python at once
CHILD_RSS = 256 * 1024 * 1024  # resident bytes of a whole `reconciler` process
CHILD_ADDRESS_SPACE = 3 * 1024**3  # the interpreter alone maps about 1.2 GiB


@dataclass(frozen=True)
class Case:
    """A broken input, where the first problem is, and what it says."""

    name: str
    where: str
    """What follows the path given: ``:LINE:COLUMN``, or ``/FILE:LINE:COLUMN``."""
    says: str
    make: Callable[[Path], Path] | None = None
    """Builds the input in a folder and returns the path to give; None: the
    corpus entry of that name."""

    def given(self, folder: Path) -> Path:
        """The path to give the command line."""
        if self.make is not None:
            return self.make(folder)
        single = CORPUS / f"{self.name}.yaml"
        return single if single.exists() else CORPUS / self.name


# -- inputs made at test time ------------------------------------------------


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return make


def _big(folder: Path) -> Path:
    path = folder / "big.yaml"
    with path.open("wb") as stream:
        stream.write(HEADER.encode())
        chunk = b"# padding\n" * 100_000
        for _ in range(50):  # 50 MB, written as a user's tool would
            stream.write(chunk)
    return path


def folder(build: Callable[[Path], None]) -> Callable[[Path], Path]:
    """A `desired/` folder, next to what it may point at, built by `build`."""

    def make(folder: Path) -> Path:
        desired = folder / "desired"
        desired.mkdir()
        build(desired)
        return desired

    return make


def _link_out(desired: Path) -> None:
    (desired.parent / "elsewhere.yaml").write_text(HEADER)
    (desired / "ok.yaml").write_text(HEADER)
    (desired / "link.yaml").symlink_to(Path("..") / "elsewhere.yaml")


def _dir_link_out(desired: Path) -> None:
    (desired / "ok.yaml").write_text(HEADER)
    (desired / "etc").symlink_to("/etc")


def _device_link(desired: Path) -> None:
    (desired / "zero.yaml").symlink_to("/dev/zero")


def _dangling(desired: Path) -> None:
    (desired / "gone.yaml").symlink_to("missing.yaml")


def _loop(desired: Path) -> None:
    (desired / "a.yaml").symlink_to("b.yaml")
    (desired / "b.yaml").symlink_to("a.yaml")


def _pipe(desired: Path) -> None:
    os.mkfifo(desired / "pipe.yaml")


# The path shown is the one given; the column of a problem in the junk
# below is where its first byte that is not UTF-8 sits.
CRLF = HEADER + IMAGE + "    versions: ['1']\n    platfroms: []\n"
MANY = HEADER + IMAGE + "    versions: ['1']\n    platforms: ["
MANY += ", ".join(f"linux/bad{i}" for i in range(1_000)) + "]\n"
MADE = {
    "deep_flow": (HEADER + "images: " + "[" * 20_000 + "\n").encode(),
    "deep_block": (
        HEADER + "images:\n" + "".join(f"{'  ' * i}- k{i}:\n" for i in range(300))
    ).encode(),
    "binary_junk": random.Random(5).randbytes(4096),  # noqa: S311 - junk, not keys
    "latin_1": (HEADER + "\xe9t\xe9: 1\n").encode("latin-1"),
    "utf_16": HEADER.encode("utf-16"),
    "nul_byte": HEADER.encode() + b"images:\x00\n",
    "bell": HEADER.encode() + b"images: [\x07]\n",
    "crlf": CRLF.replace("\n", "\r\n").encode(),
    "huge_integer": b"version: " + b"9" * 5000 + b"\n",
    "long_name": (
        HEADER + IMAGE.replace("library/app", "a" * 100_000) + "    versions: ['1']\n"
    ).encode(),
    "many_problems": MANY.encode(),
    "newline_tag": (
        HEADER + IMAGE + '    versions: ["1.0\\n"]\n'
        '    platform_tag: "{arch}-{version}"\n'
    ).encode(),
}


def made(name: str) -> Callable[[Path], Path]:
    """Writes `MADE[name]` to a file of that name."""
    return _write(f"{name}.yaml", MADE[name])


CASES = [
    # The failure classes of the product brief, one each.
    Case("yaml_syntax", ":7:3", "invalid YAML: expected ',' or ']'"),
    Case("tab_indentation", ":6:1", "a tab is used for indentation"),
    Case("duplicate_key", ":7:5", "duplicate key 'versions'"),
    Case("unknown_field", ":7:5", "unknown field 'sources'"),
    Case("bad_platform", ":7:30", "unknown architecture 'x86_64'"),
    Case("invalid_tag", ":6:16", "invalid tag '1.0.0+build.7'"),
    Case("platform_tag_clash", ":7:30", "both get the platform tag '1.0.0-linux'"),
    Case("version_twice", ":6:34", "version '1.0.0' is listed twice"),
    Case("alias_of_no_version", ":8:15", "names version '2.0.0', which is not"),
    Case("no_connection_settings", ":3:17", "has no connection settings"),
    # And the other rules of the format.
    Case("claimed_twice", "/b.yaml:3:5", "is also claimed by the image at"),
    Case("unquoted_float_version", ":6:16", "YAML reads 3.10 as the number 3.1"),
    Case("repository_without_host", ":5:17", "does not start with a registry host"),
    Case("unknown_placeholder", ":7:13", "unknown placeholder {cpu}"),
    Case("wrong_types", ":6:15", "must be a list, not a string"),
    Case("missing_version", ":1:1", "missing required field 'version'"),
    Case("unsupported_version", ":1:10", "unsupported format version 2"),
    Case("insecure_with_ca_file", ":4:5", "contradicts ca_file"),
    Case("secret_in_file", ":5:7", "unknown field 'username'"),
    Case("top_level_list", ":1:1", "must be a mapping"),
    Case("second_document", ":4:1", "a second YAML document"),
    # YAML used as a weapon.
    Case("billion_laughs", ":2:4", "anchors and aliases are not supported"),
    Case("merge_key", ":5:5", "anchors and aliases are not supported"),
    Case("python_tag", ":5:17", "!!python/object/apply:os.system is not supported"),
    Case("deep_flow", ":4:72", "nested deeper than 64 levels", made("deep_flow")),
    Case("deep_block", ":36:65", "nested deeper than 64", made("deep_block")),
    # Files that are not text, or not small.
    Case("empty", ":1:1", "the file is empty"),
    Case("comments_only", ":1:1", "the file is empty"),
    Case("binary_junk", ":1:4", "the file is not UTF-8", made("binary_junk")),
    Case("latin_1", ":4:1", "byte 0xe9 cannot be decoded", made("latin_1")),
    Case("utf_16", ":1:1", "byte 0xff cannot be decoded", made("utf_16")),
    Case("nul_byte", ":4:8", "character #x0000 is not allowed", made("nul_byte")),
    Case("bell", ":4:10", "character #x0007 is not allowed", made("bell")),
    Case("crlf", ":7:5", "unknown field 'platfroms'", made("crlf")),
    Case("huge_integer", ":1:10", "(4300 digits)", made("huge_integer")),
    Case("long_name", ":5:17", "invalid repository", made("long_name")),
    Case("many_problems", ":7:17", "architecture 'bad0'", made("many_problems")),
    Case("big_50_mb", ":1:1", "the file is larger than 1 MiB", _big),
    # Links, pipes and devices.
    Case("link_out_of_folder", "/link.yaml:1:1", "link to", folder(_link_out)),
    Case("folder_link_out", "/etc:1:1", "link to '/etc'", folder(_dir_link_out)),
    Case("link_to_device", "/zero.yaml:1:1", "to '/dev/zero'", folder(_device_link)),
    Case("dangling_link", "/gone.yaml:1:1", "not a regular file", folder(_dangling)),
    Case("named_pipe", "/pipe.yaml:1:1", "not a regular file", folder(_pipe)),
]

LOOP = Case("link_loop", "/a.yaml:1:1", "link", folder(_loop))
NEWLINE = Case("newline_tag", ":6:16", "invalid tag", made("newline_tag"))
EDGE_CASES = [
    pytest.param(LOOP, "validate", id="validate-link_loop"),
    pytest.param(LOOP, "plan", id="plan-link_loop"),
    pytest.param(NEWLINE, "validate", id="validate-newline_tag"),
]
# Hostile to time or memory, or able to block: run in subprocesses under
# limits and a watchdog instead of in process.
HOSTILE = {
    "billion_laughs",
    "deep_flow",
    "binary_junk",
    "huge_integer",
    "long_name",
    "many_problems",
    "big_50_mb",
    "link_to_device",
    "named_pipe",
}


@dataclass(frozen=True)
class Outcome:
    """How one command ended, and what it cost."""

    exit_code: int
    output: str
    seconds: float
    peak: int
    """Bytes: Python's allocation peak in process, the child's RSS peak outside."""
    exception: BaseException | None = None


@pytest.fixture
def no_docker_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose Docker config knows no registry."""
    return {"DOCKER_CONFIG": str(tmp_path_factory.mktemp("docker-config"))}


def in_process(command: str, path: Path, env: dict[str, str]) -> Outcome:
    """Run ``reconciler COMMAND PATH`` in this process, measuring time and memory."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        result = CliRunner().invoke(main, [command, str(path)], env=env)
    finally:
        seconds = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    escaped = None if isinstance(result.exception, SystemExit) else result.exception
    return Outcome(result.exit_code, result.output, seconds, peak, escaped)


def in_subprocess(command: str, path: Path, env: dict[str, str]) -> Outcome:
    """Run ``reconciler COMMAND PATH`` in a limited child; read its peak RSS."""
    with tempfile.TemporaryFile() as output:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-c", _LIMITED, command, str(path)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
        watchdog = threading.Timer(SECONDS * 3, process.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            watchdog.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        output.seek(0)
        text = output.read().decode(errors="replace")
    return Outcome(process.returncode, text, seconds, usage.ru_maxrss * 1024)


# The child limits itself before it imports anything: setting limits in a
# preexec_fn is unsafe in a process that runs threads, as pytest's does.
_LIMITED = f"""
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_AS, ({CHILD_ADDRESS_SPACE}, {CHILD_ADDRESS_SPACE}))
resource.setrlimit(resource.RLIMIT_CPU, ({int(SECONDS * 2)}, {int(SECONDS * 2)}))
sys.argv = ["reconciler", *sys.argv[1:]]
runpy.run_module("reconciler", run_name="__main__")
"""


def assert_refused_with_a_place(
    outcome: Outcome, case: Case, path: Path, peak: int
) -> None:
    """Exit 1, a problem at the case's place saying what, no traceback, bounded."""
    assert outcome.exception is None, outcome.exception
    assert outcome.exit_code == 1, outcome.output[-2000:]
    assert "Traceback" not in outcome.output
    place = f"{path}{case.where}: "
    lines = outcome.output.splitlines()
    assert any(
        line.removeprefix("Error: ").startswith(place) and case.says in line
        for line in lines
    ), f"no line starts with {place!r} and says {case.says!r}:\n{outcome.output[:2000]}"
    assert re.match(r"Error: .+:\d+:\d+: ", outcome.output)
    assert outcome.seconds < SECONDS
    assert outcome.peak < peak


@pytest.mark.parametrize(
    ("case", "command"),
    [
        pytest.param(case, command, id=f"{command}-{case.name}")
        for case in CASES
        if case.name not in HOSTILE
        for command in COMMANDS
    ]
    + EDGE_CASES,
)
def test_bad_input_exits_1_with_a_place_in_process(
    case: Case, command: str, tmp_path: Path, no_docker_config: dict[str, str]
) -> None:
    """Each bad input: exit 1, `FILE:LINE:COLUMN: ... what`, fast and small."""
    path = case.given(tmp_path)

    outcome = in_process(command, path, no_docker_config)

    assert_refused_with_a_place(outcome, case, path, PYTHON_PEAK)


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name) for c in CASES if c.name in HOSTILE]
)
def test_hostile_input_is_refused_by_a_bounded_process(
    case: Case, tmp_path: Path, no_docker_config: dict[str, str]
) -> None:
    """Under setrlimit, validate and plan refuse it; time and peak RSS stay small."""
    path = case.given(tmp_path)

    with ThreadPoolExecutor(max_workers=len(COMMANDS)) as pool:
        outcomes = list(
            pool.map(lambda c: in_subprocess(c, path, no_docker_config), COMMANDS)
        )

    for outcome in outcomes:
        assert_refused_with_a_place(outcome, case, path, CHILD_RSS)


def test_corpus_has_a_case_for_every_file(tmp_path: Path) -> None:
    """Every file in the corpus is a case above; none is forgotten."""
    named = {case.name for case in CASES}

    entries = {entry.name.removesuffix(".yaml") for entry in CORPUS.iterdir()}

    assert entries <= named


def test_secret_written_in_a_file_is_never_echoed(
    no_docker_config: dict[str, str],
) -> None:
    """A password written under credentials is refused and not repeated."""
    path = CORPUS / "secret_in_file.yaml"

    outcome = in_process("validate", path, no_docker_config)

    assert "hunter2-in-git" in path.read_text()
    assert "hunter2-in-git" not in outcome.output


# -- property tests of the OCI value types -----------------------------------

OCI_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
HOSTS = st.one_of(
    st.sampled_from(["localhost", "localhost:5000", "[::1]:5000", "r.io"]),
    st.from_regex(
        r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z0-9]{1,6}){1,3}(:[0-9]{1,5})?",
        fullmatch=True,
    ),
)
COMPONENTS = st.from_regex(
    r"[a-z0-9]{1,8}(([._]|__|-{1,2})[a-z0-9]{1,8}){0,2}", fullmatch=True
)
PATHS = st.lists(COMPONENTS, min_size=1, max_size=4).map("/".join)
TAGS = st.from_regex(OCI_TAG, fullmatch=True)
DIGESTS = st.binary(max_size=64).map(lambda data: str(Digest.of(data)))
NEAR = st.sampled_from(list(":/@.-_ \n\tA%[]"))


@st.composite
def reference_texts(draw: st.DrawFn) -> str:
    """Well-formed references, sometimes broken by one inserted character."""
    text = f"{draw(HOSTS)}/{draw(PATHS)}"
    tag, digest = draw(st.none() | TAGS), draw(st.none() | DIGESTS)
    text += f":{tag}" if tag is not None else ""
    text += f"@{digest}" if digest is not None else ""
    if draw(st.booleans()):
        spot = draw(st.integers(0, len(text)))
        text = text[:spot] + draw(NEAR | st.characters()) + text[spot:]
    return text


ANY_TEXT = st.one_of(st.text(), reference_texts())


def _value_or(
    error: type[Exception], parse: Callable[[str], object], text: str
) -> object:
    """What `parse` gives, or None when it raised `error`; anything else fails."""
    try:
        return parse(text)
    except error:
        return None


@settings(max_examples=150, deadline=None)
@given(text=ANY_TEXT)
def test_reference_parse_gives_a_reference_or_invalid_reference_error(
    text: str,
) -> None:
    """Any text parses to a Reference that prints back to itself, or is refused."""
    ref = _value_or(InvalidReferenceError, Reference.parse, text)

    if ref is not None:
        assert isinstance(ref, Reference)
        assert Reference.parse(str(ref)) == ref


@settings(max_examples=100, deadline=None)
@given(host=HOSTS, path=PATHS, tag=TAGS, digest=st.none() | DIGESTS)
def test_well_formed_references_parse_into_their_parts(
    host: str, path: str, tag: str, digest: str | None
) -> None:
    """host/path:tag[@digest] within 255 characters parses into exactly those."""
    assume(len(f"{host}/{path}") <= 255)
    text = f"{host}/{path}:{tag}" + (f"@{digest}" if digest else "")

    ref = Reference.parse(text)

    assert (ref.registry, ref.repository.path, ref.tag) == (host, path, tag)
    assert ref.digest == digest
    assert str(ref) == text


@settings(max_examples=150, deadline=None)
@given(text=st.one_of(st.text(), st.builds("{}/{}".format, HOSTS, PATHS)))
def test_repository_parse_gives_a_repository_or_invalid_reference_error(
    text: str,
) -> None:
    """Any text parses to a Repository that prints back to itself, or is refused."""
    repository = _value_or(InvalidReferenceError, Repository.parse, text)

    if repository is not None:
        assert isinstance(repository, Repository)
        assert Repository.parse(str(repository)) == repository


PLATFORM_TEXTS = st.one_of(
    st.text(),
    st.builds(
        "{}/{}{}".format,
        st.sampled_from(sorted(KNOWN_OS)),
        st.sampled_from(sorted(KNOWN_ARCHITECTURES)),
        st.sampled_from(["", "/v6", "/v7", "/v8", "/V8", "/", "/v8/x"]),
    ),
)


@settings(max_examples=200, deadline=None)
@given(text=PLATFORM_TEXTS)
def test_platform_parse_gives_a_platform_or_invalid_platform_error(text: str) -> None:
    """Any text parses to a Platform that prints back to itself, or is refused."""
    platform = _value_or(InvalidPlatformError, Platform.parse, text)

    if platform is not None:
        assert isinstance(platform, Platform)
        assert Platform.parse(str(platform)) == platform
        assert platform.matches(platform.normalized())


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(), DIGESTS, DIGESTS.map(lambda d: d[:-1])))
def test_digest_gives_a_digest_or_invalid_digest_error(text: str) -> None:
    """Any text is a Digest equal to its own text, or is refused."""
    digest = _value_or(InvalidDigestError, Digest, text)

    if digest is not None:
        assert isinstance(digest, Digest)
        assert Digest(str(digest)) == digest == text


@settings(max_examples=100, deadline=None)
@given(data=st.binary())
def test_digest_of_bytes_verifies_them_and_nothing_else(data: bytes) -> None:
    """Digest.of(data) verifies data, and not data with one more byte."""
    digest = Digest.of(data)

    assert digest.verifies(data)
    assert not digest.verifies(data + b"\0")
    assert Digest(str(digest)) == digest


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=140), TAGS))
def test_validate_tag_accepts_exactly_the_oci_tag_grammar(text: str) -> None:
    """A tag is valid exactly when it matches the distribution spec's grammar."""
    valid = _value_or(InvalidReferenceError, validate_tag, text)

    assert (valid == text) == (OCI_TAG.fullmatch(text) is not None)


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (validate_tag, "latest\n"),
        (Repository.parse, "r.io/library/app\n"),
        (Reference.parse, "r.io/library/app:1.0\n"),
        (Digest, f"sha256:{'a' * 64}\n"),
        (Platform.parse, "linux/arm/v7\n"),
    ],
    ids=["tag", "repository", "reference", "digest", "variant"],
)
def test_a_final_newline_is_never_part_of_a_valid_value(
    parse: Callable[[str], object], text: str
) -> None:
    """A value with a final newline is refused with the module's typed error."""
    errors = (InvalidReferenceError, InvalidDigestError, InvalidPlatformError)

    with pytest.raises(errors):
        parse(text)


JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
MEDIA_TYPES = st.sampled_from(
    [DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX, "", "x/y"]
)
DESCRIPTORS = st.fixed_dictionaries(
    {"digest": DIGESTS | JSON_SCALARS, "size": st.integers(-1, 10**6) | JSON_SCALARS},
    optional={
        "mediaType": MEDIA_TYPES,
        "platform": st.fixed_dictionaries(
            {"os": st.sampled_from(["linux", "unknown"]) | JSON_SCALARS},
            optional={"architecture": st.text(max_size=8), "variant": JSON_SCALARS},
        )
        | JSON,
    },
)
DOCUMENTS = st.fixed_dictionaries(
    {"schemaVersion": st.sampled_from([2, 2, 1, "2"])},
    optional={
        "mediaType": MEDIA_TYPES,
        "manifests": st.lists(DESCRIPTORS | JSON, max_size=3) | JSON,
        "config": DESCRIPTORS | JSON,
        "layers": st.lists(DESCRIPTORS, max_size=3) | JSON,
    },
)
RAW = st.one_of(
    st.binary(max_size=200),
    JSON.map(lambda value: json.dumps(value).encode()),
    DOCUMENTS.map(lambda value: json.dumps(value).encode()),
)


@settings(max_examples=200, deadline=None)
@given(raw=RAW, media_type=st.none() | MEDIA_TYPES)
def test_parse_manifest_gives_a_manifest_or_invalid_manifest_error(
    raw: bytes, media_type: str | None
) -> None:
    """Any bytes parse to an image manifest or an index, or are refused."""
    try:
        manifest = parse_manifest(raw, media_type)
    except InvalidManifestError:
        return

    assert isinstance(manifest, ImageManifest | Index)
    assert manifest.raw == raw
    if isinstance(manifest, Index):
        assert all(child.size >= 0 for child in manifest.manifests)


@settings(max_examples=100, deadline=None)
@given(
    media_type=st.sampled_from(sorted(INDEX_MEDIA_TYPES)),
    children=st.lists(
        st.builds(
            Descriptor,
            media_type=st.sampled_from([DOCKER_MANIFEST, OCI_MANIFEST]),
            digest=DIGESTS.map(Digest),
            size=st.integers(0, 10**9),
            platform=st.builds(
                Platform,
                os=st.sampled_from(sorted(KNOWN_OS)),
                architecture=st.sampled_from(sorted(KNOWN_ARCHITECTURES)),
                variant=st.sampled_from([None, "v7", "v8"]),
            ),
        ),
        max_size=5,
    ),
)
def test_built_index_parses_back_to_its_children(
    media_type: str, children: list[Descriptor]
) -> None:
    """An index built from descriptors parses back to the same descriptors."""
    raw = build_index(media_type, children)

    index = parse_manifest(raw)

    assert isinstance(index, Index)
    assert (index.media_type, index.manifests) == (media_type, tuple(children))
    assert build_index(media_type, index.manifests) == raw


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000, b'{"schemaVersion": 2, "size": ' + b"9" * 5000 + b"}"],
    ids=["deep-nesting", "long-integer"],
)
def test_json_beyond_what_python_reads_is_an_invalid_manifest(raw: bytes) -> None:
    """Bytes json.loads cannot hold are an InvalidManifestError too."""
    with pytest.raises(InvalidManifestError):
        parse_manifest(raw)
