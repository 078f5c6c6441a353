// pool.idle_transaction_timeout_ms: a client holding the pool's connection while the server
// waits on it (inside a transaction, a batch without its Sync, a message half sent) is
// disconnected with FATAL 25P03 after that long, so it cannot hold the pool from everyone
// else; PostgreSQL's own idle_in_transaction_session_timeout cannot see the last two kinds.
// Pool of ONE server connection, two tenants.

import t from 'tap';
import { serialize } from 'pg-protocol';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, startProxy } from './helpers/proxy.js';
import { rawOf } from './helpers/raw-client.js';
import { TENANTS, pinNow, tenantClient } from './helpers/tenant-lab.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
const proxy = await startProxy(t, pgs, {
  users: TENANTS,
  extra: { pool: { mode: 'transaction', size: 1, acquire_timeout_ms: 5000, idle_transaction_timeout_ms: 300 } },
});

const held: [string, Buffer[]][] = [
  ['inside a transaction', [serialize.query('BEGIN')]],
  ['with a Parse and no Sync', [serialize.parse({ text: 'SELECT 1' }), serialize.flush()]],
  ['with a message half sent', [serialize.query('SELECT 1'), serialize.copyData(Buffer.from('x')).subarray(0, 5)]],
];

for (const [what, writes] of held) {
  t.test(`a client idle ${what} is disconnected with 25P03; the waiting client goes on`, async (t) => {
    const a = await tenantClient(t, proxy.port, 'a');
    const b = await tenantClient(t, proxy.port, 'b');
    const held = (await pinNow(a)).pid;
    const r = rawOf(a);
    for (const w of writes) r.raw.stream.write(w);
    await sleep(50);
    const got = await pinNow(b);
    t.equal(got.pin, 'b', 'b gets the connection');
    t.ok(got.ms < 2000, `after the timeout, not acquire_timeout_ms (${got.ms} ms)`);
    t.not(got.pid, held, "a new one: a's was closed, not handed on");
    t.ok(r.seen.includes('E25P03'), `a heard FATAL 25P03 (${r.seen.join(' ')})`);
  });
}

t.test('a long statement, and a client idle outside any transaction, are not cut', async (t) => {
  const a = await tenantClient(t, proxy.port, 'a');
  await a.query('BEGIN');
  t.same((await a.query('SELECT 1 AS slept FROM pg_sleep(0.6)')).rows, [{ slept: 1 }], 'a statement longer than the timeout runs');
  await sleep(100);
  await a.query('COMMIT');
  await sleep(600);
  t.same((await a.query('SELECT 1 AS one')).rows, [{ one: 1 }], 'idle between transactions holds nothing: still connected');
});
