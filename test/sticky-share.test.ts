// pool.max_sticky_per_user: a sticky session keeps a server connection until its client
// leaves, so without a bound one user's idle sessions (each with a temporary table) took the
// whole pool and every other client waited out acquire_timeout_ms. Each user now has a
// share of the pool for sticky sessions (half of pool.size by default); pool.sticky_idle_timeout_ms
// disconnects sticky clients that stay silent.

import t from 'tap';
import pg from 'pg';
import { stickyPerUser } from '../src/pool/registry.js';
import { startPostgres } from './helpers/postgres.js';
import { serialize } from 'pg-protocol';
import { createServerRole, startProxy, type RunningProxy } from './helpers/proxy.js';
import { rawOf } from './helpers/raw-client.js';

t.test('the share: pool.max_sticky_per_user, or half the pool (at least one)', async (t) => {
  const cases: [size: number, configured: number, share: number][] = [
    [20, 0, 10],
    [4, 0, 2],
    [3, 0, 1],
    [1, 0, 1],
    [20, 5, 5],
    [4, 100, 100],
  ];
  for (const [size, configured, share] of cases) {
    t.equal(stickyPerUser({ size, max_sticky_per_user: configured }), share, `size ${size}, max_sticky_per_user ${configured}`);
  }
});

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
const USERS = [
  { name: 'tenant_a', password: 'pw-a', pins: { 'app.tenant_id': 'a' } },
  { name: 'tenant_b', password: 'pw-b', pins: { 'app.tenant_id': 'b' } },
];
/** Pool of 4: each user may keep 2 sticky sessions. */
const proxy = await startProxy(t, pgs, { users: USERS, extra: { pool: { mode: 'transaction', size: 4, acquire_timeout_ms: 1000 } } });

async function client(t: Tap.Test, proxy: RunningProxy, who: 'a' | 'b'): Promise<pg.Client & { errors: { code?: string; message: string }[] }> {
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: `tenant_${who}`, password: `pw-${who}`, database: 'postgres' });
  const errors: { code?: string; message: string }[] = [];
  c.on('error', (e: { code?: string; message: string }) => errors.push(e));
  await c.connect();
  t.teardown(() => c.end().catch(() => undefined));
  return Object.assign(c, { errors });
}

const failure = (p: Promise<unknown>) => p.then(() => 'ok', (e: { code?: string; message: string }) => `${e.code} ${e.message}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test("one user's temporary tables take no more than its share: other users are still served", async (t) => {
  const a = await Promise.all([1, 2, 3, 4].map(() => client(t, proxy, 'a')));
  const made = [];
  for (const c of a) made.push(await failure(c.query('CREATE TEMP TABLE mine (x int)')));
  t.same(made, ['ok', 'ok', '53300 too many sticky sessions for user "tenant_a"', '53300 too many sticky sessions for user "tenant_a"']);
  t.same((await a[2]!.query('SELECT 1 AS one')).rows, [{ one: 1 }], 'the refused session goes on, unsticky');
  const b = await client(t, proxy, 'b');
  const started = Date.now();
  t.same((await b.query("SELECT current_setting('app.tenant_id') AS pin")).rows, [{ pin: 'b' }], 'b is served');
  t.ok(Date.now() - started < 500, 'at once, not after acquire_timeout_ms');
  // b has a share of its own.
  t.equal(await failure(b.query('CREATE TEMP TABLE mine (x int)')), 'ok');

  await a[0]!.end(); // its connection is reset and goes back: a's share has room again
  await sleep(100);
  t.equal(await failure(a[2]!.query('CREATE TEMP TABLE mine (x int)')), 'ok', 'room again once a sticky session of a ended');
  t.same((await a[2]!.query('SELECT count(*)::int AS n FROM mine')).rows, [{ n: 0 }], 'and it keeps its table');
});

t.test('a Parse that would make the session sticky past the share is refused; the session goes on', async (t) => {
  const a = await Promise.all([1, 2, 3].map(() => client(t, proxy, 'a')));
  for (const c of a.slice(0, 2)) await c.query('LISTEN news');
  const refused = await failure(a[2]!.query({ name: 'mk', text: 'CREATE TEMP TABLE mine (x int)' }));
  t.equal(refused, '53300 too many sticky sessions for user "tenant_a"');
  t.same((await a[2]!.query({ name: 'one', text: 'SELECT 1 AS one' })).rows, [{ one: 1 }]);

  // Sticky from its startup parameters: refused at login.
  const late = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'tenant_a', password: 'pw-a', database: 'postgres', options: '-c search_path=pg_temp' });
  late.on('error', () => undefined);
  t.equal(await failure(late.connect()), '53300 too many sticky sessions for user "tenant_a"', 'a login that would be sticky from the start');
  await late.end().catch(() => undefined);
  const b = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'tenant_b', password: 'pw-b', database: 'postgres', options: '-c search_path=pg_temp' });
  await b.connect();
  t.same((await b.query('SHOW search_path')).rows, [{ search_path: 'pg_temp' }], "another user's is not");
  await b.end();
});

t.test('sticky by the answer (a SET inside a transaction block) past the share: the session ends once the transaction is done', async (t) => {
  const a = await Promise.all([1, 2, 3].map(() => client(t, proxy, 'a')));
  for (const c of a.slice(0, 2)) await c.query('CREATE TEMP TABLE mine (x int)');
  const r = rawOf(a[2]!);
  // Sent together: the SET is read before the BEGIN is answered, so only its answer shows
  // it ran in a block (sent after the BEGIN's answer, it is refused: below).
  t.same(await r.send(2, serialize.query('BEGIN'), serialize.query("SET application_name = 'held'")), ['done:BEGIN', 'Z', 'done:SET', 'Z']);
  t.same(await r.send(1, serialize.query("SELECT current_setting('application_name') AS name")), ['columns:name', 'held', 'done:SELECT 1', 'Z'], 'the transaction goes on');
  t.same(await r.sendAndSettle(1, [serialize.query('COMMIT')]), ['done:COMMIT', 'Z', 'E53300'], 'then the session ends with FATAL 53300');
  const b = await client(t, proxy, 'b');
  t.same((await b.query("SELECT current_setting('application_name') AS name")).rows, [{ name: '' }], 'its connection was reset for the next client');
});

t.test('session mode: every client keeps its connection anyway, no share applies', async (t) => {
  const session = await startProxy(t, pgs, { users: USERS, extra: { pool: { mode: 'session', size: 4 } } });
  const a = await Promise.all([1, 2, 3].map(() => client(t, session, 'a')));
  for (const c of a) {
    await c.query('BEGIN');
    await c.query("SET application_name = 'mine'");
    await c.query('COMMIT');
    t.equal(await failure(c.query('CREATE TEMP TABLE mine (x int)')), 'ok');
  }
  await sleep(100);
  t.same(a.map((c) => c.errors.length), [0, 0, 0]);
});

t.test('pool.sticky_idle_timeout_ms: a sticky client that sends nothing between transactions is disconnected (57P05)', async (t) => {
  const timed = await startProxy(t, pgs, { users: USERS, extra: { pool: { mode: 'transaction', size: 4, sticky_idle_timeout_ms: 300 } } });
  const [idle, talking, plain] = await Promise.all([client(t, timed, 'a'), client(t, timed, 'a'), client(t, timed, 'b')]);
  await idle.query('CREATE TEMP TABLE mine (x int)');
  await talking.query('LISTEN news');
  for (let i = 0; i < 6; i++) {
    await sleep(100);
    await talking.query('SELECT 1');
  }
  t.same((await talking.query('SELECT 1 AS slept FROM pg_sleep(0.5)')).rows, [{ slept: 1 }], 'a statement longer than the timeout is not cut');
  t.match(idle.errors, [{ code: '57P05', message: 'terminating connection due to idle-session timeout' }], 'the idle sticky client was disconnected');
  t.same(talking.errors, [], 'one that keeps talking is not');
  t.same((await plain.query('SELECT 1 AS one')).rows, [{ one: 1 }], 'a client that is not sticky holds nothing while idle: not disconnected');
  const again = await client(t, timed, 'a');
  await again.query('CREATE TEMP TABLE mine (x int)');
  t.pass("the disconnected client's share was given back");
});

t.test('past the share: tracked SETs are still remembered (also as named statements), unless inside a transaction block', async (t) => {
  const a = await Promise.all([1, 2, 3].map(() => client(t, proxy, 'a')));
  for (const c of a.slice(0, 2)) await c.query('CREATE TEMP TABLE mine (x int)');
  const c = a[2]!;
  await c.query("SET application_name = 'plain'");
  await c.query({ name: 'set_name', text: "SET application_name = 'named'" }); // (pgx prepares every statement)
  const b = await client(t, proxy, 'b');
  await b.query('BEGIN'); // b holds a connection: c's next statements may land on another
  t.same((await c.query("SELECT current_setting('application_name') AS name")).rows, [{ name: 'named' }], 'remembered, not sticky');
  await b.query('COMMIT');
  await c.query('BEGIN');
  t.equal(await failure(c.query("SET application_name = 'in block'")), '53300 too many sticky sessions for user "tenant_a"', 'inside a block it would stick: refused');
  t.equal(await failure(c.query('SELECT 1')), '25P02 current transaction is aborted, commands ignored until end of transaction block', 'the block is aborted, as by a failed statement');
  await c.query('ROLLBACK');
  t.same((await c.query("SELECT current_setting('application_name') AS name")).rows, [{ name: 'named' }]);
  // The named SET prepared above, run inside a block: refused at its Bind, as the Query was.
  await c.query('BEGIN');
  t.equal(await failure(c.query({ name: 'set_name', text: "SET application_name = 'named'" })), '53300 too many sticky sessions for user "tenant_a"', 'a prepared SET run in a block: refused');
  await c.query('ROLLBACK');
  t.same((await c.query({ name: 'set_name', text: "SET application_name = 'named'" })).command, 'SET', 'and run outside one');
  t.same(c.errors, []);
});

t.test('sticky past the share by an answer, then never between transactions: ended after acquire_timeout_ms', async (t) => {
  const a = await Promise.all([1, 2, 3].map(() => client(t, proxy, 'a')));
  for (const c of a.slice(0, 2)) await c.query('CREATE TEMP TABLE mine (x int)');
  const c = a[2]!;
  const r = rawOf(c);
  // The SET is read before the BEGIN is answered: only its answer shows it ran in a block.
  t.same(await r.send(2, serialize.query('BEGIN'), serialize.query("SET application_name = 'held'")), ['done:BEGIN', 'Z', 'done:SET', 'Z']);
  const started = Date.now();
  const fatal: { code?: string; message?: string }[] = [];
  r.raw.on('errorMessage', (m: { code: string; message: string }) => fatal.push(m));
  while (fatal.length === 0 && Date.now() - started < 3000) {
    r.raw.stream.write(serialize.query('COMMIT; BEGIN'));
    await sleep(100);
  }
  t.match(fatal, [{ code: '53300', message: 'too many sticky sessions for user "tenant_a"' }], 'ended with FATAL 53300');
  t.ok(Date.now() - started < 2000, `after about acquire_timeout_ms (${Date.now() - started} ms)`);
});

t.test("SET TIME ZONE and Django's set_config('TimeZone', …, false) are remembered like a SET: not sticky, not refused", async (t) => {
  // One server connection: a sticky client would hold it from the other.
  const one = await startProxy(t, pgs, { users: USERS, extra: { pool: { mode: 'transaction', size: 1, acquire_timeout_ms: 1000 } } });
  const [a, b] = await Promise.all([client(t, one, 'a'), client(t, one, 'b')]);
  const zone = async (c: pg.Client) => (await c.query("SELECT current_setting('TimeZone') AS tz")).rows[0].tz as string;
  const defaultZone = await zone(b);
  for (const [how, sql, want] of [
    ['set_config', "SELECT set_config('TimeZone', 'Asia/Tokyo', false)", 'Asia/Tokyo'],
    ['SET TIME ZONE', "SET TIME ZONE 'America/Lima'", 'America/Lima'],
  ]) {
    await a.query(sql!);
    t.equal(await zone(b), defaultZone, `${how}: b, on the same connection, keeps its own`);
    t.equal(await zone(a), want, `${how}: a keeps its own`);
  }
  t.same([a.errors, b.errors], [[], []]);
});

t.test('past the share, work read before the session is ended still gets its replies (a SET bound but not run before a Sync)', async (t) => {
  // (A reviewer's finding: the FATAL went out at once, and the queued Parse and Bind were
  // dropped unanswered.)
  const a = await Promise.all([1, 2, 3].map(() => client(t, proxy, 'a')));
  for (const c of a.slice(0, 2)) await c.query('CREATE TEMP TABLE mine (x int)');
  const r = rawOf(a[2]!);
  const replies = await r.sendAndSettle(1, [
    serialize.parse({ name: 's1', text: "SET application_name = 'p2'", types: [] }),
    serialize.bind({ portal: 'p', statement: 's1' }),
    serialize.sync(),
  ]);
  t.same(replies, ['parsed', 'bound', 'Z', 'E53300'], 'its replies, then FATAL 53300 (a bound SET portal may outlive a Sync)');
});
