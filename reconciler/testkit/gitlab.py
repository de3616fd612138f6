"""Local stand-ins for the parts of GitLab the reconciler meets.

- `GitLabNotesServer`: the merge-request notes API (`/api/v4/projects/:id/
  merge_requests/:iid/notes`), over plain HTTP on 127.0.0.1, in a thread.
  It paginates as GitLab does (`page`, `per_page` up to 100, `x-next-page`),
  authenticates `PRIVATE-TOKEN` and `JOB-TOKEN`, answers 401 to an unknown
  token and 403 to a token that may only read (as `CI_JOB_TOKEN` is), and
  refuses a note over GitLab's 1,000,000 characters with 400.
- `job_runs`: how GitLab decides, at pipeline creation, whether a job's
  `rules:` add it to a pipeline: `if:` expressions (`==`, `!=`, `=~`, `!~`,
  `&&`, `||`, parentheses, `$VAR`) and `changes:` globs (`**` crosses
  folders; every path counts as changed when no push tells which did).

Neither is GitLab; both follow its documented behaviour closely enough to
test what the reconciler and its CI template rely on.
"""

from __future__ import annotations

import datetime
import http.server
import itertools
import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GitLabNotesServer",
    "GitLabUser",
    "Note",
    "RecordedRequest",
    "job_runs",
]

logger = logging.getLogger(__name__)

NOTE_MAX_LENGTH = 1_000_000
MAX_PER_PAGE = 100
_NOTES_PATH = re.compile(
    r"^/api/v4/projects/(?P<project>[^/]+)/merge_requests/(?P<iid>\d+)/notes"
    r"(?:/(?P<note>\d+))?$"
)


@dataclass(frozen=True)
class GitLabUser:
    """An account a token belongs to; `can_write` False is like CI_JOB_TOKEN."""

    id: int
    username: str
    can_write: bool = True


@dataclass
class Note:
    """One note of a merge request, as the stand-in keeps it."""

    id: int
    body: str
    author: GitLabUser
    system: bool = False
    created_at: str = ""
    updated_at: str = ""

    def to_json(self) -> dict[str, Any]:
        """The note as GitLab's API shows it (the fields clients read)."""
        return {
            "id": self.id,
            "type": None,
            "body": self.body,
            "author": {"id": self.author.id, "username": self.author.username},
            "system": self.system,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "noteable_type": "MergeRequest",
            "resolvable": False,
        }


@dataclass(frozen=True)
class RecordedRequest:
    """A request the stand-in answered; the token itself is never kept."""

    method: str
    path: str
    status: int
    token_header: str | None  # PRIVATE-TOKEN, JOB-TOKEN or None


@dataclass
class _State:
    users: Mapping[str, GitLabUser]
    merge_requests: set[tuple[str, str]] = field(default_factory=set)
    notes: dict[tuple[str, str], list[Note]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1001))
    lock: threading.Lock = field(default_factory=threading.Lock)


class GitLabNotesServer:
    """GitLab's merge-request notes API on 127.0.0.1, in a daemon thread.

    `users` maps each token to the account it authenticates. Merge requests
    exist once `open_merge_request` names them; others are 404.
    """

    def __init__(self, users: Mapping[str, GitLabUser]) -> None:
        self._state = _State(dict(users))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def api_url(self) -> str:
        """The `CI_API_V4_URL` to give clients, e.g. `http://127.0.0.1:4123/api/v4`."""
        if self._server is None:
            raise RuntimeError("the GitLab stand-in is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/v4"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request answered so far, oldest first."""
        with self._state.lock:
            return list(self._state.requests)

    def open_merge_request(self, project: str, iid: str) -> None:
        """Make merge request `iid` of `project` exist, with no notes yet."""
        with self._state.lock:
            self._state.merge_requests.add((project, iid))
            self._state.notes.setdefault((project, iid), [])

    def add_note(
        self,
        project: str,
        iid: str,
        body: str,
        author: GitLabUser,
        *,
        system: bool = False,
    ) -> int:
        """Add a note as `author` (a person, or GitLab itself with `system`)."""
        with self._state.lock:
            return _create(self._state, (project, iid), body, author, system).id

    def notes(self, project: str, iid: str) -> list[Note]:
        """The notes of a merge request, oldest first (copies)."""
        with self._state.lock:
            found = self._state.notes.get((project, iid), [])
            return [Note(**vars(note)) for note in found]

    def start(self) -> None:
        """Listen on an ephemeral port and serve in a daemon thread."""
        server = _Server(("127.0.0.1", 0), _Handler)
        server.state = self._state
        thread = threading.Thread(
            target=server.serve_forever, name="testkit-gitlab", daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Stop serving and close the socket."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    def __enter__(self) -> GitLabNotesServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class _Refusal(Exception):
    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def do_DELETE(self) -> None:
        self._answer("DELETE")

    def _answer(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        payload = self._payload()
        with self.server.state.lock:
            try:
                status, body, headers = _route(
                    self.server.state, method, url, self.headers, payload
                )
            except _Refusal as refusal:
                status, body, headers = refusal.status, refusal.body, {}
            self.server.state.requests.append(
                RecordedRequest(method, url.path, status, _token_header(self.headers))
            )
        self._send(status, body, headers)

    def _payload(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return None
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError:
            return urllib.parse.parse_qs(raw.decode())

    def _send(self, status: int, body: Any, headers: Mapping[str, str]) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # The request line holds no token: tokens travel in headers only.
        logger.debug("gitlab stand-in: " + format, *args)


def _route(
    state: _State,
    method: str,
    url: urllib.parse.SplitResult,
    headers: Any,
    payload: Any,
) -> tuple[int, Any, dict[str, str]]:
    found = _NOTES_PATH.match(url.path)
    if found is None:
        raise _Refusal(404, {"error": "404 Not Found"})
    user = _authenticate(state, headers)
    where = (urllib.parse.unquote(found["project"]), found["iid"])
    if where not in state.merge_requests:
        raise _Refusal(404, {"message": "404 Not found"})
    note_id = int(found["note"]) if found["note"] else None
    if method == "GET":
        return _read(state, where, note_id, urllib.parse.parse_qs(url.query))
    if not user.can_write:
        raise _Refusal(403, {"message": "403 Forbidden"})
    return _write(state, method, where, note_id, user, payload)


def _authenticate(state: _State, headers: Any) -> GitLabUser:
    token = headers.get("PRIVATE-TOKEN") or headers.get("JOB-TOKEN")
    user = state.users.get(token) if token else None
    if user is None:
        raise _Refusal(401, {"message": "401 Unauthorized"})
    return user


def _read(
    state: _State,
    where: tuple[str, str],
    note_id: int | None,
    query: Mapping[str, list[str]],
) -> tuple[int, Any, dict[str, str]]:
    notes = state.notes[where]
    if note_id is not None:
        return 200, _find(notes, note_id).to_json(), {}
    ordered = notes if _first(query, "sort", "desc") == "asc" else notes[::-1]
    page = max(1, int(_first(query, "page", "1")))
    per_page = min(MAX_PER_PAGE, max(1, int(_first(query, "per_page", "20"))))
    start = (page - 1) * per_page
    chunk = [note.to_json() for note in ordered[start : start + per_page]]
    return 200, chunk, _page_headers(page, per_page, len(notes))


def _page_headers(page: int, per_page: int, total: int) -> dict[str, str]:
    pages = max(1, -(-total // per_page))
    return {
        "x-page": str(page),
        "x-per-page": str(per_page),
        "x-total": str(total),
        "x-total-pages": str(pages),
        "x-next-page": str(page + 1) if page < pages else "",
        "x-prev-page": str(page - 1) if page > 1 else "",
    }


def _write(
    state: _State,
    method: str,
    where: tuple[str, str],
    note_id: int | None,
    user: GitLabUser,
    payload: Any,
) -> tuple[int, Any, dict[str, str]]:
    if method == "POST" and note_id is None:
        return 201, _create(state, where, _body(payload), user, False).to_json(), {}
    if note_id is None:
        raise _Refusal(405, {"error": "405 Method Not Allowed"})
    note = _find(state.notes[where], note_id)
    if note.author != user or note.system:
        raise _Refusal(403, {"message": "403 Forbidden"})
    if method == "PUT":
        note.body = _body(payload)
        note.updated_at = _now()
        return 200, note.to_json(), {}
    if method == "DELETE":
        state.notes[where].remove(note)
        return 204, None, {}
    raise _Refusal(405, {"error": "405 Method Not Allowed"})


def _create(
    state: _State, where: tuple[str, str], body: str, author: GitLabUser, system: bool
) -> Note:
    now = _now()
    note = Note(next(state.ids), body, author, system, now, now)
    state.notes.setdefault(where, []).append(note)
    return note


def _body(payload: Any) -> str:
    body = payload.get("body") if isinstance(payload, dict) else None
    if isinstance(body, list):  # a form-encoded request
        body = body[0] if body else None
    if not isinstance(body, str) or not body:
        raise _Refusal(400, {"error": "body is missing"})
    if len(body) > NOTE_MAX_LENGTH:
        message = f"is too long (maximum is {NOTE_MAX_LENGTH} characters)"
        raise _Refusal(400, {"message": {"note": [message]}})
    return body


def _find(notes: list[Note], note_id: int) -> Note:
    for note in notes:
        if note.id == note_id:
            return note
    raise _Refusal(404, {"message": "404 Note Not Found"})


def _first(query: Mapping[str, list[str]], name: str, default: str) -> str:
    values = query.get(name)
    return values[0] if values else default


def _token_header(headers: Any) -> str | None:
    for name in ("PRIVATE-TOKEN", "JOB-TOKEN"):
        if headers.get(name):
            return name
    return None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


# Rules


def job_runs(
    job: Mapping[str, Any],
    variables: Mapping[str, str],
    changed: Collection[str] | None,
) -> bool:
    """Whether GitLab adds `job` to a pipeline with these variables.

    `changed` lists the files the push changed; None means GitLab cannot
    tell (schedules, web and API pipelines), when `changes:` always holds.
    The first rule whose `if:` and `changes:` both hold decides, by its
    `when:`; a job with no matching rule is left out.
    """
    rules = job.get("rules")
    if rules is None:
        return True
    for rule in rules:
        if _rule_holds(rule, variables, changed):
            return str(rule.get("when", "on_success")) != "never"
    return False


def _rule_holds(
    rule: Mapping[str, Any],
    variables: Mapping[str, str],
    changed: Collection[str] | None,
) -> bool:
    if "if" in rule and not _evaluate(rule["if"], variables):
        return False
    if "changes" in rule:
        return _changes_hold(rule["changes"], variables, changed)
    return True


def _changes_hold(
    changes: Any, variables: Mapping[str, str], changed: Collection[str] | None
) -> bool:
    if changed is None:
        return True
    paths: Sequence[str] = changes["paths"] if isinstance(changes, dict) else changes
    patterns = [_expand(path, variables) for path in paths]
    return any(_glob(pattern, name) for pattern in patterns for name in changed)


def _expand(text: str, variables: Mapping[str, str]) -> str:
    return re.sub(
        r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
        lambda found: variables.get(found[1], ""),
        text,
    )


def _glob(pattern: str, path: str) -> bool:
    """Ruby's `File.fnmatch` with pathname and dotmatch flags, as GitLab uses."""
    regex = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            regex, index = regex + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            regex, index = regex + ".*", index + 2
        else:
            char = pattern[index]
            regex += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
            index += 1
    return re.fullmatch(regex, path) is not None


_TOKEN = re.compile(
    r"\s*(?:(?P<op>==|!=|=~|!~|&&|\|\||\(|\))"
    r"|(?P<var>\$\{?[A-Za-z_][A-Za-z0-9_]*\}?)"
    r"|\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)'"
    r"|(?P<regex>/(?:[^/\\]|\\.)*/i?)"
    r"|(?P<null>null))"
)


def _evaluate(expression: str, variables: Mapping[str, str]) -> bool:
    """Evaluate a `rules:if` expression: `&&` binds tighter than `||`."""
    tokens = _tokens(expression)
    value, rest = _or(tokens, variables)
    if rest:
        raise ValueError(f"cannot read {expression!r} past {rest[0]!r}")
    return bool(value)


def _tokens(expression: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(expression.rstrip()):
        found = _TOKEN.match(expression, position)
        if found is None or found.end() == position:
            raise ValueError(f"cannot read {expression!r} at {position}")
        kind = found.lastgroup or ""
        tokens.append((kind, found[kind]))
        position = found.end()
    return tokens


_Tokens = list[tuple[str, str]]


def _or(tokens: _Tokens, variables: Mapping[str, str]) -> tuple[Any, _Tokens]:
    value, tokens = _and(tokens, variables)
    while tokens and tokens[0] == ("op", "||"):
        right, tokens = _and(tokens[1:], variables)
        value = bool(value) or bool(right)
    return value, tokens


def _and(tokens: _Tokens, variables: Mapping[str, str]) -> tuple[Any, _Tokens]:
    value, tokens = _comparison(tokens, variables)
    while tokens and tokens[0] == ("op", "&&"):
        right, tokens = _comparison(tokens[1:], variables)
        value = bool(value) and bool(right)
    return value, tokens


def _comparison(tokens: _Tokens, variables: Mapping[str, str]) -> tuple[Any, _Tokens]:
    left, tokens = _operand(tokens, variables)
    if not tokens or tokens[0][1] not in ("==", "!=", "=~", "!~"):
        return left, tokens
    operator = tokens[0][1]
    right, tokens = _operand(tokens[1:], variables)
    if operator in ("==", "!="):
        return (left == right) == (operator == "=="), tokens
    matched = left is not None and re.search(right, str(left)) is not None
    return matched == (operator == "=~"), tokens


def _operand(tokens: _Tokens, variables: Mapping[str, str]) -> tuple[Any, _Tokens]:
    if not tokens:
        raise ValueError("expression ends early")
    (kind, text), rest = tokens[0], tokens[1:]
    if (kind, text) == ("op", "("):
        value, rest = _or(rest, variables)
        return value, rest[1:]
    if kind == "var":
        return variables.get(text.strip("${}")), rest
    if kind in ("dq", "sq"):
        return text, rest
    if kind == "regex":
        return text.rstrip("i")[1:-1], rest
    if kind == "null":
        return None, rest
    raise ValueError(f"unexpected {text!r}")
