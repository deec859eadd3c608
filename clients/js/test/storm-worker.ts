/**
 * A storm worker of `python -m bench client --sections storm --storm-sdk js` (bench/client_storm.py):
 * holds N TypeScript SDK clients following inventory:eu on node a (node b as their second node) and
 * answers `report FIRST LAST` on stdin with the same figures as the Python SDK's worker. Times are
 * CLOCK_MONOTONIC seconds (process.hrtime), comparable with Python's time.monotonic().
 *
 *   node build/test/storm-worker.js BASE_A BASE_B COUNT
 */

import { createInterface } from "node:readline";

import { SyncHubClient, type WebSocketConstructor } from "../src/index.js";
import WebSocket from "ws";

const [baseA, baseB, countText] = process.argv.slice(2) as [string, string, string];
const count = Number(countText);
const monotonic = () => Number(process.hrtime.bigint()) / 1e9;

interface One {
  client: SyncHubClient;
  versions: number[];
  subscribedAt: number | null;
  confirmations: number;
  connecting: number[];
}

const all: One[] = [];
let inFlight = 0;
async function gate<T>(work: () => Promise<T>): Promise<T> {
  while (inFlight >= 100) await new Promise((r) => setTimeout(r, 5));
  inFlight += 1;
  try {
    return await work();
  } finally {
    inFlight -= 1;
  }
}

await Promise.all(
  Array.from({ length: count }, async () => {
    const client = new SyncHubClient({
      url: baseA,
      urls: [baseB],
      WebSocket: WebSocket as unknown as WebSocketConstructor,
      format: "msgpack",
      backoff: { baseMs: 200, maxMs: 5000 },
      heartbeatMs: 60_000,
    });
    const one: One = { client, versions: [], subscribedAt: null, confirmations: 0, connecting: [] };
    all.push(one);
    client.on("state", (state) => {
      if (state === "connecting") one.connecting.push(monotonic());
    });
    await gate(
      () =>
        new Promise<void>((resolve) => {
          client.subscribe("inventory:eu", {
            onEvent: (event) => one.versions.push(Number((event.data as { version: number }).version)),
            onSubscribed: () => {
              one.confirmations += 1;
              one.subscribedAt = monotonic();
              resolve();
            },
          });
          client.connect();
        }),
    );
  }),
);
process.stdout.write(JSON.stringify({ ready: all.length }) + "\n");

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const [word, firstText, lastText] = line.split(" ");
  if (word !== "report") continue;
  const first = Number(firstText);
  const last = Number(lastText);
  const deadline = Date.now() + 180_000;
  const caughtUp = () => all.every((o) => o.confirmations >= 2 && o.versions.length > 0 && o.versions[o.versions.length - 1]! >= last);
  while (Date.now() < deadline && !caughtUp()) await new Promise((r) => setTimeout(r, 100));
  const missed = all.map((o) => {
    const have = new Set(o.versions);
    let n = 0;
    for (let v = first; v <= last; v++) if (!have.has(v)) n += 1;
    return n;
  });
  const duplicated = all.map((o) => o.versions.length - new Set(o.versions).size);
  process.stdout.write(
    JSON.stringify({
      subscribed_at: all.map((o) => o.subscribedAt),
      closed_at: all.map((o) => (o.connecting.length >= 2 ? o.connecting[o.connecting.length - 1] : null)),
      confirmations: all.map((o) => o.confirmations),
      missed: missed.reduce((a, b) => a + b, 0),
      clients_missing: missed.filter((m) => m).length,
      duplicated: duplicated.reduce((a, b) => a + b, 0),
      clients_with_duplicates: duplicated.filter((d) => d).length,
      on_b: all.filter((o) => o.client.baseUrl === baseB.replace(/\/+$/, "")).length,
    }) + "\n",
  );
  const stuck = all.filter((o) => o.confirmations < 2).map((o) => `${o.client.state}/${o.client.transport}/${o.client.baseUrl === baseB.replace(/\/+$/, "") ? "b" : "a"}`);
  if (stuck.length) process.stderr.write(`storm worker: ${stuck.length} clients not resubscribed: ${JSON.stringify([...new Set(stuck)])}\n`);
  break;
}
await new Promise((resolve) => (process.stdin.readableEnded ? resolve(null) : process.stdin.on("end", resolve).on("close", resolve)));
await Promise.all(all.map((o) => o.client.close()));
process.exit(0);
