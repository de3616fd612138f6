"""The desired-state file format as a JSON Schema (draft 2020-12), for editors.

Generated from the pydantic models the loader checks files with
(`_schema.py`), with what else the loader checks that a schema can say:
`version: 1` is required, platforms are `os/architecture[/variant]` with
the names Go knows, versions and aliases are valid OCI tags, lists are not
empty and versions are not repeated. Field descriptions come from the
models' attribute docstrings.

The loader stays the judge: a file the schema accepts can still be refused
(a template that gives two platforms one tag, an alias of no listed
version, an address claimed twice), but a file the loader accepts is never
refused by the schema.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
from typing import Any, Literal

from pydantic import BaseModel

from reconciler.desired._schema import (
    CredentialsEntry,
    DefaultsEntry,
    ImageEntry,
    ProjectEntry,
    RegistryEntry,
    _Entry,
)
from reconciler.desired._template import PLACEHOLDERS
from reconciler.oci.platform import KNOWN_ARCHITECTURES, KNOWN_OS

DIALECT = "https://json-schema.org/draft/2020-12/schema"

# The same rule as the loader's tag check (reconciler.oci.reference).
TAG_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
PLATFORM_PATTERN = (
    f"^({'|'.join(sorted(KNOWN_OS))})/({'|'.join(sorted(KNOWN_ARCHITECTURES))})"
    "(/[a-z0-9]+)?$"
)

_TEMPLATE = f"placeholders: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
# Fields the models leave without a docstring.
_MORE_DOCS = {
    ("_File", "version"): "Format version of the file; 1 is the only one.",
    ("_File", "registries"): "How to reach each registry host, by host name.",
    ("_File", "projects"): "Harbor projects to create when missing, by "
    "host/project; apply creates them before writing images into them.",
    ("_File", "defaults"): "Values for the images of this file.",
    ("_File", "images"): "The multi-platform images to keep in the registry.",
    ("RegistryEntry", "credentials"): "Names of the environment variables "
    "holding the username and password; without them, Docker's config is used.",
    ("DefaultsEntry", "platforms"): "Platforms each image needs, os/arch[/variant].",
    (
        "DefaultsEntry",
        "platform_tag",
    ): f"Template of the per-platform tag; {_TEMPLATE}.",
    ("ImageEntry", "repository"): "The target repository, registry host first.",
    ("ImageEntry", "versions"): "Version tags; each becomes an index. Quote them.",
    ("ImageEntry", "platforms"): "Platforms of this image, os/arch[/variant].",
    ("ImageEntry", "index_media_type"): "oci or docker; by default it follows "
    "the children: a Docker manifest list when all are Docker v2 manifests.",
    ("ImageEntry", "prune"): "Destroy tags this image once made and no longer "
    "wants (not implemented yet).",
}


class _File(_Entry):
    """One desired-state file: the top level the loader reads section by section."""

    # Empty sections (`images:` with nothing after it) and `host:` with no
    # settings are what the loader accepts too.
    version: Literal[1]
    registries: dict[str, RegistryEntry | None] | None = None
    projects: dict[str, ProjectEntry | None] | None = None
    defaults: DefaultsEntry | None = None
    images: list[ImageEntry] | None = None


def desired_state_schema() -> dict[str, Any]:
    """The JSON Schema of one desired-state file, as a JSON-ready dict."""
    schema = _File.model_json_schema(ref_template="#/$defs/{model}")
    definitions = schema.setdefault("$defs", {})
    _describe(schema, _File)
    models = (CredentialsEntry, RegistryEntry, ProjectEntry, DefaultsEntry, ImageEntry)
    for model in models:
        _describe(definitions[model.__name__], model)
    _refine_platforms(definitions["DefaultsEntry"]["properties"]["platforms"])
    _refine_image(definitions["ImageEntry"]["properties"])
    return {
        "$schema": DIALECT,
        "title": "reconciler desired state, format version 1",
        **{key: value for key, value in schema.items() if key != "title"},
    }


def _describe(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """Set each property's description from the model's attribute docstrings."""
    docs = _attribute_docs(model)
    for name, prop in schema.get("properties", {}).items():
        text = docs.get(name) or _MORE_DOCS.get((model.__name__, name))
        if text:
            prop["description"] = text
    schema["description"] = inspect.cleandoc(model.__doc__ or "")


def _attribute_docs(model: type[BaseModel]) -> dict[str, str]:
    """`name: type` followed by a string literal: that string, by field name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(model)))
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _refine_image(properties: dict[str, Any]) -> None:
    tag = {"type": "string", "pattern": TAG_PATTERN}
    properties["versions"].update(items=tag, minItems=1, uniqueItems=True)
    properties["aliases"].update(propertyNames=tag, additionalProperties=tag)
    _refine_platforms(properties["platforms"])


def _refine_platforms(prop: dict[str, Any]) -> None:
    """platforms is `list[str] | None`: constrain the list branch."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") == "array":
            branch["items"] = {"type": "string", "pattern": PLATFORM_PATTERN}
            branch["minItems"] = 1
