// pgbastion logs in to its upstream with SCRAM-SHA-256 only: a server that asks for a
// cleartext password, or says AuthenticationOk without proving it knows the secret, is an
// impostor as far as pgbastion is concerned — it gets no password and no client. Over
// upstream TLS it chooses SCRAM-SHA-256-PLUS when offered, binding the login to the
// server's certificate.

import net from 'node:net';
import tls from 'node:tls';
import t from 'tap';
import pg from 'pg';
import { createCa, issueServerCert } from '../src/tls/certs.js';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, SERVER_ROLE_PASSWORD, startProxy } from './helpers/proxy.js';

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
// For the TLS impostor below (created up front: tap ends once the queued subtests are done).
const serverCert = await issueServerCert(await createCa());

/** A fake "PostgreSQL" that answers every startup packet with `reply`, recording what it is sent. */
async function impostor(t: { teardown(f: () => unknown): void }, reply: Buffer): Promise<{ port: number; received: () => Buffer }> {
  const chunks: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    let answered = false;
    s.on('data', (d: Buffer) => {
      chunks.push(d);
      if (!answered) {
        answered = true;
        s.write(reply);
      }
    });
    s.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    return new Promise((r) => server.close(r));
  });
  return { port: (server.address() as net.AddressInfo).port, received: () => Buffer.concat(chunks) };
}

const auth = (code: number) => {
  const b = Buffer.alloc(9);
  b.write('R', 0);
  b.writeInt32BE(8, 1);
  b.writeInt32BE(code, 5);
  return b;
};
const readyForQuery = Buffer.from([0x5a, 0, 0, 0, 5, 0x49]);

for (const [what, reply] of [
  ['asks for a cleartext password', auth(3)],
  ['says AuthenticationOk at once', Buffer.concat([auth(0), readyForQuery])],
] as const) {
  t.test(`an upstream that ${what} is refused`, async (t) => {
    const fake = await impostor(t, reply);
    const proxy = await startProxy(t, pgs, {
      users: [{ name: 'alice', password: 'alice-pw' }],
      extra: { upstreams: [{ host: '127.0.0.1', port: fake.port }] },
    });
    const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'alice', password: 'alice-pw', database: 'postgres' });
    const err = await c.connect().then(
      () => null,
      (e: { code?: string }) => e,
    );
    await c.end().catch(() => {});
    t.equal(err?.code, '08006', 'the client gets FATAL 08006');
    t.notOk(fake.received().includes(Buffer.from(SERVER_ROLE_PASSWORD)), 'the server role password was never sent');
  });
}

/**
 * A fake server that offers SCRAM-SHA-256-PLUS and SCRAM-SHA-256 (over TLS when `tls` is
 * given, answering the SSLRequest with S) and records each SASLInitialResponse: the
 * mechanism pgbastion chose and its GS2 header.
 */
async function saslRecorder(t: { teardown(f: () => unknown): void }, tlsKeys: { key: string; cert: string } | null) {
  const chosen: { mechanism: string; gs2: string }[] = [];
  const sockets = new Set<net.Socket>();
  const offer = Buffer.concat([Buffer.from('R'), Buffer.alloc(8), Buffer.from('SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0')]);
  offer.writeInt32BE(offer.length - 1, 1);
  offer.writeInt32BE(10, 5);
  const converse = (s: net.Socket): void => {
    let buf = Buffer.alloc(0);
    let offered = false;
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (!offered && buf.length >= 4 && buf.length >= buf.readInt32BE(0)) {
        buf = buf.subarray(buf.readInt32BE(0)); // the startup packet
        offered = true;
        s.write(offer);
      }
      if (offered && buf.length >= 5 && buf.length >= 1 + buf.readInt32BE(1)) {
        const end = buf.indexOf(0, 5);
        chosen.push({ mechanism: buf.toString('utf8', 5, end), gs2: buf.toString('utf8', end + 5, 1 + buf.readInt32BE(1)).split(',').slice(0, 2).join(',') });
        s.destroy();
      }
    });
    s.on('error', () => {});
  };
  const server = net.createServer((raw) => {
    sockets.add(raw);
    raw.on('error', () => {});
    if (!tlsKeys) return converse(raw);
    raw.once('data', () => {
      raw.write('S');
      converse(new tls.TLSSocket(raw, { isServer: true, ...tlsKeys }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    return new Promise((r) => server.close(r));
  });
  return { port: (server.address() as net.AddressInfo).port, chosen };
}

for (const [what, keys, tlsMode, want] of [
  ['over TLS it binds the login to the certificate (SCRAM-SHA-256-PLUS)', { key: serverCert.keyPem, cert: serverCert.certPem }, 'require', { mechanism: 'SCRAM-SHA-256-PLUS', gs2: 'p=tls-server-end-point,' }],
  ['without TLS there is nothing to bind to (SCRAM-SHA-256)', null, 'disable', { mechanism: 'SCRAM-SHA-256', gs2: 'n,' }],
] as const) {
  t.test(what, async (t) => {
    const fake = await saslRecorder(t, keys);
    const proxy = await startProxy(t, pgs, {
      users: [{ name: 'alice', password: 'alice-pw' }],
      extra: { upstreams: [{ host: '127.0.0.1', port: fake.port }], upstream: { tls: { mode: tlsMode } } },
    });
    const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'alice', password: 'alice-pw', database: 'postgres' });
    await c.connect().catch(() => {}); // the fake ends every exchange after the first message
    await c.end().catch(() => {});
    t.ok(fake.chosen.length > 0, 'pgbastion started a SASL exchange');
    t.same(new Set(fake.chosen.map((x) => JSON.stringify(x))), new Set([JSON.stringify(want)]), 'every exchange (logins and health checks) chose it');
  });
}
