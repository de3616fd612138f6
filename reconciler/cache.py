"""Facts that never change, kept on disk between runs and keyed by digest.

A digest names content, so what the content says holds forever, on every
registry: the platform an image manifest's config declares, and the
children an index lists. With them cached, a plan over a converged fleet
reads nothing but HEADs.

Where: ``$RECONCILER_CACHE_DIR``, else ``$XDG_CACHE_HOME/reconciler``, else
``~/.cache/reconciler``. ``RECONCILER_NO_CACHE=1`` turns the cache off.

Each fact is one file, ``v1/<kind>/<algorithm>/<hex[:2]>/<hex>.json``,
holding ``{"kind", "digest", "value", "checksum"}``; the checksum is the
SHA-256 of the canonical JSON of the other three. An entry that does not
parse, names another kind or digest, or fails its checksum is ignored, and
rewritten by the next run that reads the fact from the registry.

Writes go to a temporary file in the entry's folder that is then renamed
over the entry, so readers never see half an entry and processes writing
the same fact at once are harmless: they write the same bytes. There is no
fsync; an entry torn by a crash fails its checksum. The cache is an
optimisation only: a folder that cannot be written is logged and left be.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.oci import Descriptor, Digest, Platform

logger = logging.getLogger(__name__)

FORMAT = "v1"
_PLATFORM = "platform"
_CHILDREN = "children"
_FIELDS = {"kind", "digest", "value", "checksum"}


def cache_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The cache folder the environment asks for; None when caching is off."""
    env = os.environ if environ is None else environ
    if env.get("RECONCILER_NO_CACHE", "") not in ("", "0"):
        return None
    if env.get("RECONCILER_CACHE_DIR"):
        return Path(env["RECONCILER_CACHE_DIR"])
    xdg = env.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec says to ignore a relative path
        return Path(xdg) / "reconciler"
    return Path(env.get("HOME") or Path.home()) / ".cache" / "reconciler"


class FactCache:
    """Platforms of image digests and children of index digests, on disk.

    Thread-safe and safe across processes. With `directory` None every
    lookup misses and nothing is written.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._writable = directory is not None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> FactCache:
        """The cache the environment asks for (see the module docstring)."""
        return cls(cache_dir(environ))

    @classmethod
    def disabled(cls) -> FactCache:
        """A cache that remembers nothing."""
        return cls(None)

    def platform(self, digest: Digest) -> Platform | None:
        """The platform the config of image `digest` declares, if cached."""
        value = self._read(_PLATFORM, digest)
        if not isinstance(value, dict):
            return None
        platform = Platform.from_json(value)
        return platform if platform.os and platform.architecture else None

    def has_platforms(self) -> bool:
        """Whether any platform is cached; False for a new or disabled cache."""
        if self.directory is None:
            return False
        try:
            with os.scandir(self.directory / FORMAT / _PLATFORM) as entries:
                return any(True for _ in entries)
        except OSError:
            return False

    def put_platform(self, digest: Digest, platform: Platform) -> None:
        """Remember the platform of image `digest`."""
        self._write(_PLATFORM, digest, platform.to_json())

    def children(self, digest: Digest) -> tuple[Descriptor, ...] | None:
        """The platform children of index `digest`, if cached."""
        value = self._read(_CHILDREN, digest)
        if not isinstance(value, list):
            return None
        try:
            return tuple(Descriptor.from_json(item) for item in value)
        except ReconcilerError:
            return None

    def put_children(self, digest: Digest, children: tuple[Descriptor, ...]) -> None:
        """Remember the platform children of index `digest`."""
        self._write(_CHILDREN, digest, [child.to_json() for child in children])

    def _path(self, kind: str, digest: Digest) -> Path:
        assert self.directory is not None
        hex_ = digest.hex
        folder = self.directory / FORMAT / kind / digest.algorithm / hex_[:2]
        return folder / f"{hex_}.json"

    def _read(self, kind: str, digest: Digest) -> Any:
        if self.directory is None:
            return None
        try:
            data = self._path(kind, digest).read_bytes()
        except OSError:
            return None
        return _verified_value(data, kind, digest)

    def _write(self, kind: str, digest: Digest, value: Any) -> None:
        if not self._writable:
            return
        path = self._path(kind, digest)
        try:
            _write_atomically(path, _entry(kind, digest, value))
        except OSError as error:
            self._writable = False
            logger.info("not caching facts in %s: %s", self.directory, error)


def _entry(kind: str, digest: Digest, value: Any) -> bytes:
    body = {"kind": kind, "digest": str(digest), "value": value}
    return json.dumps({**body, "checksum": _checksum(body)}, sort_keys=True).encode()


def _checksum(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _verified_value(data: bytes, kind: str, digest: Digest) -> Any:
    """The entry's value, or None when it is not a sound entry for `digest`."""
    try:
        entry = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        entry = None
    if not isinstance(entry, dict) or entry.keys() != _FIELDS:
        logger.debug("ignoring a malformed cache entry for %s", digest)
        return None
    body = {key: entry[key] for key in ("kind", "digest", "value")}
    sound = entry["checksum"] == _checksum(body)
    if not sound or entry["kind"] != kind or entry["digest"] != digest:
        logger.debug("ignoring a corrupt cache entry for %s", digest)
        return None
    return entry["value"]


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
