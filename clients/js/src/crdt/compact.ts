/**
 * The shared wire pieces of crdt/_compact.py: replica tables (canonical 16-hex-digit ids as 10
 * characters of base85), contexts as flat integer pairs, dots and the orders Python uses.
 *
 * Every function here mirrors its Python twin, refusals included, so that a state decoded and
 * encoded again gives the same bytes on both sides.
 */

export class CodecError extends Error {
  override name = "CodecError";
}

/** The largest counter, wall time or logical count a state may hold (Number.MAX_SAFE_INTEGER). */
export const MAX_COUNTER = Number.MAX_SAFE_INTEGER;
export const SHORT_RUN = 8;

/** A dot: a replica's n-th write. */
export interface Dot {
  readonly replica: string;
  readonly counter: number;
}

/** A dot as a Map/Set key ("counter:replica": the first ':' splits it). */
export type DotKey = string;

export function dotKey(replica: string, counter: number): DotKey {
  return `${counter}:${replica}`;
}

export function keyDot(key: DotKey): Dot {
  const i = key.indexOf(":");
  return { replica: key.slice(i + 1), counter: Number(key.slice(0, i)) };
}

/** Python's string order (by code point), not JavaScript's (by UTF-16 code unit). */
export function cmpStr(a: string, b: string): number {
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) return fold(x) - fold(y);
  }
  return a.length - b.length;
}

function fold(unit: number): number {
  // Surrogates stand for code points above U+FFFF: they sort after U+E000–U+FFFF.
  if (unit >= 0xd800 && unit <= 0xdfff) return unit + 0x2000;
  if (unit >= 0xe000) return unit - 0x800;
  return unit;
}

export function cmpDot(a: Dot, b: Dot): number {
  return cmpStr(a.replica, b.replica) || a.counter - b.counter;
}

export function cmpKeys(a: DotKey, b: DotKey): number {
  return cmpDot(keyDot(a), keyDot(b));
}

/** Python's len(): code points. */
export function pyLen(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) i++;
    }
    n++;
  }
  return n;
}

export function isInt(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value);
}

// ------------------------------------------------------------------------------ replica ids

const B85 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~";
const B85_INDEX = new Map<string, number>([...B85].map((ch, i) => [ch, i]));
const CANONICAL = /^[0-9a-f]{16}$/;
const PACKED_LENGTH = 10;

export function packReplica(replica: string): string {
  if (!CANONICAL.test(replica)) return "." + replica;
  let out = "";
  for (const half of [replica.slice(0, 8), replica.slice(8)]) {
    let acc = parseInt(half, 16);
    const chars: string[] = [];
    for (let i = 0; i < 5; i++) {
      chars.push(B85[acc % 85]!);
      acc = Math.floor(acc / 85);
    }
    out += chars.reverse().join("");
  }
  return out;
}

export function unpackReplica(text: unknown): string {
  if (typeof text !== "string") throw new CodecError("a replica id is a string");
  if (text.startsWith(".")) {
    const replica = text.slice(1);
    if (!replica) throw new CodecError("empty replica id");
    return replica;
  }
  if (text.length !== PACKED_LENGTH) throw new CodecError(`bad replica id ${JSON.stringify(text)}`);
  let hex = "";
  for (const start of [0, 5]) {
    let acc = 0;
    for (let i = start; i < start + 5; i++) {
      const digit = B85_INDEX.get(text[i]!);
      if (digit === undefined) throw new CodecError(`bad base85 replica id ${JSON.stringify(text)}`);
      acc = acc * 85 + digit;
    }
    if (acc > 0xffffffff) throw new CodecError(`bad base85 replica id ${JSON.stringify(text)}`);
    hex += acc.toString(16).padStart(8, "0");
  }
  return hex;
}

/** Replica ids in order of first use, for one payload. */
export class ReplicaTable {
  readonly ids: string[] = [];
  private readonly positions = new Map<string, number>();

  index(replica: string): number {
    let i = this.positions.get(replica);
    if (i === undefined) {
      i = this.ids.length;
      this.positions.set(replica, i);
      this.ids.push(replica);
    }
    return i;
  }

  encoded(): string | string[] {
    const packed = this.ids.map(packReplica);
    if (packed.length === 1 || !packed.some((text) => text.startsWith("."))) return packed.join("");
    return packed;
  }
}

export function decodeTable(raw: unknown): string[] {
  let ids: string[];
  if (typeof raw === "string") {
    if (raw.startsWith(".") || raw.length === PACKED_LENGTH) {
      ids = [unpackReplica(raw)];
    } else if (raw.length % PACKED_LENGTH === 0) {
      ids = [];
      for (let i = 0; i < raw.length; i += PACKED_LENGTH) ids.push(unpackReplica(raw.slice(i, i + PACKED_LENGTH)));
    } else {
      throw new CodecError(`bad replica table ${JSON.stringify(raw)}`);
    }
  } else if (Array.isArray(raw)) {
    ids = raw.map(unpackReplica);
  } else {
    throw new CodecError("the replica table is a string or a list");
  }
  if (ids.length > 1 && new Set(ids).size !== ids.length) {
    throw new CodecError("a replica appears twice in the replica table");
  }
  return ids;
}

// --------------------------------------------------------------------------------- contexts

/** A context (version vector + cloud) as flat [index, n, ...] pairs, leaving out `implied`. */
export function encodePairs(
  vv: ReadonlyMap<string, number>,
  cloud: Iterable<DotKey>,
  table: ReplicaTable,
  implied: ReadonlySet<DotKey>,
): number[] {
  const out: number[] = [];
  for (const [replica, top] of vv) {
    if (top <= 0) continue;
    let allImplied = top <= SHORT_RUN;
    for (let c = 1; allImplied && c <= top; c++) allImplied = implied.has(dotKey(replica, c));
    if (!allImplied) out.push(table.index(replica), top);
  }
  for (const key of [...cloud].sort(cmpKeys)) {
    if (implied.has(key)) continue;
    const dot = keyDot(key);
    out.push(table.index(dot.replica), -dot.counter);
  }
  return out;
}

export function decodePairs(raw: unknown, replicas: readonly string[]): [Map<string, number>, Dot[]] {
  const flat = needList(raw);
  if (flat.length % 2) throw new CodecError("a context is a flat list of (replica, n) pairs");
  const vv = new Map<string, number>();
  const cloud: Dot[] = [];
  for (let i = 0; i < flat.length; i += 2) {
    const index = flat[i];
    const n = flat[i + 1];
    if (!isInt(index) || index < 0 || index >= replicas.length) {
      throw new CodecError(`replica index ${String(index)} is not in the table`);
    }
    if (!isInt(n) || n === 0 || n < -MAX_COUNTER || n > MAX_COUNTER) {
      throw new CodecError(`a context entry is a non-zero integer of at most 2**53 - 1, not ${String(n)}`);
    }
    const replica = replicas[index]!;
    if (n > 0) {
      if (vv.has(replica)) throw new CodecError(`replica ${replica} appears twice in a version vector`);
      vv.set(replica, n);
    } else {
      cloud.push({ replica, counter: -n });
    }
  }
  return [vv, cloud];
}

export function needList(value: unknown, length?: number): unknown[] {
  if (!Array.isArray(value)) throw new CodecError(`expected a list, got ${typeName(value)}`);
  if (length !== undefined && value.length !== length) {
    throw new CodecError(`expected ${length} items, got ${value.length}`);
  }
  return value;
}

export function needInt(value: unknown, low?: number, high?: number): number {
  if (!isInt(value)) throw new CodecError(`expected an integer, got ${typeName(value)}`);
  if ((low !== undefined && value < low) || (high !== undefined && value > high)) {
    throw new CodecError(`integer ${value} out of range [${low}, ${high}]`);
  }
  return value;
}

export function needIndex(value: unknown, size: number): number {
  if (!isInt(value) || value < 0 || value >= size) {
    throw new CodecError(`replica index ${String(value)} is not in the table`);
  }
  return value;
}

export function needStr(value: unknown, maxLength: number, allowEmpty = false): string {
  if (typeof value !== "string") throw new CodecError(`expected a string, got ${typeName(value)}`);
  const n = pyLen(value);
  if (n > maxLength || (n === 0 && !allowEmpty)) throw new CodecError(`string of length ${n} out of bounds`);
  return value;
}

export function typeName(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "list";
  if (value instanceof Uint8Array) return "bytes";
  return typeof value;
}
