// Peer for synchub's fan-out benchmark: a plain `ws` WebSocketServer.
//
//   node ws_server.js <port>
//
// Binds 127.0.0.1 only. WebSocket clients connect to /ws. `POST /publish` broadcasts its body verbatim as
// one text message to every open client: the body is turned into one Buffer per publish and that same
// Buffer is handed to every client's `send` (the broadcast idiom of the `ws` README; no per-client
// re-encoding, no compression). `GET /stats` answers {"clients": n, "peer": "node-ws"}.
// Node raises its own open-file soft limit to the hard limit at start-up (src/node.cc), so there is
// nothing to do here for RLIMIT_NOFILE; the Python launcher checks it in /proc/<pid>/limits.
'use strict';

const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const PEER = 'node-ws';
const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node ws_server.js <port>');
  process.exit(2);
}

function readBody(req, done) {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => done(Buffer.concat(chunks)));
}

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/publish') {
    readBody(req, (body) => {
      for (const client of wss.clients) {
        if (client.readyState === WebSocket.OPEN) client.send(body, { binary: false });
      }
      res.writeHead(204);
      res.end();
    });
  } else if (req.method === 'GET' && req.url === '/stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ clients: wss.clients.size, peer: PEER }));
  } else {
    res.writeHead(404);
    res.end();
  }
});

const wss = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false, clientTracking: true });
wss.on('connection', (ws) => {
  ws.on('error', () => {}); // a client that resets its connection is simply dropped
});

server.listen(port, '127.0.0.1', 4096, () => console.log('ready')); // start_peer waits for it
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
