"""Filters on products' free JSON attributes: ``attr.fitment.make=Ford`` (the catalog's listing) and a parts
request's fitment query, one meaning on both databases.

A filter is a path of object keys (``("fitment", "make")``) and a value as text. A product matches when
the value at that path is a scalar equal to the value, or an array with such a scalar among its
elements; an object there, a nested array, or no such path, never matches. The text is compared with
strings as it is; text that reads as an integer (``2019``, ``-3``) also matches that JSON number
(``2019`` and ``2019.0`` alike), and ``true`` / ``false`` match those booleans. Every filter of a query
must match (AND); each is evaluated on its own (two filters under an array are not required to match
the same element).

How each database finds them:

* PostgreSQL: containment on the attributes cast to ``jsonb`` — one or two documents per value form
  (``{"fitment": {"make": "Ford"}}``, ``{"fitment": {"make": ["Ford"]}}``) OR-ed, each answerable by
  the GIN index ``products_attributes`` on ``(attributes::jsonb) jsonb_path_ops`` (migration 11): the
  attributes stay TEXT (their bytes, and so products' representations and ETags, unchanged) and the
  index holds their jsonb form. A query must write the cast exactly so for the index to apply.
* SQLite: ``json_each`` over the path, comparing each element's JSON type and value (no index: the
  embedded store scans the products that its other conditions leave).

Paths are checked by the hub (``KEY``: identifiers of letters, digits and ``_``, at most
:data:`MAX_DEPTH` deep and :data:`MAX_PATH_LENGTH` long), so a path reaches SQL only as a bound value
(SQLite's JSON path) or inside a bound JSON document (PostgreSQL's), never as SQL text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
INTEGER = re.compile(r"-?(0|[1-9][0-9]{0,17})")
MAX_DEPTH = 4
MAX_PATH_LENGTH = 128
MAX_VALUE_LENGTH = 200
MAX_FILTERS = 8


@dataclass(frozen=True, slots=True)
class AttributeFilter:
    path: tuple[str, ...]
    value: str

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    def to_dict(self) -> dict[str, str]:
        return {"path": self.dotted, "value": self.value}


def value_forms(value: str) -> list[Any]:
    """The JSON values the text ``value`` matches: itself as a string, and the number or boolean it
    reads as."""
    forms: list[Any] = [value]
    if INTEGER.fullmatch(value):
        forms.append(int(value))
    elif value in ("true", "false"):
        forms.append(value == "true")
    return forms


def _nested(path: Sequence[str], leaf: Any) -> Any:
    for key in reversed(path):
        leaf = {key: leaf}
    return leaf


def attribute_conditions(
    dialect: str, filters: Sequence[AttributeFilter], arg: Callable[[Any], str], column: str = "attributes"
) -> list[str]:
    """SQL conditions (AND them) for ``filters`` on the JSON text ``column``; ``arg`` binds a value and
    returns its placeholder."""
    conditions = []
    for item in filters:
        forms = value_forms(item.value)
        if dialect == "postgres":
            documents = [_nested(item.path, shape) for form in forms for shape in (form, [form])]
            probes = [
                f"{column}::jsonb @> {arg(json.dumps(doc, separators=(',', ':')))}::jsonb"
                for doc in documents
            ]
            conditions.append("(" + " OR ".join(probes) + ")")
            continue
        path = arg("$." + ".".join(item.path))
        matches = []
        for form in forms:
            if isinstance(form, bool):
                matches.append(f"j.type = '{'true' if form else 'false'}'")
            elif isinstance(form, int):
                matches.append(f"(j.type IN ('integer', 'real') AND j.atom = {arg(form)})")
            else:
                matches.append(f"(j.type = 'text' AND j.atom = {arg(form)})")
        conditions.append(
            f"EXISTS (SELECT 1 FROM json_each({column}, {path}) AS j"
            f" WHERE json_type({column}, {path}) <> 'object' AND ({' OR '.join(matches)}))"
        )
    return conditions


__all__ = [
    "INTEGER",
    "KEY",
    "MAX_DEPTH",
    "MAX_FILTERS",
    "MAX_PATH_LENGTH",
    "MAX_VALUE_LENGTH",
    "AttributeFilter",
    "attribute_conditions",
    "value_forms",
]
