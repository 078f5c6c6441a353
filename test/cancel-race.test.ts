// A cancel that reaches PostgreSQL late must not cancel the client's next statement.
// PostgreSQL signals the backend while it handles the CancelRequest (twice: the process,
// then its process group); if that lands after the cancelled statement ended on its own,
// whatever runs then is cancelled instead. The forwarder here holds the proxy's cancel
// connection for CANCEL_DELAY ms before PostgreSQL sees it. pgbastion must (1) keep the
// client's cancel connection open until PostgreSQL has handled the cancel, as PostgreSQL
// itself does (libpq's PQcancel waits for that), and (2) hold the client's next statement
// until then.

import t from 'tap';
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
