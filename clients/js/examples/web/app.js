// The example page of clients/js: live stock of a region, and a cart that keeps working offline.
// Open it as  examples/web/index.html#hub=https://hub.example&token=<a customer token>&region=eu
// (the token in the fragment is a demo shortcut: a real page gets it from its login).
import { CartDocument, IndexedDBStorage, InventoryFeed, SyncHubClient } from "../../build/src/index.js";

const params = new URLSearchParams(location.hash.slice(1));
const hub = params.get("hub") || location.origin;
const token = params.get("token") || localStorage.getItem("synchub-token");
const region = params.get("region") || "eu";
const cartId = params.get("cart") || localStorage.getItem("synchub-cart") || crypto.randomUUID();
localStorage.setItem("synchub-cart", cartId);
if (token) localStorage.setItem("synchub-token", token);

const client = new SyncHubClient({ url: hub, token, format: "msgpack" });
const storage = new IndexedDBStorage("synchub-example");
const cart = await CartDocument.open(client, cartId, storage);
const feed = new InventoryFeed(client, { region, onChange: render });

const $ = (id) => document.getElementById(id);
$("cart-id").textContent = cartId;

function render() {
  const connection = $("connection");
  connection.dataset.transport = client.transport ?? "";
  connection.textContent = client.transport ?? "offline: edits are kept and sent when back";
  $("pending").textContent = String(cart.pending);
  const rows = [...feed.levels.values()].sort((a, b) => (a.sku ?? "").localeCompare(b.sku ?? ""));
  $("stock").replaceChildren(
    ...rows.map((level) => {
      const tr = document.createElement("tr");
      tr.dataset.sku = level.sku ?? "";
      for (const text of [level.sku, level.warehouse_id, level.available, level.version]) {
        const td = document.createElement("td");
        td.textContent = String(text);
        tr.append(td);
      }
      const td = document.createElement("td");
      for (const [label, edit] of [
        ["+1", () => cart.add(level.sku, 1)],
        ["set 5", () => cart.set(level.sku, 5)],
        ["remove", () => cart.remove(level.sku)],
      ]) {
        const button = document.createElement("button");
        button.textContent = label;
        button.dataset.action = label;
        button.addEventListener("click", () => edit().catch(showError));
        td.append(button);
      }
      tr.append(td);
      return tr;
    }),
  );
  const conflicts = cart.conflicts();
  $("cart").replaceChildren(
    ...Object.entries(cart.value()).map(([sku, quantity]) => {
      const tr = document.createElement("tr");
      tr.dataset.sku = sku;
      for (const text of [sku, quantity, (conflicts[sku] ?? []).join(", ")]) {
        const td = document.createElement("td");
        td.textContent = String(text);
        tr.append(td);
      }
      return tr;
    }),
  );
  $("refused").textContent = cart.refused.map((r) => `refused ${r.call[0]} ${r.call[1]}: ${r.code}`).join("; ");
}

function showError(err) {
  $("refused").textContent = String(err);
}

client.on("state", render);
client.on("error", (err) => console.warn("synchub:", err.message));
cart.onChange(render);
await feed.start();
client.connect();
render();

// For the browser test (and the curious, in the console).
window.app = {
  client,
  cart,
  feed,
  status: () => ({ transport: client.transport, pending: cart.pending, value: cart.value(), stock: Object.fromEntries([...feed.levels].map(([k, l]) => [k, l.on_hand])) }),
};
