/**
 * The connection to a hub: one WebSocket (subprotocol synchub.json or synchub.msgpack) carrying every
 * subscription, and the fallbacks when a WebSocket cannot be had — Server-Sent Events (a fetch
 * stream per stream group) with REST writes, then long-poll.
 *
 * Every subscription remembers the position of the last event it delivered and resumes from it after
 * any disconnect, on whichever transport comes next; an event at or before that position (a replay's
 * overlap) is dropped, so an app sees each event once. Close codes are obeyed (docs/protocol.md):
 * 1001 reconnects at once, 4102 asks the app for a fresh token first, 4000–4099 stop and report, the
 * rest reconnect after an exponential backoff with full jitter. A heartbeat ping notices a dead peer.
 *
 * Connection states: idle → connecting → open → (connecting …) and stopped (close(), or a 40xx code).
 */

import { decode, encode } from "@msgpack/msgpack";

import { type BackoffOptions, DEFAULT_BACKOFF, fullJitter } from "./backoff.js";
import { earliest, isAfter } from "./positions.js";

export type Transport = "websocket" | "sse" | "poll";
export type ConnectionState = "idle" | "connecting" | "open" | "stopped";

/** The envelope of every event (docs/protocol.md, Events). */
export interface HubEvent<D = Record<string, unknown>> {
  type: "event";
  channel: string;
  position: string;
  data: D;
}

/** The hub could not resume a channel: read `snapshot` (if any), then carry on from `position`. */
export interface Resync {
  channel: string;
  reason: string;
  position: string | null;
  snapshot: string | null;
}

export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  binaryType: string;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ClientOptions {
  /** The hub's base URL, e.g. "https://hub.example" (WebSocket URLs are derived from it). */
  url: string;
  /** More nodes of the same region: after a connection drops (a node going away or dying), the next
   * one is tried. The app's REST calls and documents follow the node in use. */
  urls?: string[];
  /** A bearer token, or a function that returns the current one (called at every connection). */
  token?: string | (() => string | Promise<string>) | null;
  /** Called on close code 4102 (token expired): return a fresh token. */
  refreshToken?: () => string | Promise<string>;
  /** The WebSocket constructor (Node 20 has none: pass the `ws` package's). Default: globalThis.WebSocket. */
  WebSocket?: WebSocketConstructor | null;
  /** Frames as JSON text or MessagePack binary. Default "json". */
  format?: "json" | "msgpack";
  /** The transports to try, in order. Default ["websocket", "sse", "poll"]. */
  transports?: Transport[];
  /** Failed WebSocket connections (never opened) in a row before falling back. Default 2. */
  fallbackAfter?: number;
  backoff?: BackoffOptions;
  /** A ping every this many ms; no frame for twice as long drops the connection. Default 15000. */
  heartbeatMs?: number;
  /** After falling back, try the first transport again this often (ms; 0: never). Default 300000. */
  retryPreferredMs?: number;
  /** A WebSocket not open (or an SSE stream not ready) this long after it was asked for is given up and
   * retried: a connection can hang half-open (a SYN queue overflowing in a reconnect storm). Default 10000. */
  openTimeoutMs?: number;
  /** With `refreshToken`, a WebSocket's token is refreshed in band this long before it expires (ms).
   * Default 30000. */
  refreshMarginMs?: number;
  /** Long-poll wait, seconds. Default 25. */
  pollTimeoutS?: number;
  fetch?: typeof fetch;
  random?: () => number;
}

export interface SubscribeOptions {
  since?: string | null;
  onEvent: (event: HubEvent) => void;
  /** Re-read what the channel's snapshot says; return a position to resume from (the snapshot's),
   * or nothing to resume from the resync's own position (null: from now). */
  onResync?: (resync: Resync) => void | string | null | Promise<void | string | null>;
  /** The hub confirmed the subscription (after every (re)connection): its position then. */
  onSubscribed?: (position: string | null) => void;
}

interface Subscription {
  channel: string;
  position: string | null;
  options: SubscribeOptions;
  state: "pending" | "active";
}

type Listener<T> = (value: T) => void;

export class HubError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status?: number,
    readonly body?: unknown,
  ) {
    super(message);
    this.name = "HubError";
  }
}

interface RunResult {
  opened: boolean;
  code?: number;
  reason?: string;
  /** Given up for not opening in time (not a sign that the transport is blocked). */
  timedOut?: boolean;
}

/** Refusals of a subscribe that a later one may not get. */
const RETRY_SUBSCRIBE = new Set(["broker_unavailable", "rate_limited", "store_unavailable"]);

/** 4101s in a row, with no event delivered in between, before the subscriptions resync instead. */
const STUCK_REPLAYS = 2;

const DOC_CHANNEL = /^(cart|user):/;

export class SyncHubClient {
  readonly options: Required<Omit<ClientOptions, "token" | "refreshToken" | "WebSocket" | "urls">> & ClientOptions;
  private readonly subs = new Map<string, Subscription>();
  private stateValue: ConnectionState = "idle";
  private transportIndex = 0;
  private wsFailures = 0;
  private attempt = 0;
  private ws: WebSocketLike | null = null;
  private nextId = 1;
  private readonly pending = new Map<string, (reply: Record<string, unknown>) => void>();
  private readonly listeners = { state: new Set<Listener<ConnectionState>>(), open: new Set<Listener<Transport>>(), error: new Set<Listener<Error>>() };
  private wake: (() => void) | null = null;
  private abort: AbortController | null = null;
  private loop: Promise<void> | null = null;
  private tokenValue: string | null = null;
  /** The transport now open (null when none). */
  transport: Transport | null = null;
  private readonly nodes: string[];
  private node = 0;
  private restarting = false;
  private delivered = 0;
  private stuckReplays = 0;

  constructor(options: ClientOptions) {
    this.options = {
      format: "json",
      transports: ["websocket", "sse", "poll"],
      fallbackAfter: 2,
      backoff: DEFAULT_BACKOFF,
      heartbeatMs: 15_000,
      pollTimeoutS: 25,
      retryPreferredMs: 300_000,
      openTimeoutMs: 10_000,
      refreshMarginMs: 30_000,
      fetch: globalThis.fetch.bind(globalThis),
      random: Math.random,
      ...options,
      url: options.url.replace(/\/+$/, ""),
    };
    this.nodes = [this.options.url, ...(options.urls ?? []).map((u) => u.replace(/\/+$/, ""))].filter((u, i, all) => all.indexOf(u) === i);
  }

  /** The base URL of the node in use. */
  get baseUrl(): string {
    return this.nodes[this.node]!;
  }

  get state(): ConnectionState {
    return this.stateValue;
  }

  on(event: "state", fn: Listener<ConnectionState>): () => void;
  on(event: "open", fn: Listener<Transport>): () => void;
  on(event: "error", fn: Listener<Error>): () => void;
  on(event: "state" | "open" | "error", fn: Listener<never>): () => void {
    const set = this.listeners[event] as Set<Listener<never>>;
    set.add(fn);
    return () => set.delete(fn);
  }

  private emit<K extends keyof SyncHubClient["listeners"]>(event: K, value: Parameters<Listener<never>>[0] | unknown): void {
    for (const fn of this.listeners[event] as Set<Listener<unknown>>) {
      try {
        fn(value);
      } catch (err) {
        if (event !== "error") this.emit("error", err instanceof Error ? err : new Error(String(err)));
      }
    }
  }

  private setState(state: ConnectionState): void {
    if (this.stateValue === state) return;
    this.stateValue = state;
    this.emit("state", state);
  }

  // -- tokens and REST ----------------------------------------------------------------------------

  async token(): Promise<string | null> {
    if (this.tokenValue !== null) return this.tokenValue;
    const t = this.options.token;
    if (t === undefined || t === null) return null;
    return typeof t === "string" ? t : await t();
  }

  private async refresh(): Promise<void> {
    if (this.options.refreshToken) this.tokenValue = await this.options.refreshToken();
  }

  /** A REST call with the token: the parsed JSON body, or a HubError (problem+json's code). */
  async rest<T = Record<string, unknown>>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const headers: Record<string, string> = { Accept: "application/json" };
    const token = await this.token();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await this.options.fetch(this.baseUrl + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
    const text = await response.text();
    const parsed = text ? (JSON.parse(text) as Record<string, unknown>) : {};
    if (!response.ok) {
      throw new HubError(String(parsed.code ?? `http_${response.status}`), String(parsed.detail ?? parsed.title ?? response.statusText), response.status, parsed);
    }
    return parsed as T;
  }

  // -- subscriptions ------------------------------------------------------------------------------

  /** Follow `channel` from `since` (or from now); resumed from its last event after every disconnect. */
  subscribe(channel: string, options: SubscribeOptions): { unsubscribe(): void; readonly position: string | null } {
    const sub: Subscription = { channel, position: options.since ?? null, options, state: "pending" };
    this.subs.set(channel, sub);
    if (this.transport === "websocket") this.sendSubscribe(sub);
    else if (this.transport !== null) this.restart();
    const client = this;
    return {
      unsubscribe() {
        if (client.subs.get(channel) !== sub) return;
        client.subs.delete(channel);
        if (client.transport === "websocket") client.send({ type: "unsubscribe", channel });
        else if (client.transport !== null) client.restart();
      },
      get position() {
        return sub.position;
      },
    };
  }

  /** Send `subscribe` again for a subscription the hub has not confirmed (e.g. a cart that did not exist yet). */
  resubscribe(channel: string): void {
    const sub = this.subs.get(channel);
    if (sub && sub.state !== "active" && this.transport === "websocket") this.sendSubscribe(sub);
  }

  /** The last position delivered on `channel` (null before the first event). */
  position(channel: string): string | null {
    return this.subs.get(channel)?.position ?? null;
  }

  private deliver(event: HubEvent): void {
    const sub = this.subs.get(event.channel);
    if (!sub) return;
    if (sub.position !== null && !isAfter(event.position, sub.position)) return; // a replay's overlap
    sub.position = event.position;
    this.delivered += 1;
    try {
      sub.options.onEvent(event);
    } catch (err) {
      this.emit("error", err instanceof Error ? err : new Error(String(err)));
    }
  }

  private async resync(resync: Resync): Promise<void> {
    const sub = this.subs.get(resync.channel);
    if (!sub) return;
    sub.position = resync.position;
    try {
      const next = await sub.options.onResync?.(resync);
      if (typeof next === "string") sub.position = next;
    } catch (err) {
      this.emit("error", err instanceof Error ? err : new Error(String(err)));
    }
  }

  // -- the connection loop ------------------------------------------------------------------------

  /** Connect (and keep reconnecting) until close(). */
  connect(): void {
    if (this.loop !== null) return;
    this.setState("connecting");
    this.loop = this.run();
  }

  /** Stop for good: close the connection, no reconnect. */
  async close(): Promise<void> {
    this.setState("stopped");
    this.stopCurrent();
    this.wake?.();
    await this.loop;
    this.loop = null;
  }

  /** Drop the current connection and reconnect at once (tests, and an app that knows the network changed). */
  restart(): void {
    this.restarting = true;
    this.stopCurrent();
  }

  private stopCurrent(): void {
    this.abort?.abort();
    if (this.ws) {
      try {
        this.ws.close(1000, "client restart");
      } catch {
        /* already closed */
      }
    }
  }

  private async run(): Promise<void> {
    while (this.stateValue !== "stopped") {
      const transport = this.options.transports[Math.min(this.transportIndex, this.options.transports.length - 1)]!;
      this.setState("connecting");
      this.delivered = 0;
      let result: RunResult;
      try {
        result = transport === "websocket" ? await this.runWebSocket() : transport === "sse" ? await this.runSse() : await this.runPoll();
      } catch (err) {
        this.emit("error", err instanceof Error ? err : new Error(String(err)));
        result = { opened: false };
      }
      this.transport = null;
      for (const resolve of this.pending.values()) resolve({ type: "error", code: "disconnected", message: "the connection closed" });
      this.pending.clear();
      if ((this.stateValue as ConnectionState) === "stopped") break;
      let delay: number;
      if (result.opened) {
        this.attempt = 0;
        this.wsFailures = 0;
      } else if (!result.timedOut && transport !== "poll" && this.transportIndex < this.options.transports.length - 1 && (await this.reachable())) {
        // The hub answers HTTP but this transport failed: blocked on the way (a proxy that kills
        // upgrades, a buffering one). After a few such failures in a row, the next transport.
        if (++this.wsFailures >= this.options.fallbackAfter) {
          this.transportIndex += 1;
          this.wsFailures = 0;
          this.attempt = 0;
        }
      }
      const code = result.code ?? 0;
      if (code === 4101 && this.delivered === 0) {
        // Slow consumer before a single event: the replay from our positions is larger than the
        // hub's send buffer, and resuming from them again would end the same way. Resync instead.
        if (++this.stuckReplays >= STUCK_REPLAYS) {
          this.stuckReplays = 0;
          for (const sub of [...this.subs.values()]) {
            if (sub.position !== null) await this.resync({ channel: sub.channel, reason: "replay_too_large", position: null, snapshot: null });
          }
        }
      } else {
        this.stuckReplays = 0;
      }
      if (this.nodes.length > 1 && !this.restarting && (code === 1001 || code === 1006 || code === 1011 || !result.opened)) {
        this.node = (this.node + 1) % this.nodes.length; // this node is going away or gone: the next one
      }
      this.restarting = false;
      if (code >= 4000 && code <= 4099) {
        this.setState("stopped");
        this.emit("error", new HubError(`close_${code}`, `the hub closed the connection: ${code} ${result.reason ?? ""}`));
        break;
      }
      if (code === 1001) delay = 0;
      else if (code === 4102) {
        await this.refresh().catch((err: unknown) => this.emit("error", err instanceof Error ? err : new Error(String(err))));
        delay = 0;
      } else if (result.opened && code === 1000) delay = 0;
      else {
        const base = code === 4104 ? { ...this.options.backoff, baseMs: Math.max(this.options.backoff.baseMs, 2000) } : this.options.backoff;
        delay = fullJitter(this.attempt++, base, this.options.random);
      }
      if (delay > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, delay);
          this.wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.wake = null;
      }
    }
    this.transport = null;
  }

  /** Whether the hub answers plain HTTP (any status): tells a blocked transport from a network that is down. */
  private async reachable(): Promise<boolean> {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 5000);
    try {
      await this.options.fetch(`${this.baseUrl}/readyz`, { signal: abort.signal });
      return true;
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  private opened(transport: Transport): void {
    this.transport = transport;
    if (this.transportIndex > 0 && this.options.retryPreferredMs > 0) {
      // A fallback is for now, not for ever: the network may change (another Wi-Fi, no proxy).
      const index = this.transportIndex;
      const timer = setTimeout(() => {
        if (this.transportIndex === index && this.stateValue !== "stopped") {
          this.transportIndex = 0;
          this.wsFailures = 0;
          this.restart();
        }
      }, this.options.retryPreferredMs);
      (timer as { unref?: () => void }).unref?.();
    }
    this.setState("open");
    this.emit("open", transport);
  }

  // -- WebSocket ----------------------------------------------------------------------------------

  private wsUrl(query: string): string {
    const base = this.baseUrl.replace(/^http/, "ws");
    return `${base}/api/v1/ws${query}`;
  }

  private async runWebSocket(): Promise<RunResult> {
    const Ctor = this.options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Ctor) return { opened: false };
    let query = "";
    const token = await this.token();
    if (token) {
      // A browser cannot set headers on a WebSocket: a one-use ticket goes in the URL instead.
      const ticket = await this.rest<{ ticket: string }>("POST", "/api/v1/realtime/tickets");
      query = `?ticket=${encodeURIComponent(ticket.ticket)}`;
    }
    const protocol = this.options.format === "msgpack" ? "synchub.msgpack" : "synchub.json";
    return new Promise<RunResult>((resolve) => {
      let opened = false;
      let lastFrame = Date.now();
      let beat: ReturnType<typeof setInterval> | null = null;
      const ws = new Ctor(this.wsUrl(query), [protocol]);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      const timeout = setTimeout(() => {
        if (opened) return;
        try {
          ws.close();
        } catch {
          /* not open yet */
        }
        done({ opened: false, code: 1006, timedOut: true });
      }, this.options.openTimeoutMs);
      let renew: ReturnType<typeof setTimeout> | null = null;
      const scheduleRefresh = (ttl: unknown) => {
        if (renew) clearTimeout(renew);
        if (typeof ttl !== "number" || !this.options.refreshToken) return;
        renew = setTimeout(
          () => {
            void this.refresh()
              .then(async () => {
                const fresh = await this.token();
                if (fresh && this.ws === ws) {
                  const reply = await this.request({ type: "refresh", token: fresh });
                  if (reply.type === "refreshed") scheduleRefresh(reply.ttl);
                  else if (reply.type === "error" && reply.code !== "disconnected") {
                    this.emit("error", new HubError(String(reply.code), `token refresh refused: ${String(reply.message ?? "")}`));
                  }
                }
              })
              .catch((err: unknown) => this.emit("error", err instanceof Error ? err : new Error(String(err))));
          },
          Math.max(0, ttl * 1000 - this.options.refreshMarginMs),
        );
      };
      const done = (result: RunResult) => {
        clearTimeout(timeout);
        if (renew) clearTimeout(renew);
        if (beat) clearInterval(beat);
        if (this.ws === ws) this.ws = null;
        ws.onopen = ws.onclose = ws.onerror = ws.onmessage = null;
        resolve(result);
      };
      ws.onopen = () => {
        opened = true;
        lastFrame = Date.now();
        this.opened("websocket");
        for (const sub of this.subs.values()) this.sendSubscribe(sub);
        if (token && this.options.refreshToken) {
          // How long the token has: refresh it in band before then (no reconnect, no lost subscription).
          void this.request({ type: "session" }).then((reply) => scheduleRefresh(reply.ttl));
        }
        beat = setInterval(() => {
          if (Date.now() - lastFrame > 2 * this.options.heartbeatMs) {
            ws.close(1000, "heartbeat missed");
            done({ opened, code: 1006 });
            return;
          }
          this.send({ type: "ping" });
        }, this.options.heartbeatMs);
      };
      ws.onmessage = (ev) => {
        lastFrame = Date.now();
        let frame: Record<string, unknown>;
        try {
          frame =
            typeof ev.data === "string"
              ? (JSON.parse(ev.data) as Record<string, unknown>)
              : (decode(ev.data instanceof ArrayBuffer ? new Uint8Array(ev.data) : (ev.data as Uint8Array)) as Record<string, unknown>);
        } catch (err) {
          this.emit("error", new Error(`a frame that does not decode: ${String(err)}`));
          return;
        }
        this.onFrame(frame);
      };
      ws.onerror = () => {
        /* onclose follows */
      };
      ws.onclose = (ev) => done({ opened, code: ev.code, reason: ev.reason });
    });
  }

  private onFrame(frame: Record<string, unknown>): void {
    switch (frame.type) {
      case "event":
        this.deliver(frame as unknown as HubEvent);
        return;
      case "subscribed": {
        const sub = this.subs.get(String(frame.channel));
        if (sub) {
          sub.state = "active";
          if (sub.position === null && typeof frame.position === "string") sub.position = frame.position;
          sub.options.onSubscribed?.(typeof frame.position === "string" ? frame.position : null);
        }
        break;
      }
      case "resync": {
        const resync = frame as unknown as Resync;
        const sub = this.subs.get(resync.channel);
        const wasPending = sub?.state === "pending";
        void this.resync(resync).then(() => {
          // At subscribe the subscription was not made: subscribe again from the resync's position.
          if (wasPending && sub && this.subs.get(sub.channel) === sub && this.transport === "websocket") this.sendSubscribe(sub);
        });
        break;
      }
      case "token_expired":
        void this.refresh()
          .then(async () => {
            const token = await this.token();
            if (token) this.send({ type: "refresh", token });
          })
          .catch(() => undefined);
        break;
    }
    const id = frame.id;
    if (id !== undefined && id !== null) {
      const resolve = this.pending.get(String(id));
      if (resolve) {
        this.pending.delete(String(id));
        resolve(frame);
      }
    }
  }

  private sendSubscribe(sub: Subscription, attempt = 0): void {
    sub.state = "pending";
    const message: Record<string, unknown> = { type: "subscribe", channel: sub.channel };
    if (sub.position !== null) message.since = sub.position;
    const ws = this.ws;
    void this.request(message).then((reply) => {
      if (reply.type !== "error" || reply.code === "disconnected") return;
      if (reply.code === "already_subscribed") {
        sub.state = "active";
      } else if (RETRY_SUBSCRIBE.has(String(reply.code))) {
        // The hub could not make it now (its broker, under a storm): ask again after a while.
        const retryAfter = typeof reply.retry_after_ms === "number" ? reply.retry_after_ms : 0;
        const delay = Math.max(retryAfter, fullJitter(attempt, this.options.backoff, this.options.random));
        setTimeout(() => {
          if (this.ws === ws && this.subs.get(sub.channel) === sub && sub.state === "pending") this.sendSubscribe(sub, attempt + 1);
        }, delay);
      } else {
        this.emit("error", new HubError(String(reply.code), `subscribe ${sub.channel}: ${String(reply.message ?? "")}`, undefined, reply));
      }
    });
  }

  /** Send one frame on the open WebSocket (false when there is none). */
  send(message: Record<string, unknown>): boolean {
    const ws = this.ws;
    if (ws === null || ws.readyState !== 1) return false;
    ws.send(this.options.format === "msgpack" ? encode(message) : JSON.stringify(message));
    return true;
  }

  /** Send a message with an id and wait for the reply that echoes it (an error reply included). */
  request(message: Record<string, unknown>): Promise<Record<string, unknown>> {
    const id = `c${this.nextId++}`;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      if (!this.send({ ...message, id })) {
        this.pending.delete(id);
        resolve({ type: "error", code: "disconnected", message: "no WebSocket is open" });
      }
    });
  }

  // -- SSE and long-poll ---------------------------------------------------------------------------

  /** Channels grouped by the stream they follow (an SSE stream or a poll names one stream's channels). */
  private groups(): string[][] {
    const groups = new Map<string, string[]>();
    for (const channel of this.subs.keys()) {
      const parts = channel.split(":");
      const key = DOC_CHANNEL.test(channel) ? "user" : parts[0] === "parts-requests" ? channel : `${parts[0]}:${parts[1]}`;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key)!.push(channel);
    }
    return [...groups.values()];
  }

  private async headers(): Promise<Record<string, string>> {
    const token = await this.token();
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  private async runSse(): Promise<RunResult> {
    const abort = (this.abort = new AbortController());
    let opened = false;
    const groups = this.groups();
    if (groups.length === 0) {
      this.opened("sse");
      await new Promise<void>((resolve) => abort.signal.addEventListener("abort", () => resolve()));
      return { opened: true, code: 1000 };
    }
    const one = async (channels: string[]): Promise<RunResult> => {
      const since = earliest(channels.map((c) => this.subs.get(c)?.position ?? null));
      let query = `?channels=${encodeURIComponent(channels.join(","))}`;
      if (since) query += `&last_event_id=${encodeURIComponent(since)}`;
      const response = await this.options.fetch(`${this.baseUrl}/api/v1/sse${query}`, {
        headers: { Accept: "text/event-stream", ...(await this.headers()) },
        signal: abort.signal,
      });
      if (!response.ok || !response.body) {
        const body = await response.text().catch(() => "");
        this.emit("error", new HubError(`http_${response.status}`, `SSE refused: ${body.slice(0, 200)}`, response.status));
        return { opened, code: response.status >= 400 && response.status < 500 && response.status !== 429 ? 4000 + (response.status % 100) : 0 };
      }
      const reader = response.body.getReader();
      abort.signal.addEventListener("abort", () => void reader.cancel().catch(() => undefined));
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return { opened, code: 1000 };
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let cut: number;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let name = "message";
          const data: string[] = [];
          for (const line of block.split("\n")) {
            if (!line || line.startsWith(":")) continue;
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") name = text;
            else if (field === "data") data.push(text);
          }
          if (!data.length) continue;
          const payload = JSON.parse(data.join("\n")) as Record<string, unknown>;
          if (name === "ready") {
            if (!opened) {
              opened = true;
              this.opened("sse");
            }
            for (const c of channels) {
              const sub = this.subs.get(c);
              if (sub && sub.position === null) sub.position = String(payload.position);
            }
          } else if (name === "resync") {
            for (const c of String(payload.channel).split(",")) await this.resync({ ...(payload as unknown as Resync), channel: c });
          } else if (name === "close") {
            return { opened, code: 1000 };
          } else {
            this.deliver(payload as unknown as HubEvent);
          }
        }
      }
    };
    let timedOut = false;
    const timer = setTimeout(() => {
      if (!opened) {
        timedOut = true;
        abort.abort();
      }
    }, this.options.openTimeoutMs);
    try {
      const result = await Promise.race(groups.map(one));
      return timedOut ? { ...result, opened: false, timedOut } : result;
    } catch (err) {
      if (abort.signal.aborted) return { opened, code: 1000, timedOut };
      throw err;
    } finally {
      clearTimeout(timer);
      abort.abort();
    }
  }

  private async runPoll(): Promise<RunResult> {
    const abort = (this.abort = new AbortController());
    let opened = false;
    const one = async (channels: string[]): Promise<RunResult> => {
      let cursor = earliest(channels.map((c) => this.subs.get(c)?.position ?? null));
      for (;;) {
        let query = `?channels=${encodeURIComponent(channels.join(","))}&timeout=${this.options.pollTimeoutS}`;
        if (cursor) query += `&cursor=${encodeURIComponent(cursor)}`;
        const response = await this.options.fetch(`${this.baseUrl}/api/v1/poll${query}`, {
          headers: { Accept: "application/json", ...(await this.headers()) },
          signal: abort.signal,
        });
        const body = (await response.json().catch(() => ({}))) as Record<string, unknown>;
        if (response.status === 410) {
          for (const c of channels) await this.resync({ channel: c, reason: String(body.reason ?? "position_expired"), position: (body.position as string) ?? null, snapshot: (body.snapshot as string) ?? null });
          cursor = (body.position as string) ?? null;
          continue;
        }
        if (!response.ok) {
          this.emit("error", new HubError(String(body.code ?? `http_${response.status}`), `poll refused: ${String(body.detail ?? "")}`, response.status));
          return { opened, code: response.status >= 400 && response.status < 500 && response.status !== 429 ? 4000 + (response.status % 100) : 0 };
        }
        if (!opened) {
          opened = true;
          this.opened("poll");
        }
        for (const event of (body.events as HubEvent[]) ?? []) this.deliver(event);
        cursor = String(body.cursor);
        for (const c of channels) {
          const sub = this.subs.get(c);
          if (sub && sub.position === null) sub.position = cursor;
        }
      }
    };
    const groups = this.groups();
    try {
      if (groups.length === 0) {
        this.opened("poll");
        opened = true;
        await new Promise<void>((resolve) => abort.signal.addEventListener("abort", () => resolve()));
        return { opened, code: 1000 };
      }
      return await Promise.race(groups.map(one));
    } catch (err) {
      if (abort.signal.aborted) return { opened, code: 1000 };
      throw err;
    } finally {
      abort.abort();
    }
  }
}
