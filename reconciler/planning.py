"""From desired state to a plan: detect Harbor, read the live state, plan.

Hosts that run Harbor are read through its artifact API and their rules are
checked before anything is written (`reconciler.harbor_checks`); for plain
registries this is `plan_changes(desired, read_live(desired, registries))`
after one detection request per host.
"""

from __future__ import annotations

from reconciler.desired import DesiredState
from reconciler.errors import PlanError
from reconciler.harbor.live import read_harbor_live
from reconciler.harbor_checks import check_harbor_plan, stray_projects
from reconciler.live import read_live
from reconciler.plan import Plan, plan_changes
from reconciler.plan.planner import problem_text
from reconciler.registries import Registries

__all__ = ["hosts_of", "make_plan"]


def make_plan(desired: DesiredState, registries: Registries) -> Plan:
    """The plan that makes the registries match `desired`.

    Raises `PlanError` listing every problem, Harbor's rules included.
    """
    harbor_hosts = registries.harbor.detect(hosts_of(desired))
    if not harbor_hosts:
        _refuse_stray_projects(desired, harbor_hosts)
        return plan_changes(desired, read_live(desired, registries))
    reading = read_harbor_live(desired, registries, harbor_hosts)
    return check_harbor_plan(desired, reading, registries.harbor, harbor_hosts)


def hosts_of(desired: DesiredState) -> set[str]:
    """Every registry host the desired state reads or writes."""
    hosts = {project.host for project in desired.projects.values()}
    for image in desired.images:
        hosts.add(image.repository.registry)
        for version in image.versions:
            hosts.update(
                ref.registry
                for platform in image.platforms
                if (ref := image.source_ref(version, platform)) is not None
            )
    return hosts


def _refuse_stray_projects(desired: DesiredState, harbor_hosts: frozenset[str]) -> None:
    problems = stray_projects(desired, harbor_hosts)
    if problems:
        raise PlanError(problem_text(problems), problems=tuple(problems))
