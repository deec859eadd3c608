"""Carts on the wire, shared by the WebSocket messages and the REST routes: decoding what a device sends
(deltas, causal contexts, mutation ids) with a stable code for every refusal, and rendering a cart.

A delta travels in the codec's form of the connection: the JSON-safe ``{"t": "cart", "v": 1, "s": …}``
in JSON, the binary ``[tag, version, state]`` MessagePack bytes in ``synchub.msgpack`` frames. Nothing
is guessed: a delta of an unknown codec version is ``unsupported_codec_version``, anything else that does
not decode is ``malformed_delta``, and neither changes the cart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack
import orjson

from crdt import codec
from crdt.cart import Cart, ClosedCartError
from crdt.context import CausalContext
from crdt.hlc import Timestamp
from crdt.wire import decode_context, encode_context, encode_dot
from hub.auth import Principal
from hub.channel_access import may_read_any
from hub.responses import iso
from storage.base import Store
from storage.carts import CartDocument, CartPush, CartRules, PushOutcome, PushStatus, Refusal
from storage.errors import NotFound

MUTATION_ID = re.compile(r"[\x21-\x7e]{1,128}")
# The rules every push is held to, on every route and transport (storage/carts.py says what they are).
RULES = CartRules()
MAX_PUSHES = 100
MAX_DELTA_BYTES = 64 * 1024
_CODEC_VERSIONS = frozenset({1})
D = TypeVar("D")
P = TypeVar("P")


class CartInputError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decode_document_delta(raw: Any, binary: bool, kind: type[D], tag: str) -> D:
    """A delta of one document type (``kind``, its codec ``tag``: a cart, a review) as a device sent it;
    CartInputError with the codes of the module docstring."""
    if binary:
        if not isinstance(raw, bytes):
            raise CartInputError("malformed_delta", "a delta is the codec's MessagePack bytes (bin)")
        if len(raw) > MAX_DELTA_BYTES:
            raise CartInputError("delta_too_large", f"a delta is at most {MAX_DELTA_BYTES} bytes")
    else:
        if not isinstance(raw, dict):
            raise CartInputError("malformed_delta", f'a delta is {{"t": "{tag}", "v": 1, "s": …}}')
        # (REST bodies carry non-integer numbers as Decimal: measured as their text, refused below.)
        if len(orjson.dumps(raw, default=str)) > MAX_DELTA_BYTES:
            raise CartInputError("delta_too_large", f"a delta is at most {MAX_DELTA_BYTES} bytes")
    try:
        delta = codec.from_msgpack(raw) if binary else codec.from_dict(raw)
    except (codec.CodecError, UnicodeError) as exc:
        # Told apart only once it failed (a delta is decoded once on the way that succeeds).
        found, version = msgpack_head(raw) if binary else (raw.get("t"), raw.get("v"))
        if found == tag and isinstance(version, int) and version not in _CODEC_VERSIONS:
            raise CartInputError(
                "unsupported_codec_version", f"{tag} codec version {version} is not known here"
            ) from exc
        raise CartInputError("malformed_delta", str(exc)[:300]) from exc
    if not isinstance(delta, kind):
        raise CartInputError("malformed_delta", f"a {type(delta).__name__} is not a {tag} delta")
    return delta


def decode_delta(raw: Any, binary: bool) -> Cart:
    return decode_document_delta(raw, binary, Cart, "cart")


def msgpack_head(raw: bytes) -> tuple[Any, Any]:
    try:
        decoded = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception:  # the codec reports it with its own message
        return None, None
    if isinstance(decoded, list) and len(decoded) == 3:
        return decoded[0], decoded[1]
    return None, None


def encode_delta(delta: Cart, binary: bool) -> Any:
    return codec.to_msgpack(delta) if binary else codec.to_dict(delta)


def read_context(raw: Any) -> CausalContext:
    if raw is None:
        return CausalContext.empty()
    try:
        return decode_context(raw)
    except codec.CodecError as exc:
        raise CartInputError("malformed_context", str(exc)[:300]) from exc


def read_mutation_id(raw: Any) -> str:
    if not isinstance(raw, str) or not MUTATION_ID.fullmatch(raw):
        raise CartInputError("invalid_mutation_id", "a mutation_id is 1-128 visible ASCII characters")
    return raw


def read_push_list(raw: Any, decode: Callable[[Any], P]) -> list[tuple[str, P]]:
    """``[{"mutation_id": …, "delta": …}, …]`` as (mutation id, decoded delta) pairs; CartInputError
    names the first bad one."""
    if not isinstance(raw, list) or len(raw) > MAX_PUSHES:
        raise CartInputError("bad_request", f"pushes is a list of at most {MAX_PUSHES}")
    pushes: list[tuple[str, P]] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"mutation_id", "delta"}:
            raise CartInputError("bad_request", f'pushes[{index}] is {{"mutation_id": …, "delta": …}}')
        try:
            pushes.append((read_mutation_id(item["mutation_id"]), decode(item["delta"])))
        except CartInputError as exc:
            raise CartInputError(exc.code, f"pushes[{index}]: {exc.message}") from exc
    return pushes


def read_pushes(raw: Any, binary: bool) -> list[CartPush]:
    return [CartPush(m, d) for m, d in read_push_list(raw, lambda delta: decode_delta(delta, binary))]


def device_op(op: str, replica: str, sku: str, quantity: int | None, now_ms: int) -> Any:
    """The delta maker of a plain client's edit: the hub mints the dot for ``replica`` on the cart as it
    is in the store's transaction, so the cart rules hold for clients with no CRDT too."""

    def make(cart: Cart) -> Cart:
        try:
            if op == "add":
                return cart.add(replica, sku, quantity or 1)
            if op == "set":
                assert quantity is not None
                return cart.set(replica, sku, quantity, Timestamp(now_ms, 0, replica))
            return cart.remove(replica, sku)
        except ClosedCartError as exc:
            raise Refusal("cart_closed", "the cart is checked out: it takes no more edits") from exc
        except ValueError as exc:
            raise Refusal("invalid_edit", str(exc)[:200]) from exc

    return make


async def open_for(store: Store, cart_id: str, sub: str) -> CartDocument:
    """The cart, created empty for ``sub`` if new; NotFound (cart_not_found) if it is another's. A
    read when it exists: a device's sync with nothing to push writes nothing (open_cart locks the row)."""
    document = await store.get_cart(cart_id)
    if document is None:
        return await store.open_cart(cart_id, sub)
    if document.owner != sub:
        raise NotFound("no such cart", resource="cart")
    return document


def may_read(principal: Principal, document: CartDocument) -> bool:
    return document.owner == principal.sub or may_read_any(principal)


def render_outcome(outcome: PushOutcome) -> dict[str, Any]:
    out: dict[str, Any] = {"mutation_id": outcome.mutation_id, "status": outcome.status.value}
    if outcome.status is PushStatus.REFUSED:
        out["code"] = outcome.code
        out["message"] = outcome.message
    else:
        out["version"] = outcome.version
    return out


def render_cart(document: CartDocument) -> dict[str, Any]:
    cart = document.cart
    return {
        "id": document.id,
        "owner": document.owner,
        "version": document.version,
        "status": "checked_out" if cart.closed else "open",
        "value": cart.value(),
        "lines": [
            {"sku": sku, "quantity": line.quantity, "conflicts": list(line.conflicts)}
            for sku, line in sorted(cart.lines().items())
        ],
        "conflicts": {sku: list(values) for sku, values in sorted(cart.conflicts().items())},
        "rejected_edits": [
            {"sku": edit.sku, "kind": edit.kind, "dot": encode_dot(edit.dot), "quantity": edit.quantity}
            for edit in cart.rejected_edits()
        ],
        "reservation_id": document.reservation_id,
        "context": encode_context(cart.context),
        "created_at": iso(document.created_at),
        "updated_at": iso(document.updated_at),
    }
