// A small reader of the hub's OpenAPI 3.1 document (/api/v1/openapi.json): every operation with its
// parameters, request body, responses and who may call it; every schema, a $ref a link to it. Plain DOM
// (textContent only: nothing from the document is parsed as HTML), no dependencies, no network but the
// hub's own document.
"use strict";

(function () {
  const METHODS = ["get", "post", "put", "patch", "delete", "options", "head"];

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(function ([k, v]) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    });
    (children || []).forEach(function (c) {
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function refName(ref) {
    return ref.split("/").pop();
  }

  function resolve(doc, obj) {
    // Follows a local $ref ("#/components/...") once: enough for responses and parameters.
    if (!obj || !obj.$ref || !obj.$ref.startsWith("#/")) return obj;
    return obj.$ref.slice(2).split("/").reduce(function (o, k) { return o && o[k]; }, doc) || obj;
  }

  function schemaView(schema) {
    // A schema as indented JSON text, its $refs shown as links to the schema's section.
    const pre = el("pre");
    const text = JSON.stringify(schema, null, 2);
    const parts = text.split(/("\$ref": "#\/components\/schemas\/[^"]+")/);
    parts.forEach(function (part) {
      const m = /^"\$ref": "#\/components\/schemas\/([^"]+)"$/.exec(part);
      if (m) {
        pre.appendChild(document.createTextNode('"$ref": '));
        pre.appendChild(el("a", { href: "#schema-" + m[1], text: m[1] }));
      } else {
        pre.appendChild(document.createTextNode(part));
      }
    });
    return pre;
  }

  function who(doc, op) {
    if (!op.security || op.security.length === 0) return "public";
    return op.security.map(function (s) {
      return Object.entries(s).map(function ([name, scopes]) {
        return scopes.length ? name + " (" + scopes.join(", ") + ")" : name;
      }).join(" + ");
    }).join(" or ");
  }

  function operation(doc, path, method, op) {
    const body = el("div");
    if (op.description) body.appendChild(el("p", { text: op.description }));
    body.appendChild(el("p", { class: "hint", text: "Who: " + who(doc, op) }));
    const params = (op.parameters || []).map(function (p) { return resolve(doc, p); });
    if (params.length) {
      const rows = params.map(function (p) {
        return el("tr", {}, [
          el("td", {}, [el("code", { text: p.name })]),
          el("td", { text: p.in + (p.required ? ", required" : "") }),
          el("td", { text: (p.schema ? JSON.stringify(p.schema) : "") }),
          el("td", { text: p.description || "" }),
        ]);
      });
      body.appendChild(el("h4", { text: "Parameters" }));
      body.appendChild(el("table", { class: "params" }, rows));
    }
    if (op.requestBody) {
      const rb = resolve(doc, op.requestBody);
      body.appendChild(el("h4", { text: "Request body" + (rb.required ? " (required)" : "") }));
      Object.entries(rb.content || {}).forEach(function ([type, media]) {
        body.appendChild(el("p", {}, [el("code", { text: type })]));
        if (media.schema) body.appendChild(schemaView(media.schema));
      });
    }
    body.appendChild(el("h4", { text: "Responses" }));
    const responses = Object.entries(op.responses || {}).map(function ([code, r]) {
      const resolved = resolve(doc, r);
      const types = Object.entries(resolved.content || {}).map(function ([type, media]) {
        const schema = media.schema && media.schema.$ref ? refName(media.schema.$ref) : "";
        return el("span", {}, [
          el("code", { text: type }),
          schema ? " " : "",
          schema ? el("a", { href: "#schema-" + schema, text: schema }) : "",
        ]);
      });
      return el("tr", {}, [
        el("td", {}, [el("code", { text: code })]),
        el("td", { text: resolved.description || "" }),
        el("td", {}, types),
      ]);
    });
    body.appendChild(el("table", { class: "responses" }, responses));

    const summary = el("summary", {}, [
      el("span", { class: "method " + method, text: method.toUpperCase() }),
      el("span", { class: "path", text: path }),
      " ",
      el("span", { class: "hint", text: op.summary || "" }),
      op.security && op.security.length ? el("span", { class: "lock", text: "token" }) : "",
    ]);
    const details = el("details", { class: "op" }, [summary, body]);
    details.dataset.search = (method + " " + path + " " + (op.summary || "")).toLowerCase();
    return details;
  }

  function render(doc) {
    const info = doc.info || {};
    const ops = document.getElementById("operations");
    let count = 0;
    Object.entries(doc.paths || {}).forEach(function ([path, item]) {
      METHODS.forEach(function (method) {
        if (item[method]) {
          ops.appendChild(operation(doc, path, method, item[method]));
          count += 1;
        }
      });
    });
    const schemas = document.getElementById("schemas");
    Object.entries((doc.components || {}).schemas || {}).forEach(function ([name, schema]) {
      const section = el("details", { class: "op", id: "schema-" + name }, [
        el("summary", {}, [el("span", { class: "path", text: name })]),
        el("div", {}, [schemaView(schema)]),
      ]);
      schemas.appendChild(section);
    });
    document.getElementById("info").textContent =
      (info.title || "API") + " " + (info.version || "") + " — OpenAPI " + doc.openapi + ", " +
      count + " operations. " + (info.description || "");
    document.body.dataset.operations = String(count);
  }

  document.getElementById("filter").addEventListener("input", function (e) {
    const words = e.target.value.toLowerCase().split(/\s+/).filter(Boolean);
    document.querySelectorAll("#operations details.op").forEach(function (d) {
      d.hidden = !words.every(function (w) { return d.dataset.search.includes(w); });
    });
  });

  // A link to a schema opens it.
  window.addEventListener("hashchange", function () {
    const target = document.getElementById(decodeURIComponent(location.hash.slice(1)));
    if (target && target.tagName === "DETAILS") target.open = true;
  });

  fetch("/api/v1/openapi.json", { headers: { Accept: "application/json" } })
    .then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    })
    .then(render)
    .catch(function (err) {
      document.getElementById("info").textContent = "Could not load /api/v1/openapi.json: " + err.message;
    });
})();
