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

// Pools are removed once nothing holds them (no server connection, waiter or client session):
// otherwise every database name a client asks for would keep a pool for good.

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(what: () => boolean, ms = 3000): Promise<boolean> {
  for (const end = Date.now() + ms; !what() && Date.now() < end; ) await sleep(20);
  return what();
}
/** pgbastion_pool_server_connections as a scrape reads it: {active, idle, waiting_clients}. */
async function serverGauge(proxy: Awaited<ReturnType<typeof startProxy>>): Promise<Record<string, number>> {
  const metric = await proxy.server.runtime.metrics.registry.getSingleMetric('pgbastion_pool_server_connections')!.get();
  return Object.fromEntries(metric.values.map((v) => [String(v.labels.state), v.value]));
}
const alice = (port: number, database = 'postgres') =>
  new pg.Client({ host: '127.0.0.1', port, user: 'alice', password: 'alice-pw', database });

t.test('logins to many distinct nonexistent databases leave no pool behind', async (t) => {
  const proxy = await startProxy(t, pgs, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: { pool: { mode: 'transaction', size: 4 }, upstream: { health_check: { interval_ms: 600_000 } } },
  });
  const pools = proxy.server.runtime.pools;
  const before = pools.size;
  const N = 300;
  const codes = new Map<string, number>();
  for (let i = 0; i < N; i += 25) {
    await Promise.all(
      Array.from({ length: Math.min(25, N - i) }, async (_, j) => {
        const c = alice(proxy.port, `nodb_${i + j}`);
        c.on('error', () => undefined);
        try {
          await c.connect();
          await c.end();
          codes.set('connected', (codes.get('connected') ?? 0) + 1);
        } catch (err) {
          const code = String((err as { code?: string }).code);
          codes.set(code, (codes.get(code) ?? 0) + 1);
        }
      }),
    );
  }
  t.same(Object.fromEntries(codes), { '3D000': N }, 'every login refused by the upstream (FATAL 3D000)');
  t.ok(await until(() => proxy.server.runtime.clients === 0), 'the sessions ended');
  t.ok(await until(() => pools.size === before), `the registry is back to ${before} pools (has ${pools.size})`);
  t.equal(pools.find('nodb_0', SERVER_ROLE), undefined, 'the pool of a refused database is gone');
  const c = alice(proxy.port);
  await c.connect();
  t.equal((await c.query('SELECT 1 AS v')).rows[0].v, 1, 'an existing database still works');
  await c.end();
});

const idleOut = { pool: { mode: 'transaction', size: 4, server_idle_timeout_ms: 300 }, upstream: { health_check: { interval_ms: 600_000 } } };

t.test('a pool a live session holds is kept when its connections are gone, and removed once the session is', async (t) => {
  const proxy = await startProxy(t, pgs, { users: [{ name: 'alice', password: 'alice-pw' }], extra: idleOut });
  const pools = proxy.server.runtime.pools;
  const before = pools.size;
  const live = alice(proxy.port);
  await live.connect();
  t.teardown(() => live.end().catch(() => undefined));
  t.equal((await live.query('SELECT 1 AS v')).rows[0].v, 1);
  const pool = pools.find('postgres', SERVER_ROLE)!;
  t.ok(pool, 'the session has its pool');
  t.equal(pools.size, before + 1);
  t.ok(await until(() => pool.stats.total === 0), 'its idle server connection was closed (server_idle_timeout_ms)');
  await sleep(100); // (removal, were it to happen, is immediate)
  t.equal(pools.find('postgres', SERVER_ROLE), pool, 'the pool stays: a session holds it');
  t.notOk(pool.isClosed, 'and it is not closed');
  t.equal(pool.sessions, 1);

  // The session goes on working, and its connection is counted where the registry sees it.
  await live.query('BEGIN');
  t.equal((await live.query('SELECT 2 AS v')).rows[0].v, 2, 'the live session still works');
  t.match(pool.stats, { total: 1, active: 1 }, 'on a connection of its pool');
  t.ok([...pools.all()].includes(pool), 'a pool the registry lists');
  t.match(await serverGauge(proxy), { active: 1 }, 'pgbastion_pool_server_connections counts it');
  await live.query('COMMIT');

  // A second session logs in from the welcome of the same pool, then leaves: still held by the first.
  const other = alice(proxy.port);
  await other.connect();
  t.equal((await other.query('SELECT 3 AS v')).rows[0].v, 3);
  t.equal(pool.sessions, 2);
  await other.end();
  t.ok(await until(() => pool.sessions === 1), 'the second session left the pool');
  t.ok(await until(() => pool.stats.total === 0), 'the connection idled out again');
  await sleep(100);
  t.equal(pools.find('postgres', SERVER_ROLE), pool, 'still there for the first');

  // Once the session is gone (its connection idled out already), the pool is removed, and closed.
  await live.end();
  t.ok(await until(() => pools.find('postgres', SERVER_ROLE) === undefined), 'the pool is removed once nothing holds it');
  t.equal(pools.size, before);
  t.ok(pool.isClosed, 'the removed pool is closed: it can open nothing');
  t.match(await serverGauge(proxy), { active: 0, idle: 0, waiting_clients: 0 });
});

t.test('a removed pool is recreated by the next login, and works', async (t) => {
  const proxy = await startProxy(t, pgs, { users: [{ name: 'alice', password: 'alice-pw' }], extra: idleOut });
  const pools = proxy.server.runtime.pools;
  const before = pools.size;
  const first = alice(proxy.port);
  await first.connect();
  await first.query('SELECT 1');
  const pool = pools.find('postgres', SERVER_ROLE)!;
  t.not(pool.welcome, null, 'the first pool had its welcome');
  await first.end();
  // Its session gone, the pool lives until its idle connection is closed.
  t.ok(await until(() => pools.find('postgres', SERVER_ROLE) === undefined), 'removed once its idle connection is closed');
  t.equal(pools.size, before);

  // A new login recreates it: a fresh pool, which logs in on a connection and builds its welcome again.
  const again = alice(proxy.port);
  await again.connect();
  t.teardown(() => again.end().catch(() => undefined));
  const fresh = pools.find('postgres', SERVER_ROLE)!;
  t.ok(fresh && fresh !== pool, 'a new pool');
  t.not(fresh.welcome, null, 'with a welcome from its first connection');
  t.equal((await again.query('SELECT 4 AS v')).rows[0].v, 4, 'the recreated pool works');
  const welcomed = alice(proxy.port);
  await welcomed.connect(); // logged in from the new pool's welcome
  t.teardown(() => welcomed.end().catch(() => undefined));
  t.equal((await welcomed.query('SELECT 5 AS v')).rows[0].v, 5, 'as does a login it welcomes');
  t.equal(fresh.sessions, 2);
  t.match(fresh.stats, { total: 1, idle: 1 }, 'its connection counted in the new pool');
  t.match(await serverGauge(proxy), { idle: 1 }, 'and by pgbastion_pool_server_connections');
});
