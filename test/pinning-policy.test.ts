// Tampering with a pinned variable, every way the policy knows, through a transaction
// pool: each attempt is refused with ERROR 42501 naming the variable, in the simple and
// the extended protocol, and the same connection still sees the pinned value afterwards.

import t from 'tap';
import pg from 'pg';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, SERVER_ROLE, startProxy } from './helpers/proxy.js';

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
const proxy = await startProxy(t, pgs, {
  users: [{ name: 'tenant_a', password: 'pw-a', pins: { 'app.tenant_id': 'a' } }],
  extra: { pool: { mode: 'transaction', size: 2 } },
});

async function client(): Promise<pg.Client> {
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'tenant_a', password: 'pw-a', database: 'postgres' });
  await c.connect();
  return c;
}
const pinned = async (c: pg.Client) => (await c.query("SELECT current_setting('app.tenant_id') AS v")).rows[0].v as string;

const FORMS = [
  "SET app.tenant_id = 'b'",
  "SET SESSION app.tenant_id TO 'b'",
  'SET app.tenant_id TO DEFAULT',
  'RESET app.tenant_id',
  'RESET ALL',
  'DISCARD ALL',
  "SET \"app\".\"tenant_id\" = 'b'",
  "SET/**/app.tenant_id/* x */=\n'b'",
  "SELECT set_config('app.tenant_id', 'b', false)",
  "SELECT pg_catalog.set_config('app.tenant_id', 'b', false)",
  "SELECT \"pg_catalog\".\"set_config\"('app.tenant_id', 'b', false)",
  "SELECT 1 WHERE set_config('app.tenant_id', 'b', false) IS NOT NULL",
  "WITH x AS (SELECT set_config('app.tenant_id', 'b', false)) SELECT * FROM x",
  "SELECT (SELECT set_config('app.tenant_id', 'b', false))",
  "VALUES (set_config('app.tenant_id', 'b', false))",
  "SELECT length(set_config('app.tenant_id', 'b', false))",
  "SELECT * FROM set_config('app.tenant_id', 'b', false)",
  "SELECT set_config('app.' || 'tenant_id', 'b', false)",
  `ALTER ROLE ${SERVER_ROLE} SET app.tenant_id = 'b'`,
  "ALTER DATABASE postgres SET app.tenant_id = 'b'",
  "DO $$BEGIN PERFORM set_config('app.tenant_id', 'b', false); END$$",
  "UPDATE pg_settings SET setting = 'b' WHERE name = 'app.tenant_id'",
  // built-ins granted to PUBLIC that run SQL given as text
  "SELECT query_to_xml('SELECT set_config(''app.tenant_id'', ''b'', false)', true, false, '')",
  "SELECT * FROM ts_stat('SELECT to_tsvector(set_config(''app.tenant_id'', ''b'', false))')",
];
const variants = (sql: string) => [sql, sql.toUpperCase(), sql.replace(/(\w)(\w*)/g, (_m, a: string, b: string) => a.toUpperCase() + b.toLowerCase())];

t.test('every tampering form is refused with 42501, simple and extended protocol', async (t) => {
  const c = await client();
  t.teardown(() => c.end());
  for (const form of FORMS) {
    for (const sql of variants(form)) {
      for (const mode of ['simple', 'extended'] as const) {
        const q = mode === 'simple' ? c.query(sql) : c.query({ text: sql, values: [], queryMode: 'extended' } as pg.QueryConfig);
        const err = await q.then(
          () => null,
          (e: { code?: string; message: string }) => e,
        );
        t.equal(err?.code, '42501', `${mode}: ${sql}`);
        t.match(err?.message ?? '', /app\.tenant_id/, 'the message names the variable');
        t.equal(await pinned(c), 'a', 'the pinned value stands');
      }
    }
  }
});

t.test('a statement hidden in a multi-statement string is refused whole', async (t) => {
  const c = await client();
  t.teardown(() => c.end());
  await pgs.query('CREATE TABLE IF NOT EXISTS side_effects (x int)');
  await pgs.query(`GRANT ALL ON side_effects TO ${SERVER_ROLE}`);
  const err = await c.query("INSERT INTO side_effects VALUES (1); SET app.tenant_id = 'b'; SELECT 1").then(
    () => null,
    (e: { code?: string }) => e,
  );
  t.equal(err?.code, '42501');
  t.equal(await pinned(c), 'a');
  t.equal((await pgs.query('SELECT count(*)::int AS n FROM side_effects')).rows[0].n, 0, 'nothing of the string ran');
});

t.test('inside a transaction block, a refusal aborts the transaction as PostgreSQL would', async (t) => {
  const c = await client();
  t.teardown(() => c.end());
  await c.query('BEGIN');
  const err = await c.query("SET LOCAL app.tenant_id = 'b'").then(
    () => null,
    (e: { code?: string }) => e,
  );
  t.equal(err?.code, '42501');
  const next = await c.query('SELECT 1').then(
    () => null,
    (e: { code?: string }) => e,
  );
  t.equal(next?.code, '25P02', 'current transaction is aborted');
  await c.query('ROLLBACK');
  t.equal(await pinned(c), 'a');
});

t.test('statements that only mention the variable are allowed', async (t) => {
  const c = await client();
  t.teardown(() => c.end());
  t.equal((await c.query("SELECT 'SET app.tenant_id = 1' AS s")).rows[0].s, 'SET app.tenant_id = 1');
  t.equal((await c.query("SELECT current_setting('app.tenant_id') AS v -- set app.tenant_id = 'b'")).rows[0].v, 'a');
  t.equal((await c.query("SELECT set_config('app.other', 'x', true) AS v")).rows[0].v, 'x');
  const syntax = await c.query('SELEC 1').then(
    () => null,
    (e: { code?: string }) => e,
  );
  t.equal(syntax?.code, '42601', 'a syntax error is PostgreSQL\'s own');
});

t.test('session state the pool cannot carry makes the client sticky to its connection', async (t) => {
  const c = await client();
  const other = await client();
  t.teardown(async () => {
    await c.end();
    await other.end();
  });
  await c.query('SET statement_timeout = 4321');
  await c.query('CREATE TEMP TABLE scratch (x int)');
  await c.query('INSERT INTO scratch VALUES (1)');
  for (let i = 0; i < 5; i++) {
    await other.query('SELECT 1');
    const r = await c.query("SELECT current_setting('statement_timeout') AS st, (SELECT count(*)::int FROM scratch) AS n");
    t.same(r.rows[0], { st: '4321ms', n: 1 }, 'setting and temp table survive across transactions');
  }
  const o = await other.query("SELECT current_setting('statement_timeout') AS st, to_regclass('pg_temp.scratch') AS tmp");
  t.same(o.rows[0], { st: '0', tmp: null }, 'nothing of it reaches another client');
});
