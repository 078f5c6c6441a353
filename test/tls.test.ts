// TLS termination with real clients: psql sslmode require / verify-ca / verify-full,
// client certificates (cert auth, CN mapping, wrong CA, expired, not yet valid), SCRAM
// channel binding, direct TLS, plaintext after SSLRequest, hostssl/hostnossl rules, IPv6.

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import t from 'tap';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { ScramClientSession } from '../src/auth/scram.js';
import { parseFields } from '../src/protocol/fields.js';
import { initCaDir, issueClientToDir } from '../src/tls/certs.js';
import { pgBin, startPostgres } from './helpers/postgres.js';
import { createServerRole, startProxy } from './helpers/proxy.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-tls-'));
const otherDir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-tls-other-'));
t.teardown(() => {
  rmSync(dir, { recursive: true, force: true });
  rmSync(otherDir, { recursive: true, force: true });
});
const pki = path.join(dir, 'pki');
const otherPki = path.join(otherDir, 'pki');
await initCaDir(pki);
await initCaDir(otherPki);
const certOf = async (d: string, cn: string) => {
  const [cert, key] = (await issueClientToDir(d, { cn })).files as [string, string];
  return { cert, key };
};
const good = await certOf(pki, 'cert_user');
const svc = await certOf(pki, 'svc-tenant');
const stranger = await certOf(pki, 'someone_else');
const foreign = await certOf(otherPki, 'cert_user');
// Issued by the trusted CA, mapped to cert_user, but out of date.
const filesOf = (r: { files: string[] }) => ({ cert: r.files[0]!, key: r.files[1]! });
const expired = filesOf(await issueClientToDir(pki, { cn: 'cert_user.expired', notBefore: new Date('2001-01-01'), notAfter: new Date('2002-01-01') }));
const future = filesOf(await issueClientToDir(pki, { cn: 'cert_user.future', notBefore: new Date('2099-01-01'), notAfter: new Date('2100-01-01') }));
// Issued by the trusted CA, mapped, in date, but revoked: listed in the CRL (tls.crl) that
// `openssl ca` signs with the same CA. Every other certificate here is checked with it on too.
const revoked = await certOf(pki, 'cert_user.revoked');
const crl = path.join(dir, 'crl.pem');
{
  const db = path.join(dir, 'ca-db');
  writeFileSync(path.join(dir, 'index.txt'), '');
  writeFileSync(path.join(dir, 'crlnumber'), '1000\n');
  writeFileSync(db, `[ca]\ndefault_ca = local\n[local]\ndatabase = ${path.join(dir, 'index.txt')}\ncrlnumber = ${path.join(dir, 'crlnumber')}\ndefault_md = sha256\ndefault_crl_days = 30\n`);
  const ca = ['-config', db, '-keyfile', path.join(pki, 'ca.key'), '-cert', path.join(pki, 'ca.crt')];
  execFileSync('openssl', ['ca', ...ca, '-revoke', revoked.cert], { stdio: 'pipe' });
  execFileSync('openssl', ['ca', ...ca, '-gencrl', '-out', crl], { stdio: 'pipe' });
}

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
const proxy = await startProxy(t, pgs, {
  users: [
    { name: 'scram_user', password: 'scram-pw' },
    { name: 'v6only', password: 'v6-pw' },
  ],
  extra: {
    listen: [
      { host: '127.0.0.1', port: 0 },
      { host: '::1', port: 0 },
    ],
    tls: { cert: path.join(pki, 'server.crt'), key: path.join(pki, 'server.key'), ca: path.join(pki, 'ca.crt'), crl },
    cert_map: [
      { cn: 'cert_user', user: 'cert_user' },
      { cn: 'cert_user.expired', user: 'cert_user' },
      { cn: 'cert_user.future', user: 'cert_user' },
      { cn: 'cert_user.revoked', user: 'cert_user' },
      { cn: 'svc-tenant', user: 'tenant_user' },
    ],
    hba: [
      { type: 'hostnossl', database: 'all', user: 'all', address: 'all', method: 'reject' },
      { type: 'hostssl', database: 'all', user: 'v6only', address: '::1/128', method: 'scram-sha-256' },
      { type: 'hostssl', database: 'all', user: 'v6only', address: 'all', method: 'reject' },
      { type: 'hostssl', database: 'all', user: 'cert_user,tenant_user', address: 'all', method: 'cert' },
      { type: 'hostssl', database: 'all', user: 'all', address: 'all', method: 'scram-sha-256' },
    ],
  },
  extraUsers: [
    { name: 'cert_user', server_role: 'app_rw' },
    { name: 'tenant_user', server_role: 'app_rw', pins: { 'app.tenant_id': 'tenant:${cert.cn}' } },
  ],
});
const [, v6] = proxy.server.addresses();

function psql(conn: Record<string, string>, sql = 'SELECT current_user', env: Record<string, string> = {}) {
  const connStr = Object.entries({ host: '127.0.0.1', port: String(proxy.port), dbname: 'postgres', connect_timeout: '5', ...conn })
    .map(([k, v]) => `${k}='${v}'`)
    .join(' ');
  return new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(pgBin('psql'), ['-X', '-At', '-v', 'ON_ERROR_STOP=1', '-c', sql, connStr], { env: { ...process.env, PGSSLCERT: '/nonexistent', PGSSLKEY: '/nonexistent', ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('close', (status) => resolve({ status, stdout: stdout.trim(), stderr }));
  });
}
const CA = path.join(pki, 'ca.crt');

t.test('plaintext is refused by the hostnossl reject rule', async (t) => {
  const r = await psql({ user: 'scram_user', password: 'scram-pw', sslmode: 'disable' });
  t.not(r.status, 0);
  t.match(r.stderr, /pg_hba\.conf rejects connection for host "127\.0\.0\.1", user "scram_user", database "postgres", no encryption/);
});

t.test('hostssl + SCRAM over TLS with sslmode require, verify-ca, verify-full', async (t) => {
  for (const conn of [
    { sslmode: 'require' },
    { sslmode: 'verify-ca', sslrootcert: CA },
    { sslmode: 'verify-full', sslrootcert: CA, host: 'localhost' },
    { sslmode: 'verify-full', sslrootcert: CA, host: '127.0.0.1' },
  ]) {
    const r = await psql({ user: 'scram_user', password: 'scram-pw', ...conn }, "SELECT current_user || ' ' || current_setting('server_version_num')::int / 10000");
    t.equal(r.status, 0, `${JSON.stringify(conn)} ${r.stderr}`);
    t.match(r.stdout, /^app_rw \d+$/);
  }
  const wrongName = await psql({ user: 'scram_user', password: 'scram-pw', sslmode: 'verify-full', sslrootcert: CA, host: 'not-in-the-sans.example', hostaddr: '127.0.0.1' });
  t.not(wrongName.status, 0, 'verify-full checks the host name against the SANs');
  t.match(wrongName.stderr, /server certificate for "localhost".* does not match host name "not-in-the-sans\.example"/);
  const failedBefore = await handshakes('error');
  const wrongCa = await psql({ user: 'scram_user', password: 'scram-pw', sslmode: 'verify-ca', sslrootcert: path.join(otherPki, 'ca.crt') });
  t.not(wrongCa.status, 0, 'verify-ca against another CA fails');
  // psql's exit and the alert it sent reach this process as separate events: wait for the count.
  for (let i = 0; i < 100 && (await handshakes('error')) === failedBefore; i++) await new Promise((r) => setTimeout(r, 20));
  t.equal(await handshakes('error'), failedBefore + 1, 'the handshake the client abandoned counts as failed');
  const started = proxy.log.lines.filter((l) => l.msg === 'session started' && l.user === 'scram_user');
  t.ok(started.length >= 4 && started.every((l) => l.tls === 'TLSv1.3'), "each session's log lines name its TLS version");
});

async function handshakes(result: 'ok' | 'error'): Promise<number> {
  const m = await proxy.server.runtime.metrics.tlsHandshakes.get();
  return m.values.find((v) => v.labels.result === result)?.value ?? 0;
}

t.test('SCRAM-SHA-256-PLUS: psql with channel_binding=require', async (t) => {
  const r = await psql({ user: 'scram_user', password: 'scram-pw', sslmode: 'require', channel_binding: 'require' });
  t.equal(r.status, 0, r.stderr);
  t.equal(r.stdout, 'app_rw');
});

t.test('cert auth: the happy path with psql and with node-postgres', async (t) => {
  const r = await psql({ user: 'cert_user', sslmode: 'verify-full', sslrootcert: CA, host: 'localhost', sslcert: good.cert, sslkey: good.key });
  t.equal(r.status, 0, r.stderr);
  t.equal(r.stdout, 'app_rw');
  const c = new pg.Client({
    host: 'localhost',
    port: proxy.port,
    user: 'tenant_user',
    database: 'postgres',
    ssl: { ca: readFileSync(CA), cert: readFileSync(svc.cert), key: readFileSync(svc.key) },
  });
  await c.connect();
  t.teardown(() => c.end());
  const row = (await c.query("SELECT current_setting('app.tenant_id') AS v")).rows[0];
  t.equal(row.v, 'tenant:svc-tenant', '${cert.cn} pinned from the verified certificate');
});

t.test('cert auth refusals', async (t) => {
  const mismatch = await psql({ user: 'cert_user', sslmode: 'require', sslcert: stranger.cert, sslkey: stranger.key });
  t.not(mismatch.status, 0);
  t.match(mismatch.stderr, /certificate authentication failed for user "cert_user"/, 'CN not mapped to the user');
  const none = await psql({ user: 'cert_user', sslmode: 'require' });
  t.match(none.stderr, /connection requires a valid client certificate/, 'no certificate at all');
  for (const [what, c] of [
    ['from another CA', foreign],
    ['expired', expired],
    ['not yet valid', future],
    ['revoked (in tls.crl)', revoked],
  ] as const) {
    const r = await psql({ user: 'cert_user', sslmode: 'require', sslcert: c.cert, sslkey: c.key });
    t.not(r.status, 0, `${what}: refused`);
    t.match(r.stderr, /client certificate verification failed|certificate/, `${what}: ${r.stderr.trim()}`);
    t.notMatch(r.stdout, /app_rw/);
  }
});

t.test('IPv6 loopback source matches ::1/128 rules', async (t) => {
  const ok = await psql({ host: '::1', port: String(v6!.port), user: 'v6only', password: 'v6-pw', sslmode: 'require' });
  t.equal(ok.status, 0, ok.stderr);
  const v4 = await psql({ user: 'v6only', password: 'v6-pw', sslmode: 'require' });
  t.match(v4.stderr, /pg_hba\.conf rejects connection for host "127\.0\.0\.1", user "v6only", database "postgres", SSL encryption/);
});

/** Reads whole backend messages from a socket. */
function messages(sock: net.Socket | tls.TLSSocket) {
  let buf = Buffer.alloc(0);
  const waiting: ((m: { type: string; frame: Buffer } | null) => void)[] = [];
  const ready: ({ type: string; frame: Buffer } | null)[] = [];
  const pump = () => {
    while (buf.length >= 5 && buf.length >= 1 + buf.readInt32BE(1)) {
      const len = 1 + buf.readInt32BE(1);
      const m = { type: String.fromCharCode(buf[0]!), frame: buf.subarray(0, len) };
      buf = buf.subarray(len);
      const w = waiting.shift();
      if (w) w(m);
      else ready.push(m);
    }
  };
  sock.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    pump();
  });
  sock.on('close', () => {
    for (const w of waiting.splice(0)) w(null);
    ready.push(null);
  });
  return () => new Promise<{ type: string; frame: Buffer } | null>((resolve) => (ready.length ? resolve(ready.shift()!) : waiting.push(resolve)));
}

t.test('a client that claims channel binding but sends the wrong binding is refused', async (t) => {
  const sock = await new Promise<tls.TLSSocket>((resolve) => {
    const raw = net.connect(proxy.port, '127.0.0.1', () => {
      raw.write(Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]));
      raw.once('data', () => {
        const s = tls.connect({ socket: raw, rejectUnauthorized: false }, () => resolve(s));
      });
    });
  });
  t.teardown(() => sock.destroy());
  const next = messages(sock);
  sock.write(serialize.startup({ user: 'scram_user', database: 'postgres' }));
  const sasl = await next();
  t.equal(sasl?.type, 'R');
  t.match(sasl!.frame.toString('latin1', 9), /SCRAM-SHA-256-PLUS/, 'PLUS offered on TLS');
  const scram = new ScramClientSession('scram-pw', { channelBinding: { type: 'tls-server-end-point', data: Buffer.alloc(32, 7) } });
  sock.write(serialize.sendSASLInitialResponseMessage(scram.mechanism, scram.clientFirst()));
  const cont = await next();
  sock.write(serialize.sendSCRAMClientFinalMessage(await scram.handleServerFirst(cont!.frame.toString('utf8', 9))));
  const refused = await next();
  t.equal(refused?.type, 'E');
  t.equal(parseFields(refused!.frame).C, '28P01', 'wrong binding: authentication fails');
});

t.test('plaintext bytes after SSLRequest: the connection is closed, never answered S', async (t) => {
  const sock = net.connect(proxy.port, '127.0.0.1');
  t.teardown(() => sock.destroy());
  const chunks: Buffer[] = [];
  sock.on('data', (d: Buffer) => chunks.push(d));
  await new Promise((r) => sock.once('connect', r));
  sock.write(Buffer.concat([Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]), serialize.startup({ user: 'scram_user', database: 'postgres' })]));
  await new Promise((r) => sock.once('close', r));
  t.same(Buffer.concat(chunks), Buffer.alloc(0), 'closed without a byte');
});

t.test('direct TLS (ALPN postgresql) works; without ALPN it is refused', async (t) => {
  const direct = tls.connect({ host: '127.0.0.1', port: proxy.port, ALPNProtocols: ['postgresql'], ca: readFileSync(CA), servername: 'localhost' });
  t.teardown(() => direct.destroy());
  await new Promise((r) => direct.once('secureConnect', r));
  t.equal(direct.alpnProtocol, 'postgresql');
  const next = messages(direct);
  direct.write(serialize.startup({ user: 'scram_user', database: 'postgres' }));
  const sasl = await next();
  t.equal(sasl?.type, 'R', 'authentication request over direct TLS');
  t.match(sasl!.frame.toString('latin1', 9), /SCRAM-SHA-256-PLUS/);

  const noAlpn = tls.connect({ host: '127.0.0.1', port: proxy.port, rejectUnauthorized: false });
  t.teardown(() => noAlpn.destroy());
  const closed = await new Promise<boolean>((resolve) => {
    noAlpn.once('close', () => resolve(true));
    noAlpn.once('error', () => resolve(true));
    noAlpn.once('secureConnect', () => noAlpn.write(serialize.startup({ user: 'scram_user', database: 'postgres' })));
    setTimeout(() => resolve(false), 3000);
  });
  t.ok(closed, 'closed');
  t.ok(
    proxy.audit.lines.some((l) => l.event === 'session.denied' && l.reason === 'tls' && /without the "postgresql" ALPN/.test(String(l.message))),
    'audited as a denial, reason tls',
  );
});

t.test('refusals no FATAL can answer are audited too: a failed handshake, plaintext after SSLRequest', async (t) => {
  const deniedFor = (reason: string, message: RegExp) => proxy.audit.lines.filter((l) => l.event === 'session.denied' && l.reason === reason && message.test(String(l.message))).length;
  const tlsBefore = deniedFor('tls', /^TLS handshake failed/);
  // TLS 1.1: below tls.min_version, refused in the handshake.
  const old = tls.connect({ host: '127.0.0.1', port: proxy.port, rejectUnauthorized: false, ALPNProtocols: ['postgresql'], maxVersion: 'TLSv1.1', minVersion: 'TLSv1' });
  await new Promise<void>((resolve) => {
    old.once('error', () => resolve());
    old.once('close', () => resolve());
  });
  for (let i = 0; i < 100 && deniedFor('tls', /^TLS handshake failed/) === tlsBefore; i++) await new Promise((r) => setTimeout(r, 20));
  t.equal(deniedFor('tls', /^TLS handshake failed/), tlsBefore + 1, 'a handshake refused: session.denied, reason tls');

  const plainBefore = deniedFor('protocol', /unencrypted data after SSL request/);
  await new Promise<void>((resolve) => {
    const raw = net.connect(proxy.port, '127.0.0.1', () => raw.write(Buffer.concat([Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]), serialize.startup({ user: 'scram_user', database: 'postgres' })])));
    raw.on('error', () => resolve());
    raw.on('close', () => resolve());
    raw.resume();
  });
  t.equal(deniedFor('protocol', /unencrypted data after SSL request/), plainBefore + 1, 'plaintext sent behind an SSLRequest: session.denied, reason protocol');
});

/** A TLS socket after SSLRequest, resuming `session` if given. */
function sslRequestTls(session?: Buffer, maxVersion: tls.SecureVersion = 'TLSv1.3'): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const raw = net.connect(proxy.port, '127.0.0.1', () => {
      raw.write(Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]));
      raw.once('data', () => {
        const s = tls.connect({ socket: raw, rejectUnauthorized: false, maxVersion, ...(session ? { session } : {}) }, () => resolve(s));
        s.once('error', reject);
      });
    });
    raw.once('error', reject);
  });
}

// Before: stateless tickets, and an offer of one back failed with alert 80 (internal error)
// on this listener, which requests client certificates (tls.ca).
t.test('a client offering a session from an earlier connection gets a full handshake, as from PostgreSQL', async (t) => {
  for (const version of ['TLSv1.3', 'TLSv1.2'] as const) {
    const first = await sslRequestTls(undefined, version);
    t.teardown(() => first.destroy());
    t.equal(first.getProtocol(), version);
    const sessions: Buffer[] = [];
    first.on('session', (s: Buffer) => sessions.push(s));
    const next = messages(first);
    first.write(serialize.startup({ user: 'scram_user', database: 'postgres' }));
    t.equal((await next())?.type, 'R', `${version}: authentication request`);
    // TLS 1.3: the stateful ticket that comes right after the handshake. TLS 1.2 gets no
    // ticket: the client offers the session as it knows it (its id, if any).
    const offered = version === 'TLSv1.3' ? sessions[sessions.length - 1] : first.getSession();
    t.ok(offered, `${version}: the client has a session to offer`);
    first.destroy();

    const second = await sslRequestTls(offered, version);
    t.teardown(() => second.destroy());
    t.equal(second.isSessionReused(), false, `${version}: a full handshake, the offered session is not resumed`);
    const again = messages(second);
    second.write(serialize.startup({ user: 'scram_user', database: 'postgres' }));
    t.equal((await again())?.type, 'R', `${version}: and the login goes on as usual`);
  }
});

t.test('clientcert=verify-ca / verify-full on an hba_file line are enforced, as in PostgreSQL', async (t) => {
  // A reviewer's finding: the option was parsed (and shown by hba explain) but not enforced:
  // alice logged in with her password alone, or with mallory's certificate.
  const hbaFile = path.join(dir, 'pg_hba.conf');
  writeFileSync(
    hbaFile,
    ['hostssl all alice 127.0.0.1/32 scram-sha-256 clientcert=verify-full', 'hostssl all bob 127.0.0.1/32 scram-sha-256 clientcert=verify-ca', ''].join('\n'),
  );
  const alice = await certOf(pki, 'alice');
  const mallory = await certOf(pki, 'mallory');
  const strict = await startProxy(t, pgs, {
    users: [
      { name: 'alice', password: 'alice-pw' },
      { name: 'bob', password: 'bob-pw' },
    ],
    extra: {
      tls: { cert: path.join(pki, 'server.crt'), key: path.join(pki, 'server.key'), ca: CA },
      cert_map: [{ cn: 'alice', user: 'alice' }],
      hba: undefined,
      hba_file: hbaFile,
    },
  });
  const login = (user: string, cert: { cert: string; key: string } | null) => {
    const connStr = `host=127.0.0.1 port=${strict.port} dbname=postgres user=${user} password=${user}-pw sslmode=require connect_timeout=5`;
    const env = { ...process.env, PGSSLCERT: cert?.cert ?? '/nonexistent', PGSSLKEY: cert?.key ?? '/nonexistent' };
    return new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(pgBin('psql'), ['-X', '-At', '-c', 'SELECT current_user', connStr], { env });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.once('close', (status) => resolve({ status, stdout: stdout.trim(), stderr }));
    });
  };
  const noCert = await login('alice', null);
  t.match(noCert.stderr, /FATAL: {2}connection requires a valid client certificate/, 'verify-full, no certificate');
  const wrongName = await login('alice', mallory);
  t.match(wrongName.stderr, /FATAL: {2}certificate validation \(clientcert=verify-full\) failed for user "alice": CN mismatch/, "verify-full, another name's certificate");
  t.equal((await login('alice', alice)).stdout, 'app_rw', "verify-full, alice's certificate and password");
  t.match((await login('bob', null)).stderr, /FATAL: {2}connection requires a valid client certificate/, 'verify-ca, no certificate');
  t.equal((await login('bob', mallory)).stdout, 'app_rw', 'verify-ca, any certificate from the CA, and the password');
  t.equal((await login('bob', foreign)).status === 0, false, "verify-ca, another CA's certificate: refused");
});
