// secureRandomBytes hands out CSPRNG bytes from a pool: every value must be fresh, of the
// asked length, the caller's own, and the pool must refill across its boundary.

import t from 'tap';
import { secureRandomBytes } from '../src/auth/random-pool.js';

t.test('lengths, including across refills and past the pooled size', async (t) => {
  for (const n of [0, 1, 8, 18, 64, 65, 1000]) t.equal(secureRandomBytes(n).length, n, `length ${n}`);
  // 4096-byte pool: 700 draws of 18 bytes cross it three times.
  for (let i = 0; i < 700; i++) t.equal(secureRandomBytes(18).length, 18);
});

t.test('no value repeats and none is zeroed, over many refills', async (t) => {
  const seen = new Set<string>();
  let zero = 0;
  for (let i = 0; i < 20_000; i++) {
    const b = secureRandomBytes(8);
    if (b.every((x) => x === 0)) zero++;
    seen.add(b.toString('hex'));
  }
  t.equal(zero, 0, 'no all-zero value (the pool slice is copied before it is cleared)');
  t.equal(seen.size, 20_000, 'every 8-byte value distinct');
});

t.test('every byte value shows up, in roughly equal numbers', async (t) => {
  const counts = new Array<number>(256).fill(0);
  const draws = 16_000;
  for (let i = 0; i < draws; i++) for (const x of secureRandomBytes(16)) counts[x]!++;
  const expected = (draws * 16) / 256; // 1000
  // Chi-square with 255 degrees of freedom: a fair source stays far below 400.
  const chi2 = counts.reduce((sum, c) => sum + (c - expected) ** 2 / expected, 0);
  t.ok(chi2 < 400, `chi-square ${chi2.toFixed(1)} < 400`);
});

t.test('returned buffers are independent of the pool and of each other', async (t) => {
  const a = secureRandomBytes(32);
  const copy = Buffer.from(a);
  const b = secureRandomBytes(32);
  b.fill(0xff);
  t.same(a, copy, 'writing to a later value leaves an earlier one alone');
  t.equal(a.buffer.byteLength, a.length, 'backed by memory of its own, not a shared slab');
  for (let i = 0; i < 300; i++) secureRandomBytes(32); // refill the pool under it
  t.same(a, copy, 'a refill leaves handed-out values alone');
});
