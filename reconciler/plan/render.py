"""The plan for people: Terraform's conventions, one block per address."""

from __future__ import annotations

from collections.abc import Callable

from reconciler.oci import Digest, describe_media_type
from reconciler.plan.model import (
    Action,
    Change,
    Child,
    Kind,
    Plan,
    ProjectChange,
    Summary,
)

Style = Callable[[str, str], str]  # (text, colour name) -> text

_COLOURS = {Action.CREATE: "green", Action.UPDATE: "yellow", Action.DELETE: "red"}
_VERBS = {
    Action.CREATE: "will be created",
    Action.UPDATE: "will be updated in place",
    Action.DELETE: "will be destroyed",
}


def plain(text: str, _colour: str) -> str:
    """No colour: for files, pipes and CI logs."""
    return text


def render_plan(plan: Plan, style: Style = plain) -> str:
    """The whole plan as text, closing with the summary line."""
    if plan.summary.empty:
        return _warnings(plan) + "No changes. The registry matches the desired state.\n"
    keep = [c for c in plan.changes if c.action is not Action.DELETE]
    destroy = [c for c in plan.changes if c.action is Action.DELETE]
    blocks = [render_project(project, style) for project in plan.projects]
    blocks += [render_change(change, style) for change in keep]
    if destroy:
        blocks.append(
            style("  Destroys, listed last so they are not missed:", "red") + "\n"
        )
        blocks += [render_change(change, style) for change in destroy]
    return (
        _warnings(plan) + "\n".join(blocks) + "\n" + summary_line(plan.summary) + "\n"
    )


def summary_line(summary: Summary) -> str:
    """`Plan: N to add, N to change, N to destroy.`"""
    return (
        f"Plan: {summary.add} to add, {summary.change} to change, "
        f"{summary.destroy} to destroy."
    )


def render_change(change: Change, style: Style = plain) -> str:
    """One block: a comment line, the headline, then the details."""
    symbol = style(change.action.symbol, _COLOURS[change.action])
    lines = [
        f"  # {change.address} {_VERBS[change.action]}",
        f"  {symbol} {change.kind.value} {change.address}",
        *_details(change),
        *(_child_line(child, style) for child in change.children),
    ]
    return "\n".join(lines) + "\n"


def render_project(project: ProjectChange, style: Style = plain) -> str:
    """One block for a Harbor project that apply creates before any write."""
    symbol = style(project.action.symbol, _COLOURS[project.action])
    lines = [
        f"  # {project.address} {_VERBS[project.action]}",
        f"  {symbol} project {project.address} ({project.publicity})",
    ]
    return "\n".join(lines) + "\n"


def _details(change: Change) -> list[str]:
    if change.action is Action.DELETE:
        return _field_lines([("digest", _transition(change.before, None))])
    if change.kind is Kind.TAG:
        return _tag_details(change)
    if change.kind is Kind.INDEX:
        return _field_lines(
            [
                ("media type", describe_media_type(change.media_type)),
                ("digest", _transition(change.before, change.after)),
                *(("differs", line) for line in change.differences),
            ]
        )
    return _field_lines(
        [
            ("follows", str(change.target) if change.target else "-"),
            ("digest", _transition(change.before, change.after)),
        ]
    )


def _tag_details(change: Change) -> list[str]:
    platform = f" ({change.platform})" if change.platform else ""
    fields = []
    if change.source is not None:
        fields.append(("from", str(change.source)))
    fields.append(("digest", _transition(change.before, change.after) + platform))
    return _field_lines(fields)


def _field_lines(fields: list[tuple[str, str]]) -> list[str]:
    width = max(len(name) for name, _ in fields)
    return [f"      {name.ljust(width)}  {value}" for name, value in fields]


def _child_line(child: Child, style: Style) -> str:
    colours = {"+": "green", "-": "red", "~": "yellow", " ": ""}
    symbol = style(child.symbol, colours[child.symbol]) if child.symbol != " " else " "
    platform = str(child.platform)
    return f"    {symbol} {platform:<14} {_transition(child.before, child.digest)}"


def _transition(before: Digest | None, after: Digest | None) -> str:
    if before is None and after is not None:
        return after.short
    if after is None and before is not None:
        return before.short
    if before is not None and after is not None and before != after:
        return f"{before.short} -> {after.short}"
    return after.short if after else "-"


def _warnings(plan: Plan) -> str:
    return "".join(f"Warning: {warning}\n\n" for warning in plan.warnings)
