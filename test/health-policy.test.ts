// Upstream health policy without servers: backoff and usability as tables, the checker
// driven by a scripted probe, and the PROXY v2 header pgbastion sends to HAProxy.

import t from 'tap';
import { HealthChecker, MAX_BACKOFF_MS, nextProbeDelay, usable, type Health } from '../src/upstream/health.js';
import { encodeProxyV2, parseProxyHeader } from '../src/protocol/proxy-header.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

t.test('nextProbeDelay: the interval while healthy, doubling while down, capped', async (t) => {
  const cases: [number, number, number][] = [
    // interval, consecutive failures, delay
    [2000, 0, 2000],
    [2000, 1, 4000],
    [2000, 2, 8000],
    [2000, 3, 16000],
    [2000, 4, MAX_BACKOFF_MS],
    [2000, 1000, MAX_BACKOFF_MS],
    [100, 3, 800],
    [60_000, 0, 60_000],
    [60_000, 5, 60_000], // an interval longer than the cap is never shortened
  ];
  for (const [interval, failures, want] of cases) t.equal(nextProbeDelay(interval, failures), want, `${interval} ms, ${failures} failures`);
});

t.test('usable: what new server connections may use', async (t) => {
  const cases: [Health, boolean, boolean][] = [
    ['unknown', true, true], // not probed yet: try it rather than refuse
    ['primary', true, true],
    ['standby', true, false],
    ['standby', false, true],
    ['down', true, false],
    ['down', false, false],
  ];
  for (const [health, requirePrimary, want] of cases) t.equal(usable(health, requirePrimary), want, `${health}, require_primary ${requirePrimary}`);
});

t.test('HealthChecker: probes at once, reports changes, backs off, forgets removed endpoints', async (t) => {
  const a = { host: '10.0.0.1', port: 5432 };
  const b = { host: '10.0.0.2', port: 5432 };
  const script: Record<string, ('primary' | 'standby' | 'down')[]> = { '10.0.0.1': ['down', 'down', 'down', 'primary'], '10.0.0.2': ['standby'] };
  const probes: { host: string; at: number }[] = [];
  const changes: string[] = [];
  const started = Date.now();
  const checker = new HealthChecker(
    async (ep) => {
      probes.push({ host: ep.host, at: Date.now() - started });
      const next = script[ep.host]!.length > 1 ? script[ep.host]!.shift()! : script[ep.host]![0]!;
      if (next === 'down') throw new Error('connection refused');
      return next;
    },
    { intervalMs: 40, timeoutMs: 20, requirePrimary: true },
    (ep, health, previous, error) => changes.push(`${ep.host} ${previous}->${health}${error ? ` (${error})` : ''}`),
  );
  t.teardown(() => checker.stop());
  t.equal(checker.anyUsable(), null, 'nothing probed yet');
  checker.configure([a, b], { intervalMs: 40, timeoutMs: 20, requirePrimary: true });
  await until('first probes', () => checker.health(a) !== 'unknown' && checker.health(b) !== 'unknown');
  t.equal(checker.health(a), 'down');
  t.equal(checker.health(b), 'standby');
  t.equal(checker.isUsable(b), false, 'a standby with require_primary');
  t.equal(checker.anyUsable(), false);
  // down x3 → waits of 80, 160, 320 ms, then primary.
  await until('a to recover', () => checker.health(a) === 'primary');
  t.equal(checker.anyUsable(), true);
  const gaps = probes.filter((p) => p.host === a.host).map((p, i, all) => (i === 0 ? 0 : p.at - all[i - 1]!.at));
  t.ok(gaps[1]! >= 70 && gaps[2]! >= 150 && gaps[3]! >= 300, `backoff between probes of a down endpoint: ${gaps.join(', ')} ms`);
  t.same(changes.slice(0, 3), ['10.0.0.1 unknown->down (connection refused)', '10.0.0.2 unknown->standby', '10.0.0.1 down->primary']);
  // A connection attempt's finding counts as well.
  checker.report(a, 'down', 'lost');
  t.equal(checker.isUsable(a), false);
  // Removing b stops its probes.
  checker.configure([a], { intervalMs: 40, timeoutMs: 20, requirePrimary: true });
  const before = probes.filter((p) => p.host === b.host).length;
  await sleep(150);
  t.equal(probes.filter((p) => p.host === b.host).length, before, 'no probe of a removed endpoint');
  t.equal(checker.health(b), 'unknown');
});

t.test('encodeProxyV2 round-trips through the parser', async (t) => {
  const cases: [string, string, string][] = [
    ['203.0.113.7', '127.0.0.1', '203.0.113.7'],
    ['2001:db8::7', '::1', '2001:db8:0:0:0:0:0:7'],
    ['203.0.113.7', '::1', '0:0:0:0:0:ffff:cb00:7107'], // mixed: IPv4 mapped into IPv6
    ['::ffff:203.0.113.7', '::ffff:127.0.0.1', '203.0.113.7'], // Node's IPv4-mapped form is sent as IPv4
  ];
  for (const [src, dst, parsed] of cases) {
    const header = encodeProxyV2({ address: src, port: 40001 }, { address: dst, port: 6432 });
    const r = parseProxyHeader(Buffer.concat([header, Buffer.from('rest')]));
    t.same(r, { kind: 'ok', length: header.length, source: { address: parsed, port: 40001 } }, `${src} -> ${dst}`);
  }
  const local = encodeProxyV2(null, null);
  t.same(parseProxyHeader(local), { kind: 'ok', length: 16 }, 'LOCAL: no addresses');
  t.same(parseProxyHeader(encodeProxyV2({ address: '[local]', port: 0 }, { address: '127.0.0.1', port: 1 })), { kind: 'ok', length: 16 }, 'not IP: LOCAL');
});

