"""Where values sit in a file: 1-based lines and columns by field path."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Protocol

from yaml.nodes import Node, ScalarNode

FieldPath = tuple[str | int, ...]
"""Keys and list indexes from the top of a file down to one value."""


class _Mark(Protocol):
    """A PyYAML mark, from the Python or the C implementation."""

    @property
    def line(self) -> int: ...

    @property
    def column(self) -> int: ...


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class Spot:
    """A 1-based line and column."""

    line: int
    column: int

    @classmethod
    def of(cls, mark: _Mark | None) -> Spot:
        """The spot of a PyYAML mark, which counts from 0."""
        return cls(mark.line + 1, mark.column + 1) if mark is not None else START

    @classmethod
    def in_text(cls, text: str, offset: int) -> Spot:
        """The spot of the character at `offset` in `text`."""
        line_start = text.rfind("\n", 0, offset) + 1
        return cls(text.count("\n", 0, offset) + 1, offset - line_start + 1)


START = Spot(1, 1)
"""Where problems of a whole file are reported."""


class Spots:
    """The nodes of one file's values and keys, found by field path."""

    def __init__(self) -> None:
        self._values: dict[FieldPath, Node] = {}
        self._keys: dict[FieldPath, Node] = {}

    def note(self, path: FieldPath, node: Node, key: Node | None = None) -> None:
        """Remember where the value at `path`, and maybe its key, is written."""
        self._values[path] = node
        if key is not None:
            self._keys[path] = key

    def value(self, path: FieldPath) -> Spot:
        """Where the value at `path` starts, else where its nearest parent does."""
        while path and path not in self._values:
            path = path[:-1]
        node = self._values.get(path)
        return Spot.of(node.start_mark if node is not None else None)

    def key(self, path: FieldPath) -> Spot:
        """Where the key of `path` is written, else where its value is."""
        node = self._keys.get(path)
        return Spot.of(node.start_mark) if node is not None else self.value(path)

    def written(self, path: FieldPath) -> str | None:
        """The scalar at `path` exactly as written, if it is a scalar."""
        node = self._values.get(path)
        return node.value if isinstance(node, ScalarNode) else None


def format_path(path: FieldPath) -> str:
    """Render a field path as `images[0].aliases.latest`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.match(part):
            text += f".{shorten(part)}" if text else shorten(part)
        else:
            text += f"[{json.dumps(shorten(part), ensure_ascii=False)}]"
    return text


def shorten(text: str, limit: int = 60) -> str:
    """`text`, cut to `limit` characters with an ellipsis, for messages."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
