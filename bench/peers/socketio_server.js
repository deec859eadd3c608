// Peer for synchub's fan-out benchmark: a Node socket.io Server with a room broadcast.
//
//   node socketio_server.js <port>
//
// Binds 127.0.0.1 only. Socket.IO clients connect to /socket.io/ (Engine.IO v4, Socket.IO v5; the
// benchmark's clients open the websocket transport directly) and join one room on connection.
// `POST /publish` emits its body, a string, as event "m" to the room: `io.to(room).emit('m', body)`,
// which encodes the packet once for all the room's sockets. `GET /stats` answers
// {"clients": n, "peer": "node-socketio"} with n the size of the room.
// Node raises its own open-file soft limit to the hard limit at start-up (src/node.cc).
'use strict';

const http = require('http');
const { Server } = require('socket.io');

const PEER = 'node-socketio';
const ROOM = 'bench';
const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node socketio_server.js <port>');
  process.exit(2);
}

function readBody(req, done) {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => done(Buffer.concat(chunks).toString('utf8')));
}

// socket.io takes over /socket.io/ and hands every other request to this listener.
const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/publish') {
    readBody(req, (body) => {
      io.to(ROOM).emit('m', body);
      res.writeHead(204);
      res.end();
    });
  } else if (req.method === 'GET' && req.url === '/stats') {
    const room = io.of('/').adapter.rooms.get(ROOM);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ clients: room ? room.size : 0, peer: PEER }));
  } else {
    res.writeHead(404);
    res.end();
  }
});

const io = new Server(server, { serveClient: false, perMessageDeflate: false, httpCompression: false });
io.on('connection', (socket) => {
  socket.join(ROOM);
});

server.listen(port, '127.0.0.1', 4096, () => console.log('ready')); // start_peer waits for it
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
