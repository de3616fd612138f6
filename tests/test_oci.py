"""Value types: references, platforms, digests and manifests."""

from __future__ import annotations

import json

import pytest

from reconciler.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Digest,
    ImageManifest,
    Index,
    InvalidDigestError,
    InvalidManifestError,
    InvalidPlatformError,
    InvalidReferenceError,
    Platform,
    Reference,
    Repository,
    build_index,
    index_media_type_for,
    parse_manifest,
)

DIGEST = Digest.of(b"x")


def test_reference_parses_host_path_tag_and_digest() -> None:
    """A full reference keeps its registry, path, tag and digest apart."""
    ref = Reference.parse(f"harbor.example.com:8443/library/java-gdal:3.8.5@{DIGEST}")

    assert ref.registry == "harbor.example.com:8443"
    assert ref.repository.path == "library/java-gdal"
    assert ref.tag == "3.8.5"
    assert ref.digest == DIGEST
    assert ref.identifier == str(DIGEST)
    assert str(ref) == f"harbor.example.com:8443/library/java-gdal:3.8.5@{DIGEST}"


@pytest.mark.parametrize(
    "text",
    [
        "library/x:1",  # no registry host
        "harbor.example.com/Library/x:1",  # upper case path
        "harbor.example.com/library/x",  # neither tag nor digest
        "harbor.example.com/library/x:.bad",  # tag starts with a dot
        "harbor.example.com/library/x@sha256:abc",  # short digest
        "harbor.example.com/lib//x:1",  # empty component
        "harbor.example.com/" + "a" * 300 + ":1",  # too long
    ],
)
def test_reference_rejects_invalid_text(text: str) -> None:
    """Invalid references raise a typed error with a message, never a crash."""
    with pytest.raises(InvalidReferenceError) as caught:
        Reference.parse(text)

    assert caught.value.message


def test_repository_tag_validates_the_tag() -> None:
    """A tag over 128 characters is refused."""
    repository = Repository.parse("localhost:5000/a/b")

    assert str(repository.tag("v1")) == "localhost:5000/a/b:v1"
    with pytest.raises(InvalidReferenceError):
        repository.tag("x" * 129)


def test_platform_parses_and_prints_round_trip() -> None:
    """Platforms print as they were written."""
    for text in ("linux/amd64", "linux/arm/v7", "windows/amd64"):
        assert str(Platform.parse(text)) == text


@pytest.mark.parametrize(
    "text", ["linux", "linux/amd46", "linus/amd64", "linux/arm/V7", "a/b/c/d"]
)
def test_platform_rejects_bad_strings(text: str) -> None:
    """Unknown systems and architectures are errors with a hint."""
    with pytest.raises(InvalidPlatformError) as caught:
        Platform.parse(text)

    assert caught.value.hint


def test_platform_default_variants_match() -> None:
    """linux/arm64 and linux/arm64/v8 name the same platform; arm/v6 is not arm/v7."""
    assert Platform.parse("linux/arm64").matches(Platform.parse("linux/arm64/v8"))
    assert Platform.parse("linux/arm").matches(Platform.parse("linux/arm/v7"))
    assert not Platform.parse("linux/arm/v6").matches(Platform.parse("linux/arm/v7"))


def test_digest_validates_and_verifies() -> None:
    """A digest checks its own format and the bytes it names."""
    assert DIGEST.verifies(b"x")
    assert not DIGEST.verifies(b"y")
    assert DIGEST.short == DIGEST[:19]
    with pytest.raises(InvalidDigestError):
        Digest("sha256:XYZ")


def test_index_bytes_are_deterministic_and_parse_back() -> None:
    """An index built twice has the same digest, and parsing gives its children."""
    children = (
        Descriptor(DOCKER_MANIFEST, DIGEST, 10, Platform.parse("linux/amd64")),
        Descriptor(
            DOCKER_MANIFEST, Digest.of(b"y"), 11, Platform.parse("linux/arm64/v8")
        ),
    )
    raw = build_index(DOCKER_MANIFEST_LIST, children)

    assert raw == build_index(DOCKER_MANIFEST_LIST, children)
    parsed = parse_manifest(raw)
    assert isinstance(parsed, Index)
    assert parsed.media_type == DOCKER_MANIFEST_LIST
    assert parsed.images == children
    assert parsed.raw == raw


def test_index_images_leave_out_attestations() -> None:
    """Entries with platform unknown/unknown are attestations, not images."""
    attestation = {
        "mediaType": OCI_MANIFEST,
        "digest": str(Digest.of(b"att")),
        "size": 5,
        "platform": {"os": "unknown", "architecture": "unknown"},
    }
    image = {
        "mediaType": OCI_MANIFEST,
        "digest": str(DIGEST),
        "size": 3,
        "platform": {"os": "linux", "architecture": "amd64"},
    }
    raw = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [image, attestation]}
    )

    parsed = parse_manifest(raw.encode())

    assert isinstance(parsed, Index)
    assert [str(c.platform) for c in parsed.images] == ["linux/amd64"]


def test_image_manifest_lists_config_then_layers() -> None:
    """An image manifest's blobs are its config and then its layers."""
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "c", "digest": str(DIGEST), "size": 1},
            "layers": [{"mediaType": "l", "digest": str(Digest.of(b"l")), "size": 2}],
        }
    ).encode()

    parsed = parse_manifest(raw)

    assert isinstance(parsed, ImageManifest)
    assert [b.digest for b in parsed.blobs] == [DIGEST, Digest.of(b"l")]


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"schemaVersion": 1}',
        b'{"schemaVersion": 2, "mediaType": "x/y"}',
        b'{"schemaVersion": 2, "manifests": [{"digest": "sha256:1", "size": 1}]}',
    ],
)
def test_parse_manifest_rejects_garbage(raw: bytes) -> None:
    """Bytes that are not a manifest raise a typed error."""
    with pytest.raises(InvalidManifestError):
        parse_manifest(raw)


def test_index_media_type_follows_children() -> None:
    """Docker children give a manifest list; any OCI child gives an OCI index."""
    assert (
        index_media_type_for([DOCKER_MANIFEST, DOCKER_MANIFEST]) == DOCKER_MANIFEST_LIST
    )
    assert index_media_type_for([DOCKER_MANIFEST, OCI_MANIFEST]) == OCI_INDEX
