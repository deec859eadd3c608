/**
 * Test doubles that are real implementations of the seams: a WebSocket the test plays the hub on, and
 * a fetch that answers the few REST calls the client makes on its own (tickets, /readyz).
 */

import type { WebSocketLike } from "../src/index.js";

export class FakeWebSocket implements WebSocketLike {
  static instances: FakeWebSocket[] = [];
  readyState = 0;
  protocol = "";
  binaryType = "blob";
  onopen: ((ev: unknown) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  readonly sent: Record<string, unknown>[] = [];

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {
    FakeWebSocket.instances.push(this);
  }

  static reset(): void {
    FakeWebSocket.instances = [];
  }

  static last(): FakeWebSocket {
    return FakeWebSocket.instances[FakeWebSocket.instances.length - 1]!;
  }

  /** The hub accepts the connection. */
  accept(): void {
    this.readyState = 1;
    this.protocol = Array.isArray(this.protocols) ? this.protocols[0]! : (this.protocols ?? "");
    this.onopen?.({});
  }

  /** The hub sends a frame (JSON). */
  push(frame: Record<string, unknown>): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** The hub (or the network) ends the connection with `code`. */
  drop(code: number, reason = ""): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  send(data: string | Uint8Array): void {
    this.sent.push(JSON.parse(String(data)) as Record<string, unknown>);
  }

  close(code = 1000, reason = ""): void {
    queueMicrotask(() => this.drop(code, reason));
  }

  /** The frames of `type` sent so far, without their `id`. */
  bare(type: string): Record<string, unknown>[] {
    return this.frames(type).map(({ id: _id, ...rest }) => rest);
  }

  /** The frames of `type` sent so far. */
  frames(type: string): Record<string, unknown>[] {
    return this.sent.filter((f) => f.type === type);
  }
}

export interface FetchCall {
  url: string;
  authorization: string | null;
}

/** A fetch for the client's own calls: tickets and /readyz answer; anything else is a 404. */
export function fakeFetch(calls: FetchCall[], extra?: (url: string, init?: RequestInit) => Response | null): typeof fetch {
  return (async (input: string | URL | Request, init?: RequestInit) => {
    const url = String(input);
    const headers = new Headers(init?.headers);
    calls.push({ url, authorization: headers.get("Authorization") });
    const answer = extra?.(url, init);
    if (answer) return answer;
    if (url.endsWith("/api/v1/realtime/tickets")) return Response.json({ ticket: `ticket-${calls.length}`, ttl: 30 }, { status: 201 });
    if (url.endsWith("/readyz")) return new Response("ok");
    return Response.json({ code: "not_found" }, { status: 404 });
  }) as typeof fetch;
}

export async function until(check: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
