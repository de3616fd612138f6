"""The floor: the same manifest HEADs, sent by h2load over HTTP/2.

Two floors, both with tokens minted directly from the token service's
signing key (no token request is timed):

- `one token`, as the issue defines it: one token granting every scope,
  on one HTTP/2 connection. Distribution's token auth knows no wildcard, so
  that token lists every repository, and at fleet scale it is tens of KB:
  too big for HPACK's 4 KiB table, it is sent and parsed on every request.
- `tight`: the repositories split into groups of 25, each with its own
  token (about 3 KB, which HPACK indexes after the first request) and its
  own h2load process, all at once. It is the lower, stricter floor.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench._fleet import chunks
from bench._stack import Stack
from reconciler.oci import MANIFEST_ACCEPT

GROUP = 25
STREAMS = 32
_STATUS = re.compile(r"status codes: (\d+) 2xx")


@dataclass(frozen=True)
class Floor:
    """How long h2load took for every HEAD, and with how many processes."""

    seconds: float
    processes: int
    token_bytes: int
    answered: bool
    """False when the registry refused requests (a token too big for it)."""


def floor(
    stack: Stack,
    refs: Sequence[tuple[str, str]],
    workdir: Path,
    *,
    group: int | None = GROUP,
) -> Floor:
    """HEAD every (repository, tag) with h2load; `group` None: one token."""
    repositories = sorted({repository for repository, _ in refs})
    groups = [repositories] if group is None else list(chunks(repositories, group))
    jobs = [
        _job(stack, refs, repositories, workdir / f"uris-{i}.txt")
        for i, repositories in enumerate(groups)
    ]
    started = time.monotonic()
    processes = [
        subprocess.Popen(job.args, stdout=subprocess.PIPE, text=True) for job in jobs
    ]
    outputs = [process.communicate()[0] for process in processes]
    seconds = time.monotonic() - started
    answered = all(
        _answered(output, job.requests)
        for job, output in zip(jobs, outputs, strict=True)
    )
    return Floor(seconds, len(jobs), max(job.token_bytes for job in jobs), answered)


@dataclass(frozen=True)
class _Job:
    args: list[str]
    requests: int
    token_bytes: int


def _job(
    stack: Stack,
    refs: Sequence[tuple[str, str]],
    repositories: Sequence[str],
    uris: Path,
) -> _Job:
    """The h2load command for the HEADs of `repositories`."""
    wanted = set(repositories)
    base = stack.registry.url
    lines = [f"{base}/v2/{r}/manifests/{t}\n" for r, t in refs if r in wanted]
    uris.write_text("".join(lines))
    token = stack.mint([f"repository:{r}:pull" for r in repositories])
    args = [
        "h2load",
        f"--input-file={uris}",
        f"--requests={len(lines)}",
        "--clients=1",
        f"--max-concurrent-streams={STREAMS}",
        "--header=:method: HEAD",
        f"--header=Accept: {MANIFEST_ACCEPT}",
        f"--header=Authorization: Bearer {token}",
    ]
    return _Job(args, len(lines), len(token))


def _answered(output: str, expected: int) -> bool:
    """Whether every request was answered 2xx; raise if only some were."""
    match = _STATUS.search(output)
    answered = int(match[1]) if match else 0
    if answered == 0:
        return False  # refused outright: Go's HTTP/2 server caps header size
    if answered != expected:
        raise RuntimeError(
            f"h2load got {answered} of {expected} answers 2xx:\n{output}"
        )
    return True
