"""Templates of tags and references: `{version}`, `{os}`, `{arch}`, `{variant}`."""

from __future__ import annotations

import string

from reconciler.errors import ReconcilerError
from reconciler.oci import Platform

PLACEHOLDERS = ("version", "os", "arch", "variant")

_HINT = "placeholders are {version}, {os}, {arch} and {variant}"


class TemplateError(ReconcilerError):
    """A template is malformed or names an unknown placeholder."""


def check_template(template: str) -> None:
    """Raise `TemplateError` unless `template` uses only known placeholders."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as error:
        message = f"malformed template {template!r}: {str(error).lower()}"
        hint = f"{_HINT}; write {{{{ or }}}} for a literal brace"
        raise TemplateError(message, hint=hint) from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            message = f"unknown placeholder {{{name}}} in {template!r}"
            raise TemplateError(message, hint=_HINT)
        if spec or conversion:
            message = f"placeholder {{{name}}} takes no format in {template!r}"
            raise TemplateError(message, hint=_HINT)


def render(template: str, version: str, platform: Platform) -> str:
    """Fill in a template that `check_template` accepted."""
    return template.format(version=version, **platform.placeholders())
