"""`load_desired`: from paths to one checked, frozen desired state."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from reconciler.desired._document import Declarations, declarations_of
from reconciler.desired._files import SourceFile, find_files, read_text
from reconciler.desired._merge import merge
from reconciler.desired._problems import DesiredStateError, FileReport, Problem
from reconciler.desired._yaml import parse_yaml
from reconciler.desired.models import DesiredState


def load_desired(
    paths: Sequence[Path],
    *,
    known_hosts: Callable[[str], bool] | None = None,
) -> DesiredState:
    """Load and check every file named or found below `paths`, without network.

    `known_hosts(host)` says whether Docker's config has credentials for a
    host; when given, a host an image uses with neither that nor a
    `registries` entry is a problem. Raises `DesiredStateError` listing
    every problem in every file.
    """
    if not paths:
        raise ValueError("load_desired needs at least one path")
    problems: list[Problem] = []
    files = [_declarations(source, problems) for source in find_files(paths, problems)]
    state = merge(files, known_hosts, problems)
    if problems:
        raise DesiredStateError(problems)
    return state


def _declarations(source: SourceFile, problems: list[Problem]) -> Declarations:
    report = FileReport(source.display)
    text = read_text(source, report)
    parsed = parse_yaml(text, report) if text is not None else None
    declared = Declarations()
    if parsed is not None:
        declared = declarations_of(parsed, source.path.parent, report)
    problems += report.problems
    return declared
