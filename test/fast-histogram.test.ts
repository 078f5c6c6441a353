// FastHistogram must be indistinguishable from prom-client's Histogram to a scraper, to the
// JSON the workers send their primary, and to the primary's AggregatorRegistry.

import t from 'tap';
import client from 'prom-client';
import { FastHistogram } from '../src/metrics/fast-histogram.js';

const BUCKETS = [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30];
const NAME = 'pgbastion_test_seconds';
const HELP = 'A test histogram.';

function pairOf(samples: readonly number[]) {
  const theirs = new client.Registry();
  const ours = new client.Registry();
  const reference = new client.Histogram({ name: NAME, help: HELP, buckets: BUCKETS, registers: [theirs] });
  const fast = new FastHistogram(NAME, HELP, BUCKETS, ours);
  for (const v of samples) {
    reference.observe(v);
    fast.observe(v);
  }
  return { theirs, ours, fast };
}

// Bounds themselves (le is inclusive), between them, below the first, above the last, zero.
const SAMPLES = [0, 0.0001, 0.0002, 0.00021, 0.001, 0.0015, 0.002, 0.0049, 0.05, 0.3, 1, 4.99, 5, 29, 30, 31, 1000, 0.0002];

t.test('the same text and JSON as prom-client for the same observations', async (t) => {
  for (const samples of [[], [0.003], SAMPLES]) {
    const { theirs, ours } = pairOf(samples);
    t.equal(await ours.metrics(), await theirs.metrics(), `text, ${samples.length} observations`);
    t.same(await ours.getMetricsAsJSON(), await theirs.getMetricsAsJSON(), `JSON, ${samples.length} observations`);
  }
});

t.test('workers merge it as they merge prom-client histograms', async (t) => {
  const a = pairOf(SAMPLES.slice(0, 7));
  const b = pairOf(SAMPLES.slice(7));
  const merged = async (x: client.Registry, y: client.Registry) => client.AggregatorRegistry.aggregate([await x.getMetricsAsJSON(), await y.getMetricsAsJSON()]).metrics();
  const text = await merged(a.ours, b.ours);
  t.equal(text, await merged(a.theirs, b.theirs));
  t.match(text, new RegExp(`^${NAME}_count ${SAMPLES.length}$`, 'm'));
});

t.test('a value that is not a number is ignored, not thrown', async (t) => {
  const { ours, fast } = pairOf([0.001]);
  fast.observe(Number.NaN);
  fast.observe(Number.POSITIVE_INFINITY);
  t.match(await ours.metrics(), new RegExp(`^${NAME}_count 1$`, 'm'));
  fast.reset();
  t.match(await ours.metrics(), new RegExp(`^${NAME}_count 0$`, 'm'));
});
