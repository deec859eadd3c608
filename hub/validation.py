"""Request validation: strict JSON bodies, typed fields, every problem reported at once.

A body is rejected whole (nothing is changed) when it is not JSON, not an object, has a field we do
not know, lacks a required one, or has a value of the wrong type or range. JSON numbers are read as
exact decimals, so a price is never rounded through a float. Booleans are not integers here.

**One source for the rules and their description.** Every validator made here carries the JSON
Schema of what it accepts (:func:`schema_of`), and :func:`body_schema` turns a route's fields into
the request body's schema in the OpenAPI document (hub/openapi.py): the document cannot say a body is
valid that the route refuses, or the reverse, without the code saying so. ``tests/test_schemathesis.py``
checks both directions against a running hub. What JSON Schema cannot say (a lone surrogate in a
string, an integer past 64 bits inside free JSON) is refused with its own code and written in the
field's description.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from hub.errors import BadRequest, RequestTimeout, UnsupportedMedia
from hub.keys import SETTINGS

Validator = Callable[[Any], Any]
Schema = dict[str, Any]
MAX_JSON_DEPTH = 16


def described(check: Validator, schema: Schema) -> Validator:
    """``check``, carrying the JSON Schema of the values it accepts."""
    check.schema = schema  # type: ignore[attr-defined]
    return check


def schema_of(check: Validator) -> Schema:
    """The JSON Schema of what ``check`` accepts ({} — anything — for a validator that says nothing)."""
    schema: Schema = getattr(check, "schema", {})
    return dict(schema)


def body_schema(fields: Mapping[str, Field], *, partial: bool = False) -> Schema:
    """The schema of a body :func:`validate` accepts with ``fields`` (``partial``: a patch, every field
    optional). Unknown fields are refused, so none are allowed here."""
    schema: Schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {name: schema_of(spec.check) for name, spec in fields.items()},
    }
    required = [name for name, spec in fields.items() if spec.required]
    if required and not partial:
        schema["required"] = required
    if partial:
        schema["minProperties"] = 1  # a patch that changes nothing is refused
    return schema


class FieldError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Field:
    check: Validator
    required: bool = False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def refuse_encoded_body(request: web.Request) -> None:
    """Bodies are read as sent (the server does not inflate them: a few KiB of gzip or brotli can
    inflate to GiB, before any limit or token is checked); an encoded one is refused."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMedia(
            f"request bodies are not accepted with Content-Encoding {encoding[:40]!r}: send them as they are",
            code="unsupported_content_encoding",
        )


async def read_json(request: web.Request) -> Any:
    refuse_encoded_body(request)
    if request.content_type not in ("application/json", "application/merge-patch+json"):
        raise UnsupportedMedia(f"send the body as application/json, not {request.content_type or 'nothing'}")
    try:
        # aiohttp enforces client_max_size (→ 413); a body that trickles in is bounded in time too.
        # A body already received whole (most are: one packet) has nothing to wait for, and the
        # timeout's task and timer cost ~1% of the hub's CPU per review post.
        if request.content.is_eof():
            raw = await request.read()
        else:
            raw = await asyncio.wait_for(request.read(), request.app[SETTINGS].body_timeout_seconds)
    except TimeoutError as exc:
        raise RequestTimeout(
            f"the body did not arrive within {request.app[SETTINGS].body_timeout_seconds:g} s"
        ) from exc
    try:
        body = json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="malformed_json") from exc
    if _depth(body) > MAX_JSON_DEPTH:
        raise BadRequest(f"the body nests deeper than {MAX_JSON_DEPTH} levels", code="malformed_json")
    return body


def validate(body: Any, fields: Mapping[str, Field], *, partial: bool = False) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(
            "the body must be a JSON object",
            code="validation_failed",
            errors=[{"field": "", "code": "wrong_type", "message": "expected an object"}],
        )
    errors: list[dict[str, Any]] = []
    clean: dict[str, Any] = {}
    for name in body:
        if name not in fields:
            errors.append({"field": name, "code": "unknown_field", "message": "no such field"})
    for name, spec in fields.items():
        if name not in body:
            if spec.required and not partial:
                errors.append({"field": name, "code": "required", "message": "this field is required"})
            continue
        try:
            clean[name] = spec.check(body[name])
        except FieldError as exc:
            errors.append({"field": name, "code": exc.code, "message": exc.message})
    if errors:
        raise BadRequest(
            "the request body is invalid: " + ", ".join(f"{e['field']}: {e['code']}" for e in errors),
            code="validation_failed",
            errors=errors,
        )
    return clean


# -- field validators ------------------------------------------------------------------------------


def string(min_len: int = 0, max_len: int = 1000, pattern: str | None = None) -> Validator:
    regex = re.compile(pattern) if pattern else None

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise FieldError("wrong_type", "expected a string")
        if len(value) < min_len:
            raise FieldError("too_short", f"at least {min_len} characters")
        if len(value) > max_len:
            raise FieldError("too_long", f"at most {max_len} characters")
        if "\x00" in value:
            raise FieldError("invalid_format", "NUL characters are not allowed")
        if not _is_unicode(value):
            raise FieldError("invalid_text", "the text holds a lone surrogate (not valid Unicode)")
        if regex is not None and not regex.fullmatch(value):
            raise FieldError("invalid_format", f"must match {pattern}")
        return value

    # (the hub matches the whole string: anchored here; NUL is refused in every string)
    return described(
        check,
        {
            "type": "string",
            "minLength": min_len,
            "maxLength": max_len,
            "pattern": f"^(?:{pattern})$" if pattern else "^[^\\u0000]*$",
        },
    )


# A token's subject as a path or query parameter (a user to export, erase, list for, or audit): any
# printable text up to 256 characters, as identity providers issue them.
SUBJECT = string(1, 256, r"[^\x00-\x1f\x7f]+")


def integer(minimum: int, maximum: int, *, nonzero: bool = False) -> Validator:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise FieldError("wrong_type", "expected an integer")
        # The range is checked before any conversion: int(Decimal("1e400000")) takes seconds of CPU.
        if not minimum <= value <= maximum:
            raise FieldError("out_of_range", f"must be between {minimum} and {maximum}")
        if isinstance(value, Decimal):
            if value != value.to_integral_value():
                raise FieldError("wrong_type", "expected an integer")
            value = int(value)
        number: int = value
        if nonzero and number == 0:
            raise FieldError("out_of_range", "must not be zero")
        return number

    schema: Schema = {"type": "integer", "minimum": minimum, "maximum": maximum}
    if nonzero:
        schema["not"] = {"const": 0}
    return described(check, schema)


def decimal(minimum: Decimal, maximum: Decimal, places: int) -> Validator:
    def check(value: Any) -> Decimal:
        if isinstance(value, bool):
            raise FieldError("wrong_type", "expected a decimal number or string")
        if isinstance(value, int):
            value = Decimal(value)
        elif isinstance(value, str):
            try:
                value = Decimal(value)
            except InvalidOperation as exc:
                raise FieldError("invalid_format", 'expected a decimal such as "12.50"') from exc
        if not isinstance(value, Decimal) or not value.is_finite():
            raise FieldError("wrong_type", "expected a decimal number or string")
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -places:
            raise FieldError("invalid_format", f"at most {places} decimal places")
        if not minimum <= value <= maximum:
            raise FieldError("out_of_range", f"must be between {minimum} and {maximum}")
        return value

    # Described by what a client should send: a string (an integer also does), whose pattern admits
    # exactly the values within the range when they are few, else a subset of them (digits enough).
    return described(
        check,
        {
            "anyOf": [
                {"type": "string", "pattern": _decimal_pattern(minimum, maximum, places)},
                {"type": "integer", "minimum": math.ceil(minimum), "maximum": math.floor(maximum)},
            ],
            "description": f"an exact decimal from {minimum} to {maximum}, at most {places} places",
        },
    )


def _decimal_pattern(minimum: Decimal, maximum: Decimal, places: int) -> str:
    fraction = f"(\\.[0-9]{{1,{places}}})?" if places else ""
    zeros = f"(\\.0{{1,{places}}})?" if places else ""
    low, high = math.ceil(minimum), math.floor(maximum)
    if minimum < 0 or low != minimum or high != maximum:
        raise ValueError("decimal(): integral, non-negative bounds only")  # (all this hub has)
    if high - low <= 20:
        below = "|".join(str(n) for n in range(low, high))
        return f"^(({below}){fraction}|{high}{zeros})$" if below else f"^{high}{zeros}$"
    digits = len(str(high)) - 1  # every number of fewer digits than the maximum is below it
    return (
        f"^([0-9]{{1,{digits}}}{fraction}|{high}{zeros})$"
        if low == 0
        else f"^[1-9][0-9]{{0,{digits - 1}}}{fraction}$"
    )


def choice(*values: str) -> Validator:
    def check(value: Any) -> str:
        if value not in values:
            raise FieldError("invalid_choice", f"one of {', '.join(values)}")
        return str(value)

    return described(check, {"enum": list(values)})


INT64 = (-(2**63), 2**63 - 1)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_object(max_keys: int = 100) -> Validator:
    """Free JSON (a product's attributes): numbers are held to what every reader can write back — an
    integer within 64 bits, a finite double — and checked before any conversion (``1e300000`` as an
    integer is 300,000 digits of work); strings and keys to valid Unicode. Nothing that passes here can
    make a later read fail."""

    def to_plain(value: Any) -> Any:
        # Free-form attributes keep JSON's own number semantics; only prices must be exact.
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            if not INT64[0] <= value <= INT64[1]:
                raise FieldError("number_out_of_range", "integers in free JSON fit in 64 bits")
            return value
        if isinstance(value, Decimal):
            if not value.is_finite() or value.adjusted() > 308 or value.adjusted() < -330:
                raise FieldError("number_out_of_range", "numbers in free JSON are finite doubles")
            if value == value.to_integral_value() and value.adjusted() < 19:
                integral = int(value)
                if INT64[0] <= integral <= INT64[1]:
                    return integral
            return float(value)
        if isinstance(value, str):
            if not _is_unicode(value):
                raise FieldError("invalid_text", "a string holds a lone surrogate (not valid Unicode)")
            return value
        if isinstance(value, dict):
            for key in value:
                if not _is_unicode(key):
                    raise FieldError("invalid_text", "a key holds a lone surrogate (not valid Unicode)")
            return {k: to_plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [to_plain(v) for v in value]
        return value

    def check(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise FieldError("wrong_type", "expected an object")
        if len(value) > max_keys:
            raise FieldError("too_long", f"at most {max_keys} keys")
        plain: dict[str, Any] = to_plain(value)
        return plain

    return described(
        check,
        {
            "type": "object",
            "maxProperties": max_keys,
            "description": "free JSON: integers within 64 bits, finite numbers, valid Unicode"
            " (number_out_of_range, invalid_text otherwise)",
        },
    )


def _uuid_string(value: Any) -> str:
    if not isinstance(value, str):
        raise FieldError("wrong_type", "expected a UUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise FieldError("invalid_format", "expected a UUID") from exc


uuid_string = described(_uuid_string, {"type": "string", "format": "uuid"})


def list_of(item: Callable[[Any], Any], min_items: int, max_items: int, *, unique: bool = False) -> Validator:
    def check(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise FieldError("wrong_type", "expected an array")
        if not min_items <= len(value) <= max_items:
            raise FieldError("out_of_range", f"between {min_items} and {max_items} items")
        if unique and len({json.dumps(v, sort_keys=True, default=str) for v in value}) != len(value):
            raise FieldError("duplicate_item", "each item once")
        out = []
        for index, element in enumerate(value):
            try:
                out.append(item(element))
            except FieldError as exc:
                raise FieldError(exc.code, f"item {index}: {exc.message}") from exc
            except BadRequest as exc:
                errors = exc.errors or []
                first = errors[0] if errors else {"code": "invalid", "field": ""}
                raise FieldError(first["code"], f"item {index}: {exc.detail}") from exc
        return out

    schema: Schema = {"type": "array", "items": schema_of(item), "minItems": min_items, "maxItems": max_items}
    if unique:
        schema["uniqueItems"] = True
    return described(check, schema)


def object_of(fields: Mapping[str, Field], *, exclusive: tuple[tuple[str, ...], ...] = ()) -> Validator:
    """An object with ``fields``; of each group in ``exclusive``, at most one may be given."""

    def check(value: Any) -> dict[str, Any]:
        clean = validate(value, fields)
        for group in exclusive:
            if sum(name in clean for name in group) > 1:
                raise FieldError("conflicting_fields", f"{' and '.join(group)} are exclusive")
        return clean

    schema = body_schema(fields)
    if exclusive:
        schema["allOf"] = [
            {"not": {"required": [a, b]}} for group in exclusive for a in group for b in group if a < b
        ]
    return described(check, schema)


# -- path and query parameters ---------------------------------------------------------------------


def path_uuid(request: web.Request, name: str) -> str:
    raw = request.match_info[name]
    try:
        return str(uuid.UUID(raw))
    except ValueError as exc:
        raise BadRequest(f"{name} must be a UUID, got {raw[:64]!r}", code="invalid_id") from exc


def query_int(request: web.Request, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be an integer", code="invalid_parameter", parameter=name) from exc
    if not minimum <= value <= maximum:
        raise BadRequest(
            f"{name} must be between {minimum} and {maximum}", code="invalid_parameter", parameter=name
        )
    return value


def query_decimal(request: web.Request, name: str, check: Validator) -> Decimal | None:
    """A decimal query parameter, held to the same rule (``check``) as the field it filters."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value: Decimal = check(raw)
    except FieldError as exc:
        raise BadRequest(f"{name}: {exc.message}", code="invalid_parameter", parameter=name) from exc
    return value


def query_text(request: web.Request, name: str, check: Validator) -> str | None:
    """A text filter, held to the format of the field it filters: a value that breaks it could never
    match, and would otherwise reach the database as bytes it may not accept (NUL, for PostgreSQL)."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value: str = check(raw)
    except FieldError as exc:
        raise BadRequest(f"{name}: {exc.message}", code="invalid_parameter", parameter=name) from exc
    return value


def query_choice(request: web.Request, name: str, values: Mapping[str, Any] | frozenset[str]) -> str | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw not in values:
        raise BadRequest(
            f"{name} must be one of {', '.join(sorted(values))}",
            code="invalid_sort" if name == "sort" else "invalid_parameter",
            parameter=name,
        )
    return raw
