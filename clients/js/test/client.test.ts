/** The client's connection rules with a fake hub: resume positions, close codes, backoff, documents. */

import { deepStrictEqual, ok, strictEqual } from "node:assert";
import { test } from "node:test";

import {
  AsyncStorageAdapter,
  CartDocument,
  type HubEvent,
  fullJitter,
  isAfter,
  MemoryStorage,
  SyncHubClient,
  type WebSocketConstructor,
  toDict,
  Cart,
} from "../src/index.js";
import { FakeWebSocket, type FetchCall, fakeFetch, until } from "./fakes.js";

function client(options: Partial<ConstructorParameters<typeof SyncHubClient>[0]> = {}, calls: FetchCall[] = []): SyncHubClient {
  FakeWebSocket.reset();
  return new SyncHubClient({
    url: "http://hub.test",
    WebSocket: FakeWebSocket as unknown as WebSocketConstructor,
    fetch: fakeFetch(calls),
    backoff: { baseMs: 1, maxMs: 5 },
    heartbeatMs: 60_000,
    ...options,
  });
}

function memoryAsyncStorage() {
  const items = new Map<string, string>();
  return {
    getItem: async (key: string) => items.get(key) ?? null,
    setItem: async (key: string, value: string) => void items.set(key, value),
    removeItem: async (key: string) => void items.delete(key),
  };
}

const event = (position: string, n: number): Record<string, unknown> & HubEvent => ({ type: "event", channel: "inventory:eu", position, data: { n } });

test("full jitter stays within [0, min(max, base·2^n))", () => {
  for (let attempt = 0; attempt < 12; attempt++) {
    strictEqual(fullJitter(attempt, { baseMs: 100, maxMs: 3000 }, () => 0), 0);
    strictEqual(fullJitter(attempt, { baseMs: 100, maxMs: 3000 }, () => 0.999999), Math.min(3000, 100 * 2 ** attempt) - 1);
  }
});

test("positions compare by offset within an epoch; another epoch is always new", () => {
  ok(isAfter("e1:5", "e1:4"));
  ok(!isAfter("e1:4", "e1:4"));
  ok(!isAfter("e1:3", "e1:4"));
  ok(isAfter("e2:1", "e1:9"));
});

test("a subscription resumes from its last event after a drop, and the replayed overlap is dropped", async () => {
  const c = client();
  const seen: number[] = [];
  c.subscribe("inventory:eu", { onEvent: (e) => seen.push(e.data.n as number) });
  c.connect();
  await until(() => FakeWebSocket.instances.length === 1, "a WebSocket");
  const first = FakeWebSocket.last();
  first.accept();
  deepStrictEqual(first.bare("subscribe"), [{ type: "subscribe", channel: "inventory:eu" }]);
  first.push({ type: "subscribed", channel: "inventory:eu", position: "e:4" });
  first.push(event("e:5", 5));
  first.drop(1006);
  await until(() => FakeWebSocket.instances.length === 2, "a second WebSocket");
  const second = FakeWebSocket.last();
  second.accept();
  deepStrictEqual(second.bare("subscribe"), [{ type: "subscribe", channel: "inventory:eu", since: "e:5" }]);
  second.push(event("e:5", 5)); // at-least-once overlap
  second.push(event("e:6", 6));
  deepStrictEqual(seen, [5, 6]);
  strictEqual(c.position("inventory:eu"), "e:6");
  await c.close();
});

test("1001 (going away) reconnects at once; other codes wait their backoff", async () => {
  const c = client({ backoff: { baseMs: 60_000, maxMs: 60_000 }, random: () => 0.99 });
  c.connect();
  await until(() => FakeWebSocket.instances.length === 1, "a WebSocket");
  FakeWebSocket.last().accept();
  FakeWebSocket.last().drop(1001);
  await until(() => FakeWebSocket.instances.length === 2, "an immediate reconnect after 1001");
  FakeWebSocket.last().accept();
  FakeWebSocket.last().drop(1011);
  await new Promise((r) => setTimeout(r, 200));
  strictEqual(FakeWebSocket.instances.length, 2, "1011 backs off (up to a minute here)");
  await c.close();
  strictEqual(c.state, "stopped");
});

test("4102 (token expired) asks the app for a fresh token and reconnects with it", async () => {
  const calls: FetchCall[] = [];
  let fresh = 0;
  const c = client({ token: "old", refreshToken: () => `new-${++fresh}` }, calls);
  c.connect();
  await until(() => FakeWebSocket.instances.length === 1, "a WebSocket");
  ok(FakeWebSocket.last().url.includes("?ticket="), "a token goes as a ticket, never in the URL");
  FakeWebSocket.last().accept();
  FakeWebSocket.last().drop(4102);
  await until(() => FakeWebSocket.instances.length === 2, "a reconnect");
  const tickets = calls.filter((call) => call.url.endsWith("/realtime/tickets")).map((call) => call.authorization);
  deepStrictEqual(tickets, ["Bearer old", "Bearer new-1"]);
  await c.close();
});

test("4000-4099 stop the client and report the code", async () => {
  const c = client();
  const errors: string[] = [];
  c.on("error", (e) => errors.push((e as { code?: string }).code ?? e.message));
  c.connect();
  await until(() => FakeWebSocket.instances.length === 1, "a WebSocket");
  FakeWebSocket.last().accept();
  FakeWebSocket.last().drop(4001, "unauthorized");
  await until(() => c.state === "stopped", "the client to stop");
  deepStrictEqual(errors, ["close_4001"]);
  await new Promise((r) => setTimeout(r, 50));
  strictEqual(FakeWebSocket.instances.length, 1);
  await c.close();
});

test("a resync at subscribe hands the channel to the app, then subscribes again from its position", async () => {
  const c = client();
  const resyncs: string[] = [];
  c.subscribe("inventory:eu", { since: "old:3", onEvent: () => undefined, onResync: (r) => void resyncs.push(r.reason) });
  c.connect();
  await until(() => FakeWebSocket.instances.length === 1, "a WebSocket");
  const ws = FakeWebSocket.last();
  ws.accept();
  ws.push({ type: "resync", channel: "inventory:eu", reason: "position_expired", position: "new:9", snapshot: "/api/v1/inventory?region=eu" });
  await until(() => ws.frames("subscribe").length === 2, "a second subscribe");
  deepStrictEqual(ws.bare("subscribe")[1], { type: "subscribe", channel: "inventory:eu", since: "new:9" });
  deepStrictEqual(resyncs, ["position_expired"]);
  await c.close();
});

test("a cart edit is persisted before it is shipped, pushed on connect, and leaves the queue on its ack", async () => {
  const storage = new MemoryStorage();
  const c = client({ token: "t" });
  const doc = await CartDocument.open(c, "5a0f9abd-0000-4000-8000-000000000001", storage);
  await doc.add("TEA-1", 2);
  const saved = JSON.parse((await storage.get("cart:5a0f9abd-0000-4000-8000-000000000001"))!);
  strictEqual(saved.queue.length, 1, "queued in storage while offline");
  c.connect();
  await until(() => FakeWebSocket.instances.length === 1, "a WebSocket");
  const ws = FakeWebSocket.last();
  ws.accept();
  await until(() => ws.frames("sync").length === 1, "a sync");
  const sync = ws.frames("sync")[0]!;
  deepStrictEqual(sync.context, { vv: { [doc.replica]: 1 }, cloud: [] });
  ws.push({ type: "synced", id: sync.id, cart: sync.cart, version: 0, status: "open", delta: null, context: { vv: {}, cloud: [] } });
  await until(() => ws.frames("push").length === 1, "a push");
  const push = ws.frames("push")[0]!;
  strictEqual(push.mutation_id, `${doc.replica}-1`);
  deepStrictEqual(push.delta, toDict(Cart.new().add(doc.replica, "TEA-1", 2)));
  ws.push({ type: "ack", id: push.id, cart: push.cart, mutation_id: push.mutation_id, status: "applied", version: 1 });
  await until(() => doc.pending === 0, "the ack");
  strictEqual(JSON.parse((await storage.get("cart:5a0f9abd-0000-4000-8000-000000000001"))!).queue.length, 0);
  strictEqual(doc.version, 1);
  await c.close();
});

test("a refused push is reported, and the replica rebuilt under a new id with the other edits made again", async () => {
  const c = client({ token: "t" });
  const doc = await CartDocument.open(c, "5a0f9abd-0000-4000-8000-000000000002", new AsyncStorageAdapter(memoryAsyncStorage()));
  await doc.add("NOPE", 1);
  await doc.add("TEA-1", 3);
  const oldReplica = doc.replica;
  c.connect();
  await until(() => FakeWebSocket.instances.length === 1, "a WebSocket");
  const ws = FakeWebSocket.last();
  ws.accept();
  await until(() => ws.frames("sync").length === 1, "a sync");
  const sync = ws.frames("sync")[0]!;
  ws.push({ type: "synced", id: sync.id, cart: sync.cart, version: 0, status: "open", delta: null, context: { vv: {}, cloud: [] } });
  await until(() => ws.frames("push").length === 1, "a push");
  const push = ws.frames("push")[0]!;
  ws.push({ type: "error", id: push.id, code: "unknown_sku", message: "not in the catalog: NOPE", cart: push.cart, mutation_id: push.mutation_id });
  await until(() => ws.frames("sync").length === 2, "the rebuild's sync");
  const rebuild = ws.frames("sync")[1]!;
  strictEqual(rebuild.context, null);
  ws.push({ type: "synced", id: rebuild.id, cart: rebuild.cart, version: 0, status: "open", delta: null, context: { vv: {}, cloud: [] } });
  await until(() => doc.refused.length === 1 && doc.replica !== oldReplica, "the rebuild");
  deepStrictEqual(doc.refused.map((r) => [r.code, r.call]), [["unknown_sku", ["add", "NOPE", 1]]]);
  deepStrictEqual(doc.value(), { "TEA-1": 3 });
  deepStrictEqual(doc.queue.map((q) => [q.mutationId, q.call]), [[`${doc.replica}-1`, ["add", "TEA-1", 3]]]);
  await c.close();
});

test("a replay too large for the hub's send buffer (4101 before any event, twice) resyncs instead of looping", async () => {
  const c = client();
  const resyncs: string[] = [];
  c.subscribe("inventory:eu", { since: "e:1", onEvent: () => undefined, onResync: (r) => (resyncs.push(r.reason), "e:5000") });
  c.connect();
  for (let i = 1; i <= 2; i++) {
    await until(() => FakeWebSocket.instances.length === i, `connection ${i}`);
    FakeWebSocket.last().accept();
    deepStrictEqual(FakeWebSocket.last().frames("subscribe")[0]!.since, "e:1");
    FakeWebSocket.last().drop(4101, "slow consumer");
  }
  await until(() => FakeWebSocket.instances.length === 3, "connection 3");
  FakeWebSocket.last().accept();
  deepStrictEqual(resyncs, ["replay_too_large"]);
  deepStrictEqual(FakeWebSocket.last().bare("subscribe")[0], { type: "subscribe", channel: "inventory:eu", since: "e:5000" });
  await c.close();
});

test("after falling back, the client tries the WebSocket again later", async () => {
  const calls: FetchCall[] = [];
  let sse = 0;
  const stream = () => new Response(new ReadableStream({ start: (c) => c.enqueue(new TextEncoder().encode('event: ready\nid: e:1\ndata: {"position": "e:1", "channels": ["inventory:eu"]}\n\n')) }), { headers: { "Content-Type": "text/event-stream" } });
  FakeWebSocket.reset();
  const c = new SyncHubClient({
    url: "http://hub.test",
    WebSocket: FakeWebSocket as unknown as WebSocketConstructor,
    fetch: fakeFetch(calls, (url) => (url.includes("/api/v1/sse") ? (sse++, stream()) : null)),
    backoff: { baseMs: 1, maxMs: 5 },
    retryPreferredMs: 100,
  });
  c.subscribe("inventory:eu", { onEvent: () => undefined });
  c.connect();
  for (let i = 1; i <= 2; i++) {
    await until(() => FakeWebSocket.instances.length === i, `attempt ${i}`);
    FakeWebSocket.last().drop(1006); // the upgrade never succeeds
  }
  await until(() => c.transport === "sse", "the SSE fallback");
  await until(() => FakeWebSocket.instances.length === 3, "a WebSocket attempt again");
  FakeWebSocket.last().accept();
  await until(() => c.transport === "websocket", "back on the WebSocket");
  strictEqual(sse, 1);
  await c.close();
});

test("a WebSocket that never opens is given up after openTimeoutMs and tried again", async () => {
  const c = client({ openTimeoutMs: 50 });
  c.connect();
  await until(() => FakeWebSocket.instances.length === 1, "a first attempt");
  // The first connection hangs half-open: never accepted, never closed.
  await until(() => FakeWebSocket.instances.length === 2, "a second attempt after the timeout");
  FakeWebSocket.last().accept();
  await until(() => c.transport === "websocket", "open");
  await c.close();
});

test("a subscribe the hub cannot make now (broker_unavailable) is asked again", async () => {
  const c = client();
  const errors: string[] = [];
  c.on("error", (e) => errors.push(e.message));
  c.subscribe("inventory:eu", { onEvent: () => undefined });
  c.connect();
  await until(() => FakeWebSocket.instances.length === 1, "a WebSocket");
  const ws = FakeWebSocket.last();
  ws.accept();
  const first = ws.frames("subscribe")[0]!;
  ws.push({ type: "error", id: first.id, code: "broker_unavailable", message: "retry" });
  await until(() => ws.frames("subscribe").length === 2, "a second subscribe");
  const second = ws.frames("subscribe")[1]!;
  ws.push({ type: "subscribed", id: second.id, channel: "inventory:eu", position: "e:1" });
  ws.push({ type: "error", id: "nobody", code: "channel_forbidden", message: "x" });
  strictEqual(c.position("inventory:eu"), "e:1");
  deepStrictEqual(errors, []);
  await c.close();
});

test("with refreshToken, a WebSocket's token is refreshed in band before it expires", async () => {
  let fresh = 0;
  const c = client({ token: "first", refreshToken: () => `fresh-${++fresh}`, refreshMarginMs: 30_000 });
  c.connect();
  await until(() => FakeWebSocket.instances.length === 1, "a WebSocket");
  const ws = FakeWebSocket.last();
  ws.accept();
  await until(() => ws.frames("session").length === 1, "a session request");
  ws.push({ type: "session", id: ws.frames("session")[0]!.id, sub: "alice", roles: ["customer"], ttl: 20, grace: 25 });
  await until(() => ws.frames("refresh").length === 1, "a refresh (20 s left < the 30 s margin)");
  const refresh = ws.frames("refresh")[0]!;
  strictEqual(refresh.token, "fresh-1");
  ws.push({ type: "refreshed", id: refresh.id, ttl: 3600 });
  await new Promise((r) => setTimeout(r, 50));
  strictEqual(ws.frames("refresh").length, 1);
  strictEqual(FakeWebSocket.instances.length, 1, "no reconnect");
  await c.close();
});
