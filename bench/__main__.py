"""Fleet benchmarks: `python -m bench [--quick] [--repeat N] [--workdir DIR]
[--baseline DIR]`.

One run starts Debian's docker-registry over TLS with a Harbor-like token
service, seeds the sources of a fleet (1x: 100 images, 4 versions, 2
platforms; 2,000 references a plan reads), and prints side by side:

1. cold apply of the 1x fleet: wall time, requests, token requests, layer
   bytes uploaded; versus skopeo copy + docker manifest on a sample, scaled
   to the fleet's versions;
2. no-op plan of the converged fleet (whole command, process start
   included) versus the h2load floors, at 1x, 2x and 4x;
3. requests per no-op plan versus the minimum;
4. peak memory (max RSS) of the plans and the apply;
5. with `--baseline DIR` (another checkout, e.g. from `git archive`), the
   same cold applies and no-op plans by that code, as "before".

Every reconciler run is a child process, timed from spawn to exit. Timings
are the best of `--repeat` runs, interleaved with the floors so that load
from other processes hits both alike; the median is shown too.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench._child import GNU_TIME, Run, process_cpu_seconds, run_measured
from bench._fleet import Fleet, Seeder, write_desired
from bench._floor import floor
from bench._legacy import LegacyRun, legacy_flow
from bench._stack import Stack, plain_registry, token_stack
from reconciler.testkit.registry import RegistryServer

SCALES = (1, 2, 4)
_SOURCE = Path(__file__).resolve().parents[1]
_BLOBS = re.compile(r"Blobs: (\d+) mounted, (\d+) already there, (\d+) uploaded")


@dataclass(frozen=True)
class Settings:
    """What to measure: fleet sizes, repetitions, the old flow's sample."""

    images: int
    repeat: int
    sample_images: int
    workdir: Path
    keep: bool
    baseline: Path | None

    def fleet(self, scale: int) -> Fleet:
        return Fleet(self.images * scale)


@dataclass
class Timings:
    """Repeated measurements of one thing."""

    seconds: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)

    def add(self, seconds: float, rss_mb: float = 0.0) -> None:
        self.seconds.append(seconds)
        self.rss_mb.append(rss_mb)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass(frozen=True)
class Counted:
    """A reconciler run with the requests it made."""

    run: Run
    requests: int
    heads: int
    tokens: int
    uploads: int
    registry_cpu: float
    """CPU seconds the registry spent meanwhile (on every request it served)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run every benchmark and print the figures; return the exit status."""
    settings = _settings(argv)
    missing = _missing_tools()
    if missing:
        print(f"missing tools: {', '.join(missing)}", file=sys.stderr)
        return 1
    print(_machine())
    try:
        _run_all(settings)
    finally:
        if not settings.keep:
            shutil.rmtree(settings.workdir, ignore_errors=True)
    return 0


def _run_all(settings: Settings) -> None:
    with token_stack(settings.workdir / "stack") as stack:
        _seed(stack, settings)
        folders = {
            scale: write_desired(
                settings.workdir / f"fleet-{scale}x",
                settings.fleet(scale),
                stack.registry.host,
                stack.ca_file,
            ).parent
            for scale in SCALES
        }
        warm_up = [sys.executable, "-c", "import reconciler.cli, reconciler.apply"]
        env = _env(stack, settings.workdir, settings.workdir)
        run_measured(warm_up, env=env, cwd=_SOURCE)
        _cold_apply_section(stack, settings, folders)
        _noop_sections(stack, settings, folders)


def _settings(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 10-image fleet")
    parser.add_argument("--repeat", type=int, help="runs per figure (default 3)")
    parser.add_argument("--workdir", type=Path, help="keep files here")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. git worktree add DIR HEAD) whose no-op "
        "plans are timed alongside, as 'before'",
    )
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="reconciler-bench-"))
    return Settings(
        images=10 if args.quick else 100,
        repeat=args.repeat or (1 if args.quick else 3),
        sample_images=1 if args.quick else 2,
        workdir=workdir,
        keep=args.workdir is not None,
        baseline=args.baseline.resolve() if args.baseline else None,
    )


def _missing_tools() -> list[str]:
    """Tools the benchmarks run, with the Debian package that has each."""
    tools = {
        "docker-registry": "docker-registry",
        "skopeo": "skopeo",
        "h2load": "nghttp2-client",
        "docker": "docker.io (the client alone; no daemon is used)",
    }
    missing = [
        f"{name} ({package})"
        for name, package in tools.items()
        if shutil.which(name) is None
    ]
    if not Path(GNU_TIME).exists():
        missing.append(f"{GNU_TIME} (time)")
    return missing


def _machine() -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"reconciler benchmarks, {now}\n"
        f"machine: {os.cpu_count()} CPUs, {memory:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}; load average at start {load}\n"
    )


def _seed(stack: Stack, settings: Settings) -> None:
    fleet = settings.fleet(max(SCALES))
    run = Timings()
    with _stopwatch(run):
        count = Seeder(stack.registry, stack).seed(fleet)
    print(f"seeded {count} source images in {run.best:.1f} s\n")


# Cold apply -------------------------------------------------------------------


def _cold_apply_section(
    stack: Stack, settings: Settings, folders: dict[int, Path]
) -> None:
    """Cold applies of fresh 1x fleets, each followed by the old flow's sample.

    Each round seeds a fleet of its own (and an empty cache), so every
    apply is cold; the rounds interleave both flows under the same load.
    Both flows run twice: with the registries' storage on this machine's
    disk, and in memory where a memory filesystem exists. A registry keeps
    a manifest by writing and syncing three or four small files, and
    linking a mounted blob syncs one; where a sync takes a disk's latency,
    that cost is the registry's own, and it weighs on whichever flow sends
    the registry more work per second.
    """
    with ExitStack() as running:
        storages = [
            _Storage(
                "on disk",
                settings.workdir,
                stack,
                running.enter_context(plain_registry(settings.workdir / "legacy")),
            )
        ]
        memory = _memory_folder(running)
        if memory is not None:
            storages.append(_in_memory(memory, settings.workdir, running))
        before: list[Counted] = []
        for round_ in range(settings.repeat):
            for storage in storages:
                storage.measure(settings, round_)
            if settings.baseline is not None:
                before.append(
                    _cold_apply(
                        stack, settings, f"before{round_}", source=settings.baseline
                    )
                )
        fleet = settings.fleet(1)
        versions = fleet.images * fleet.versions
        print(
            f"Cold apply of a fresh 1x fleet ({versions} versions); best of "
            f"{settings.repeat} (median)"
        )
        for storage in storages:
            _print_cold_apply(storage, versions)
    if memory is None:
        print("  (no memory filesystem at /dev/shm: measured on disk only)")
    if before:
        _print_cold_apply_before(before, storages[0].ours)
    _converge(stack, settings, folders[max(SCALES)])


@dataclass
class _Storage:
    """Where the registries keep blobs, and both flows' runs against them."""

    name: str
    folder: Path
    stack: Stack
    legacy_registry: RegistryServer
    ours: list[Counted] = field(default_factory=list)
    legacy: list[LegacyRun] = field(default_factory=list)

    def measure(self, settings: Settings, round_: int) -> None:
        """One cold apply by each flow, each on a fleet of its own."""
        key = self.name.replace(" ", "-")
        self.ours.append(_cold_apply(self.stack, settings, f"cold{round_}-{key}"))
        sample = Fleet(settings.sample_images, namespace=f"legacy{round_}-{key}")
        self.legacy.append(
            legacy_flow(self.legacy_registry, sample, settings.workdir / "legacy")
        )


def _memory_folder(running: ExitStack) -> Path | None:
    """A fresh folder on /dev/shm when that is a memory filesystem (tmpfs)."""
    shm = Path("/dev/shm")
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    tmpfs = any(line.split()[1:3] == [str(shm), "tmpfs"] for line in mounts)
    if not tmpfs or not os.access(shm, os.W_OK):
        return None
    made = tempfile.TemporaryDirectory(dir=shm, prefix="reconciler-bench-")
    return Path(running.enter_context(made))


def _in_memory(memory: Path, workdir: Path, running: ExitStack) -> _Storage:
    """A second token stack and plain registry, their storage in `memory`.

    Only blobs and manifests move: certificates, logs, the reconciler's
    cache and the docker client's files stay on disk, as for the first.
    """
    stack = token_stack(workdir / "stack-in-memory", storage=memory / "registry")
    legacy = plain_registry(workdir / "legacy-in-memory", storage=memory / "legacy")
    return _Storage(
        "in memory",
        memory,
        running.enter_context(stack),
        running.enter_context(legacy),
    )


def _sync_ms(folder: Path, count: int = 200) -> float:
    """Median milliseconds to write a 71-byte file in `folder` and fsync it.

    The size of a registry's link file; for the storage's heading.
    """
    probe = folder / ".sync-probe"
    probe.mkdir(parents=True, exist_ok=True)
    times = []
    for number in range(count):
        started = time.perf_counter()
        fd = os.open(probe / str(number), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, b"sha256:" + b"0" * 64)
            os.fsync(fd)
        finally:
            os.close(fd)
        times.append(time.perf_counter() - started)
    shutil.rmtree(probe)
    return statistics.median(times) * 1000


def _cold_apply(
    stack: Stack, settings: Settings, namespace: str, *, source: Path = _SOURCE
) -> Counted:
    """Seed a fresh 1x fleet under `namespace` and apply it with an empty cache.

    A baseline's apply may fail part-way (that is a finding): it is counted,
    not raised.
    """
    fleet = Fleet(settings.images, namespace=namespace)
    Seeder(stack.registry, stack).seed(fleet)
    folder = write_desired(
        settings.workdir / namespace,
        fleet,
        stack.registry.host,
        stack.ca_file,
    ).parent
    cache = settings.workdir / namespace / "cache"
    args = ("apply", "--auto-approve")
    return _reconciler(
        stack, folder, cache, *args, source=source, check=source == _SOURCE
    )


def _print_cold_apply_before(before: list[Counted], ours: list[Counted]) -> None:
    old = Timings()
    for counted in before:
        old.add(counted.run.seconds, counted.run.max_rss_mb)
    now = min(c.run.seconds for c in ours)
    failed = [c for c in before if c.run.returncode != 0]
    first = before[0]
    print(
        f"  before (baseline, on disk) {old.best:5.1f} s ({old.median:6.1f})  "
        f"{first.requests} requests, {first.tokens} token requests; "
        f"{len(failed)} of {len(before)} runs failed part-way; max RSS "
        f"{max(old.rss_mb):.1f} MB; now {old.best / now:.1f}x faster"
    )


def _converge(stack: Stack, settings: Settings, folder: Path) -> None:
    """Apply the largest fleet, which the no-op plans then read."""
    run = _reconciler(
        stack, folder, settings.workdir / "cache", "apply", "--auto-approve"
    )
    versions = settings.fleet(max(SCALES)).images * settings.fleet(1).versions
    print(
        f"  (converging the {max(SCALES)}x fleet, {versions} versions, took "
        f"{run.run.seconds:.1f} s, {run.requests / versions:.1f} requests per "
        f"version, {run.run.max_rss_mb:.1f} MB)\n"
    )


def _print_cold_apply(storage: _Storage, versions: int) -> None:
    mine = Timings()
    for counted in storage.ours:
        mine.add(counted.run.seconds, counted.run.max_rss_mb)
    old = Timings()
    for run in storage.legacy:
        old.add(run.per_version * versions)
    first = storage.ours[0]
    blobs = _BLOBS.search(first.run.stdout)
    mounted, present, uploaded = blobs.groups() if blobs else ("?", "?", "?")
    print(
        f"  registries' storage {storage.name} (a small file written and "
        f"synced there: {_sync_ms(storage.folder):.2f} ms)"
    )
    print(
        f"    reconciler                {mine.best:6.1f} s ({mine.median:6.1f})  "
        f"{first.requests} requests ({first.requests / versions:.1f}/version), "
        f"{first.tokens} token requests; blobs {mounted} mounted, {present} "
        f"already there, {uploaded} uploaded; layer uploads in the registry "
        f"log: {sum(c.uploads for c in storage.ours)}; max RSS "
        f"{max(mine.rss_mb):.1f} MB"
    )
    sample = storage.legacy[0]
    print(
        f"    skopeo + docker manifest  {old.best:6.1f} s ({old.median:6.1f})  "
        f"scaled from {sample.versions} versions a round "
        f"({sample.requests / sample.versions:.1f} requests/version, "
        f"{sample.layer_bytes} layer bytes uploaded in {sample.versions} versions)"
    )
    print(
        f"    speed-up                  {old.best / mine.best:6.1f}x "
        f"({old.median / mine.median:.1f}x)"
    )
    fastest = min(storage.ours, key=lambda counted: counted.run.seconds)
    print(f"    where the fastest apply's time went: {_cpu_split(fastest)}")


def _cpu_split(counted: Counted) -> str:
    """The CPU the registry and the reconciler spent, against what the cores had.

    When the two together come near the cores' time, the run is bound by
    CPU on this machine, and the registry's share says how much of it no
    client can save.
    """
    cores = os.cpu_count() or 1
    had = counted.run.seconds * cores
    used = counted.registry_cpu + counted.run.cpu_seconds
    per_request = counted.registry_cpu / max(counted.requests, 1) * 1000
    return (
        f"registry CPU {counted.registry_cpu:.1f} s ({per_request:.1f} ms a "
        f"request), reconciler CPU {counted.run.cpu_seconds:.1f} s; "
        f"{used / had:.0%} of the {cores} cores' {had:.1f} s"
    )


# No-op plans ------------------------------------------------------------------


@dataclass
class _NoOp:
    """No-op plan timings per scale: ours, both floors, and the baseline's."""

    plans: dict[int, Timings] = field(default_factory=dict)
    tight: dict[int, Timings] = field(default_factory=dict)
    loose: dict[int, Timings] = field(default_factory=dict)
    before: dict[int, Timings] = field(default_factory=dict)
    token_bytes: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for table in (self.plans, self.tight, self.loose, self.before):
            table.update({scale: Timings() for scale in SCALES})


def _noop_sections(stack: Stack, settings: Settings, folders: dict[int, Path]) -> None:
    warm = settings.workdir / "cache"
    cold = _reconciler(stack, folders[1], settings.workdir / "cold", "plan")
    counted = _reconciler(stack, folders[1], warm, "plan")
    before = _baseline_counted(stack, settings, folders[1])
    measured = _NoOp()
    for _ in range(settings.repeat):
        for scale in SCALES:
            _measure_noop(stack, settings, folders[scale], scale, measured)
    _print_noop(settings, measured)
    _print_tokens(measured.token_bytes)
    _print_requests(settings.fleet(1), counted, cold, before)
    _print_memory(measured, counted)


def _measure_noop(
    stack: Stack, settings: Settings, folder: Path, scale: int, into: _NoOp
) -> None:
    """One round at one scale: both floors, our plan, the baseline's plan."""
    refs = settings.fleet(scale).references()
    into.tight[scale].add(floor(stack, refs, settings.workdir).seconds)
    one = floor(stack, refs, settings.workdir, group=None)
    if one.answered:
        into.loose[scale].add(one.seconds)
    into.token_bytes[scale] = one.token_bytes
    run = _plan(stack, folder, settings.workdir / "cache")
    into.plans[scale].add(run.seconds, run.max_rss_mb)
    if settings.baseline is not None:
        cache = settings.workdir / "baseline-cache"
        run = _plan(stack, folder, cache, source=settings.baseline)
        into.before[scale].add(run.seconds, run.max_rss_mb)


def _baseline_counted(stack: Stack, settings: Settings, folder: Path) -> Counted | None:
    """A counted no-op plan by the baseline checkout, after compiling it."""
    if settings.baseline is None:
        return None
    cache = settings.workdir / "baseline-cache"
    warm_up = [sys.executable, "-c", "import reconciler.cli, reconciler.apply"]
    env = _env(stack, cache, settings.workdir, settings.baseline)
    run_measured(warm_up, env=env, cwd=settings.baseline)
    return _reconciler(stack, folder, cache, "plan", source=settings.baseline)


def _print_noop(settings: Settings, measured: _NoOp) -> None:
    print(
        f"No-op plan of the converged fleet, warm cache; best of {settings.repeat} "
        "(median), whole command"
    )
    print(
        "  scale  refs  reconciler      floor, tight    ratio  "
        "floor, one token  ratio  us/ref  before          speed-up"
    )
    for scale in SCALES:
        refs = len(settings.fleet(scale).references())
        print(f"  {scale}x {refs:7d}  " + _noop_row(measured, scale, refs))
    print()


def _noop_row(measured: _NoOp, scale: int, refs: int) -> str:
    p, t, o, b = (
        measured.plans[scale],
        measured.tight[scale],
        measured.loose[scale],
        measured.before[scale],
    )
    one = "refused by registry    "
    if o.seconds:
        one = f"{o.best:5.2f} s ({o.median:5.2f}) {p.best / o.best:5.2f}x"
    before = ""
    if b.seconds:
        before = f"{b.best:5.2f} s ({b.median:5.2f})  {b.best / p.best:4.1f}x"
    return (
        f"{p.best:5.2f} s ({p.median:5.2f})  {t.best:5.2f} s ({t.median:5.2f}) "
        f"{p.best / t.best:5.2f}x  {one}  {p.best / refs * 1e6:5.0f}  {before}"
    )


def _print_tokens(sizes: dict[int, int]) -> None:
    shown = ", ".join(
        f"{scale}x {size / 1024:.0f} KiB" for scale, size in sizes.items()
    )
    print(
        f"  one-token floor: token size {shown}; tight floor: 25 repositories a token\n"
    )


def _print_requests(
    fleet: Fleet, warm: Counted, cold: Counted, before: Counted | None
) -> None:
    refs = len(fleet.references())
    minimum = refs + warm.tokens
    over = (warm.requests + warm.tokens - minimum) / minimum * 100
    print(f"Requests per no-op plan, 1x ({refs} references)")
    print(
        f"  warm cache: {warm.heads} HEAD + {warm.requests - warm.heads} other "
        f"registry requests + {warm.tokens} token requests = "
        f"{warm.requests + warm.tokens}; minimum {refs} HEAD + {warm.tokens} "
        f"tokens = {minimum} (+{over:.2f}%); {_cpu_split(warm)}"
    )
    print(
        f"  cold cache: {cold.requests} registry requests ({cold.heads} HEAD) + "
        f"{cold.tokens} token requests, {cold.run.seconds:.2f} s"
    )
    if before is not None:
        print(
            f"  before:     {before.requests} registry requests ({before.heads} "
            f"HEAD) + {before.tokens} token requests, {before.run.seconds:.2f} s"
        )
    print()


def _print_memory(measured: _NoOp, counted: Counted) -> None:
    print("Peak memory (max RSS) of the no-op plan")
    for scale in SCALES:
        now = max(measured.plans[scale].rss_mb)
        before = measured.before[scale].rss_mb
        shown = f"; before {max(before):6.1f} MB" if before else ""
        print(f"  {scale}x: {now:6.1f} MB{shown}")
    print()


# Running the reconciler ---------------------------------------------------------


def _plan(stack: Stack, folder: Path, cache: Path, *, source: Path = _SOURCE) -> Run:
    run = run_measured(
        _command(folder, "plan", "--detailed-exitcode"),
        env=_env(stack, cache, folder.parent, source),
        cwd=source,
    )
    return run.check(f"no-op plan in {folder}")


def _reconciler(
    stack: Stack,
    folder: Path,
    cache: Path,
    *args: str,
    source: Path = _SOURCE,
    check: bool = True,
) -> Counted:
    mark = stack.registry.mark()
    tokens = stack.tokens.request_count
    env = _env(stack, cache, folder.parent, source)
    registry_cpu = _registry_cpu(stack)
    run = run_measured(_command(folder, *args), env=env, cwd=source)
    registry_cpu = _registry_cpu(stack) - registry_cpu
    if check:
        run.check(f"reconciler {' '.join(args)} in {folder}")
    log = stack.registry.access_log(since=mark)
    return Counted(
        run=run,
        requests=len(log),
        heads=sum(1 for entry in log if entry.method == "HEAD"),
        tokens=stack.tokens.request_count - tokens,
        uploads=sum(1 for entry in log if entry.is_blob_upload),
        registry_cpu=registry_cpu,
    )


def _registry_cpu(stack: Stack) -> float:
    pid = stack.registry.pid
    if pid is None:
        raise RuntimeError("the registry is not running")
    return process_cpu_seconds(pid)


def _command(folder: Path, *args: str) -> list[str]:
    # `-m` puts the working directory first on sys.path: runs start in the
    # checkout they measure, so a baseline checkout is not shadowed.
    return [sys.executable, "-m", "reconciler", "--chdir", str(folder), *args]


def _env(
    stack: Stack, cache: Path, workdir: Path, source: Path = _SOURCE
) -> dict[str, str]:
    """Credentials, the cache, and bytecode kept as an installed package has it.

    An installed package is compiled to bytecode at install time; a source
    tree run with PYTHONDONTWRITEBYTECODE=1 would compile it on every start.
    """
    username, password = stack.admin
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RECONCILER_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    return {
        **env,
        "PYTHONPYCACHEPREFIX": str(workdir / "pycache"),
        "HARBOR_USERNAME": username,
        "HARBOR_PASSWORD": password,
        "RECONCILER_CACHE_DIR": str(cache),
        "PYTHONPATH": str(source),
    }


@contextmanager
def _stopwatch(timings: Timings) -> Iterator[None]:
    started = time.monotonic()
    yield
    timings.add(time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
