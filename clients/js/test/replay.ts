/** Replays a golden trace (clients/golden/generate.py) with the TypeScript port; returns the mismatches. */

import { deepStrictEqual } from "node:assert";

import { Cart } from "../src/crdt/cart.js";
import { fromDict, fromHex, fromMsgpack, toDict, toHex, toMsgpack, type Crdt } from "../src/crdt/codec.js";
import { encodeContext } from "../src/crdt/context.js";
import { Review } from "../src/crdt/review.js";

export interface Step {
  op: "mutate" | "deliver";
  dev: number;
  call?: unknown[];
  delta?: string;
  payload?: string;
  json?: unknown;
  after?: string;
  view?: unknown;
}

export interface Trace {
  name: string;
  type: "cart" | "review";
  replicas: string[];
  steps: Step[];
  final?: { msgpack: string; json: unknown }[];
}

export function cartView(cart: Cart): unknown {
  const ts = cart.maxTimestamp();
  const lines: Record<string, unknown> = {};
  for (const [sku, line] of cart.lines()) lines[sku] = [line.quantity, line.conflicts];
  return {
    value: cart.value(),
    lines,
    closed: cart.closed,
    rejected: cart.rejectedEdits().map((e) => [e.sku, e.kind, e.dot.replica, e.dot.counter, e.quantity]),
    context: encodeContext(cart.context),
    max_ts: ts === null ? null : [ts.wallMs, ts.logical, ts.replica],
  };
}

export function reviewView(review: Review): unknown {
  const value = review.value();
  const ts = review.maxTimestamp();
  const mod = review.moderation;
  return {
    value:
      value === null
        ? null
        : {
            review_id: value.reviewId,
            product: value.product,
            author: value.author,
            rating: value.rating,
            text: value.text,
            media: value.media,
            status: value.status,
            rating_conflicts: value.ratingConflicts,
            text_conflicts: value.textConflicts,
          },
    review_id: review.reviewId,
    deleted: review.deleted,
    erased: review.erased,
    status: review.status(),
    context: encodeContext(review.context),
    moderation: mod === null ? null : [mod.seq, mod.status, encodeContext(mod.judged)],
    max_ts: ts === null ? null : [ts.wallMs, ts.logical, ts.replica],
  };
}

export function runCall(state: Crdt, call: unknown[]): Crdt {
  const [name, ...args] = call as [string, ...any[]];
  if (state instanceof Cart) {
    switch (name) {
      case "add":
        return state.add(args[0], args[1], args[2]);
      case "set":
        return state.set(args[0], args[1], args[2], { wallMs: args[3], logical: args[4], replica: args[0] });
      case "remove":
        return state.remove(args[0], args[1]);
      case "close":
        return state.close(args[0]);
    }
  } else {
    switch (name) {
      case "create":
        return state.create(args[0], args[1], args[2]);
      case "set_rating":
        return state.setRating(args[0], args[1], { wallMs: args[2], logical: args[3], replica: args[0] });
      case "set_text":
        return state.setText(args[0], args[1], { wallMs: args[2], logical: args[3], replica: args[0] });
      case "add_media":
        return state.addMedia(args[0], args[1]);
      case "remove_media":
        return state.removeMedia(args[0], args[1]);
      case "delete":
        return state.delete(args[0]);
      case "erase":
        return state.erase(args[0]);
      case "moderate":
        return state.moderate(args[0], args[1]);
    }
  }
  throw new Error(`unknown call ${name}`);
}

function apply(state: Crdt, delta: Crdt): void {
  if (state instanceof Cart && delta instanceof Cart) state.apply(delta);
  else if (state instanceof Review && delta instanceof Review) state.apply(delta);
  else throw new Error("type mismatch");
}

/** Replays `trace`; throws (an AssertionError naming the step) at the first difference. */
export function replay(trace: Trace): Crdt[] {
  const states: Crdt[] = trace.replicas.map(() => (trace.type === "cart" ? Cart.new() : Review.new()));
  trace.steps.forEach((step, i) => {
    const where = `${trace.name}, step ${i} (${step.op}${step.call ? " " + JSON.stringify(step.call) : ""})`;
    const state = states[step.dev]!;
    let delta: Crdt;
    if (step.op === "mutate") {
      delta = runCall(state, step.call!);
      deepStrictEqual(toHex(toMsgpack(delta)), step.delta, `${where}: the delta's bytes`);
    } else if (step.json !== undefined) {
      delta = fromDict(JSON.parse(JSON.stringify(step.json)));
    } else {
      delta = fromMsgpack(fromHex(step.payload!));
    }
    apply(state, delta);
    if (step.after !== undefined) deepStrictEqual(toHex(toMsgpack(state)), step.after, `${where}: the state's bytes`);
    if (step.view !== undefined) {
      const view = state instanceof Cart ? cartView(state) : reviewView(state);
      deepStrictEqual(view, step.view, `${where}: the view`);
    }
  });
  (trace.final ?? []).forEach((final, i) => {
    deepStrictEqual(toHex(toMsgpack(states[i]!)), final.msgpack, `${trace.name}: final state ${i}`);
    deepStrictEqual(toDict(states[i]!), final.json, `${trace.name}: final state ${i}, JSON form`);
  });
  return states;
}
