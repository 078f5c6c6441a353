// FastCounter must be indistinguishable from prom-client's Counter to a scraper, to the JSON
// the workers send their primary, and to the primary's AggregatorRegistry.

import t from 'tap';
import client from 'prom-client';
import { FastCounter } from '../src/metrics/fast-counter.js';

const NAME = 'pgbastion_test_total';
const HELP = "A test counter (with a quote ' and a backslash \\).";
const FORMS = ['inline', 'separate'] as const;

/** prom-client's counter and ours, both incremented by `incs` ([label value, amount]). */
function pairOf(incs: readonly (readonly [(typeof FORMS)[number], number])[]) {
  const theirs = new client.Registry();
  const ours = new client.Registry();
  const reference = new client.Counter({ name: NAME, help: HELP, labelNames: ['form'], registers: [theirs] });
  const fast = new FastCounter(NAME, HELP, ours, { name: 'form', values: FORMS });
  // prom-client shows a label value once incremented: by 0 for both, as pgbastion once did.
  for (const form of FORMS) reference.inc({ form }, 0);
  const children = { inline: fast.child('inline'), separate: fast.child('separate') };
  for (const [form, by] of incs) {
    reference.inc({ form }, by);
    children[form].inc(by);
  }
  return { theirs, ours, fast };
}

const INCS = [['inline', 1], ['inline', 1], ['separate', 1], ['inline', 5], ['separate', 0.5]] as const;

t.test('the same text and JSON as prom-client for the same increments', async (t) => {
  for (const incs of [[], [['separate', 1]] as const, INCS]) {
    const { theirs, ours } = pairOf(incs);
    t.equal(await ours.metrics(), await theirs.metrics(), `text, ${incs.length} increments`);
    t.same(await ours.getMetricsAsJSON(), await theirs.getMetricsAsJSON(), `JSON, ${incs.length} increments`);
  }
});

t.test('a label-less counter reads as prom-client’s', async (t) => {
  const theirs = new client.Registry();
  const ours = new client.Registry();
  const reference = new client.Counter({ name: NAME, help: HELP, registers: [theirs] });
  const fast = new FastCounter(NAME, HELP, ours);
  t.equal(await ours.metrics(), await theirs.metrics(), 'before any increment');
  for (let i = 0; i < 3; i++) {
    reference.inc();
    fast.inc();
  }
  t.equal(await ours.metrics(), await theirs.metrics(), 'after three');
  t.equal(fast.value(), 3);
});

t.test('workers merge it as they merge prom-client counters', async (t) => {
  const a = pairOf(INCS.slice(0, 2));
  const b = pairOf(INCS.slice(2));
  const merged = async (x: client.Registry, y: client.Registry) => client.AggregatorRegistry.aggregate([await x.getMetricsAsJSON(), await y.getMetricsAsJSON()]).metrics();
  const text = await merged(a.ours, b.ours);
  t.equal(text, await merged(a.theirs, b.theirs));
  t.match(text, new RegExp(`^${NAME}\\{form="inline"\\} 7$`, 'm'));
  t.match(text, new RegExp(`^${NAME}\\{form="separate"\\} 1.5$`, 'm'));
});

t.test('values, reset, and a label value it was not given', async (t) => {
  const { ours, fast } = pairOf(INCS);
  t.equal(fast.value('inline'), 7);
  t.equal(fast.value('separate'), 1.5);
  fast.reset();
  t.match(await ours.metrics(), new RegExp(`^${NAME}\\{form="inline"\\} 0$`, 'm'));
  t.throws(() => fast.child('other' as 'inline'), /no label value "other"/);
});
