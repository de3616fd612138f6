"""The command line: the only place that turns errors into exit codes."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from reconciler.desired import DesiredState, load_desired
from reconciler.errors import ApplyError, ReconcilerError
from reconciler.gitlab import PlanReports, publishing
from reconciler.plan import (
    Action,
    Change,
    Plan,
    ProjectChange,
    load_plan,
    render_json,
    render_plan,
    save_plan,
)
from reconciler.plan.gitlab import desired_addresses
from reconciler.planning import make_plan
from reconciler.registries import Registries, connection_settings
from reconciler.registry import BlobCopy, ConnectionSettings, docker_config
from reconciler.shard import choose_shard

# Modules that only one command needs (reconciler.adopt for import,
# reconciler.apply for apply, the JSON Schema for schema) are imported inside
# the functions that use them, so that plan and validate start without them.

logger = logging.getLogger("reconciler")

DEFAULT_PATHS = ("desired",)
EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


@click.group()
@click.option(
    "--chdir",
    type=click.Path(exists=True, file_okay=False),
    help="Run as if started in this directory.",
)
@click.option(
    "-v", "--verbose", count=True, help="More logs on stderr (-vv: HTTP detail)."
)
@click.version_option(package_name="reconciler")
@click.pass_context
def main(context: click.Context, chdir: str | None, verbose: int) -> None:
    """Keep multi-arch image indexes in a registry as the desired state says."""
    if chdir:
        os.chdir(chdir)
    context.obj = verbose
    _configure_logging(verbose)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.pass_context
def validate(context: click.Context, paths: tuple[Path, ...]) -> None:
    """Check the desired-state files; no network."""
    with _errors_exit(context):
        desired = _load(paths)
        count = len(desired.images)
        noun = "image" if count == 1 else "images"
        click.echo(f"Valid: {count} {noun} in {_shown(paths)}.")


@main.command()
def schema() -> None:
    """Print the JSON Schema (draft 2020-12) of the desired-state files."""
    from reconciler.desired.jsonschema import desired_state_schema

    click.echo(json.dumps(desired_state_schema(), indent=2))


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), help="Save the plan for apply --plan."
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 with no changes, 1 on error, 2 with changes.",
)
@click.option(
    "--gitlab-report",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the Terraform report for GitLab's artifacts:reports:terraform.",
)
@click.option(
    "--markdown",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the plan, or its error, as Markdown for a merge-request comment.",
)
@click.option(
    "--junit",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write JUnit XML: one test case per desired address, drift failing.",
)
@click.option(
    "--post-mr-note",
    is_flag=True,
    help="Post the plan to the merge request (RECONCILER_GITLAB_TOKEN); "
    "a failure to post is a warning.",
)
@click.option(
    "--shard",
    metavar="K/N",
    help="Only the repositories of shard K of N "
    "(default: GitLab's CI_NODE_INDEX/CI_NODE_TOTAL when set).",
)
@click.pass_context
def plan(
    context: click.Context,
    paths: tuple[Path, ...],
    out: Path | None,
    as_json: bool,
    detailed_exitcode: bool,
    gitlab_report: Path | None,
    markdown: Path | None,
    junit: Path | None,
    post_mr_note: bool,
    shard: str | None,
) -> None:
    """Show what apply would change."""
    reports = PlanReports(gitlab_report, markdown, junit, post_mr_note)
    with _errors_exit(context), publishing(reports, _echo_stderr):
        desired = _sharded(_load(paths), shard)
        reports.addresses = desired_addresses(desired)
        settings = connection_settings(desired)
        with Registries(settings) as registries:
            made = make_plan(desired, registries)
        reports.plan = made
        if out is not None:
            save_plan(made, out, _saved_settings(settings))
        click.echo(
            render_json(made) if as_json else render_plan(made, _style()), nl=False
        )
    if detailed_exitcode and not made.summary.empty:
        context.exit(EXIT_CHANGES)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--auto-approve", is_flag=True, help="Apply without asking.")
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Apply a plan saved with plan --out, refusing it if stale.",
)
@click.option(
    "--shard",
    metavar="K/N",
    help="Only the repositories of shard K of N "
    "(default: GitLab's CI_NODE_INDEX/CI_NODE_TOTAL when set).",
)
@click.pass_context
def apply(
    context: click.Context,
    paths: tuple[Path, ...],
    auto_approve: bool,
    plan_file: Path | None,
    shard: str | None,
) -> None:
    """Plan, ask for approval, and make the changes."""
    with _errors_exit(context):
        if plan_file is not None:
            if paths:
                raise ReconcilerError("give either PATHS or --plan, not both")
            if shard is not None:
                raise ReconcilerError(
                    "give either --shard or --plan, not both",
                    hint="a saved plan holds only the changes of the shard "
                    "it was made for",
                )
            _apply_saved(plan_file)
        else:
            _apply_fresh(paths, auto_approve, shard)


def _apply_saved(plan_file: Path) -> None:
    from reconciler.apply import check_stale

    made, saved = load_plan(plan_file)
    settings = {
        host: ConnectionSettings(**_settings_from(v)) for host, v in saved.items()
    }
    with Registries(settings) as registries:
        check_stale(made, registries)
        click.echo(render_plan(made, _style()), nl=False)
        _execute(made, registries)


def _apply_fresh(
    paths: tuple[Path, ...], auto_approve: bool, shard: str | None
) -> None:
    from reconciler.apply import check_stale

    desired = _sharded(_load(paths), shard)
    with Registries(connection_settings(desired)) as registries:
        made = make_plan(desired, registries)
        click.echo(render_plan(made, _style()), nl=False)
        if made.summary.empty:
            return
        if not auto_approve:
            _confirm(made)
            check_stale(made, registries)  # time passed while a person read it
        _execute(made, registries)


def _confirm(made: Plan) -> None:
    if not sys.stdin.isatty():
        raise ApplyError(
            "apply needs approval, and there is no terminal to ask on",
            hint="pass --auto-approve, or apply a reviewed plan with --plan FILE",
        )
    _ask("Do you want to perform these actions?")
    destroy = made.summary.destroy
    if destroy:
        # Destroys cannot be undone by this tool: ask a second time.
        _ask(f"This plan destroys {destroy} tag(s). Really destroy them?")


def _ask(question: str) -> None:
    click.echo(f"\n{question}")
    click.echo("  Only 'yes' will be accepted to approve.\n")
    answer = click.prompt("  Enter a value", default="", show_default=False)
    if answer.strip() != "yes":
        raise ApplyError("apply cancelled; nothing was written")


def _execute(made: Plan, registries: Registries) -> None:
    from reconciler.apply import apply_plan, failure_message

    total = len(made.projects) + len(made.changes)
    counter = iter(range(1, total + 1))
    report = apply_plan(
        made, registries, on_done=lambda c: _report(c, next(counter), total)
    )
    if report.failed or report.skipped:
        raise ApplyError(failure_message(report, total))
    summary = made.summary
    click.echo(
        f"\nApply complete! {summary.add} added, {summary.change} changed, "
        f"{summary.destroy} destroyed."
    )
    if report.blobs:
        blobs = report.blobs
        click.echo(
            f"Blobs: {blobs[BlobCopy.MOUNTED]} mounted, "
            f"{blobs[BlobCopy.PRESENT]} already there, {blobs[BlobCopy.UPLOADED]} "
            f"uploaded ({report.bytes_uploaded} bytes)."
        )


def _report(change: Change | ProjectChange, number: int, total: int) -> None:
    verbs = {
        Action.CREATE: "created",
        Action.UPDATE: "updated",
        Action.DELETE: "destroyed",
    }
    digest = change.after or change.before
    shown = digest.short if digest else ""
    click.echo(f"[{number}/{total}] {change.address}: {verbs[change.action]} {shown}")


@main.command("import")
@click.argument("references", nargs=-1, required=True)
@click.option(
    "--ca-file",
    "ca_files",
    multiple=True,
    metavar="HOST=PATH",
    help="CA bundle to trust for HOST; written into registries: as given.",
)
@click.option(
    "--insecure",
    "insecure_hosts",
    multiple=True,
    metavar="HOST",
    help="Speak plain HTTP to HOST.",
)
@click.option("--username-env", metavar="NAME", help="Variable holding the username.")
@click.option("--password-env", metavar="NAME", help="Variable holding the password.")
@click.pass_context
def import_(
    context: click.Context,
    references: tuple[str, ...],
    ca_files: tuple[str, ...],
    insecure_hosts: tuple[str, ...],
    username_env: str | None,
    password_env: str | None,
) -> None:
    """Print desired state for REFERENCE... (host/path or host/path:tag)."""
    from reconciler.adopt import Access, import_desired

    with _errors_exit(context):
        access = Access.from_options(
            ca_files,
            insecure_hosts,
            username_env,
            password_env,
        )
        click.echo(import_desired(references, access), nl=False)


def _load(paths: Sequence[Path]) -> DesiredState:
    config = docker_config()
    return load_desired(
        [*paths] or [Path(p) for p in DEFAULT_PATHS], known_hosts=config.has_host
    )


def _sharded(desired: DesiredState, option: str | None) -> DesiredState:
    """The images of the shard `--shard` or GitLab's variables name; else all."""
    shard = choose_shard(option)
    if shard is None:
        return desired
    kept = shard.select(desired)
    logger.info(
        "shard %s: %d of %d images", shard, len(kept.images), len(desired.images)
    )
    return kept


def _shown(paths: Sequence[Path]) -> str:
    return ", ".join(str(p) for p in paths) or ", ".join(DEFAULT_PATHS)


def _saved_settings(
    settings: dict[str, ConnectionSettings],
) -> dict[str, dict[str, Any]]:
    # Only names of environment variables are kept; never their values.
    saved = {}
    for host, entry in settings.items():
        data = asdict(entry)
        data["ca_file"] = str(entry.ca_file.resolve()) if entry.ca_file else None
        data["certs_dir"] = str(entry.certs_dir)
        saved[host] = data
    return saved


def _settings_from(data: dict[str, Any]) -> dict[str, Any]:
    values = dict(data)
    for key in ("ca_file", "certs_dir"):
        if values.get(key):
            values[key] = Path(values[key])
    return values


def _echo_stderr(line: str) -> None:
    click.echo(line, err=True)


def _style() -> Callable[[str, str], str]:
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ

    def style(text: str, name: str) -> str:
        return click.style(text, fg=name) if colour and name else text

    return style


@contextmanager
def _errors_exit(context: click.Context) -> Iterator[None]:
    """Print a project error without a traceback (-v shows it) and exit 1."""
    try:
        yield
    except ReconcilerError as error:
        _traceback_if_verbose(context)
        click.echo(f"Error: {error}", err=True)
        context.exit(EXIT_ERROR)
    except NotImplementedError as error:
        _traceback_if_verbose(context)
        click.echo(f"Error: not supported yet: {error}", err=True)
        context.exit(EXIT_ERROR)


def _traceback_if_verbose(context: click.Context) -> None:
    if context.find_root().obj:
        click.echo(traceback.format_exc(), err=True, nl=False)


def _configure_logging(verbose: int) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    # stamina announces each retry at WARNING; a retry is a wait, shown with
    # -v like the others, and never as a bare line from logging's fallback.
    retries = logging.getLogger("stamina")
    retries.handlers[:] = [handler]
    retries.setLevel(logging.WARNING if verbose else logging.ERROR)
    retries.propagate = False
    if verbose >= 2:
        logger.debug("verbose logging; credentials are never logged")
