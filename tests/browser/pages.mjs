// Drives the hub's pages in headless Chromium (playwright-core on Debian's /usr/bin/chromium), for
// tests/test_pages.py. Environment: HUB (base URL), ADMIN (an admin token), PRODUCT_ID, SKU, WAREHOUSE,
// SHOTS (a directory for the screenshots), CHROMIUM (default /usr/bin/chromium).
// The home page must show the SKU's stock row, then a change made through the API after it loaded; the
// API reader must render the OpenAPI document's operations. Prints one JSON line of what it saw; any
// page error, console error or CSP violation fails it (exit 1).
import { chromium } from "playwright-core";

const env = process.env;
const hub = env.HUB;
const problems = [];
const seen = {};

async function setStock(onHand) {
  const response = await fetch(`${hub}/api/v1/products/${env.PRODUCT_ID}/inventory/${env.WAREHOUSE}`, {
    method: "PUT",
    headers: { Authorization: `Bearer ${env.ADMIN}`, "Content-Type": "application/json" },
    body: JSON.stringify({ on_hand: onHand }),
  });
  if (response.status !== 200) throw new Error(`PUT stock: ${response.status} ${await response.text()}`);
}

const browser = await chromium.launch({
  executablePath: env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
  page.setDefaultTimeout(30_000);
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push(`console error: ${msg.text()} (${msg.location().url})`);
  });
  page.on("requestfailed", (req) => {
    // The SSE stream is cut when the page is left: not a failure of the page.
    if (!req.url().includes("/api/v1/sse")) problems.push(`request failed: ${req.url()}`);
  });

  await page.goto(`${hub}/`);
  const row = page.locator(`#stock tbody tr[data-sku="${env.SKU}"]`);
  await page.locator('#state[data-state="live"]').waitFor();
  await row.waitFor();
  seen.region = await page.locator("#region").textContent();
  seen.before = await row.locator("td").allTextContents();

  await setStock(77); // through the API, after the page loaded: the page must show it without a reload
  await page.waitForFunction(
    (sku) => {
      const tr = document.querySelector(`#stock tbody tr[data-sku="${sku}"]`);
      return tr !== null && tr.children[2].textContent === "77";
    },
    env.SKU,
  );
  seen.after = await row.locator("td").allTextContents();
  seen.home_links = await page.locator("nav a").evaluateAll((as) => as.map((a) => a.getAttribute("href")));
  await page.screenshot({ path: `${env.SHOTS}/home.png`, fullPage: true });

  await page.goto(`${hub}/api-docs`);
  await page.waitForFunction(() => Number(document.body.dataset.operations || 0) > 0);
  seen.operations = Number(await page.evaluate(() => document.body.dataset.operations));
  await page.locator("#filter").fill("post reservations");
  const visible = page.locator("#operations details.op:not([hidden])");
  seen.filtered = await visible.locator(".path").allTextContents();
  await visible.first().locator("summary").click();
  seen.opened = await visible.first().locator("h4").allTextContents();
  await page.screenshot({ path: `${env.SHOTS}/api-docs.png`, fullPage: false });

  await page.goto(`${hub}/docs/protocol.md`);
  seen.protocol = (await page.locator("body").textContent()).slice(0, 80);
} catch (err) {
  problems.push(`failed: ${err.message}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify({ seen, problems }));
process.exit(problems.length ? 1 : 0);
