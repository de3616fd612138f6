"""Resolving `defaults:` and the `images:` entries of one file.

Each image is checked field by field first, so that one run reports every
field that is wrong. Only an image whose fields are all valid is expanded
into its tags and sources, which are checked last.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from reconciler.desired._explain import validate
from reconciler.desired._problems import FileReport
from reconciler.desired._schema import (
    DEFAULT_PLATFORM_TAG,
    DEFAULT_PLATFORMS,
    DefaultsEntry,
    ImageEntry,
)
from reconciler.desired._spots import FieldPath, Spot
from reconciler.desired._template import TemplateError, check_template, render
from reconciler.desired.models import Image
from reconciler.oci import (
    InvalidPlatformError,
    InvalidReferenceError,
    Platform,
    Reference,
    Repository,
    validate_tag,
)

T = TypeVar("T")

_ONE_TAG_EACH = "put {arch} and {variant} in platform_tag, e.g. "
_ONE_TAG_EACH += '"{version}-{arch}{variant}", so that each platform gets its own tag'


@dataclass(frozen=True, slots=True)
class Written(Generic[T]):
    """A value and where the file sets it; `path` is None for a built-in."""

    value: T
    path: FieldPath | None = None


Platforms = tuple[Written[Platform], ...]


@dataclass(frozen=True, slots=True)
class Defaults:
    """A file's defaults; None where the file writes them wrong."""

    platforms: Platforms | None
    platform_tag: Written[str] | None


@dataclass(frozen=True, slots=True)
class HostUse:
    """A registry host that an image reaches, and where the file names it."""

    host: str
    spot: Spot
    path: FieldPath


@dataclass(frozen=True, slots=True)
class DeclaredImage:
    """An image and where it is declared."""

    image: Image
    path: FieldPath
    spot: Spot
    hosts: tuple[HostUse, ...]


BUILT_IN = Defaults(
    platforms=tuple(Written(Platform.parse(text)) for text in DEFAULT_PLATFORMS),
    platform_tag=Written(DEFAULT_PLATFORM_TAG),
)


def resolve_defaults(data: Mapping[str, Any], report: FileReport) -> Defaults:
    """The defaults a file sets, falling back to the built-in ones."""
    where: FieldPath = ("defaults",)
    entry = validate(
        DefaultsEntry,
        data,
        where,
        report,
    )
    if entry is None:
        return Defaults(None, None)
    platforms = BUILT_IN.platforms
    if entry.platforms is not None:
        platforms = _platforms(entry.platforms, (*where, "platforms"), report)
    platform_tag = BUILT_IN.platform_tag
    if entry.platform_tag is not None:
        platform_tag = _template(entry.platform_tag, (*where, "platform_tag"), report)
    return Defaults(platforms, platform_tag)


def resolve_image(
    data: Any, where: FieldPath, defaults: Defaults, report: FileReport
) -> DeclaredImage | None:
    """The image declared at `where`, or None after reporting what is wrong."""
    entry = validate(
        ImageEntry,
        data,
        where,
        report,
    )
    if entry is None:
        return None
    before = len(report.problems)
    repository = _repository(entry.repository, (*where, "repository"), report)
    _check_versions(entry.versions, (*where, "versions"), report)
    platforms = _image_platforms(
        entry,
        where,
        defaults,
        report,
    )
    platform_tag = _image_platform_tag(
        entry,
        where,
        defaults,
        report,
    )
    if entry.source is not None:
        _template(entry.source, (*where, "source"), report)
    _check_aliases(entry, where, report)
    if len(report.problems) > before:
        return None
    if repository is None or platforms is None or platform_tag is None:
        return None  # the defaults are wrong, and reported already
    image = _image(
        entry,
        repository,
        platforms,
        platform_tag,
        where,
        report,
    )
    return _Expansion(
        image,
        where,
        platforms,
        platform_tag,
        report,
    ).declare()


def _image(
    entry: ImageEntry,
    repository: Repository,
    platforms: Platforms,
    platform_tag: Written[str],
    where: FieldPath,
    report: FileReport,
) -> Image:
    return Image(
        repository=repository,
        versions=tuple(entry.versions),
        platforms=tuple(platform.value for platform in platforms),
        platform_tag=platform_tag.value,
        source=entry.source,
        aliases=entry.aliases,
        index_media_type=entry.index_media_type,
        prune=entry.prune,
        file=report.file,
        line=report.spots.value(where).line,
    )


def _repository(text: str, path: FieldPath, report: FileReport) -> Repository | None:
    try:
        return Repository.parse(text)
    except InvalidReferenceError as error:
        report.add(path, error.message, error.hint)
        return None


def _check_versions(
    versions: Sequence[str], path: FieldPath, report: FileReport
) -> None:
    if not versions:
        hint = 'list at least one, e.g. versions: ["1.0.0"]'
        report.add(path, "no versions are listed", hint)
    first: dict[str, FieldPath] = {}
    for index, version in enumerate(versions):
        here = (*path, index)
        _check_tag(version, here, report)
        if version in first:
            line = report.spots.value(first[version]).line
            message = f"version {version!r} is listed twice; first on line {line}"
            report.add(here, message, "remove one of them")
        first.setdefault(version, here)


def _check_tag(
    tag: str, path: FieldPath, report: FileReport, on_key: bool = False
) -> None:
    try:
        validate_tag(tag)
    except InvalidReferenceError as error:
        report.add(
            path,
            error.message,
            error.hint,
            on_key=on_key,
        )


def _image_platforms(
    entry: ImageEntry, where: FieldPath, defaults: Defaults, report: FileReport
) -> Platforms | None:
    if entry.platforms is None:
        return defaults.platforms
    return _platforms(entry.platforms, (*where, "platforms"), report)


def _platforms(
    texts: Sequence[str], path: FieldPath, report: FileReport
) -> Platforms | None:
    if not texts:
        hint = "list at least one, e.g. [linux/amd64, linux/arm64]"
        report.add(path, "no platforms are listed", hint)
        return None
    before = len(report.problems)
    platforms: list[Written[Platform]] = []
    for index, text in enumerate(texts):
        platform = _platform(text, (*path, index), platforms, report)
        if platform is not None:
            platforms.append(platform)
    return tuple(platforms) if len(report.problems) == before else None


def _platform(
    text: str, path: FieldPath, earlier: Sequence[Written[Platform]], report: FileReport
) -> Written[Platform] | None:
    try:
        platform = Platform.parse(text)
    except InvalidPlatformError as error:
        report.add(path, error.message, error.hint)
        return None
    for other in earlier:
        if platform.matches(other.value):
            _report_same_platform(
                text,
                other,
                path,
                report,
            )
            return None
    return Written(platform, path)


def _report_same_platform(
    text: str, other: Written[Platform], path: FieldPath, report: FileReport
) -> None:
    line = report.spots.value(other.path or ()).line
    if text == str(other.value):
        message = f"platform {text} is listed twice; first on line {line}"
    else:
        message = f"platform {text} is the same as {other.value}, on line {line}"
    report.add(path, message, "remove one of them")


def _image_platform_tag(
    entry: ImageEntry, where: FieldPath, defaults: Defaults, report: FileReport
) -> Written[str] | None:
    if entry.platform_tag is None:
        return defaults.platform_tag
    return _template(entry.platform_tag, (*where, "platform_tag"), report)


def _template(
    template: str, path: FieldPath, report: FileReport
) -> Written[str] | None:
    try:
        check_template(template)
    except TemplateError as error:
        report.add(path, error.message, error.hint)
        return None
    return Written(template, path)


def _check_aliases(entry: ImageEntry, where: FieldPath, report: FileReport) -> None:
    for alias, version in entry.aliases.items():
        path = (*where, "aliases", alias)
        _check_tag(
            alias,
            path,
            report,
            on_key=True,
        )
        if alias in entry.versions:
            message = f"alias {alias!r} is also a version"
            hint = "remove the alias: the version has its own tag already"
            report.add(
                path,
                message,
                hint,
                on_key=True,
            )
        elif version not in entry.versions:
            message = f"alias {alias!r} names version {version!r}, which is not listed"
            hint = f"name one of the versions: {', '.join(entry.versions)}"
            report.add(path, message, hint)


@dataclass(frozen=True, slots=True)
class _Expansion:
    """Checks of everything an image expands to: platform tags and sources."""

    image: Image
    where: FieldPath
    platforms: Platforms
    platform_tag: Written[str]
    report: FileReport

    def declare(self) -> DeclaredImage | None:
        """The declared image, or None after reporting a bad expansion."""
        if not self._check_platform_tags():
            return None
        sources = self._source_hosts()
        if sources is None:
            return None
        repository = self._use(self.image.repository.registry, "repository")
        hosts = (repository, *(self._use(host, "source") for host in sources))
        spot = self.report.spots.value(self.where)
        return DeclaredImage(
            self.image,
            self.where,
            spot,
            hosts,
        )

    def _pairs(self) -> Iterator[tuple[str, Written[Platform]]]:
        for version in self.image.versions:
            for platform in self.platforms:
                yield version, platform

    def _check_platform_tags(self) -> bool:
        seen: dict[str, tuple[str, Written[Platform]]] = {}
        for version, platform in self._pairs():
            tag = render(self.image.platform_tag, version, platform.value)
            problem = self._tag_problem(
                tag,
                version,
                platform,
                seen,
            )
            if problem is not None:
                self.report.add(*problem)
                return False
            seen[tag] = (version, platform)
        return True

    def _tag_problem(
        self,
        tag: str,
        version: str,
        platform: Written[Platform],
        seen: Mapping[str, tuple[str, Written[Platform]]],
    ) -> tuple[FieldPath, str, str | None] | None:
        gives = f"platform_tag {self.image.platform_tag!r} gives {tag!r}"
        gives += f" for {version} on {platform.value}"
        try:
            validate_tag(tag)
        except InvalidReferenceError as error:
            return self._tag_path, f"{gives}, which is not a valid tag", error.hint
        if tag in seen:
            return self._clash(tag, seen[tag], (version, platform))
        if tag in self.image.versions or tag in self.image.aliases:
            what = "a version" if tag in self.image.versions else "an alias"
            hint = "change platform_tag so that it never gives a version or alias"
            return self._tag_path, f"{gives}, which is also {what}", hint
        return None

    def _clash(
        self,
        tag: str,
        first: tuple[str, Written[Platform]],
        again: tuple[str, Written[Platform]],
    ) -> tuple[FieldPath, str, str | None]:
        if first[0] != again[0]:
            message = f"versions {first[0]} and {again[0]} both get the "
            message += f"platform tag {tag!r}"
            return self._tag_path, message, "put {version} in platform_tag"
        platform, other = again[1], first[1].value
        message = f"platforms {other} and {platform.value} both get the "
        message += f"platform tag {tag!r}"
        return platform.path or self._tag_path, message, _ONE_TAG_EACH

    @property
    def _tag_path(self) -> FieldPath:
        return self.platform_tag.path or self.where

    def _source_hosts(self) -> tuple[str, ...] | None:
        if self.image.source is None:
            return ()
        hosts: dict[str, None] = {}
        for version, platform in self._pairs():
            reference = self._source(version, platform.value)
            if reference is None:
                return None
            hosts[reference.registry] = None
        return tuple(hosts)

    def _source(self, version: str, platform: Platform) -> Reference | None:
        text = render(str(self.image.source), version, platform)
        path = (*self.where, "source")
        not_a_tag = _not_a_tag(text)
        if not_a_tag:
            message = f"source gives {text!r} for {version} on {platform}, "
            self.report.add(path, message + not_a_tag, "end source with :{version}")
            return None
        try:
            return Reference.parse(text)
        except InvalidReferenceError as error:
            message = f"for {version} on {platform}: {error.message}"
            self.report.add(path, message, error.hint)
            return None

    def _use(self, host: str, field: str) -> HostUse:
        path = (*self.where, field)
        return HostUse(host, self.report.spots.value(path), path)


def _not_a_tag(reference: str) -> str | None:
    # A digest would pin one manifest for every version, and the planner
    # follows sources by tag; so a source is a tag and nothing else.
    last = reference.rpartition("/")[2]
    if "@" in last:
        return "which pins a digest; a source is a tag"
    return None if ":" in last else "which names no tag"
