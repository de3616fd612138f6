"""The plan for GitLab: the Terraform report, merge-request notes and JUnit.

Pure functions over a `Plan`, or over the error that stopped one from being
made; nothing here reads the network, the environment or the clock.

- `render_terraform_report`: `{"create": N, "update": N, "delete": N}`, the
  shape `artifacts:reports:terraform` reads for the merge-request widget.
- `render_markdown`: the plan as one or more note bodies, each within
  GitLab's note size limit and ending with a hidden marker, so that a rerun
  finds its own notes and updates them.
- `render_junit`: one test case per desired address, for
  `artifacts:reports:junit`; drift is a failure, a failed plan an error.
"""

from __future__ import annotations

import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from reconciler.desired import DesiredState, Image
from reconciler.oci import Reference
from reconciler.plan.model import KIND_ORDER, Action, Change, Kind, Plan
from reconciler.plan.render import render_change, render_plan, summary_line

NOTE_LIMIT = 1_000_000
"""GitLab refuses a note body longer than this many characters."""
FOLD_LINES = 50
"""A plan longer than this many lines is folded in `<details>`."""

_MARKER = re.compile(r"^<!-- reconciler:plan key=(?P<key>.*) part=(?P<part>\d+) -->$")
_MARKED_LINE = re.compile(r"^( +)([+~-]) ")
_VERBS = {
    Action.CREATE: "will be created",
    Action.UPDATE: "will be updated in place",
    Action.DELETE: "will be destroyed",
}


@dataclass(frozen=True, slots=True)
class DesiredAddress:
    """An address the desired state claims, and what it holds."""

    kind: Kind
    reference: Reference


def desired_addresses(desired: DesiredState) -> tuple[DesiredAddress, ...]:
    """Every platform tag, version index and alias, in the plan's order."""
    found = [address for image in desired.images for address in _image_addresses(image)]
    return tuple(sorted(found, key=_address_key))


def render_terraform_report(plan: Plan) -> str:
    """The Terraform report: counts of addresses to create, update and delete."""
    summary = plan.summary
    report = {
        "create": summary.add,
        "update": summary.change,
        "delete": summary.destroy,
    }
    return json.dumps(report) + "\n"


# Markdown notes


def note_marker(key: str, part: int) -> str:
    """The hidden line that identifies part `part` (from 1) of `key`'s notes."""
    return f"<!-- reconciler:plan key={_marker_key(key)} part={part} -->"


def marker_part(body: str, key: str) -> int | None:
    """The part number of a note carrying `key`'s marker on a line of its own.

    A quote of the note (`> <!-- ... -->`) in someone's reply does not count.
    """
    wanted = _marker_key(key)
    for line in body.splitlines():
        found = _MARKER.match(line.strip())
        if found and found["key"] == wanted:
            return int(found["part"])
    return None


def render_markdown(
    plan: Plan | None,
    *,
    error: str | None = None,
    key: str = "plan",
    limit: int = NOTE_LIMIT,
    origin: str | None = None,
) -> list[str]:
    """The plan, or the error that stopped it, as note bodies of <= `limit` chars.

    Each body opens with the summary line (then `origin`, a line saying
    which commit the plan is for, when given), calls out warnings and
    errors, shows the plan text in a fenced `diff` block (folded when
    long), and ends with `note_marker(key, part)`. Raises `ValueError` when
    `limit` leaves no room for a line of the plan.
    """
    if plan is None and error is None:
        raise ValueError("render_markdown needs a plan or an error")
    note = _note_content(plan, error, key)
    if origin:
        note = dataclasses.replace(note, headline=f"{note.headline}\n\n{origin}")
    budget = limit - note.overhead()
    if budget < 2:
        raise ValueError(f"a note limit of {limit} characters leaves no room")
    parts = _pack(note.lines, budget)
    return [
        note.part(number, len(parts), lines).text()
        for number, lines in enumerate(parts, start=1)
    ]


def unshift_diff(text: str) -> str:
    """Undo the marker shift of the Markdown's diff lines: the text plan again."""
    return "\n".join(_unshift(line) for line in text.split("\n"))


@dataclass(frozen=True, slots=True)
class _Note:
    """One note body: headline, callouts, then the lines in a fenced block."""

    headline: str
    callouts: tuple[str, ...]
    language: str
    fence: str
    lines: tuple[str, ...]
    key: str
    number: int = 1
    total: int = 1

    def part(self, number: int, total: int, lines: Sequence[str]) -> _Note:
        """Part `number` of `total`; callouts go in the first part only."""
        callouts = self.callouts if number == 1 else ()
        return dataclasses.replace(
            self, callouts=callouts, lines=tuple(lines), number=number, total=total
        )

    def text(self) -> str:
        return self._wrap("\n".join(self.lines), len(self.lines))

    def overhead(self) -> int:
        """Characters besides the lines, at the worst: callouts, folded, 10**6 parts."""
        worst = dataclasses.replace(self, number=10**6, total=10**6)
        return len(worst._wrap("", 10**6))

    def _wrap(self, body: str, count: int) -> str:
        block = f"{self.fence}{self.language}\n{body}\n{self.fence}"
        if count > FOLD_LINES:
            summary = f"Show the plan ({count} lines)"
            block = f"<details><summary>{summary}</summary>\n\n{block}\n\n</details>"
        head = self.headline
        if self.total > 1:
            head += f"\n\n_Part {self.number} of {self.total}._"
        blocks = [head, *self.callouts, block, note_marker(self.key, self.number)]
        return "\n\n".join(blocks) + "\n"


def _note_content(plan: Plan | None, error: str | None, key: str) -> _Note:
    """The whole note, before it is split: headline, callouts and lines."""
    if error is not None:
        headline = ":x: **The plan failed; nothing can be applied until it is fixed.**"
        lines = error.splitlines() or ["(no message)"]
        callout = f"> :x: **Error:** {lines[0]}"
        return _note(headline, (callout,), "text", lines, key)
    assert plan is not None
    quiet = dataclasses.replace(plan, warnings=())
    text = render_plan(quiet).rstrip("\n")
    callouts = tuple(f"> :warning: **Warning:** {w}" for w in plan.warnings)
    lines = [_shift(line) for line in text.split("\n")]
    return _note(_headline(plan), callouts, "diff", lines, key)


def _note(
    headline: str, callouts: tuple[str, ...], language: str, lines: list[str], key: str
) -> _Note:
    fence = _fence("\n".join([*callouts, *lines]))
    return _Note(headline, callouts, language, fence, tuple(lines), key)


def _headline(plan: Plan) -> str:
    if plan.summary.empty:
        return "**No changes.** The registry matches the desired state."
    return f"**{summary_line(plan.summary)}**"


def _shift(line: str) -> str:
    """`  + tag x` -> `+   tag x`: GitLab colours a diff line by its first char."""
    found = _MARKED_LINE.match(line)
    if found is None:
        return line
    indent, symbol = found.groups()
    return f"{symbol}{indent} {line[found.end() :]}"


def _unshift(line: str) -> str:
    found = re.match(r"^([+~-])( +) ", line)
    if found is None:
        return line
    symbol, indent = found.groups()
    return f"{indent}{symbol} {line[found.end() :]}"


def _fence(content: str) -> str:
    """A backtick fence longer than any run of backticks in `content`."""
    longest = max((len(run) for run in re.findall(r"`+", content)), default=0)
    return "`" * max(3, longest + 1)


def _pack(lines: Sequence[str], budget: int) -> list[list[str]]:
    """Lines in parts of <= `budget` chars (a newline each), broken between blocks."""
    parts: list[list[str]] = [[]]
    used = 0
    for block in _blocks(lines):
        size = sum(len(line) + 1 for line in block)
        if used + size > budget and parts[-1]:
            parts.append([])
            used = 0
        if size <= budget:
            parts[-1] += block
            used += size
            continue
        for piece in _pieces(block, budget - 1):
            if used + len(piece) + 1 > budget:
                parts.append([])
                used = 0
            parts[-1].append(piece)
            used += len(piece) + 1
    return parts


def _blocks(lines: Sequence[str]) -> Iterable[list[str]]:
    """Runs of lines, each ending with the blank line that closes it."""
    block: list[str] = []
    for line in lines:
        block.append(line)
        if not line.strip():
            yield block
            block = []
    if block:
        yield block


def _pieces(lines: list[str], width: int) -> Iterable[str]:
    """Lines, with any line longer than `width` cut into pieces."""
    for line in lines:
        if len(line) <= width:
            yield line
            continue
        for start in range(0, len(line), width):
            yield line[start : start + width]


def _marker_key(key: str) -> str:
    # The key goes inside an HTML comment: no `--`, nothing unprintable.
    cleaned = re.sub(r"[^A-Za-z0-9 ._/:()\[\]-]", "_", key)
    return re.sub(r"-{2,}", "-", cleaned).strip() or "plan"


# JUnit


def render_junit(
    addresses: Sequence[DesiredAddress],
    plan: Plan | None,
    *,
    error: str | None = None,
) -> str:
    """JUnit XML: a test case per desired address, grouped by repository.

    An address with a planned change is a failure carrying the change's
    text; an address to destroy gets a case of its own. When the plan
    failed (`error`), every address is an error, since none was checked;
    with no address known, one case named `desired state` carries it.
    """
    cases = _cases(addresses, plan, error)
    root = ET.Element("testsuites", name="reconciler plan")
    for repository, members in _by_repository(cases):
        suite = ET.SubElement(root, "testsuite", name=repository)
        for case in members:
            suite.append(case)
        _count(suite, members)
    _count(root, cases)
    ET.indent(root)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        + ET.tostring(root, encoding="unicode")
        + "\n"
    )


def _cases(
    addresses: Sequence[DesiredAddress], plan: Plan | None, error: str | None
) -> list[ET.Element]:
    if error is not None and not addresses:
        return [_case("desired state", "reconciler", error=error)]
    changes = {str(c.address): c for c in plan.changes} if plan else {}
    cases = [
        _case(
            str(address.reference),
            str(address.reference.repository),
            change=changes.pop(str(address.reference), None),
            error=error,
        )
        for address in addresses
    ]
    cases += [
        _case(name, str(change.address.repository), change=change)
        for name, change in changes.items()
    ]
    return cases


def _case(
    name: str,
    classname: str,
    *,
    change: Change | None = None,
    error: str | None = None,
) -> ET.Element:
    case = ET.Element("testcase", name=name, classname=classname)
    if error is not None:
        failed = ET.SubElement(
            case, "error", message="not checked: the plan failed", type="PlanError"
        )
        failed.text = error
    elif change is not None:
        message = f"{change.address} {_VERBS[change.action]}"
        failed = ET.SubElement(
            case, "failure", message=message, type=change.action.value
        )
        failed.text = render_change(change)
    return case


def _by_repository(
    cases: list[ET.Element],
) -> list[tuple[str, list[ET.Element]]]:
    groups: dict[str, list[ET.Element]] = {}
    for case in cases:
        groups.setdefault(case.get("classname", ""), []).append(case)
    return sorted(groups.items())


def _count(element: ET.Element, cases: list[ET.Element]) -> None:
    element.set("tests", str(len(cases)))
    element.set("failures", str(sum(c.find("failure") is not None for c in cases)))
    element.set("errors", str(sum(c.find("error") is not None for c in cases)))


def _image_addresses(image: Image) -> Iterable[DesiredAddress]:
    for version in image.versions:
        for platform in image.platforms:
            yield DesiredAddress(Kind.TAG, image.platform_ref(version, platform))
        yield DesiredAddress(Kind.INDEX, image.version_ref(version))
    for alias in image.aliases:
        yield DesiredAddress(Kind.ALIAS, image.alias_ref(alias))


def _address_key(address: DesiredAddress) -> tuple[str, int, str]:
    reference = address.reference
    return (str(reference.repository), KIND_ORDER[address.kind], str(reference))
