"""Desired state: YAML files in git, loaded into one checked, frozen model.

`load_desired` reads every file before it judges any, and raises one
`DesiredStateError` listing every problem with `file:line:column`, the field
path, and what to do. It never touches the network.
"""

from reconciler.desired._loader import load_desired
from reconciler.desired._problems import DesiredStateError, Problem
from reconciler.desired._template import PLACEHOLDERS
from reconciler.desired.models import (
    Credentials,
    DesiredState,
    Image,
    IndexMediaType,
    ProjectSettings,
    RegistryKind,
    RegistrySettings,
)

__all__ = [
    "PLACEHOLDERS",
    "Credentials",
    "DesiredState",
    "DesiredStateError",
    "Image",
    "IndexMediaType",
    "Problem",
    "ProjectSettings",
    "RegistryKind",
    "RegistrySettings",
    "load_desired",
]
