"""Manifest media types, and the Accept header that asks for all of them."""

from __future__ import annotations

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"

INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_MEDIA_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_MEDIA_TYPES = INDEX_MEDIA_TYPES | IMAGE_MEDIA_TYPES

# Without every type in Accept, registries convert or refuse: Distribution
# answers a HEAD for an index with 404 when only image types are accepted.
MANIFEST_ACCEPT = ", ".join(
    [OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST]
)

_NAMES = {
    OCI_INDEX: "OCI image index",
    OCI_MANIFEST: "OCI image manifest",
    DOCKER_MANIFEST_LIST: "Docker manifest list",
    DOCKER_MANIFEST: "Docker image manifest",
}


def describe_media_type(media_type: str) -> str:
    """Return the name people use for a manifest media type."""
    return _NAMES.get(media_type, media_type)
