// Upstream selection: upstreams in order of preference, and upstream.require_primary never
// hands out a connection to a server in recovery (a real hot standby made with
// pg_basebackup -R), whatever order the endpoints come in, directly or behind HAProxy.

import t from 'tap';
import { freePort, startPostgres } from './helpers/postgres.js';
import { createServerRole, startProxy } from './helpers/proxy.js';
import { startHaproxy } from './helpers/haproxy.js';
import { oneShot } from './helpers/one-shot.js';

const inRecovery = (port: number) => oneShot(port, 'SELECT pg_is_in_recovery()');

const primary = await startPostgres({ settings: { full_page_writes: 'on' } });
t.teardown(() => primary.stop());
await createServerRole(primary);
const standby = await startPostgres({ standbyOf: primary });
t.teardown(() => standby.stop());


t.test('the standby really is one', async (t) => {
  t.equal((await standby.query('SELECT pg_is_in_recovery() AS r')).rows[0].r, true);
});

t.test('require_primary skips a standby listed first', async (t) => {
  const proxy = await startProxy(t, primary, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: {
      upstreams: [
        { host: '127.0.0.1', port: standby.port },
        { host: '127.0.0.1', port: primary.port },
      ],
      upstream: { require_primary: true },
      pool: { mode: 'transaction', size: 2 },
    },
  });
  for (let i = 0; i < 3; i++) t.same((await inRecovery(proxy.port)).value, false, 'served by the primary');
});

t.test('require_primary with only a standby: FATAL 08006 at once', async (t) => {
  const proxy = await startProxy(t, primary, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: { upstreams: [{ host: '127.0.0.1', port: standby.port }], upstream: { require_primary: true } },
  });
  const r = await inRecovery(proxy.port);
  t.equal(r.code, '08006');
  t.ok(r.ms < 3000, `answered in ${r.ms} ms`);
});

t.test('without require_primary the standby is used as listed', async (t) => {
  const proxy = await startProxy(t, primary, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: { upstreams: [{ host: '127.0.0.1', port: standby.port }], upstream: { require_primary: false } },
  });
  t.equal((await inRecovery(proxy.port)).value, true);
});

t.test('an unreachable first upstream is skipped; none reachable is FATAL 08006 promptly', async (t) => {
  const dead = await freePort();
  const proxy = await startProxy(t, primary, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: { upstreams: [{ host: '127.0.0.1', port: dead }, { host: '127.0.0.1', port: primary.port }] },
  });
  t.equal((await inRecovery(proxy.port)).value, false);
  const none = await startProxy(t, primary, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: { upstreams: [{ host: '127.0.0.1', port: dead }] },
  });
  const r = await inRecovery(none.port);
  t.equal(r.code, '08006');
  t.ok(r.ms < 3000, `answered in ${r.ms} ms`);
});

t.test('behind HAProxy routing to the standby (a misrouted failover): require_primary refuses it', async (t) => {
  const haproxy = await startHaproxy(
    t,
    `defaults
  mode tcp
  timeout connect 1s
  timeout client 60s
  timeout server 60s
listen postgres
  bind 127.0.0.1:{PORT}
  server standby 127.0.0.1:${standby.port}
`,
  );
  const viaHaproxy = { host: '127.0.0.1', port: haproxy.port };
  const refusing = await startProxy(t, primary, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: { upstreams: [viaHaproxy], upstream: { require_primary: true, health_check: { interval_ms: 100 } } },
  });
  const r = await inRecovery(refusing.port);
  t.equal(r.code, '08006', 'no client is handed a standby');
  t.ok(r.ms < 3000, `answered in ${r.ms} ms`);
  for (let i = 0; i < 40 && refusing.server.runtime.pools.health.health(viaHaproxy) !== 'standby'; i++) await new Promise((r) => setTimeout(r, 50));
  t.equal(refusing.server.runtime.pools.health.health(viaHaproxy), 'standby', 'the health check sees a server in recovery behind HAProxy');
  t.equal(await refusing.server.runtime.pools.anyUpstreamUp(), false, 'not ready');
  // The same HAProxy, require_primary off: served by the standby.
  const serving = await startProxy(t, primary, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: { upstreams: [viaHaproxy], upstream: { require_primary: false } },
  });
  t.equal((await inRecovery(serving.port)).value, true);
});
