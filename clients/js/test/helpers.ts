/** Shared pieces of the SDK's hub tests: environment, a cuttable TCP proxy, an upgrade-refusing HTTP proxy, a file storage. */

import { readFileSync, writeFileSync, existsSync, renameSync } from "node:fs";
import http from "node:http";
import net from "node:net";

import WebSocket from "ws";

import type { Storage, WebSocketConstructor } from "../src/index.js";

export const env = {
  url: process.env.SYNCHUB_URL ?? "",
  admin: process.env.SYNCHUB_ADMIN_TOKEN ?? "",
  customer: process.env.SYNCHUB_TOKEN ?? "",
  shortToken: process.env.SYNCHUB_SHORT_TOKEN ?? "", // the same user's, short-lived (40 s)
  region: process.env.SYNCHUB_REGION ?? "eu",
  product: process.env.SYNCHUB_PRODUCT_ID ?? "",
  warehouse: process.env.SYNCHUB_WAREHOUSE_ID ?? "",
};

export const NodeWebSocket = WebSocket as unknown as WebSocketConstructor;

/** PUT a product's stock in a warehouse (admin); returns the row. */
export async function setStock(onHand: number): Promise<Record<string, unknown>> {
  const response = await fetch(`${env.url}/api/v1/products/${env.product}/inventory/${env.warehouse}`, {
    method: "PUT",
    headers: { Authorization: `Bearer ${env.admin}`, "Content-Type": "application/json" },
    body: JSON.stringify({ on_hand: onHand }),
  });
  if (response.status !== 200) throw new Error(`set stock: ${response.status} ${await response.text()}`);
  return (await response.json()) as Record<string, unknown>;
}

export async function until(check: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A TCP proxy to the hub that a test can cut (every connection dropped, new ones refused) and restore. */
export class CuttableProxy {
  private server: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  port = 0;

  constructor(private readonly target: URL) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    const server = net.createServer((client) => {
      const upstream = net.connect(Number(this.target.port), this.target.hostname);
      this.sockets.add(client);
      this.sockets.add(upstream);
      client.pipe(upstream).pipe(client);
      const drop = () => {
        client.destroy();
        upstream.destroy();
        this.sockets.delete(client);
        this.sockets.delete(upstream);
      };
      client.on("error", drop).on("close", drop);
      upstream.on("error", drop).on("close", drop);
    });
    await new Promise<void>((resolve) => server.listen(this.port, "127.0.0.1", () => resolve()));
    this.port = (server.address() as net.AddressInfo).port;
    this.server = server;
  }

  async cut(): Promise<void> {
    const server = this.server;
    this.server = null;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  async restore(): Promise<void> {
    await this.start();
  }
}

/** An HTTP proxy that forwards requests (streaming, so SSE works) and refuses WebSocket upgrades. */
export class NoUpgradeProxy {
  private server: http.Server | null = null;
  port = 0;
  upgradesRefused = 0;

  constructor(private readonly target: URL) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    const server = http.createServer((req, res) => {
      const upstream = http.request(
        { host: this.target.hostname, port: this.target.port, method: req.method, path: req.url, headers: req.headers },
        (response) => {
          res.writeHead(response.statusCode ?? 502, response.headers);
          response.pipe(res);
        },
      );
      upstream.on("error", () => res.destroy());
      req.pipe(upstream);
      res.on("close", () => upstream.destroy());
    });
    server.on("upgrade", (_req, socket: net.Socket) => {
      this.upgradesRefused += 1;
      socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
    this.port = (server.address() as net.AddressInfo).port;
    this.server = server;
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = null;
    server?.closeAllConnections();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** A Storage kept in one JSON file, written atomically (what survives a killed process in these tests). */
export class FileStorage implements Storage {
  constructor(private readonly path: string) {}

  private read(): Record<string, string> {
    return existsSync(this.path) ? (JSON.parse(readFileSync(this.path, "utf-8")) as Record<string, string>) : {};
  }

  async get(key: string): Promise<string | null> {
    return this.read()[key] ?? null;
  }

  async set(key: string, value: string): Promise<void> {
    const all = this.read();
    all[key] = value;
    writeFileSync(this.path + ".tmp", JSON.stringify(all));
    renameSync(this.path + ".tmp", this.path);
  }

  async delete(key: string): Promise<void> {
    const all = this.read();
    delete all[key];
    writeFileSync(this.path + ".tmp", JSON.stringify(all));
    renameSync(this.path + ".tmp", this.path);
  }
}
