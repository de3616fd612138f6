"""How repository names become paths of Harbor's REST API."""

from __future__ import annotations

from urllib.parse import quote

from reconciler.harbor.errors import HarborError


def split_repository(path: str) -> tuple[str, str]:
    """Split a repository path, `library/a/b`, into Harbor's project `library`
    and repository name `a/b`.
    """
    project, _, name = path.partition("/")
    if not project or not name:
        raise HarborError(
            f"repository {path!r} names no Harbor project",
            hint="in Harbor every repository lives in a project: write "
            "<project>/<name>, e.g. library/app",
        )
    return project, name


def project_segment(project: str) -> str:
    """The project name as one path segment."""
    return quote(project, safe="")


def repository_segment(name: str) -> str:
    """The repository name as one path segment, URL-encoded twice.

    Harbor's router decodes the path once before matching it, so a single
    `%2F` would split `a/b` into two segments; the handler then unescapes
    the name once more (the OpenAPI description: a/b -> a%2Fb -> a%252Fb).
    """
    return quote(quote(name, safe=""), safe="")


def reference_segment(reference: str) -> str:
    """A tag or digest as one path segment; the `:` of a digest stays."""
    return quote(reference, safe=":")
