/**
 * The product review of crdt/review.py, ported so that it is byte-compatible with the hub's codec
 * (checked against clients/golden/review.json).
 *
 * Rating and text are multi-value registers won by hybrid logical clock (the losers kept as
 * conflicts), media an add-wins set, delete wins over any concurrent edit, erasure is absorbing, and
 * the moderation record is the server's alone: a write outside what the server judged reads as
 * `pending`.
 */

import {
  CodecError,
  cmpDot,
  cmpStr,
  decodePairs,
  decodeTable,
  type Dot,
  type DotKey,
  dotKey,
  encodePairs,
  isInt,
  keyDot,
  needIndex,
  needInt,
  needList,
  needStr,
  pyLen,
  ReplicaTable,
} from "./compact.js";
import { CausalContext } from "./context.js";
import { cmpTimestamp, type Timestamp } from "./hlc.js";

export const MAX_TEXT_LENGTH = 10_000;
export const MAX_URL_LENGTH = 2_048;
export const MAX_ID_LENGTH = 200;

export type ModerationStatus = "pending" | "published" | "flagged" | "rejected";
const STATUSES: readonly ModerationStatus[] = ["pending", "published", "flagged", "rejected"];

export class ReviewGoneError extends Error {
  override name = "ReviewGoneError";
}

export interface Moderation {
  readonly seq: number;
  readonly status: ModerationStatus;
  readonly judged: CausalContext;
}

export interface ReviewValue {
  reviewId: string | null;
  product: string | null;
  author: string | null;
  rating: number | null;
  text: string | null;
  media: string[];
  status: ModerationStatus;
  ratingConflicts: number[];
  textConflicts: string[];
}

type Register<V> = Map<DotKey, readonly [V, Timestamp]>;

function register<V>(entries: Register<V>): [V | null, V[]] {
  if (!entries.size) return [null, []];
  const ranked = [...entries].sort((a, b) => cmpTimestamp(b[1][1], a[1][1]) || cmpDot(keyDot(b[0]), keyDot(a[0])));
  const winner = ranked[0]![1][0];
  const others: V[] = [];
  for (const [, [value]] of ranked.slice(1)) if (value !== winner && !others.includes(value)) others.push(value);
  return [winner, others];
}

function joinDots<V>(mine: Map<DotKey, V>, myCtx: CausalContext, theirs: Map<DotKey, V>, theirCtx: CausalContext): void {
  for (const key of [...mine.keys()].filter((k) => !theirs.has(k) && theirCtx.contains(keyDot(k)))) mine.delete(key);
  for (const [key, entry] of theirs) if (!mine.has(key) && !myCtx.contains(keyDot(key))) mine.set(key, entry);
}

function joinId(a: string | null, b: string | null, what: string): string | null {
  if (a === null) return b;
  if (b === null || a === b) return a;
  throw new RangeError(`cannot merge two different reviews: ${what} ${a} and ${b}`);
}

function moderationKeyCmp(a: Moderation, b: Moderation): number {
  if (a.seq !== b.seq) return a.seq - b.seq;
  if (a.status !== b.status) return cmpStr(a.status, b.status);
  const ja = a.judged.compact();
  const jb = b.judged.compact();
  const va = [...ja.vv].sort((x, y) => cmpStr(x[0], y[0]) || x[1] - y[1]);
  const vb = [...jb.vv].sort((x, y) => cmpStr(x[0], y[0]) || x[1] - y[1]);
  for (let i = 0; i < Math.min(va.length, vb.length); i++) {
    const c = cmpStr(va[i]![0], vb[i]![0]) || va[i]![1] - vb[i]![1];
    if (c) return c;
  }
  if (va.length !== vb.length) return va.length - vb.length;
  const ca = [...ja.cloud].map(keyDot).sort(cmpDot);
  const cb = [...jb.cloud].map(keyDot).sort(cmpDot);
  for (let i = 0; i < Math.min(ca.length, cb.length); i++) {
    const c = cmpDot(ca[i]!, cb[i]!);
    if (c) return c;
  }
  return ca.length - cb.length;
}

function checkOwnTimestamp(ts: Timestamp, replica: string): void {
  if (!ts || !isInt(ts.wallMs) || !isInt(ts.logical) || ts.wallMs < 0 || ts.logical < 0 || ts.replica !== replica) {
    throw new RangeError(`not a timestamp of replica ${replica}'s own clock`);
  }
}

function checkReplica(replica: string): string {
  if (typeof replica !== "string" || !replica) throw new RangeError("a replica id is a non-empty string");
  return replica;
}

function checkUrl(url: string): void {
  if (typeof url !== "string" || !url || pyLen(url) > MAX_URL_LENGTH) {
    throw new RangeError(`a media URL is a string of 1 to ${MAX_URL_LENGTH} characters`);
  }
}

/** A review (see crdt/review.py for the rules). */
export class Review {
  static readonly TYPE_TAG = "review";
  private reviewIdValue: string | null = null;
  private productValue: string | null = null;
  private authorValue: string | null = null;
  private ctx = new CausalContext();
  private rating: Register<number> = new Map();
  private text: Register<string> = new Map();
  private media = new Map<DotKey, string>();
  private deletedFlag = false;
  private erasedFlag = false;
  private moderationValue: Moderation | null = null;

  static new(): Review {
    return new Review();
  }

  get reviewId(): string | null {
    return this.reviewIdValue;
  }
  get context(): CausalContext {
    return this.ctx;
  }
  get deleted(): boolean {
    return this.deletedFlag;
  }
  get erased(): boolean {
    return this.erasedFlag;
  }
  get moderation(): Moderation | null {
    return this.moderationValue;
  }

  /** The displayed status: `pending` until the server has judged every write of the review. */
  status(): ModerationStatus {
    const mod = this.moderationValue;
    if (mod === null || !mod.judged.includes(this.ctx)) return "pending";
    return mod.status;
  }

  hasContent(): boolean {
    return this.rating.size > 0 || this.text.size > 0 || this.media.size > 0;
  }

  /** What the app shows; null once deleted or erased. */
  value(): ReviewValue | null {
    if (this.deletedFlag || this.erasedFlag) return null;
    const [rating, ratingConflicts] = register(this.rating);
    const [text, textConflicts] = register(this.text);
    return {
      reviewId: this.reviewIdValue,
      product: this.productValue,
      author: this.authorValue,
      rating,
      text,
      media: [...new Set(this.media.values())].sort(cmpStr),
      status: this.status(),
      ratingConflicts,
      textConflicts,
    };
  }

  carriesModeration(): boolean {
    return this.moderationValue !== null;
  }

  maxTimestamp(): Timestamp | null {
    let best: Timestamp | null = null;
    for (const [, ts] of [...this.rating.values(), ...this.text.values()]) {
      if (best === null || cmpTimestamp(ts, best) > 0) best = ts;
    }
    return best;
  }

  // -- mutators ------------------------------------------------------------------------------------

  private delta(ctx: CausalContext): Review {
    const delta = new Review();
    delta.ctx = ctx;
    return delta;
  }

  private checkEditable(): void {
    if (this.erasedFlag) throw new ReviewGoneError("the review is erased");
    if (this.deletedFlag) throw new ReviewGoneError("the review is deleted");
  }

  create(reviewId: string, product: string, author: string): Review {
    this.checkEditable();
    for (const [name, value] of [
      ["review id", reviewId],
      ["product", product],
      ["author", author],
    ] as const) {
      if (typeof value !== "string" || !value || pyLen(value) > MAX_ID_LENGTH) {
        throw new RangeError(`the ${name} is a string of 1 to ${MAX_ID_LENGTH} characters`);
      }
    }
    joinId(this.reviewIdValue, reviewId, "id");
    joinId(this.productValue, product, "product");
    joinId(this.authorValue, author, "author");
    const delta = this.delta(new CausalContext());
    delta.reviewIdValue = reviewId;
    delta.productValue = product;
    delta.authorValue = author;
    return delta;
  }

  setRating(replica: string, rating: number, ts: Timestamp): Review {
    this.checkEditable();
    if (!isInt(rating) || rating < 1 || rating > 5) throw new RangeError(`a rating is an integer from 1 to 5, not ${rating}`);
    checkOwnTimestamp(ts, replica);
    const dot = this.ctx.nextDot(checkReplica(replica));
    const delta = this.delta(CausalContext.of([...[...this.rating.keys()].map(keyDot), dot]));
    delta.rating.set(dotKey(dot.replica, dot.counter), [rating, ts]);
    return delta;
  }

  setText(replica: string, text: string, ts: Timestamp): Review {
    this.checkEditable();
    if (typeof text !== "string" || pyLen(text) > MAX_TEXT_LENGTH) {
      throw new RangeError(`a review text is a string of at most ${MAX_TEXT_LENGTH} characters`);
    }
    checkOwnTimestamp(ts, replica);
    const dot = this.ctx.nextDot(checkReplica(replica));
    const delta = this.delta(CausalContext.of([...[...this.text.keys()].map(keyDot), dot]));
    delta.text.set(dotKey(dot.replica, dot.counter), [text, ts]);
    return delta;
  }

  private mediaDots(url: string): Dot[] {
    return [...this.media].filter(([, u]) => u === url).map(([key]) => keyDot(key));
  }

  addMedia(replica: string, url: string): Review {
    this.checkEditable();
    checkUrl(url);
    const dot = this.ctx.nextDot(checkReplica(replica));
    const delta = this.delta(CausalContext.of([...this.mediaDots(url), dot]));
    delta.media.set(dotKey(dot.replica, dot.counter), url);
    return delta;
  }

  removeMedia(replica: string, url: string): Review {
    this.checkEditable();
    checkUrl(url);
    const dot = this.ctx.nextDot(checkReplica(replica));
    return this.delta(CausalContext.of([...this.mediaDots(url), dot]));
  }

  delete(replica: string): Review {
    if (this.erasedFlag) throw new ReviewGoneError("the review is erased");
    const delta = this.delta(CausalContext.of([this.ctx.nextDot(checkReplica(replica))]));
    delta.deletedFlag = true;
    return delta;
  }

  erase(replica: string): Review {
    const delta = this.delta(CausalContext.of([this.ctx.nextDot(checkReplica(replica))]));
    delta.erasedFlag = true;
    return delta;
  }

  /** The server's judgment (devices never send one: the hub refuses it). */
  moderate(seq: number, status: ModerationStatus): Review {
    if (!isInt(seq) || seq < 1) throw new RangeError(`a moderation sequence number is an integer ≥ 1, not ${seq}`);
    if (!STATUSES.includes(status)) throw new RangeError(`not a moderation status: ${status}`);
    const delta = this.delta(new CausalContext());
    delta.moderationValue = { seq, status, judged: this.ctx };
    return delta;
  }

  // -- join ----------------------------------------------------------------------------------------

  apply(delta: Review): void {
    const reviewId = joinId(this.reviewIdValue, delta.reviewIdValue, "id");
    const erased = this.erasedFlag || delta.erasedFlag;
    let product: string | null = null;
    let author: string | null = null;
    if (!erased) {
      product = joinId(this.productValue, delta.productValue, "product");
      author = joinId(this.authorValue, delta.authorValue, "author");
    }
    this.reviewIdValue = reviewId;
    this.productValue = product;
    this.authorValue = author;
    const mine = this.ctx;
    const theirs = delta.ctx;
    this.ctx = mine.merge(theirs);
    this.deletedFlag = this.deletedFlag || delta.deletedFlag;
    this.erasedFlag = erased;
    if (erased) {
      this.rating.clear();
      this.text.clear();
      this.media.clear();
      this.moderationValue = null;
      return;
    }
    joinDots(this.rating, mine, delta.rating, theirs);
    joinDots(this.text, mine, delta.text, theirs);
    joinDots(this.media, mine, delta.media, theirs);
    const other = delta.moderationValue;
    if (other !== null && (this.moderationValue === null || moderationKeyCmp(other, this.moderationValue) > 0)) {
      this.moderationValue = other;
    }
  }

  merge(other: Review): Review {
    const out = this.copy();
    out.apply(other);
    return out;
  }

  copy(): Review {
    const out = new Review();
    out.reviewIdValue = this.reviewIdValue;
    out.productValue = this.productValue;
    out.authorValue = this.authorValue;
    out.ctx = this.ctx;
    out.rating = new Map(this.rating);
    out.text = new Map(this.text);
    out.media = new Map(this.media);
    out.deletedFlag = this.deletedFlag;
    out.erasedFlag = this.erasedFlag;
    out.moderationValue = this.moderationValue;
    return out;
  }

  // -- codec, version 1 ------------------------------------------------------------------------------

  /** @internal */
  encodeState(): Record<string, unknown> {
    const table = new ReplicaTable();
    const media: unknown[] = [];
    for (const [key, url] of this.media) {
      const dot = keyDot(key);
      media.push(table.index(dot.replica), dot.counter, url);
    }
    const implied = new Set<DotKey>([...this.rating.keys(), ...this.text.keys(), ...this.media.keys()]);
    const encodeRegister = (entries: Register<unknown>): unknown[] => {
      const flat: unknown[] = [];
      for (const [key, [value, ts]] of entries) {
        const dot = keyDot(key);
        flat.push(table.index(dot.replica), dot.counter, value, ts.wallMs, ts.logical);
      }
      return flat;
    };
    const encodeCtx = (ctx: CausalContext, skip: ReadonlySet<DotKey>): number[] => encodePairs(ctx.vv, ctx.cloud, table, skip);
    const mod = this.moderationValue;
    const state: Record<string, unknown> = {
      id: [this.reviewIdValue, this.productValue, this.authorValue],
      rt: encodeRegister(this.rating),
      tx: encodeRegister(this.text),
      m: media,
      c: encodeCtx(this.ctx, implied),
      f: (this.deletedFlag ? 1 : 0) | (this.erasedFlag ? 2 : 0),
      mod: mod === null ? [] : [mod.seq, mod.status, encodeCtx(mod.judged, new Set())],
    };
    state.r = table.encoded();
    return state;
  }

  /** @internal */
  static decodeState(state: unknown): Review {
    const keys = ["c", "f", "id", "m", "mod", "r", "rt", "tx"];
    if (
      state === null ||
      typeof state !== "object" ||
      Array.isArray(state) ||
      state instanceof Uint8Array ||
      Object.keys(state).sort().join(",") !== keys.join(",")
    ) {
      throw new CodecError(`a review is a map with the keys ${JSON.stringify(keys)}`);
    }
    const s = state as Record<string, unknown>;
    const replicas = decodeTable(s.r);
    const review = new Review();
    const ident = needList(s.id, 3).map((x) => (x === null ? null : needStr(x, MAX_ID_LENGTH)));
    [review.reviewIdValue, review.productValue, review.authorValue] = ident as [string | null, string | null, string | null];
    const seen = new Set<DotKey>();
    const decodeRegister = <V>(raw: unknown, check: (x: unknown) => V): Register<V> => {
      const flat = needList(raw);
      if (flat.length % 5) throw new CodecError("register entries are flat 5-tuples");
      const out: Register<V> = new Map();
      for (let i = 0; i < flat.length; i += 5) {
        const replica = replicas[needIndex(flat[i], replicas.length)]!;
        const key = dotKey(replica, needInt(flat[i + 1], 1));
        if (seen.has(key)) throw new CodecError(`dot ${key} appears twice`);
        seen.add(key);
        const ts: Timestamp = { wallMs: needInt(flat[i + 3], 0), logical: needInt(flat[i + 4], 0), replica };
        out.set(key, [check(flat[i + 2]), ts]);
      }
      return out;
    };
    review.rating = decodeRegister(s.rt, (x) => needInt(x, 1, 5));
    review.text = decodeRegister(s.tx, (x) => needStr(x, MAX_TEXT_LENGTH, true));
    const media = needList(s.m);
    if (media.length % 3) throw new CodecError("media entries are flat (replica, counter, url) triples");
    for (let i = 0; i < media.length; i += 3) {
      const key = dotKey(replicas[needIndex(media[i], replicas.length)]!, needInt(media[i + 1], 1));
      if (seen.has(key)) throw new CodecError(`dot ${key} appears twice`);
      seen.add(key);
      review.media.set(key, needStr(media[i + 2], MAX_URL_LENGTH));
    }
    review.ctx = decodeCompactContext(s.c, replicas, seen);
    const flags = needInt(s.f, 0, 3);
    review.deletedFlag = (flags & 1) !== 0;
    review.erasedFlag = (flags & 2) !== 0;
    const mod = needList(s.mod);
    if (mod.length) {
      needList(mod, 3);
      if (!STATUSES.includes(mod[1] as ModerationStatus)) throw new CodecError(`unknown moderation status ${String(mod[1])}`);
      review.moderationValue = {
        seq: needInt(mod[0], 1),
        status: mod[1] as ModerationStatus,
        judged: decodeCompactContext(mod[2], replicas, new Set()),
      };
    }
    if (review.erasedFlag && (review.hasContent() || review.moderationValue || review.productValue || review.authorValue)) {
      throw new CodecError("an erased review holds nothing but its id, flags and context");
    }
    return review;
  }
}

function decodeCompactContext(raw: unknown, replicas: string[], implied: ReadonlySet<DotKey>): CausalContext {
  const [vv, cloud] = decodePairs(raw, replicas);
  const dots = new Set(implied);
  for (const dot of cloud) dots.add(dotKey(dot.replica, dot.counter));
  return new CausalContext(vv, dots).compact();
}
