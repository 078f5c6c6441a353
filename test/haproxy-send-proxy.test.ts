// upstream.send_proxy_protocol against a real HAProxy whose bind line says `accept-proxy`:
// pgbastion's PROXY v2 header carries the real client address (here one that itself came
// in through a trusted balancer's header), HAProxy logs that address, health checks
// pass with a LOCAL header, and without the option HAProxy refuses pgbastion.

import t from 'tap';
import pg from 'pg';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, startProxy } from './helpers/proxy.js';
import { headerBalancer } from './helpers/balancer.js';
import { startHaproxy } from './helpers/haproxy.js';
import { cancelClient } from './helpers/cancel.js';
import { oneShot } from './helpers/one-shot.js';

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);

const haproxy = await startHaproxy(
  t,
  `global
  log stdout format raw local0 info
defaults
  mode tcp
  log global
  timeout connect 1s
  timeout client 60s
  timeout server 60s
listen postgres
  bind 127.0.0.1:{PORT} accept-proxy
  log-format "conn client=%ci:%cp frontend=%fi:%fp"
  server pg 127.0.0.1:${pgs.port}
`,
);

const proxyWith = (t: Tap.Test, sendProxyProtocol: boolean) =>
  startProxy(t, pgs, {
    users: [{ name: 'alice', password: 'alice-pw' }],
    extra: {
      upstreams: [{ host: '127.0.0.1', port: haproxy.port }],
      upstream: { send_proxy_protocol: sendProxyProtocol, health_check: { interval_ms: 200, timeout_ms: 1000 } },
      // Clients come through a balancer that sends a header (test 1), or directly (test 2).
      ...(sendProxyProtocol && { proxy_protocol: { trusted: ['127.0.0.1/32'] } }),
      pool: { mode: 'transaction', size: 2, acquire_timeout_ms: 2000 },
    },
  });


t.test('send_proxy_protocol: HAProxy accepts pgbastion and sees the real client', async (t) => {
  const proxy = await proxyWith(t, true);
  // The client reaches pgbastion through a trusted balancer that names it 203.0.113.7:40123.
  const front = await headerBalancer(t, proxy.port, Buffer.from('PROXY TCP4 203.0.113.7 127.0.0.1 40123 6432\r\n'));
  t.equal((await oneShot(front, 'SELECT 1')).value, 1, 'served through HAProxy');
  await new Promise((r) => setTimeout(r, 200));
  t.match(
    haproxy.log(),
    new RegExp(`conn client=203\\.0\\.113\\.7:40123 frontend=127\\.0\\.0\\.1:${proxy.port}\\b`),
    "HAProxy logged our header's addresses: the client's, and the pgbastion listener it reached",
  );
  t.equal(proxy.server.runtime.pools.health.health({ host: '127.0.0.1', port: haproxy.port }), 'primary', 'health checks (LOCAL header) pass');
  // PostgreSQL itself sees HAProxy, which does not forward a header: nothing changes there.
  t.equal((await oneShot(front, 'SELECT host(inet_client_addr())')).value, '127.0.0.1');
});

t.test('a cancel goes through HAProxy with a PROXY header too', async (t) => {
  const proxy = await proxyWith(t, true);
  const front = await headerBalancer(t, proxy.port, Buffer.from('PROXY TCP4 203.0.113.9 127.0.0.1 40124 6432\r\n'));
  const c = new pg.Client({ host: '127.0.0.1', port: front, user: 'alice', password: 'alice-pw', database: 'postgres' });
  await c.connect();
  t.teardown(() => c.end());
  const started = Date.now();
  const sleeping = c.query('SELECT pg_sleep(20)').catch((e: { code?: string }) => e);
  await new Promise((r) => setTimeout(r, 300));
  // The cancel connection reaches pgbastion through the same trusted balancer (a header is required).
  await cancelClient(front, c);
  t.match(await sleeping, { code: '57014' }, 'canceling statement due to user request');
  t.ok(Date.now() - started < 5000, 'promptly');
});

t.test('without it, HAProxy with accept-proxy refuses pgbastion: FATAL 08006', async (t) => {
  const proxy = await proxyWith(t, false);
  t.equal((await oneShot(proxy.port, 'SELECT 1')).code, '08006');
});

declare namespace Tap {
  type Test = Parameters<Parameters<typeof t.test>[1]>[0];
}
