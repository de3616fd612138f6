"""OCI value types: references, digests, platforms, descriptors, manifests.

Nothing here does I/O; everything is immutable and hashable.
"""

from reconciler.oci.digest import Digest, InvalidDigestError
from reconciler.oci.manifest import (
    Descriptor,
    ImageManifest,
    Index,
    InvalidManifestError,
    Manifest,
    build_index,
    index_media_type_for,
    parse_manifest,
)
from reconciler.oci.mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_MEDIA_TYPES,
    MANIFEST_ACCEPT,
    MANIFEST_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    describe_media_type,
)
from reconciler.oci.platform import InvalidPlatformError, Platform
from reconciler.oci.reference import (
    InvalidReferenceError,
    Reference,
    Repository,
    validate_tag,
)

__all__ = [
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_ACCEPT",
    "MANIFEST_MEDIA_TYPES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Descriptor",
    "Digest",
    "ImageManifest",
    "Index",
    "InvalidDigestError",
    "InvalidManifestError",
    "InvalidPlatformError",
    "InvalidReferenceError",
    "Manifest",
    "Platform",
    "Reference",
    "Repository",
    "build_index",
    "describe_media_type",
    "index_media_type_for",
    "parse_manifest",
    "validate_tag",
]
