"""Harbor's rules, checked at plan time, before anything is written.

The registry API cannot tell whether a project exists, is a proxy cache,
protects a tag, or lets the account push; Harbor answers such writes with
refusals half-way through an apply. Harbor's REST API tells them up front,
so for every Harbor host the plan touches:

- each target project exists, or `projects:` declares it, and then the plan
  creates it first (`ProjectChange`), with the declared publicity only;
- no project the plan writes to is a proxy cache, which takes no pushes;
- no tag the plan moves or destroys is immutable under a tag immutability
  rule (the artifact list's `immutable` flag), which Harbor enforces even
  for a write of the same digest;
- the account may push where the plan writes, and delete tags where it
  destroys (`GET /users/current/permissions`).

Every problem found is reported at once, with the planner's own, as one
`PlanError`; hosts that do not run Harbor are not asked anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from reconciler.desired import DesiredState, ProjectSettings
from reconciler.errors import PlanError, ReconcilerError
from reconciler.harbor import (
    REPOSITORY_PUSH,
    TAG_DELETE,
    HarborClient,
    ImmutableRule,
    Permission,
    Project,
)
from reconciler.harbor.live import HarborReading, RepositoryView
from reconciler.harbor.sites import HarborSites
from reconciler.oci import Reference, Repository
from reconciler.plan import Action, Change, Plan, ProjectChange, plan_changes
from reconciler.plan.planner import problem_text
from reconciler.registry import PermissionDeniedError, RegistryError

__all__ = ["check_harbor_plan", "stray_projects"]

_HOW_TO_CREATE = "e.g. `{address}: {{public: false}}`"

ProjectKey = tuple[str, str]  # (host, project name)


@dataclass(frozen=True, slots=True)
class _ProjectFact:
    """What Harbor said about one project: it, nothing, or why it could not tell."""

    host: str
    name: str
    found: Project | None = None
    unreadable: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}/{self.name}"


def check_harbor_plan(
    desired: DesiredState,
    reading: HarborReading,
    sites: HarborSites,
    harbor_hosts: frozenset[str],
) -> Plan:
    """Plan from `reading`, check Harbor's rules, and add the project creations.

    Raises `PlanError` listing every problem, the planner's and Harbor's.
    """
    facts = _read_projects(_projects_to_read(desired, harbor_hosts), sites)
    problems = stray_projects(desired, harbor_hosts)
    problems += _projectless(desired, harbor_hosts)
    problems += _project_problems(desired, facts, sites)
    planned: Plan | None = None
    try:
        planned = plan_changes(desired, reading.live)
    except PlanError as error:
        problems += error.problems
    if planned is not None:
        problems += _write_problems(planned, facts, reading.views, sites)
    if problems or planned is None:
        raise PlanError(problem_text(problems), problems=tuple(problems))
    return dataclasses.replace(
        planned,
        projects=_creations(desired, facts),
        warnings=(*planned.warnings, *_publicity_warnings(desired, facts)),
    )


def stray_projects(desired: DesiredState, harbor_hosts: frozenset[str]) -> list[str]:
    """Problems for projects `projects:` declares on hosts that are not Harbor."""
    return [
        f"{project.address}: projects: declares a Harbor project, but "
        f"{project.host} does not run Harbor (its /api/v2.0/systeminfo says "
        "so), and a plain registry has no projects to create; remove the "
        "entry, or correct the host"
        for project in desired.projects.values()
        if project.host not in harbor_hosts
    ]


# Projects ---------------------------------------------------------------------


def _projects_to_read(
    desired: DesiredState, harbor_hosts: frozenset[str]
) -> list[ProjectKey]:
    """Every target project, and every declared project, on a Harbor host."""
    targets = {
        (image.repository.registry, image.repository.project)
        for image in desired.images
        if "/" in image.repository.path
    }
    declared = {(p.host, p.name) for p in desired.projects.values()}
    return sorted(key for key in targets | declared if key[0] in harbor_hosts)


def _projectless(desired: DesiredState, harbor_hosts: frozenset[str]) -> list[str]:
    """Problems for target repositories on Harbor that name no project."""
    return [
        f"{image.repository}: Harbor keeps every repository in a project, and "
        "this one names none; write host/project/name, e.g. "
        f"{image.repository.registry}/library/{image.repository.path}"
        for image in desired.images
        if image.repository.registry in harbor_hosts
        and "/" not in image.repository.path
    ]


def _read_projects(
    keys: Iterable[ProjectKey], sites: HarborSites
) -> dict[ProjectKey, _ProjectFact]:
    facts = {}
    for host, name in keys:
        try:
            found = sites.client(host).project_get(name)
        except ReconcilerError as error:
            facts[host, name] = _ProjectFact(host, name, unreadable=_said(error))
        else:
            facts[host, name] = _ProjectFact(host, name, found)
    return facts


def _project_problems(
    desired: DesiredState,
    facts: Mapping[ProjectKey, _ProjectFact],
    sites: HarborSites,
) -> list[str]:
    """Projects that cannot be read, are missing, or cannot be created."""
    problems = []
    for key, fact in facts.items():
        declared = _declared(desired, key)
        if fact.unreadable is not None:
            problems.append(f"{fact.address}: {fact.unreadable}")
        elif fact.found is None and declared is None:
            problems.append(_missing(fact, _repositories_in(desired, key)))
        elif fact.found is None and not _may_create(sites.client(fact.host)):
            problems.append(_robot_cannot_create(fact, sites.client(fact.host)))
    return problems


def _missing(fact: _ProjectFact, repositories: Sequence[str]) -> str:
    where = ", ".join(repositories[:3]) + (", ..." if len(repositories) > 3 else "")
    example = _HOW_TO_CREATE.format(address=fact.address)
    return (
        f"{fact.address}: Harbor has no project {fact.name!r}, so {where} cannot "
        "be written there; create the project in Harbor, or declare it under "
        f"projects: ({example}) so that apply creates it first"
    )


def _may_create(client: HarborClient) -> bool:
    # Harbor lets users create projects, not robot accounts (robot$...).
    return client.signed_in and not client.account.startswith("robot$")


def _robot_cannot_create(fact: _ProjectFact, client: HarborClient) -> str:
    who = client.account if client.signed_in else "an anonymous client"
    return (
        f"{fact.address}: projects: declares the project, which Harbor does not "
        f"have, but {who} cannot create projects (Harbor lets signed-in users "
        "create them, not robot accounts); create it in Harbor, or apply as a "
        "user who may"
    )


def _creations(
    desired: DesiredState, facts: Mapping[ProjectKey, _ProjectFact]
) -> tuple[ProjectChange, ...]:
    return tuple(
        ProjectChange(project.host, project.name, project.public)
        for key, fact in sorted(facts.items())
        if fact.found is None
        and fact.unreadable is None
        and (project := _declared(desired, key)) is not None
    )


def _publicity_warnings(
    desired: DesiredState, facts: Mapping[ProjectKey, _ProjectFact]
) -> list[str]:
    warnings = []
    for key, fact in sorted(facts.items()):
        declared = _declared(desired, key)
        if fact.found is None or declared is None:
            continue
        if fact.found.public != declared.public:
            warnings.append(
                f"project {fact.address} is {_publicity(fact.found.public)} in "
                f"Harbor, but projects: declares it {_publicity(declared.public)}; "
                "publicity is set only when a project is created: change it in "
                "Harbor (Project > Configuration) if it should be"
            )
    return warnings


def _declared(desired: DesiredState, key: ProjectKey) -> ProjectSettings | None:
    return desired.projects.get(f"{key[0]}/{key[1]}")


def _repositories_in(desired: DesiredState, key: ProjectKey) -> list[str]:
    return sorted(
        str(image.repository)
        for image in desired.images
        if (image.repository.registry, image.repository.project) == key
    )


# Writes -----------------------------------------------------------------------


def _write_problems(
    plan: Plan,
    facts: Mapping[ProjectKey, _ProjectFact],
    views: Mapping[Repository, RepositoryView],
    sites: HarborSites,
) -> list[str]:
    """Proxy caches, permissions and immutable tags, where the plan writes."""
    problems = []
    rules = _Rules(sites)
    for key, changes in sorted(_changes_by_project(plan, facts).items()):
        project = facts[key].found
        if project is None:
            continue  # to be created, or reported already
        problems += _project_write_problems(facts[key], project, changes, sites)
        problems += _immutable_problems(changes, views, rules)
    return problems


def _changes_by_project(
    plan: Plan, facts: Mapping[ProjectKey, _ProjectFact]
) -> dict[ProjectKey, list[Change]]:
    grouped: dict[ProjectKey, list[Change]] = {}
    for change in plan.changes:
        key = _key_of(change.address)
        if key in facts:
            grouped.setdefault(key, []).append(change)
    return grouped


def _project_write_problems(
    fact: _ProjectFact, project: Project, changes: Sequence[Change], sites: HarborSites
) -> list[str]:
    if project.is_proxy_cache:
        return [
            f"{fact.address}: the project is a proxy cache of another registry, "
            "and Harbor refuses every push into it; write the images into an "
            "ordinary project instead"
        ]
    return _permission_problems(fact, project, changes, sites.client(fact.host))


def _permission_problems(
    fact: _ProjectFact,
    project: Project,
    changes: Sequence[Change],
    client: HarborClient,
) -> list[str]:
    writes = sum(change.action is not Action.DELETE for change in changes)
    destroys = len(changes) - writes
    try:
        granted = client.permissions(project)
    except RegistryError as error:
        return [f"{fact.address}: cannot tell what the account may do: {_said(error)}"]
    return [
        _may_not(fact, client, granted, need, count)
        for need, count in ((_PUSH, writes), (_DELETE_TAGS, destroys))
        if count and need.permission not in granted
    ]


@dataclass(frozen=True, slots=True)
class _Need:
    """A permission the plan needs in a project, and how to tell of it."""

    permission: Permission
    verb: str
    planned: str
    who_may: str


_PUSH = _Need(
    REPOSITORY_PUSH,
    "push to",
    "writes",
    "a robot account with push permission there, or a member with the "
    "developer role or above",
)
# Pruning deletes single tags through Harbor's tag API on Harbor hosts.
_DELETE_TAGS = _Need(
    TAG_DELETE,
    "delete tags in",
    "destroys",
    "a robot account with permission to delete tags there, or a member with "
    "the maintainer role or above",
)


def _may_not(
    fact: _ProjectFact,
    client: HarborClient,
    granted: frozenset[Permission],
    need: _Need,
    count: int,
) -> str:
    resource = need.permission[0]
    has = sorted(action for kind, action in granted if kind == resource)
    grants = f"only {', '.join(has)}" if has else "nothing"
    return (
        f"{fact.address}: {client.account} may not {need.verb} project "
        f"{fact.name} (Harbor grants it {grants} on {resource}s), and the plan "
        f"{need.planned} {count} tag(s) there; use an account that may: "
        f"{need.who_may}"
    )


def _immutable_problems(
    changes: Sequence[Change], views: Mapping[Repository, RepositoryView], rules: _Rules
) -> list[str]:
    problems = []
    for change in changes:
        if change.action is Action.CREATE:
            continue  # Harbor protects only tags that exist
        view = views.get(change.address.repository)
        if view is not None and view.is_immutable(str(change.address.tag)):
            problems.append(_immutable(change, rules.protecting(change.address)))
    return problems


def _immutable(change: Change, rule: str) -> str:
    before = change.before.short if change.before else "-"
    if change.action is Action.DELETE:
        doing = f"destroy this tag ({before})"
    else:
        after = change.after.short if change.after else "-"
        doing = f"move this tag ({before} -> {after})"
    return (
        f"{change.address}: the plan would {doing}, but it is immutable: {rule}; "
        "Harbor refuses every change to an immutable tag, even to the same "
        "digest. Leave the tag out of the desired state, or have a project "
        "admin exclude it from the rule (Project > Policy > Tag Immutability)"
    )


class _Rules:
    """Tag immutability rules, read once per project, to name the one at work."""

    def __init__(self, sites: HarborSites) -> None:
        self._sites = sites
        self._rules: dict[ProjectKey, list[ImmutableRule] | str] = {}

    def protecting(self, ref: Reference) -> str:
        """The rule that protects `ref`, described, or why it cannot be named."""
        key = _key_of(ref)
        rules = self._read(key)
        if isinstance(rules, str):
            return f"a tag immutability rule of project {key[1]} protects it ({rules})"
        name = ref.repository.path.partition("/")[2]
        found = next((r for r in rules if r.protects(name, str(ref.tag))), None)
        if found is None:
            return f"a tag immutability rule of project {key[1]} protects it"
        return f"rule {found.rule_id} of project {key[1]}: {found.describe()}"

    def _read(self, key: ProjectKey) -> list[ImmutableRule] | str:
        if key not in self._rules:
            try:
                self._rules[key] = self._sites.client(key[0]).immutable_rules(key[1])
            except PermissionDeniedError:
                self._rules[key] = "which one, the account may not read"
            except RegistryError as error:
                self._rules[key] = f"its rules could not be read: {error.message}"
        return self._rules[key]


def _key_of(ref: Reference) -> ProjectKey:
    return ref.repository.registry, ref.repository.project


def _said(error: ReconcilerError) -> str:
    return f"{error.message}; {error.hint}" if error.hint else error.message


def _publicity(public: bool) -> str:
    return "public" if public else "private"
