// The inline settings switch (src/session/inline-switch.ts): a tenant switch riding in the
// client's own Query. Its pure parts are table-tested; then it is attacked on a pool of ONE
// server connection shared by two tenants: failing statements (whose rollback undoes the
// switch), syntax errors, cancels, and work pipelined behind a failing switch, with every
// row checked against the tenant that asked.

import t from 'tap';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { parseFields, shiftPosition } from '../src/protocol/fields.js';
import { inlineQuery, opensBlockOnly, switchsOwnError, takesInlineSwitch } from '../src/session/inline-switch.js';
import { slowCancelForwarder } from './helpers/balancer.js';
import { sendCancel } from './helpers/cancel.js';
import { SERVER_ROLE, SERVER_ROLE_PASSWORD, startProxy } from './helpers/proxy.js';
import { TENANTS, tenantLab } from './helpers/tenant-lab.js';
import { upstreamTap } from './helpers/upstream-tap.js';

t.test('takesInlineSwitch: one statement that can neither end nor begin a transaction', async (t) => {
  const cases: [string, boolean][] = [
    ['SELECT 1', true],
    ['  select abalance from pgbench_accounts where aid = 7;', true],
    ['SELECT 1;  \n', true],
    ['INSERT INTO t VALUES (1)', true],
    ['update t set x = 1', true],
    ['DELETE FROM t', true],
    ['MERGE INTO t USING s ON true WHEN MATCHED THEN DO NOTHING', true],
    ['WITH x AS (SELECT 1) SELECT * FROM x', true],
    ['VALUES (1)', true],
    ['TABLE t', true],
    ['SELECT 1; SELECT 2', false],
    ["SELECT ';'", false], // a semicolon anywhere but the end, even quoted: not inline
    ['SELECT 1; -- done', false],
    ['BEGIN', false],
    ['START TRANSACTION', false],
    ['COMMIT', false],
    ['VACUUM t', false],
    ['CREATE TABLE t (x int)', false],
    ['SET app.x = 1', false],
    ['CALL p()', false],
    ['EXPLAIN SELECT 1', false],
    ['DO $$BEGIN END$$', false],
    ['-- comment\nSELECT 1', false],
    ['/* c */ SELECT 1', false],
    ['(SELECT 1)', false],
    ['selector', false],
    ['select_x()', false],
    ['', false],
  ];
  for (const [sql, want] of cases) t.equal(takesInlineSwitch(sql), want, JSON.stringify(sql));
});

t.test('opensBlockOnly: one BEGIN or START TRANSACTION, alone (it may go out with a separate switch)', async (t) => {
  const cases: [string, boolean][] = [
    ['BEGIN', true],
    ['begin;', true],
    ['  BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY;\n', true],
    ['BEGIN WORK', true],
    ['START TRANSACTION', true],
    ['start  transaction read write', true],
    ['BEGIN; -- done', false],
    ['BEGIN; ROLLBACK', false],
    ['BEGIN; INSERT INTO t VALUES (1)', false],
    ["BEGIN /* ; */ ISOLATION LEVEL SERIALIZABLE", false], // a semicolon anywhere but the end: no
    ['BEGINS', false],
    ['begin_x()', false],
    ['START', false],
    ['COMMIT', false],
    ['ROLLBACK; BEGIN', false],
    ['SELECT 1', false],
    ['-- c\nBEGIN', false],
    ['DO $$BEGIN END$$', false],
    ['', false],
  ];
  for (const [sql, want] of cases) t.equal(opensBlockOnly(sql), want, JSON.stringify(sql));
});

t.test('inlineQuery: the prefix in front of the text, framed again', async (t) => {
  const out = inlineQuery(Buffer.from(`SET "app"."t" = 'b'; `), serialize.query('SELECT 1'));
  t.same(out, serialize.query(`SET "app"."t" = 'b'; SELECT 1`));
});

t.test('shiftPosition: the position moves back to the client text; other fields stay', async (t) => {
  const frame = (fields: [string, string][]) => {
    const body = Buffer.concat([...fields.map(([k, v]) => Buffer.from(`${k}${v}\0`)), Buffer.from([0])]);
    const head = Buffer.from([0x45, 0, 0, 0, 0]);
    head.writeInt32BE(4 + body.length, 1);
    return Buffer.concat([head, body]);
  };
  const base: [string, string][] = [['S', 'ERROR'], ['C', '42601'], ['M', 'syntax error at or near "WHERE"']];
  t.same(parseFields(shiftPosition(frame([...base, ['P', '40'], ['F', 'scan.l']]), 25)), { S: 'ERROR', C: '42601', M: 'syntax error at or near "WHERE"', P: '15', F: 'scan.l' });
  t.same(parseFields(shiftPosition(frame([...base, ['P', '10']]), 25)), { S: 'ERROR', C: '42601', M: 'syntax error at or near "WHERE"' }, 'inside the prefix: dropped');
  const none = frame(base);
  t.equal(shiftPosition(none, 25), none, 'no position: the same frame');
  const placed = frame([...base, ['P', '40']]);
  t.equal(shiftPosition(placed, 0), placed, 'nothing to move (extended-protocol batch): the same frame');
  const shifted = shiftPosition(frame([...base, ['P', '140']]), 25);
  t.equal(shifted.readInt32BE(1), shifted.length - 1, 'length field matches');
});

t.test("switchsOwnError: an early error gives the connection up only when it is the SET's own", async (t) => {
  t.ok(switchsOwnError({ S: 'ERROR', C: '42602', M: 'invalid configuration parameter name' }, 25), 'a reserved prefix');
  t.ok(switchsOwnError({ S: 'ERROR', C: '42501' }, 25), 'permission denied to set parameter');
  t.ok(switchsOwnError({ S: 'ERROR', C: '22023' }, 25), 'invalid value');
  t.ok(switchsOwnError({ S: 'ERROR', C: '42601', P: '3' }, 25) === false, 'a syntax error is never a SET failure');
  t.notOk(switchsOwnError({ S: 'ERROR', C: '42704', P: '30' }, 25), "placed in the client's text");
  t.notOk(switchsOwnError({ S: 'ERROR', C: '22P05' }, 25), 'an untranslatable character (the whole text is converted first)');
  t.notOk(switchsOwnError({ S: 'ERROR', C: '57014' }, 25), "a cancel (meant for the client's statement)");
  t.notOk(switchsOwnError({ S: 'FATAL', V: 'FATAL', C: '42501' }, 25), 'a FATAL goes to the client as FATALs do');
});

const { pgs, proxy, metricsPort } = await tenantLab(t);

async function switches(): Promise<number> {
  const body = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  return [...body.matchAll(/^pgbastion_settings_switches_total\{form="\w+"\} (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
}

async function open(t: Test, who: 'a' | 'b', at: { port?: number; database?: string } = {}, settings: { application_name?: string; options?: string } = {}): Promise<pg.Client> {
  const c = new pg.Client({ host: '127.0.0.1', port: at.port ?? proxy.port, user: `tenant_${who}`, password: `pw-${who}`, database: at.database ?? 'postgres', ...settings });
  c.on('error', () => undefined);
  await c.connect();
  t.teardown(() => c.end().catch(() => undefined));
  return c;
}
type Test = Parameters<Parameters<typeof t.test>[1]>[0];

const pin = async (c: pg.Client) => (await c.query<{ t: string }>("SELECT current_setting('app.tenant_id', true) AS t")).rows[0]!.t;
const failure = (p: Promise<unknown>) => p.then(() => null, (e: Error & { code?: string; position?: string }) => e);

t.test("the switch rides in the client's Query, and only when it must", async (t) => {
  const [a, b] = [await open(t, 'a'), await open(t, 'b')];
  t.equal(await pin(a), 'a');
  const q = async (c: pg.Client) => (await c.query<{ q: string }>('SELECT current_query() AS q')).rows[0]!.q;
  const before = await switches();
  t.equal(await q(b), `SET "app"."tenant_id" = 'b'; SELECT current_query() AS q`, 'the first statement after a switch carries it');
  t.equal(await q(b), 'SELECT current_query() AS q', 'the next one, on a connection already holding b, does not');
  t.equal(await switches(), before + 1, 'one switch counted');
  t.equal(await pin(a), 'a');
  await b.query('BEGIN'); // not inline: a ROLLBACK would undo the switch
  t.equal(await q(b), 'SELECT current_query() AS q', 'BEGIN took the switch as a Query of its own');
  await b.query('ROLLBACK');
  t.equal(await pin(b), 'b', 'which the ROLLBACK did not undo');
});

t.test('a lone BEGIN goes out in the same write as the separate switch it needs, not a round trip later', async (t) => {
  const tap = await upstreamTap(t, pgs.port);
  const own = await startProxy(t, pgs, {
    users: TENANTS,
    extra: { pool: { mode: 'transaction', size: 1, acquire_timeout_ms: 5000 }, upstreams: [{ host: '127.0.0.1', port: tap.port }] },
  });
  const [a, b] = [await open(t, 'a', { port: own.port }), await open(t, 'b', { port: own.port })];
  const switchTo = (who: string) => tap.sent.filter((c) => c.includes(`SET "app"."tenant_id" = '${who}'`));
  for (const begin of ['BEGIN', 'START TRANSACTION ISOLATION LEVEL REPEATABLE READ']) {
    t.equal(await pin(a), 'a');
    tap.sent.length = 0;
    await b.query(begin);
    t.equal(switchTo('b').length, 1, `${begin}: one switch`);
    t.ok(switchTo('b')[0]?.includes(serialize.query(begin)), `${begin}: it went out with the switch`);
    t.equal(await pin(b), 'b', 'inside the block: b');
    await b.query('ROLLBACK');
    t.equal(await pin(b), 'b', 'the ROLLBACK did not undo the switch');
  }
  // Not alone: the BEGIN and what follows wait for the switch's ReadyForQuery.
  t.equal(await pin(a), 'a');
  tap.sent.length = 0;
  const { raw, seen, until } = rawOf(b);
  raw.stream.write(Buffer.concat([serialize.query('BEGIN'), serialize.query('SELECT 1')]));
  await until(2, 5000);
  t.same(seen, ['1'], 'both ran');
  t.equal(switchTo('b').length, 1, 'one switch');
  t.notOk(switchTo('b')[0]?.includes(serialize.query('BEGIN')), 'the BEGIN did not go with it');
});

t.test('a failing statement rolls the switch back with it; the next statement switches again', async (t) => {
  const [a, b] = [await open(t, 'a'), await open(t, 'b')];
  for (let i = 0; i < 10; i++) {
    t.equal(await pin(a), 'a');
    const e = await failure(b.query('SELECT 1/0'));
    t.equal(e?.code, '22012', 'the client sees its own error');
    t.equal(await pin(b), 'b', 'its next statement holds b again');
    t.equal((await failure(b.query("INSERT INTO notes (tenant, body) VALUES ('a', 'forged')")))?.code, '42501', 'RLS: b cannot write as a');
    t.equal(await pin(a), 'a', 'and a gets a back');
  }
});

t.test('a syntax error keeps the position PostgreSQL gives without a switch', async (t) => {
  const [a, b] = [await open(t, 'a'), await open(t, 'b')];
  const bad = 'SELECT 1 FROM WHERE x';
  const direct = await failure(pgs.query(bad));
  await pin(a);
  const viaSwitch = await failure(b.query(bad));
  t.equal(viaSwitch?.code, '42601');
  t.equal(viaSwitch?.position, direct?.position, `position ${direct?.position}, counted in the client's text`);
  t.equal(viaSwitch?.message, direct?.message);
  t.equal(await pin(b), 'b', 'nothing ran; the next statement switches');
  await pin(a);
  const runtime = await failure(b.query('SELECT nosuchcolumn FROM notes'));
  t.equal(runtime?.position, (await failure(pgs.query('SELECT nosuchcolumn FROM notes')))?.position, 'also for an error found while running');
});

t.test('work pipelined behind a failing switched statement never runs as the previous tenant', async (t) => {
  const [a, b] = [await open(t, 'a'), await open(t, 'b')];
  // b's raw connection: after this node-postgres cannot be used for queries any more.
  const raw = (b as unknown as { connection: { stream: { write(x: Buffer): void }; on(e: string, f: (m: never) => void): void } }).connection;
  const seen: string[] = [];
  let ready = 0;
  raw.on('dataRow', ((m: { fields: (string | null)[] }) => seen.push(m.fields.join('|'))) as (m: never) => void);
  raw.on('errorMessage', ((m: { code: string }) => seen.push(`E${m.code}`)) as (m: never) => void);
  raw.on('readyForQuery', (() => ready++) as (m: never) => void);
  for (let i = 0; i < 20; i++) {
    t.equal(await pin(a), 'a');
    const before = ready;
    seen.length = 0;
    raw.stream.write(
      Buffer.concat([
        serialize.query(i % 2 === 0 ? 'SELECT 1/0' : 'SELECT 1 FROM WHERE'),
        serialize.query(`INSERT INTO notes (body) VALUES ('pipelined ${i}') RETURNING tenant`),
        serialize.query("SELECT current_setting('app.tenant_id', true)"),
      ]),
    );
    while (ready < before + 3) await new Promise((r) => setTimeout(r, 2));
    t.same(seen, [i % 2 === 0 ? 'E22012' : 'E42601', 'b', 'b'], `round ${i}: the INSERT and SELECT ran as b`);
  }
  const rows = await pgs.query<{ tenant: string; n: number }>("SELECT tenant, count(*)::int AS n FROM notes WHERE body LIKE 'pipelined %' GROUP BY tenant");
  t.same(rows.rows, [{ tenant: 'b', n: 20 }], 'every pipelined row was written as b');
});

t.test('a cancel of a switched statement cancels it; the connection keeps the old tenant', async (t) => {
  const [a, b] = [await open(t, 'a'), await open(t, 'b')];
  await pin(a);
  const sleeping = failure(b.query('SELECT pg_sleep(10)'));
  await new Promise((r) => setTimeout(r, 300));
  const key = b as unknown as { processID: number; secretKey: number };
  await sendCancel(proxy.port, key.processID, key.secretKey);
  t.equal((await sleeping)?.code, '57014', 'canceled');
  t.equal(await pin(a), 'a', 'the sleep rolled back with its switch: a finds a');
  t.equal(await pin(b), 'b');
});

t.test('hammer: 12 clients, 2 tenants, one connection, failing and passing statements mixed', async (t) => {
  await pgs.query("INSERT INTO notes VALUES ('a', 'seed'), ('b', 'seed')");
  const mismatches: string[] = [];
  const clients = await Promise.all(Array.from({ length: 12 }, (_, i) => open(t, i % 2 === 0 ? 'a' : 'b')));
  await Promise.all(
    clients.map(async (c, i) => {
      const tenant = i % 2 === 0 ? 'a' : 'b';
      for (let k = 0; k < 80; k++) {
        if ((k + i) % 3 === 0) await failure(c.query('SELECT 1/0'));
        const r = await c.query<{ t: string; n: number; seen: string[] | null }>(
          "SELECT current_setting('app.tenant_id', true) AS t, (SELECT count(*) FROM notes)::int AS n, (SELECT array_agg(DISTINCT tenant) FROM notes) AS seen",
        );
        const row = r.rows[0]!;
        if (row.t !== tenant || row.seen?.length !== 1 || row.seen[0] !== tenant) mismatches.push(`${tenant} saw ${JSON.stringify(row)}`);
      }
    }),
  );
  t.same(mismatches.slice(0, 5), [], 'no statement saw the other tenant');
});

type RawConnection = { stream: { write(x: Buffer): void }; on(e: string, f: (m: never) => void): void };
/** node-postgres cannot be used for queries after this: replies are read raw. */
function rawOf(c: pg.Client) {
  const raw = (c as unknown as { connection: RawConnection }).connection;
  const seen: string[] = [];
  const st = { ready: 0 };
  raw.on('dataRow', ((m: { fields: (string | null)[] }) => seen.push(m.fields.join('|'))) as (m: never) => void);
  raw.on('errorMessage', ((m: { code: string }) => seen.push(`E${m.code}`)) as (m: never) => void);
  raw.on('readyForQuery', (() => st.ready++) as (m: never) => void);
  const until = async (n: number, ms: number) => {
    const end = Date.now() + ms;
    while (st.ready < n && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
  };
  return { raw, seen, st, until };
}
const keyOf = (c: pg.Client) => c as unknown as { processID: number; secretKey: number };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('work pipelined behind an inline switch, then a cancel: answered, and the connection goes on', async (t) => {
  // The switch's ReadyForQuery arrives while the cancel is still on its way: the held work
  // then waits for the cancel, and goes. PostgreSQL signals the backend twice; the second
  // signal, handled only once the backend runs again, can still land on the next statement
  // (it does with a direct connection too, where libpq also waits for the cancel connection
  // to close): that statement then fails with 57014, but never runs as the other tenant.
  let asB = 0;
  for (let i = 0; i < 10; i++) {
    const [a, b] = [await open(t, 'a'), await open(t, 'b')];
    t.equal(await pin(a), 'a');
    const { raw, seen, st, until } = rawOf(b);
    // Long enough that the cancel, sent 50 ms in, lands during it even on a loaded machine.
    raw.stream.write(Buffer.concat([serialize.query('SELECT pg_sleep(2)'), serialize.query("SELECT current_setting('app.tenant_id', true)")]));
    await sleep(50);
    await sendCancel(proxy.port, keyOf(b).processID, keyOf(b).secretKey);
    await until(2, 4000);
    t.equal(st.ready, 2, `round ${i}: both queries answered`);
    const second = seen[seen.length - 1];
    t.ok(second === 'b' || second === 'E57014', `the second one as b, or cancelled by the cancel's late signal (${second})`);
    if (second === 'b') asB++;
    t.equal(await pin(a), 'a', 'and a gets the connection');
    await b.end().catch(() => undefined);
    await a.end().catch(() => undefined);
  }
  t.ok(asB >= 7, `the second statement ran as b in most rounds (${asB} of 10)`);
});

t.test('a notice raised while the whole text is parsed reaches the client', async (t) => {
  const [a, b] = [await open(t, 'a'), await open(t, 'b')];
  const notices: string[] = [];
  b.on('notice', (n: Error & { code?: string }) => notices.push(`${n.code} ${n.message}`));
  const long = 'x'.repeat(70);
  t.equal(await pin(a), 'a');
  await b.query(`SELECT 1 AS ${long}`);
  t.match(notices, [/^42622 identifier "x+" will be truncated/], 'with a switch in front');
  await b.query(`SELECT 1 AS ${long}`);
  t.equal(notices.length, 2, 'as without one');
});

t.test('an error the server raises converting the whole text is the client\'s; the connection stays', async (t) => {
  await pgs.query(`CREATE DATABASE lat1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`);
  const [a, b] = [await open(t, 'a', { database: 'lat1' }), await open(t, 'b', { database: 'lat1' })];
  const pidOf = async (c: pg.Client) => (await c.query<{ p: number }>('SELECT pg_backend_pid() AS p')).rows[0]!.p;
  const before = await pidOf(a);
  t.equal((await failure(b.query("SELECT '€' AS x")))?.code, '22P05', 'untranslatable character, as PostgreSQL says it');
  t.equal(await pidOf(a), before, 'the server connection was kept');
  t.equal(await pin(b), 'b');
});

t.test('work sent after a cancel, behind a failing inline switch, runs as its own tenant', async (t) => {
  // The cancel lands late (forwarded after 800 ms), so the held work waits for it after the
  // switched statement failed and rolled the switch back: it must get a switch of its own.
  await pgs.query("INSERT INTO notes VALUES ('a', 'secret of a')");
  const fwd = await slowCancelForwarder(t, pgs.port, 800);
  const slow = await startProxy(t, pgs, {
    users: [
      { name: 'tenant_a', password: 'pw-a', pins: { 'app.tenant_id': 'a' } },
      { name: 'tenant_b', password: 'pw-b', pins: { 'app.tenant_id': 'b' } },
    ],
    extra: { upstreams: [{ host: '127.0.0.1', port: fwd }], pool: { mode: 'transaction', size: 1, acquire_timeout_ms: 5000 } },
  });
  const [a, b] = [await open(t, 'a', { port: slow.port }), await open(t, 'b', { port: slow.port })];
  t.equal(await pin(a), 'a');
  const { raw, seen, until } = rawOf(b);
  raw.stream.write(serialize.query('SELECT 1/(random()*0)::int FROM pg_sleep(0.4)'));
  await sleep(100);
  const cancelled = sendCancel(slow.port, keyOf(b).processID, keyOf(b).secretKey);
  await sleep(100);
  raw.stream.write(
    Buffer.concat([
      serialize.query(`INSERT INTO notes (body) VALUES ('late, by b') RETURNING tenant`),
      serialize.query("SELECT current_setting('app.tenant_id', true) || ':' || (SELECT count(*) FROM notes WHERE tenant <> 'b')"),
    ]),
  );
  await until(3, 5000);
  await cancelled;
  t.same(seen, ['E22012', 'b', 'b:0'], "b's work ran as b and saw none of a's rows");
  t.same((await pgs.query("SELECT tenant FROM notes WHERE body = 'late, by b'")).rows, [{ tenant: 'b' }]);
});

t.test('a statement split across reads, behind a failed inline switch, still runs as its tenant', async (t) => {
  // At the failed Query's ReadyForQuery the client's next message is half read, so the
  // client keeps the connection, which holds the previous tenant's value again.
  const [a, b] = [await open(t, 'a'), await open(t, 'b')];
  t.equal(await pin(a), 'a');
  const { raw, seen, until } = rawOf(b);
  const next = serialize.query("SELECT current_setting('app.tenant_id', true) || ':' || (SELECT count(*) FROM notes WHERE tenant <> 'b')");
  raw.stream.write(Buffer.concat([serialize.query('SELECT 1/0'), next.subarray(0, 10)]));
  await until(1, 3000);
  await sleep(50);
  raw.stream.write(next.subarray(10));
  await until(2, 3000);
  t.same(seen, ['E22012', 'b:0'], 'the second statement ran as b');
});

t.test('work held for a cancel when the connection dies inside a transaction never runs outside it', async (t) => {
  await pgs.query(`CREATE TABLE lost (body text); GRANT SELECT, INSERT ON lost TO ${SERVER_ROLE}`);
  const fwd = await slowCancelForwarder(t, pgs.port, 1500);
  const slow = await startProxy(t, pgs, {
    users: [{ name: 'tenant_b', password: 'pw-b', pins: { 'app.tenant_id': 'b' } }],
    extra: { upstreams: [{ host: '127.0.0.1', port: fwd }], pool: { mode: 'transaction', size: 1, acquire_timeout_ms: 5000 } },
  });
  const b = await open(t, 'b', { port: slow.port });
  const { raw, seen, until } = rawOf(b);
  raw.stream.write(serialize.query('BEGIN'));
  await until(1, 3000);
  raw.stream.write(serialize.query("INSERT INTO lost VALUES ('in tx')"));
  await until(2, 3000);
  raw.stream.write(serialize.query('SELECT pg_sleep(0.3)'));
  await sleep(100);
  const cancelled = sendCancel(slow.port, keyOf(b).processID, keyOf(b).secretKey);
  await until(3, 3000); // the sleep ended; the cancel is still on its way
  raw.stream.write(serialize.query("INSERT INTO lost VALUES ('behind the cancel')")); // held for it
  await sleep(100);
  await pgs.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '${SERVER_ROLE}' AND query = 'SELECT pg_sleep(0.3)'`);
  await cancelled;
  await until(4, 5000);
  t.same(seen.slice(-1), ['E08006'], 'the held INSERT is answered with the loss');
  raw.stream.write(serialize.query('COMMIT'));
  await until(5, 3000);
  t.same((await pgs.query('SELECT body FROM lost')).rows, [], 'nothing of the lost transaction ran, nor what was held behind it');
});

// Core settings drivers send at startup switch inline too (set-config.ts, INLINE_CORE).
const byForm = () => proxy.server.runtime.metrics.settingsSwitchCount();
const SETTINGS_A = { application_name: 'app-of-a', options: '-c DateStyle=SQL,DMY -c TimeZone=Asia/Tokyo -c extra_float_digits=0' };
const SETTINGS_B = { application_name: 'app-of-b', options: '-c DateStyle=ISO,MDY -c TimeZone=UTC' };
const SEEN =
  "SELECT current_setting('application_name') AS app, '03/04/2020'::date::text AS d, current_setting('TimeZone') AS tz, " +
  "current_setting('extra_float_digits') AS efd, current_setting('app.tenant_id', true) AS tenant";
const OWN = {
  a: { app: 'app-of-a', d: '03/04/2020', tz: 'Asia/Tokyo', efd: '0', tenant: 'a' },
  b: { app: 'app-of-b', d: '2020-03-04', tz: 'UTC', efd: '1', tenant: 'b' },
};

t.test('application_name, DateStyle, TimeZone, extra_float_digits switch inline; each client reads its own', async (t) => {
  const [a, b] = [await open(t, 'a', {}, SETTINGS_A), await open(t, 'b', {}, SETTINGS_B)];
  await a.query('SELECT 1');
  const before = await byForm();
  for (let i = 0; i < 20; i++) {
    t.same((await a.query(SEEN)).rows[0], OWN.a);
    t.same((await b.query({ text: SEEN, values: [], queryMode: 'extended' } as pg.QueryConfig)).rows[0], OWN.b, 'extended protocol');
  }
  const after = await byForm();
  t.same([after.inline - before.inline, after.separate - before.separate], [39, 0], 'every switch but the first (a already held) rode with the statement');
});

t.test("a failing statement rolls core settings back; the client never hears another client's values", async (t) => {
  const [a, b] = [await open(t, 'a', {}, SETTINGS_A), await open(t, 'b', {}, SETTINGS_B)];
  const heard: string[] = [];
  (b as unknown as { connection: NodeJS.EventEmitter }).connection.on('parameterStatus', (m: { parameterName: string; parameterValue: string }) =>
    heard.push(`${m.parameterName}=${m.parameterValue}`),
  );
  for (let i = 0; i < 5; i++) {
    t.same((await a.query(SEEN)).rows[0], OWN.a);
    t.equal((await failure(b.query('SELECT 1/0')))?.code, '22012', 'simple protocol');
    t.same((await a.query(SEEN)).rows[0], OWN.a);
    t.equal((await failure(b.query({ text: 'SELECT 1/$1::int', values: [0] })))?.code, '22012', 'extended protocol');
    t.same((await b.query(SEEN)).rows[0], OWN.b, 'its next statement switches again');
  }
  t.same(
    heard.filter((h) => h.includes('app-of-a') || h.includes('Asia/Tokyo') || h.includes('DMY')),
    [],
    "no ParameterStatus with a's values reached b",
  );
});

t.test('default_transaction_read_only still takes the separate switch, and holds', async (t) => {
  const [a, b] = [await open(t, 'a', {}, { options: '-c default_transaction_read_only=on' }), await open(t, 'b')];
  for (let i = 0; i < 3; i++) {
    t.equal((await failure(a.query("INSERT INTO notes (body) VALUES ('ro')")))?.code, '25006', 'read-only for a');
    const before = await byForm();
    await b.query("INSERT INTO notes (body) VALUES ('rw')");
    const after = await byForm();
    t.same([after.inline - before.inline, after.separate - before.separate], [0, 1], 'b switched with a Query of its own');
  }
});

// Each client gets what it would get connecting directly with the same startup settings,
// whatever the previous client on the connection had: DateStyle merges a partial value with
// the one in force, so the switch resets it first (set-config.ts, MERGED_WITH_CURRENT).
const LOOK =
  "SELECT current_setting('DateStyle') ds, '01/02/2024'::date::text d, '2024-06-01 12:00'::timestamptz::text ts, " +
  "interval '-1 2:03:04'::text iv, current_setting('TimeZone') tz, '\\x01ff'::bytea::text b, 0.1::float8::text f";
const PAIRS: [string, { options: string }, { options: string }][] = [
  ['partial DateStyle, order only', { options: '-c DateStyle=SQL,DMY' }, { options: '-c DateStyle=MDY' }],
  ['partial DateStyle, style only', { options: '-c DateStyle=ISO,DMY' }, { options: '-c DateStyle=SQL' }],
  ['IntervalStyle and TimeZone', { options: '-c IntervalStyle=sql_standard -c TimeZone=Asia/Tokyo' }, { options: '-c IntervalStyle=iso_8601 -c TimeZone=-5' }],
  ['bytea_output and extra_float_digits', { options: '-c bytea_output=escape -c extra_float_digits=-3' }, { options: '-c extra_float_digits=3' }],
];
for (const [title, settingsA, settingsB] of PAIRS) {
  t.test(`settings read as on a direct connection: ${title}`, async (t) => {
    const direct = async (settings: { options: string }) => {
      const c = new pg.Client({ host: '127.0.0.1', port: pgs.port, user: SERVER_ROLE, password: SERVER_ROLE_PASSWORD, database: 'postgres', ...settings });
      await c.connect();
      try {
        return (await c.query(LOOK)).rows[0];
      } finally {
        await c.end();
      }
    };
    const want = { a: await direct(settingsA), b: await direct(settingsB) };
    const [a, b] = [await open(t, 'a', {}, settingsA), await open(t, 'b', {}, settingsB)];
    for (let i = 0; i < 3; i++) {
      t.same((await a.query(LOOK)).rows[0], want.a, 'a, simple protocol');
      t.same((await b.query(LOOK)).rows[0], want.b, 'b, simple protocol');
      t.same((await a.query({ text: LOOK, values: [], queryMode: 'extended' } as pg.QueryConfig)).rows[0], want.a, 'a, extended protocol');
      t.same((await b.query({ text: LOOK, values: [], queryMode: 'extended' } as pg.QueryConfig)).rows[0], want.b, 'b, extended protocol');
    }
  });
}

t.test('a SET of a partial DateStyle is remembered as the whole value it gave', async (t) => {
  const direct = new pg.Client({ host: '127.0.0.1', port: pgs.port, user: SERVER_ROLE, password: SERVER_ROLE_PASSWORD, database: 'postgres', options: '-c DateStyle=ISO,DMY' });
  await direct.connect();
  await direct.query("SET DateStyle = 'SQL'");
  const want = (await direct.query(LOOK)).rows[0];
  await direct.end();
  const [a, b] = [await open(t, 'a', {}, { options: '-c DateStyle=Postgres,MDY' }), await open(t, 'b', {}, { options: '-c DateStyle=ISO,DMY' })];
  await b.query("SET DateStyle = 'SQL'");
  for (let i = 0; i < 3; i++) {
    await a.query(LOOK); // the connection now holds a's order, MDY
    t.same((await b.query(LOOK)).rows[0], want, "b keeps its own day-first order, as on a direct connection");
  }
});
