import { throws } from "node:assert";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { CodecError, fromDict, fromHex, fromMsgpack } from "../src/crdt/index.js";
import { replay, type Trace } from "./replay.js";

const GOLDEN = new URL("../../../golden/", import.meta.url);

for (const name of ["cart.json", "review.json"]) {
  const body = JSON.parse(readFileSync(new URL(name, GOLDEN), "utf-8")) as { traces: Trace[]; errors: { json?: unknown; msgpack?: string }[] };
  for (const trace of body.traces) {
    test(`golden ${name}: ${trace.name} replays to the same bytes and views`, () => {
      replay(trace);
    });
  }
  test(`golden ${name}: every malformed payload is refused`, () => {
    for (const item of body.errors) {
      throws(
        () => (item.json !== undefined ? fromDict(item.json) : fromMsgpack(fromHex(item.msgpack!))),
        CodecError,
        JSON.stringify(item),
      );
    }
  });
}
