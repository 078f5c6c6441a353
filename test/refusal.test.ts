// Refusals (src/session/refusal.ts): the server's error for a stand-in is swapped for the
// refusal's own, once; the pending ones are bounded.

import t from 'tap';
import * as be from '../src/protocol/backend.js';
import { MAX_PENDING, MAX_PENDING_BYTES, Refusals } from '../src/session/refusal.js';

/** The server's syntax error for the stand-in `frame` (a Query), naming its token as PostgreSQL does. */
function serverErrorFor(frame: Buffer): Buffer {
  const text = frame.toString('utf8', 5, frame.length - 1);
  return be.errorResponse({ severity: 'ERROR', code: '42601', message: `syntax error at or near "${text}"` });
}

t.test('the stand-in error is rewritten once, other errors are left alone', async (t) => {
  const r = new Refusals();
  const frame = r.query({ message: 'permission denied to set parameter "app.tenant_id"' });
  t.equal(r.size, 1);
  t.equal(r.rewrite(be.errorResponse({ severity: 'ERROR', code: '22012', message: 'division by zero' })), null);
  const ours = r.rewrite(serverErrorFor(frame));
  t.ok(ours && ours.includes(Buffer.from('42501')), 'our SQLSTATE');
  t.equal(r.size, 0);
  t.equal(r.rewrite(serverErrorFor(frame)), null, 'only once');
});

t.test(`at most ${MAX_PENDING} pending: the oldest goes first`, async (t) => {
  const r = new Refusals();
  const first = r.query({ message: 'first' });
  for (let i = 0; i < MAX_PENDING - 1; i++) r.query({ message: `n${i}` });
  const last = r.query({ message: 'last' });
  t.equal(r.size, MAX_PENDING);
  t.equal(r.rewrite(serverErrorFor(first)), null, 'the oldest was forgotten');
  t.not(r.rewrite(serverErrorFor(last)), null, 'the newest is kept');
});

t.test('bounded in bytes too: errors quoting long names push the oldest out, the newest stays', async (t) => {
  const r = new Refusals();
  const long = 'n'.repeat(1024 * 1024);
  const tokens = Array.from({ length: 8 }, () => r.missingStatement(long));
  t.ok(r.size * long.length <= MAX_PENDING_BYTES, `${r.size} kept`);
  t.ok(r.size < 8);
  const frame = (token: string) => be.errorResponse({ severity: 'ERROR', code: '26000', message: `prepared statement "${token}" does not exist` });
  t.equal(r.rewrite(frame(tokens[0]!)), null, 'the oldest was forgotten');
  t.not(r.rewrite(frame(tokens[7]!)), null, 'the newest is kept');
  const huge = new Refusals();
  const only = huge.missingStatement('h'.repeat(MAX_PENDING_BYTES * 2));
  t.equal(huge.size, 1, 'a single one over the bound is still kept');
  t.not(huge.rewrite(frame(only)), null);
});
