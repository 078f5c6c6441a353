// End to end through pgbastion to a real PostgreSQL, with node-postgres and psql:
// SCRAM login, queries, transactions, errors, COPY, a 10 MB result, cancel, pool reuse.

import { spawn } from 'node:child_process';
import net from 'node:net';
import t from 'tap';
import pg from 'pg';
import { pgBin, startPostgres } from './helpers/postgres.js';
import { createServerRole, SERVER_ROLE, startProxy } from './helpers/proxy.js';

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
await pgs.query(`CREATE DATABASE appdb OWNER ${SERVER_ROLE}`);
const proxy = await startProxy(t, pgs, {
  users: [
    { name: 'alice', password: 'alice-pw' },
    { name: 'expired', password: 'expired-pw', valid_until: '2001-01-01T00:00:00Z' },
    { name: 'tenant_a', password: 'a-pw', pins: { 'app.tenant_id': 'a' } },
    { name: 'tenant_b', password: 'b-pw', pins: { 'app.tenant_id': '${user}@${database}' } },
  ],
});

async function client(user = 'alice', password = 'alice-pw', database = 'appdb'): Promise<pg.Client> {
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user, password, database });
  await c.connect();
  return c;
}

// The proxy runs in this process, so clients must be spawned asynchronously.
export function run(cmd: string, args: string[], opts: { input?: string; env?: Record<string, string> } = {}) {
  return new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...opts.env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.once('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
    child.stdin.end(opts.input ?? '');
  });
}
const psql = (args: string[], input?: string, password = 'alice-pw') =>
  run(pgBin('psql'), ['-X', '-v', 'ON_ERROR_STOP=1', ...args], { input, env: { PGPASSWORD: password, PGCONNECT_TIMEOUT: '5' } });
const psqlConn = () => ['-h', '127.0.0.1', '-p', String(proxy.port), '-U', 'alice', '-d', 'appdb'];

t.test('node-postgres: SCRAM login and queries as the server role', async (t) => {
  const c = await client();
  t.teardown(() => c.end());
  const r = await c.query('SELECT current_user AS u, current_database() AS d, 1 + 1 AS two');
  t.same(r.rows[0], { u: SERVER_ROLE, d: 'appdb', two: 2 });
  const p = await c.query('SELECT $1::int * 2 AS x', [21]);
  t.equal(p.rows[0].x, 42, 'extended protocol with parameters');
  const named = await c.query({ name: 'twice', text: 'SELECT $1::text || $1::text AS s', values: ['ab'] });
  t.equal(named.rows[0].s, 'abab', 'named prepared statement');
  const again = await c.query({ name: 'twice', text: 'SELECT $1::text || $1::text AS s', values: ['c'] });
  t.equal(again.rows[0].s, 'cc', 'named statement reused');
});

t.test('transactions, and an error inside one then ROLLBACK', async (t) => {
  const c = await client();
  t.teardown(() => c.end());
  await c.query('CREATE TABLE IF NOT EXISTS items (id int primary key, name text)');
  await c.query('TRUNCATE items');
  await c.query('BEGIN');
  await c.query("INSERT INTO items VALUES (1, 'one')");
  await c.query('COMMIT');
  await c.query('BEGIN');
  await c.query("INSERT INTO items VALUES (2, 'two')");
  await t.rejects(c.query('SELECT 1/0'), { code: '22012' }, 'division by zero reaches the client');
  await t.rejects(c.query('SELECT 1'), { code: '25P02' }, 'transaction is aborted as PostgreSQL says');
  await c.query('ROLLBACK');
  const r = await c.query('SELECT id FROM items ORDER BY id');
  t.same(r.rows.map((x) => x.id), [1], 'committed row kept, rolled back row gone');
});

t.test('a 10 MB result arrives intact', async (t) => {
  const c = await client();
  t.teardown(() => c.end());
  const r = await c.query("SELECT g AS n, repeat('x', 1000) AS pad FROM generate_series(1, 10000) g");
  t.equal(r.rows.length, 10000);
  t.equal(r.rows[9999].n, 10000);
  t.ok(r.rows.every((row: { pad: string }) => row.pad.length === 1000));
  const big = await c.query("SELECT repeat('y', 10 * 1024 * 1024) AS s");
  t.equal(big.rows[0].s.length, 10 * 1024 * 1024, 'one 10 MB value');
});

t.test('cancel of pg_sleep(10) returns in under 2 s (raw CancelRequest with the proxy key)', async (t) => {
  const c = await client();
  t.teardown(() => c.end());
  const { processID, secretKey } = c as unknown as { processID: number; secretKey: number };
  const started = Date.now();
  const q = c.query('SELECT pg_sleep(10)');
  await new Promise((r) => setTimeout(r, 300));
  const pkt = Buffer.alloc(16);
  pkt.writeInt32BE(16, 0);
  pkt.writeInt32BE(80877102, 4);
  pkt.writeInt32BE(processID, 8);
  pkt.writeInt32BE(secretKey, 12);
  const s = net.connect(proxy.port, '127.0.0.1');
  s.on('connect', () => s.end(pkt));
  await t.rejects(q, { code: '57014' }, 'canceling statement due to user request');
  t.ok(Date.now() - started < 2000, `cancelled after ${Date.now() - started} ms`);
  const r = await c.query('SELECT 1 AS one');
  t.equal(r.rows[0].one, 1, 'connection usable after cancel');
});

t.test('a CancelRequest with an unknown key is ignored', async (t) => {
  const c = await client();
  t.teardown(() => c.end());
  const q = c.query('SELECT pg_sleep(0.5) AS done');
  const pkt = Buffer.alloc(16);
  pkt.writeInt32BE(16, 0);
  pkt.writeInt32BE(80877102, 4);
  pkt.writeInt32BE(12345, 8);
  pkt.writeInt32BE(67890, 12);
  const s = net.connect(proxy.port, '127.0.0.1');
  s.on('connect', () => s.end(pkt));
  const r = await q;
  t.equal(r.rows.length, 1, 'query completed normally');
});

t.test('wrong password and unknown user get the same FATAL 28P01', async (t) => {
  const wrong = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'alice', password: 'nope', database: 'appdb' });
  await t.rejects(wrong.connect(), { code: '28P01', message: 'password authentication failed for user "alice"', severity: 'FATAL' });
  const unknown = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'mallory', password: 'x', database: 'appdb' });
  await t.rejects(unknown.connect(), { code: '28P01', message: 'password authentication failed for user "mallory"' });
  const expired = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'expired', password: 'expired-pw', database: 'appdb' });
  await t.rejects(expired.connect(), { code: '28P01' }, 'valid_until in the past refuses even the right password');
});

t.test('unknown database: PostgreSQL\'s own 3D000 reaches the client', async (t) => {
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'alice', password: 'alice-pw', database: 'nosuchdb' });
  await t.rejects(c.connect(), { code: '3D000', message: 'database "nosuchdb" does not exist' });
});

t.test('startup parameters are applied and pinned names in options refused', async (t) => {
  const c = new pg.Client({
    host: '127.0.0.1', port: proxy.port, user: 'alice', password: 'alice-pw', database: 'appdb',
    application_name: 'e2e-app', options: '-c search_path=custom,public',
  });
  await c.connect();
  t.teardown(() => c.end());
  const r = await c.query("SELECT current_setting('application_name') AS a, current_setting('search_path') AS s");
  t.same(r.rows[0], { a: 'e2e-app', s: 'custom,public' });
  const refused = new pg.Client({
    host: '127.0.0.1', port: proxy.port, user: 'alice', password: 'alice-pw', database: 'appdb',
    options: '-c app.tenant_id=evil',
  });
  await t.rejects(refused.connect(), { code: '42501', message: 'permission denied to set parameter "app.tenant_id"' });
});

t.test('a server connection is reused after DISCARD ALL, with no state carried over', async (t) => {
  const a = await client();
  await a.query('SET statement_timeout = 12345');
  await a.query('CREATE TEMP TABLE scratch (x int)');
  const pidA = (await a.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
  await a.end();
  await new Promise((r) => setTimeout(r, 200));
  const b = await client();
  t.teardown(() => b.end());
  const r = await b.query(
    "SELECT pg_backend_pid() AS pid, current_setting('statement_timeout') AS st, to_regclass('pg_temp.scratch') AS tmp",
  );
  t.equal(r.rows[0].pid, pidA, 'same backend reused');
  t.equal(r.rows[0].st, '0', 'session setting reset');
  t.equal(r.rows[0].tmp, null, 'temp table gone');
});

t.test('psql: login, queries, COPY in and out', async (t) => {
  const q = await psql([...psqlConn(), '-At', '-c', 'SELECT 40 + 2']);
  t.equal(q.status, 0, q.stderr);
  t.equal(q.stdout.trim(), '42');

  const setup = await psql([...psqlConn(), '-c', 'CREATE TABLE IF NOT EXISTS copytest (id int, name text); TRUNCATE copytest;']);
  t.equal(setup.status, 0, setup.stderr);
  const rows = Array.from({ length: 1000 }, (_, i) => `${i}\tname-${i}`).join('\n') + '\n';
  const copyIn = await psql([...psqlConn(), '-c', 'COPY copytest FROM STDIN'], rows);
  t.equal(copyIn.status, 0, copyIn.stderr);
  t.match(copyIn.stdout, /COPY 1000/);
  const copyOut = await psql([...psqlConn(), '-At', '-c', 'COPY (SELECT * FROM copytest ORDER BY id) TO STDOUT']);
  t.equal(copyOut.status, 0, copyOut.stderr);
  t.equal(copyOut.stdout, rows, 'COPY out returns exactly what went in');

  const bad = await psql([...psqlConn(), '-c', 'SELECT * FROM no_such_table']);
  t.not(bad.status, 0);
  t.match(bad.stderr, /relation "no_such_table" does not exist/);
});

t.test('psql: SIGINT cancels a running query through the proxy', async (t) => {
  const started = Date.now();
  const child = spawn(pgBin('psql'), ['-X', ...psqlConn(), '-c', 'SELECT pg_sleep(10)'], {
    env: { ...process.env, PGPASSWORD: 'alice-pw' },
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  await new Promise((r) => setTimeout(r, 700));
  child.kill('SIGINT');
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  t.not(code, 0);
  t.match(stderr, /canceling statement due to user request/);
  t.ok(Date.now() - started < 3000, 'returned promptly');
});

t.test('psql: wrong password', async (t) => {
  const r = await psql([...psqlConn(), '-c', 'SELECT 1'], undefined, 'bad');
  t.not(r.status, 0);
  t.match(r.stderr, /password authentication failed for user "alice"/);
});

t.test('pins: each client finds its own value on a reused server connection', async (t) => {
  const seen: { pid: number; value: string }[] = [];
  for (const [user, want] of [['tenant_a', 'a'], ['tenant_b', 'tenant_b@appdb'], ['tenant_a', 'a'], ['alice', '']] as const) {
    const c = await client(user, user === 'alice' ? 'alice-pw' : `${user.slice(-1)}-pw`);
    const r = await c.query("SELECT pg_backend_pid() AS pid, current_setting('app.tenant_id', true) AS v");
    await c.end();
    t.equal(r.rows[0].v ?? '', want, `${user} sees its own pin`);
    seen.push({ pid: r.rows[0].pid, value: r.rows[0].v });
    await new Promise((r) => setTimeout(r, 100));
  }
  t.ok(new Set(seen.map((s) => s.pid)).size < seen.length, 'at least one backend served two of these clients');
});
