"""Platforms, written `os/architecture[/variant]` as in `docker --platform`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from reconciler.errors import ReconcilerError

# The values Go's runtime knows (GOOS, GOARCH); images use the same names.
KNOWN_OS = frozenset(
    [
        "aix",
        "android",
        "darwin",
        "dragonfly",
        "freebsd",
        "illumos",
        "ios",
        "js",
        "linux",
        "netbsd",
        "openbsd",
        "plan9",
        "solaris",
        "wasip1",
        "windows",
    ]
)
KNOWN_ARCHITECTURES = frozenset(
    [
        "386",
        "amd64",
        "arm",
        "arm64",
        "loong64",
        "mips",
        "mips64",
        "mips64le",
        "mipsle",
        "ppc64",
        "ppc64le",
        "riscv64",
        "s390x",
        "wasm",
    ]
)
_VARIANT = re.compile(r"^[a-z0-9]+\Z")

# The variant an architecture has when none is written (containerd's rule),
# so that linux/arm64 and linux/arm64/v8 name the same platform.
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7", "amd64": "v1"}

# Docker's attestation manifests sit in an index under this platform.
UNKNOWN = ("unknown", "unknown")


class InvalidPlatformError(ReconcilerError):
    """A platform string is not `os/architecture[/variant]`."""


@dataclass(frozen=True, slots=True, order=True)
class Platform:
    """An OS, a CPU architecture and, for some, a variant such as `v7`."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse `os/architecture[/variant]`, checking the names are known."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidPlatformError(
                f"invalid platform {text!r}",
                hint="write os/architecture[/variant], e.g. linux/arm64 or "
                "linux/arm/v7",
            )
        os_, arch, *rest = parts
        _check_name(text, os_, KNOWN_OS, "operating system")
        _check_name(text, arch, KNOWN_ARCHITECTURES, "architecture")
        variant = rest[0] if rest else None
        if variant is not None and not _VARIANT.match(variant):
            raise InvalidPlatformError(
                f"invalid platform {text!r}: variant {variant!r} is not a word "
                "of lower-case letters and digits",
                hint="variants look like v6, v7 or v8",
            )
        return cls(os_, arch, variant)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Platform:
        """Read the `os`, `architecture` and `variant` of a config or descriptor."""
        variant = data.get("variant") or None
        return cls(str(data.get("os", "")), str(data.get("architecture", "")), variant)

    @classmethod
    def from_config(cls, config: bytes) -> Platform | None:
        """The platform an image config declares; None when it declares none."""
        try:
            document = json.loads(config)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(document, dict):
            return None
        if not (document.get("os") and document.get("architecture")):
            return None
        return cls.from_json(document)

    def to_json(self) -> dict[str, str]:
        """The platform object of an index entry."""
        data = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            data["variant"] = self.variant
        return data

    @property
    def is_unknown(self) -> bool:
        """Whether this is the platform of an attestation entry."""
        return (self.os, self.architecture) == UNKNOWN

    def normalized(self) -> Platform:
        """The same platform with a default variant written out."""
        if self.variant is None and self.architecture in _DEFAULT_VARIANT:
            return Platform(
                self.os, self.architecture, _DEFAULT_VARIANT[self.architecture]
            )
        return self

    def matches(self, other: Platform) -> bool:
        """Whether both name the same platform, default variants included."""
        return self.normalized() == other.normalized()

    def placeholders(self) -> dict[str, str]:
        """Values for `{os}`, `{arch}` and `{variant}` in templates."""
        return {"os": self.os, "arch": self.architecture, "variant": self.variant or ""}

    def __str__(self) -> str:
        if self.variant:
            return f"{self.os}/{self.architecture}/{self.variant}"
        return f"{self.os}/{self.architecture}"


def _check_name(text: str, name: str, known: frozenset[str], what: str) -> None:
    if name in known:
        return
    message = f"invalid platform {text!r}: unknown {what} {name!r}"
    raise InvalidPlatformError(
        message, hint=f"known values: {', '.join(sorted(known))}"
    )
