/**
 * A device as a process, for tests/test_client_js.py (one Python device, one TypeScript device):
 *
 *   node build/test/scenario.js offline STORAGE CART   edits the cart with no connection, persists,
 *                                                      prints {"queued": n} and waits to be killed
 *   node build/test/scenario.js online STORAGE CART    reopens the same replica, connects, syncs and
 *                                                      pushes its queue, prints the converged cart
 *   node build/test/scenario.js review STORAGE REVIEW  writes a review offline, connects, prints it
 *
 * SYNCHUB_TRANSPORTS (comma-separated, default websocket) picks the transports: over sse or poll the
 * documents write through REST (POST …/sync).
 * SYNCHUB_URL, SYNCHUB_TOKEN and SYNCHUB_FORMAT (json | msgpack) say where and how.
 */

import { CartDocument, ReviewDocument, SyncHubClient, type Transport, toHex, toMsgpack } from "../src/index.js";
import { env, FileStorage, NodeWebSocket, until } from "./helpers.js";

const [mode, storagePath, cartId] = process.argv.slice(2) as [string, string, string];
const format = process.env.SYNCHUB_FORMAT === "msgpack" ? "msgpack" : "json";
const transports = (process.env.SYNCHUB_TRANSPORTS ?? "websocket").split(",") as Transport[];
const client = new SyncHubClient({ url: env.url, token: env.customer, WebSocket: NodeWebSocket, format, transports, backoff: { baseMs: 50, maxMs: 500 } });

if (mode === "review") {
  const review = await ReviewDocument.open(client, cartId, new FileStorage(storagePath));
  await review.create(env.product, "alice");
  await review.setRating(4);
  await review.setText("Great tea");
  await review.setRating(5);
  const queued = review.pending;
  client.connect();
  await until(() => client.transport === transports[0], `the ${transports[0]} transport`, 30_000);
  await review.settled(30_000);
  await review.flush();
  process.stdout.write(JSON.stringify({ queued, pending: review.pending, refused: review.refused, value: review.value(), hubStatus: review.hubStatus, version: review.version, transport: client.transport }) + "\n");
  await client.close();
  process.exit(0);
}

const doc = await CartDocument.open(client, cartId, new FileStorage(storagePath));

if (mode === "offline") {
  await doc.add("TEA-1", 2);
  await doc.set("LIP-001", 3);
  await doc.add("LIP-001", 1);
  process.stdout.write(JSON.stringify({ queued: doc.pending, replica: doc.replica, value: doc.value() }) + "\n");
  setInterval(() => undefined, 60_000); // killed here, with its edits queued
} else {
  const pendingAtStart = doc.pending;
  client.connect();
  await until(() => client.transport === transports[0], `the ${transports[0]} transport`, 30_000);
  await doc.settled(30_000);
  await doc.flush(); // a last sync: the other device's edits too
  process.stdout.write(
    JSON.stringify({
      pendingAtStart,
      pending: doc.pending,
      replica: doc.replica,
      value: doc.value(),
      conflicts: doc.conflicts(),
      refused: doc.refused,
      version: doc.version,
      state: toHex(toMsgpack(doc.cart)),
    }) + "\n",
  );
  await client.close();
}
