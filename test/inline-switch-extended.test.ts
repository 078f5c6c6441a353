// The inline settings switch in the extended protocol (src/session/inline-switch.ts): a
// tenant switch written as Parse/Bind/Execute of its SETs ahead of the client's own batch,
// committed or rolled back with it at the batch's Sync. Its rule is table-tested; then it
// is attacked on a pool of ONE server connection shared by two tenants: failing batches,
// work pipelined behind a failing batch, named and unnamed statements, a switch the server
// refuses, and a hammer of node-postgres clients, with every row checked against the
// tenant that asked.

import t from 'tap';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { batchTakesInlineSwitch, type BatchMessage } from '../src/session/inline-switch.js';
import { SERVER_ROLE, startProxy } from './helpers/proxy.js';
import { rawOf } from './helpers/raw-client.js';
import { tenantLab } from './helpers/tenant-lab.js';

const parse = (text: string, name = '') => serialize.parse({ name, text, types: [] });
const bind = (statement = '', portal = '') => serialize.bind({ statement, portal });
const execute = (portal = '') => serialize.execute({ portal });
const describeStatement = (name = '') => serialize.describe({ type: 'S', name });
const sync = () => serialize.sync();

t.test('batchTakesInlineSwitch: a whole batch running only statements that cannot end a transaction', async (t) => {
  const P = (own: string | undefined, named = false): BatchMessage => ({ type: 0x50, bytes: parse(own ?? 'x'), needs: null, defines: named ? {} : null, ...(own === undefined ? {} : { own }) });
  const Bu = (portal = ''): BatchMessage => ({ type: 0x42, bytes: bind('', portal), needs: null, defines: null, usesUnnamed: {} });
  const Bn = (safe: boolean, portal = ''): BatchMessage => ({ type: 0x42, bytes: bind('s1', portal), needs: { inlineSafe: safe }, defines: null });
  const E = (portal = ''): BatchMessage => ({ type: 0x45, bytes: execute(portal), needs: null, defines: null });
  const D: BatchMessage = { type: 0x44, bytes: describeStatement(), needs: null, defines: null, usesUnnamed: {} };
  const C: BatchMessage = { type: 0x43, bytes: serialize.close({ type: 'S', name: 'x' }), needs: null, defines: null };
  const H: BatchMessage = { type: 0x48, bytes: serialize.flush(), needs: null, defines: null };
  const S: BatchMessage = { type: 0x53, bytes: sync(), needs: null, defines: null };
  const Q: BatchMessage = { type: 0x51, bytes: serialize.query('SELECT 1'), needs: null, defines: null, own: 'SELECT 1' };
  const pass: BatchMessage = { type: 0, bytes: Buffer.alloc(3), needs: null, defines: null };
  const cases: [string, BatchMessage[], boolean][] = [
    ['P/B/D/E/S of a SELECT (node-postgres, pgbench -M extended)', [P('SELECT $1'), Bu(), D, E(), S], true],
    ['B/E/S of a named SELECT parsed earlier (pgbench -M prepared)', [Bn(true), E(), S], true],
    ['P (named)/B/E/S', [P('INSERT INTO t VALUES ($1)', true), Bn(true), E(), S], true],
    ['two statements in one batch', [P('SELECT 1'), Bu(), E(), P('UPDATE t SET x = 1'), Bu(), E(), S], true],
    ['P/D/S: described, nothing run', [P('SELECT 1'), D, S], true],
    ['Describe of the unnamed statement with no Parse (it is prepared again)', [D, S], true],
    ['Close and Flush are harmless', [P('SELECT 1'), Bu(), E(), C, H, S], true],
    ['no Sync yet: the rest of the transaction is unseen', [P('SELECT 1'), Bu(), E()], false],
    ['a Sync alone', [S], false],
    ['two Syncs: two transactions', [P('SELECT 1'), Bu(), E(), S, P('SELECT 2'), Bu(), E(), S], false],
    ['BEGIN', [P('BEGIN'), Bu(), E(), S], false],
    ['COMMIT', [P('COMMIT'), Bu(), E(), S], false],
    ['VACUUM refuses a transaction block', [P('VACUUM t'), Bu(), E(), S], false],
    ['a Parse the proxy rewrote or refused (no SQL of the client)', [P(undefined), Bu(), E(), S], false],
    ['a named statement that is not safe', [Bn(false), E(), S], false],
    ['Bind of the unnamed statement parsed in an earlier batch', [Bu(), E(), S], false],
    ['Execute of a portal bound before the batch (a cursor WITH HOLD)', [E('c1'), S], false],
    ['Execute of a portal bound under another name', [P('SELECT 1'), Bu('p1'), E('p2'), S], false],
    ['Execute of the portal bound in the batch, named', [P('SELECT 1'), Bu('p1'), E('p1'), S], true],
    ['Describe of a portal bound in the batch', [P('SELECT 1'), Bu(), { type: 0x44, bytes: serialize.describe({ type: 'P', name: '' }), needs: null, defines: null }, E(), S], true],
    ['Describe of the unnamed portal before any Bind (it would be the switch\'s)', [{ type: 0x44, bytes: serialize.describe({ type: 'P', name: '' }), needs: null, defines: null }, S], false],
    ['a Query inside', [P('SELECT 1'), Bu(), E(), Q, S], false],
    ['bytes of no whole message (COPY data)', [pass, S], false],
  ];
  for (const [what, batch, want] of cases) t.equal(batchTakesInlineSwitch(batch), want, what);
});

const { pgs, proxy } = await tenantLab(t);

type Test = Parameters<Parameters<typeof t.test>[1]>[0];
const switches = () => proxy.server.runtime.metrics.settingsSwitchCount();

async function open(t: Test, who: 'a' | 'b', port = proxy.port): Promise<pg.Client> {
  const c = new pg.Client({ host: '127.0.0.1', port, user: `tenant_${who}`, password: `pw-${who}`, database: 'postgres' });
  c.on('error', () => undefined);
  await c.connect();
  t.teardown(() => c.end().catch(() => undefined));
  return c;
}

const pin = async (c: pg.Client) => (await c.query<{ t: string }>("SELECT current_setting('app.tenant_id', true) AS t")).rows[0]!.t;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


/** P/B/E/S of `sql` on the unnamed statement and portal. */
const batch = (sql: string) => [parse(sql), bind(), execute(), sync()];

t.test('an extended batch takes the switch inline, and the client sees only its own replies', async (t) => {
  const [a, b] = [await open(t, 'a'), await open(t, 'b')];
  const rb = rawOf(b);
  for (let i = 0; i < 5; i++) {
    t.equal(await pin(a), 'a');
    const before = await switches();
    const seen = await rb.send(1, parse("SELECT current_setting('app.tenant_id', true) AS t"), bind(), describeStatement(), execute(), sync());
    t.same(seen, ['parsed', 'bound', 'params', 'columns:t', 'b', 'done:SELECT 1', 'Z'], `round ${i}: b's row, and no reply of the switch`);
    const after = await switches();
    t.same([after.inline - before.inline, after.separate - before.separate], [1, 0], 'one switch, inline');
  }
});

t.test('a failing batch rolls the switch back with it; the next batch switches again', async (t) => {
  const [a, b] = [await open(t, 'a'), await open(t, 'b')];
  const rb = rawOf(b);
  for (let i = 0; i < 10; i++) {
    t.equal(await pin(a), 'a');
    t.same(await rb.send(1, ...batch('SELECT 1/0')), ['parsed', 'E22012', 'Z'], `round ${i}: b hears its own error (planned at Bind)`);
    t.same(await rb.send(1, ...batch("SELECT current_setting('app.tenant_id', true)")), ['parsed', 'bound', 'b', 'done:SELECT 1', 'Z'], 'its next batch holds b again');
    t.equal(await pin(a), 'a', 'and a gets a back');
    t.same(await rb.send(1, ...batch("INSERT INTO notes (tenant, body) VALUES ('a', 'forged')")), ['parsed', 'bound', 'E42501', 'Z'], 'RLS: b cannot write as a');
    t.same(await rb.send(1, ...batch('SELECT 1 FROM WHERE')), ['E42601', 'Z'], 'a Parse that fails: nothing ran');
    t.same(await rb.send(1, ...batch("SELECT current_setting('app.tenant_id', true)")), ['parsed', 'bound', 'b', 'done:SELECT 1', 'Z']);
  }
});

t.test('work pipelined behind a failing inline batch never runs as the previous tenant', async (t) => {
  const [a, b] = [await open(t, 'a'), await open(t, 'b')];
  const rb = rawOf(b);
  for (let i = 0; i < 10; i++) {
    t.equal(await pin(a), 'a');
    const before = await switches();
    const want = rb.st.ready + 3;
    rb.seen.length = 0;
    // The slow failing batch goes out alone (it takes the switch inline); the rest arrives
    // while it runs, and waits for its outcome.
    rb.raw.stream.write(Buffer.concat(batch('SELECT 1/(random()*0)::int FROM pg_sleep(0.1)')));
    await sleep(30);
    rb.raw.stream.write(
      Buffer.concat([
        ...batch(`INSERT INTO notes (body) VALUES ('pipelined ${i}') RETURNING tenant`),
        ...batch("SELECT current_setting('app.tenant_id', true) || ':' || (SELECT count(*) FROM notes WHERE tenant <> 'b')"),
      ]),
    );
    await rb.until(want);
    t.same(
      rb.seen,
      ['parsed', 'bound', 'E22012', 'Z', 'parsed', 'bound', 'b', 'done:INSERT 0 1', 'Z', 'parsed', 'bound', 'b:0', 'done:SELECT 1', 'Z'],
      `round ${i}: the INSERT and SELECT ran as b`,
    );
    t.ok((await switches()).inline > before.inline, 'the failing batch carried the switch');
  }
  const rows = await pgs.query<{ tenant: string; n: number }>("SELECT tenant, count(*)::int AS n FROM notes WHERE body LIKE 'pipelined %' GROUP BY tenant");
  t.same(rows.rows, [{ tenant: 'b', n: 10 }], 'every pipelined row was written as b');
});

t.test('named statements keep working behind the switch, and run as their tenant', async (t) => {
  const [a, b] = [await open(t, 'a'), await open(t, 'b')];
  const before = await switches();
  for (let i = 0; i < 20; i++) {
    for (const [c, who] of [[a, 'a'], [b, 'b']] as const) {
      // node-postgres: Parse of the named statement the first time, then Bind/Execute only.
      const r = await c.query<{ t: string; n: number }>({ name: 'who', text: "SELECT current_setting('app.tenant_id', true) AS t, $1::int AS n", values: [i] });
      t.same(r.rows, [{ t: who, n: i }], `${who}, round ${i}`);
    }
  }
  const after = await switches();
  t.ok(after.inline - before.inline >= 38, `switched inline ${after.inline - before.inline} times out of 40, separately ${after.separate - before.separate}`);
});

t.test("the switch takes the unnamed statement; the client's own is prepared again where it is used", async (t) => {
  const [a, b] = [await open(t, 'a'), await open(t, 'b')];
  const rb = rawOf(b);
  t.equal(await pin(a), 'a');
  t.same(await rb.send(1, parse("SELECT current_setting('app.tenant_id', true) AS mine"), sync()), ['parsed', 'Z'], "b's unnamed statement, parsed behind a switch");
  t.equal(await pin(a), 'a');
  t.same(await rb.send(1, describeStatement(), sync()), ['params', 'columns:mine', 'Z'], "a Describe of it behind the next switch describes b's statement");
  t.equal(await pin(a), 'a');
  t.same(await rb.send(1, bind(), execute(), sync()), ['bound', 'b', 'done:SELECT 1', 'Z'], 'and a Bind of it runs it, as b');
});

t.test("behind a failing inline batch, the next switch also spares the client's unnamed statement", async (t) => {
  // The failed batch's Parse stays (statements are not transactional), so the client's unnamed
  // statement is on the connection when its held Describe goes out behind a second switch.
  const [a, b] = [await open(t, 'a'), await open(t, 'b')];
  const rb = rawOf(b);
  for (let i = 0; i < 5; i++) {
    t.equal(await pin(a), 'a');
    const want = rb.st.ready + 2;
    rb.seen.length = 0;
    rb.raw.stream.write(Buffer.concat(batch("SELECT current_setting('app.tenant_id', true) AS mine, 1/(random()*0)::int AS boom FROM pg_sleep(0.1)")));
    await sleep(30);
    rb.raw.stream.write(Buffer.concat([describeStatement(), sync()]));
    await rb.until(want);
    t.same(rb.seen, ['parsed', 'bound', 'E22012', 'Z', 'params', 'columns:mine,boom', 'Z'], `round ${i}: the Describe describes b's statement`);
  }
});

t.test('BEGIN in a batch takes the separate switch, which its ROLLBACK does not undo', async (t) => {
  const [a, b] = [await open(t, 'a'), await open(t, 'b')];
  const rb = rawOf(b);
  t.equal(await pin(a), 'a');
  const before = await switches();
  t.same(await rb.send(1, ...batch('BEGIN')), ['parsed', 'bound', 'done:BEGIN', 'Z']);
  t.same(await rb.send(1, ...batch('ROLLBACK')), ['parsed', 'bound', 'done:ROLLBACK', 'Z']);
  t.same(await rb.send(1, ...batch("SELECT current_setting('app.tenant_id', true)")), ['parsed', 'bound', 'b', 'done:SELECT 1', 'Z'], 'still b');
  const after = await switches();
  t.equal(after.separate - before.separate, 1, 'the BEGIN batch switched separately');
});

t.test("a switch the server refuses fails the client's batch, which never runs", async (t) => {
  // As in pool-edge-cases: SET plpgsql.tenant works until plpgsql is loaded in that backend.
  // Here a plpgsql function called from a SELECT loads it (a DO block would make its client
  // sticky, and the connection would be DISCARDed, so that the next switch must set startup
  // parameters too and could not ride inline).
  await pgs.query(`CREATE TABLE ran (who text); GRANT ALL ON ran TO ${SERVER_ROLE}`);
  await pgs.query('CREATE FUNCTION load_plpgsql() RETURNS int LANGUAGE plpgsql AS $$BEGIN RETURN 1; END$$');
  t.teardown(() => pgs.query('DROP TABLE ran; DROP FUNCTION load_plpgsql()'));
  const own = await startProxy(t, pgs, {
    users: [
      { name: 'placeholder_x', password: 'pw-x', pins: { 'plpgsql.tenant': 'x' } },
      { name: 'placeholder_y', password: 'pw-y', pins: { 'plpgsql.tenant': 'y' } },
    ],
    extra: {
      pool: { mode: 'transaction', size: 1, acquire_timeout_ms: 5000 },
      pinning: { variables: ['plpgsql.tenant'] },
      upstream: { require_primary: false }, // its check is a DO block, which would load plpgsql at once
    },
  });
  const open = async (user: string, password: string) => {
    const c = new pg.Client({ host: '127.0.0.1', port: own.port, user, password, database: 'postgres' });
    c.on('error', () => undefined);
    await c.connect();
    t.teardown(() => c.end().catch(() => undefined));
    return c;
  };
  const x = await open('placeholder_x', 'pw-x');
  t.same((await x.query("SELECT current_setting('plpgsql.tenant') AS v")).rows, [{ v: 'x' }], 'the pin applies');
  const y = await open('placeholder_y', 'pw-y');
  t.same((await y.query("SELECT current_setting('plpgsql.tenant') AS v")).rows, [{ v: 'y' }], 'the pin applies');
  await y.query("SELECT load_plpgsql(); INSERT INTO ran VALUES ('y')");
  const before = await own.server.runtime.metrics.settingsSwitchCount();
  const rx = rawOf(x);
  t.same(await rx.send(1, ...batch("INSERT INTO ran VALUES ('x')")), ['E08006', 'Z'], 'the batch fails with the loss of the connection');
  const after = await own.server.runtime.metrics.settingsSwitchCount();
  t.same([after.inline - before.inline, after.separate - before.separate], [1, 0], 'the switch rode with the batch');
  t.same((await pgs.query<{ who: string }>('SELECT who FROM ran ORDER BY who')).rows, [{ who: 'y' }], 'its INSERT never ran');
  t.same(await rx.send(1, ...batch("SELECT current_setting('plpgsql.tenant')")), ['parsed', 'bound', 'x', 'done:SELECT 1', 'Z'], 'its next batch runs, on a fresh server connection');
  t.same((await y.query("SELECT current_setting('plpgsql.tenant') AS v")).rows, [{ v: 'y' }], 'other clients carry on');
});

t.test('hammer: 12 node-postgres clients, 2 tenants, one connection, parameterized statements failing and passing', async (t) => {
  await pgs.query("INSERT INTO notes VALUES ('a', 'seed'), ('b', 'seed')");
  const before = await switches();
  const mismatches: string[] = [];
  const clients = await Promise.all(Array.from({ length: 12 }, (_, i) => open(t, i % 2 === 0 ? 'a' : 'b')));
  await Promise.all(
    clients.map(async (c, i) => {
      const tenant = i % 2 === 0 ? 'a' : 'b';
      for (let k = 0; k < 60; k++) {
        if ((k + i) % 3 === 0) await c.query({ text: 'SELECT 1/$1::int', values: [0] }).catch(() => undefined);
        const r = await c.query<{ t: string; n: number; seen: string[] | null; k: number }>({
          text: "SELECT current_setting('app.tenant_id', true) AS t, (SELECT count(*) FROM notes)::int AS n, (SELECT array_agg(DISTINCT tenant) FROM notes) AS seen, $1::int AS k",
          values: [k],
        });
        const row = r.rows[0]!;
        if (row.t !== tenant || row.seen?.length !== 1 || row.seen[0] !== tenant || row.k !== k) mismatches.push(`${tenant} saw ${JSON.stringify(row)}`);
      }
    }),
  );
  t.same(mismatches.slice(0, 5), [], 'no statement saw the other tenant');
  const after = await switches();
  t.comment(`switches: ${after.inline - before.inline} inline, ${after.separate - before.separate} separate`);
  t.ok(after.inline - before.inline > 0, 'the inline switch was exercised');
});
