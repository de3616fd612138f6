"""Harbor's REST API (`/api/v2.0`): what the registry API cannot tell.

Whether a project exists or is a proxy cache, which tags are immutable, what
the account may do, and the artifacts of a repository with their tags and
children in a few requests. `explain_harbor_refusal` turns Harbor's refusals
on either API into errors that say what Harbor refused and what to change.

`harbor.sites` tells which hosts run Harbor; `harbor.live` reads the live
state through the artifact API. They are imported by name, not from here.
"""

from reconciler.harbor._paths import repository_segment, split_repository
from reconciler.harbor.client import API_PREFIX, MAX_PAGE_SIZE, HarborClient
from reconciler.harbor.errors import (
    CsrfRefusedError,
    HarborError,
    ImmutableTagError,
    ProjectExistsError,
    ProjectNotFoundError,
    ProjectNotReadableError,
    ProxyCacheProjectError,
    QuotaExceededError,
    TagExistsError,
    explain_harbor_refusal,
    explain_registry_error,
)
from reconciler.harbor.models import (
    REPOSITORY_PULL,
    REPOSITORY_PUSH,
    TAG_CREATE,
    TAG_DELETE,
    Artifact,
    ArtifactReference,
    ArtifactTag,
    ImmutableRule,
    Permission,
    Project,
    Selector,
)

__all__ = [
    "API_PREFIX",
    "MAX_PAGE_SIZE",
    "REPOSITORY_PULL",
    "REPOSITORY_PUSH",
    "TAG_CREATE",
    "TAG_DELETE",
    "Artifact",
    "ArtifactReference",
    "ArtifactTag",
    "CsrfRefusedError",
    "HarborClient",
    "HarborError",
    "ImmutableRule",
    "ImmutableTagError",
    "Permission",
    "Project",
    "ProjectExistsError",
    "ProjectNotFoundError",
    "ProjectNotReadableError",
    "ProxyCacheProjectError",
    "QuotaExceededError",
    "Selector",
    "TagExistsError",
    "explain_harbor_refusal",
    "explain_registry_error",
    "repository_segment",
    "split_repository",
]
