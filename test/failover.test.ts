// Failover behind a real HAProxy: a primary with a synchronous hot standby, HAProxy sending
// to the primary with the standby as `backup`, pgbastion (transaction mode,
// require_primary) in front. 30 clients run transactions; the primary is killed
// (immediate shutdown) and the standby promoted. Every client recovers, clients that
// were idle at that moment never see an error, and every acknowledged commit is there.

import t from 'tap';
import pg from 'pg';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, SERVER_ROLE, startProxy } from './helpers/proxy.js';
import { startHaproxy } from './helpers/haproxy.js';

const primary = await startPostgres({ settings: { full_page_writes: 'on', synchronous_commit: 'on' } });
t.teardown(() => primary.stop());
await createServerRole(primary);
await primary.query(`CREATE TABLE commits (client int, n int, PRIMARY KEY (client, n)); GRANT ALL ON commits TO ${SERVER_ROLE}`);
const standby = await startPostgres({ standbyOf: primary, settings: { synchronous_commit: 'on' } });
t.teardown(() => standby.stop());
// Synchronous replication from now on: a commit is acknowledged only once the standby has it.
await primary.query("ALTER SYSTEM SET synchronous_standby_names = '*'");
await primary.query('SELECT pg_reload_conf()');

// HAProxy: the primary, the standby as backup; quick checks so the test stays short.
const haproxy = await startHaproxy(
  t,
  `global
  maxconn 2000
defaults
  mode tcp
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  retries 2
  option redispatch
listen postgres
  bind 127.0.0.1:{PORT}
  server primary 127.0.0.1:${primary.port} check inter 300 fall 2 rise 2
  server standby 127.0.0.1:${standby.port} check inter 300 fall 2 rise 2 backup
`,
);
const haPort = haproxy.port;

const proxy = await startProxy(t, primary, {
  users: [{ name: 'app', password: 'app-pw' }],
  extra: {
    upstreams: [{ host: '127.0.0.1', port: haPort }],
    upstream: { require_primary: true },
    pool: { mode: 'transaction', size: 10, acquire_timeout_ms: 3000 },
  },
});

t.test('30 clients through a primary crash and a promotion', async (t) => {
  const CLIENTS = 30;
  const IDLE = 5; // these only run statements before and after the crash
  const acknowledged = new Map<number, number[]>();
  const errorsAfter = new Map<number, number>();
  const idleErrors: string[] = [];
  let phase: 'before' | 'crash' | 'after' = 'before';
  const clients = await Promise.all(
    Array.from({ length: CLIENTS }, async (_, i) => {
      const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'app', password: 'app-pw', database: 'postgres' });
      c.on('error', (e) => idleErrors.push(`client ${i} connection error: ${e.message}`));
      await c.connect();
      return c;
    }),
  );
  t.teardown(() => Promise.all(clients.map((c) => c.end().catch(() => {}))));

  let n = 0;
  async function transaction(c: pg.Client, i: number): Promise<void> {
    const k = ++n;
    await c.query('BEGIN');
    await c.query('INSERT INTO commits VALUES ($1, $2)', [i, k]);
    await c.query('COMMIT');
    acknowledged.set(i, [...(acknowledged.get(i) ?? []), k]);
  }
  let running = true;
  let deadline = Infinity; // set at the crash: clients must recover within it
  const lastErrors: string[] = [];
  const busy = clients.slice(IDLE).map(async (c, j) => {
    const i = j + IDLE;
    let afterOk = 0;
    while (running || (phase === 'after' && afterOk < 3 && Date.now() < deadline)) {
      try {
        await transaction(c, i);
        if (phase === 'after') afterOk++;
      } catch (e) {
        if (phase === 'after') {
          errorsAfter.set(i, (errorsAfter.get(i) ?? 0) + 1);
          if (lastErrors.length < 5) lastErrors.push(`client ${i}: ${(e as Error).message}`);
        }
        await c.query('ROLLBACK').catch(() => {});
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    return afterOk;
  });
  for (const [i, c] of clients.slice(0, IDLE).entries()) await transaction(c, i);
  await new Promise((r) => setTimeout(r, 1000));

  // Crash the primary; promote the standby once HAProxy has noticed.
  phase = 'crash';
  deadline = Date.now() + 30_000;
  await primary.stop();
  await new Promise((r) => setTimeout(r, 800));
  await standby.query('SELECT pg_promote(true, 30)');
  phase = 'after';
  await new Promise((r) => setTimeout(r, 2500));
  running = false;
  const afterCounts = await Promise.all(busy);

  t.ok(afterCounts.every((k) => k >= 3), `every busy client committed again after the failover (${afterCounts.join(',')}) ${lastErrors.join(' | ')}`);
  // The idle clients' next statement just works.
  for (const [i, c] of clients.slice(0, IDLE).entries()) {
    try {
      await transaction(c, i);
    } catch (e) {
      idleErrors.push(`idle client ${i}: ${(e as Error).message}`);
    }
  }
  t.same(idleErrors, [], 'clients idle during the crash saw no error');
  if (idleErrors.length) t.comment(JSON.stringify(proxy.log.lines.filter((l) => (l.level as number) >= 40 || /FATAL|ended/.test(String(l.msg))).slice(0, 15)));

  const rows = await standby.query<{ client: number; n: number }>('SELECT client, n FROM commits');
  const have = new Set(rows.rows.map((r) => `${r.client}:${r.n}`));
  const missing = [...acknowledged].flatMap(([i, ks]) => ks.filter((k) => !have.has(`${i}:${k}`)).map((k) => `${i}:${k}`));
  t.same(missing, [], `all ${[...acknowledged.values()].flat().length} acknowledged commits are on the new primary`);
  t.comment(`errors seen by busy clients after the crash: ${[...errorsAfter.values()].reduce((a, b) => a + b, 0)}`);
});
