// More of SIGHUP reload: a rotated server certificate is served to new connections (old
// ones keep theirs), a reject rule added by a reload ends an established session at its
// next transaction boundary, and 50 reloads under 20 busy clients cost no client an error,
// never show one tenant's pin to another and leave memory flat.

import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type tls from 'node:tls';
import t from 'tap';
import pg from 'pg';
import { initCaDir } from '../src/tls/certs.js';
import type { Config } from '../src/config/types.js';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, startProxy } from './helpers/proxy.js';

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-reload-soak-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const users = [
  { name: 'tenant_a', password: 'pw-a', pins: { 'app.tenant_id': 'a' } },
  { name: 'tenant_b', password: 'pw-b', pins: { 'app.tenant_id': 'b' } },
];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function connect(port: number, user: 'tenant_a' | 'tenant_b', ssl = false): Promise<{ c: pg.Client; errors: string[] }> {
  const c = new pg.Client({ host: '127.0.0.1', port, user, password: user === 'tenant_a' ? 'pw-a' : 'pw-b', database: 'postgres', ssl: ssl ? { rejectUnauthorized: false } : false });
  const errors: string[] = [];
  c.on('error', (e: Error & { code?: string }) => errors.push(e.code ?? e.message));
  await c.connect();
  return { c, errors };
}
const pinOf = async (c: pg.Client) => (await c.query("SELECT current_setting('app.tenant_id') AS v")).rows[0].v as string;
const fingerprintOf = (c: pg.Client) => ((c as unknown as { connection: { stream: tls.TLSSocket } }).connection.stream.getPeerCertificate().fingerprint256);

t.test('a rotated server certificate is served to new connections', async (t) => {
  const first = path.join(dir, 'first');
  const second = path.join(dir, 'second');
  await initCaDir(first);
  await initCaDir(second);
  const live = { cert: path.join(dir, 'live.crt'), key: path.join(dir, 'live.key') };
  copyFileSync(path.join(first, 'server.crt'), live.cert);
  copyFileSync(path.join(first, 'server.key'), live.key);
  const proxy = await startProxy(t, pgs, { users, extra: { tls: live, pool: { mode: 'transaction', size: 2 } } });
  const before = await connect(proxy.port, 'tenant_a', true);
  const oldPrint = fingerprintOf(before.c);

  copyFileSync(path.join(second, 'server.crt'), live.cert);
  copyFileSync(path.join(second, 'server.key'), live.key);
  t.equal(await proxy.server.reload(async () => proxy.config), true, 'reloaded with the same paths');
  const after = await connect(proxy.port, 'tenant_a', true);
  t.not(fingerprintOf(after.c), oldPrint, 'a new connection gets the new certificate');
  t.equal(await pinOf(before.c), 'a', 'a connection made before keeps working on its own TLS session');
  t.same(before.errors, []);
  await before.c.end();
  await after.c.end();
});

t.test('a reject rule added by a reload ends an established session at its next boundary', async (t) => {
  const proxy = await startProxy(t, pgs, { users, extra: { pool: { mode: 'transaction', size: 2 } } });
  const b = await connect(proxy.port, 'tenant_b');
  const a = await connect(proxy.port, 'tenant_a');
  await b.c.query('BEGIN');
  const next: Config = {
    ...proxy.config,
    hba: [
      { type: 'host', database: 'all', user: 'tenant_b', address: 'all', method: 'reject' },
      { type: 'host', database: 'all', user: 'all', address: 'all', method: 'scram-sha-256' },
    ],
  } as unknown as Config;
  t.equal(await proxy.server.reload(async () => next), true);
  await sleep(100);
  t.same(b.errors, [], 'inside its transaction it goes on');
  t.equal(await pinOf(b.c), 'b');
  await b.c.query('COMMIT');
  await sleep(150);
  t.equal(b.errors[0], '57P01', 'ended at the transaction boundary');
  t.same(a.errors, [], 'other clients are untouched');
  t.equal(await pinOf(a.c), 'a');
  const end = proxy.audit.lines.find((l) => l.event === 'session.end' && l.user === 'tenant_b');
  t.match(end, { reason: /rules no longer allow/ }, 'audited with the reason');
  const refused = await connect(proxy.port, 'tenant_b').then(
    () => 'connected',
    (e: { code?: string }) => e.code,
  );
  t.equal(refused, '28000', 'and cannot come back');
  await a.c.end();
  await b.c.end().catch(() => {});
});

t.test('50 reloads while 20 clients run transactions', async (t) => {
  const proxy = await startProxy(t, pgs, { users, extra: { pool: { mode: 'transaction', size: 4 } } });
  const clients = await Promise.all(Array.from({ length: 20 }, (_, i) => connect(proxy.port, i % 2 === 0 ? 'tenant_a' : 'tenant_b').then((s) => ({ ...s, want: i % 2 === 0 ? 'a' : 'b' }))));
  let running = true;
  const wrong: string[] = [];
  let checks = 0;
  const loops = clients.map(async ({ c, want }, i) => {
    while (running) {
      await c.query('BEGIN');
      const v = await pinOf(c);
      await c.query('COMMIT');
      checks++;
      if (v !== want) wrong.push(`client ${i} saw ${v}`);
    }
  });
  const heapBefore = process.memoryUsage().heapUsed;
  for (let i = 0; i < 50; i++) {
    t.equal(await proxy.server.reload(async () => proxy.config), true, `reload ${i + 1}`);
    await sleep(20);
  }
  running = false;
  await Promise.all(loops);
  const heapGrowthMb = (process.memoryUsage().heapUsed - heapBefore) / 2 ** 20;
  t.same(wrong, [], `${checks} checks, every one its own tenant's pin`);
  t.same(clients.flatMap((s) => s.errors), [], 'no client saw an error');
  t.ok(heapGrowthMb < 40, `heap grew ${heapGrowthMb.toFixed(1)} MiB over 50 reloads`);
  t.equal(proxy.server.runtime.generation, 51);
  for (const s of clients) await s.c.end();
});
