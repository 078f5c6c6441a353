// upstream.tls towards a real PostgreSQL with ssl=on: require encrypts (pg_stat_ssl says
// so), verify-full checks the CA and the host, and every way the server can fall short —
// another CA, a name not in its certificate, no TLS at all — refuses the connection
// instead of sending the server role's SCRAM exchange in the clear.

import { chmodSync, chownSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import pg from 'pg';
import { createCa, issueServerCert } from '../src/tls/certs.js';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, startProxy } from './helpers/proxy.js';
import { cancelClient } from './helpers/cancel.js';
import { oneShot } from './helpers/one-shot.js';

const sslOfServerSession = (port: number) => oneShot(port, 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()');

const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-uptls-'));
chmodSync(dir, 0o755); // the postgres OS user reads its certificate from here
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const ca = await createCa({ cn: 'upstream CA' });
const otherCa = await createCa({ cn: 'some other CA' });
const server = await issueServerCert(ca); // SANs: localhost, 127.0.0.1, ::1
const file = (name: string, text: string, mode = 0o644) => {
  const p = path.join(dir, name);
  writeFileSync(p, text, { mode });
  return p;
};
const caFile = file('ca.crt', ca.certPem);
const otherCaFile = file('other-ca.crt', otherCa.certPem);
const certFile = file('server.crt', server.certPem);
const keyFile = file('server.key', server.keyPem, 0o600);
if (process.getuid?.() === 0) {
  // PostgreSQL runs as the postgres OS user and wants its key private to itself.
  const uid = Number(execFileSync('id', ['-u', 'postgres']).toString());
  const gid = Number(execFileSync('id', ['-g', 'postgres']).toString());
  for (const f of [certFile, keyFile]) chownSync(f, uid, gid);
}

// Also listening on 127.0.0.2, an address its certificate does not name.
const pgs = await startPostgres({
  settings: { ssl: 'on', ssl_cert_file: `'${certFile}'`, ssl_key_file: `'${keyFile}'`, listen_addresses: "'127.0.0.1,127.0.0.2'" },
});
t.teardown(() => pgs.stop());
await createServerRole(pgs);


const proxyWith = (t: Tap.Test, upstream: Record<string, unknown>, host = '127.0.0.1', port = pgs.port) =>
  startProxy(t, pgs, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: { upstreams: [{ host, port }], upstream: { ...upstream, health_check: { interval_ms: 60_000 } }, pool: { mode: 'transaction', size: 2, acquire_timeout_ms: 2000 } },
  });

const upstreamErrors = (proxy: Awaited<ReturnType<typeof startProxy>>) =>
  proxy.log.lines.filter((l) => l.msg === 'upstream unusable').map((l) => String(l.err));

t.test('disable (the default): plain TCP', async (t) => {
  const proxy = await proxyWith(t, {});
  t.equal((await sslOfServerSession(proxy.port)).value, false);
});

t.test('require: encrypted, without checking the certificate', async (t) => {
  const proxy = await proxyWith(t, { tls: { mode: 'require' } });
  t.equal((await sslOfServerSession(proxy.port)).value, true);
});

t.test('verify-full with the right CA: encrypted and verified', async (t) => {
  const proxy = await proxyWith(t, { tls: { mode: 'verify-full', ca: caFile } });
  t.equal((await sslOfServerSession(proxy.port)).value, true);
  t.equal((await sslOfServerSession(proxy.port)).value, true, 'and again on a reused connection');
});

t.test('a cancel reaches the server over TLS as well', async (t) => {
  const proxy = await proxyWith(t, { tls: { mode: 'verify-full', ca: caFile } });
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'alice', password: 'alice-pw', database: 'postgres' });
  await c.connect();
  t.teardown(() => c.end());
  const sleeping = c.query('SELECT pg_sleep(20)').catch((e: { code?: string }) => e);
  await new Promise((r) => setTimeout(r, 300));
  await cancelClient(proxy.port, c);
  t.match(await sleeping, { code: '57014' });
});

t.test('verify-full, certificate from another CA: refused', async (t) => {
  const proxy = await proxyWith(t, { tls: { mode: 'verify-full', ca: otherCaFile } });
  const r = await sslOfServerSession(proxy.port);
  t.equal(r.code, '08006', 'the client gets FATAL 08006');
  t.match(upstreamErrors(proxy).join('\n'), /certificate/i, 'the log says why');
});

t.test('verify-full, host not named in the certificate: refused', async (t) => {
  const proxy = await proxyWith(t, { tls: { mode: 'verify-full', ca: caFile } }, '127.0.0.2');
  const r = await sslOfServerSession(proxy.port);
  t.equal(r.code, '08006');
  t.match(upstreamErrors(proxy).join('\n'), /127\.0\.0\.2.*not in the cert|altnames/i);
  // The same server by a name it does carry.
  const named = await proxyWith(t, { tls: { mode: 'verify-full', ca: caFile } }, 'localhost');
  t.equal((await sslOfServerSession(named.port)).value, true);
});

t.test('require, server without TLS: refused, no password exchange in the clear', async (t) => {
  // A server that answers the SSLRequest with N and records anything sent after it.
  const after: Buffer[] = [];
  const plain = net.createServer((s) => {
    s.once('data', () => {
      s.write('N');
      s.on('data', (d) => after.push(d));
    });
    s.on('error', () => {});
  });
  await new Promise<void>((r) => plain.listen(0, '127.0.0.1', r));
  t.teardown(() => plain.close());
  const proxy = await proxyWith(t, { tls: { mode: 'require' } }, '127.0.0.1', (plain.address() as net.AddressInfo).port);
  const r = await sslOfServerSession(proxy.port);
  t.equal(r.code, '08006');
  t.match(upstreamErrors(proxy).join('\n'), /does not accept TLS/);
  await new Promise((r) => setTimeout(r, 50));
  t.equal(Buffer.concat(after).length, 0, 'no startup packet, no SCRAM message after the refusal');
});

t.test('reload: a CA file that cannot be read leaves the running upstream TLS as it was', async (t) => {
  const proxy = await proxyWith(t, { tls: { mode: 'verify-full', ca: caFile } });
  const next = { ...proxy.config, upstream: { ...proxy.config.upstream, tls: { mode: 'verify-full' as const, ca: path.join(dir, 'missing.crt') } } };
  t.equal(await proxy.server.reload(async () => next), false);
  t.match(proxy.audit.lines.find((l) => l.event === 'config.reload_failed'), { error: /upstream\.tls: cannot use the CA file/ });
  t.equal((await sslOfServerSession(proxy.port)).value, true, 'still verified with the old CA');
});

t.test('reload from disable to require: pooled plaintext connections are not reused', async (t) => {
  const proxy = await proxyWith(t, {});
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'alice', password: 'alice-pw', database: 'postgres' });
  await c.connect();
  t.teardown(() => c.end());
  const ssl = async () => (await c.query('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')).rows[0].ssl as boolean;
  t.equal(await ssl(), false);
  await c.query('BEGIN');
  const next = { ...proxy.config, upstream: { ...proxy.config.upstream, tls: { mode: 'require' as const } } };
  t.equal(await proxy.server.reload(async () => next), true);
  t.equal(await ssl(), false, 'the transaction in progress keeps its connection');
  await c.query('COMMIT');
  for (let i = 0; i < 3; i++) t.equal(await ssl(), true, 'later transactions (same client) run over TLS');
});

declare namespace Tap {
  type Test = Parameters<Parameters<typeof t.test>[1]>[0];
}
