/**
 * The TypeScript side of tests/test_client_crdt_cross.py: reads one trace (clients/golden's format)
 * per line on stdin, replays it with the port, answers one line per trace: {"ok": true} or
 * {"ok": false, "error": "..."}.
 */

import { createInterface } from "node:readline";

import { replay, type Trace } from "./replay.js";

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer: { ok: boolean; error?: string };
  try {
    replay(JSON.parse(line) as Trace);
    answer = { ok: true };
  } catch (err) {
    answer = { ok: false, error: err instanceof Error ? err.message : String(err) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
