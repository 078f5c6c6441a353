// pool.server_idle_timeout_ms: server connections idle longer than that are closed by the
// pool's sweep (and PostgreSQL sees them go); a busy one is not touched.

import t from 'tap';
import pg from 'pg';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, SERVER_ROLE, startProxy } from './helpers/proxy.js';

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);

const serverBackends = async () =>
  Number((await pgs.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = '${SERVER_ROLE}' AND backend_type = 'client backend'`)).rows[0].n);

t.test('idle server connections are closed after server_idle_timeout_ms', async (t) => {
  const proxy = await startProxy(t, pgs, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: { pool: { mode: 'transaction', size: 4, server_idle_timeout_ms: 300 }, upstream: { health_check: { interval_ms: 600_000 } } },
  });
  const busy = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'alice', password: 'alice-pw', database: 'postgres' });
  const idle = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'alice', password: 'alice-pw', database: 'postgres' });
  await busy.connect();
  await idle.connect();
  t.teardown(async () => {
    await busy.end();
    await idle.end();
  });
  await busy.query('BEGIN'); // holds its server connection
  await idle.query('SELECT 1'); // a second one, back in the pool when done
  const pool = [...proxy.server.runtime.pools.all()][0]!;
  t.match(pool.stats, { total: 2, idle: 1 });
  for (let i = 0; i < 60 && pool.stats.total > 1; i++) await new Promise((r) => setTimeout(r, 50));
  t.match(pool.stats, { total: 1, idle: 0 }, 'the idle one was closed, the one in a transaction kept');
  await busy.query('COMMIT');
  for (let i = 0; i < 40 && (await serverBackends()) > 1; i++) await new Promise((r) => setTimeout(r, 50));
  t.ok((await serverBackends()) <= 1, 'PostgreSQL saw the idle one go');
  t.equal((await idle.query('SELECT 2 AS v')).rows[0].v, 2, 'a later transaction gets a connection again');
});
