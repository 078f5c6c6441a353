// Pool leases without a server: request() hands an idle connection over at once, a
// released one to the longest waiter from inside release(), and one timer expires the
// waiters that waited too long, in order, also after a reload shortened the timeout.

import t from 'tap';
import pino from 'pino';
import { Pool, PoolTimeoutError } from '../src/pool/pool.js';
import type { ServerConnection } from '../src/upstream/server-connection.js';

/** What the pool touches of a server connection. */
function fakeConnection(id: number): ServerConnection {
  const conn = {
    id,
    isClosed: false,
    cancelling: null,
    idleSince: 0,
    loginParams: new Map<string, string>(),
    detach() {},
    close() {
      conn.isClosed = true;
    },
    whenClosedIdle() {},
  };
  return conn as unknown as ServerConnection;
}

function makePool(size: number, acquireTimeoutMs: number) {
  let opened = 0;
  const pool = new Pool('db/role', {
    size,
    acquireTimeoutMs,
    idleTimeoutMs: 60_000,
    connect: async () => fakeConnection(++opened),
    keep: () => true,
    logger: pino({ level: 'silent' }),
  });
  /** request() with its outcome as a record that fills in when `done` runs. */
  const ask = (prefer: ((c: ServerConnection) => boolean) | null = null) => {
    const got: { conn: ServerConnection | null; err: Error | null; at: number; settled: boolean } = { conn: null, err: null, at: 0, settled: false };
    const asked = Date.now();
    pool.request(null, prefer, (err, conn) => Object.assign(got, { err, conn, at: Date.now() - asked, settled: true }));
    return got;
  };
  return { pool, ask };
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

t.test('an idle connection is handed over inside request(), a released one inside release()', async (t) => {
  const { pool, ask } = makePool(1, 5_000);
  t.teardown(() => pool.close());
  const first = ask();
  t.notOk(first.settled, 'a new connection takes its login: not synchronous');
  await tick();
  t.ok(first.conn, 'opened');
  const second = ask();
  const third = ask();
  t.notOk(second.settled, 'pool full: waits');
  pool.release(first.conn!, true, null);
  t.equal(second.conn, first.conn, 'the longest waiter had it before release() returned');
  t.notOk(third.settled, 'the next waiter still waits');
  pool.release(second.conn!, true, null);
  t.equal(third.conn, first.conn, 'then the next, in order');
  pool.release(third.conn!, true, null);
  t.same(pool.stats, { total: 1, idle: 1, waiting: 0, active: 0 });
  const fourth = ask();
  t.equal(fourth.conn, first.conn, 'idle: handed over synchronously');
});

t.test('an idle connection the client prefers comes first', async (t) => {
  const { pool, ask } = makePool(3, 5_000);
  t.teardown(() => pool.close());
  const leased = [ask(), ask(), ask()];
  await tick();
  for (const l of leased) pool.release(l.conn!, true, null);
  const wanted = leased[0]!.conn!;
  t.equal(ask((c) => c === wanted).conn, wanted, 'the preferred one, though not the warmest');
  t.equal(ask().conn, leased[2]!.conn, 'else the most recently used');
});

t.test('waiters time out in order after acquire_timeout_ms, with PoolTimeoutError', async (t) => {
  const { pool, ask } = makePool(1, 150);
  t.teardown(() => pool.close());
  const holder = ask();
  await tick();
  const a = ask();
  await tick(50);
  const b = ask();
  await tick(120);
  t.ok(a.settled && a.err instanceof PoolTimeoutError, 'the first waiter timed out');
  t.ok(a.at >= 145 && a.at < 400, `after ${a.at} ms`);
  t.notOk(b.settled, 'the second, which came 50 ms later, still waits');
  await tick(100);
  t.ok(b.err instanceof PoolTimeoutError, 'then it times out too');
  t.match(b.err?.message, /no server connection available within 150 ms \(pool db\/role, size 1\)/);
  pool.release(holder.conn!, true, null);
  t.same(pool.stats, { total: 1, idle: 1, waiting: 0, active: 0 }, 'nobody left waiting: the connection goes idle');
});

t.test('a timeout shortened by a reload applies to later waiters, even ahead of earlier ones', async (t) => {
  const { pool, ask } = makePool(1, 2_000);
  t.teardown(() => pool.close());
  const holder = ask();
  await tick();
  const early = ask();
  pool.setLimits(1, 100, 60_000);
  const late = ask();
  await tick(250);
  t.ok(late.err instanceof PoolTimeoutError, `the later waiter timed out after ${late.at} ms`);
  t.notOk(early.settled, 'the earlier one keeps its 2 s deadline');
  pool.release(holder.conn!, true, null);
  t.equal(early.conn, holder.conn, 'and gets the connection');
});

t.test('closing the pool tells every waiter', async (t) => {
  const { pool, ask } = makePool(1, 5_000);
  ask();
  await tick();
  const waiting = [ask(), ask()];
  pool.close();
  t.same(
    waiting.map((w) => w.err?.message),
    ['pool is closing', 'pool is closing'],
  );
  const after = ask();
  t.equal(after.err?.message, 'pool is closed', 'and refuses new requests at once');
});
