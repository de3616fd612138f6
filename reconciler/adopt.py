"""Import: desired state written from what a registry already holds.

`import_desired` reads the repositories it is given and returns the YAML
text of a format-version-1 document that describes them. Planning that
document shows no changes, except where a comment in it says what plan will
add or rewrite. Nothing is ever written to the registry.

Reading, GET only where HEAD cannot tell:

1. the tags of each repository, then one HEAD per tag; signature tags
   (`sha256-<hex>.sig`, `.att`, `.sbom`) are left alone, unread;
2. each index once, by digest, then each child's manifest and config, for
   the platform the config declares.

Describing, rule by rule:

- **Versions and aliases.** The tags on one index: the version is the tag
  `version_tag` picks, the others are its aliases.
- **Platforms.** Read from each child's config, spelled as the index entry
  spells them when both agree (`linux/arm64/v8` and `linux/arm64` agree).
  Where they disagree, the config wins, as in plan, and a comment says that
  plan will rewrite the index.
- **platform_tag.** The first of `PLATFORM_TAG_CANDIDATES` whose tags hold
  exactly the children, for every platform of the version.
- **source.** The first of `SOURCE_CANDIDATES` whose references hold the
  same digests, directly or as the child of an index, for every platform.
- **Children without platform tags** (as `docker manifest` leaves them): a
  platform_tag whose tags are free, so that plan adds them and moves none,
  and a source: the sibling repository that holds the children, else the
  version's own index (`repository:{version}`). Plan then adds platform tags
  and keeps the index; a comment says so.
- **index_media_type.** Written only when the index's media type is not the
  one its children's media types would give.
- **Image entries.** Versions with the same platforms, patterns, source and
  media type share an entry; a repository whose versions differ gets one
  entry per kind, and a comment says why.

What the format cannot describe (an index listing an index, a child whose
config declares no platform or one the format cannot name, two children of
one platform) is left out with a comment naming its tags and why. Attestation
entries (`unknown/unknown`) are ignored, as plan ignores them, and noted.
"""

from __future__ import annotations

import json
import logging
import re
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from reconciler.desired import IndexMediaType
from reconciler.errors import ReconcilerError
from reconciler.oci import (
    DOCKER_MANIFEST_LIST,
    INDEX_MEDIA_TYPES,
    OCI_INDEX,
    Descriptor,
    Digest,
    Index,
    InvalidPlatformError,
    InvalidReferenceError,
    Manifest,
    Platform,
    Reference,
    Repository,
    index_media_type_for,
    validate_tag,
)
from reconciler.registries import Registries
from reconciler.registry import (
    AuthenticationError,
    ConnectionSettings,
    ManifestInfo,
    NotFoundError,
    PermissionDeniedError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

WORKERS = 16

PLATFORM_TAG_CANDIDATES = (
    "{version}-{arch}",
    "{version}-{arch}{variant}",
    "{version}-{os}-{arch}",
    "{version}-{os}-{arch}{variant}",
    "{version}_{arch}",
    "{version}_{arch}{variant}",
    "{version}.{arch}",
    "{arch}-{version}",
    "{arch}{variant}-{version}",
    "{os}-{arch}-{version}",
)
"""Platform-tag patterns tried, in this order; the first that holds wins."""

SOURCE_CANDIDATES = (
    "<repository>-{arch}:{version}",
    "<repository>-{arch}{variant}:{version}",
    "<repository>-{os}-{arch}:{version}",
    "<repository>-{os}-{arch}{variant}:{version}",
    "<repository>_{arch}:{version}",
    "<repository>/{arch}:{version}",
    "<parent>/{arch}/<name>:{version}",
)
"""Sibling-repository patterns tried, in this order; `<…>` name the target."""

_SIGNATURE = re.compile(r"^sha256-[0-9a-f]{64}\.(sig|att|sbom)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INDEX_TYPE_NAMES: Mapping[str, IndexMediaType] = {
    OCI_INDEX: "oci",
    DOCKER_MANIFEST_LIST: "docker",
}
_SHOWN_TAGS = 10
_FLOW_WIDTH = 72
_NOTE_WIDTH = 80
_RELATIVE_CA = "  # read from this file's folder: adjust it"


# -- what the command line gives -------------------------------------------


@dataclass(frozen=True, slots=True)
class Access:
    """How import reaches each registry, and what `registries:` will say."""

    ca_files: Mapping[str, str] = field(default_factory=dict)
    """CA bundle by host, as the user wrote its path."""
    insecure: frozenset[str] = frozenset()
    """Hosts spoken to over plain HTTP."""
    username_env: str | None = None
    password_env: str | None = None

    @classmethod
    def from_options(
        cls,
        ca_files: Iterable[str],
        insecure: Iterable[str],
        username_env: str | None,
        password_env: str | None,
    ) -> Access:
        """Check the command line's options; raise `ReconcilerError` if wrong."""
        cas = dict(_ca_option(text) for text in ca_files)
        plain = frozenset(insecure)
        both = sorted(plain & cas.keys())
        if both:
            raise ReconcilerError(
                f"--insecure {both[0]} contradicts --ca-file {both[0]}=…: "
                "insecure means plain HTTP, where no CA is used",
                hint="keep --ca-file for HTTPS with a private CA",
            )
        _check_env_names(username_env, password_env)
        return cls(cas, plain, username_env, password_env)

    def settings(self, host: str) -> ConnectionSettings:
        """How to connect to `host` while importing."""
        ca_file = self.ca_files.get(host)
        return ConnectionSettings(
            host,
            ca_file=Path(ca_file) if ca_file else None,
            insecure=host in self.insecure,
            username_env=self.username_env,
            password_env=self.password_env,
        )


def _ca_option(text: str) -> tuple[str, str]:
    host, equals, path = text.partition("=")
    if not (equals and host and path):
        raise ReconcilerError(
            f"--ca-file takes HOST=PATH, not {text!r}",
            hint="e.g. --ca-file harbor.example.com=certs/harbor-ca.crt",
        )
    if not Path(path).is_file():
        raise ReconcilerError(f"CA file {path!r} for {host} does not exist")
    return host, path


def _check_env_names(username_env: str | None, password_env: str | None) -> None:
    if (username_env is None) != (password_env is None):
        raise ReconcilerError(
            "--username-env and --password-env go together",
            hint="give both, or neither to use Docker's config",
        )
    for name in (username_env, password_env):
        if name is not None and not _ENV_NAME.match(name):
            message = f"{name!r} is not the name of an environment variable"
            raise ReconcilerError(message, hint="e.g. HARBOR_USERNAME")


@dataclass(frozen=True, slots=True)
class Target:
    """A repository to import, and the tags named on the command line."""

    repository: Repository
    tags: frozenset[str] | None = None
    """None: every tag of the repository."""


def parse_targets(texts: Sequence[str]) -> tuple[Target, ...]:
    """Repositories in the order first named; a bare repository means all tags."""
    wanted: dict[Repository, set[str] | None] = {}
    for text in texts:
        repository, tag = _parse_target(text)
        tags = wanted.setdefault(repository, set())
        if tag is None:
            wanted[repository] = None
        elif tags is not None:
            tags.add(tag)
    return tuple(
        Target(repo, None if tags is None else frozenset(tags))
        for repo, tags in wanted.items()
    )


def _parse_target(text: str) -> tuple[Repository, str | None]:
    if "@" in text:
        raise ReconcilerError(
            f"cannot import {text!r}: import takes a repository or "
            "repository:tag, not a digest",
            hint="name the tag of the index, or the whole repository",
        )
    _, _, rest = text.partition("/")
    if ":" not in rest:
        return Repository.parse(text), None
    reference = Reference.parse(text)
    return reference.repository, reference.tag


# -- the entry point -------------------------------------------------------


def import_desired(
    references: Sequence[str], access: Access, *, workers: int = WORKERS
) -> str:
    """The YAML of a desired state that describes `references` as they are now.

    Raises `ReconcilerError` when a reference is malformed or names nothing
    to import, and the registry's errors (authentication, TLS) as they come.
    """
    targets = parse_targets(references)
    hosts = sorted({target.repository.registry for target in targets})
    settings = {host: access.settings(host) for host in hosts}
    with (
        Registries(settings) as registries,
        ThreadPoolExecutor(workers, thread_name_prefix="import") as pool,
    ):
        reader = _Reader(registries, pool)
        imported = [_import_repository(reader, target) for target in targets]
    return render_document(imported, hosts, access)


# -- reading ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Read:
    """A child manifest as read: its media type and its config's platform."""

    media_type: str
    platform: Platform | None
    """None when the config declares none, or the child is an index."""
    nested: bool = False


class _Reader:
    """Reads through the registries, many requests at once."""

    def __init__(self, registries: Registries, pool: ThreadPoolExecutor) -> None:
        self._registries = registries
        self._pool = pool

    def map(self, function: Callable[[T], R], items: Iterable[T]) -> list[R]:
        return list(self._pool.map(function, items))

    def tags(self, repository: Repository) -> list[str]:
        return self._registries.client(repository.registry).tag_list(repository)

    def head(self, ref: Reference) -> ManifestInfo | None:
        return self._registries.client(ref.registry).manifest_head(ref)

    def heads(self, refs: Sequence[Reference]) -> list[ManifestInfo | None]:
        return self.map(self.head, refs)

    def manifest(self, ref: Reference) -> tuple[ManifestInfo, Manifest]:
        fetched = self._registries.client(ref.registry).manifest_get(ref)
        return fetched.info, fetched.manifest

    def child(self, repository: Repository, digest: Digest) -> _Read:
        """The media type and config platform of an index's child."""
        info, manifest = self.manifest(repository.digest(digest))
        if isinstance(manifest, Index):
            return _Read(info.media_type, None, nested=True)
        client = self._registries.client(repository.registry)
        config = client.blob_get(repository, manifest.config.digest)
        return _Read(info.media_type, Platform.from_config(config))

    def sibling_tags(self, repository: Repository) -> frozenset[str]:
        """The tags of a candidate source repository; none when unreadable."""
        try:
            return frozenset(self.tags(repository))
        except (NotFoundError, PermissionDeniedError, AuthenticationError) as error:
            # A candidate the user cannot read is no candidate; the target
            # itself was read with the same credentials.
            logger.debug("not a source candidate: %s (%s)", repository, error.message)
            return frozenset()


@dataclass(frozen=True, slots=True)
class _Tags:
    """A repository's tags as read: what each points at, and the signatures."""

    heads: Mapping[str, ManifestInfo]
    signatures: tuple[str, ...]

    @property
    def digests(self) -> dict[str, Digest]:
        return {tag: info.digest for tag, info in self.heads.items()}


def _read_tags(reader: _Reader, repository: Repository) -> _Tags:
    names = reader.tags(repository)
    signatures = tuple(sorted(t for t in names if _SIGNATURE.match(t)))
    rest = sorted(set(names) - set(signatures))
    infos = reader.heads([repository.tag(tag) for tag in rest])
    # A tag deleted between listing and HEAD is simply not there.
    heads = {tag: info for tag, info in zip(rest, infos, strict=True) if info}
    logger.info("%s: %d tags, %d signatures", repository, len(heads), len(signatures))
    return _Tags(heads, signatures)


# -- what was found --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Child:
    """One platform image of a version's index."""

    digest: Digest
    media_type: str
    platform: Platform
    """The config's platform, spelled as the index entry spells it."""


@dataclass(frozen=True, slots=True)
class Found:
    """A version's index as found, with its aliases and what to say about it."""

    version: str
    aliases: tuple[str, ...]
    media_type: str
    children: tuple[Child, ...]
    notes: tuple[str, ...] = ()
    mislabelled: bool = False
    """Whether an index entry names another platform than its config."""

    @property
    def tags(self) -> tuple[str, ...]:
        return (self.version, *self.aliases)


@dataclass(frozen=True, slots=True)
class Skipped:
    """Tags left out of the document, and why."""

    tags: tuple[str, ...]
    reason: str

    @property
    def note(self) -> str:
        return f"left out {_tag_list(self.tags)}: {self.reason}"


class _Unsupported(Exception):
    """An index the format cannot describe; the message says why."""


def version_tag(tags: Iterable[str]) -> str:
    """The tag that names the version, among tags on one index.

    The rule: the tag with the most dots, then the most digits; `latest` is
    never chosen while another tag exists; ties go to the first in sorted
    order. So `3.11.3` wins over `3.11` and `latest`, `1` over `stable`.
    """
    return max(
        sorted(tags),
        key=lambda tag: (
            tag != "latest",
            tag.count("."),
            sum(c.isdigit() for c in tag),
        ),
    )


def _versions(
    reader: _Reader, repository: Repository, tags: _Tags
) -> tuple[list[Found], list[Skipped]]:
    """Every index in the repository: as a version, or left out with a reason."""
    by_digest: dict[Digest, list[str]] = {}
    for tag, info in sorted(tags.heads.items()):
        if info.media_type in INDEX_MEDIA_TYPES:
            by_digest.setdefault(info.digest, []).append(tag)
    digests = sorted(by_digest)
    manifests = reader.map(lambda d: reader.manifest(repository.digest(d)), digests)
    indexes = {d: m for d, (_, m) in zip(digests, manifests, strict=True)}
    reads = _read_children(reader, repository, indexes.values())
    results = [
        _found(by_digest[d], tags.heads[by_digest[d][0]].media_type, indexes[d], reads)
        for d in digests
    ]
    return _split(results, Found, Skipped)


def _split(
    results: Iterable[object], first: type[T], second: type[R]
) -> tuple[list[T], list[R]]:
    """Results of two kinds, each in a list of its own, in order."""
    items = list(results)
    return (
        [item for item in items if isinstance(item, first)],
        [item for item in items if isinstance(item, second)],
    )


def _read_children(
    reader: _Reader, repository: Repository, manifests: Iterable[Manifest]
) -> dict[Digest, _Read]:
    digests = sorted(
        {
            entry.digest
            for manifest in manifests
            if isinstance(manifest, Index)
            for entry in manifest.images
        }
    )
    reads = reader.map(lambda d: reader.child(repository, d), digests)
    return dict(zip(digests, reads, strict=True))


def _found(
    tags: Sequence[str],
    media_type: str,
    manifest: Manifest,
    reads: Mapping[Digest, _Read],
) -> Found | Skipped:
    version = version_tag(tags)
    aliases = tuple(sorted(set(tags) - {version}))
    try:
        if not isinstance(manifest, Index):
            raise _Unsupported("its manifest is not an index")
        children, notes = _children(manifest, reads)
    except _Unsupported as error:
        return Skipped((version, *aliases), str(error))
    mislabelled = bool(notes)
    notes += _attestation_notes(manifest)
    return Found(
        version,
        aliases,
        media_type,
        children,
        tuple(f"{version}: {note}" for note in notes),
        mislabelled,
    )


def _children(
    index: Index, reads: Mapping[Digest, _Read]
) -> tuple[tuple[Child, ...], list[str]]:
    """The platform children of an index, or `_Unsupported` saying why not."""
    unplaced = [e for e in index.manifests if e.platform is None]
    if unplaced:
        raise _Unsupported(f"its entry {unplaced[0].digest.short} has no platform")
    if not index.images:
        raise _Unsupported("it lists no platform image")
    children: list[Child] = []
    notes: list[str] = []
    for entry in index.images:
        child, note = _child(entry, reads[entry.digest])
        _check_unique(child, children)
        children.append(child)
        notes += [note] if note else []
    return tuple(children), notes


def _child(entry: Descriptor, read: _Read) -> tuple[Child, str | None]:
    listed = entry.platform
    assert listed is not None  # Index.images have a platform
    short = entry.digest.short
    if read.nested:
        raise _Unsupported(f"its child {short} is itself an index")
    if read.platform is None:
        raise _Unsupported(f"the config of its child {short} declares no platform")
    note = None
    platform = listed
    if not listed.matches(read.platform):
        platform = read.platform
        note = (
            f"the index lists {short} as {listed}, but its config says "
            f"{platform}; plan will rewrite the index with {platform}"
        )
    _check_nameable(platform, short)
    return Child(entry.digest, read.media_type, platform), note


def _check_nameable(platform: Platform, short: str) -> None:
    try:
        Platform.parse(str(platform))
    except InvalidPlatformError:
        message = f"its child {short} is for {platform}, which the format cannot name"
        raise _Unsupported(message) from None


def _check_unique(child: Child, earlier: Sequence[Child]) -> None:
    for other in earlier:
        if other.platform.matches(child.platform):
            raise _Unsupported(
                f"it lists two children for {child.platform}: "
                f"{other.digest.short} and {child.digest.short}"
            )


def _attestation_notes(index: Index) -> list[str]:
    count = sum(1 for e in index.manifests if e.platform and e.platform.is_unknown)
    if not count:
        return []
    entries = "entry" if count == 1 else "entries"
    return [f"{count} attestation {entries} (unknown/unknown) ignored, as plan does"]


# -- patterns --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    """What an image entry says about its versions, besides their names."""

    platforms: tuple[Platform, ...]
    platform_tag: str
    source: str | None = None
    index_media_type: IndexMediaType | None = None

    @property
    def key(self) -> tuple[object, ...]:
        """Equal for layouts that one entry can hold, in any platform order."""
        platforms = tuple(sorted(self.platforms, key=str))
        return (platforms, self.platform_tag, self.source, self.index_media_type)


def _render(template: str, version: str, platform: Platform) -> str:
    return template.format(version=version, **platform.placeholders())


def _platform_tags(template: str, found: Found) -> list[str] | None:
    """The tags `template` gives the children; None if invalid or clashing."""
    tags = [_render(template, found.version, c.platform) for c in found.children]
    try:
        for tag in tags:
            validate_tag(tag)
    except InvalidReferenceError:
        return None
    return tags if len(set(tags)) == len(tags) else None


def exact_platform_tag(found: Found, digests: Mapping[str, Digest]) -> str | None:
    """The first candidate pattern whose tags hold exactly the children."""
    for template in PLATFORM_TAG_CANDIDATES:
        tags = _platform_tags(template, found)
        if tags is not None and _holds_all(tags, found, digests):
            return template
    return None


def free_platform_tag(
    found: Found, digests: Mapping[str, Digest], preferred: str | None
) -> str | None:
    """A pattern whose tags are absent or hold their child: plan adds, never moves.

    The one with the most tags already in place wins; then `preferred`, then
    the candidates' order.
    """
    first = [preferred] if preferred else []
    order = list(dict.fromkeys([*first, *PLATFORM_TAG_CANDIDATES]))
    scored = []
    for rank, template in enumerate(order):
        tags = _platform_tags(template, found)
        if tags is None or not _usable(tags, found, digests):
            continue
        held = len(tags) - len(_missing(tags, found, digests))
        scored.append((held, -rank, template))
    return max(scored)[2] if scored else None


def _holds_all(
    tags: Sequence[str], found: Found, digests: Mapping[str, Digest]
) -> bool:
    return all(
        digests.get(tag) == child.digest
        for tag, child in zip(tags, found.children, strict=True)
    )


def _missing(
    tags: Sequence[str], found: Found, digests: Mapping[str, Digest]
) -> list[str]:
    """The tags among `tags` that do not hold their child yet."""
    return [
        tag
        for tag, child in zip(tags, found.children, strict=True)
        if digests.get(tag) != child.digest
    ]


def _usable(tags: Sequence[str], found: Found, digests: Mapping[str, Digest]) -> bool:
    return all(
        digests.get(tag) in (None, child.digest)
        for tag, child in zip(tags, found.children, strict=True)
    )


def _source_templates(repository: Repository) -> list[str]:
    parent, _, name = str(repository).rpartition("/")
    return [
        candidate.replace("<repository>", str(repository))
        .replace("<parent>", parent)
        .replace("<name>", name)
        for candidate in SOURCE_CANDIDATES
    ]


def _source_ref(template: str, version: str, platform: Platform) -> Reference | None:
    try:
        return Reference.parse(_render(template, version, platform))
    except InvalidReferenceError:
        return None


class _Sources:
    """Finds the sibling repositories that hold a version's children."""

    def __init__(
        self, reader: _Reader, repository: Repository, found: Sequence[Found]
    ) -> None:
        self._reader = reader
        self._templates = _source_templates(repository)
        platforms = {c.platform for f in found for c in f.children}
        candidates = {
            ref.repository
            for template in self._templates
            for platform in platforms
            if (ref := _source_ref(template, "probe", platform)) is not None
        }
        ordered = sorted(candidates)
        # One tag list per candidate repository: a HEAD is sent only for a
        # reference that exists.
        listed = reader.map(reader.sibling_tags, ordered)
        self._tags = dict(zip(ordered, listed, strict=True))

    def find(self, found: Found) -> str | None:
        """The first source template that holds every child of `found`."""
        for template in self._templates:
            refs = [
                _source_ref(template, found.version, c.platform) for c in found.children
            ]
            if self._listed(refs) and self._hold(refs, found.children):
                return template
        return None

    def _listed(self, refs: Sequence[Reference | None]) -> bool:
        return all(
            ref is not None and ref.tag in self._tags.get(ref.repository, ())
            for ref in refs
        )

    def _hold(
        self, refs: Sequence[Reference | None], children: Sequence[Child]
    ) -> bool:
        return all(
            ref is not None and self._holds(ref, child)
            for ref, child in zip(refs, children, strict=True)
        )

    def _holds(self, ref: Reference, child: Child) -> bool:
        """Whether `ref` is the child, or an index whose child for its platform is."""
        info = self._reader.head(ref)
        if info is None:
            return False
        if info.digest == child.digest:
            return True
        if info.media_type not in INDEX_MEDIA_TYPES:
            return False
        _, manifest = self._reader.manifest(ref.repository.digest(info.digest))
        if not isinstance(manifest, Index):
            return False
        picked = next(
            (
                d
                for d in manifest.images
                if d.platform and d.platform.matches(child.platform)
            ),
            None,
        )
        return picked is not None and picked.digest == child.digest


def _index_media_type(found: Found) -> IndexMediaType | None:
    default = index_media_type_for(child.media_type for child in found.children)
    if found.media_type == default:
        return None
    return _INDEX_TYPE_NAMES.get(found.media_type)


# -- deciding --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Decided:
    """A version and how its entry describes it."""

    found: Found
    layout: Layout
    notes: tuple[str, ...]


def _decide(
    reader: _Reader, repository: Repository, found: Sequence[Found], tags: _Tags
) -> tuple[list[_Decided], list[Skipped]]:
    digests = tags.digests
    exact = {f.version: exact_platform_tag(f, digests) for f in found}
    counted = Counter(t for t in exact.values() if t is not None)
    preferred = counted.most_common(1)[0][0] if counted else None
    sources = _Sources(reader, repository, found)
    found_sources = reader.map(sources.find, found)
    results = [
        _decide_one(
            item,
            exact[item.version],
            source,
            preferred,
            digests,
            repository,
        )
        for item, source in zip(found, found_sources, strict=True)
    ]
    return _split(results, _Decided, Skipped)


def _decide_one(
    found: Found,
    exact: str | None,
    source: str | None,
    preferred: str | None,
    digests: Mapping[str, Digest],
    repository: Repository,
) -> _Decided | Skipped:
    platforms = tuple(child.platform for child in found.children)
    media_type = _index_media_type(found)
    if exact is not None:
        layout = Layout(platforms, exact, source, media_type)
        return _Decided(found, layout, found.notes)
    if source is None and found.mislabelled:
        # Plan would take each child from this very index by the platform
        # its entry names, and then refuse the config that disagrees.
        reason = "its index mislabels children that no tag or sibling holds"
        return Skipped(found.tags, reason)
    template = free_platform_tag(found, digests, preferred)
    if template is None:
        reason = "every platform_tag pattern gives a tag that points elsewhere"
        return Skipped(found.tags, reason)
    own = f"{repository}:{{version}}"
    layout = Layout(platforms, template, source or own, media_type)
    note = _adds_note(found, template, source, digests)
    return _Decided(found, layout, (*found.notes, note))


def _adds_note(
    found: Found, template: str, source: str | None, digests: Mapping[str, Digest]
) -> str:
    tags = _platform_tags(template, found) or []
    missing = _missing(tags, found, digests)
    origin = (
        f"copied from {source}"
        if source
        else "from its own index, as no sibling repository holds its children"
    )
    note = f"{found.version}: no platform tags hold all its children; plan will "
    note += f"add {_tag_list(missing)}, {origin}, and keep the index as it is"
    others = _other_tags(found, digests, set(tags))
    if others:
        note += f"; its children are also tagged {_tag_list(others)}, left alone"
    return note


def _other_tags(
    found: Found, digests: Mapping[str, Digest], claimed: set[str]
) -> list[str]:
    children = {child.digest for child in found.children}
    return sorted(t for t, d in digests.items() if d in children and t not in claimed)


# -- one repository --------------------------------------------------------


@dataclass
class ImportedImage:
    """One image entry of the document."""

    repository: Repository
    layout: Layout
    versions: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass
class ImportedRepository:
    """A repository's image entries, and the comments that go with them."""

    repository: Repository
    images: list[ImportedImage]
    notes: list[str]


def _import_repository(reader: _Reader, target: Target) -> ImportedRepository:
    repository = target.repository
    tags = _read_tags(reader, repository)
    if not tags.heads and not tags.signatures:
        raise ReconcilerError(
            f"nothing to import from {repository}: it has no tags",
            hint="check the name: import takes host/path or host/path:tag",
        )
    found, skipped = _versions(reader, repository, tags)
    found, skipped = _select(target, tags, found, skipped)
    found.sort(key=lambda item: _natural(item.version), reverse=True)
    decided, unpatterned = _decide(reader, repository, found, tags)
    skipped += unpatterned
    if not decided:
        raise _nothing_found(repository, tags, skipped)
    images = _group(repository, decided)
    notes = [n for d in decided for n in d.notes] + [s.note for s in skipped]
    notes += _split_note(images)
    if target.tags is None:
        notes += _left_alone(tags, decided, skipped)
    logger.info(
        "%s: %d versions in %d entries, %d indexes left out",
        repository,
        len(decided),
        len(images),
        len(skipped),
    )
    return ImportedRepository(repository, images, notes)


def _select(
    target: Target, tags: _Tags, found: list[Found], skipped: list[Skipped]
) -> tuple[list[Found], list[Skipped]]:
    """Keep the indexes a `repository:tag` names; check each named tag is one."""
    if target.tags is None:
        return found, skipped
    for tag in sorted(target.tags):
        _check_named(target.repository, tag, tags)
    named = target.tags
    return (
        [f for f in found if named & set(f.tags)],
        [s for s in skipped if named & set(s.tags)],
    )


def _check_named(repository: Repository, tag: str, tags: _Tags) -> None:
    info = tags.heads.get(tag)
    if info is None and tag not in tags.signatures:
        raise ReconcilerError(f"nothing to import: {repository}:{tag} does not exist")
    if info is None or info.media_type not in INDEX_MEDIA_TYPES:
        raise ReconcilerError(
            f"cannot import {repository}:{tag}: it is a single-platform "
            "manifest, not an index",
            hint="name the tag of a multi-platform index, or the repository",
        )


def _nothing_found(
    repository: Repository, tags: _Tags, skipped: Sequence[Skipped]
) -> ReconcilerError:
    message = f"nothing to import from {repository}: "
    if skipped:
        message += "; ".join(s.note for s in skipped)
    else:
        message += f"none of its {len(tags.heads)} tags is a multi-platform index"
    hint = "import repositories that hold image indexes (manifest lists)"
    return ReconcilerError(message, hint=hint)


def _group(repository: Repository, decided: Sequence[_Decided]) -> list[ImportedImage]:
    """One entry per kind of layout, in the order of `decided`."""
    groups: dict[tuple[object, ...], ImportedImage] = {}
    for item in decided:
        image = groups.setdefault(
            item.layout.key, ImportedImage(repository, item.layout)
        )
        image.versions.append(item.found.version)
        image.aliases.update(dict.fromkeys(item.found.aliases, item.found.version))
    return list(groups.values())


def _natural(tag: str) -> list[tuple[int, int | str]]:
    """A sort key that puts 3.10 after 3.9."""
    parts = re.findall(r"\d+|\D+", tag)
    return [(0, int(p)) if p.isdigit() else (1, p) for p in parts]


def _split_note(images: Sequence[ImportedImage]) -> list[str]:
    if len(images) < 2:
        return []
    return [
        f"its versions are split into {len(images)} image entries, because "
        "their platforms, platform tags, sources or index media types differ"
    ]


def _left_alone(
    tags: _Tags, decided: Sequence[_Decided], skipped: Sequence[Skipped]
) -> list[str]:
    claimed = {t for s in skipped for t in s.tags}
    for item in decided:
        claimed.update(item.found.tags)
        claimed.update(_platform_tags(item.layout.platform_tag, item.found) or [])
    others = sorted(set(tags.heads) - claimed, key=_natural)
    notes = []
    if others:
        notes.append(f"left alone, as no version lists them: {_tag_list(others)}")
    if tags.signatures:
        count = len(tags.signatures)
        noun = "tag" if count == 1 else "tags"
        notes.append(f"left alone: {count} signature {noun} (sha256-….sig/.att/.sbom)")
    return notes


def _tag_list(tags: Sequence[str]) -> str:
    shown = ", ".join(tags[:_SHOWN_TAGS])
    if len(tags) > _SHOWN_TAGS:
        shown += f" and {len(tags) - _SHOWN_TAGS} more"
    return shown


# -- the document ----------------------------------------------------------

_HEADER = (
    "# Written by `reconciler import` from what the registry holds.",
    "# `reconciler plan` of this file changes nothing, except where a comment",
    "# below says what it will add or rewrite. Review it before committing.",
)
_CREDENTIALS_HINT = (
    "    # Without credentials: Docker's config (docker login), else anonymous.",
    "    # credentials:",
    "    #   username_env: REGISTRY_USERNAME",
    "    #   password_env: REGISTRY_PASSWORD",
)


def render_document(
    repositories: Sequence[ImportedRepository], hosts: Sequence[str], access: Access
) -> str:
    """The YAML text of the document, comments included."""
    lines = [*_HEADER, "version: 1", "", "registries:"]
    for host in hosts:
        lines += _registry_lines(host, access)
    lines += ["", "images:"]
    for number, imported in enumerate(repositories):
        lines += [""] if number else []
        lines += _repository_lines(imported)
    return "\n".join(lines) + "\n"


def _registry_lines(host: str, access: Access) -> list[str]:
    lines = [f"  {_quote(host)}:"]
    ca_file = access.ca_files.get(host)
    if ca_file is not None:
        relative = "" if Path(ca_file).is_absolute() else _RELATIVE_CA
        lines.append(f"    ca_file: {_quote(ca_file)}{relative}")
    if host in access.insecure:
        lines.append("    insecure: true")
    if access.username_env and access.password_env:
        return [
            *lines,
            "    credentials:",
            f"      username_env: {access.username_env}",
            f"      password_env: {access.password_env}",
        ]
    return [*lines, *_CREDENTIALS_HINT]


def _repository_lines(imported: ImportedRepository) -> list[str]:
    lines = []
    if imported.notes:
        lines.append(f"  # {imported.repository}:")
        for note in imported.notes:
            lines += textwrap.wrap(
                note,
                width=_NOTE_WIDTH,
                initial_indent="  #   - ",
                subsequent_indent="  #     ",
                break_on_hyphens=False,
                break_long_words=False,
            )
    for image in imported.images:
        lines += _image_lines(image)
    return lines


def _image_lines(image: ImportedImage) -> list[str]:
    layout = image.layout
    lines = [f"  - repository: {image.repository}"]
    lines += _list_lines("versions", [_quote(v) for v in image.versions])
    lines += _list_lines("platforms", [str(p) for p in layout.platforms])
    lines.append(f"    platform_tag: {_quote(layout.platform_tag)}")
    if layout.source is not None:
        lines.append(f"    source: {_quote(layout.source)}")
    if layout.index_media_type is not None:
        lines.append(f"    index_media_type: {layout.index_media_type}")
    if image.aliases:
        lines.append("    aliases:")
        lines += [
            f"      {_quote(alias)}: {_quote(version)}"
            for alias, version in sorted(image.aliases.items())
        ]
    return lines


def _list_lines(name: str, items: Sequence[str]) -> list[str]:
    flow = f"    {name}: [{', '.join(items)}]"
    if len(flow) <= _FLOW_WIDTH:
        return [flow]
    return [f"    {name}:", *(f"      - {item}" for item in items)]


def _quote(text: str) -> str:
    # JSON strings are YAML double-quoted scalars: versions stay strings.
    return json.dumps(text)
