"""Content digests (`algorithm:hex`), as the OCI image spec defines them."""

from __future__ import annotations

import hashlib
import re

from reconciler.errors import ReconcilerError

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"^(?P<algorithm>sha256|sha512):(?P<hex>[a-f0-9]+)\Z")


class InvalidDigestError(ReconcilerError):
    """A string is not a digest this tool can verify."""


class Digest(str):
    """A validated digest; as a `str` it is the canonical `algorithm:hex`."""

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:
        match = _DIGEST.match(value)
        if not match or len(match["hex"]) != _HEX_LENGTH[match["algorithm"]]:
            message = f"invalid digest {value!r}: expected sha256:<64 hex digits>"
            raise InvalidDigestError(message)
        return super().__new__(cls, value)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """Compute the digest of `data`."""
        return cls(f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}")

    @property
    def algorithm(self) -> str:
        return self.split(":", 1)[0]

    @property
    def hex(self) -> str:
        return self.split(":", 1)[1]

    @property
    def short(self) -> str:
        """`sha256:` and the first 12 hex digits, for people."""
        return f"{self.algorithm}:{self.hex[:12]}"

    def verifies(self, data: bytes) -> bool:
        """Whether `data` hashes to this digest."""
        return Digest.of(data, self.algorithm) == self
