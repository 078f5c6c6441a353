// Client sockets are read through one scratch buffer shared by every socket, bypassing
// Node's Readable stream (src/net/direct-read.ts). The risks: bytes a consumer kept being
// overwritten by a later read (of the same socket or another one), bytes delivered while
// the session paused reading, and, after a Node upgrade, silently falling back to the slow
// path. Every test keeps every chunk it was given and checks all of them at the end.

import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import t from 'tap';
import { DirectRead, HOLD_LIMIT } from '../src/net/direct-read.js';
import { SERVER_CERT_FILE, SERVER_KEY_FILE, initCaDir } from '../src/tls/certs.js';
import { TlsTerminator } from '../src/tls/terminate.js';
import type { TlsConfig } from '../src/config/types.js';

const md5 = (b: Buffer): string => createHash('md5').update(b).digest('hex');

/** A listener whose accepted sockets get a DirectRead; `onSocket` sees each one. */
async function listen(onSocket: (socket: net.Socket) => void): Promise<{ port: number; close: () => Promise<void> }> {
  const server = net.createServer({ noDelay: true }, onSocket);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const open = new Set<net.Socket>();
  server.on('connection', (s) => {
    open.add(s);
    s.on('close', () => open.delete(s));
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of open) s.destroy();
        server.close(() => resolve());
      }),
  };
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1' }, () => resolve(s));
    s.once('error', reject);
  });
}

/** Collects what a DirectRead delivers; resolves once `total` bytes arrived. */
function collector(total: number): { chunks: Buffer[]; done: Promise<void>; take: (c: Buffer) => void } {
  const chunks: Buffer[] = [];
  let got = 0;
  let finish!: () => void;
  const done = new Promise<void>((resolve) => (finish = resolve));
  return {
    chunks,
    done,
    take: (c: Buffer) => {
      chunks.push(c);
      got += c.length;
      if (got >= total) finish();
    },
  };
}

/** One accepted socket read by a DirectRead that keeps every chunk, and its client. */
async function readerPair(t: Parameters<Parameters<typeof t.test>[1]>[0]): Promise<{ reader: DirectRead; delivered: Buffer[]; client: net.Socket }> {
  const delivered: Buffer[] = [];
  let accepted!: (r: DirectRead) => void;
  const ready = new Promise<DirectRead>((resolve) => (accepted = resolve));
  const server = await listen((s) => accepted(new DirectRead(s, (c) => delivered.push(c))));
  t.teardown(server.close);
  const client = await connect(server.port);
  return { reader: await ready, delivered, client };
}

t.test('accepted sockets are read directly on this Node version, and every kept chunk stays intact', async (t) => {
  const payload = randomBytes(3 * 1024 * 1024);
  const sink = collector(payload.length);
  let reader: DirectRead | null = null;
  const server = await listen((s) => (reader = new DirectRead(s, sink.take)));
  t.teardown(server.close);
  const client = await connect(server.port);
  // Many writes of odd sizes: reads of every length, each landing in the same scratch buffer.
  for (let at = 0; at < payload.length; ) {
    const n = Math.min(payload.length - at, 1 + ((at * 7919) % 70_000));
    client.write(payload.subarray(at, at + n));
    at += n;
  }
  await sink.done;
  t.equal(reader!.direct, true, 'direct reads (a Node upgrade that breaks them must be noticed here)');
  t.ok(sink.chunks.length > 1, `delivered in ${sink.chunks.length} reads`);
  t.equal(md5(Buffer.concat(sink.chunks)), md5(payload), 'every byte, in order, after all reads (no chunk was overwritten)');
  client.destroy();
});

t.test('two sockets read in turn share the scratch buffer without touching each other\'s bytes', async (t) => {
  const a = Buffer.alloc(512 * 1024, 'a');
  const b = Buffer.alloc(512 * 1024, 'b');
  const sinks = [collector(a.length), collector(b.length)];
  let n = 0;
  const server = await listen((s) => void new DirectRead(s, sinks[n++]!.take));
  t.teardown(server.close);
  const ca = await connect(server.port);
  const cb = await connect(server.port);
  for (let i = 0; i < a.length; i += 4096) {
    ca.write(a.subarray(i, i + 4096));
    cb.write(b.subarray(i, i + 4096));
  }
  await Promise.all(sinks.map((s) => s.done));
  t.ok(Buffer.concat(sinks[0]!.chunks).equals(a), 'first socket: only its own bytes');
  t.ok(Buffer.concat(sinks[1]!.chunks).equals(b), 'second socket: only its own bytes');
  ca.destroy();
  cb.destroy();
});

t.test('nothing is delivered while paused; held bytes come after resume, in order; drop() discards', async (t) => {
  const { reader, delivered, client } = await readerPair(t);
  reader.pause();
  t.equal(reader.paused, true);
  client.write('first;');
  await new Promise((r) => setTimeout(r, 100));
  t.equal(delivered.length, 0, 'paused: nothing delivered');
  reader.resume();
  client.write('second;');
  await new Promise((r) => setTimeout(r, 100));
  t.equal(Buffer.concat(delivered).toString(), 'first;second;', 'in order after resume');

  reader.drop();
  client.write('after drop');
  await new Promise((r) => setTimeout(r, 100));
  t.equal(Buffer.concat(delivered).toString(), 'first;second;', 'dropped: nothing more delivered');
  client.destroy();
});

t.test('TLS: plaintext decrypted past a pause waits for resume, and nothing is lost or overwritten', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-direct-read-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  await initCaDir(dir);
  const context = tls.createSecureContext({ cert: readFileSync(path.join(dir, SERVER_CERT_FILE)), key: readFileSync(path.join(dir, SERVER_KEY_FILE)) });
  const payload = randomBytes(2 * 1024 * 1024);
  const delivered: Buffer[] = [];
  let got = 0;
  let pauses = 0;
  let reader!: DirectRead;
  let whole!: () => void;
  const done = new Promise<void>((resolve) => (whole = resolve));
  const server = await listen((raw) => {
    const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: context });
    reader = new DirectRead(secure, (c) => {
      t.notOk(reader.paused, 'never called while paused');
      delivered.push(c);
      got += c.length;
      if (got >= payload.length) return whole();
      // Pause after every chunk; resume a little later. TLS hands over the rest of what it
      // decrypted from the same network read anyway: that must wait.
      reader.pause();
      pauses++;
      setImmediate(() => reader.resume());
    });
  });
  t.teardown(server.close);
  const client = tls.connect({ port: server.port, host: '127.0.0.1', rejectUnauthorized: false });
  await new Promise<void>((resolve) => client.once('secureConnect', () => resolve()));
  client.write(payload);
  await done;
  t.equal(reader.direct, true, 'TLS sockets are read directly too');
  t.ok(pauses > 10, `paused ${pauses} times`);
  t.equal(md5(Buffer.concat(delivered)), md5(payload), 'every byte, in order');
  client.destroy();
});

/** A TLS context for the server side of these tests. */
function serverContext(t: Parameters<Parameters<typeof t.test>[1]>[0]): Promise<tls.SecureContext> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-direct-read-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return initCaDir(dir).then(() =>
    tls.createSecureContext({ cert: readFileSync(path.join(dir, SERVER_CERT_FILE)), key: readFileSync(path.join(dir, SERVER_KEY_FILE)) }),
  );
}

t.test('paused reading goes on up to HOLD_LIMIT, then stops; after resume every byte comes, in order', async (t) => {
  const { reader, delivered, client } = await readerPair(t);
  reader.pause();
  const payload = randomBytes(4 * 1024 * 1024);
  client.write(payload);
  await new Promise((r) => setTimeout(r, 200));
  t.equal(delivered.length, 0, 'nothing delivered while paused');
  t.ok(reader.holding >= HOLD_LIMIT, `read on while paused: ${reader.holding} bytes held`);
  t.ok(reader.holding < HOLD_LIMIT + 64 * 1024, 'then stopped: the rest stays in the kernel (at most one more read)');
  reader.resume();
  const end = Date.now() + 5000;
  while (Buffer.concat(delivered).length < payload.length && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  t.equal(md5(Buffer.concat(delivered)), md5(payload), 'every byte, in order');
  client.destroy();
});

for (const secure of [false, true]) {
  t.test(`${secure ? 'TLS' : 'plain'}: a client that leaves while reading is paused is noticed at once`, async (t) => {
    const context = secure ? await serverContext(t) : null;
    let closedAt = 0;
    let reader!: DirectRead;
    const server = await listen((raw) => {
      const s = context ? new tls.TLSSocket(raw, { isServer: true, secureContext: context }) : raw;
      s.on('error', () => undefined);
      reader = new DirectRead(s, () => reader.pause()); // paused after the first bytes, as a client waiting for a lease
      s.on('close', () => (closedAt = Date.now()));
    });
    t.teardown(server.close);
    const raw = await connect(server.port);
    const client = secure ? tls.connect({ socket: raw, rejectUnauthorized: false }) : raw;
    client.on('error', () => undefined);
    if (secure) await new Promise((r) => client.once('secureConnect', r));
    client.write('a query');
    await new Promise((r) => setTimeout(r, 100));
    t.equal(reader.paused, true);
    client.end();
    const end = Date.now() + 2000;
    while (closedAt === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    t.ok(closedAt > 0, 'the socket closed while reading was paused');
    raw.destroy();
  });
}

t.test('TLS: bytes held when the client closes (close_notify in the same read) are all handed over by deliverHeld', async (t) => {
  const context = await serverContext(t);
  const size = 40 * 1024;
  let delivered = 0;
  let atDrained = -1;
  let resumedAt = -1;
  const server = await listen((raw) => {
    const s = new tls.TLSSocket(raw, { isServer: true, secureContext: context });
    s.on('error', () => undefined);
    let first = true;
    const reader: DirectRead = new DirectRead(s, (c) => {
      delivered += c.length;
      if (!first) return;
      first = false;
      reader.pause();
      setTimeout(() => {
        resumedAt = delivered;
        reader.resume();
      }, 300);
    });
    s.on('close', () => {
      reader.deliverHeld(); // what the session does when its client's socket closes
      atDrained = delivered;
    });
  });
  t.teardown(server.close);
  // The client's records, its close_notify and its FIN reach the server in one burst.
  const raw = await connect(server.port);
  const burst: Buffer[] = [];
  let gather = false;
  const { Duplex } = await import('node:stream');
  const transport = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      if (gather) burst.push(chunk);
      else raw.write(chunk);
      cb();
    },
  });
  raw.on('data', (d) => transport.push(d));
  const client = tls.connect({ socket: transport as unknown as net.Socket, rejectUnauthorized: false });
  client.on('error', () => undefined);
  await new Promise((r) => client.once('secureConnect', r));
  await new Promise((r) => setTimeout(r, 50));
  gather = true;
  client.write(Buffer.alloc(size / 2, 1));
  client.write(Buffer.alloc(size / 2, 2));
  client.end();
  await new Promise((r) => setTimeout(r, 50));
  raw.end(Buffer.concat(burst));
  const end = Date.now() + 3000;
  while (atDrained < 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  t.equal(atDrained, size, 'every byte was delivered when the close was acted on');
  t.equal(resumedAt, -1, 'without waiting for the owner to resume');
  raw.destroy();
});

for (const size of [24, 72, 96].map((k) => k * 1024)) t.test(`direct TLS (${size / 1024} KiB sent, then the end, while TLS was not read): every byte reaches the session, then the TLS socket closes`, async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-direct-read-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  await initCaDir(dir);
  const terminator = new TlsTerminator({ cert: path.join(dir, SERVER_CERT_FILE), key: path.join(dir, SERVER_KEY_FILE), min_version: 'TLSv1.2' } as TlsConfig);
  const payload = randomBytes(size);
  const delivered: Buffer[] = [];
  let ended = false;
  let closed = false;
  const server = await listen((raw) => {
    raw.on('error', () => undefined);
    let upgraded = false;
    const rawInput: DirectRead = new DirectRead(raw, (hello) => {
      if (upgraded) return;
      upgraded = true;
      // As ClientSession.startTls for a ClientHello read first: the raw reader feeds TLS.
      const secure = terminator.upgrade(raw, { bytes: hello, input: rawInput }, true);
      secure.on('error', () => undefined);
      secure.on('end', () => (ended = true));
      secure.on('close', () => {
        reader.deliverHeld(); // as the session does on its client's close
        closed = true;
      });
      // The session stops reading for a while: TLS stops taking bytes, the raw socket's back up.
      const reader: DirectRead = new DirectRead(secure, (c) => {
        delivered.push(c);
        if (delivered.length === 1) {
          reader.pause();
          setTimeout(() => reader.resume(), 500);
        }
      });
    });
  });
  t.teardown(server.close);
  const client = tls.connect({ port: server.port, host: '127.0.0.1', rejectUnauthorized: false, ALPNProtocols: ['postgresql'] });
  client.on('error', () => undefined);
  await new Promise((r) => client.once('secureConnect', r));
  client.end(payload);
  const end = Date.now() + 5000;
  while (!closed && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  t.equal(md5(Buffer.concat(delivered)), md5(payload), 'every byte, in order, though the client ended while TLS was not read');
  t.ok(ended && closed, 'then the end of stream, and the TLS socket closed');
  client.destroy();
});

t.test('detach(): TLS taking the socket over after an SSLRequest reads every byte; the raw reader gets none and the socket lets go of it', async (t) => {
  const context = await serverContext(t);
  const payload = randomBytes(1024 * 1024);
  const sink = collector(payload.length);
  const rawChunks: Buffer[] = [];
  let callbackBefore: unknown;
  let callbackAfter: unknown;
  const readCallback = (s: net.Socket): unknown => {
    const key = Object.getOwnPropertySymbols(s).find((k) => k.description === 'kBufferCb')!;
    return (s as unknown as Record<symbol, unknown>)[key];
  };
  const server = await listen((raw) => {
    const rawReader = new DirectRead(raw, (c) => {
      rawChunks.push(c);
      // As the session does on an SSLRequest: answer, detach, and start TLS on the same socket.
      raw.write('S');
      callbackBefore = readCallback(raw);
      rawReader.detach();
      callbackAfter = readCallback(raw);
      const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: context });
      new DirectRead(secure, sink.take);
    });
  });
  t.teardown(server.close);
  const rawClient = await connect(server.port);
  rawClient.write(Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]));
  await new Promise<void>((resolve) => rawClient.once('data', () => resolve()));
  const client = tls.connect({ socket: rawClient, rejectUnauthorized: false });
  await new Promise<void>((resolve) => client.once('secureConnect', () => resolve()));
  client.write(payload);
  await sink.done;
  t.equal(md5(Buffer.concat(sink.chunks)), md5(payload), 'every byte through TLS, in order');
  t.equal(Buffer.concat(rawChunks).length, 8, 'the raw reader saw only the SSLRequest');
  t.type(callbackBefore, 'function');
  t.not(callbackAfter, callbackBefore, "the socket's read callback no longer leads to the detached reader");
  client.destroy();
});
