"""The command line: exit codes, errors without tracebacks, approval on a terminal."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.testkit.registry import RegistryServer, free_port

from .helpers import run_on_terminal
from .scenario import Scenario

EXAMPLE = Path(__file__).resolve().parents[1] / "desired"


@pytest.fixture
def scenario(
    registry_token: RegistryServer, namespace: str, tmp_path: Path
) -> Scenario:
    """The seed scenario: 8 single-arch sources and a desired file for them."""
    made = Scenario(registry_token, tmp_path, namespace)
    made.seed(versions=("3.8.5",))
    made.write_desired(versions=("3.8.5",), aliases={})
    return made


def test_validate_accepts_the_example_without_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """validate of desired/ exits 0 and opens no socket."""

    def no_network(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("validate opened a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setenv("DOCKER_CONFIG", "/nonexistent")

    result = CliRunner().invoke(main, ["validate", str(EXAMPLE)])

    assert result.exit_code == 0, result.output
    assert "Valid: 1 image" in result.stdout


def test_validate_reports_problems_with_locations(tmp_path: Path) -> None:
    """A bad file exits 1 with file:line:column and no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nimages:\n  - repository: library/x\n    versions: ['1']\n"
        "  - repository: harbor.example.com/y\n    versions: [1.0]\n"
    )

    result = CliRunner().invoke(main, ["validate", str(bad)])

    assert result.exit_code == 1
    assert f"{bad}:3:17: images[0].repository:" in result.stderr
    assert f"{bad}:6:16: images[1].versions[0]:" in result.stderr
    assert "Traceback" not in result.output


def test_unreachable_registry_is_a_clear_error(tmp_path: Path) -> None:
    """plan against nothing listening exits 1 naming the host, no traceback."""
    host = f"127.0.0.1:{free_port()}"
    (tmp_path / "desired").mkdir()
    (tmp_path / "desired" / "x.yaml").write_text(
        f"version: 1\nregistries:\n  {host}: {{}}\nimages:\n"
        f"  - repository: {host}/library/x\n    versions: ['1']\n"
    )

    result = CliRunner().invoke(
        main, ["--chdir", str(tmp_path), "plan", "--detailed-exitcode"]
    )

    assert result.exit_code == 1
    assert host in result.stderr
    assert "refused" in result.stderr
    assert "Traceback" not in result.output


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    """-v adds the traceback to a project error, for bug reports."""
    host = f"127.0.0.1:{free_port()}"
    (tmp_path / "desired").mkdir()
    (tmp_path / "desired" / "x.yaml").write_text(
        f"version: 1\nregistries:\n  {host}: {{}}\nimages:\n"
        f"  - repository: {host}/library/x\n    versions: ['1']\n"
    )

    result = CliRunner().invoke(main, ["-v", "--chdir", str(tmp_path), "plan"])

    assert result.exit_code == 1
    assert "Traceback" in result.stderr


def test_apply_plan_and_paths_together_are_refused(tmp_path: Path) -> None:
    """--plan with PATHS is ambiguous and refused."""
    result = CliRunner().invoke(main, ["apply", "--plan", "p.json", "desired"])

    assert result.exit_code == 1
    assert "either PATHS or --plan" in result.stderr


def test_apply_of_a_missing_plan_file_is_a_clear_error(tmp_path: Path) -> None:
    """A plan file that is not there says so."""
    result = CliRunner().invoke(main, ["apply", "--plan", str(tmp_path / "p.json")])

    assert result.exit_code == 1
    assert "cannot read plan file" in result.stderr


def test_apply_on_a_terminal_aborts_on_anything_but_yes(scenario: Scenario) -> None:
    """Answering "no" writes nothing and exits 1."""
    mark = scenario.server.mark()

    status, output = run_on_terminal(scenario, "no")

    assert status == 1
    assert "cancelled" in output
    assert scenario.server.count("PUT", r"/v2/.*/manifests/.*", since=mark) == 0


def test_apply_on_a_terminal_applies_after_yes(scenario: Scenario) -> None:
    """Answering "yes" applies, and colour codes appear only on the terminal."""
    status, output = run_on_terminal(scenario, "yes")

    assert status == 0, output
    assert "Apply complete! 3 added" in output
    assert "\x1b[" in output
    assert scenario.run("plan", "--detailed-exitcode").exit_code == 0
