"""Validation with pydantic, its errors restated in plain words at their spot."""

from __future__ import annotations

import datetime
import json
from types import NoneType, UnionType
from typing import Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from reconciler.desired._problems import FileReport
from reconciler.desired._spots import FieldPath, shorten

Model = TypeVar("Model", bound=BaseModel)

_EXPECTED = {
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "bool_type": "true or false",
}

_EXAMPLES = {
    "repository": "repository: harbor.example.com/library/name",
    "versions": 'versions: ["1.0.0"]',
    "username_env": "username_env: HARBOR_USERNAME",
    "password_env": "password_env: HARBOR_PASSWORD",
}

_SECRETS = frozenset({"username", "password", "token", "auth"})


def validate(
    model: type[Model], data: Any, where: FieldPath, report: FileReport
) -> Model | None:
    """`data` as a `model`, or None after reporting every error at its spot."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        for detail in error.errors():
            _explain(
                detail,
                model,
                where,
                report,
            )
        return None


def _explain(
    detail: ErrorDetails, model: type[BaseModel], where: FieldPath, report: FileReport
) -> None:
    loc = tuple(detail["loc"])
    path = (*where, *loc)
    if report.is_unreadable(path):
        return  # already reported, and null in the data
    if detail["type"] == "missing":
        _report_missing(path, report)
    elif detail["type"] == "extra_forbidden":
        _report_unknown(path, _fields_at(model, loc[:-1]), report)
    else:
        message, hint = _restate(detail, report.spots.written(path))
        report.add(path, message, hint)


def _report_missing(path: FieldPath, report: FileReport) -> None:
    name = str(path[-1])
    example = _EXAMPLES.get(name)
    hint = f"add {example}" if example else None
    report.add(path, f"missing required field {name!r}", hint)


def _report_unknown(
    path: FieldPath, fields: tuple[str, ...], report: FileReport
) -> None:
    name = shorten(str(path[-1]))
    report.add(
        path,
        f"unknown field {name!r}",
        _unknown_hint(name, fields),
        on_key=True,
    )


def _unknown_hint(name: str, fields: tuple[str, ...]) -> str | None:
    if name in _SECRETS:
        return (
            "never write secrets in the file: under credentials, name "
            "environment variables with username_env and password_env"
        )
    # Only an unknown field needs difflib, so a valid file never loads it.
    from difflib import get_close_matches

    close = get_close_matches(name, fields, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"the fields here are {', '.join(fields)}" if fields else None


def _restate(detail: ErrorDetails, written: str | None) -> tuple[str, str | None]:
    kind, value = detail["type"], detail["input"]
    written = shorten(written) if written is not None else None
    if kind == "string_type" and written and _is_plain_scalar(value):
        reading = f"YAML reads {written} as {_describe(value)}"
        return f"must be a string, but {reading}", f'quote it: "{written}"'
    if kind == "list_type" and isinstance(value, str):
        hint = f"write a list, even of one: [{json.dumps(shorten(value))}]"
        return "must be a list, not a string", hint
    if kind == "bool_type" and isinstance(value, str):
        return "must be true or false, not a string", "write it without quotes"
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}, not {describe_kind(value)}", None
    if kind == "literal_error":
        expected = detail.get("ctx", {}).get("expected", "")
        return f"must be {expected}, not {_shown(value)}", None
    if kind == "string_pattern_mismatch":
        # The value is not echoed: it may be the secret itself.
        hint = "letters, digits and '_', e.g. HARBOR_PASSWORD; never the secret"
        return "must be the name of an environment variable", hint
    return detail["msg"][:1].lower() + detail["msg"][1:], None


def _is_plain_scalar(value: Any) -> bool:
    scalars = (bool, int, float, datetime.date)
    return isinstance(value, scalars)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, datetime.date):
        return f"the date {value.isoformat()}"
    return f"the number {value}"


def describe_kind(value: Any) -> str:
    """What kind of YAML value this is, for messages: `a list`, `empty`."""
    if value is None:
        return "empty"
    kinds = [
        (bool, "true or false"),
        (str, "a string"),
        (int | float, "a number"),
        (list, "a list"),
        (dict, "a mapping"),
        (datetime.date, "a date"),
        (bytes, "binary data"),
    ]
    return next((name for cls, name in kinds if isinstance(value, cls)), "a value")


def _shown(value: Any) -> str:
    return repr(shorten(value)) if isinstance(value, str) else describe_kind(value)


def _fields_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> tuple[str, ...]:
    """The fields allowed where `loc` leads inside `model`, for spelling hints."""
    annotation: Any = model
    for part in loc:
        annotation = _inner(_without_none(annotation), part)
    annotation = _without_none(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return tuple(annotation.model_fields)
    return ()


def _inner(annotation: Any, part: str | int) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return field.annotation if field is not None else None
    args = get_args(annotation)
    return args[-1] if args else None


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) not in (Union, UnionType):
        return annotation
    others = [arg for arg in get_args(annotation) if arg is not NoneType]
    return others[0] if len(others) == 1 else annotation
