"""The plan for machines: the `--json` document and the saved plan file.

The saved plan is the JSON document plus what apply needs to act without the
desired-state files: the bytes of each index, where each manifest is copied
from, every observed address with its digest, and the registries' connection
settings. It holds no credential: only the names of environment variables.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler.errors import ApplyError
from reconciler.oci import Digest, Platform, Reference
from reconciler.plan.model import Action, Change, Child, Kind, Plan, ProjectChange

FORMAT_VERSION = "1"
SAVED_KIND = "reconciler-plan"
PROJECT_KIND = "project"
"""The `kind` of a Harbor project creation in `changes[]`; it comes first."""


def plan_document(plan: Plan) -> dict[str, Any]:
    """The `--json` document."""
    summary = plan.summary
    return {
        "format_version": FORMAT_VERSION,
        "changes": [
            *(_project_json(project) for project in plan.projects),
            *(_change_json(change) for change in plan.changes),
        ],
        "summary": {
            "add": summary.add,
            "change": summary.change,
            "destroy": summary.destroy,
        },
        "warnings": list(plan.warnings),
    }


def render_json(plan: Plan) -> str:
    """The `--json` document as text."""
    return json.dumps(plan_document(plan), indent=2) + "\n"


def save_plan(plan: Plan, path: Path, registries: Mapping[str, dict[str, Any]]) -> None:
    """Write the plan with everything `apply --plan` needs, and no secret."""
    document = plan_document(plan)
    document["kind"] = SAVED_KIND
    document["observed"] = dict(plan.observed)
    document["registries"] = dict(registries)
    saved_changes = document["changes"][len(plan.projects) :]
    for saved, change in zip(saved_changes, plan.changes, strict=True):
        if change.content is not None:
            saved["content"] = base64.b64encode(change.content).decode()
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def load_plan(path: Path) -> tuple[Plan, dict[str, dict[str, Any]]]:
    """Read a saved plan and its registry settings; raise `ApplyError` if bad."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ApplyError(f"cannot read plan file {path}: {error}") from None
    if not isinstance(document, dict) or document.get("kind") != SAVED_KIND:
        raise ApplyError(
            f"{path} is not a saved plan",
            hint="make one with reconciler plan --out FILE",
        )
    if document.get("format_version") != FORMAT_VERSION:
        raise ApplyError(f"plan file {path} has an unsupported format version")
    try:
        return _plan_from(document), dict(document.get("registries") or {})
    except (KeyError, TypeError, ValueError) as error:
        raise ApplyError(f"plan file {path} is damaged: {error!r}") from None


def _project_json(project: ProjectChange) -> dict[str, Any]:
    return {
        "action": project.action.value,
        "kind": PROJECT_KIND,
        "address": project.address,
        "before": None,
        "after": None,
        "public": project.public,
    }


def _change_json(change: Change) -> dict[str, Any]:
    data: dict[str, Any] = {
        "action": change.action.value,
        "kind": change.kind.value,
        "address": str(change.address),
        "before": change.before,
        "after": change.after,
        "media_type": change.media_type,
        "size": change.size,
    }
    if change.platform is not None:
        data["platform"] = str(change.platform)
    if change.source is not None:
        data["source"] = str(change.source)
    if change.copy_from is not None:
        data["copy_from"] = str(change.copy_from)
    if change.target is not None:
        data["target"] = str(change.target)
    if change.kind is Kind.INDEX:
        data["children"] = [_child_json(child) for child in change.children]
        data["differences"] = list(change.differences)
    return data


def _child_json(child: Child) -> dict[str, Any]:
    actions = {"+": "create", "-": "delete", "~": "update", " ": "no-op"}
    return {
        "platform": str(child.platform),
        "digest": child.digest,
        "before": child.before,
        "action": actions[child.symbol],
    }


def _plan_from(document: dict[str, Any]) -> Plan:
    items = document["changes"]
    projects = tuple(_project_from(i) for i in items if i["kind"] == PROJECT_KIND)
    changes = tuple(_change_from(i) for i in items if i["kind"] != PROJECT_KIND)
    observed = {
        str(address): Digest(digest) if digest else None
        for address, digest in document["observed"].items()
    }
    warnings = tuple(document.get("warnings") or ())
    return Plan(changes, observed, warnings, projects)


def _project_from(item: dict[str, Any]) -> ProjectChange:
    host, _, name = str(item["address"]).partition("/")
    if not host or not name or "/" in name:
        raise ValueError(f"bad project address {item['address']!r}")
    return ProjectChange(host, name, bool(item["public"]), Action(item["action"]))


def _change_from(item: dict[str, Any]) -> Change:
    content = item.get("content")
    return Change(
        action=Action(item["action"]),
        kind=Kind(item["kind"]),
        address=Reference.parse(item["address"]),
        before=_digest(item.get("before")),
        after=_digest(item.get("after")),
        media_type=str(item["media_type"]),
        size=int(item.get("size", 0)),
        platform=Platform.parse(item["platform"]) if item.get("platform") else None,
        source=_reference(item.get("source")),
        copy_from=_reference(item.get("copy_from")),
        content=base64.b64decode(content) if content else None,
        children=tuple(_child_from(child) for child in item.get("children") or ()),
        target=_reference(item.get("target")),
        differences=tuple(str(line) for line in item.get("differences") or ()),
    )


def _child_from(item: dict[str, Any]) -> Child:
    return Child(
        Platform.parse(item["platform"]),
        _digest(item["digest"]),
        _digest(item["before"]),
    )


def _digest(value: Any) -> Digest | None:
    return Digest(str(value)) if value else None


def _reference(value: Any) -> Reference | None:
    return Reference.parse(str(value)) if value else None
