// The hub's home page: the stock of this node's region, live. A snapshot (GET /api/v1/inventory) gives
// the rows and the stream position they are at least as new as; an SSE stream resumed from that position
// brings every change after it. A row keeps the highest version applied (docs/protocol.md, "Events"), so
// an event older than the snapshot, or one delivered twice, changes nothing.
"use strict";

(function () {
  const rows = new Map(); // "product_id warehouse_id" -> {data, tr}
  const body = document.querySelector("#stock tbody");
  const state = document.getElementById("state");
  let position = null;
  let source = null;

  function setState(text) {
    state.textContent = text;
    state.dataset.state = text;
  }

  function cell(tr, text, numeric) {
    const td = document.createElement("td");
    td.textContent = String(text);
    if (numeric) td.className = "num";
    tr.appendChild(td);
  }

  function render(entry) {
    const d = entry.data;
    const tr = document.createElement("tr");
    tr.dataset.key = d.product_id + " " + d.warehouse_id;
    tr.dataset.sku = d.sku || "";
    tr.dataset.warehouse = d.warehouse_id;
    cell(tr, d.sku || d.product_id, false);
    cell(tr, d.warehouse_id, false);
    cell(tr, d.on_hand, true);
    cell(tr, d.reserved, true);
    cell(tr, d.available, true);
    cell(tr, d.status, false);
    cell(tr, d.version, true);
    if (entry.tr) {
      body.replaceChild(tr, entry.tr);
      tr.classList.add("changed");
      setTimeout(function () { tr.classList.remove("changed"); }, 1500);
    } else {
      body.appendChild(tr);
    }
    entry.tr = tr;
  }

  function apply(d) {
    const key = d.product_id + " " + d.warehouse_id;
    const entry = rows.get(key);
    if (entry && entry.data.version >= d.version) return; // already shown: older or the same change
    const merged = entry ? Object.assign({}, entry.data, d) : d;
    const next = entry || { data: merged, tr: null };
    next.data = merged;
    rows.set(key, next);
    render(next);
    document.getElementById("count").textContent = String(rows.size);
    document.getElementById("empty").hidden = rows.size > 0;
  }

  function setPosition(p) {
    position = p;
    document.getElementById("position").textContent = p;
  }

  function follow(region) {
    let url = "/api/v1/sse?channels=" + encodeURIComponent("inventory:" + region);
    if (position) url += "&last_event_id=" + encodeURIComponent(position);
    source = new EventSource(url);
    source.addEventListener("ready", function (e) {
      setPosition(e.lastEventId || JSON.parse(e.data).position);
      setState("live");
    });
    source.addEventListener("inventory", function (e) {
      setPosition(e.lastEventId);
      apply(JSON.parse(e.data).data);
    });
    source.addEventListener("close", function () {
      // The node is going away or cut us off: reconnect from our position, through a fresh snapshot.
      source.close();
      setState("reconnecting");
      setTimeout(start, 1000);
    });
    source.onerror = function () {
      if (source.readyState !== EventSource.OPEN) setState("reconnecting");
    };
  }

  async function start() {
    try {
      const response = await fetch("/api/v1/inventory", { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error("snapshot: HTTP " + response.status);
      const snapshot = await response.json();
      document.getElementById("region").textContent = snapshot.region;
      snapshot.items.forEach(apply);
      setPosition(snapshot.position);
      follow(snapshot.region);
    } catch (err) {
      setState("reconnecting");
      setTimeout(start, 2000);
    }
  }

  document.getElementById("empty").hidden = false;
  start();
})();
