/**
 * The example page (examples/web) in headless Chromium (Debian's /usr/bin/chromium, driven by
 * playwright-core; no browser is downloaded), for tests/test_client_js.py.
 *
 * examples/web/serve.mjs serves the page, the built SDK and @msgpack/msgpack, and proxies /api to the
 * hub (so the page and the hub share an origin); cutting the proxy takes the page off the hub. The page opens
 * the hub, shows live stock, adds to its cart, goes offline, edits the cart, is reloaded while offline
 * (its replica and queue come back from IndexedDB), comes back and converges. Prints one JSON line:
 * the page's cart, its stock and its console errors; the Python test checks the hub's cart.
 */

import { chromium } from "playwright-core";

import { env, setStock } from "./helpers.js";

interface ExampleServer {
  origin: string;
  setOnline(value: boolean): void;
  close(): Promise<void>;
}
const { startServer } = (await import(new URL("../../examples/web/serve.mjs", import.meta.url).href)) as {
  startServer: (hub: string) => Promise<ExampleServer>;
};
const cartId = process.argv[2]!;
const server = await startServer(env.url);
const origin = server.origin;
const goOffline = () => server.setOnline(false);

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

  server.setOnline(true);
  await waitFor(`app.client.transport === "websocket" && app.cart.pending === 0`, "the queue delivered after reconnecting");
  await waitFor(`app.status().stock[${JSON.stringify(stockKey)}] === 42`, "the stock change made while offline");
  const cartRows = await page.locator("#cart tr").count();
  const final = await status();
  process.stdout.write(JSON.stringify({ offline, reloaded, final, cartRows, errors }) + "\n");
} finally {
  await browser.close();
  await server.close();
}
