// Upstream health checks against real servers: an endpoint that accepts TCP but never
// answers (HAProxy with no live backend behaves like this), a closed port that opens again
// and a real hot standby are found by the checks and skipped or taken back, so clients no
// longer pay a connect timeout for them. The policy itself: health-policy.test.ts.

import net from 'node:net';
import t from 'tap';
import pg from 'pg';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, startProxy } from './helpers/proxy.js';
import { oneShot } from './helpers/one-shot.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const primary = await startPostgres({ settings: { full_page_writes: 'on' } });
t.teardown(() => primary.stop());
await createServerRole(primary);
const standby = await startPostgres({ standbyOf: primary });
t.teardown(() => standby.stop());

/** Accepts TCP connections and never says a word; counts them. */
async function blackHole(t: Tap.Test): Promise<{ port: number; accepted: number[] }> {
  const accepted: number[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    accepted.push(Date.now());
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  return { port: (server.address() as net.AddressInfo).port, accepted };
}

async function metricsText(proxy: Awaited<ReturnType<typeof startProxy>>): Promise<string> {
  return proxy.server.runtime.metrics.registry.metrics();
}


async function until(what: string, cond: () => Promise<boolean> | boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

t.test('a silent endpoint listed first: found down by the checks, skipped, probed with backoff', async (t) => {
  const hole = await blackHole(t);
  const proxy = await startProxy(t, primary, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: {
      upstreams: [
        { host: '127.0.0.1', port: hole.port },
        { host: '127.0.0.1', port: primary.port },
      ],
      upstream: { require_primary: true, health_check: { interval_ms: 100, timeout_ms: 150 } },
      pool: { mode: 'transaction', size: 4, acquire_timeout_ms: 3000 },
    },
  });
  const hole_ = `upstream="127.0.0.1:${hole.port}"`;
  const prim_ = `upstream="127.0.0.1:${primary.port}"`;
  await until('the checks to find both endpoints', async () => {
    const m = await metricsText(proxy);
    return m.includes(`pgbastion_upstream_up{${hole_}} 0`) && m.includes(`pgbastion_upstream_up{${prim_}} 1`);
  });
  const probesSoFar = hole.accepted.length;
  // Without the checks, each new server connection would first wait out the silent one.
  const r = await oneShot(proxy.port, 'SELECT 1');
  t.equal(r.value, 1);
  t.ok(r.ms < 1000, `served at once by the second upstream (${r.ms} ms), not after a 3 s connect timeout`);
  t.equal(hole.accepted.length - probesSoFar <= 1, true, 'the client did not cause a connection to the silent endpoint');
  t.ok((await proxy.server.runtime.pools.anyUpstreamUp()) === true, 'ready: one upstream is healthy');
  // Backoff: 1.6 s at a 100 ms interval would be ~7 probes (each waits 150 ms); with backoff at most 4.
  const startCount = hole.accepted.length;
  await sleep(1600);
  const probes = hole.accepted.length - startCount;
  t.ok(probes >= 1 && probes <= 4, `${probes} probes of the silent endpoint in 1.6 s`);
  t.notOk(
    proxy.log.lines.some((l) => l.msg === 'upstream unusable'),
    'no client connection attempt was made on the endpoint the checks had found down',
  );
});

t.test('a hot standby listed first: the checks mark it, clients never try it', async (t) => {
  const proxy = await startProxy(t, primary, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: {
      upstreams: [
        { host: '127.0.0.1', port: standby.port },
        { host: '127.0.0.1', port: primary.port },
      ],
      upstream: { require_primary: true, health_check: { interval_ms: 100, timeout_ms: 1000 } },
      pool: { mode: 'transaction', size: 4 },
    },
  });
  await until('the standby to be found', () => proxy.server.runtime.pools.health.health({ host: '127.0.0.1', port: standby.port }) === 'standby');
  for (let i = 0; i < 5; i++) t.equal((await oneShot(proxy.port, 'SELECT pg_is_in_recovery()')).value, false, 'served by the primary');
  t.notOk(proxy.log.lines.some((l) => l.msg === 'upstream unusable'), 'no server connection was attempted on the standby');
  t.match(await metricsText(proxy), `pgbastion_upstream_up{upstream="127.0.0.1:${standby.port}"} 0`);
  const change = proxy.log.lines.find((l) => l.msg === 'upstream unhealthy: new server connections skip it');
  t.match(change, { upstream: `127.0.0.1:${standby.port}`, health: 'standby' });
});

t.test('only silent endpoints: not ready, and clients still get a prompt FATAL 08006', async (t) => {
  const hole = await blackHole(t);
  const proxy = await startProxy(t, primary, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: {
      upstreams: [{ host: '127.0.0.1', port: hole.port }],
      upstream: { health_check: { interval_ms: 100, timeout_ms: 100 } },
      pool: { mode: 'transaction', size: 2, acquire_timeout_ms: 500 },
    },
  });
  await until('the check to fail', () => proxy.server.runtime.pools.health.health({ host: '127.0.0.1', port: hole.port }) === 'down');
  t.equal(await proxy.server.runtime.pools.anyUpstreamUp(), false, '/readyz says not ready');
  const r = await oneShot(proxy.port, 'SELECT 1');
  t.equal(r.code, '08006', 'all endpoints down: still tried (the checks may be stale), then refused');
  t.ok(r.ms < 2000, `in ${r.ms} ms`);
});

t.test('an endpoint that comes back is used again', async (t) => {
  // The primary listed first behind a port that is closed at first, then forwards to it.
  const forwards = new Set<net.Socket>();
  const relay = net.createServer((s) => {
    const up = net.connect(primary.port, '127.0.0.1');
    forwards.add(s);
    s.pipe(up).pipe(s);
    s.on('error', () => up.destroy());
    up.on('error', () => s.destroy());
  });
  await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
  const relayPort = (relay.address() as net.AddressInfo).port;
  await new Promise<void>((r) => relay.close(() => r())); // closed for now: connection refused
  t.teardown(() => {
    for (const s of forwards) s.destroy();
    relay.close();
  });
  const proxy = await startProxy(t, primary, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: {
      upstreams: [
        { host: '127.0.0.1', port: relayPort },
        { host: '127.0.0.1', port: primary.port },
      ],
      upstream: { health_check: { interval_ms: 50, timeout_ms: 500 } },
      pool: { mode: 'transaction', size: 4 },
    },
  });
  const relayEp = { host: '127.0.0.1', port: relayPort };
  await until('the closed port to be found down', () => proxy.server.runtime.pools.health.health(relayEp) === 'down');
  t.equal((await oneShot(proxy.port, 'SELECT inet_server_port()')).value, primary.port);
  await new Promise<void>((r) => relay.listen(relayPort, '127.0.0.1', r));
  await until('the first upstream to be healthy again', () => proxy.server.runtime.pools.health.health(relayEp) === 'primary', 8000);
  t.equal(forwards.size > 0, true, 'probed through the relay');
  const failoversBefore = (await metricsText(proxy)).match(/pgbastion_upstream_failovers_total (\d+)/)?.[1];
  // New server connections go to the preferred endpoint again (the pool's idle ones are reused first: hold two at once).
  const a = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'alice', password: 'alice-pw', database: 'postgres' });
  await a.connect();
  t.teardown(() => a.end());
  const before = forwards.size;
  await a.query('BEGIN');
  const b = await oneShot(proxy.port, 'SELECT 1');
  await a.query('COMMIT');
  t.equal(b.value, 1);
  t.ok(forwards.size > before, 'a new server connection went through the preferred endpoint');
  t.not((await metricsText(proxy)).match(/pgbastion_upstream_failovers_total (\d+)/)?.[1], failoversBefore, 'counted as a failover');
});

t.test('reload to another upstream: the next transaction goes there, the old one is no longer probed', async (t) => {
  const proxy = await startProxy(t, primary, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: {
      upstreams: [{ host: '127.0.0.1', port: primary.port }],
      upstream: { require_primary: false, health_check: { interval_ms: 50 } },
      pool: { mode: 'transaction', size: 2 },
    },
  });
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'alice', password: 'alice-pw', database: 'postgres' });
  await c.connect();
  t.teardown(() => c.end());
  const port = async () => (await c.query('SELECT inet_server_port() AS p')).rows[0].p as number;
  t.equal(await port(), primary.port);
  const next = { ...proxy.config, upstreams: [{ host: '127.0.0.1', port: standby.port }] };
  t.equal(await proxy.server.reload(async () => next), true);
  for (let i = 0; i < 3; i++) t.equal(await port(), standby.port, 'the pooled connection to the old upstream is not reused');
  const health = proxy.server.runtime.pools.health;
  await until('the new upstream to be probed', () => health.health({ host: '127.0.0.1', port: standby.port }) === 'standby');
  t.equal(health.health({ host: '127.0.0.1', port: primary.port }), 'unknown', 'the old upstream is forgotten');
});

t.test('a probe whose login is refused: the server answered, so it counts as up; said once', async (t) => {
  const proxy = await startProxy(t, primary, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: {
      upstreams: [{ host: '127.0.0.1', port: primary.port }],
      server_roles: [
        { name: 'app_rw', password: 'server-role-pw' },
        { name: 'nobody', password: 'wrong' },
      ],
      upstream: { health_check: { interval_ms: 50, server_role: 'nobody' } },
    },
  });
  await sleep(400);
  t.equal(proxy.server.runtime.pools.health.health({ host: '127.0.0.1', port: primary.port }), 'primary');
  t.equal(proxy.log.lines.filter((l) => l.msg === 'health check cannot log in; checking reachability only').length, 1, 'one warning, not one per probe');
  t.equal((await oneShot(proxy.port, 'SELECT 1')).value, 1);
});

declare namespace Tap {
  type Test = Parameters<Parameters<typeof t.test>[1]>[0];
}
