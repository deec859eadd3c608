/**
 * The causal context of crdt/context.py: a version vector plus a cloud of dots seen out of order.
 * Immutable; the vector keeps Python's insertion order (it decides the order of encodings).
 */

import { CodecError, cmpKeys, cmpStr, type Dot, type DotKey, dotKey, isInt, keyDot, MAX_COUNTER } from "./compact.js";

export class CausalContext {
  constructor(
    readonly vv: ReadonlyMap<string, number> = new Map(),
    readonly cloud: ReadonlySet<DotKey> = new Set(),
  ) {}

  static empty(): CausalContext {
    return new CausalContext();
  }

  static of(dots: Iterable<Dot>): CausalContext {
    return new CausalContext(new Map(), new Set([...dots].map((d) => dotKey(d.replica, d.counter)))).compact();
  }

  contains(dot: Dot): boolean {
    return dot.counter <= (this.vv.get(dot.replica) ?? 0) || this.cloud.has(dotKey(dot.replica, dot.counter));
  }

  maxCounter(replica: string): number {
    let top = this.vv.get(replica) ?? 0;
    for (const key of this.cloud) {
      const dot = keyDot(key);
      if (dot.replica === replica && dot.counter > top) top = dot.counter;
    }
    return top;
  }

  nextDot(replica: string): Dot {
    return { replica, counter: this.maxCounter(replica) + 1 };
  }

  add(dot: Dot): CausalContext {
    if (this.contains(dot)) return this;
    return new CausalContext(this.vv, new Set([...this.cloud, dotKey(dot.replica, dot.counter)])).compact();
  }

  merge(other: CausalContext): CausalContext {
    const vv = new Map(this.vv);
    for (const [replica, counter] of other.vv) {
      if (counter > (vv.get(replica) ?? 0)) vv.set(replica, counter);
    }
    return new CausalContext(vv, new Set([...this.cloud, ...other.cloud])).compact();
  }

  compact(): CausalContext {
    if (this.cloud.size === 0) return this;
    const vv = new Map(this.vv);
    const remaining = new Set<DotKey>();
    for (const key of [...this.cloud].sort(cmpKeys)) {
      const dot = keyDot(key);
      const top = vv.get(dot.replica) ?? 0;
      if (dot.counter === top + 1) vv.set(dot.replica, dot.counter);
      else if (dot.counter > top) remaining.add(key);
    }
    return new CausalContext(vv, remaining);
  }

  /** Has this context seen every dot `other` has? */
  includes(other: CausalContext): boolean {
    for (const [replica, top] of other.vv) {
      const mine = this.vv.get(replica) ?? 0;
      for (let c = mine + 1; c <= top; c++) if (!this.contains({ replica, counter: c })) return false;
    }
    for (const key of other.cloud) if (!this.contains(keyDot(key))) return false;
    return true;
  }

  equals(other: CausalContext): boolean {
    return this.includes(other) && other.includes(this);
  }
}

/** The wire form (crdt/wire.py): `{"vv": {replica: counter}, "cloud": [[replica, counter], ...]}`. */
export interface WireContext {
  vv: Record<string, number>;
  cloud: [string, number][];
}

export function encodeContext(context: CausalContext): WireContext {
  const c = context.compact();
  const vv: Record<string, number> = {};
  for (const [replica, top] of [...c.vv].sort((a, b) => cmpStr(a[0], b[0]))) if (top > 0) vv[replica] = top;
  const cloud = [...c.cloud].sort(cmpKeys).map((key): [string, number] => {
    const dot = keyDot(key);
    return [dot.replica, dot.counter];
  });
  return { vv, cloud };
}

export function decodeContext(raw: unknown): CausalContext {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw) || raw instanceof Uint8Array) {
    throw new CodecError("context: expected a map");
  }
  const body = raw as Record<string, unknown>;
  const keys = Object.keys(body).sort();
  if (keys.length !== 2 || keys[0] !== "cloud" || keys[1] !== "vv") {
    throw new CodecError("context: expected the keys ['cloud', 'vv']");
  }
  const vvRaw = body.vv;
  if (vvRaw === null || typeof vvRaw !== "object" || Array.isArray(vvRaw)) throw new CodecError("context vv: expected a map");
  const vv = new Map<string, number>();
  for (const [replica, top] of Object.entries(vvRaw as Record<string, unknown>)) {
    if (!replica || !isInt(top) || top < 1 || top > MAX_COUNTER) throw new CodecError("context vv: bad entry");
    vv.set(replica, top);
  }
  if (!Array.isArray(body.cloud)) throw new CodecError("context cloud: expected a list");
  const cloud = new Set<DotKey>();
  for (const item of body.cloud) {
    if (!Array.isArray(item) || item.length !== 2 || typeof item[0] !== "string" || !item[0] || !isInt(item[1]) || item[1] < 1) {
      throw new CodecError("context cloud: bad dot");
    }
    const key = dotKey(item[0], item[1]);
    if (cloud.has(key)) throw new CodecError("context cloud: a dot is listed twice");
    cloud.add(key);
  }
  return new CausalContext(vv, cloud).compact();
}
