'use strict';
// https_endpoint.js: an HTTPS endpoint in front of the development
// dashboard for the benchmark. Like the production dashboard (a Node
// server), it closes a connection that has been idle for IDLE_MS
// (Node's default keep-alive timeout, 5000 ms). It does so with a timer of
// its own, from the end of each response: Node's own timeout comes a
// little later than it says.
//
//   node bench/https_endpoint.js KEY CERT UPSTREAM_PORT PORT_FILE [IDLE_MS]
const fs = require('fs');
const http = require('http');
const https = require('https');

const [keyFile, certFile, upstreamPort, portFile, idleMs] =
  process.argv.slice(2);
if (!portFile) {
  process.stderr.write(
    'usage: node https_endpoint.js KEY CERT UPSTREAM_PORT PORT_FILE [IDLE_MS]\n');
  process.exit(2);
}
const upstream = new http.Agent({ keepAlive: true });
const idle = Number(idleMs || 5000);
// GET /__endpoint/stats: the TLS connections made so far, and how many of
// them resumed an earlier session
const stats = { connections: 0, resumed: 0 };

const server = https.createServer({
  key: fs.readFileSync(keyFile),
  cert: fs.readFileSync(certFile),
}, (req, res) => {
  const socket = req.socket;
  clearTimeout(socket.idleTimer);
  res.on('finish', () => {
    clearTimeout(socket.idleTimer);
    socket.idleTimer = setTimeout(() => socket.destroy(), idle);
  });
  if (req.url === '/__endpoint/stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(stats));
    return;
  }
  const forward = http.request({
    host: '127.0.0.1', port: Number(upstreamPort), method: req.method,
    path: req.url, headers: req.headers, agent: upstream,
  }, (reply) => {
    res.writeHead(reply.statusCode, reply.headers);
    reply.pipe(res);
  });
  forward.on('error', (err) => {
    res.writeHead(502, { 'content-type': 'text/plain' });
    res.end(String(err));
  });
  req.pipe(forward);
});
server.on('secureConnection', (socket) => {
  stats.connections += 1;
  if (socket.isSessionReused()) stats.resumed += 1;
});
server.keepAliveTimeout = idle + 60000; // the timer above comes first
server.listen(0, '127.0.0.1', () => {
  fs.writeFileSync(portFile + '.tmp', String(server.address().port));
  fs.renameSync(portFile + '.tmp', portFile);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
