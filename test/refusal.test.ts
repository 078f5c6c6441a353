// Refusals (src/session/refusal.ts): the server's error for a stand-in is swapped for the
// refusal's own, once; the pending ones are bounded.

import t from 'tap';
import * as be from '../src/protocol/backend.js';
import { MAX_PENDING, Refusals } from '../src/session/refusal.js';

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
