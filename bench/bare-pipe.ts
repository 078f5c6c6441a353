// The reference row of S1 and S2: a bare Node.js relay, the naive floor the orientation
// figures come from. No pooling, no parsing, no policy, no audit: each client gets a PostgreSQL
// connection of its own (the client logs in to PostgreSQL itself, as the server role), and the
// two sockets are joined with stream.pipe() both ways. With TLS, an SSLRequest is answered 'S'
// and the socket wrapped in a server-side TLSSocket, as pgbastion and PgBouncer terminate it.
// It shows, in the same run, what Node's socket and TLS machinery alone cost per transaction.
//
// Usage: node --import tsx bench/bare-pipe.ts <port> <postgres port> [<cert file> <key file>]

import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { GSSENC_REQUEST_CODE, SSL_REQUEST_CODE } from '../src/protocol/startup.js';

const [port, upstreamPort, certFile, keyFile] = process.argv.slice(2);
if (!port || !upstreamPort || (certFile === undefined) !== (keyFile === undefined)) {
  console.error('usage: bare-pipe.ts <port> <postgres port> [<cert file> <key file>]');
  process.exit(2);
}
const context = certFile && keyFile ? tls.createSecureContext({ cert: readFileSync(certFile), key: readFileSync(keyFile) }) : null;

/** Joins `client` to a new PostgreSQL connection; either side closing closes the other. */
function join(client: net.Socket, first: Buffer | null): void {
  const server = net.connect(Number(upstreamPort), '127.0.0.1');
  server.setNoDelay(true);
  if (first) server.write(first);
  client.pipe(server);
  server.pipe(client);
  client.on('error', () => server.destroy());
  server.on('error', () => client.destroy());
  client.on('close', () => server.destroy());
  server.on('close', () => client.destroy());
}

/** The first 8 bytes of a connection: an SSLRequest or GSSENCRequest code, or a startup packet's start. */
function requestCode(d: Buffer): number | null {
  return d.length === 8 && d.readInt32BE(0) === 8 ? d.readInt32BE(4) : null;
}

const listener = net.createServer((socket) => {
  socket.setNoDelay(true);
  socket.on('error', () => socket.destroy());
  const onFirst = (d: Buffer): void => {
    const code = requestCode(d);
    if (code === GSSENC_REQUEST_CODE || (code === SSL_REQUEST_CODE && context === null)) {
      socket.write('N'); // no GSS encryption (nor TLS here): the client goes on with the next request
      socket.once('data', onFirst);
      return;
    }
    if (context === null) return join(socket, d);
    if (code !== SSL_REQUEST_CODE) return void socket.destroy(); // TLS is required, as hostssl / client_tls_sslmode = require
    socket.write('S');
    join(new tls.TLSSocket(socket, { isServer: true, secureContext: context }), null);
  };
  socket.once('data', onFirst);
});
listener.listen(Number(port), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
