"""Attribute filters as clients write them — ``attr.fitment.make=Ford`` in the catalog's query string, and
``{"fitment.make": "Ford", "fitment.year": 2019}`` in a parts request's fitment query — checked here and
handed to the store as :class:`~storage.attributes.AttributeFilter` (which says what matches).

A path is 1 to 4 identifiers (letters, digits, ``_``; not starting with a digit) joined by dots, at most
128 characters; a value is 1 to 200 characters of text (no NUL, valid Unicode) — in a body also an
integer (within ±10^18) or a boolean, which match as their text would. At most 8 filters, each path once.
Anything else is refused with ``invalid_parameter`` (a query) or ``validation_failed`` (a body): a filter
that cannot be checked must not silently match everything.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from aiohttp import web

from hub.errors import BadRequest
from hub.validation import FieldError, described, string
from storage.attributes import (
    KEY,
    MAX_DEPTH,
    MAX_FILTERS,
    MAX_PATH_LENGTH,
    MAX_VALUE_LENGTH,
    AttributeFilter,
)

PREFIX = "attr."
_SEGMENT = KEY.pattern
PATH_PATTERN = f"{_SEGMENT}(\\.{_SEGMENT}){{0,{MAX_DEPTH - 1}}}"
ATTRIBUTE_VALUE = string(1, MAX_VALUE_LENGTH)
_VALUE = ATTRIBUTE_VALUE
_INTEGER_BOUND = 10**18 - 1


def parse_path(text: str) -> tuple[str, ...]:
    """The path of ``fitment.make``; FieldError unless it is 1-4 identifiers, at most 128 characters."""
    if not text or len(text) > MAX_PATH_LENGTH:
        raise FieldError("invalid_attribute_path", f"an attribute path is 1 to {MAX_PATH_LENGTH} characters")
    parts = tuple(text.split("."))
    if len(parts) > MAX_DEPTH or not all(KEY.fullmatch(p) for p in parts):
        raise FieldError(
            "invalid_attribute_path",
            f"an attribute path is 1 to {MAX_DEPTH} names (letters, digits, _) joined by dots",
        )
    return parts


def query_filters(request: web.Request) -> tuple[AttributeFilter, ...]:
    """The ``attr.{path}={value}`` parameters of the request's query string."""
    filters = []
    seen: set[str] = set()
    for name, raw in request.query.items():
        if not name.startswith(PREFIX):
            continue
        try:
            path = parse_path(name[len(PREFIX) :])
            value: str = _VALUE(raw)
        except FieldError as exc:
            raise BadRequest(
                f"{name[:150]}: {exc.message}", code="invalid_parameter", parameter=name[:150]
            ) from exc
        if name in seen:
            raise BadRequest(f"{name} is given twice", code="invalid_parameter", parameter=name)
        seen.add(name)
        filters.append(AttributeFilter(path, value))
    if len(filters) > MAX_FILTERS:
        raise BadRequest(f"at most {MAX_FILTERS} attr. filters", code="invalid_parameter", parameter="attr.")
    return tuple(filters)


def _filters(value: Any) -> tuple[AttributeFilter, ...]:
    if not isinstance(value, dict):
        raise FieldError("wrong_type", "expected an object of attribute paths and values")
    if not 1 <= len(value) <= MAX_FILTERS:
        raise FieldError("out_of_range", f"between 1 and {MAX_FILTERS} attribute filters")
    filters = []
    for path, raw in value.items():
        parts = parse_path(path) if isinstance(path, str) else ()
        if isinstance(raw, bool):
            text = "true" if raw else "false"
        elif isinstance(raw, int | Decimal):
            if not -_INTEGER_BOUND <= raw <= _INTEGER_BOUND or raw != int(raw):
                raise FieldError("out_of_range", f"{path}: an integer within ±{_INTEGER_BOUND}")
            text = str(int(raw))
        elif isinstance(raw, str):
            text = _VALUE(raw)
        else:
            raise FieldError("wrong_type", f"{path}: a string, an integer or a boolean")
        filters.append(AttributeFilter(parts, text))
    return tuple(filters)


# (bodies are read with Decimal numbers: 2019 and 2019.0 are the integer 2019, 2019.5 is refused)
ATTRIBUTE_FILTERS = described(
    _filters,
    {
        "type": "object",
        "minProperties": 1,
        "maxProperties": MAX_FILTERS,
        "propertyNames": {"pattern": f"^{PATH_PATTERN}$", "maxLength": MAX_PATH_LENGTH},
        "additionalProperties": {
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": MAX_VALUE_LENGTH, "pattern": "^[^\\u0000]*$"},
                {"type": "integer", "minimum": -_INTEGER_BOUND, "maximum": _INTEGER_BOUND},
                {"type": "boolean"},
            ]
        },
        "description": "attribute path (fitment.make) → the value it must hold, or an array of values"
        " must contain; an integer or boolean matches as its text does",
    },
)
