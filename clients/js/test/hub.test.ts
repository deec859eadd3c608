/**
 * The SDK against a real hub (started by tests/test_client_js.py, which passes its URL and tokens in
 * SYNCHUB_* variables): inventory over WebSocket through a disconnect, the SSE and long-poll fallbacks.
 */

import { deepStrictEqual, ok, strictEqual } from "node:assert";
import { test } from "node:test";

import { InventoryFeed, type StockChange, SyncHubClient } from "../src/index.js";
import { CuttableProxy, env, NodeWebSocket, NoUpgradeProxy, setStock, until } from "./helpers.js";

const skip = !env.url && "needs a hub (tests/test_client_js.py starts one)";

function follow(client: SyncHubClient): { feed: InventoryFeed; changes: StockChange[]; versions: () => number[] } {
  const changes: StockChange[] = [];
  const feed = new InventoryFeed(client, { region: env.region, onChange: (c) => changes.push(c) });
  const versions = () =>
    changes.filter((c) => c.source === "event" && c.level.product_id === env.product && c.level.warehouse_id === env.warehouse).map((c) => c.level.version);
  return { feed, changes, versions };
}

function consecutive(versions: number[]): void {
  for (let i = 1; i < versions.length; i++) strictEqual(versions[i], versions[i - 1]! + 1, `versions ${JSON.stringify(versions)}: no gap, no duplicate`);
}

for (const format of ["json", "msgpack"] as const) {
  test(`inventory over a ${format} WebSocket: snapshot, live, and every change made while the connection was cut`, { skip }, async () => {
    const proxy = new CuttableProxy(new URL(env.url));
    await proxy.start();
    const client = new SyncHubClient({ url: proxy.url, WebSocket: NodeWebSocket, format, backoff: { baseMs: 50, maxMs: 300 } });
    const { feed, versions } = follow(client);
    await feed.start();
    client.connect();
    await until(() => client.transport === "websocket", "the WebSocket");
    const start = feed.level(env.product, env.warehouse)!.version;
    for (const n of [10, 11, 12]) await setStock(n);
    await until(() => versions().length >= 3, "three live changes");
    await proxy.cut();
    await until(() => client.transport === null, "the client to notice the cut");
    for (const n of [13, 14, 15, 16]) await setStock(n);
    await proxy.restore();
    await until(() => feed.level(env.product, env.warehouse)!.version === start + 7, "the changes made while cut");
    for (const n of [17]) await setStock(n);
    await until(() => versions().length >= 8, "a live change after the resume");
    await client.close();
    await proxy.cut();
    deepStrictEqual(versions(), [1, 2, 3, 4, 5, 6, 7, 8].map((i) => start + i));
    consecutive(versions());
    strictEqual(client.state, "stopped");
    strictEqual(feed.level(env.product, env.warehouse)!.on_hand, 17);
  });
}

test("a proxy that refuses WebSocket upgrades: the client falls back to SSE and still receives everything", { skip }, async () => {
  const proxy = new NoUpgradeProxy(new URL(env.url));
  await proxy.start();
  const client = new SyncHubClient({ url: proxy.url, WebSocket: NodeWebSocket, backoff: { baseMs: 20, maxMs: 100 } });
  const opened: string[] = [];
  client.on("open", (t) => opened.push(t));
  const { feed, versions } = follow(client);
  await feed.start();
  client.connect();
  await until(() => client.transport === "sse", "the SSE fallback");
  ok(proxy.upgradesRefused >= 2, `upgrades refused: ${proxy.upgradesRefused}`);
  const start = feed.level(env.product, env.warehouse)!.version;
  for (const n of [20, 21, 22]) await setStock(n);
  await until(() => feed.level(env.product, env.warehouse)!.version === start + 3, "the changes over SSE");
  client.restart(); // a dropped stream resumes from its Last-Event-ID
  await until(() => client.transport === "sse", "SSE again");
  await setStock(23);
  await until(() => feed.level(env.product, env.warehouse)!.version === start + 4, "the change after the resume");
  await client.close();
  await proxy.stop();
  deepStrictEqual(opened.filter((t) => t !== "sse"), []);
  consecutive(versions());
  deepStrictEqual(versions().slice(-4), [1, 2, 3, 4].map((i) => start + i));
});

test("long-poll, the last fallback: events in order from the cursor, through a restart", { skip }, async () => {
  const client = new SyncHubClient({ url: env.url, transports: ["poll"], pollTimeoutS: 2, backoff: { baseMs: 20, maxMs: 100 } });
  const { feed, versions } = follow(client);
  await feed.start();
  client.connect();
  await until(() => client.transport === "poll", "the first poll");
  const start = feed.level(env.product, env.warehouse)!.version;
  for (const n of [30, 31]) await setStock(n);
  await until(() => feed.level(env.product, env.warehouse)!.version === start + 2, "the changes over long-poll");
  client.restart();
  await setStock(32);
  await until(() => feed.level(env.product, env.warehouse)!.version === start + 3, "the change after the restart");
  await client.close();
  consecutive(versions());
  strictEqual(versions().at(-1), start + 3);
});

test("a client that fell further behind than the hub's send-buffer message limit catches up from the replay, every version once", { skip }, async () => {
  const proxy = new CuttableProxy(new URL(env.url));
  await proxy.start();
  const client = new SyncHubClient({ url: proxy.url, WebSocket: NodeWebSocket, backoff: { baseMs: 20, maxMs: 200 } });
  const { feed, changes } = follow(client);
  await feed.start();
  client.connect();
  await until(() => client.transport === "websocket", "the WebSocket");
  const start = feed.level(env.product, env.warehouse)!.version;
  await proxy.cut();
  await until(() => client.transport === null, "the client to notice the cut");
  const before = changes.length;
  // 2,100 changes: more than the 2,000 messages a connection's send buffer holds. The hub writes a
  // resume's replay whole (within its 4 MiB), so the client catches up without a resync; a replay past
  // that (two 4101s at one position) makes the SDK resync: the fake-hub suite (client.test.ts) covers it.
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < 2100) {
        next += 1;
        await setStock(100 + (next % 50));
      }
    }),
  );
  await proxy.restore();
  await until(() => feed.level(env.product, env.warehouse)!.version === start + 2100, "the newest row", 60_000);
  await setStock(7);
  await until(() => feed.level(env.product, env.warehouse)!.on_hand === 7, "live again after the replay");
  await client.close();
  await proxy.cut();
  ok(!changes.slice(before).some((c) => c.source === "snapshot"), "caught up from the replay, not a snapshot");
  const mine = changes
    .slice(before)
    .filter((c) => c.level.product_id === env.product && c.level.warehouse_id === env.warehouse)
    .map((c) => c.level.version);
  const expected = Array.from({ length: 2101 }, (_, i) => start + 1 + i); // the 2,100, then the live one
  deepStrictEqual(mine, expected, "every version once, in order");
});

test("a token about to expire (40 s left, refreshed 39 s before) is refreshed in band: one connection, no reconnect", { skip }, async () => {
  const client = new SyncHubClient({
    url: env.url,
    token: env.shortToken,
    refreshToken: () => env.customer,
    refreshMarginMs: 39_000, // the short token lives 40 s: refreshed within a second or so of connecting
    WebSocket: NodeWebSocket,
  });
  let opens = 0;
  client.on("open", () => (opens += 1));
  client.subscribe("user:alice", { onEvent: () => undefined });
  client.connect();
  await until(() => client.transport === "websocket", "the WebSocket");
  let ttl = 0;
  const deadline = Date.now() + 20_000;
  while (ttl <= 60 && Date.now() < deadline) {
    ttl = Number((await client.request({ type: "session" })).ttl ?? 0);
    await new Promise((r) => setTimeout(r, 200));
  }
  ok(ttl > 60, `refreshed: ttl ${ttl}`); // the connection now lives as long as the new token
  strictEqual(client.transport, "websocket");
  strictEqual(opens, 1, "no reconnect");
  await client.close();
});
