/**
 * Offline documents: a local cart (or review) replica with the hub's merge rules, edited at once and
 * converging through the hub (docs/protocol.md, Carts and Reviews protocols).
 *
 * Every edit is a delta made by this device's replica id; the new state and the delta (with its
 * mutation id and the call that made it) are **persisted before anything is shipped** (write-ahead), so
 * a device killed with queued edits delivers them after a restart, once (mutation ids make a resent push
 * a `duplicate`). When the client is online the document subscribes to its channel, `sync`s (sends its
 * context, merges what it lacks) and pushes its queue in order; an `ack` drops a delta from the queue.
 * Over SSE or long-poll the same goes through `POST …/sync`.
 *
 * A refused push (a cart or review rule) is surfaced in `refused`, dropped, and the replica is rebuilt
 * as the protocol says: the hub's state taken whole, the still-queued edits made again under a new
 * replica id (a refused delta stays in the old replica's state, so that id is never written again).
 */

import type { SyncHubClient, Transport } from "./client.js";
import { Cart, type Line, type RejectedEdit } from "./crdt/cart.js";
import { decodeCart, decodeReview, fromHex, toDict, toHex, toMsgpack } from "./crdt/codec.js";
import { decodeContext, encodeContext } from "./crdt/context.js";
import { HybridClock } from "./crdt/hlc.js";
import { Review, type ReviewValue } from "./crdt/review.js";
import type { Storage } from "./storage.js";

export type Call = [string, ...unknown[]];

export interface QueuedEdit {
  mutationId: string;
  call: Call;
  delta: string; // hex MessagePack
}

export interface RefusedEdit {
  mutationId: string;
  call: Call;
  code: string;
  message: string;
}

interface Persisted {
  replica: string;
  seq: number;
  state: string;
  queue: QueuedEdit[];
  refused: RefusedEdit[];
  version: number;
  status: string | null;
}

export function newReplicaId(): string {
  const bytes = new Uint8Array(8);
  globalThis.crypto.getRandomValues(bytes);
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

type Doc = Cart | Review;

abstract class Document<D extends Doc> {
  protected state!: D;
  replica = "";
  protected seq = 0;
  queue: QueuedEdit[] = [];
  refused: RefusedEdit[] = [];
  /** The hub's version of the document, as last heard. */
  version = 0;
  /** The hub's status (`open`/`checked_out` for a cart, the review's status), as last heard. */
  hubStatus: string | null = null;
  protected clock!: HybridClock;
  private readonly listeners = new Set<() => void>();
  private flushing: Promise<void> | null = null;
  private unsubscribe: (() => void) | null = null;
  private offOpen: (() => void) | null = null;
  private persisting: Promise<void> = Promise.resolve();

  protected constructor(
    readonly client: SyncHubClient,
    readonly id: string,
    protected readonly storage: Storage,
    protected readonly kind: "cart" | "review",
  ) {}

  protected abstract empty(): D;
  protected abstract decode(raw: unknown): D;
  protected abstract run(state: D, call: Call): D;

  get storageKey(): string {
    return `${this.kind}:${this.id}`;
  }

  protected async load(): Promise<void> {
    const raw = await this.storage.get(this.storageKey);
    if (raw === null) {
      this.state = this.empty();
      this.replica = newReplicaId();
      await this.persist();
    } else {
      const saved = JSON.parse(raw) as Persisted;
      this.state = this.decode(fromHex(saved.state));
      this.replica = saved.replica;
      this.seq = saved.seq;
      this.queue = saved.queue;
      this.refused = saved.refused;
      this.version = saved.version;
      this.hubStatus = saved.status;
    }
    this.clock = new HybridClock(this.replica);
    this.observeClock();
  }

  private observeClock(): void {
    const ts = this.state.maxTimestamp();
    if (ts !== null) this.clock.observe(ts);
  }

  /** Write the whole document (state, queue) to storage; resolves once durable. */
  protected persist(): Promise<void> {
    const body: Persisted = {
      replica: this.replica,
      seq: this.seq,
      state: toHex(toMsgpack(this.state)),
      queue: this.queue,
      refused: this.refused,
      version: this.version,
      status: this.hubStatus,
    };
    const text = JSON.stringify(body);
    this.persisting = this.persisting.then(() => this.storage.set(this.storageKey, text));
    return this.persisting;
  }

  /** Call `fn` whenever the document changes (an edit, a merge, an ack, a refusal). */
  onChange(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  protected changed(): void {
    for (const fn of this.listeners) fn();
  }

  /** Edits not yet acknowledged by the hub. */
  get pending(): number {
    return this.queue.length;
  }

  /** Make an edit: applied locally, persisted, then shipped when online. */
  protected async edit(call: Call): Promise<void> {
    const delta = this.run(this.state, call);
    this.state.apply(delta as never);
    this.seq += 1;
    this.queue.push({ mutationId: `${this.replica}-${this.seq}`, call, delta: toHex(toMsgpack(delta)) });
    await this.persist(); // write-ahead: durable before it is shipped
    this.changed();
    if (this.client.transport !== null) void this.flush();
  }

  /** Start following the hub: on every (re)connection, sync then push the queue. */
  attach(): void {
    const channel = `${this.kind === "cart" ? "cart" : "review"}:${this.id}`;
    if (this.kind === "cart") {
      const sub = this.client.subscribe(channel, {
        onEvent: (event) => {
          const data = event.data as Record<string, unknown>;
          if (data.delta !== undefined && data.delta !== null) void this.merge(this.decode(data.delta));
          if (typeof data.version === "number") this.version = Math.max(this.version, data.version);
          if (data.type === "cart.closed") this.hubStatus = "checked_out";
        },
        onResync: () => this.flush(),
      });
      this.unsubscribe = () => sub.unsubscribe();
    }
    this.offOpen = this.client.on("open", () => void this.flush());
    if (this.client.transport !== null) void this.flush();
  }

  detach(): void {
    this.unsubscribe?.();
    this.offOpen?.();
  }

  protected async merge(remote: D): Promise<void> {
    this.state.apply(remote as never);
    this.observeClock();
    await this.persist();
    this.changed();
  }

  /** Sync and push everything queued (once at a time); resolves when done or the connection dropped. */
  flush(): Promise<void> {
    if (this.flushing === null) {
      this.flushing = this.flushOnce().finally(() => {
        this.flushing = null;
      });
    }
    return this.flushing;
  }

  /** Resolves once every queued edit has been acknowledged (or refused). */
  async settled(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.queue.length > 0) {
      if (Date.now() > deadline) throw new Error(`${this.queue.length} edits still unacknowledged`);
      await this.flush();
      if (this.queue.length > 0) await new Promise((r) => setTimeout(r, 100));
    }
  }

  private async flushOnce(): Promise<void> {
    const transport: Transport | null = this.client.transport;
    if (transport === null) return;
    if (transport === "websocket") await this.flushWs();
    else await this.flushRest();
  }

  private wire(delta: string): unknown {
    const bytes = fromHex(delta);
    return this.client.options.format === "msgpack" ? bytes : toDict(this.decode(bytes));
  }

  private async flushWs(): Promise<void> {
    const reply = await this.client.request({ type: "sync", [this.kind]: this.id, context: encodeContext(this.state.context) });
    if (reply.type !== "synced") return;
    this.noteHub(reply);
    if (this.kind === "cart") this.client.resubscribe(`cart:${this.id}`);
    if (reply.delta !== null && reply.delta !== undefined) await this.merge(this.decode(reply.delta));
    for (const item of [...this.queue]) {
      const answer = await this.client.request({ type: "push", [this.kind]: this.id, mutation_id: item.mutationId, delta: this.wire(item.delta) });
      if (answer.type === "ack") {
        this.noteHub(answer);
        await this.acked(item.mutationId);
      } else if (answer.type === "error" && answer.mutation_id === item.mutationId) {
        await this.refuse(item, String(answer.code), String(answer.message));
        return;
      } else {
        return; // disconnected, or a transient error (store_unavailable): the next flush retries
      }
    }
  }

  private async flushRest(): Promise<void> {
    const path = `/api/v1/${this.kind}s/${encodeURIComponent(this.id)}/sync`;
    const pushes = this.queue.slice(0, 100).map((item) => ({ mutation_id: item.mutationId, delta: toDict(this.decode(fromHex(item.delta))) }));
    const body = await this.client.rest<Record<string, unknown>>("POST", path, { context: encodeContext(this.state.context), pushes });
    if (typeof body.version === "number") this.version = Math.max(this.version, body.version);
    const returned = body.delta ?? body.state;
    if (returned !== null && returned !== undefined) await this.merge(this.decode(returned));
    for (const ack of (body.acks as Record<string, unknown>[]) ?? []) {
      const item = this.queue.find((q) => q.mutationId === ack.mutation_id);
      if (!item) continue;
      if (ack.status === "refused") {
        await this.refuse(item, String(ack.code), String(ack.message));
        return;
      }
      await this.acked(item.mutationId);
    }
    void decodeContext; // (the reply's context is the hub's: what this device holds beyond it is queued)
  }

  private noteHub(reply: Record<string, unknown>): void {
    if (typeof reply.version === "number") this.version = Math.max(this.version, reply.version);
    const status = reply.review_status ?? reply.status;
    if (typeof status === "string" && status !== "applied" && status !== "duplicate") this.hubStatus = status;
  }

  private async acked(mutationId: string): Promise<void> {
    this.queue = this.queue.filter((q) => q.mutationId !== mutationId);
    await this.persist();
    this.changed();
  }

  /** A refused push: surface it, then rebuild from the hub's state under a new replica id. */
  private async refuse(item: QueuedEdit, code: string, message: string): Promise<void> {
    this.refused.push({ mutationId: item.mutationId, call: item.call, code, message });
    const rest = this.queue.filter((q) => q.mutationId !== item.mutationId);
    let base: D = this.empty();
    if (this.client.transport === "websocket") {
      const reply = await this.client.request({ type: "sync", [this.kind]: this.id, context: null });
      if (reply.type === "synced" && reply.delta) base = this.decode(reply.delta);
    } else {
      const body = await this.client.rest<Record<string, unknown>>("POST", `/api/v1/${this.kind}s/${encodeURIComponent(this.id)}/sync`, { context: null, pushes: [] });
      const returned = body.delta ?? body.state;
      if (returned) base = this.decode(returned);
    }
    this.state = base;
    this.replica = newReplicaId();
    this.seq = 0;
    this.clock = new HybridClock(this.replica);
    this.observeClock();
    this.queue = [];
    for (const old of rest) {
      try {
        const call = this.remake(old.call);
        const delta = this.run(this.state, call);
        this.state.apply(delta as never);
        this.seq += 1;
        this.queue.push({ mutationId: `${this.replica}-${this.seq}`, call, delta: toHex(toMsgpack(delta)) });
      } catch {
        // the edit no longer applies (a closed cart): dropped
      }
    }
    await this.persist();
    this.changed();
  }

  /** A queued call made again by the new replica (timestamps from its own clock). */
  protected abstract remake(call: Call): Call;
}

/** A cart replica on this device (see crdt/cart.py for the merge rules). */
export class CartDocument extends Document<Cart> {
  static async open(client: SyncHubClient, cartId: string, storage: Storage): Promise<CartDocument> {
    const doc = new CartDocument(client, cartId, storage, "cart");
    await doc.load();
    doc.attach();
    return doc;
  }

  protected empty(): Cart {
    return Cart.new();
  }

  protected decode(raw: unknown): Cart {
    return decodeCart(raw);
  }

  protected run(state: Cart, call: Call): Cart {
    const [name, ...a] = call as [string, string, number, number, number];
    if (name === "add") return state.add(this.replica, a[0], a[1]);
    if (name === "set") return state.set(this.replica, a[0], a[1], { wallMs: a[2], logical: a[3], replica: this.replica });
    if (name === "remove") return state.remove(this.replica, a[0]);
    throw new Error(`unknown cart edit ${name}`);
  }

  protected remake(call: Call): Call {
    if (call[0] !== "set") return call;
    const ts = this.clock.now();
    return ["set", call[1], call[2], ts.wallMs, ts.logical];
  }

  /** The cart's replica (read only: edit through the methods below). */
  get cart(): Cart {
    return this.state;
  }

  add(sku: string, amount = 1): Promise<void> {
    return this.edit(["add", sku, amount]);
  }

  set(sku: string, quantity: number): Promise<void> {
    const ts = this.clock.now();
    return this.edit(["set", sku, quantity, ts.wallMs, ts.logical]);
  }

  remove(sku: string): Promise<void> {
    return this.edit(["remove", sku]);
  }

  value(): Record<string, number> {
    return this.state.value();
  }

  lines(): Map<string, Line> {
    return this.state.lines();
  }

  conflicts(): Record<string, number[]> {
    return this.state.conflicts();
  }

  /** Edits a checkout refused (the cart's rule), as opposed to `refused` (pushes the hub refused). */
  rejectedEdits(): RejectedEdit[] {
    return this.state.rejectedEdits();
  }

  get closed(): boolean {
    return this.state.closed;
  }
}

/** A review replica on this device (see crdt/review.py). */
export class ReviewDocument extends Document<Review> {
  static async open(client: SyncHubClient, reviewId: string, storage: Storage): Promise<ReviewDocument> {
    const doc = new ReviewDocument(client, reviewId, storage, "review");
    await doc.load();
    doc.attach();
    return doc;
  }

  protected empty(): Review {
    return Review.new();
  }

  protected decode(raw: unknown): Review {
    return decodeReview(raw);
  }

  protected run(state: Review, call: Call): Review {
    const [name, ...a] = call as [string, ...any[]];
    switch (name) {
      case "create":
        return state.create(this.id, a[0], a[1]);
      case "set_rating":
        return state.setRating(this.replica, a[0], { wallMs: a[1], logical: a[2], replica: this.replica });
      case "set_text":
        return state.setText(this.replica, a[0], { wallMs: a[1], logical: a[2], replica: this.replica });
      case "add_media":
        return state.addMedia(this.replica, a[0]);
      case "remove_media":
        return state.removeMedia(this.replica, a[0]);
      case "delete":
        return state.delete(this.replica);
    }
    throw new Error(`unknown review edit ${name}`);
  }

  protected remake(call: Call): Call {
    if (call[0] !== "set_rating" && call[0] !== "set_text") return call;
    const ts = this.clock.now();
    return [call[0], call[1], ts.wallMs, ts.logical];
  }

  get review(): Review {
    return this.state;
  }

  /** Name the review: the product and the author (the token's `sub`). */
  create(product: string, author: string): Promise<void> {
    return this.edit(["create", product, author]);
  }

  setRating(rating: number): Promise<void> {
    const ts = this.clock.now();
    return this.edit(["set_rating", rating, ts.wallMs, ts.logical]);
  }

  setText(text: string): Promise<void> {
    const ts = this.clock.now();
    return this.edit(["set_text", text, ts.wallMs, ts.logical]);
  }

  addMedia(mediaId: string): Promise<void> {
    return this.edit(["add_media", mediaId]);
  }

  removeMedia(mediaId: string): Promise<void> {
    return this.edit(["remove_media", mediaId]);
  }

  delete(): Promise<void> {
    return this.edit(["delete"]);
  }

  value(): ReviewValue | null {
    return this.state.value();
  }
}
