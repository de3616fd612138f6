"""Manifests and indexes, parsed from the exact bytes a registry served.

The bytes are kept alongside the parsed view: they are what gets pushed,
because re-serialising JSON would change the digest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.oci.digest import Digest, InvalidDigestError
from reconciler.oci.mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    IMAGE_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)
from reconciler.oci.platform import Platform


class InvalidManifestError(ReconcilerError):
    """Bytes served as a manifest are not one this tool understands."""


@dataclass(frozen=True, slots=True)
class Descriptor:
    """What a manifest points at: media type, digest, size, maybe a platform."""

    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None

    @classmethod
    def from_json(cls, data: Any) -> Descriptor:
        """Read a descriptor object, raising `InvalidManifestError` if malformed."""
        if not isinstance(data, dict):
            raise InvalidManifestError("a descriptor is not a JSON object")
        try:
            digest = Digest(str(data["digest"]))
            size = data["size"]
        except (KeyError, InvalidDigestError) as error:
            raise InvalidManifestError(f"bad descriptor: {error}") from None
        if not isinstance(size, int) or size < 0:
            raise InvalidManifestError(f"bad descriptor size {size!r}")
        platform = data.get("platform")
        return cls(
            media_type=str(data.get("mediaType", "")),
            digest=digest,
            size=size,
            platform=Platform.from_json(platform)
            if isinstance(platform, dict)
            else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The descriptor as an index entry."""
        data: dict[str, Any] = {
            "mediaType": self.media_type,
            "size": self.size,
            "digest": str(self.digest),
        }
        if self.platform is not None:
            data["platform"] = self.platform.to_json()
        return data

    @property
    def key(self) -> tuple[str, str, int]:
        """What decides "unchanged": digest, size and media type."""
        return (str(self.digest), self.media_type, self.size)


@dataclass(frozen=True, slots=True)
class ImageManifest:
    """A single-platform image: a config blob and its layers."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    raw: bytes = field(repr=False)

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """Every blob the manifest needs in its repository, config first."""
        return (self.config, *self.layers)


@dataclass(frozen=True, slots=True)
class Index:
    """An image index or Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    raw: bytes = field(repr=False)

    @property
    def images(self) -> tuple[Descriptor, ...]:
        """Children that are platform images, not attestations or signatures."""
        return tuple(
            d
            for d in self.manifests
            if d.platform is not None and not d.platform.is_unknown
        )


Manifest = ImageManifest | Index


def parse_manifest(raw: bytes, media_type: str | None = None) -> Manifest:
    """Parse manifest bytes; `media_type` is the Content-Type, if any."""
    document = _load_object(raw)
    kind = str(document.get("mediaType") or media_type or "")
    if kind in INDEX_MEDIA_TYPES or (not kind and "manifests" in document):
        return _parse_index(document, kind or OCI_INDEX, raw)
    if kind in IMAGE_MEDIA_TYPES or (not kind and "config" in document):
        # mediaType is optional in an OCI manifest, and only there.
        return _parse_image(document, kind or OCI_MANIFEST, raw)
    raise InvalidManifestError(f"unsupported manifest media type {kind!r}")


def build_index(media_type: str, children: Sequence[Descriptor]) -> bytes:
    """Serialise an index of `children`, in order, deterministically."""
    if media_type not in INDEX_MEDIA_TYPES:
        raise ValueError(f"not an index media type: {media_type}")
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [child.to_json() for child in children],
    }
    return json.dumps(document, indent=3).encode() + b"\n"


def index_media_type_for(child_media_types: Iterable[str]) -> str:
    """A Docker manifest list when every child is Docker v2, else an OCI index."""
    types = set(child_media_types)
    if types and types <= {DOCKER_MANIFEST}:
        return DOCKER_MANIFEST_LIST
    return OCI_INDEX


def _load_object(raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as error:
        # ValueError covers bad JSON, bad UTF-8 and over-long integers.
        raise InvalidManifestError(f"manifest is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidManifestError("manifest is not a JSON object")
    if document.get("schemaVersion") != 2:
        version = document.get("schemaVersion")
        raise InvalidManifestError(f"unsupported manifest schemaVersion {version!r}")
    return document


def _parse_index(document: dict[str, Any], kind: str, raw: bytes) -> Index:
    entries = document.get("manifests")
    if not isinstance(entries, list):
        raise InvalidManifestError("index has no list of manifests")
    return Index(kind, tuple(Descriptor.from_json(e) for e in entries), raw)


def _parse_image(document: dict[str, Any], kind: str, raw: bytes) -> ImageManifest:
    layers = document.get("layers", [])
    if "config" not in document or not isinstance(layers, list):
        raise InvalidManifestError("image manifest lacks a config or layers")
    config = Descriptor.from_json(document["config"])
    return ImageManifest(
        kind, config, tuple(Descriptor.from_json(x) for x in layers), raw
    )
