"""Copying a blob between repositories: mount when possible, stream when not."""

from __future__ import annotations

import logging
from enum import StrEnum

from reconciler.oci import Descriptor, Repository
from reconciler.registry._errors import RegistryError
from reconciler.registry.client import RegistryClient

logger = logging.getLogger(__name__)


class BlobCopy(StrEnum):
    """How a blob reached its target repository."""

    MOUNTED = "mounted"
    PRESENT = "present"
    UPLOADED = "uploaded"


def blob_copy(
    blob: Descriptor,
    source: RegistryClient,
    source_repository: Repository,
    target: RegistryClient,
    target_repository: Repository,
) -> BlobCopy:
    """Make `blob` present in the target repository, moving as few bytes as can be.

    On one registry the blob is mounted. The registry may answer a mount with
    202 and an upload session instead (it will not or cannot mount); across
    registries there is nothing to mount from. Then the blob is streamed from
    source to target without being held in memory. A blob already brought
    into the target repository in this run is not copied again.
    """
    done = target.blob_once(
        target_repository,
        blob.digest,
        lambda: _copy(blob, source, source_repository, target, target_repository),
    )
    return BlobCopy.PRESENT if done is None else done


def _copy(
    blob: Descriptor,
    source: RegistryClient,
    source_repository: Repository,
    target: RegistryClient,
    target_repository: Repository,
) -> BlobCopy:
    location: str | None = None
    if source is target:
        location = target.blob_mount(target_repository, blob.digest, source_repository)
        if location is None:
            return BlobCopy.MOUNTED
        logger.info(
            "%s would not mount %s; streaming it", target.host, blob.digest.short
        )
    elif target.blob_head(target_repository, blob.digest):
        return BlobCopy.PRESENT
    sessions = iter([location] if location else [])

    def stream() -> None:
        # A failed stream cannot be resumed: each try opens a new session.
        url = next(sessions, None) or target.blob_upload_start(target_repository)
        with source.blob_stream(source_repository, blob.digest) as chunks:
            target.blob_upload(target_repository, url, blob.digest, blob.size, chunks)

    target.retry.call(stream, also=_transient)
    return BlobCopy.UPLOADED


def _transient(error: Exception) -> bool:
    return isinstance(error, RegistryError) and error.transient
