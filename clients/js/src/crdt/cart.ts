/**
 * The offline shopping cart of crdt/cart.py and crdt/_cart_state.py, ported line by line so that
 * it is byte-compatible with the hub's codec (checked against clients/golden/cart.json).
 *
 * The rules (crdt/cart.py says them in full): adds are never lost; a concurrent "set quantity" is
 * won by hybrid logical clock, the loser kept as a conflict; a remove cancels what it saw; a checkout
 * freezes the cart (the snapshot is its value) and later edits are kept as rejected.
 *
 * Maps keep insertion order as Python's dicts do, and every join inserts and deletes in the order
 * its Python twin does: the encoding lists lines and entries in that order.
 */

import {
  CodecError,
  cmpDot,
  cmpKeys,
  cmpStr,
  decodePairs,
  decodeTable,
  type Dot,
  type DotKey,
  dotKey,
  encodePairs,
  isInt,
  keyDot,
  MAX_COUNTER,
  pyLen,
  ReplicaTable,
  SHORT_RUN,
} from "./compact.js";
import { CausalContext } from "./context.js";
import type { Timestamp } from "./hlc.js";

export const MAX_QUANTITY = 1_000_000;
export const MAX_SKU_LENGTH = 200;
const SHORT_VECTOR = 8;

/** A set entry: [quantity, wall_ms, logical]; the timestamp's replica is the dot's. */
type SetEntry = readonly [number, number, number];
type Value = number | SetEntry;
type LineEntries = Map<DotKey, Value>;

export class ClosedCartError extends Error {
  override name = "ClosedCartError";
}

export interface Line {
  quantity: number;
  /** Losing concurrent "set quantity" values, latest first. */
  conflicts: number[];
}

/** An edit the checkout refused (see crdt/cart.py's RejectedEdit). */
export interface RejectedEdit {
  sku: string;
  kind: "add" | "set" | "cancel";
  dot: Dot;
  quantity: number;
}

function lineView(line: LineEntries): [number, number[]] {
  let added = 0;
  const ranked: { wall: number; logical: number; dot: Dot; quantity: number }[] = [];
  for (const [key, value] of line) {
    if (typeof value === "number") added += value;
    else ranked.push({ wall: value[1], logical: value[2], dot: keyDot(key), quantity: value[0] });
  }
  if (ranked.length === 0) return [added, []];
  // The winner: the latest timestamp (wall, logical, replica), then the greatest dot.
  ranked.sort((a, b) => b.wall - a.wall || b.logical - a.logical || cmpDot(b.dot, a.dot) || b.quantity - a.quantity);
  const base = ranked[0]!.quantity;
  const conflicts: number[] = [];
  for (const item of ranked.slice(1)) {
    if (item.quantity !== base && !conflicts.includes(item.quantity)) conflicts.push(item.quantity);
  }
  return [base + added, conflicts];
}

function entryKind(value: Value): ["add" | "set", number] {
  return typeof value === "number" ? ["add", value] : ["set", value[0]];
}

/** A causal context and the lines it explains: the live cart, or a checkout snapshot. */
export class CartState {
  vv = new Map<string, number>();
  cloud = new Set<DotKey>();
  lines = new Map<string, LineEntries>();

  copy(): CartState {
    const store = new CartState();
    store.vv = new Map(this.vv);
    store.cloud = new Set(this.cloud);
    for (const [sku, line] of this.lines) store.lines.set(sku, new Map(line));
    return store;
  }

  seen(replica: string, counter: number): boolean {
    return counter <= (this.vv.get(replica) ?? 0) || this.cloud.has(dotKey(replica, counter));
  }

  see(replica: string, counter: number): void {
    const top = this.vv.get(replica) ?? 0;
    if (counter === top + 1) {
      while (this.cloud.has(dotKey(replica, counter + 1))) {
        counter += 1;
        this.cloud.delete(dotKey(replica, counter));
      }
      this.vv.set(replica, counter);
    } else if (counter > top) {
      this.cloud.add(dotKey(replica, counter));
    }
  }

  seeKey(key: DotKey): void {
    const dot = keyDot(key);
    this.see(dot.replica, dot.counter);
  }

  normalize(): void {
    const dots = [...this.cloud].sort(cmpKeys);
    this.cloud = new Set();
    for (const key of dots) this.seeKey(key);
  }

  seeContext(other: CartState): void {
    let raised = false;
    for (const [replica, top] of other.vv) {
      if (top > (this.vv.get(replica) ?? 0)) {
        this.vv.set(replica, top);
        raised = true;
      }
    }
    if (raised && this.cloud.size) this.normalize();
    for (const key of other.cloud) this.seeKey(key);
  }

  context(): CausalContext {
    return new CausalContext(new Map(this.vv), new Set(this.cloud));
  }

  nextDot(replica: string): Dot {
    let top = this.vv.get(replica) ?? 0;
    for (const key of this.cloud) {
      const dot = keyDot(key);
      if (dot.replica === replica && dot.counter > top) top = dot.counter;
    }
    if (top >= MAX_COUNTER) throw new Error(`replica ${replica} has used every counter: use a new id`);
    return { replica, counter: top + 1 };
  }

  heldKeys(): Set<DotKey> {
    const out = new Set<DotKey>();
    for (const line of this.lines.values()) for (const key of line.keys()) out.add(key);
    return out;
  }

  holds(key: DotKey): boolean {
    for (const line of this.lines.values()) if (line.has(key)) return true;
    return false;
  }

  lineDots(sku: string): Dot[] {
    const line = this.lines.get(sku);
    return line ? [...line.keys()].map(keyDot) : [];
  }

  private cancel(key: DotKey): void {
    const dot = keyDot(key);
    if (!this.lines.size || !this.seen(dot.replica, dot.counter)) return;
    for (const [sku, line] of this.lines) {
      if (line.delete(key)) {
        if (!line.size) this.lines.delete(sku);
        return;
      }
    }
  }

  private cancelIn(line: LineEntries, sku: string, key: DotKey): boolean {
    if (!line.delete(key)) return false;
    if (!line.size) this.lines.delete(sku);
    return true;
  }

  /** Join `other` into this store (in place): crdt/_cart_state.py CartState.absorb. */
  absorb(other: CartState): void {
    const lines = this.lines;
    // 1. Entries the other side has seen and no longer holds were cancelled there.
    if (lines.size) {
      const held = other.heldKeys();
      for (const [sku, ours] of [...lines]) {
        for (const key of [...ours.keys()]) {
          const dot = keyDot(key);
          if (other.seen(dot.replica, dot.counter) && !held.has(key)) ours.delete(key);
        }
        if (!ours.size) lines.delete(sku);
      }
    }
    // 2. Entries we have not seen yet arrive (ones we have seen and dropped stay dropped).
    for (const [sku, theirs] of other.lines) {
      let line: LineEntries | undefined;
      for (const [key, value] of theirs) {
        const dot = keyDot(key);
        if (dot.counter > (this.vv.get(dot.replica) ?? 0) && !this.cloud.has(key)) {
          if (line === undefined) {
            line = lines.get(sku);
            if (line === undefined) lines.set(sku, (line = new Map()));
          }
          line.set(key, value);
        }
      }
    }
    // 3. And the contexts join.
    if (other.vv.size) this.seeContext(other);
    else for (const key of other.cloud) this.seeKey(key);
  }

  /** absorb() for a decoded delta kept as its entries: entries first, then cancellations. */
  absorbDelta(delta: DeltaEntries): void {
    const lines = this.lines;
    for (const { sku, key, value } of delta.entries) {
      const dot = keyDot(key);
      if (dot.counter > (this.vv.get(dot.replica) ?? 0) && !this.cloud.has(key)) {
        let line = lines.get(sku);
        if (line === undefined) lines.set(sku, (line = new Map()));
        line.set(key, value);
      }
      this.see(dot.replica, dot.counter);
    }
    if (!delta.cancels.length) return;
    const oneSku = delta.sku;
    let line = oneSku === null ? undefined : lines.get(oneSku);
    for (const key of delta.cancels) {
      if (line !== undefined && this.cancelIn(line, oneSku!, key)) {
        if (!line.size) line = undefined;
      } else {
        this.cancel(key);
      }
      this.seeKey(key);
    }
  }

  equals(other: CartState): boolean {
    if (this.vv.size !== other.vv.size || this.cloud.size !== other.cloud.size || this.lines.size !== other.lines.size) return false;
    for (const [r, n] of this.vv) if (other.vv.get(r) !== n) return false;
    for (const key of this.cloud) if (!other.cloud.has(key)) return false;
    for (const [sku, line] of this.lines) {
      const theirs = other.lines.get(sku);
      if (!theirs || theirs.size !== line.size) return false;
      for (const [key, value] of line) {
        const v = theirs.get(key);
        if (v === undefined || JSON.stringify(v) !== JSON.stringify(value)) return false;
      }
    }
    return true;
  }
}

interface Entry {
  sku: string;
  key: DotKey;
  value: Value;
}

/** A decoded payload whose context is a few dots (a delta as mutators make them). */
export class DeltaEntries {
  constructor(
    readonly entries: Entry[],
    readonly cancels: DotKey[],
    readonly sku: string | null,
  ) {}

  store(vv?: Map<string, number>): CartState {
    const store = new CartState();
    for (const { sku, key, value } of this.entries) {
      let line = store.lines.get(sku);
      if (line === undefined) store.lines.set(sku, (line = new Map()));
      line.set(key, value);
    }
    const cloud = new Set<DotKey>();
    if (vv && vv.size) {
      store.vv = vv;
      for (const key of [...this.entries.map((e) => e.key), ...this.cancels]) {
        const dot = keyDot(key);
        if (dot.counter > (vv.get(dot.replica) ?? 0)) cloud.add(key);
      }
    } else {
      for (const e of this.entries) cloud.add(e.key);
      for (const key of this.cancels) cloud.add(key);
    }
    if (!cloud.size) return store;
    store.cloud = cloud;
    for (const key of cloud) {
      const dot = keyDot(key);
      if (dot.counter === (store.vv.get(dot.replica) ?? 0) + 1) {
        store.normalize();
        break;
      }
    }
    return store;
  }
}

// -- codec, version 1 (crdt/_cart_state.py) ---------------------------------------------------------

function encodeState(store: CartState, table: ReplicaTable): [unknown[], number[]] {
  const flat: unknown[] = [];
  const implied = new Set<DotKey>();
  for (const [sku, line] of store.lines) {
    const adds: number[] = [];
    const sets: number[] = [];
    for (const [key, value] of line) {
      const dot = keyDot(key);
      if (dot.counter <= SHORT_RUN || dot.counter > (store.vv.get(dot.replica) ?? 0)) implied.add(key);
      if (typeof value === "number") adds.push(table.index(dot.replica), dot.counter, value);
      else sets.push(table.index(dot.replica), dot.counter, value[0], value[1], value[2]);
    }
    flat.push(sku, adds, sets);
  }
  return [flat, encodePairs(store.vv, store.cloud, table, implied)];
}

function bad(why: string): CodecError {
  return new CodecError(`malformed cart: ${why}`);
}

function inRange(x: unknown, low: number, high: number): x is number {
  return isInt(x) && x >= low && x <= high;
}

function decodeState(rawLines: unknown, rawCtx: unknown, replicas: string[], lazy: boolean): CartState | DeltaEntries {
  if (!Array.isArray(rawLines) || rawLines.length % 3) throw bad("lines are a flat list of (sku, adds, sets) triples");
  const entries: Entry[] = [];
  const size = replicas.length;
  let sku: unknown = null;
  for (let i = 0; i < rawLines.length; i += 3) {
    sku = rawLines[i];
    const adds = rawLines[i + 1];
    const sets = rawLines[i + 2];
    if (typeof sku !== "string" || !(pyLen(sku) > 0 && pyLen(sku) <= MAX_SKU_LENGTH)) throw bad(`bad SKU ${JSON.stringify(sku)}`);
    if (!Array.isArray(adds) || !Array.isArray(sets) || adds.length % 3 || sets.length % 5 || !(adds.length || sets.length)) {
      throw bad(`malformed entries in line ${sku}`);
    }
    for (let j = 0; j < adds.length; j += 3) {
      const [index, counter, amount] = [adds[j], adds[j + 1], adds[j + 2]];
      if (!(inRange(index, 0, size - 1) && inRange(counter, 1, MAX_COUNTER) && inRange(amount, 1, MAX_QUANTITY))) {
        throw bad(`bad add entry in line ${sku}`);
      }
      entries.push({ sku, key: dotKey(replicas[index]!, counter), value: amount });
    }
    for (let j = 0; j < sets.length; j += 5) {
      const [index, counter, quantity, wall, logical] = sets.slice(j, j + 5);
      if (
        !(
          inRange(index, 0, size - 1) &&
          inRange(counter, 1, MAX_COUNTER) &&
          inRange(quantity, 0, MAX_QUANTITY) &&
          inRange(wall, 0, MAX_COUNTER) &&
          inRange(logical, 0, MAX_COUNTER)
        )
      ) {
        throw bad(`bad set entry in line ${sku}`);
      }
      entries.push({ sku, key: dotKey(replicas[index]!, counter), value: [quantity, wall, logical] });
    }
  }
  const oneSku = rawLines.length === 3 ? (sku as string) : null;
  if (rawLines.length > 3) {
    const skus = new Set<unknown>();
    for (let i = 0; i < rawLines.length; i += 3) skus.add(rawLines[i]);
    if (skus.size * 3 !== rawLines.length) throw bad("a SKU appears twice");
  }
  const dots = new Set(entries.map((e) => e.key));
  if (dots.size !== entries.length) throw bad("a dot appears twice");
  let cancels: DotKey[] = [];
  if (Array.isArray(rawCtx) && lazy && rawCtx.length % 2 === 0) {
    let fast = true;
    for (let k = 0; k < rawCtx.length; k += 2) {
      const index = rawCtx[k];
      const n = rawCtx[k + 1];
      if (!(inRange(index, 0, size - 1) && isInt(n) && n >= -MAX_COUNTER && n < 0)) {
        cancels = [];
        fast = false;
        break;
      }
      const key = dotKey(replicas[index]!, -n);
      if (!dots.has(key)) cancels.push(key);
    }
    if (fast) return new DeltaEntries(entries, cancels, oneSku);
  }
  if (Array.isArray(rawCtx) && rawCtx.length === 0) return new DeltaEntries(entries, [], oneSku).store();
  const [vv, extra] = decodePairs(rawCtx, replicas);
  let short = lazy;
  for (const top of vv.values()) if (top > SHORT_VECTOR) short = false;
  for (const dot of extra) {
    const key = dotKey(dot.replica, dot.counter);
    if (!dots.has(key)) cancels.push(key);
  }
  if (!short) return new DeltaEntries(entries, cancels, oneSku).store(vv);
  for (const [replica, top] of vv) {
    for (let counter = 1; counter <= top; counter++) {
      const key = dotKey(replica, counter);
      if (!dots.has(key)) cancels.push(key);
    }
  }
  return new DeltaEntries(entries, cancels, oneSku);
}

function checkSku(sku: string): void {
  if (typeof sku !== "string" || !sku || pyLen(sku) > MAX_SKU_LENGTH) {
    throw new RangeError(`a SKU is a string of 1 to ${MAX_SKU_LENGTH} characters`);
  }
}

function checkQuantity(value: number, low: number): void {
  if (!isInt(value) || value < low || value > MAX_QUANTITY) {
    throw new RangeError(`a quantity is an integer in [${low}, ${MAX_QUANTITY}], not ${value}`);
  }
}

function checkReplica(replica: string): string {
  if (typeof replica !== "string" || !replica) throw new RangeError("a replica id is a non-empty string");
  return replica;
}

function checkOwnTimestamp(ts: Timestamp, replica: string): void {
  if (!ts || !isInt(ts.wallMs) || !isInt(ts.logical) || ts.wallMs < 0 || ts.logical < 0 || ts.replica !== replica) {
    throw new RangeError(`not a timestamp of replica ${replica}'s own clock`);
  }
}

/** A shopping cart (see crdt/cart.py for the rules). */
export class Cart {
  static readonly TYPE_TAG = "cart";
  private storeState: CartState | null;
  private deltaEntries: DeltaEntries | null;
  private closedState: CartState | null;

  constructor(live?: CartState | null, closed?: CartState | null, delta?: DeltaEntries | null) {
    this.storeState = live ?? (delta ? null : new CartState());
    this.deltaEntries = delta ?? null;
    this.closedState = closed ?? null;
  }

  static new(): Cart {
    return new Cart();
  }

  /** @internal */
  get live(): CartState {
    if (this.storeState === null) {
      this.storeState = this.deltaEntries!.store();
      this.deltaEntries = null;
    }
    return this.storeState;
  }

  private shown(): CartState {
    return this.closedState ?? this.live;
  }

  /** SKU → quantity, for the lines above zero (the checkout's snapshot once closed). */
  value(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [sku, line] of this.shown().lines) {
      const quantity = lineView(line)[0];
      if (quantity > 0) out[sku] = quantity;
    }
    return out;
  }

  /** Every line that holds an entry, with its conflicts (a line set to 0 is listed). */
  lines(): Map<string, Line> {
    const out = new Map<string, Line>();
    for (const [sku, line] of this.shown().lines) {
      const [quantity, conflicts] = lineView(line);
      out.set(sku, { quantity, conflicts });
    }
    return out;
  }

  line(sku: string): Line {
    const line = this.shown().lines.get(sku);
    if (!line) return { quantity: 0, conflicts: [] };
    const [quantity, conflicts] = lineView(line);
    return { quantity, conflicts };
  }

  quantity(sku: string): number {
    return this.line(sku).quantity;
  }

  /** SKU → the quantities that lost to a concurrent "set quantity" ("changed on another device"). */
  conflicts(): Record<string, number[]> {
    const out: Record<string, number[]> = {};
    for (const [sku, line] of this.lines()) if (line.conflicts.length) out[sku] = line.conflicts;
    return out;
  }

  /** Every write this replica has seen (of the live cart). */
  get context(): CausalContext {
    return this.live.context();
  }

  get closed(): boolean {
    return this.closedState !== null;
  }

  /** Edits the checkout refused; empty while the cart is open. */
  rejectedEdits(): RejectedEdit[] {
    const frozen = this.closedState;
    if (frozen === null) return [];
    const live = this.live;
    const out: RejectedEdit[] = [];
    for (const [sku, line] of live.lines) {
      for (const [key, value] of line) {
        const dot = keyDot(key);
        if (!frozen.seen(dot.replica, dot.counter)) {
          const [kind, quantity] = entryKind(value);
          out.push({ sku, kind, dot, quantity });
        }
      }
    }
    const held = live.heldKeys();
    for (const [sku, line] of frozen.lines) {
      for (const [key, value] of line) {
        const dot = keyDot(key);
        if (!held.has(key) && live.seen(dot.replica, dot.counter)) out.push({ sku, kind: "cancel", dot, quantity: entryKind(value)[1] });
      }
    }
    out.sort((a, b) => cmpStr(a.sku, b.sku) || cmpDot(a.dot, b.dot));
    return out;
  }

  /** The latest timestamp in the cart, for a clock to observe after a merge. */
  maxTimestamp(): Timestamp | null {
    let best: Timestamp | null = null;
    for (const store of [this.live, this.closedState]) {
      if (!store) continue;
      for (const line of store.lines.values()) {
        for (const [key, value] of line) {
          if (typeof value === "number") continue;
          const replica = keyDot(key).replica;
          if (
            best === null ||
            value[1] > best.wallMs ||
            (value[1] === best.wallMs && (value[2] > best.logical || (value[2] === best.logical && cmpStr(replica, best.replica) > 0)))
          ) {
            best = { wallMs: value[1], logical: value[2], replica };
          }
        }
      }
    }
    return best;
  }

  // -- mutators: each returns a delta and leaves this cart unchanged ------------------------------

  private checkOpen(): void {
    if (this.closedState !== null) throw new ClosedCartError("the cart is checked out");
  }

  /** Add `amount` units (≥ 1) of `sku`. */
  add(replica: string, sku: string, amount = 1): Cart {
    this.checkOpen();
    checkSku(sku);
    checkQuantity(amount, 1);
    const dot = this.live.nextDot(checkReplica(replica));
    const delta = new CartState();
    delta.see(dot.replica, dot.counter);
    delta.lines.set(sku, new Map([[dotKey(dot.replica, dot.counter), amount]]));
    return new Cart(delta);
  }

  /** Set the line to `quantity` (≥ 0), cancelling the adds and sets of it this replica has seen. */
  set(replica: string, sku: string, quantity: number, ts: Timestamp): Cart {
    this.checkOpen();
    checkSku(sku);
    checkQuantity(quantity, 0);
    checkOwnTimestamp(ts, replica);
    const dot = this.live.nextDot(checkReplica(replica));
    const delta = new CartState();
    for (const seen of [...this.live.lineDots(sku), dot].sort(cmpDot)) delta.see(seen.replica, seen.counter);
    delta.lines.set(sku, new Map([[dotKey(dot.replica, dot.counter), [quantity, ts.wallMs, ts.logical] as const]]));
    return new Cart(delta);
  }

  /** Remove the line as this replica sees it; adds it has not seen survive (add wins). */
  remove(replica: string, sku: string): Cart {
    this.checkOpen();
    checkSku(sku);
    const delta = new CartState();
    const dots = [...this.live.lineDots(sku), this.live.nextDot(checkReplica(replica))].sort(cmpDot);
    for (const seen of dots) delta.see(seen.replica, seen.counter);
    return new Cart(delta);
  }

  /** Check out: freeze the cart as this replica sees it now (the hub does this, not devices). */
  close(replica: string): Cart {
    this.checkOpen();
    const dot = this.live.nextDot(checkReplica(replica));
    const snapshot = this.live.copy();
    snapshot.see(dot.replica, dot.counter);
    const delta = new CartState();
    delta.see(dot.replica, dot.counter);
    return new Cart(delta, snapshot);
  }

  // -- join --------------------------------------------------------------------------------------

  apply(delta: Cart): void {
    const store = this.live;
    if (delta.deltaEntries !== null) store.absorbDelta(delta.deltaEntries);
    else store.absorb(delta.live);
    if (delta.closedState !== null) {
      if (this.closedState === null) this.closedState = delta.closedState.copy();
      else this.closedState.absorb(delta.closedState);
    }
  }

  merge(other: Cart): Cart {
    const out = this.copy();
    out.apply(other);
    return out;
  }

  copy(): Cart {
    return new Cart(this.live.copy(), this.closedState ? this.closedState.copy() : null);
  }

  equals(other: Cart): boolean {
    if (!this.live.equals(other.live)) return false;
    if (this.closedState === null || other.closedState === null) return this.closedState === other.closedState;
    return this.closedState.equals(other.closedState);
  }

  /** @internal The codec's state (crdt/cart.py _encode_v1). */
  encodeState(): unknown[] {
    const table = new ReplicaTable();
    const [lines, ctx] = encodeState(this.live, table);
    const out: unknown[] = [null, lines, ctx];
    if (this.closedState !== null) out.push(...encodeState(this.closedState, table));
    out[0] = table.encoded();
    return out;
  }

  /** @internal */
  static decodeState(state: unknown): Cart {
    if (!Array.isArray(state) || (state.length !== 3 && state.length !== 5)) {
      throw bad("a cart is [replicas, lines, context] (+ [lines, context] once closed)");
    }
    const replicas = decodeTable(state[0]);
    if (state.length === 3) {
      const live = decodeState(state[1], state[2], replicas, true);
      return live instanceof DeltaEntries ? new Cart(null, null, live) : new Cart(live);
    }
    const live = decodeState(state[1], state[2], replicas, false) as CartState;
    const closed = decodeState(state[3], state[4], replicas, false) as CartState;
    if (!closed.vv.size && !closed.cloud.size) throw bad("a checkout snapshot has at least its close dot");
    return new Cart(live, closed);
  }
}
