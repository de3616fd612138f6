"""The Harbor REST client against the Harbor stand-in over a real registry."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.harbor import (
    REPOSITORY_PULL,
    REPOSITORY_PUSH,
    TAG_DELETE,
    CsrfRefusedError,
    HarborClient,
    ImmutableTagError,
    ProjectExistsError,
    ProjectNotFoundError,
    ProjectNotReadableError,
    ProxyCacheProjectError,
    QuotaExceededError,
    TagExistsError,
    explain_harbor_refusal,
    explain_registry_error,
    repository_segment,
    split_repository,
)
from reconciler.harbor.errors import HarborError
from reconciler.oci import Digest, Platform, Reference
from reconciler.registry import (
    AuthenticationError,
    ConnectionSettings,
    Credentials,
    RegistryClient,
    RegistryError,
)
from reconciler.testkit.accounts import ADMIN, READER, ROBOT
from reconciler.testkit.harbor import (
    HarborAccount,
    HarborProject,
    HarborStandIn,
    SwaggerContract,
)
from reconciler.testkit.images import (
    Endpoint,
    PushedImage,
    manifest_get,
    push_image,
    push_index,
)
from reconciler.testkit.pki import TestPKI
from reconciler.testkit.registry import RegistryServer

from .helpers import FAST_RETRY, admin_of

SWAGGER_ENV = "RECONCILER_HARBOR_SWAGGER"
SWAGGER = Path(
    os.environ.get(SWAGGER_ENV)
    or Path(__file__).resolve().parents[2] / "shared/harbor/swagger-v2.15.2.yaml"
)
OUTSIDER = "outsider"
DEVELOPER = "developer"


@pytest.fixture
def harbor(registry_token: RegistryServer, pki: TestPKI) -> Iterator[HarborStandIn]:
    """A stand-in with a public `library`, before the token registry."""
    stand_in = HarborStandIn(
        registry_token,
        pki.server,
        projects=[HarborProject("library", public=True)],
    )
    stand_in.add_account(HarborAccount(OUTSIDER, "outsider-pass"))
    stand_in.add_account(
        HarborAccount(DEVELOPER, "developer-pass", roles={"*": "developer"})
    )
    with stand_in:
        yield stand_in


@pytest.fixture
def slug(unique_slug: str) -> str:
    """A name unique to the test, for projects and repositories."""
    return unique_slug


def client_of(
    harbor: HarborStandIn,
    user: str | None = ADMIN,
    *,
    password: str | None = None,
    page_size: int = 100,
) -> HarborClient:
    """A client of the stand-in signed in as `user` (anonymous for None)."""
    credentials = None
    if user is not None:
        account = harbor.account(user)
        secret = password or (account.password if account else "")
        credentials = Credentials(user, secret)
    return HarborClient(
        ConnectionSettings(harbor.host, ca_file=harbor.ca_file),
        credentials=credentials,
        retry=FAST_RETRY,
        page_size=page_size,
    )


def trust(harbor: HarborStandIn) -> ssl.SSLContext:
    """A TLS context trusting the test CA only, for raw httpx clients."""
    return ssl.create_default_context(cafile=str(harbor.ca_file))


def registry_client_of(harbor: HarborStandIn) -> RegistryClient:
    """A /v2 client of the stand-in's registry front, as the admin."""
    user, password = harbor.registry.credentials(ADMIN)
    return RegistryClient(
        ConnectionSettings(harbor.host, ca_file=harbor.ca_file),
        credentials=Credentials(user, password),
        retry=FAST_RETRY,
    )


def seed(
    server: RegistryServer, repository: str, tag: str | None, **options: Any
) -> PushedImage:
    """Push a small real image straight into the registry, as its admin."""
    return push_image(server, repository, tag, credentials=admin_of(server), **options)


def seed_fleet(server: RegistryServer, repository: str) -> dict[str, Any]:
    """Two platform images and a Docker manifest list of them, all tagged."""
    amd64 = seed(server, repository, "1.0-amd64", seed="amd64")
    arm64 = seed(server, repository, "1.0-arm64", architecture="arm64", seed="arm")
    index = push_index(
        server,
        repository,
        "1.0",
        [(amd64, "linux/amd64"), (arm64, "linux/arm64/v8")],
        credentials=admin_of(server),
    )
    return {"amd64": amd64, "arm64": arm64, "index": index}


# Detection and projects --------------------------------------------------------


def test_detect_tells_harbor_from_a_plain_registry(
    harbor: HarborStandIn, registry_token: RegistryServer
) -> None:
    """systeminfo answers a JSON object on Harbor and 404 on a plain registry."""
    plain = ConnectionSettings(registry_token.host, ca_file=registry_token.ca_file)

    with client_of(harbor) as client, HarborClient(plain) as other:
        assert client.detect() is True
        assert other.detect() is False


def test_project_get_reads_visibility_and_proxy_cache(harbor: HarborStandIn) -> None:
    """A project reads with its ID, publicity, and proxy-cache registry."""
    private = harbor.add_project(HarborProject("private-one"))
    harbor.add_project(HarborProject("mirror", public=True, proxy_cache=True))

    with client_of(harbor) as client:
        library = client.project_get("library")
        mirror = client.project_get("mirror")
        hidden = client.project_get("private-one")

    assert library is not None
    assert mirror is not None
    assert hidden is not None
    assert (library.public, library.is_proxy_cache) == (True, False)
    assert (mirror.public, mirror.is_proxy_cache) == (True, True)
    assert (hidden.public, hidden.project_id) == (False, private.project_id)


def test_project_get_returns_none_for_a_missing_project(harbor: HarborStandIn) -> None:
    """Harbor's 403 for a missing project is told apart from "not allowed" by HEAD."""
    with client_of(harbor) as client:
        assert client.project_get("nothing-here") is None

    answered = [(r.method, r.status) for r in harbor.requests]
    assert answered == [("GET", 403), ("HEAD", 404)]


def test_project_get_refuses_a_project_the_account_cannot_read(
    harbor: HarborStandIn,
) -> None:
    """A private project without a role raises, rather than reading as missing."""
    harbor.add_project(HarborProject("secret"))

    with client_of(harbor, OUTSIDER) as client, pytest.raises(ProjectNotReadableError):
        client.project_get("secret")


def test_project_create_makes_public_and_private_projects(
    harbor: HarborStandIn, slug: str
) -> None:
    """Created projects read back with the publicity asked for."""
    with client_of(harbor, DEVELOPER) as client:
        public = client.project_create(f"{slug}-pub", public=True)
        private = client.project_create(f"{slug}-priv", public=False)
        permissions = client.permissions(private)

    assert (public.public, private.public) == (True, False)
    assert harbor.project(f"{slug}-priv") is not None
    assert TAG_DELETE in permissions  # the creator administers the project


def test_project_create_of_an_existing_project_is_refused(
    harbor: HarborStandIn,
) -> None:
    """Creating a project that exists is a ProjectExistsError (409)."""
    with client_of(harbor) as client, pytest.raises(ProjectExistsError) as caught:
        client.project_create("library", public=True)

    assert caught.value.status == 409


# Artifacts ---------------------------------------------------------------------


def test_artifacts_list_images_index_tags_and_platforms(
    harbor: HarborStandIn, registry_token: RegistryServer, namespace: str
) -> None:
    """An index lists its children with platforms; children are artifacts too."""
    fleet = seed_fleet(registry_token, f"{namespace}/app")
    project, repository = split_repository(f"{namespace}/app")

    with client_of(harbor) as client:
        artifacts = {a.digest: a for a in client.artifacts(project, repository)}

    index = artifacts[Digest(fleet["index"].digest)]
    assert index.is_index
    assert index.tag_names == ("1.0",)
    platforms = {r.child_digest: r.platform for r in index.references}
    assert platforms == {
        fleet["amd64"].digest: Platform("linux", "amd64"),
        fleet["arm64"].digest: Platform("linux", "arm64", "v8"),
    }
    amd64 = artifacts[Digest(fleet["amd64"].digest)]
    assert amd64.tag_names == ("1.0-amd64",)
    assert amd64.manifest_media_type == fleet["amd64"].media_type
    assert amd64.extra_attrs["architecture"] == "amd64"
    assert amd64.size > fleet["amd64"].size  # Harbor counts config and layers


def test_artifacts_show_attestations_as_unknown_platforms(
    harbor: HarborStandIn, registry_token: RegistryServer, namespace: str
) -> None:
    """buildx-style attestation entries come back as unknown/unknown references."""
    image = seed(registry_token, f"{namespace}/app", None, fmt="oci")
    push_index(
        registry_token,
        f"{namespace}/app",
        "2.0",
        [(image, "linux/amd64")],
        fmt="oci",
        attestations=True,
        credentials=admin_of(registry_token),
    )

    with client_of(harbor) as client:
        artifacts = client.artifacts(*split_repository(f"{namespace}/app"))

    index = next(a for a in artifacts if a.is_index)
    assert [r.is_attestation for r in index.references] == [False, True]


def test_artifacts_mark_tags_under_immutability_rules(
    harbor: HarborStandIn, registry_token: RegistryServer, slug: str
) -> None:
    """Tags matching a rule are immutable, and only when the status is asked for."""
    harbor.add_project(HarborProject(slug, immutable_tags=("1.*",)))
    fleet = seed_fleet(registry_token, f"{slug}/app")

    with client_of(harbor) as client:
        flagged = client.artifacts(slug, "app")
        unflagged = client.artifacts(slug, "app", with_immutable_status=False)

    tags = {t.name: t.immutable for a in flagged for t in a.tags}
    assert tags == {"1.0": True, "1.0-amd64": True, "1.0-arm64": True}
    assert not any(t.immutable for a in unflagged for t in a.tags)
    assert fleet["index"].digest in {a.digest for a in flagged}


def test_artifacts_of_a_nested_repository_encode_its_name_twice(
    harbor: HarborStandIn, registry_token: RegistryServer, namespace: str
) -> None:
    """`library/x/a/b` is asked for as repository `x%252Fa%252Fb`."""
    pushed = seed(registry_token, f"{namespace}/a/b", "1")
    project, repository = split_repository(f"{namespace}/a/b")

    with client_of(harbor) as client:
        artifacts = client.artifacts(project, repository)

    assert [a.digest for a in artifacts] == [pushed.digest]
    paths = [r.path for r in harbor.requests]
    assert f"/repositories/{repository_segment(repository)}/artifacts" in paths[0]
    assert "%252Fa%252Fb" in paths[0]


def test_a_nested_repository_encoded_once_finds_no_route(
    harbor: HarborStandIn, registry_token: RegistryServer, namespace: str
) -> None:
    """As on Harbor, a name encoded once is split by the router: 404."""
    seed(registry_token, f"{namespace}/a/b", "1")
    name = namespace.split("/", 1)[1] + "%2Fa%2Fb"
    url = f"{harbor.url}/api/v2.0/projects/library/repositories/{name}/artifacts"

    with httpx.Client(verify=trust(harbor), auth=(ADMIN, "admin-pass")) as raw:
        assert raw.get(url).status_code == 404


def test_artifacts_follow_pagination_across_pages(
    harbor: HarborStandIn, registry_token: RegistryServer, namespace: str
) -> None:
    """Seven artifacts in pages of three take three requests, and all arrive."""
    pushed = {
        seed(registry_token, f"{namespace}/many", f"v{n}", seed=str(n)).digest
        for n in range(7)
    }

    with client_of(harbor, page_size=3) as client:
        artifacts = client.artifacts(*split_repository(f"{namespace}/many"))

    assert {a.digest for a in artifacts} == pushed
    pages = [(r.query["page"], r.query["page_size"]) for r in harbor.requests]
    assert pages == [(["1"], ["3"]), (["2"], ["3"]), (["3"], ["3"])]


def test_artifacts_of_a_missing_repository_are_empty(harbor: HarborStandIn) -> None:
    """A repository that does not exist has no artifacts."""
    with client_of(harbor) as client:
        assert client.artifacts("library", "never-pushed-here") == []


def test_artifacts_in_a_missing_project_raise_project_not_found(
    harbor: HarborStandIn,
) -> None:
    """Harbor's 403 for a missing project becomes ProjectNotFoundError."""
    with client_of(harbor) as client, pytest.raises(ProjectNotFoundError) as caught:
        client.artifacts("no-such-project", "app")

    assert "no-such-project" in str(caught.value)


# Rules and permissions ---------------------------------------------------------


def test_immutable_rules_describe_their_tag_patterns(
    harbor: HarborStandIn, slug: str
) -> None:
    """Each rule reads back with its tag pattern and repository scope."""
    harbor.add_project(HarborProject(slug, immutable_tags=("v*", "{1,2}.*")))

    with client_of(harbor) as client:
        rules = client.immutable_rules(slug)

    assert [r.describe() for r in rules] == [
        "tags matching 'v*' in repositories matching '**' are immutable",
        "tags matching '{1,2}.*' in repositories matching '**' are immutable",
    ]


@pytest.mark.parametrize(
    ("user", "push", "delete"),
    [(ADMIN, True, True), (DEVELOPER, True, False), (READER, False, False)],
)
def test_permissions_follow_the_account_role(
    harbor: HarborStandIn, user: str, push: bool, delete: bool
) -> None:
    """Admins push and delete, developers push, guests only pull."""
    harbor.add_project(HarborProject("roles"))

    with client_of(harbor, user) as client:
        permissions = client.permissions("roles")

    assert REPOSITORY_PULL in permissions
    assert (REPOSITORY_PUSH in permissions) is push
    assert (TAG_DELETE in permissions) is delete


def test_robot_account_with_dollar_in_its_name_signs_in(
    harbor: HarborStandIn, registry_token: RegistryServer, namespace: str
) -> None:
    """`robot$library+ci` reaches Harbor intact and gets its explicit rights."""
    seed(registry_token, f"{namespace}/app", "1")

    with client_of(harbor, ROBOT) as client:
        permissions = client.permissions("library")
        artifacts = client.artifacts(*split_repository(f"{namespace}/app"))

    assert REPOSITORY_PUSH in permissions
    assert TAG_DELETE not in permissions
    assert len(artifacts) == 1
    assert {r.account for r in harbor.requests} == {ROBOT}


def test_wrong_password_is_an_authentication_error(harbor: HarborStandIn) -> None:
    """Harbor's 401 for bad credentials is an AuthenticationError."""
    client = client_of(harbor, ADMIN, password="wrong")
    with client, pytest.raises(AuthenticationError):
        client.project_get("library")


# Cookies ------------------------------------------------------------------------


def test_a_write_after_a_read_carries_no_session_cookie(
    harbor: HarborStandIn, registry_token: RegistryServer, namespace: str
) -> None:
    """The client drops Harbor's `sid`, so the CSRF check never sees a session."""
    pushed = seed(registry_token, f"{namespace}/app", "1")
    project, repository = split_repository(f"{namespace}/app")

    with client_of(harbor) as client:
        client.project_get(project)
        client.tag_create(project, repository, pushed.digest, "2")

    assert not any(r.cookie for r in harbor.requests)
    artifact = client_of(harbor).artifacts(project, repository)[0]
    assert artifact.tag_names == ("1", "2")


def test_a_client_keeping_cookies_is_refused_writes(
    harbor: HarborStandIn, registry_token: RegistryServer, namespace: str
) -> None:
    """The stand-in enforces the rule: sending `sid` back makes a write fail 403."""
    pushed = seed(registry_token, f"{namespace}/app", "1")
    base = f"{harbor.url}/api/v2.0/projects/library"
    repository = repository_segment(split_repository(f"{namespace}/app")[1])
    url = f"{base}/repositories/{repository}/artifacts/{pushed.digest}/tags"

    with httpx.Client(verify=trust(harbor), auth=(ADMIN, "admin-pass")) as raw:
        raw.get(base)
        refused = raw.post(url, json={"name": "2"})

    assert refused.status_code == 403
    explained = explain_harbor_refusal(403, refused.content, "create tag 2")
    assert isinstance(explained, CsrfRefusedError)


# Tags ----------------------------------------------------------------------------


def test_tag_delete_removes_only_that_tag(
    harbor: HarborStandIn, registry_token: RegistryServer, namespace: str
) -> None:
    """The artifact and its other tags stay, in Harbor and in the registry."""
    pushed = seed(registry_token, f"{namespace}/app", "old")
    seed(registry_token, f"{namespace}/app", "keep")
    project, repository = split_repository(f"{namespace}/app")

    with client_of(harbor) as client:
        client.tag_delete(project, repository, "old", "old")
        artifacts = client.artifacts(project, repository)

    assert [a.tag_names for a in artifacts] == [("keep",)]
    kept = manifest_get(
        registry_token, f"{namespace}/app", "keep", credentials=admin_of(registry_token)
    )
    assert kept.digest == pushed.digest


def test_tag_delete_of_an_immutable_tag_is_refused(
    harbor: HarborStandIn, registry_token: RegistryServer, slug: str
) -> None:
    """Harbor's 412 on deleting an immutable tag becomes ImmutableTagError."""
    harbor.add_project(HarborProject(slug, immutable_tags=("release-*",)))
    seed(registry_token, f"{slug}/app", "release-1")

    with client_of(harbor) as client, pytest.raises(ImmutableTagError) as caught:
        client.tag_delete(slug, "app", "release-1", "release-1")

    assert "release-1" in str(caught.value)
    assert caught.value.status == 412


def test_tag_create_of_an_existing_tag_is_refused(
    harbor: HarborStandIn, registry_token: RegistryServer, namespace: str
) -> None:
    """Harbor's 409 on creating a tag that exists becomes TagExistsError."""
    pushed = seed(registry_token, f"{namespace}/app", "1")
    seed(registry_token, f"{namespace}/app", "taken", seed="other")
    project, repository = split_repository(f"{namespace}/app")

    with client_of(harbor) as client, pytest.raises(TagExistsError):
        client.tag_create(project, repository, pushed.digest, "taken")


def test_tag_create_in_a_proxy_cache_project_is_refused(
    harbor: HarborStandIn, registry_token: RegistryServer, slug: str
) -> None:
    """Harbor's 405 for a proxy-cache project becomes ProxyCacheProjectError."""
    harbor.add_project(HarborProject(slug, proxy_cache=True))
    pushed = seed(registry_token, f"{slug}/app", "1")

    with client_of(harbor) as client, pytest.raises(ProxyCacheProjectError):
        client.tag_create(slug, "app", pushed.digest, "2")


# Refusals on the /v2 API, told in Harbor's terms --------------------------------


def push_through(harbor: HarborStandIn, pushed: PushedImage, tag: str) -> RegistryError:
    """Push `pushed`'s manifest under `tag` through the stand-in; return the error."""
    ref = Reference.parse(f"{harbor.host}/{pushed.repository}:{tag}")
    with registry_client_of(harbor) as client, pytest.raises(RegistryError) as caught:
        client.manifest_put(ref, pushed.manifest, pushed.media_type)
    return explain_registry_error(caught.value, f"push manifest {ref}")


def test_manifest_push_onto_an_immutable_tag_is_immutable_tag_error(
    harbor: HarborStandIn, registry_token: RegistryServer, slug: str
) -> None:
    """Harbor's 412 on a manifest push names the tag, and nothing moves."""
    harbor.add_project(HarborProject(slug, immutable_tags=("1.*",)))
    before = seed(registry_token, f"{slug}/app", "1.0")
    other = seed(registry_token, f"{slug}/app", None, seed="rebuilt")

    error = push_through(harbor, other, "1.0")

    assert isinstance(error, ImmutableTagError)
    assert "app:1.0" in error.message
    assert error.hint
    held = manifest_get(
        registry_token, f"{slug}/app", "1.0", credentials=admin_of(registry_token)
    )
    assert held.digest == before.digest


def test_push_over_the_quota_is_quota_exceeded_error(
    harbor: HarborStandIn, registry_token: RegistryServer, slug: str
) -> None:
    """Harbor's 403 "Quota exceeded" becomes QuotaExceededError."""
    harbor.add_project(HarborProject(slug, storage_limit=100))
    pushed = seed(registry_token, f"{slug}/app", None)

    error = push_through(harbor, pushed, "1")

    assert isinstance(error, QuotaExceededError)
    assert "Quota exceeded" in error.message


def test_push_into_a_proxy_cache_project_is_proxy_cache_error(
    harbor: HarborStandIn, registry_token: RegistryServer, slug: str
) -> None:
    """Harbor's 403 for pushes into a proxy cache becomes ProxyCacheProjectError."""
    harbor.add_project(HarborProject(slug, proxy_cache=True))
    pushed = seed(registry_token, f"{slug}/app", None)

    error = push_through(harbor, pushed, "1")

    assert isinstance(error, ProxyCacheProjectError)
    assert slug in error.message


def test_push_into_a_missing_project_is_project_not_found(
    harbor: HarborStandIn, registry_token: RegistryServer, slug: str
) -> None:
    """Harbor's 401 "project not found" becomes ProjectNotFoundError."""
    pushed = seed(registry_token, f"{slug}/app", None)

    error = push_through(harbor, pushed, "1")

    assert isinstance(error, ProjectNotFoundError)
    assert slug in error.message
    assert error.status == 401


def test_pushes_through_the_stand_in_reach_the_registry(
    harbor: HarborStandIn, registry_token: RegistryServer, namespace: str
) -> None:
    """The /v2 front passes ordinary pushes on, blobs and all."""
    endpoint = Endpoint(harbor.url, harbor.ca_file)
    pushed = push_image(
        endpoint, f"{namespace}/app", "1", credentials=admin_of(registry_token)
    )

    with client_of(harbor) as client:
        artifacts = client.artifacts(*split_repository(f"{namespace}/app"))

    assert [a.digest for a in artifacts] == [pushed.digest]


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (
            412,
            "Failed to process request due to 'a/b:1' configured as immutable.",
            ImmutableTagError,
        ),
        (
            403,
            "Quota exceeded when processing the request of adding 1 KiB",
            QuotaExceededError,
        ),
        (403, "can not push artifact to a proxy project: hub", ProxyCacheProjectError),
        (
            405,
            "the operation isn't supported for a proxy cache project",
            ProxyCacheProjectError,
        ),
        (401, "project not found, name: lib", ProjectNotFoundError),
        (404, "project lib not found", ProjectNotFoundError),
        (409, "tag 1 already exists under the repository 4", TagExistsError),
        (409, "The project named lib already exists", ProjectExistsError),
        (403, "CSRF token not found in request", CsrfRefusedError),
    ],
)
def test_harbor_refusals_map_to_their_meaning(
    status: int, message: str, expected: type[HarborError]
) -> None:
    """Each refusal Harbor words its own way maps to one error type."""
    body = f'{{"errors": [{{"code": "X", "message": "{message}"}}]}}'.encode()

    explained = explain_harbor_refusal(status, body, "do it")

    assert isinstance(explained, expected)
    assert explained.message.startswith("failed to do it: ")
    assert explained.hint


def test_refusals_a_plain_registry_would_give_are_not_harbor_errors() -> None:
    """A manifest 404 or a plain 403 keeps its registry meaning."""
    unknown = b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}'

    assert explain_harbor_refusal(404, unknown, "read") is None
    assert explain_harbor_refusal(403, b"", "read") is None


# The contract ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def contract() -> SwaggerContract:
    """Harbor's OpenAPI description, or a skip saying where it was looked for."""
    if not SWAGGER.is_file():
        pytest.skip(
            f"Harbor's OpenAPI description is not at {SWAGGER}; CI copies "
            f"shared/ beside the clone, or set {SWAGGER_ENV}"
        )
    return SwaggerContract.load(SWAGGER)


def test_stand_in_answers_match_harbors_openapi_description(
    harbor: HarborStandIn,
    registry_token: RegistryServer,
    slug: str,
    contract: SwaggerContract,
) -> None:
    """Every answer the client meets fits the schema Harbor publishes for it."""
    harbor.add_project(HarborProject(slug, immutable_tags=("1.*",)))
    harbor.add_project(HarborProject(f"{slug}-proxy", proxy_cache=True))
    fleet = seed_fleet(registry_token, f"{slug}/a/b")
    seed(registry_token, f"{slug}-proxy/app", "1")
    exchanges = record_exchanges(harbor, slug, fleet["index"].digest)

    problems = [
        problem
        for method, path, status, body in exchanges
        for problem in contract.problems(method, path, status, body)
    ]

    assert problems == []
    statuses = {status for _, _, status, _ in exchanges}
    assert {200, 201, 401, 403, 404, 405, 409, 412} <= statuses


def test_contract_check_catches_invented_fields(contract: SwaggerContract) -> None:
    """The check is not vacuous: a field Harbor lacks, or a wrong type, fails it."""
    project = contract.ref("#/definitions/Project")

    problems = contract.validate(
        {"name": "x", "public": True, "project_id": "1"}, project
    )

    assert problems == [
        "$.public: not declared in the description",
        "$.project_id: expected integer, got str '1'",
    ]


def record_exchanges(
    harbor: HarborStandIn, slug: str, index_digest: str
) -> list[tuple[str, str, int, bytes]]:
    """Call every endpoint the client uses, in success and refusal, raw."""
    exchanges: list[tuple[str, str, int, bytes]] = []

    def keep(response: httpx.Response) -> None:
        response.read()
        request = response.request
        exchanges.append(
            (
                request.method,
                request.url.raw_path.decode().partition("?")[0],
                response.status_code,
                response.content,
            )
        )

    def drop_cookies(request: httpx.Request) -> None:
        request.headers.pop("Cookie", None)

    nested = f"/projects/{slug}/repositories/{repository_segment('a/b')}/artifacts"
    with httpx.Client(
        base_url=f"{harbor.url}/api/v2.0",
        verify=trust(harbor),
        auth=(ADMIN, "admin-pass"),
        # Harbor refuses writes that carry its session cookie back.
        event_hooks={"request": [drop_cookies], "response": [keep]},
    ) as raw:
        raw.get("/systeminfo")
        raw.get("/projects/library", headers={"X-Is-Resource-Name": "true"})
        raw.get(f"/projects/{slug}-proxy", headers={"X-Is-Resource-Name": "true"})
        raw.get("/projects/missing", headers={"X-Is-Resource-Name": "true"})
        raw.head("/projects", params={"project_name": "missing"})
        raw.post("/projects", json={"project_name": f"{slug}-new", "metadata": {}})
        raw.post("/projects", json={"project_name": "library", "metadata": {}})
        raw.get(nested, params={"with_tag": "true", "with_immutable_status": "true"})
        raw.get(f"{nested}/{index_digest}/tags")  # not served: 404
        raw.post(f"{nested}/{index_digest}/tags", json={"name": "2.0"})
        raw.post(f"{nested}/{index_digest}/tags", json={"name": "1.0"})
        raw.delete(f"{nested}/{index_digest}/tags/2.0")
        raw.delete(f"{nested}/{index_digest}/tags/1.0")
        raw.post(
            f"/projects/{slug}-proxy/repositories/app/artifacts/1/tags",
            json={"name": "2"},
        )
        raw.get(f"/projects/{slug}/immutabletagrules")
        raw.get(
            "/users/current/permissions",
            params={"scope": "/project/1", "relative": "true"},
        )
        raw.get("/projects/library", auth=(ADMIN, "wrong"))
    return exchanges
