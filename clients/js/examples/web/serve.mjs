#!/usr/bin/env node
// Serves the example page (and the built SDK) and proxies /api to a hub, so that the page and the hub
// share one origin (no CORS, no --allowed-origins needed):
//
//   npm run build && node examples/web/serve.mjs http://127.0.0.1:8080 [port]
//
// then open the printed URL with #token=<a customer token> (synchub token alice --role customer).
// test/browser.ts uses it too, and cuts the proxy to take the page offline.
import { createReadStream, existsSync, statSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const SERVED = ["examples/web/", "build/src/", "node_modules/@msgpack/msgpack/dist.esm/"];
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".map": "application/json" };

/** Start the server: {origin, setOnline(boolean), close()}. Offline, /api is cut (sockets dropped). */
export async function startServer(hubUrl, port = 0) {
  const hub = new URL(hubUrl);
  let online = true;
  const proxied = new Set();
  const server = http.createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname).replace(/^\/+/, "");
    if (path.startsWith("api/") || path === "readyz") {
      if (!online) return void req.socket.destroy();
      const upstream = http.request(
        { host: hub.hostname, port: hub.port, method: req.method, path: req.url, headers: req.headers },
        (response) => {
          res.writeHead(response.statusCode ?? 502, response.headers);
          response.pipe(res);
        },
      );
      upstream.on("error", () => res.destroy());
      proxied.add(req.socket);
      req.pipe(upstream);
      return;
    }
    const file = normalize(join(ROOT, path || "examples/web/index.html"));
    const relative = file.slice(ROOT.length);
    if (!SERVED.some((p) => relative.startsWith(p)) || !existsSync(file) || !statSync(file).isFile()) {
      return void res.writeHead(404).end();
    }
    res.writeHead(200, { "Content-Type": TYPES[extname(file)] ?? "application/octet-stream", "Cache-Control": "no-store" });
    createReadStream(file).pipe(res);
  });
  server.on("upgrade", (req, socket, head) => {
    if (!online) return void socket.destroy();
    const upstream = net.connect(Number(hub.port), hub.hostname, () => {
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
    proxied.add(socket);
  });
  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    setOnline(value) {
      online = value;
      if (!value) {
        for (const socket of proxied) socket.destroy();
        proxied.clear();
      }
    },
    close() {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === normalize(process.argv[1])) {
  const hub = process.argv[2] ?? "http://127.0.0.1:8080";
  const { origin } = await startServer(hub, Number(process.argv[3] ?? 0));
  console.log(`${origin}/examples/web/index.html#token=<a customer token>   (hub: ${hub})`);
}
