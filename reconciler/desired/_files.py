"""Finding desired-state files below the paths given, and reading them safely."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.desired._problems import FileReport, Problem
from reconciler.desired._spots import Spot

MAX_FILE_SIZE = 1024 * 1024
"""Larger files are refused unread: desired state is small, and a cap bounds
the work a hostile file can cause."""

SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file to load: how to show it, and where to read it."""

    display: str
    path: Path


def find_files(paths: Sequence[Path], problems: list[Problem]) -> list[SourceFile]:
    """Every file named or found below `paths`, each once, in a stable order."""
    found: dict[Path, SourceFile] = {}
    for given in paths:
        for source in _expand(Path(given), problems):
            # A folder and a file inside it may both be given; load it once.
            found.setdefault(source.path.resolve(), source)
    return list(found.values())


def read_text(source: SourceFile, report: FileReport) -> str | None:
    """The file's text, or None after reporting why it cannot be read."""
    try:
        data = _read_capped(source.path)
    except OSError as error:
        report.add_to_file(f"cannot read the file: {error.strerror}")
        return None
    if data is None:
        _report_too_large(report)
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        _report_not_utf8(report, data, error)
        return None


def _expand(given: Path, problems: list[Problem]) -> Iterator[SourceFile]:
    if given.is_dir():
        yield from _walk(given, problems)
        return
    if given.is_file():
        yield SourceFile(str(given), given)
        return
    exists = given.exists() or given.is_symlink()
    message = "not a regular file or folder" if exists else "no such file or folder"
    problems.append(Problem.of_file(str(given), message))


def _walk(root: Path, problems: list[Problem]) -> Iterator[SourceFile]:
    # Links are not followed into folders: a link that stays inside the tree
    # would load files twice, and one that leaves it is refused below.
    files: list[Path] = []
    for folder, folders, names in os.walk(root, followlinks=False):
        here = Path(folder)
        links = [name for name in folders if (here / name).is_symlink()]
        files += [here / name for name in [*names, *links] if _wanted(here / name)]
    if not files:
        message = "no .yaml or .yml files in this folder"
        problems.append(Problem.of_file(str(root), message))
    for path in sorted(files):
        source = SourceFile(str(root / path.relative_to(root)), path)
        if _escapes(path, root):
            problems.append(_escape_problem(source, root))
        elif path.is_file():
            yield source
        elif path.suffix in SUFFIXES:
            message = "not a regular file (a broken symbolic link?)"
            problems.append(Problem.of_file(source.display, message))


def _wanted(path: Path) -> bool:
    return path.suffix in SUFFIXES or (path.is_symlink() and path.is_dir())


def _escapes(path: Path, root: Path) -> bool:
    # realpath, unlike Path.resolve, never raises on a link loop; a loop then
    # shows as "not a regular file".
    target = Path(os.path.realpath(path))
    return path.is_symlink() and not target.is_relative_to(root.resolve())


def _escape_problem(source: SourceFile, root: Path) -> Problem:
    target = Path(os.path.realpath(source.path))
    message = f"symbolic link to {str(target)!r}, outside {str(root)!r}"
    hint = "copy the file into the folder, or name it on the command line"
    return Problem.of_file(source.display, message, hint)


def _read_capped(path: Path) -> bytes | None:
    # Checked before reading, and the read is capped too, in case the file
    # grows in between.
    if path.stat().st_size > MAX_FILE_SIZE:
        return None
    with path.open("rb") as stream:
        data = stream.read(MAX_FILE_SIZE + 1)
    return data if len(data) <= MAX_FILE_SIZE else None


def _report_too_large(report: FileReport) -> None:
    message = f"the file is larger than {MAX_FILE_SIZE // 1024 // 1024} MiB"
    hint = "split the desired state into several files in the folder"
    report.add_to_file(message, hint)


def _report_not_utf8(
    report: FileReport, data: bytes, error: UnicodeDecodeError
) -> None:
    before = data[: error.start].decode("utf-8")
    spot = Spot.in_text(before, len(before))
    byte = data[error.start]
    message = f"the file is not UTF-8: byte 0x{byte:02x} cannot be decoded"
    report.add_to_file(message, "save the file as UTF-8", at=spot)
