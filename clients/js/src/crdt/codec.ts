/**
 * The versioned codec of crdt/codec.py: `{"t": tag, "v": version, "s": state}` as a JSON-safe
 * object, `[tag, version, state]` as MessagePack bytes. An unknown tag or version, or a state out of
 * shape, is a CodecError: never a guess.
 */

import { decode, encode } from "@msgpack/msgpack";

import { Cart } from "./cart.js";
import { CodecError, typeName } from "./compact.js";
import { Review } from "./review.js";

export type Crdt = Cart | Review;

export interface Encoded {
  t: string;
  v: number;
  s: unknown;
}

function parts(value: Crdt): [string, number, unknown] {
  if (value instanceof Cart) return ["cart", 1, value.encodeState()];
  if (value instanceof Review) return ["review", 1, value.encodeState()];
  throw new CodecError(`no codec for ${typeName(value)}`);
}

export function toDict(value: Crdt): Encoded {
  const [t, v, s] = parts(value);
  return { t, v, s };
}

export function toMsgpack(value: Crdt): Uint8Array {
  return encode(parts(value));
}

function decodeParts(tag: unknown, version: unknown, state: unknown): Crdt {
  if (typeof tag !== "string" || typeof version !== "number" || !Number.isInteger(version)) {
    throw new CodecError("the type tag is a string and the version an integer");
  }
  try {
    if (tag === "cart" && version === 1) return Cart.decodeState(state);
    if (tag === "review" && version === 1) return Review.decodeState(state);
  } catch (err) {
    if (err instanceof CodecError) throw err;
    throw new CodecError(`malformed ${tag} v${version} state: ${String(err)}`);
  }
  throw new CodecError(`unknown type ${tag} version ${version}`);
}

export function fromDict(payload: unknown): Crdt {
  if (payload === null || typeof payload !== "object" || Array.isArray(payload) || payload instanceof Uint8Array) {
    throw new CodecError('an encoded CRDT is {"t": tag, "v": version, "s": state}');
  }
  const p = payload as Record<string, unknown>;
  const keys = Object.keys(p);
  if (keys.length !== 3 || !("t" in p && "v" in p && "s" in p)) {
    throw new CodecError('an encoded CRDT is {"t": tag, "v": version, "s": state}');
  }
  return decodeParts(p.t, p.v, p.s);
}

export function fromMsgpack(data: unknown): Crdt {
  if (!(data instanceof Uint8Array)) throw new CodecError(`MessagePack comes as bytes, not ${typeName(data)}`);
  let payload: unknown;
  try {
    payload = decode(data);
  } catch (err) {
    throw new CodecError(`not MessagePack: ${String(err)}`);
  }
  if (!Array.isArray(payload) || payload.length !== 3) {
    throw new CodecError("an encoded CRDT is the MessagePack array [tag, version, state]");
  }
  return decodeParts(payload[0], payload[1], payload[2]);
}

/** A cart from either form (a CodecError if it is another type). */
export function decodeCart(raw: unknown): Cart {
  const value = raw instanceof Uint8Array ? fromMsgpack(raw) : fromDict(raw);
  if (!(value instanceof Cart)) throw new CodecError("expected a cart");
  return value;
}

export function decodeReview(raw: unknown): Review {
  const value = raw instanceof Uint8Array ? fromMsgpack(raw) : fromDict(raw);
  if (!(value instanceof Review)) throw new CodecError("expected a review");
  return value;
}

export function toHex(bytes: Uint8Array): string {
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}

export function fromHex(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}
