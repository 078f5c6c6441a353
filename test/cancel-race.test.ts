// A cancel that reaches PostgreSQL late must not cancel the client's next statement.
// PostgreSQL signals the backend while it handles the CancelRequest (twice: the process,
// then its process group); if that lands after the cancelled statement ended on its own,
// whatever runs then is cancelled instead. The forwarder here holds the proxy's cancel
// connection for CANCEL_DELAY ms before PostgreSQL sees it. pgbastion must (1) keep the
// client's cancel connection open until PostgreSQL has handled the cancel, as PostgreSQL
// itself does (libpq's PQcancel waits for that), and (2) hold the client's next statement
// until then.

import t, { type Test } from 'tap';
import pg from 'pg';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, startProxy } from './helpers/proxy.js';
import { slowCancelForwarder } from './helpers/balancer.js';
import { cancelClient } from './helpers/cancel.js';

const CANCEL_DELAY = 600;

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
const forwarder = await slowCancelForwarder(t, pgs.port, CANCEL_DELAY);

for (const mode of ['session', 'transaction'] as const) {
  t.test(`${mode} mode: a late cancel cancels nothing that came after it`, async (t) => {
    const proxy = await startProxy(t, pgs, {
      users: [{ name: 'app', password: 'app-pw' }],
      extra: { upstreams: [{ host: '127.0.0.1', port: forwarder }], pool: { mode, size: 1 } },
    });
    const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'app', password: 'app-pw', database: 'postgres' });
    await c.connect();
    t.teardown(() => c.end());

    const first = c.query('SELECT pg_sleep(0.2)');
    await new Promise((r) => setTimeout(r, 50));
    const cancelSent = performance.now();
    let cancelReturnedAfter = -1;
    const cancelled = cancelClient(proxy.port, c).then(() => (cancelReturnedAfter = performance.now() - cancelSent));
    await first; // ends on its own: the cancel is still held by the forwarder
    t.equal(cancelReturnedAfter, -1, 'the cancel connection is still open while PostgreSQL has not handled it');

    // Without the hold, this starts while the cancel is in flight and is the one cancelled.
    const second = await c.query('SELECT pg_sleep(0.5), 42 AS answer').then(
      (r) => r.rows[0].answer as number,
      (err: Error & { code?: string }) => err.code ?? err.message,
    );
    t.equal(second, 42, `the next statement ran to its end (${String(second)})`);
    await cancelled;
    t.ok(cancelReturnedAfter >= CANCEL_DELAY - 50, `the client's cancel returned once delivered (${cancelReturnedAfter.toFixed(0)} ms)`);

    const third = await c.query('SELECT 1 AS one');
    t.equal(third.rows[0].one, 1, 'and the session carries on');
  });
}

/** A transaction-mode proxy over `upstreamPort` with a pool of one, and clients a and b logged in to it. */
async function twoClientsOnOneConnection(t: Test, upstreamPort: number) {
  const proxy = await startProxy(t, pgs, {
    users: [
      { name: 'a', password: 'a-pw' },
      { name: 'b', password: 'b-pw' },
    ],
    extra: { upstreams: [{ host: '127.0.0.1', port: upstreamPort }], pool: { mode: 'transaction', size: 1 } },
  });
  const open = async (user: string) => {
    const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user, password: `${user}-pw`, database: 'postgres' });
    await c.connect();
    t.teardown(() => c.end());
    return c;
  };
  return { proxy, a: await open('a'), b: await open('b') };
}

t.test('transaction mode: of two cancels in flight, the one that lands last cancels nothing of the next client', async (t) => {
  // A reviewer's finding: a connection went to the next client once the latest cancel was
  // delivered, while an earlier one, slower, was still on its way: it cancelled the next
  // client's statement (one tenant cancelling another's). Here the first is held 1 s.
  const uneven = await slowCancelForwarder(t, pgs.port, (n) => (n === 0 ? 1000 : 0));
  const { proxy, a, b } = await twoClientsOnOneConnection(t, uneven);
  const aWork = a.query('SELECT pg_sleep(5)').then(
    () => 'ran',
    (e: Error & { code?: string }) => e.code,
  );
  await new Promise((r) => setTimeout(r, 100));
  void cancelClient(proxy.port, a); // held by the forwarder
  await new Promise((r) => setTimeout(r, 50));
  void cancelClient(proxy.port, a); // passes at once
  t.equal(await aWork, '57014', "a's statement is cancelled");
  const started = performance.now();
  const bWork = await b.query('SELECT pg_sleep(1.5), 42 AS answer').then(
    (r) => r.rows[0].answer as number,
    (e: Error & { code?: string }) => e.code ?? e.message,
  );
  t.equal(bWork, 42, `b's statement ran to its end (${String(bWork)}, after ${(performance.now() - started).toFixed(0)} ms)`);
});

t.test('transaction mode: a cancel PostgreSQL has not taken within 2 s gets the connection closed, not handed on', async (t) => {
  // It may still land, on whatever that backend runs next: the next client gets another one.
  const late = await slowCancelForwarder(t, pgs.port, 3000);
  const { proxy, a, b } = await twoClientsOnOneConnection(t, late);
  const aWork = a.query<{ pid: number }>('SELECT pg_backend_pid() AS pid, pg_sleep(0.3)');
  await new Promise((r) => setTimeout(r, 100));
  void cancelClient(proxy.port, a).catch(() => undefined); // held 3 s: past the 2 s wait
  const aPid = (await aWork).rows[0]!.pid; // ends on its own before the cancel lands
  const bWork = await b.query<{ pid: number; answer: number }>('SELECT pg_backend_pid() AS pid, pg_sleep(1.5), 42 AS answer').then(
    (r) => r.rows[0]!,
    (e: Error & { code?: string }) => ({ pid: 0, answer: e.code ?? e.message }),
  );
  t.equal(bWork.answer, 42, "b's statement ran to its end");
  t.not(bWork.pid, aPid, 'on another server connection: the one the late cancel was aimed at was closed');
});
