"""GitLab: reports, merge-request notes, the CI template and the JSON Schema.

Reports are made by the command line against the real token-auth registry;
notes go to `reconciler.testkit.gitlab`'s stand-in of GitLab's notes API;
the template's rules are evaluated as GitLab does at pipeline creation, and
every `reconciler` command in its scripts is run against the registry.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.gitlab import MergeRequest, post_plan_notes
from reconciler.plan import load_plan, render_plan
from reconciler.plan.gitlab import (
    marker_part,
    note_marker,
    render_markdown,
    unshift_diff,
)
from reconciler.testkit.gitlab import GitLabNotesServer, GitLabUser, job_runs
from reconciler.testkit.registry import RegistryServer

from .scenario import Scenario

ROOT = Path(__file__).parent.parent
TEMPLATE = ROOT / "templates" / "reconciler.gitlab-ci.yml"
PROJECT, IID = "42", "7"
BOT = GitLabUser(1, "plan-bot")
JOB = GitLabUser(2, "job-token", can_write=False)
PERSON = GitLabUser(3, "reviewer")
TOKENS = {"glpat-writer": BOT, "job-token-readonly": JOB, "glpat-person": PERSON}
CI_VARIABLES = (
    "CI_API_V4_URL",
    "CI_PROJECT_ID",
    "CI_MERGE_REQUEST_IID",
    "CI_JOB_NAME",
    "CI_COMMIT_SHORT_SHA",
    "CI_PIPELINE_URL",
    "RECONCILER_GITLAB_TOKEN",
)


@dataclass(frozen=True)
class Reports:
    """What one `plan` run wrote, with the plan it made."""

    scenario: Scenario
    exit_code: int
    text: str
    document: dict[str, Any]
    terraform: dict[str, Any]
    markdown: str
    junit: ET.Element


@pytest.fixture(autouse=True)
def _outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the GitLab CI variables of a pipeline running the suite."""
    for name in CI_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _scenario(server: RegistryServer, workdir: Path) -> Scenario:
    made = Scenario(server, workdir, f"library/gitlab-{secrets.token_hex(3)}")
    made.seed()
    made.write_desired()
    return made


def _reports(scenario: Scenario) -> Reports:
    result = scenario.run(
        "plan",
        "--out",
        "plan.json",
        "--gitlab-report",
        "report.json",
        "--markdown",
        "plan.md",
        "--junit",
        "junit.xml",
    )
    workdir = scenario.workdir
    return Reports(
        scenario,
        result.exit_code,
        result.stdout,
        json.loads(scenario.run("plan", "--json").stdout),
        json.loads((workdir / "report.json").read_text()),
        (workdir / "plan.md").read_text(),
        ET.parse(workdir / "junit.xml").getroot(),  # noqa: S314 - our own output
    )


@pytest.fixture(scope="module")
def creating(
    registry_token: RegistryServer, tmp_path_factory: pytest.TempPathFactory
) -> Reports:
    """The seed scenario, planned: 8 tags, 4 indexes and 2 aliases to add."""
    return _reports(_scenario(registry_token, tmp_path_factory.mktemp("creating")))


@pytest.fixture(scope="module")
def drifted(
    registry_token: RegistryServer, tmp_path_factory: pytest.TempPathFactory
) -> Reports:
    """The seed scenario applied, then 3.9.2's arm64 source rebuilt."""
    scenario = _scenario(registry_token, tmp_path_factory.mktemp("drifted"))
    assert scenario.run("apply", "--auto-approve").exit_code == 0
    scenario.push_source("3.9.2", "arm64", seed="rebuilt")
    return _reports(scenario)


@pytest.fixture(params=["creating", "drifted"])
def reports(request: pytest.FixtureRequest) -> Reports:
    """Each planned scenario in turn: all to add, then two to update."""
    found = request.getfixturevalue(request.param)
    assert isinstance(found, Reports)
    return found


@pytest.fixture
def gitlab() -> Iterator[GitLabNotesServer]:
    """The notes API stand-in, with merge request !7 of project 42 open."""
    with GitLabNotesServer(TOKENS) as server:
        server.open_merge_request(PROJECT, IID)
        yield server


def _in_merge_request(
    monkeypatch: pytest.MonkeyPatch, gitlab: GitLabNotesServer, token: str | None
) -> None:
    monkeypatch.setenv("CI_API_V4_URL", gitlab.api_url)
    monkeypatch.setenv("CI_PROJECT_ID", PROJECT)
    monkeypatch.setenv("CI_MERGE_REQUEST_IID", IID)
    monkeypatch.setenv("CI_JOB_NAME", "plan")
    monkeypatch.setenv("CI_COMMIT_SHORT_SHA", "abc1234")
    if token is not None:
        monkeypatch.setenv("RECONCILER_GITLAB_TOKEN", token)


# Reports


def test_terraform_report_counts_agree_with_plan_summary(reports: Reports) -> None:
    """create, update and delete are the plan's add, change and destroy."""
    summary = reports.document["summary"]

    assert reports.exit_code == 0
    assert reports.terraform == {
        "create": summary["add"],
        "update": summary["change"],
        "delete": summary["destroy"],
    }
    assert sum(reports.terraform.values()) == len(reports.document["changes"])


def test_markdown_shows_the_text_plans_change_blocks(reports: Reports) -> None:
    """The summary line comes first; every block of the text plan is in a diff."""
    summary = reports.text.strip().splitlines()[-1]
    diffs = re.findall(r"```diff\n(.*?)\n```", reports.markdown, re.DOTALL)

    assert reports.markdown.startswith(f"**{summary}**")
    assert len(diffs) == 1
    assert unshift_diff(diffs[0]) + "\n" == reports.text
    for block in reports.text.split("\n\n")[:-1]:
        assert block.strip("\n") in unshift_diff(diffs[0])
    assert re.search(r"^[+~] {3}(tag|index|alias) ", diffs[0], re.MULTILINE)
    assert marker_part(reports.markdown, "plan") == 1


def test_long_plan_is_folded_and_short_one_is_not(
    creating: Reports, drifted: Reports
) -> None:
    """Fourteen changes fold in <details>; two changes are shown open."""
    assert len(creating.text.splitlines()) > 50
    assert "<details><summary>" in creating.markdown
    assert len(drifted.text.splitlines()) <= 50
    assert "<details>" not in drifted.markdown


def test_markdown_over_the_limit_splits_into_numbered_notes(creating: Reports) -> None:
    """A small limit gives several notes, each within it, holding every block."""
    plan, _ = load_plan(creating.scenario.workdir / "plan.json")

    notes = render_markdown(plan, limit=1500)

    assert len(notes) > 2
    assert all(len(note) <= 1500 for note in notes)
    assert [marker_part(n, "plan") for n in notes] == list(range(1, len(notes) + 1))
    assert all(f"_Part {i} of {len(notes)}._" in n for i, n in enumerate(notes, 1))
    shown = "\n".join(
        unshift_diff(diff)
        for note in notes
        for diff in re.findall(r"```diff\n(.*?)\n```", note, re.DOTALL)
    )
    for block in render_plan(plan).split("\n\n"):
        assert block.strip("\n") in shown


def test_markdown_calls_out_warnings(creating: Reports) -> None:
    """A plan's warnings are quoted above the plan, not only inside it."""
    plan, _ = load_plan(creating.scenario.workdir / "plan.json")
    warned = type(plan)(plan.changes, plan.observed, ("tag x is immutable",))

    note = render_markdown(warned)[0]

    assert "> :warning: **Warning:** tag x is immutable" in note
    assert note.index("Warning") < note.index("```diff")


def test_junit_has_one_case_per_desired_address(reports: Reports) -> None:
    """14 cases, by full address; the planned changes fail with their text."""
    cases = reports.junit.findall("./testsuite/testcase")
    names = {case.get("name") for case in cases}
    repository = reports.scenario.repository
    changes = {c["address"]: c for c in reports.document["changes"]}

    assert len(cases) == len(names) == 14
    assert names == {
        f"{repository}:{tag}"
        for version in ("3.11.3", "3.10.1", "3.9.2", "3.8.5")
        for tag in (version, f"{version}-amd64", f"{version}-arm64")
    } | {f"{repository}:latest", f"{repository}:3.11"}
    for case in cases:
        failure = case.find("failure")
        change = changes.get(str(case.get("name")))
        assert (failure is not None) == (change is not None)
        if failure is not None and change is not None:
            assert f"{change['kind']} {change['address']}" in (failure.text or "")
    assert reports.junit.get("failures") == str(len(changes))
    assert reports.junit.get("errors") == "0"


def test_failed_plan_is_an_error_in_every_report(
    registry_token: RegistryServer, tmp_path: Path
) -> None:
    """A missing source: exit 1, Markdown calls out the error, JUnit errors."""
    scenario = Scenario(registry_token, tmp_path, f"library/gl-{secrets.token_hex(3)}")
    scenario.write_desired(versions=("9.9.9",), aliases={})

    result = scenario.run(
        "plan", "--markdown", "plan.md", "--junit", "j.xml", "--gitlab-report", "r.json"
    )

    assert result.exit_code == 1
    markdown = (tmp_path / "plan.md").read_text()
    assert markdown.startswith(":x: **The plan failed")
    assert "> :x: **Error:** the plan cannot be made" in markdown
    assert "java-gdal-local-arm64:9.9.9 does not exist" in markdown
    junit = ET.parse(tmp_path / "j.xml").getroot()  # noqa: S314 - our own output
    assert len(junit.findall("./testsuite/testcase/error")) == 3
    assert junit.get("errors") == "3"
    assert not (tmp_path / "r.json").exists()


# Notes


def test_first_run_creates_the_note_and_second_updates_it(
    creating: Reports, gitlab: GitLabNotesServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One note, created once, then edited in place; the token is never shown."""
    _in_merge_request(monkeypatch, gitlab, "glpat-writer")
    scenario = creating.scenario

    first = scenario.run("plan", "--post-mr-note")
    [note] = gitlab.notes(PROJECT, IID)
    scenario.write_desired(versions=("3.8.5",), aliases={})
    second = scenario.run("-vv", "plan", "--post-mr-note")
    scenario.write_desired()

    assert first.exit_code == second.exit_code == 0
    assert "Posted the plan to merge request !7" in first.stderr
    [edited] = gitlab.notes(PROJECT, IID)
    assert edited.id == note.id
    assert note.body.startswith("**Plan: 14 to add")
    assert edited.body.startswith("**Plan: 3 to add")
    assert "Planned for commit `abc1234`." in edited.body
    assert "GitLab PUT" in second.stderr
    assert "glpat-writer" not in first.output + second.output
    methods = [r.method for r in gitlab.requests if r.method != "GET"]
    assert methods == ["POST", "PUT"]
    assert {r.token_header for r in gitlab.requests} == {"PRIVATE-TOKEN"}


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("job-token-readonly", "HTTP 403"),
        ("not-a-token", "HTTP 401"),
        (None, "RECONCILER_GITLAB_TOKEN is not set"),
    ],
)
def test_token_that_cannot_write_warns_and_keeps_exit_code(
    creating: Reports,
    gitlab: GitLabNotesServer,
    monkeypatch: pytest.MonkeyPatch,
    token: str | None,
    expected: str,
) -> None:
    """403, 401 or no token: a warning on stderr, exit 2 as without posting."""
    _in_merge_request(monkeypatch, gitlab, token)

    result = creating.scenario.run("plan", "--detailed-exitcode", "--post-mr-note")

    assert result.exit_code == 2
    assert "Plan: 14 to add" in result.stdout
    assert "Warning:" in result.stderr
    assert expected in result.stderr
    assert token is None or token not in result.output
    assert gitlab.notes(PROJECT, IID) == []


def test_notes_are_found_past_the_first_page(gitlab: GitLabNotesServer) -> None:
    """Our note behind 150 others (some quoting it) is edited, not duplicated."""
    for number in range(150):
        gitlab.add_note(
            PROJECT, IID, f"comment {number}", PERSON, system=bool(number % 2)
        )
    ours = gitlab.add_note(PROJECT, IID, "old\n\n" + note_marker("plan", 1), BOT)
    quoted = "> old\n> " + note_marker("plan", 1) + "\n\nlooks fine"
    gitlab.add_note(PROJECT, IID, quoted, PERSON)
    request = MergeRequest(gitlab.api_url, PROJECT, IID)

    posted = post_plan_notes(
        request, "glpat-writer", ["new\n\n" + note_marker("plan", 1)], "plan"
    )

    assert posted.note_ids == (ours,)
    assert posted.updated == 1
    assert posted.created == 0
    assert len(gitlab.notes(PROJECT, IID)) == 152
    pages = [r for r in gitlab.requests if r.method == "GET"]
    assert len(pages) == 2


def test_shorter_plan_deletes_the_notes_it_no_longer_needs(
    gitlab: GitLabNotesServer,
) -> None:
    """Three parts, then one: the first is edited, the other two deleted."""
    request = MergeRequest(gitlab.api_url, PROJECT, IID)
    three = [f"part {n}\n\n{note_marker('plan', n)}" for n in (1, 2, 3)]

    first = post_plan_notes(request, "glpat-writer", three, "plan")
    second = post_plan_notes(request, "glpat-writer", three[:1], "plan")

    assert first.created == 3
    assert (second.updated, second.deleted) == (1, 2)
    assert [n.id for n in gitlab.notes(PROJECT, IID)] == [first.note_ids[0]]


def test_each_job_keeps_its_own_note(gitlab: GitLabNotesServer) -> None:
    """Notes are keyed by job name: shards `plan 1/2` and `plan 2/2` keep two."""
    request = MergeRequest(gitlab.api_url, PROJECT, IID)
    for key in ("plan 1/2", "plan 2/2", "plan 1/2"):
        body = f"{key}\n\n{note_marker(key, 1)}"
        post_plan_notes(request, "glpat-writer", [body], key)

    bodies = sorted(n.body.split("\n")[0] for n in gitlab.notes(PROJECT, IID))

    assert bodies == ["plan 1/2", "plan 2/2"]


# The CI template


def _template() -> dict[str, Any]:
    loaded = yaml.safe_load(TEMPLATE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _jobs(template: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Visible jobs, with `extends` of hidden jobs merged in."""
    jobs = {}
    for name, job in template.items():
        if name.startswith(".") or not isinstance(job, dict) or "script" not in job:
            continue
        base = template.get(job.get("extends", ""), {})
        jobs[name] = {**base, **job}
    return jobs


MAIN = {"CI_DEFAULT_BRANCH": "main"}
DESIRED_CHANGED = ["desired/java-gdal.yaml"]
EVENTS = [
    (
        "merge request changing desired/",
        {**MAIN, "CI_PIPELINE_SOURCE": "merge_request_event"},
        DESIRED_CHANGED,
        {"validate", "plan"},
    ),
    (
        "merge request changing other files",
        {**MAIN, "CI_PIPELINE_SOURCE": "merge_request_event"},
        ["README.md", "src/desired.txt"],
        set(),
    ),
    (
        "push to the default branch changing desired/",
        {**MAIN, "CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "main"},
        DESIRED_CHANGED,
        {"validate", "apply"},
    ),
    (
        "push to the default branch changing other files",
        {**MAIN, "CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "main"},
        ["README.md"],
        set(),
    ),
    (
        "push to another branch changing desired/",
        {**MAIN, "CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "feature"},
        DESIRED_CHANGED,
        set(),
    ),
    (
        "pipeline run by hand on the default branch",
        {**MAIN, "CI_PIPELINE_SOURCE": "web", "CI_COMMIT_BRANCH": "main"},
        None,
        {"validate", "apply"},
    ),
    (
        "schedule on the default branch",
        {**MAIN, "CI_PIPELINE_SOURCE": "schedule", "CI_COMMIT_BRANCH": "main"},
        None,
        {"drift"},
    ),
]


@pytest.mark.parametrize(
    ("variables", "changed", "expected"),
    [event[1:] for event in EVENTS],
    ids=[event[0] for event in EVENTS],
)
def test_template_rules_match_the_events(
    variables: dict[str, str], changed: list[str] | None, expected: set[str]
) -> None:
    """Each pipeline gets exactly the jobs the README promises for it."""
    template = _template()
    defined = {k: str(v) for k, v in template["variables"].items()}

    running = {
        name
        for name, job in _jobs(template).items()
        if job_runs(job, {**defined, **variables}, changed)
    }

    assert running == expected


def test_template_apply_is_serialised_and_plan_is_reported() -> None:
    """apply has a resource_group; plan keeps its report and file; drift JUnit."""
    jobs = _jobs(_template())

    assert jobs["apply"]["resource_group"]
    assert "terraform" in jobs["plan"]["artifacts"]["reports"]
    assert jobs["plan"]["artifacts"]["when"] == "always"
    assert "junit" in jobs["drift"]["artifacts"]["reports"]
    assert set(jobs) == {"validate", "plan", "apply", "drift"}


def _commands(job: Mapping[str, Any], variables: Mapping[str, str]) -> list[list[str]]:
    """Every `reconciler` command line of a job's scripts, variables filled in."""
    lines = [
        line.strip()
        for entry in [*job.get("before_script", []), *job["script"]]
        for line in str(entry).splitlines()
    ]
    commands = []
    for line in lines:
        if not line.startswith("reconciler "):
            continue
        words = shlex.split(_substitute(line, variables))
        operators = [i for i, w in enumerate(words) if w in ("||", "&&", ";", "|")]
        commands.append(words[1 : operators[0] if operators else None])
    return commands


def _substitute(line: str, variables: Mapping[str, str]) -> str:
    def value(found: re.Match[str]) -> str:
        return _substitute(variables.get(found[1], ""), variables)

    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", value, line)


def _run_template_jobs(scenario: Scenario, extra: Mapping[str, str]) -> list[str]:
    """Run validate, plan, apply and drift as the template says; their outputs."""
    template = _template()
    variables = {**template["variables"], **extra}
    jobs = _jobs(template)
    outputs = []
    for name in ("validate", "plan", "apply", "drift"):
        for command in _commands(jobs[name], variables):
            result = scenario.run(*command)
            assert "No such option" not in result.output, command
            assert result.exit_code == 0, (name, command, result.output)
            outputs.append(result.output)
    return outputs


def test_template_commands_run_against_the_registry(
    registry_token: RegistryServer, tmp_path: Path
) -> None:
    """validate, plan, plan --out + apply --plan, then drift finds none."""
    scenario = _scenario(registry_token, tmp_path)

    outputs = _run_template_jobs(scenario, {"CI_DEFAULT_BRANCH": "main"})

    assert any("Plan: 14 to add" in output for output in outputs)
    assert any("Apply complete! 14 added" in output for output in outputs)
    assert "No changes." in outputs[-1]
    for name in ("reconciler-plan.json", "reconciler-report.json"):
        assert (tmp_path / name).is_file()
    assert (tmp_path / "reconciler-drift.xml").is_file()


def test_template_sharding_runs_when_shard_exists(
    registry_token: RegistryServer, tmp_path: Path
) -> None:
    """With RECONCILER_SHARD_ARGS set as the template says, every job runs."""
    help_text = CliRunner().invoke(main, ["plan", "--help"]).output
    if "--shard" not in help_text:
        pytest.skip("plan --shard does not exist yet (performance issue)")
    scenario = _scenario(registry_token, tmp_path)
    shard = {
        "RECONCILER_SHARD_ARGS": "--shard $CI_NODE_INDEX/$CI_NODE_TOTAL",
        "CI_NODE_INDEX": "1",
        "CI_NODE_TOTAL": "1",
    }

    outputs = _run_template_jobs(scenario, shard)

    assert "No changes." in outputs[-1]


def _drift_job(
    scenario: Scenario, tmp_path: Path, **overrides: str
) -> subprocess.CompletedProcess[str]:
    """The drift job's script in bash, as a runner runs it, `reconciler` on PATH."""
    shim = tmp_path / "bin" / "reconciler"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m reconciler "$@"\n')
    shim.chmod(0o755)
    template = _template()
    variables = {k: str(v) for k, v in template["variables"].items()}
    (scenario.workdir / variables["RECONCILER_JUNIT_FILE"]).unlink(missing_ok=True)
    user = scenario.user
    environment = {
        **os.environ,
        **variables,
        "CI_DEFAULT_BRANCH": "main",
        "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}",
        "HARBOR_USERNAME": user,
        "HARBOR_PASSWORD": scenario.server.users[user],
        **overrides,
    }
    return subprocess.run(
        [
            "bash",
            "-eo",
            "pipefail",
            "-c",
            "\n".join(_jobs(template)["drift"]["script"]),
        ],
        cwd=scenario.workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_drift_job_fails_on_drift_and_tells_errors_apart(
    creating: Reports, tmp_path: Path
) -> None:
    """Drift exits 2 with DRIFT and the plan; a bad folder or flag exits 1, ERROR."""
    drift = _drift_job(creating.scenario, tmp_path)
    missing = _drift_job(creating.scenario, tmp_path, RECONCILER_DESIRED="nowhere")
    usage = _drift_job(creating.scenario, tmp_path, RECONCILER_SHARD_ARGS="--nope")

    assert drift.returncode == 2, drift.stderr
    assert "DRIFT:" in drift.stdout
    assert "Plan: 14 to add" in drift.stdout
    for failed in (missing, usage):
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "ERROR: the drift check itself failed" in failed.stdout
        assert "DRIFT" not in failed.stdout


# The JSON Schema


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """`reconciler schema`, parsed."""
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0, result.output
    loaded = json.loads(result.stdout)
    assert isinstance(loaded, dict)
    return loaded


def test_schema_accepts_the_worked_example(schema: dict[str, Any]) -> None:
    """desired/java-gdal.yaml and the test suite's good file are valid."""
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = ROOT / "tests" / "data" / "desired" / "good" / "java-gdal.yaml"

    for path in (ROOT / "desired" / "java-gdal.yaml", good):
        assert list(validator.iter_errors(yaml.safe_load(path.read_text()))) == []
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize(
    "name",
    [
        "unquoted_float_version",
        "unknown_field",
        "bad_platform",
        "missing_version",
        "empty_lists",
    ],
)
def test_schema_refuses_what_the_loader_refuses(
    schema: dict[str, Any], name: str
) -> None:
    """Numbers for versions, unknown fields, bad platforms: editors flag them."""
    path = ROOT / "tests" / "data" / "desired" / "bad" / f"{name}.yaml"
    validator = jsonschema.Draft202012Validator(schema)

    assert list(validator.iter_errors(yaml.safe_load(path.read_text())))
