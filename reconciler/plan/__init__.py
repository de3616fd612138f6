"""The plan: a pure planner, its model, and renderers for people and machines."""

from reconciler.plan.document import load_plan, plan_document, render_json, save_plan
from reconciler.plan.model import (
    Action,
    Change,
    Child,
    Kind,
    Plan,
    ProjectChange,
    Summary,
)
from reconciler.plan.planner import plan_changes
from reconciler.plan.render import plain, render_change, render_plan, summary_line
from reconciler.plan.state import LiveState

__all__ = [
    "Action",
    "Change",
    "Child",
    "Kind",
    "LiveState",
    "Plan",
    "ProjectChange",
    "Summary",
    "load_plan",
    "plain",
    "plan_changes",
    "plan_document",
    "render_change",
    "render_json",
    "render_plan",
    "save_plan",
    "summary_line",
]
