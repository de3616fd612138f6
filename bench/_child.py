"""Run a command as a child process and measure its wall time and peak memory."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

GNU_TIME = "/usr/bin/time"  # Debian's "time" package


@dataclass(frozen=True)
class Run:
    """How a child process went: wall time, peak RSS, exit code and output."""

    seconds: float
    max_rss_mb: float
    returncode: int
    stdout: str
    stderr: str

    def check(self, what: str) -> Run:
        """Return self, or raise with the output when the command failed."""
        if self.returncode != 0:
            raise RuntimeError(
                f"{what} exited {self.returncode}:\n{self.stdout[-3000:]}\n"
                f"{self.stderr[-3000:]}"
            )
        return self


def run_measured(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Run:
    """Run `args` to completion; wall time counts from spawn to exit.

    Peak memory is read by GNU time, which runs the command. Linux starts a
    process's `ru_maxrss` from the RSS of the process it was spawned from
    (vfork, then exec), so `wait4` here would report this script's own
    memory whenever it is the larger; GNU time itself is tiny.
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as rss,
    ):
        started = time.monotonic()
        process = subprocess.run(
            [GNU_TIME, "--format=%M", f"--output={rss.name}", *args],
            env=None if env is None else dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            check=False,
        )
        seconds = time.monotonic() - started
        return Run(
            seconds=seconds,
            max_rss_mb=_kib(rss.read()) / 1024,
            returncode=process.returncode,
            stdout=_read(out),
            stderr=_read(err),
        )


def _kib(text: str) -> int:
    """The last line of GNU time's output: max RSS in KiB."""
    lines = text.strip().splitlines()
    return int(lines[-1]) if lines and lines[-1].isdigit() else 0


def _read(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")
