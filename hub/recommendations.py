"""A user's recommendations, ranked from the store's aggregates (storage/behaviour.py): pure — no I/O.

**Candidates**: the co-viewed neighbours of the user's recent views, the co-carted neighbours of their
recent adds to cart, and their region's trending products — less the products they viewed, carted or
wished for recently, the products that no longer exist, and the products that cannot be bought in
the region: discontinued, or active with nothing available (``on_hand − reserved`` summed over the
region's warehouses; a preorder stays). The products left out for stock are reported as ``watched``:
a stock change of one of them, or of a product shown, may change the list (hub/personalization.py).

**Score**: a weighted sum of four signals, each scaled to [0, 1] by its largest value among the
candidates (decayed weights: storage/behaviour.py):

    0.35 co-carted   Σ over recent adds to cart of the pair's decayed weight
    0.30 co-viewed   Σ over recent views of the pair's decayed weight
    0.20 preferred   Σ of the user's preferences the product's attributes hold (capped at the largest)
    0.15 trending    the product's decayed weight in the region

Ties go to the smaller product id, so one state of the store always gives one list: its ETag is a hash
of the list as rendered (no score, no time, no stock count in it — only ``stock_status``), so it changes
when the list, a product shown or its stock status does, and a client's ``If-None-Match`` gets a 304
otherwise.

**Filters** (``attr.material=organic-cotton&attr.certification=GOTS``) follow the catalog's attribute
filters (storage/attributes.py): a path of keys, a value as text; a product matches when the value at
the path is that scalar (text as is; an integer or ``true``/``false`` as the number or boolean it reads
as) or an array holding it; every filter must match.

Without consent (never granted, or revoked) the list is the region's trending products only, and says
``"personalized": false``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hub.errors import BadRequest
from hub.responses import dumps
from storage.behaviour import (
    Candidate,
    ConsentStatus,
    Signals,
)
from storage.models import ProductStatus, stock_status, units_to_price

WEIGHTS = {"co_carted": 0.35, "co_viewed": 0.30, "preferred": 0.20, "trending": 0.15}
DEFAULT_LIMIT = 20
MAX_LIMIT = 50
MAX_FILTERS = 8
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_INTEGER = re.compile(r"-?(0|[1-9][0-9]{0,17})")
MAX_FILTER_VALUE = 200
MAX_FILTER_DEPTH = 4


@dataclass(frozen=True, slots=True)
class Filter:
    path: tuple[str, ...]
    value: str

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        found: Any = attributes
        for key in self.path:
            if not isinstance(found, dict) or key not in found:
                return False
            found = found[key]
        if isinstance(found, list):
            return any(self._equals(item) for item in found)
        return self._equals(found)

    def _equals(self, value: Any) -> bool:
        if isinstance(value, bool):
            return self.value == ("true" if value else "false")
        if isinstance(value, str):
            return value == self.value
        if isinstance(value, int | float) and _INTEGER.fullmatch(self.value):
            return value == int(self.value)
        return False


def parse_filters(items: list[tuple[str, str]]) -> tuple[Filter, ...]:
    """The ``attr.…`` parameters of a query string (``items``: its pairs, in order); BadRequest
    (invalid_parameter) for a malformed one."""
    filters = []
    for name, value in items:
        if not name.startswith("attr."):
            continue
        path = tuple(name[5:].split("."))
        if len(path) > MAX_FILTER_DEPTH or not all(_KEY.fullmatch(key) for key in path):
            raise BadRequest(
                f"{name[:80]}: an attribute filter is attr.<key>[.<key>…], keys of letters, digits and _"
                f" (at most {MAX_FILTER_DEPTH})",
                code="invalid_parameter",
                parameter=name[:80],
            )
        if not 1 <= len(value) <= MAX_FILTER_VALUE or "\x00" in value:
            raise BadRequest(
                f"{name}: a value of 1 to {MAX_FILTER_VALUE} characters",
                code="invalid_parameter",
                parameter=name,
            )
        filters.append(Filter(path, value))
    if len(filters) > MAX_FILTERS:
        raise BadRequest(
            f"at most {MAX_FILTERS} attribute filters", code="invalid_parameter", parameter="attr"
        )
    return tuple(filters)


@dataclass(slots=True)
class Ranked:
    body: dict[str, Any]  # what GET /api/v1/me/recommendations answers
    encoded: bytes  # the body as JSON (encoded once: its hash is the ETag)
    etag: str
    product_ids: list[str]
    watched: set[str] = field(default_factory=set)  # shown, and left out for stock


def _scaled(values: dict[str, float]) -> dict[str, float]:
    top = max(values.values(), default=0.0)
    return {key: value / top for key, value in values.items()} if top > 0 else {}


def buyable(product: Candidate) -> bool:
    if product.status == ProductStatus.DISCONTINUED:
        return False
    return product.status == ProductStatus.PREORDER or product.available > 0


def rank(signals: Signals, filters: tuple[Filter, ...] = (), limit: int = DEFAULT_LIMIT) -> Ranked:
    co_viewed, co_carted, trending = signals.co_viewed, signals.co_carted, signals.trending
    by_name: dict[str, dict[str, float]] = {}
    top_preference = 0.0
    for name, preferred, weight in signals.preferences:
        by_name.setdefault(name, {})[preferred] = weight
        top_preference = max(top_preference, weight)
    lookups = [(name, *name.partition(".")[::2], wanted) for name, wanted in by_name.items()]
    watched: set[str] = set()
    eligible: list[Candidate] = []
    products = signals.products
    for product_id, product in products.items():
        if not buyable(product):
            watched.add(product_id)
            continue
        if not filters or all(f.matches(product.attributes) for f in filters):
            eligible.append(product)
    carted = _scaled({p.id: co_carted[p.id] for p in eligible if p.id in co_carted})
    viewed = _scaled({p.id: co_viewed[p.id] for p in eligible if p.id in co_viewed})
    trend = _scaled({p.id: trending[p.id] for p in eligible if p.id in trending})
    w_carted, w_viewed, w_trending = WEIGHTS["co_carted"], WEIGHTS["co_viewed"], WEIGHTS["trending"]
    w_preferred = WEIGHTS["preferred"]
    scored: list[tuple[float, str, Candidate, list[tuple[float, str, str]]]] = []
    for product in eligible:
        pid = product.id
        score = w_carted * carted.get(pid, 0.0) + w_viewed * viewed.get(pid, 0.0)
        score += w_trending * trend.get(pid, 0.0)
        held = _held(product.attributes, lookups) if lookups else []
        if held:
            score += w_preferred * min(1.0, sum(weight for weight, _, _ in held) / top_preference)
        scored.append((score, pid, product, held))
    scored.sort(key=lambda entry: (-entry[0], entry[1]))
    shown = [
        (product_id, product, _reasons(product_id, held, carted, viewed, trend))
        for _, product_id, product, held in scored[:limit]
    ]
    watched.update(product_id for product_id, _, _ in shown)
    body = {
        "region": signals.region,
        "personalized": signals.consent is ConsentStatus.GRANTED,
        "items": [_item(product, reasons) for _, product, reasons in shown],
    }
    encoded = dumps(body)
    etag = '"' + hashlib.blake2b(encoded, digest_size=12).hexdigest() + '"'
    return Ranked(body, encoded, etag, [product_id for product_id, _, _ in shown], watched)


def _held(
    attributes: Mapping[str, Any], lookups: list[tuple[str, str, str, dict[str, float]]]
) -> list[tuple[float, str, str]]:
    """The user's preferences a product's attributes hold, as (weight, name, value) — the pairs
    storage.behaviour.attribute_pairs reads (texts, lists of texts, true flags, one level down as
    ``outer.inner``), looked up from the preferences' side (``lookups``: name, its outer and inner
    keys, the values preferred with their weights): a few dictionary reads per product."""
    held = []
    for name, outer, inner, wanted in lookups:
        found = attributes.get(name)
        if found is None and inner:
            nested = attributes.get(outer)
            found = nested.get(inner) if isinstance(nested, dict) else None
        if found is True:
            found = "true"
        if isinstance(found, str):
            weight = wanted.get(found)
            if weight is not None:
                held.append((weight, name, found))
        elif isinstance(found, list):
            for value in found:
                if isinstance(value, str):
                    weight = wanted.get(value)
                    if weight is not None:
                        held.append((weight, name, value))
    return held


def _reasons(
    product_id: str,
    held: list[tuple[float, str, str]],
    carted: dict[str, float],
    viewed: dict[str, float],
    trend: dict[str, float],
) -> list[str]:
    """What put a product in the list, strongest signal first among co_carted and co_viewed, then the
    (up to three) preferences it holds, then trending."""
    reasons = [
        name for name, scaled in (("co_carted", carted), ("co_viewed", viewed)) if scaled.get(product_id)
    ]
    reasons += [f"preferred:{name}={value}" for _, name, value in sorted(held, reverse=True)[:3]]
    if trend.get(product_id):
        reasons.append("trending")
    return reasons


def _item(product: Candidate, reasons: list[str]) -> dict[str, Any]:
    return {
        "product_id": product.id,
        "sku": product.sku,
        "name": product.name,
        "category": product.category,
        "price": units_to_price(product.price_units),
        "attributes": product.attributes,
        "stock_status": stock_status(product.status, product.available, product.low_stock_threshold).value,
        "reasons": reasons,
    }
