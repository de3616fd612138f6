"""GitLab: write the plan's reports, and keep the plan as a merge-request note.

`publishing` wraps the work of `reconciler plan`: when the work ends, with a
plan or with the error that stopped it, it writes the requested report files
and, when asked, posts the plan to the merge request the pipeline runs for.

Posting is a courtesy, never a reason to fail the plan: a missing token, a
token that may not write notes (`CI_JOB_TOKEN` may not) or an unreachable
GitLab is a warning, and the plan's exit code stays what it was.

    ReconcilerError
    └── GitLabError    the notes API refused, or could not be reached

The token is sent in the `PRIVATE-TOKEN` header and never logged or shown.
"""

from __future__ import annotations

import logging
import os
import ssl
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from reconciler.errors import ReconcilerError
from reconciler.plan import Plan
from reconciler.plan.gitlab import (
    DesiredAddress,
    marker_part,
    render_junit,
    render_markdown,
    render_terraform_report,
)

logger = logging.getLogger(__name__)

TOKEN_VARIABLE = "RECONCILER_GITLAB_TOKEN"  # noqa: S105 - a variable's name
MERGE_REQUEST_VARIABLES = ("CI_API_V4_URL", "CI_PROJECT_ID", "CI_MERGE_REQUEST_IID")
PAGE_SIZE = 100  # the most GitLab returns per page
MAX_PAGES = 200  # 20,000 notes: far beyond any merge request
TIMEOUT = 30.0


class GitLabError(ReconcilerError):
    """GitLab's API refused a request, or could not be reached."""


@dataclass(frozen=True, slots=True)
class MergeRequest:
    """The merge request a pipeline runs for, from GitLab's CI variables."""

    api_url: str
    project: str
    iid: str

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> MergeRequest | None:
        """The merge request of `CI_*` variables; None outside an MR pipeline."""
        values = [environ.get(name, "") for name in MERGE_REQUEST_VARIABLES]
        if not all(values):
            return None
        api_url, project, iid = values
        return cls(api_url.rstrip("/"), project, iid)

    @property
    def notes_url(self) -> str:
        project = urllib.parse.quote(self.project, safe="")
        return f"{self.api_url}/projects/{project}/merge_requests/{self.iid}/notes"

    def __str__(self) -> str:
        return f"merge request !{self.iid} of project {self.project}"


@dataclass(frozen=True, slots=True)
class NotesPosted:
    """What posting did: note ids in part order, and how each got there."""

    note_ids: tuple[int, ...]
    created: int = 0
    updated: int = 0
    deleted: int = 0

    def __str__(self) -> str:
        counts = [
            f"{count} {what}"
            for count, what in [
                (self.created, "created"),
                (self.updated, "updated"),
                (self.deleted, "deleted"),
            ]
            if count
        ]
        noun = "note" if len(self.note_ids) == 1 else "notes"
        return f"{len(self.note_ids)} {noun} ({', '.join(counts) or 'none'})"


def post_plan_notes(
    request: MergeRequest,
    token: str,
    bodies: Sequence[str],
    key: str,
    *,
    transport: httpx.BaseTransport | None = None,
) -> NotesPosted:
    """Make `key`'s notes on `request` read `bodies`, one note per body.

    Notes are found by their marker (see `marker_part`): existing parts are
    edited in place, missing ones created, and parts beyond `bodies`
    deleted. Raises `GitLabError` when GitLab refuses or cannot be reached.
    """
    with _notes(request, token, transport) as notes:
        try:
            existing = _our_notes(notes, key)
            return _sync_notes(notes, existing, bodies)
        except httpx.HTTPError as error:
            raise GitLabError(
                f"cannot reach GitLab at {request.api_url}: {error}",
                hint="check CI_API_V4_URL, and CI_SERVER_TLS_CA_FILE for a private CA",
            ) from None
        except (ValueError, KeyError, TypeError) as error:
            raise GitLabError(
                f"GitLab at {request.api_url} did not answer as the notes API does:"
                f" {error!r}",
                hint="check that CI_API_V4_URL is GitLab's /api/v4 URL",
            ) from None


# Reports for `reconciler plan`


Echo = Callable[[str], None]


@dataclass
class PlanReports:
    """What `plan` was asked to write for GitLab, and what it learnt so far.

    The plan command fills in `addresses` once the desired state is loaded
    and `plan` once it is made; `publishing` writes whatever is known then.
    """

    terraform: Path | None = None
    markdown: Path | None = None
    junit: Path | None = None
    post_note: bool = False
    addresses: tuple[DesiredAddress, ...] = ()
    plan: Plan | None = None

    @property
    def requested(self) -> bool:
        return bool(self.terraform or self.markdown or self.junit or self.post_note)


@contextmanager
def publishing(
    reports: PlanReports,
    echo: Echo,
    environ: Mapping[str, str] | None = None,
) -> Iterator[PlanReports]:
    """Publish `reports` when the block ends, with the error that ended it.

    An error inside the block is published (Markdown, JUnit, note) and then
    raised again unchanged. `echo` prints a line on stderr.
    """
    environ = os.environ if environ is None else environ
    try:
        yield reports
    except (ReconcilerError, NotImplementedError) as error:
        if reports.requested:
            _publish_after_error(reports, str(error), echo, environ)
        raise
    if reports.requested:
        _publish(reports, None, echo, environ)


def _publish_after_error(
    reports: PlanReports, error: str, echo: Echo, environ: Mapping[str, str]
) -> None:
    # The first error is the one to exit with; a report that cannot be
    # written on top of it is only worth a warning.
    try:
        _publish(reports, error, echo, environ)
    except ReconcilerError as failed:
        echo(f"Warning: {failed}")


def _publish(
    reports: PlanReports, error: str | None, echo: Echo, environ: Mapping[str, str]
) -> None:
    plan = reports.plan
    if reports.terraform is not None and plan is not None and error is None:
        _write(reports.terraform, render_terraform_report(plan))
    if reports.junit is not None:
        _write(reports.junit, render_junit(reports.addresses, plan, error=error))
    if not (reports.markdown or reports.post_note):
        return
    key = environ.get("CI_JOB_NAME") or "plan"
    bodies = render_markdown(plan, error=error, key=key, origin=_origin(environ))
    if reports.markdown is not None:
        _write(reports.markdown, "\n".join(bodies))
    if reports.post_note:
        _post(bodies, key, echo, environ)


def _origin(environ: Mapping[str, str]) -> str | None:
    """Which commit and pipeline the plan is for, when run in GitLab CI."""
    commit = environ.get("CI_COMMIT_SHORT_SHA")
    if not commit:
        return None
    origin = f"Planned for commit `{commit}`"
    pipeline = environ.get("CI_PIPELINE_URL")
    if pipeline:
        origin += f" in [pipeline #{environ.get('CI_PIPELINE_IID', '')}]({pipeline})"
    return origin + "."


def _post(bodies: list[str], key: str, echo: Echo, environ: Mapping[str, str]) -> None:
    request = MergeRequest.from_environment(environ)
    if request is None:
        names = ", ".join(MERGE_REQUEST_VARIABLES)
        echo(f"Warning: not posting the plan: {names} are not all set")
        return
    token = environ.get(TOKEN_VARIABLE, "")
    if not token:
        echo(
            f"Warning: not posting the plan to {request}: {TOKEN_VARIABLE} is not"
            " set; give it a token with api scope to get the plan as a comment"
        )
        return
    try:
        posted = post_plan_notes(request, token, bodies, key)
    except GitLabError as error:
        echo(f"Warning: could not post the plan to {request}: {error}")
        return
    echo(f"Posted the plan to {request}: {posted}.")


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        raise ReconcilerError(f"cannot write {path}: {error.strerror}") from None


# The notes API


class _Notes:
    """The notes of one merge request, over one HTTP client."""

    def __init__(self, client: httpx.Client, url: str) -> None:
        self._client = client
        self._url = url

    def note_list(self, page: str) -> tuple[list[dict[str, Any]], str | None]:
        """One page of notes, oldest first, and the number of the next page."""
        params: dict[str, str | int] = {"per_page": PAGE_SIZE, "page": page}
        params["sort"] = "asc"
        response = self._client.get(self._url, params=params)
        _check(response, "list the notes of")
        notes = response.json()
        if not isinstance(notes, list):
            raise GitLabError(f"GitLab answered {self._url} with no list of notes")
        # GitLab leaves x-next-page empty on the last page; a short page
        # ends the walk too, should a proxy drop the header.
        following = response.headers.get("x-next-page") or None
        return notes, following if len(notes) >= PAGE_SIZE else None

    def note_create(self, body: str) -> int:
        response = self._client.post(self._url, json={"body": body})
        _check(response, "create a note on")
        return int(response.json()["id"])

    def note_edit(self, note_id: int, body: str) -> None:
        response = self._client.put(f"{self._url}/{note_id}", json={"body": body})
        _check(response, "edit a note of")

    def note_delete(self, note_id: int) -> None:
        response = self._client.delete(f"{self._url}/{note_id}")
        _check(response, "delete an old note of")


@contextmanager
def _notes(
    request: MergeRequest, token: str, transport: httpx.BaseTransport | None
) -> Iterator[_Notes]:
    client = httpx.Client(
        headers={"PRIVATE-TOKEN": token},
        timeout=TIMEOUT,
        verify=_ssl_context(),
        transport=transport,
        follow_redirects=False,
    )
    with client:
        yield _Notes(client, request.notes_url)


def _ssl_context() -> ssl.SSLContext:
    """The system's CAs, plus the runner's CA for GitLab when it names one."""
    context = ssl.create_default_context()
    ca_file = os.environ.get("CI_SERVER_TLS_CA_FILE")
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


@dataclass(frozen=True, slots=True)
class _Found:
    note_id: int
    body: str


def _our_notes(notes: _Notes, key: str) -> dict[int, _Found]:
    """Part number -> `key`'s note for it, the oldest one per part."""
    found: dict[int, _Found] = {}
    for note in _all_notes(notes):
        body = str(note.get("body", ""))
        part = marker_part(body, key)
        if part is not None and not note.get("system") and part not in found:
            found[part] = _Found(int(note["id"]), body)
    return found


def _all_notes(notes: _Notes) -> Iterator[dict[str, Any]]:
    """Every note of the merge request, oldest first, page by page."""
    page: str | None = "1"
    for _ in range(MAX_PAGES):
        if page is None:
            return
        found, page = notes.note_list(page)
        yield from found


def _sync_notes(
    notes: _Notes, existing: dict[int, _Found], bodies: Sequence[str]
) -> NotesPosted:
    ids: list[int] = []
    counts = {"created": 0, "updated": 0, "deleted": 0}
    for part, body in enumerate(bodies, start=1):
        note_id, outcome = _put_or_post(notes, existing.get(part), body)
        ids.append(note_id)
        counts[outcome] += 1
    for part, found in sorted(existing.items()):
        if part > len(bodies):
            notes.note_delete(found.note_id)
            counts["deleted"] += 1
    return NotesPosted(tuple(ids), **counts)


def _put_or_post(notes: _Notes, found: _Found | None, body: str) -> tuple[int, str]:
    """Edit the note in place, or create it.

    An identical body is written again all the same: the note's "edited"
    time then tells reviewers the plan is as of the latest pipeline.
    """
    if found is None:
        return notes.note_create(body), "created"
    notes.note_edit(found.note_id, body)
    return found.note_id, "updated"


def _check(response: httpx.Response, action: str) -> None:
    """Map a refusal to `GitLabError`: what was refused, and what to do."""
    status = response.status_code
    request = response.request
    logger.debug("GitLab %s %s: %d", request.method, request.url, status)
    if status < 400:
        return
    what = f"GitLab refused to {action} the merge request (HTTP {status}"
    detail = _message(response)
    what += f": {detail})" if detail else ")"
    raise GitLabError(what, hint=_HINTS.get(status))


_HINTS = {
    401: f"{TOKEN_VARIABLE} is not a valid token; give it one with api scope",
    403: f"CI_JOB_TOKEN cannot write notes; set {TOKEN_VARIABLE} to a project "
    "access token with api scope and the Reporter role or above",
    404: "check CI_PROJECT_ID and CI_MERGE_REQUEST_IID, and that the token's "
    "user can see the project",
}


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    message = body.get("message") or body.get("error") if isinstance(body, dict) else ""
    return str(message)[:200] if message else ""
