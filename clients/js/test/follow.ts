/**
 * Follows a region's inventory with the SDK and prints every change it applies, one JSON line each
 * ({"product", "warehouse", "version", "source"}), for tests that kill nodes under it
 * (tests/test_client_js.py). SYNCHUB_URLS: the nodes, comma-separated (the first is used first).
 * Prints {"ready": true} once the snapshot is applied and the WebSocket is open; exits on stdin's end.
 */

import { InventoryFeed, SyncHubClient } from "../src/index.js";
import { env, NodeWebSocket, until } from "./helpers.js";

const [first, ...rest] = (process.env.SYNCHUB_URLS ?? env.url).split(",");
const client = new SyncHubClient({ url: first!, urls: rest, WebSocket: NodeWebSocket, format: "msgpack", backoff: { baseMs: 50, maxMs: 500 } });
const opened: string[] = [];
client.on("open", () => opened.push(client.baseUrl));
const feed = new InventoryFeed(client, {
  region: env.region,
  onChange: ({ source, level }) =>
    process.stdout.write(JSON.stringify({ product: level.product_id, warehouse: level.warehouse_id, version: level.version, source }) + "\n"),
});
await feed.start();
client.connect();
await until(() => client.transport === "websocket", "the WebSocket", 30_000);
process.stdout.write(JSON.stringify({ ready: true }) + "\n");
process.stdin.resume();
await new Promise((resolve) => process.stdin.on("end", resolve));
process.stdout.write(JSON.stringify({ opened }) + "\n");
await client.close();
