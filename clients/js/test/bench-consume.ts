/**
 * How many events one SDK client consumes a second: it subscribes to a region's inventory from
 * SYNCHUB_SINCE (a position before SYNCHUB_COUNT events) and counts until it has them all — the hub's
 * replay, the frames' decoding and the client's dispatch (dedupe, position bookkeeping). Prints one
 * JSON line. Not a test: a figure (run by hand, see clients/js/README.md).
 */

import { SyncHubClient } from "../src/index.js";
import { env, NodeWebSocket, until } from "./helpers.js";

const count = Number(process.env.SYNCHUB_COUNT);
const format = process.env.SYNCHUB_FORMAT === "json" ? "json" : "msgpack";
const client = new SyncHubClient({ url: env.url, WebSocket: NodeWebSocket, format });
let seen = 0;
let started = 0;
client.subscribe(`inventory:${env.region}`, {
  since: process.env.SYNCHUB_SINCE!,
  onEvent: () => {
    if (seen++ === 0) started = performance.now();
  },
});
const t0 = performance.now();
client.connect();
await until(() => seen >= count, `${count} events`, 60_000).catch((err) => {
  process.stdout.write(JSON.stringify({ error: String(err), seen, transport: client.transport }) + "\n");
  process.exit(1);
});
const elapsed = (performance.now() - started) / 1000;
process.stdout.write(JSON.stringify({ format, events: seen, seconds: elapsed, per_second: Math.round((seen - 1) / elapsed), connect_to_last_ms: Math.round(performance.now() - t0) }) + "\n");
await client.close();
