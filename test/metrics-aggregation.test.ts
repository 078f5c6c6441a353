// workers: N — the primary's single /metrics merges every worker's registry. Counters and
// histograms add up; the two gauges whose sum would mean nothing say how they merge:
// upstream_up takes the max (usable if any worker finds it usable), config_generation the
// min (the oldest configuration still serving, so a lagging worker shows).

import t from 'tap';
import client from 'prom-client';
import { Metrics } from '../src/metrics/metrics.js';

const sample = () => ({ clients: { idle: 1 }, servers: { idle: 2 } });

async function merged(...workers: Metrics[]): Promise<string> {
  const each = await Promise.all(workers.map((m) => m.registry.getMetricsAsJSON()));
  return client.AggregatorRegistry.aggregate(each).metrics();
}

t.test('worker registries merge as the dashboards expect', async (t) => {
  const a = new Metrics(sample);
  const b = new Metrics(sample);
  a.configGeneration.set(3);
  b.configGeneration.set(2); // this worker has not applied the last reload yet
  a.upstreamUp.set({ upstream: 'pg1:5432' }, 0);
  b.upstreamUp.set({ upstream: 'pg1:5432' }, 1);
  a.upstreamUp.set({ upstream: 'pg2:5432' }, 0);
  b.upstreamUp.set({ upstream: 'pg2:5432' }, 0);
  a.connections.inc({ outcome: 'started', reason: '' }, 2);
  b.connections.inc({ outcome: 'started', reason: '' }, 3);
  a.poolWait.observe(0.002);
  b.poolWait.observe(0.2);
  b.poolWait.observe(0.0001);

  const text = await merged(a, b);
  t.match(text, /^pgbastion_config_generation 2$/m, 'generation: the oldest still serving');
  t.match(text, /^pgbastion_upstream_up\{upstream="pg1:5432"\} 1$/m, 'up where any worker finds it usable');
  t.match(text, /^pgbastion_upstream_up\{upstream="pg2:5432"\} 0$/m, 'down where none does');
  t.match(text, /^pgbastion_connections_total\{outcome="started",reason=""\} 5$/m, 'counters add up');
  t.match(text, /^pgbastion_pool_wait_seconds_count 3$/m, 'histogram counts add up');
  t.match(text, /^pgbastion_pool_wait_seconds_bucket\{le="\+Inf"\} 3$/m);
  t.match(text, /^pgbastion_client_connections\{state="idle"\} 2$/m, 'per-worker client counts add up');

  // Both workers on the same generation again: the min follows.
  b.configGeneration.set(3);
  t.match(await merged(a, b), /^pgbastion_config_generation 3$/m);
});
