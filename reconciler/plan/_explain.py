"""What differs inside an index, in words, for the people reading a plan.

The child lines of a plan say which platform gains, loses or changes a
manifest. They cannot say why an index by another tool is rewritten when
its children look the same: a different media type, a variant or an
annotation. DeepDiff compares the two documents and each difference becomes
one short line.
"""

from __future__ import annotations

import json
from typing import Any

MAX_LINES = 8

_VERBS = {
    "values_changed": "changed",
    "type_changes": "changed",
    "dictionary_item_added": "added",
    "dictionary_item_removed": "removed",
    "iterable_item_added": "added",
    "iterable_item_removed": "removed",
}


def explain_index(live: bytes, planned: bytes) -> tuple[str, ...]:
    """Lines such as `manifests[1].platform.variant removed ("v8")`."""
    # Imported here, not at the top: DeepDiff pulls in numpy, a cost every run
    # would pay at start-up, while only a plan rewriting an index needs it.
    from deepdiff import DeepDiff

    try:
        before, after = json.loads(live), json.loads(planned)
    except ValueError:
        return ("the live index is not JSON",)
    diff = DeepDiff(before, after, ignore_order=True, view="tree")
    lines = sorted(
        _line(kind, path, item.t1, item.t2)
        for kind, items in diff.items()
        for item in items
        if not _shown_as_child(path := item.path(output_format="list"))
    )
    if len(lines) > MAX_LINES:
        lines = [*lines[:MAX_LINES], f"and {len(lines) - MAX_LINES} more differences"]
    return tuple(lines)


def _shown_as_child(path: list[Any]) -> bool:
    """Whether the child lines of the plan already show this difference."""
    if path[:1] != ["manifests"]:
        return False
    return len(path) <= 2 or path[-1] in ("digest", "size")


def _line(kind: str, path: list[Any], before: Any, after: Any) -> str:
    where = _path(path)
    verb = _VERBS.get(kind, kind.replace("_", " "))
    if verb == "changed":
        return f"{where} changed: {_short(before)} -> {_short(after)}"
    value = after if verb == "added" else before
    return f"{where} {verb} ({_short(value)})"


def _path(path: list[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "document"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
