// Peer for synchub's cart sync benchmark (`python -m bench sync`): a Hocuspocus server (Yjs over
// WebSocket) persisting to SQLite with @hocuspocus/extension-sqlite.
//
//   node hocuspocus_server.js <port>
//
// Binds 127.0.0.1 only. Clients speak the Hocuspocus protocol on `/` (hocuspocus_client.js does). No
// authentication hook: every token is accepted. `GET /stats` answers {"clients": n, "peer": "hocuspocus",
// "documents": n}. The SQLite database is a file in a new temporary folder, removed at exit.
//
// How Hocuspocus persists, as configured here (its defaults): a change to a document is applied in
// memory, broadcast to every connection of the document and acknowledged to its sender (SyncStatus)
// at once; storing is debounced — `onStoreDocument` runs 2 s (`debounce`) after the document's last
// change, and at the latest 10 s (`maxDebounce`) after the first unstored one — and then writes the
// whole document (`Y.encodeStateAsUpdate`) in one upsert. The SQLite extension's `store` issues that
// upsert without waiting for it (node-sqlite3 `db.run` with no callback; SQLite's defaults: rollback
// journal, synchronous=FULL). So an acknowledged edit is not yet durable: a crash loses up to the last
// 2–10 s of edits. Documents are stored and unloaded when their last connection closes.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { Server } = require('@hocuspocus/server');
const { SQLite } = require('@hocuspocus/extension-sqlite');

const PEER = 'hocuspocus';
const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node hocuspocus_server.js <port>');
  process.exit(2);
}

const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'hocuspocus-bench-'));
const database = path.join(folder, 'documents.sqlite');

const server = new Server({
  port,
  address: '127.0.0.1',
  quiet: true,
  stopOnSignals: false, // handled below: the temporary folder goes too
  extensions: [new SQLite({ database })],
  async onRequest({ request, response }) {
    if (request.method === 'GET' && request.url === '/stats') {
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(
        JSON.stringify({
          clients: server.webSocketServer.clients.size,
          documents: server.hocuspocus.getDocumentsCount(),
          database,
          peer: PEER,
        }),
      );
      throw null; // handled: no default answer (Hocuspocus's way for a hook to stop the chain)
    }
  },
});

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  const timer = setTimeout(() => finish(1), 5000); // documents that will not unload: give up
  try {
    await server.destroy();
  } catch (error) {
    console.error(error);
  }
  clearTimeout(timer);
  finish(0);
}

function finish(code) {
  fs.rmSync(folder, { recursive: true, force: true });
  process.exit(code);
}

process.on('SIGTERM', stop);
process.on('SIGINT', stop);

server.listen().then(
  () => console.log('ready'), // start_peer waits for it
  (error) => {
    console.error(error);
    finish(1);
  },
);
