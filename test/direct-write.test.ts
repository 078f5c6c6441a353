// Writes that skip Node's Writable (src/net/direct-write.ts): bytes arrive whole and in
// order with socket.write() and end() interleaved, a write the kernel cannot take at once
// stays in flight and holds its buffer, bytesWritten counts them, TLS sockets are left alone.

import t from 'tap';
import net from 'node:net';
import tls from 'node:tls';
import { directWrite, directWritesAvailable, inFlight, pendingDeprecations } from '../src/net/direct-write.js';

/** A connected pair on 127.0.0.1: `client` (ours to write on) and the accepted `peer`. */
async function pair(t: Parameters<Parameters<typeof t.test>[1]>[0]): Promise<{ client: net.Socket; peer: net.Socket }> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  await new Promise((r) => client.once('connect', r));
  const peer = await accepted;
  t.teardown(() => {
    client.destroy();
    peer.destroy();
    server.close();
  });
  return { client, peer };
}

function collect(peer: net.Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  peer.on('data', (c: Buffer) => chunks.push(c));
  return new Promise((r) => peer.once('end', () => r(Buffer.concat(chunks))));
}

t.test('available on this Node (else every write takes socket.write, and the bench loses it)', async (t) => {
  t.equal(directWritesAvailable, true);
});

t.test('bytes arrive in order with socket.write() and end() in between; bytesWritten counts them', async (t) => {
  const { client, peer } = await pair(t);
  const got = collect(peer);
  t.equal(directWrite(client, Buffer.from('one,')), true, 'idle socket: written directly');
  client.cork();
  t.equal(directWrite(client, Buffer.from('x')), false, 'corked: declined');
  client.write('two,');
  client.uncork();
  t.equal(directWrite(client, Buffer.from('three,')), client.writableLength === 0, 'only when nothing is buffered');
  client.end('four');
  t.equal(directWrite(client, Buffer.from('late')), false, 'ended: declined');
  const all = (await got).toString();
  t.match(all, /^one,two,(three,)?four$/);
  t.equal(client.bytesWritten, all.length);
});

t.test('a write the kernel cannot take at once stays in flight; what follows queues behind it', async (t) => {
  const { client, peer } = await pair(t);
  peer.pause(); // the peer does not read: the kernel buffers fill
  const big = Buffer.alloc(16 * 1024 * 1024, 0x61);
  t.equal(directWrite(client, big), true);
  t.equal(inFlight(client), true, 'in flight: its buffer is still referenced');
  t.equal(directWrite(client, Buffer.from('b')), false, 'declined while one is in flight');
  client.write(Buffer.from('bc'));
  client.end();
  const got = collect(peer);
  peer.resume();
  const all = await got;
  t.equal(all.length, big.length + 2);
  t.equal(all.subarray(-2).toString(), 'bc', 'the later write came after the whole first one');
  t.equal(inFlight(client), false, 'completed');
});

t.test('a write to a socket the peer reset ends it with an error', async (t) => {
  const { client, peer } = await pair(t);
  const errored = new Promise<Error>((r) => client.once('error', r)); // from the write or the read side, whichever sees it first
  peer.resetAndDestroy();
  await new Promise((r) => setTimeout(r, 50));
  for (let i = 0; i < 50 && !client.destroyed; i++) {
    if (!directWrite(client, Buffer.alloc(64 * 1024))) client.write(Buffer.alloc(64 * 1024));
    await new Promise((r) => setTimeout(r, 5));
  }
  t.match((await errored).message, /ECONNRESET|EPIPE|write failed/);
  t.equal(client.destroyed, true);
});

t.test('TLS sockets are declined (their handle takes one write at a time)', async (t) => {
  const { client } = await pair(t);
  const secure = new tls.TLSSocket(client);
  t.teardown(() => secure.destroy());
  t.equal(directWrite(secure, Buffer.from('x')), false);
});

t.test('pending deprecations on: the deprecated binding is not touched (it would warn, or throw with --throw-deprecation)', async (t) => {
  // (Checked by hand: node --throw-deprecation --pending-deprecation loading the module
  // lives and reports false. Tap's own child processes load a module that calls
  // process.binding, so it cannot be run from here.)
  const cases: [string[], NodeJS.ProcessEnv, boolean][] = [
    [[], {}, false],
    [['--pending-deprecation'], {}, true],
    [[], { NODE_OPTIONS: '--max-old-space-size=512 --pending-deprecation' }, true],
    [[], { NODE_PENDING_DEPRECATION: '1' }, true],
    [['--throw-deprecation'], {}, false],
  ];
  for (const [argv, env, want] of cases) t.equal(pendingDeprecations(argv, env), want, `${argv.join(' ')} ${JSON.stringify(env)}`);
});
