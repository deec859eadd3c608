/**
 * The example page (examples/web) in headless Chromium (Debian's /usr/bin/chromium, driven by
 * playwright-core; no browser is downloaded), for tests/test_client_js.py.
 *
 * A small server serves the page, the built SDK and @msgpack/msgpack, and proxies /api to the hub (so
 * the page and the hub share an origin); stopping the proxy cuts the page off the hub. The page opens
 * the hub, shows live stock, adds to its cart, goes offline, edits the cart, is reloaded while offline
 * (its replica and queue come back from IndexedDB), comes back and converges. Prints one JSON line:
 * the page's cart, its stock and its console errors; the Python test checks the hub's cart.
 */

import { createReadStream, existsSync, statSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

import { env, setStock } from "./helpers.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const SERVED = ["examples/web/", "build/src/", "node_modules/@msgpack/msgpack/dist.esm/"];
const TYPES: Record<string, string> = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".map": "application/json" };
const hubUrl = new URL(env.url);
const cartId = process.argv[2]!;

let online = true;
const cut = new Set<net.Socket>();

const server = http.createServer((req, res) => {
  const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname).replace(/^\/+/, "");
  if (path.startsWith("api/") || path === "readyz") {
    if (!online) {
      req.socket.destroy();
      return;
    }
    const upstream = http.request({ host: hubUrl.hostname, port: hubUrl.port, method: req.method, path: req.url, headers: req.headers }, (response) => {
      res.writeHead(response.statusCode ?? 502, response.headers);
      response.pipe(res);
    });
    upstream.on("error", () => res.destroy());
    cut.add(req.socket);
    req.pipe(upstream);
    return;
  }
  const file = normalize(join(ROOT, path));
  if (!SERVED.some((prefix) => path.startsWith(prefix)) || !file.startsWith(ROOT) || !existsSync(file) || !statSync(file).isFile()) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "Content-Type": TYPES[extname(file)] ?? "application/octet-stream", "Cache-Control": "no-store" });
  createReadStream(file).pipe(res);
});
server.on("upgrade", (req, socket: net.Socket, head) => {
  if (!online) {
    socket.destroy();
    return;
  }
  const upstream = net.connect(Number(hubUrl.port), hubUrl.hostname, () => {
    const lines = [`${req.method} ${req.url} HTTP/1.1`];
    for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
    upstream.write(lines.join("\r\n") + "\r\n\r\n");
    if (head.length) upstream.write(head);
    socket.pipe(upstream).pipe(socket);
  });
  const drop = () => {
    socket.destroy();
    upstream.destroy();
  };
  socket.on("error", drop).on("close", drop);
  upstream.on("error", drop).on("close", drop);
  cut.add(socket);
});
await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
const origin = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;

function goOffline(): void {
  online = false;
  for (const socket of cut) socket.destroy();
  cut.clear();
}

const browser = await chromium.launch({
  executablePath: process.env.SYNCHUB_TEST_CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"],
});
const errors: string[] = [];
try {
  const page = await browser.newPage();
  page.on("console", (message) => {
    if (message.type() === "error") errors.push(message.text());
  });
  page.on("pageerror", (err) => errors.push(String(err)));
  type Status = { transport: string | null; pending: number; value: Record<string, number>; stock: Record<string, number> };
  const status = () => page.evaluate(() => (window as unknown as { app: { status(): Status } }).app.status());
  const waitFor = (check: string, what: string) =>
    page.waitForFunction(check, undefined, { timeout: 30_000, polling: 50 }).catch((err: unknown) => {
      throw new Error(`waiting for ${what}: ${String(err)}`);
    });
  const stockKey = `${env.product}/${env.warehouse}`;

  await page.goto(`${origin}/examples/web/index.html#token=${encodeURIComponent(env.customer)}&cart=${cartId}&region=${env.region}`);
  await waitFor(`window.app && app.client.transport === "websocket" && document.querySelector('#stock tr[data-sku="TEA-1"]')`, "the page online with its stock");
  await page.click('#stock tr[data-sku="TEA-1"] button[data-action="+1"]');
  await waitFor(`app.cart.pending === 0 && app.cart.value()["TEA-1"] === 1`, "the first add acknowledged");

  goOffline();
  await waitFor(`app.client.transport === null && document.querySelector("#connection").dataset.transport === ""`, "the page to notice it is offline");
  await page.click('#stock tr[data-sku="LIP-001"] button[data-action="+1"]');
  await page.click('#stock tr[data-sku="LIP-001"] button[data-action="+1"]');
  await page.click('#stock tr[data-sku="TEA-1"] button[data-action="set 5"]');
  await waitFor(`app.cart.pending === 3 && document.querySelector("#pending").textContent === "3"`, "three edits queued offline");
  const offline = await status();
  await setStock(42); // a stock change the page misses while offline

  await page.reload(); // the tab is reloaded while still offline: the replica and its queue are in IndexedDB
  await waitFor(`window.app && app.cart.pending === 3`, "the queue restored from IndexedDB");
  const reloaded = await status();

  online = true;
  await waitFor(`app.client.transport === "websocket" && app.cart.pending === 0`, "the queue delivered after reconnecting");
  await waitFor(`app.status().stock[${JSON.stringify(stockKey)}] === 42`, "the stock change made while offline");
  const cartRows = await page.locator("#cart tr").count();
  const final = await status();
  process.stdout.write(JSON.stringify({ offline, reloaded, final, cartRows, errors }) + "\n");
} finally {
  await browser.close();
  server.closeAllConnections();
  server.close();
}
