// Load client of `python -m bench sync` for the Hocuspocus peer: U users × 2 devices, each device its own
// WebSocket and its own Y.Doc on the user's document, the cart a Y.Map sku → quantity.
//
//   node hocuspocus_client.js        (commands on stdin, one JSON object a line; answers on stdout)
//
//   {"cmd": "setup", "url": "ws://127.0.0.1:PORT", "users": ["doc-name", …], "skus": […]}
//       → {"ok": true, "seconds": s}: every device connected, authenticated and synced
//   {"cmd": "step", "rate": R, "seconds": S, "drain": D, "seed": n}
//       → {"ok": true, …}: R edits per second over all devices for S seconds, then up to D seconds for
//         the acknowledgements and deliveries; see `step` for the fields
//   {"cmd": "close"} (or the end of stdin) → {"ok": true, "cmd": "exit"}, and the process exits
//
// The Hocuspocus protocol is spoken directly (what @hocuspocus/provider does, without awareness):
// every message is varString(document name), varUint(type), then the body. A device sends Auth (type 2,
// Token) and, once Authenticated, Yjs sync step 1 (type 0); the server answers step 2 (type 4,
// SyncReply) and its own step 1, which the device answers with its step 2. An edit is one Y transaction
// on the device's doc; its update goes out as Sync/Update (type 0, y-protocols messageYjsUpdate).
//
// What the server does with an update (@hocuspocus/server 3.4, MessageReceiver.readSyncMessage and
// Document.handleUpdate), synchronously in one go: apply it to the document, broadcast the document's
// resulting update to every connection of the document — the sender's too — and send the sender
// SyncStatus(1) (type 8), the acknowledgement @hocuspocus/provider counts `unsyncedChanges` down with.
// That acknowledgement is what this client times as the "ack": the edit was applied in the server's
// memory (it is stored later, debounced: see hocuspocus_server.js). An update that changes nothing on
// the server (both devices deleting one key at once) is acknowledged without a broadcast.
//
// Matching: every edit is known by its update's identity — for an update with new items, its author's
// client id and first clock (Y.parseUpdateMeta); for a delete-only update (a removed line), its delete
// set. The server's broadcast of an edit carries the same items, so a device tells its own echoes from
// the other device's edits, and times each of the other device's edits from its send. Acknowledgements
// come in the order of the device's sends. An edit the server does not broadcast (a delete of what the
// other device deleted just before) is counted as a no-op, not as a loss: the step is complete once
// every edit is acknowledged and, 50 ms later, every edit with new items has been delivered.
// Bytes: the TCP bytes each socket read and wrote during the step (frames, headers included).
'use strict';

const readline = require('readline');
const WebSocket = require('ws');
const Y = require('yjs');
const encoding = require('lib0/encoding');
const decoding = require('lib0/decoding');
const syncProtocol = require('y-protocols/sync');

// @hocuspocus/common: MessageType and AuthMessageType
const SYNC = 0;
const AWARENESS = 1;
const AUTH = 2;
const SYNC_REPLY = 4;
const SYNC_STATUS = 8;
const AUTH_TOKEN = 0;
const AUTH_DENIED = 1;
const AUTH_OK = 2;
const REMOTE = Symbol('remote'); // the origin of updates applied from the server

function now() {
  return performance.now(); // ms
}

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Device {
  constructor(name, index) {
    this.name = name; // the document
    this.index = index; // 0 or 1
    this.peer = null;
    this.doc = new Y.Doc();
    this.map = this.doc.getMap('cart');
    this.ws = null;
    this.synced = false;
    this.answered = false;
    this.awaitingAck = false;
    this.failure = null;
    this.waiters = [];
    this.resetStep();
    this.doc.on('update', (update, origin) => {
      if (origin !== REMOTE) this.sendUpdate(update);
    });
  }

  resetStep() {
    this.sent = []; // send times of this step's edits, in order (acknowledged in that order)
    this.keys = new Map(); // an edit's identity → {t: send time, delivered: false, items: bool}
    this.acks = 0;
    this.ackMs = [];
    this.deliveryMs = []; // the other device's edits, timed from its send to the arrival here
    this.lastArrival = 0;
    this.echoes = 0;
    this.unknown = 0; // updates that are neither this device's nor the other's edits of this step
    this.other = 0; // messages of other kinds during the step
    this.ackedAt = 0; // when both devices had every edit acknowledged
    this.bytesIn0 = this.ws ? this.ws._socket.bytesRead : 0;
    this.bytesOut0 = this.ws ? this.ws._socket.bytesWritten : 0;
  }

  message(type, write) {
    const encoder = encoding.createEncoder();
    encoding.writeVarString(encoder, this.name);
    encoding.writeVarUint(encoder, type);
    write(encoder);
    return encoding.toUint8Array(encoder);
  }

  send(bytes) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes);
  }

  sendUpdate(update) {
    const t = now();
    const [key, items] = identity(update);
    this.sent.push(t);
    this.keys.set(key, { t, delivered: false, items });
    this.send(this.message(SYNC, (e) => syncProtocol.writeUpdate(e, update)));
  }

  notify() {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  connect(url) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false });
      this.ws = ws;
      ws.binaryType = 'nodebuffer';
      ws.on('open', () => {
        this.send(
          this.message(AUTH, (e) => {
            encoding.writeVarUint(e, AUTH_TOKEN);
            encoding.writeVarString(e, 'bench');
          }),
        );
      });
      ws.on('message', (data) => {
        try {
          this.receive(data);
        } catch (error) {
          this.failure = String(error);
          reject(error);
        }
        if (this.ready()) resolve();
      });
      ws.on('error', (error) => {
        this.failure = String(error);
        reject(error);
      });
      ws.on('close', () => {
        if (!this.failure) this.failure = 'closed by the server';
        reject(new Error(this.failure));
        this.notify();
      });
    });
  }

  // Connected: the server's document received (its step 2), its step 1 answered and that answer
  // acknowledged (so no handshake acknowledgement is taken for an edit's).
  ready() {
    return this.synced && this.answered && !this.awaitingAck;
  }

  receive(data) {
    const t = now();
    const decoder = decoding.createDecoder(data);
    const name = decoding.readVarString(decoder);
    if (name !== this.name) return;
    const type = decoding.readVarUint(decoder);
    if (type === SYNC || type === SYNC_REPLY) {
      const kind = decoding.readVarUint(decoder);
      if (kind === syncProtocol.messageYjsUpdate) {
        const update = decoding.readVarUint8Array(decoder);
        this.arrived(update, t);
        Y.applyUpdate(this.doc, update, REMOTE);
      } else if (kind === syncProtocol.messageYjsSyncStep2) {
        Y.applyUpdate(this.doc, decoding.readVarUint8Array(decoder), REMOTE);
        this.synced = true;
      } else if (kind === syncProtocol.messageYjsSyncStep1) {
        const encoder = encoding.createEncoder();
        encoding.writeVarString(encoder, this.name);
        encoding.writeVarUint(encoder, SYNC);
        syncProtocol.readSyncStep1(decoder, encoder, this.doc);
        this.send(encoding.toUint8Array(encoder));
        this.answered = true;
        this.awaitingAck = true;
      }
    } else if (type === SYNC_STATUS) {
      decoding.readVarUint(decoder); // 1: applied
      if (this.awaitingAck) {
        this.awaitingAck = false; // the acknowledgement of the sync step 2
      } else if (this.acks < this.sent.length) {
        this.ackMs.push(t - this.sent[this.acks]);
        this.acks += 1;
      } else {
        this.other += 1; // an acknowledgement of nothing this device sent
      }
    } else if (type === AUTH) {
      const kind = decoding.readVarUint(decoder);
      if (kind === AUTH_OK) {
        this.send(this.message(SYNC, (e) => syncProtocol.writeSyncStep1(e, this.doc)));
      } else if (kind === AUTH_DENIED) {
        throw new Error('permission denied: ' + decoding.readVarString(decoder));
      }
    } else if (type !== AWARENESS) {
      this.other += 1;
    }
    if (this.waiters.length) this.notify();
  }

  // One edit of the mix: 50% add 1–3 units, 30% set 1–9, 20% remove a line the cart has (an add when
  // it has none). The update goes out from the doc's update handler.
  edit(rng, skus) {
    const r = rng();
    const keys = r >= 0.8 ? Array.from(this.map.keys()) : null;
    if (keys && keys.length) {
      this.map.delete(keys[Math.floor(rng() * keys.length)]);
    } else if (r >= 0.5 && r < 0.8) {
      this.map.set(skus[Math.floor(rng() * skus.length)], 1 + Math.floor(rng() * 9));
    } else {
      const sku = skus[Math.floor(rng() * skus.length)];
      this.map.set(sku, (this.map.get(sku) || 0) + 1 + Math.floor(rng() * 3));
    }
  }

  // An update from the server: this device's own edit echoed, or the other device's edit delivered.
  arrived(update, t) {
    const [key, items] = identity(update);
    const own = items ? key.startsWith(`${this.doc.clientID}:`) : this.keys.has(key);
    const edit = this.peer.keys.get(key);
    if (edit !== undefined && !edit.delivered && !(items && own)) {
      edit.delivered = true;
      this.deliveryMs.push(t - edit.t);
      this.lastArrival = t;
    } else if (own) {
      this.echoes += 1;
    } else {
      this.unknown += 1;
    }
  }

  // Complete for the step: every edit of both devices acknowledged and, 50 ms after that, every edit
  // of the other device delivered but those the server did not broadcast (deletes only).
  complete(t) {
    if (this.acks < this.sent.length || this.peer.acks < this.peer.sent.length) return false;
    if (!this.ackedAt) this.ackedAt = t;
    for (const edit of this.peer.keys.values()) {
      if (!edit.delivered && (edit.items || t - this.ackedAt < 50)) return false;
    }
    return true;
  }

  // The other device's edits not delivered here: [deletes (no-ops on the server), edits with items]
  undelivered() {
    let noops = 0;
    let lost = 0;
    for (const edit of this.peer.keys.values()) {
      if (!edit.delivered) {
        if (edit.items) lost += 1;
        else noops += 1;
      }
    }
    return [noops, lost];
  }
}

// An update's identity: [key, has items]. With items, "client:clock" of its first one (an edit's update
// holds the items of one client, the author); without, its delete set.
function identity(update) {
  const meta = Y.parseUpdateMeta(update);
  for (const [client, clock] of meta.from) return [`${client}:${clock}`, true];
  const ds = Y.decodeUpdate(update).ds;
  const parts = [];
  for (const [client, ranges] of ds.clients) {
    parts.push(`${client}:${ranges.map((r) => `${r.clock}+${r.len}`).join(',')}`);
  }
  return ['d:' + parts.sort().join(';'), false];
}

let devices = [];
let skus = [];

async function setup(cmd) {
  const started = now();
  skus = cmd.skus;
  devices = [];
  for (const name of cmd.users) {
    const a = new Device(name, 0);
    const b = new Device(name, 1);
    a.peer = b;
    b.peer = a;
    devices.push(a, b);
  }
  // First devices first (the document is created and loaded once), then the others.
  for (const index of [0, 1]) {
    const group = devices.filter((d) => d.index === index);
    for (let i = 0; i < group.length; i += 100) {
      await Promise.all(group.slice(i, i + 100).map((d) => d.connect(cmd.url)));
    }
  }
  return { seconds: (now() - started) / 1000 };
}

function round(values) {
  return values.map((v) => Math.round(v * 1000) / 1000);
}

async function step(cmd) {
  const rng = mulberry32(cmd.seed || 1);
  const cpu0 = process.cpuUsage();
  for (const d of devices) d.resetStep();
  const total = Math.max(1, Math.round(cmd.rate * cmd.seconds));
  const interval = 1000 / cmd.rate;
  const started = now();
  let lagMs = 0;
  let i = 0;
  await new Promise((resolve) => {
    const tick = () => {
      const t = now();
      while (i < total && started + i * interval <= t) {
        lagMs = Math.max(lagMs, t - (started + i * interval));
        const device = devices[Math.floor(rng() * devices.length)];
        device.edit(rng, skus);
        i += 1;
      }
      if (i >= total) return resolve();
      setTimeout(tick, Math.max(0, started + i * interval - now()));
    };
    tick();
  });
  const sentAt = now();
  const deadline = sentAt + cmd.drain * 1000;
  while (now() < deadline && !devices.every((d) => d.complete(now()))) {
    await new Promise((r) => setTimeout(r, 5));
  }
  const ackMs = [];
  const deliveryMs = [];
  let sent = 0;
  let acked = 0;
  let noops = 0;
  let lost = 0;
  let bytesIn = 0;
  let bytesOut = 0;
  let other = 0;
  let echoes = 0;
  let unknown = 0;
  let lastAck = 0;
  let lastDelivery = 0;
  for (const d of devices) {
    sent += d.sent.length;
    acked += d.acks;
    const [n, l] = d.undelivered();
    noops += n;
    lost += l;
    for (let k = 0; k < d.acks; k++) lastAck = Math.max(lastAck, d.sent[k] + d.ackMs[k]);
    for (const v of d.ackMs) ackMs.push(v);
    for (const v of d.deliveryMs) deliveryMs.push(v);
    lastDelivery = Math.max(lastDelivery, d.lastArrival);
    bytesIn += d.ws._socket.bytesRead - d.bytesIn0;
    bytesOut += d.ws._socket.bytesWritten - d.bytesOut0;
    other += d.other;
    echoes += d.echoes;
    unknown += d.unknown;
  }
  const cpu = process.cpuUsage(cpu0);
  return {
    sent,
    acked,
    duplicates: 0,
    errors: devices.filter((d) => d.failure).length,
    error_codes: {},
    noops,
    lost,
    echoes,
    unknown,
    expected_deliveries: sent - noops,
    delivered: deliveryMs.length,
    ack_ms: round(ackMs),
    delivery_ms: round(deliveryMs),
    acked_s: lastAck ? (lastAck - started) / 1000 : 0,
    delivered_s: lastDelivery ? (lastDelivery - started) / 1000 : 0,
    send_s: (sentAt - started) / 1000,
    max_send_lag_ms: lagMs,
    bytes_in: bytesIn,
    bytes_out: bytesOut,
    other_messages: other,
    client_cpu_s: (cpu.user + cpu.system) / 1e6,
  };
}

async function handle(cmd) {
  if (cmd.cmd === 'setup') return setup(cmd);
  if (cmd.cmd === 'step') return step(cmd);
  throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
}

// Answers go out in order; the process exits once its last answer is written (stdout is a pipe: a
// write completes later) — after `close`, or when stdin ends (the parent is done, or gone).
function answer(obj, then) {
  process.stdout.write(JSON.stringify(obj) + '\n', then);
}

function exit() {
  for (const d of devices) if (d.ws) d.ws.terminate();
  answer({ ok: true, cmd: 'exit' }, () => process.exit(0));
}

const lines = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
lines.on('line', (line) => {
  queue = queue.then(async () => {
    let cmd;
    try {
      cmd = JSON.parse(line);
      if (cmd.cmd === 'close') return exit();
      const result = await handle(cmd);
      answer({ ok: true, cmd: cmd.cmd, ...result });
    } catch (error) {
      answer({ ok: false, cmd: cmd && cmd.cmd, error: String(error) });
    }
  });
});
lines.on('close', () => queue.then(exit));
