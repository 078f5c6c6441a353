// Pool leases without a server: request() hands an idle connection over at once, a
// released one to the longest waiter from inside release(), and one timer expires the
// waiters that waited too long, in order, also after a reload shortened the timeout.
// Affinity: a released connection goes to (or is held for) a client holding its settings
// while the longest waiter has waited less than affinityMs, and never longer.

import t from 'tap';
import pino from 'pino';
import { Pool, PoolTimeoutError } from '../src/pool/pool.js';
import { poolLimits } from '../src/pool/registry.js';
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

function makePool(size: number, acquireTimeoutMs: number, affinityMs = 0) {
  let opened = 0;
  const pool = new Pool('db/role', {
    size,
    acquireTimeoutMs,
    idleTimeoutMs: 60_000,
    affinityMs,
    stickyPerUser: 1,
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
  pool.setLimits({ size: 1, acquireTimeoutMs: 100, idleTimeoutMs: 60_000, affinityMs: 0, stickyPerUser: 1 });
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

/** Affinity tests: a connection's settings are a tenant name; a client prefers its own. */
const tenantOf = new WeakMap<ServerConnection, string>();
const holds = (tenant: string) => (c: ServerConnection) => tenantOf.get(c) === tenant;

async function tenantPool(size: number, affinityMs: number, acquireTimeoutMs = 5_000) {
  const made = makePool(size, acquireTimeoutMs, affinityMs);
  const first = Array.from({ length: size }, () => made.ask());
  await tick();
  return { ...made, conns: first.map((l) => l.conn!) };
}

/** One connection holding tenant a's settings is released while a b waiter, then an a waiter, wait. */
async function releaseToTwoWaiters(t: { teardown(f: () => unknown): void }, affinityMs: number) {
  const made = await tenantPool(1, affinityMs);
  t.teardown(() => made.pool.close());
  const conn = made.conns[0]!;
  tenantOf.set(conn, 'a');
  const b = made.ask(holds('b'));
  const a = made.ask(holds('a'));
  made.pool.release(conn, true, null);
  return { ...made, conn, a, b };
}

t.test('affinity 0: strict FIFO, even when a later waiter holds the settings', async (t) => {
  const { conn, a, b } = await releaseToTwoWaiters(t, 0);
  t.equal(b.conn, conn, 'the longest waiter gets it');
  t.notOk(a.settled);
});

t.test('affinity: a waiter further back holding the settings goes first', async (t) => {
  const { pool, ask, conn, a, b } = await releaseToTwoWaiters(t, 200);
  t.equal(a.conn, conn, 'the tenant-a waiter, though second in line');
  t.notOk(b.settled, 'the longest waiter keeps waiting');
  pool.release(conn, true, null);
  t.notOk(b.settled, 'released again with nobody holding a in line: held for a returning tenant-a client');
  t.equal(ask(holds('a')).conn, conn, 'which gets it at once');
});

t.test('affinity: with no waiter holding them, the connection is held for its settings, at most affinityMs', async (t) => {
  const { pool, ask, conns } = await tenantPool(2, 150);
  t.teardown(() => pool.close());
  tenantOf.set(conns[0]!, 'a');
  tenantOf.set(conns[1]!, 'c');
  const askedB = Date.now();
  const b = ask(holds('b'));
  await tick(200); // a long wait in the queue does not use up b's affinityMs: being passed over does
  const passed = Date.now();
  pool.release(conns[0]!, true, null);
  t.notOk(b.settled, 'held, not switched to b');
  t.same(pool.stats, { total: 2, idle: 1, waiting: 1, active: 1 }, 'a held connection counts as idle');
  const other = ask(holds('d'));
  t.notOk(other.settled, 'another tenant does not get it either: it queues behind b');
  const back = ask(holds('a'));
  t.equal(back.conn, conns[0], 'the returning tenant-a client gets it at once, ahead of the queue');
  pool.release(conns[0]!, true, null);
  t.notOk(b.settled, 'held again');
  await tick(250);
  t.equal(b.conn, conns[0], 'b got it when its affinityMs ran out');
  const passedFor = askedB + b.at - passed;
  t.ok(passedFor >= 145 && passedFor < 400, `b was passed over for ${passedFor} ms`);
  t.notOk(other.settled, 'the next waiter is still waiting');
  pool.release(conns[1]!, true, null);
  t.equal(other.conn, conns[1], 'its clock started when it queued behind a held connection and has run out: FIFO for it');
});

t.test('affinity: one pass-over starts the clock of everyone waiting, so nobody is passed over much longer than affinityMs', async (t) => {
  const { pool, ask, conns } = await tenantPool(3, 100);
  t.teardown(() => pool.close());
  conns.forEach((c, i) => tenantOf.set(c, `t${i}`));
  const queue = ['x', 'y', 'z'].map((x) => ask(holds(x)));
  pool.release(conns[0]!, true, null); // passes over x, y and z at once
  t.ok(queue.every((w) => !w.settled), 'held for a returning t0 client');
  await tick(150);
  t.equal(queue[0]!.conn, conns[0], 'x: the held connection, when the clocks ran out');
  pool.release(conns[1]!, true, null);
  pool.release(conns[2]!, true, null);
  t.equal(queue[1]!.conn, conns[1], 'y: the next release at once, in FIFO order');
  t.equal(queue[2]!.conn, conns[2], 'z: likewise, not another affinityMs later');
});

t.test('affinity: a waiter passed over for affinityMs gets the next release, whatever it holds', async (t) => {
  const { pool, ask, conns } = await tenantPool(1, 50);
  t.teardown(() => pool.close());
  tenantOf.set(conns[0]!, 'a');
  const b = ask(holds('b'));
  const a1 = ask(holds('a'));
  const a2 = ask(holds('a'));
  pool.release(conns[0]!, true, null);
  t.equal(a1.conn, conns[0], 'first passed over: a tenant-a waiter goes first');
  await tick(80);
  pool.release(conns[0]!, true, null);
  t.equal(b.conn, conns[0], 'after affinityMs the longest waiter is no longer passed over');
  t.notOk(a2.settled);
});

t.test('affinity: held connections close with closeIdle, and the waiter gets a new one', async (t) => {
  const { pool, ask, conns } = await tenantPool(1, 300, 5_000);
  t.teardown(() => pool.close());
  tenantOf.set(conns[0]!, 'a');
  const b = ask(holds('b'));
  pool.release(conns[0]!, true, null);
  t.same(pool.stats, { total: 1, idle: 1, waiting: 1, active: 0 }, 'held');
  t.equal(pool.closeIdle(() => true), 1, 'closeIdle closes held connections too');
  t.ok(conns[0]!.isClosed);
  await tick();
  t.ok(b.conn && b.conn !== conns[0], 'and the waiter gets a new connection in the freed slot');
});

t.test('affinity: a waiter close to its acquire timeout is not passed over', async (t) => {
  const { pool, ask, conns } = await tenantPool(1, 500, 1_000);
  t.teardown(() => pool.close());
  tenantOf.set(conns[0]!, 'a');
  const b = ask(holds('b'));
  await tick(600); // 400 ms left: a hold of up to 500 ms could make it time out
  pool.release(conns[0]!, true, null);
  t.equal(b.conn, conns[0], 'served at once');
});

t.test('affinity: a waiter that reaches its timeout takes a held connection instead of failing', async (t) => {
  const { pool, ask, conns } = await tenantPool(1, 300, 5_000);
  t.teardown(() => pool.close());
  tenantOf.set(conns[0]!, 'a');
  const b = ask(holds('b'));
  pool.release(conns[0]!, true, null); // held while b's clock runs (b has 5 s)
  pool.setLimits({ size: 1, acquireTimeoutMs: 50, idleTimeoutMs: 60_000, affinityMs: 300, stickyPerUser: 1 });
  const d = ask(holds('d')); // 50 ms to live, behind b
  await tick(120);
  t.equal(d.conn, conns[0], 'd got the held connection when it was due to time out');
  t.notOk(d.err);
  t.notOk(b.settled, 'b keeps waiting');
});

t.test('affinity: a reload that turns it off hands held connections to the waiters at once', async (t) => {
  const { pool, ask, conns } = await tenantPool(1, 2_000);
  t.teardown(() => pool.close());
  tenantOf.set(conns[0]!, 'a');
  const b = ask(holds('b'));
  pool.release(conns[0]!, true, null);
  t.notOk(b.settled, 'held (for up to 2 s)');
  pool.setLimits({ size: 1, acquireTimeoutMs: 5_000, idleTimeoutMs: 60_000, affinityMs: 0, stickyPerUser: 1 });
  t.equal(b.conn, conns[0], 'served inside setLimits');
});

t.test('affinity: a connection holding no settings goes to the longest waiter at once', async (t) => {
  const { pool, ask, conns } = await tenantPool(1, 10_000);
  t.teardown(() => pool.close());
  (conns[0] as unknown as { appliedKey: string }).appliedKey = ''; // fresh, or DISCARDed after a sticky client
  const b = ask(holds('b'));
  pool.release(conns[0]!, true, null);
  t.equal(b.conn, conns[0], 'no hold: anyone would pay the same switch');
});

t.test('config to pool limits: affinity_ms applies in transaction mode only', async (t) => {
  const pool = { size: 5, acquire_timeout_ms: 1000, server_idle_timeout_ms: 60_000, idle_transaction_timeout_ms: 0, affinity_ms: 5, max_sticky_per_user: 0, sticky_idle_timeout_ms: 0 };
  t.same(poolLimits({ ...pool, mode: 'transaction' }), { size: 5, acquireTimeoutMs: 1000, idleTimeoutMs: 60_000, affinityMs: 5, stickyPerUser: 2 });
  t.equal(poolLimits({ ...pool, mode: 'session' }).affinityMs, 0, 'session mode: a connection comes back DISCARDed');
});
