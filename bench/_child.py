"""Run a command as a child process and measure its wall time and peak memory."""

from __future__ import annotations

import os
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
    """How a child process went: wall time, CPU, peak RSS, exit code, output."""

    seconds: float
    cpu_seconds: float
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
            [GNU_TIME, "--format=%U %S %M", f"--output={rss.name}", *args],
            env=None if env is None else dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            check=False,
        )
        seconds = time.monotonic() - started
        cpu, max_rss_kib = _usage(rss.read())
        return Run(
            seconds=seconds,
            cpu_seconds=cpu,
            max_rss_mb=max_rss_kib / 1024,
            returncode=process.returncode,
            stdout=_read(out),
            stderr=_read(err),
        )


def _usage(text: str) -> tuple[float, int]:
    """The last line of GNU time's output: user + system seconds, max RSS in KiB.

    Lines before it are GNU time's notes, such as a child's exit status.
    """
    lines = text.strip().splitlines()
    fields = lines[-1].split() if lines else []
    if len(fields) != 3:
        return 0.0, 0
    user, system, rss = fields
    return float(user) + float(system), int(rss)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a running process has used so far (Linux)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")
