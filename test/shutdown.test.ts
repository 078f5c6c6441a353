// Graceful shutdown: new connections are refused at once, a session between transactions
// ends with FATAL 57P01, a transaction in flight may finish (its COMMIT is kept) and its
// session ends right after, and one that dawdles is ended at shutdown_timeout_ms.

import net from 'node:net';
import t from 'tap';
import pg from 'pg';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, SERVER_ROLE, startProxy } from './helpers/proxy.js';

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
await pgs.query(`CREATE TABLE shutdown_rows (n int); GRANT ALL ON shutdown_rows TO ${SERVER_ROLE}`);

async function client(port: number): Promise<{ c: pg.Client; errors: string[] }> {
  const c = new pg.Client({ host: '127.0.0.1', port, user: 'alice', password: 'alice-pw', database: 'postgres' });
  const errors: string[] = [];
  c.on('error', (e: Error & { code?: string }) => errors.push(e.code ?? e.message));
  await c.connect();
  return { c, errors };
}

for (const mode of ['transaction', 'session'] as const) {
  t.test(`${mode} mode: in-flight transactions finish, idle sessions end at once`, async (t) => {
    const proxy = await startProxy(t, pgs, {
      users: [{ name: 'alice', password: 'alice-pw' }],
      extra: { pool: { mode, size: 4 }, shutdown_timeout_ms: 5000 },
    });
    const idle = await client(proxy.port);
    const busy = await client(proxy.port);
    await busy.c.query('BEGIN');
    await busy.c.query('INSERT INTO shutdown_rows VALUES (1)');

    const started = Date.now();
    const closing = proxy.server.close();
    await new Promise((r) => setTimeout(r, 200));
    t.equal(idle.errors[0], '57P01', 'the idle session got FATAL 57P01 at once'); // (pg then adds its own "terminated")
    const refused = await new Promise<boolean>((resolve) => {
      const s = net.connect(proxy.port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), resolve(false)));
      s.once('error', () => resolve(true));
    });
    t.ok(refused, 'new connections are refused');
    t.same(busy.errors, [], 'the session in a transaction goes on');
    await busy.c.query('INSERT INTO shutdown_rows VALUES (2)');
    await busy.c.query('COMMIT');
    await closing;
    t.ok(Date.now() - started < 4000, `closed as soon as the transaction ended (${Date.now() - started} ms)`);
    t.equal(busy.errors[0], '57P01', 'then it ended with 57P01');
    const rows = await pgs.query('SELECT count(*)::int AS n FROM shutdown_rows');
    t.equal(rows.rows[0].n >= 2, true, 'the committed rows are there');
    await pgs.query('TRUNCATE shutdown_rows');
    t.ok(proxy.audit.lines.filter((l) => l.event === 'session.end').length >= 2, 'session.end audited for both');
    await idle.c.end().catch(() => {});
    await busy.c.end().catch(() => {});
  });
}

t.test('a transaction left open is ended at shutdown_timeout_ms', async (t) => {
  const proxy = await startProxy(t, pgs, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: { pool: { mode: 'transaction', size: 2 }, shutdown_timeout_ms: 400 },
  });
  const dawdler = await client(proxy.port);
  await dawdler.c.query('BEGIN');
  await dawdler.c.query('INSERT INTO shutdown_rows VALUES (3)');
  const started = Date.now();
  await proxy.server.close();
  const took = Date.now() - started;
  t.ok(took >= 380 && took < 2000, `waited for the timeout (${took} ms)`);
  await new Promise((r) => setTimeout(r, 100));
  t.equal(dawdler.errors[0], '57P01');
  t.equal((await pgs.query('SELECT count(*)::int AS n FROM shutdown_rows')).rows[0].n, 0, 'its uncommitted work was rolled back');
  await dawdler.c.end().catch(() => {});
});
