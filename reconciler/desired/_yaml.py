"""Reading YAML text into plain data, noting where every key and value sits.

PyYAML's own loaders are too forgiving for files that gate a registry:

- they keep the last of two equal keys without a word;
- anchors and aliases let a tiny file expand into billions of values;
- deep nesting exhausts Python's stack.

So the text is composed into nodes by a loader that refuses anchors and deep
nesting, and the nodes are turned into data here, where duplicate keys and
unsupported tags become problems. Keys are taken as written: `3.10:` is the
key "3.10", not the number 3.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, NodeEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from reconciler.desired._problems import FileReport
from reconciler.desired._spots import START, FieldPath, Spot, shorten

MAX_DEPTH = 64
"""Deepest nesting accepted; the format itself needs five levels."""

_STANDARD_TAGS = "tag:yaml.org,2002:"
_MAP_TAG = _STANDARD_TAGS + "map"
_SEQ_TAG = _STANDARD_TAGS + "seq"
_KIND = {MappingNode: "a mapping", SequenceNode: "a list", ScalarNode: "a value"}


@dataclass(frozen=True, slots=True)
class Parsed:
    """The data of one YAML document: dicts, lists and scalars."""

    data: Any


class _Refusal(Exception):
    """The text cannot be read as a desired-state document."""

    def __init__(self, spot: Spot, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.spot = spot
        self.message = message
        self.hint = hint


def parse_yaml(text: str, report: FileReport) -> Parsed | None:
    """Read one YAML document, or return None after reporting why not."""
    try:
        _refuse_tabs(text)
        node = _compose(text)
    except _Refusal as refusal:
        report.add_to_file(refusal.message, refusal.hint, at=refusal.spot)
        return None
    if node is None:
        hint = "write `version: 1` and what you want, or delete the file"
        report.add_to_file("the file is empty", hint)
        return None
    return Parsed(_Converter(report).value(node, ()))


def _refuse_tabs(text: str) -> None:
    # PyYAML's own message ("found character '\t' that cannot start any
    # token") hides the cause, and some tab layouts it even accepts.
    for number, line in enumerate(text.splitlines(), start=1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        content = line[len(indent) :]
        if "\t" in indent and content and not content.startswith("#"):
            spot = Spot(number, indent.index("\t") + 1)
            hint = "indent with spaces only; YAML does not allow tabs there"
            raise _Refusal(spot, "a tab is used for indentation", hint)


def _compose(text: str) -> Node | None:
    try:
        return _Loader(text).get_single_node()
    except yaml.MarkedYAMLError as error:
        raise _from_marked(error) from None
    except yaml.reader.ReaderError as error:
        spot = Spot.in_text(text, error.position)
        message = f"invalid YAML: character #x{error.character:04x} is not allowed"
        raise _Refusal(spot, message, "remove control characters") from None
    except yaml.YAMLError as error:
        raise _Refusal(START, f"invalid YAML: {error}") from None


def _from_marked(error: yaml.MarkedYAMLError) -> _Refusal:
    spot = Spot.of(error.problem_mark or error.context_mark)
    if error.problem == "but found another document":
        hint = "keep one document per file: split it into two files"
        return _Refusal(spot, "a second YAML document in the file", hint)
    message = f"invalid YAML: {error.problem or error.context}"
    if error.context and error.problem:
        message += f" ({error.context}{_where(error.context_mark)})"
    return _Refusal(spot, message)


def _where(mark: yaml.Mark | None) -> str:
    return f" on line {mark.line + 1}" if mark is not None else ""


class _Loader(Reader, Scanner, Parser, Composer, Resolver):
    """PyYAML's safe loader, refusing anchors, aliases and deep nesting."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        Resolver.__init__(self)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # stubs lack it
        _refuse_anchor(event)
        if self._depth >= MAX_DEPTH:
            message = f"values nested deeper than {MAX_DEPTH} levels"
            raise _Refusal(Spot.of(event.start_mark), message)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _refuse_anchor(event: Any) -> None:
    # Refused at the first sight, before any alias is expanded: anchors and
    # aliases are how a "billion laughs" file explodes in memory.
    if isinstance(event, AliasEvent) or (
        isinstance(event, NodeEvent) and event.anchor is not None
    ):
        hint = "write each value out in full"
        message = "anchors and aliases are not supported"
        raise _Refusal(Spot.of(event.start_mark), message, hint)


class _Converter:
    """Turns nodes into data, noting spots and reporting what cannot be data."""

    def __init__(self, report: FileReport) -> None:
        self._report = report
        self._scalars = SafeConstructor()

    def value(self, node: Node, path: FieldPath, key: Node | None = None) -> Any:
        """The data of `node`, which sits at `path`."""
        self._report.spots.note(path, node, key)
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            return self._sequence(node, path)
        assert isinstance(node, ScalarNode)  # the only other kind of node
        return self._scalar(node, path)

    def _mapping(self, node: MappingNode, path: FieldPath) -> dict[str, Any] | None:
        if not self._plain(node, _MAP_TAG, path):
            return None
        data: dict[str, Any] = {}
        seen: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, path)
            if key is None:
                continue
            if key in seen:
                self._duplicate(
                    key,
                    seen[key],
                    key_node,
                    path,
                )
                continue
            seen[key] = key_node
            data[key] = self.value(value_node, (*path, key), key_node)
        return data

    def _sequence(self, node: SequenceNode, path: FieldPath) -> list[Any] | None:
        if not self._plain(node, _SEQ_TAG, path):
            return None
        return [self.value(item, (*path, i)) for i, item in enumerate(node.value)]

    def _scalar(self, node: ScalarNode, path: FieldPath) -> Any:
        if node.tag not in SafeConstructor.yaml_constructors:
            self._unsupported_tag(node, path)
            return None
        try:
            return self._scalars.construct_object(node)
        # A date like 2024-13-45, bad base64 under !!binary, an integer too
        # long to convert: each is one value the file got wrong.
        except (yaml.YAMLError, ValueError, OverflowError) as error:
            message = f"YAML cannot read {shorten(node.value)!r}: {_reason(error)}"
            self._report.add(path, message, "quote it if it is meant as text")
            self._report.unreadable(path)
            return None

    def _key(self, node: Node, path: FieldPath) -> str | None:
        if isinstance(node, ScalarNode):
            return str(node.value)
        message = f"a key must be a plain value, not {_KIND[type(node)]}"
        self._report.add_at(Spot.of(node.start_mark), path, message)
        return None

    def _plain(self, node: Node, tag: str, path: FieldPath) -> bool:
        if node.tag == tag:
            return True
        self._unsupported_tag(node, path)
        return False

    def _unsupported_tag(self, node: Node, path: FieldPath) -> None:
        shown = node.tag.replace(_STANDARD_TAGS, "!!", 1)
        message = f"the YAML tag {shown} is not supported here"
        self._report.add(path, message, "remove the tag")
        self._report.unreadable(path)

    def _duplicate(self, key: str, first: Node, again: Node, path: FieldPath) -> None:
        line = first.start_mark.line + 1
        message = f"duplicate key {shorten(key)!r}; it is first set on line {line}"
        hint = "remove one of them: YAML would silently keep only the last"
        self._report.add_at(
            Spot.of(again.start_mark),
            (*path, key),
            message,
            hint,
        )


def _reason(error: Exception) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        return error.problem
    return str(error)
