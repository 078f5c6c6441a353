// Transaction pooling: many clients share few server connections, each transaction on
// whichever is free, and at every statement each client sees only its own pinned tenant.

import t, { type Test } from 'tap';
import pg from 'pg';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, SERVER_ROLE, startProxy } from './helpers/proxy.js';

const TENANTS = ['a', 'b', 'c'];
const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
await pgs.query(`
  CREATE TABLE tenant_rows (tenant text NOT NULL, v int NOT NULL);
  INSERT INTO tenant_rows SELECT t, g FROM unnest(ARRAY['a','b','c']) t, generate_series(1, 5) g;
  ALTER TABLE tenant_rows ENABLE ROW LEVEL SECURITY;
  CREATE POLICY by_tenant ON tenant_rows USING (tenant = current_setting('app.tenant_id', true));
  GRANT SELECT ON tenant_rows TO ${SERVER_ROLE};
`);
const POOL_SIZE = 4;
const proxy = await startProxy(t, pgs, {
  users: [
    ...TENANTS.map((x) => ({ name: `tenant_${x}`, password: `pw-${x}`, pins: { 'app.tenant_id': x } })),
    { name: 'plain', password: 'plain-pw' },
  ],
  extra: { pool: { mode: 'transaction', size: POOL_SIZE, acquire_timeout_ms: 3000 } },
});

async function connect(user: string, password: string, extra: Partial<pg.ClientConfig> = {}): Promise<pg.Client> {
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user, password, database: 'postgres', ...extra });
  await c.connect();
  return c;
}
const tenantClient = (x: string) => connect(`tenant_${x}`, `pw-${x}`);

const CHECK = "SELECT current_setting('app.tenant_id', true) AS t, (SELECT array_agg(DISTINCT tenant) FROM tenant_rows) AS seen, (SELECT count(*) FROM tenant_rows)::int AS n";

// The same users behind pool.affinity_ms: a released connection goes out of FIFO order to a
// waiter of its own tenant, or is held for one coming back.
const affine = await startProxy(t, pgs, {
  users: TENANTS.map((x) => ({ name: `tenant_${x}`, password: `pw-${x}`, pins: { 'app.tenant_id': x } })),
  extra: { pool: { mode: 'transaction', size: POOL_SIZE, acquire_timeout_ms: 3000, affinity_ms: 10 } },
});

let fifoSwitches = 0;
t.test('isolation hammer: 40 clients, 3 tenants, pool of 4, 20 000+ statements, zero mismatches', async (t) => {
  fifoSwitches = await hammer(t, proxy);
});
t.test('isolation hammer with pool.affinity_ms 10: zero mismatches, far fewer pin switches', async (t) => {
  const switches = await hammer(t, affine);
  // 14 clients per tenant: a released connection mostly finds a waiter of its tenant.
  t.ok(switches < fifoSwitches * 0.6, `${switches} switches with affinity, ${fifoSwitches} in FIFO order`);
});

/** Runs the hammer through `proxy`; returns how many times a lease switched pins. */
async function hammer(t: Test, proxy: Awaited<ReturnType<typeof startProxy>>): Promise<number> {
  const tenantClient = (x: string) => connect(`tenant_${x}`, `pw-${x}`, { port: proxy.port });
  const CLIENTS = 42;
  const STATEMENTS_EACH = 500;
  let statements = 0;
  const mismatches: string[] = [];
  const backends = new Set<number>();

  const checksBy = new Map<number, number>();
  async function check(c: pg.Client, tenant: string, how: 'simple' | 'extended' | 'named', who: number): Promise<void> {
    checksBy.set(who, (checksBy.get(who) ?? 0) + 1);
    const r =
      how === 'simple'
        ? await c.query(CHECK)
        : await c.query({ text: `${CHECK}, pg_backend_pid() AS pid, $1::int AS k`, values: [statements], ...(how === 'named' ? { name: 'check' } : {}) });
    statements++;
    const row = r.rows[0] as { t: string; seen: string[] | null; n: number; pid?: number };
    if (row.pid) backends.add(row.pid);
    if (row.t !== tenant || row.n !== 5 || row.seen?.length !== 1 || row.seen[0] !== tenant) {
      mismatches.push(`${tenant} (${how}) saw t=${row.t} seen=${JSON.stringify(row.seen)} n=${row.n}`);
    }
  }

  async function worker(i: number): Promise<void> {
    const tenant = TENANTS[i % TENANTS.length]!;
    const c = await tenantClient(tenant);
    try {
      const start = checksBy.get(i) ?? 0;
      while ((checksBy.get(i) ?? 0) - start < STATEMENTS_EACH) {
        const pick = Math.floor(Math.random() * 7);
        if (pick === 0) {
          await check(c, tenant, 'simple', i);
        } else if (pick === 1) {
          await check(c, tenant, 'extended', i);
        } else if (pick === 2) {
          await c.query('BEGIN');
          await check(c, tenant, 'simple', i);
          await check(c, tenant, 'extended', i);
          await c.query('COMMIT');
        } else if (pick === 3) {
          await c.query('BEGIN');
          await check(c, tenant, 'extended', i);
          await c.query('SELECT 1/0').catch(() => undefined);
          await c.query('ROLLBACK');
          await check(c, tenant, 'simple', i);
        } else if (pick === 4) {
          await c.query('SELECT 1/0').catch(() => undefined);
          await check(c, tenant, 'extended', i);
        } else if (pick === 5) {
          // A named statement, prepared on whichever connection first ran it for this client.
          await check(c, tenant, 'named', i);
        } else {
          // Pipelined: two queries in flight at once on one client connection.
          await Promise.all([check(c, tenant, 'simple', i), check(c, tenant, 'extended', i)]);
        }
      }
    } finally {
      await c.end();
    }
  }

  await Promise.all(Array.from({ length: CLIENTS }, (_, i) => worker(i)));
  t.ok(statements >= 20_000, `${statements} checking statements, plus transaction control and errors`);
  t.same(mismatches.slice(0, 5), [], 'no statement saw another tenant (first mismatches shown)');
  t.equal(mismatches.length, 0, 'zero mismatches');
  t.ok(backends.size <= POOL_SIZE, `${backends.size} server connections served ${CLIENTS} clients`);
  const stats = [...proxy.server.runtime.pools.all()].map((p) => p.stats);
  t.ok(stats.every((s) => s.total <= POOL_SIZE), 'pool never grew past its size');
  const byForm = await proxy.server.runtime.metrics.settingsSwitchCount();
  const switches = byForm.inline + byForm.separate;
  t.comment(`${switches} pin switches for ${statements} checking statements`);
  return switches;
}

t.test('a client without pins finds none on a connection a tenant used', async (t) => {
  const a = await tenantClient('a');
  const plain = await connect('plain', 'plain-pw');
  t.teardown(async () => {
    await a.end();
    await plain.end();
  });
  for (let i = 0; i < 20; i++) {
    await a.query('SELECT 1');
    const r = await plain.query(CHECK);
    t.equal(r.rows[0].t ?? '', '', 'no tenant value');
    t.equal(r.rows[0].n, 0, 'RLS shows nothing');
  }
});

t.test('pool affinity: an idle connection already holding the tenant is leased to it', async (t) => {
  const a = await tenantClient('a');
  const b = await tenantClient('b');
  t.teardown(async () => {
    await a.end();
    await b.end();
  });
  // Both inside a transaction at once: two connections, one pinned to each tenant.
  await a.query('BEGIN');
  await b.query('BEGIN');
  await a.query('COMMIT');
  await b.query('COMMIT');
  const pids = { a: new Set<number>(), b: new Set<number>() };
  for (let i = 0; i < 10; i++) {
    // Plain LIFO reuse would hand both the connection released last, switching pins each time.
    pids.a.add((await a.query('SELECT pg_backend_pid() AS p')).rows[0].p);
    pids.b.add((await b.query('SELECT pg_backend_pid() AS p')).rows[0].p);
  }
  t.equal(pids.a.size, 1, 'tenant a always got the same connection');
  t.equal(pids.b.size, 1, 'tenant b always got the same connection');
  t.notSame([...pids.a], [...pids.b], 'and not the one holding tenant b');
});

t.test('startup parameters follow their client from connection to connection', async (t) => {
  // search_path is a list that a plain SET would quote as one element: it must arrive as sent.
  const named = await connect('tenant_a', 'pw-a', { application_name: 'app-one', statement_timeout: 12345, options: '-c search_path=pg_catalog,public' });
  const bare = await connect('tenant_b', 'pw-b');
  t.teardown(async () => {
    await named.end();
    await bare.end();
  });
  for (let i = 0; i < 10; i++) {
    const check = "SELECT current_setting('application_name') AS app, current_setting('statement_timeout') AS st, current_setting('search_path') AS sp";
    const a = await named.query(check);
    const b = await bare.query(check);
    t.same(a.rows[0], { app: 'app-one', st: '12345ms', sp: 'pg_catalog,public' });
    t.same(b.rows[0], { app: '', st: '0', sp: '"$user", public' });
  }
});

t.test('more clients in transactions than connections: the rest wait, then time out with 53300', async (t) => {
  const holders = await Promise.all(Array.from({ length: POOL_SIZE }, () => tenantClient('a')));
  t.teardown(() => Promise.all(holders.map((h) => h.end())));
  for (const h of holders) await h.query('BEGIN');
  const waiter = await tenantClient('b');
  const started = Date.now();
  const err = await waiter.query('SELECT 1').then(
    () => null,
    (e: { code?: string }) => e,
  );
  t.equal(err?.code, '53300', 'FATAL 53300 after pool.acquire_timeout_ms');
  t.ok(Date.now() - started >= 2500, 'waited for the acquire timeout');
  await waiter.end().catch(() => {});
  for (const h of holders) await h.query('COMMIT');
  const late = await tenantClient('c');
  t.equal((await late.query(CHECK)).rows[0].t, 'c', 'connections free again after COMMIT');
  await late.end();
});

t.test('a server connection that dies between transactions is never seen by its client', async (t) => {
  const c = await tenantClient('a');
  t.teardown(() => c.end());
  const pid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
  await pgs.query('SELECT pg_terminate_backend($1)', [pid]);
  await new Promise((r) => setTimeout(r, 200));
  for (let i = 0; i < 5; i++) t.equal((await c.query(CHECK)).rows[0].t, 'a', 'next transaction on a healthy connection');
});

t.test('a server connection that dies inside a transaction: an ERROR, and the client carries on', async (t) => {
  const c = await tenantClient('a');
  t.teardown(() => c.end());
  const errors: unknown[] = [];
  c.on('error', (e) => errors.push(e));
  await c.query('BEGIN');
  const pid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
  await pgs.query('SELECT pg_terminate_backend($1)', [pid]);
  const err = await c.query('SELECT 1').then(
    () => null,
    (e: { code?: string; severity?: string }) => e,
  );
  t.ok(err, 'the statement in the dead transaction fails');
  t.equal(err?.severity, 'ERROR', 'as an ERROR, not a FATAL');
  // Depending on whether the backend was already gone when the statement went out: the
  // proxy's "transaction was rolled back", its "server connection lost", or the server's 57P01.
  t.match(err?.code ?? '', /^(08006|57P01)$/);
  t.match((err as { message?: string } | null)?.message ?? '', /server connection lost|terminating connection/);
  const r = await c.query(CHECK);
  t.equal(r.rows[0].t, 'a', 'the next transaction runs on a healthy connection with the pins');
  t.same(errors, [], 'the client connection never broke');
});

t.test('a server connection that dies during a statement: that statement fails, the client carries on', async (t) => {
  const c = await tenantClient('b');
  t.teardown(() => c.end());
  const errors: unknown[] = [];
  c.on('error', (e) => errors.push(e));
  const pid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
  void pid;
  const running = c.query('SELECT pg_sleep(5), pg_backend_pid()').then(
    () => null,
    (e: { code?: string; severity?: string }) => e,
  );
  await new Promise((r) => setTimeout(r, 300));
  await pgs.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(5)%'");
  const err = await running;
  t.equal(err?.severity, 'ERROR');
  t.equal(err?.code, '57P01', "PostgreSQL's own error, as an ERROR");
  t.equal((await c.query(CHECK)).rows[0].t, 'b');
  t.same(errors, []);
});

t.test('cancel reaches the connection the client is using in this transaction', async (t) => {
  const c = await tenantClient('b');
  t.teardown(() => c.end());
  await c.query('SELECT 1');
  const started = Date.now();
  const sleeping = c.query('SELECT pg_sleep(10)').then(
    () => null,
    (e: { code?: string }) => e,
  );
  await new Promise((r) => setTimeout(r, 300));
  const canceller = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'tenant_b', password: 'pw-b', database: 'postgres' });
  // node-postgres cancels with the BackendKeyData it received from the proxy.
  const key = c as unknown as { processID: number; secretKey: number };
  await new Promise<void>((resolve) => {
    const con = new (pg as unknown as { Connection: new () => { connect(p: number, h: string): void; on(e: string, f: () => void): void; cancel(pid: number, key: number): void; end(): void } }).Connection();
    con.on('connect', () => {
      con.cancel(key.processID, key.secretKey);
      resolve();
    });
    con.connect(proxy.port, '127.0.0.1');
  });
  await canceller.end().catch(() => {});
  const err = await sleeping;
  t.equal(err?.code, '57014', 'query canceled');
  t.ok(Date.now() - started < 2000, 'returned in under 2 s');
  t.equal((await c.query(CHECK)).rows[0].t, 'b', 'connection usable after the cancel');
});

t.test('named prepared statements keep working (the client stays on its connection)', async (t) => {
  const c = await tenantClient('c');
  t.teardown(() => c.end());
  const q = { name: 'by-v', text: 'SELECT v, current_setting($2) AS t FROM tenant_rows WHERE v = $1', values: [3, 'app.tenant_id'] };
  for (let i = 0; i < 5; i++) {
    await c.query('BEGIN');
    const r = await c.query(q);
    await c.query('COMMIT');
    t.same(r.rows, [{ v: 3, t: 'c' }]);
  }
});

t.test('protocol-level prepared statements follow the client across server connections', async (t) => {
  const clients = await Promise.all(TENANTS.map((x) => tenantClient(x)));
  t.teardown(() => Promise.all(clients.map((c) => c.end())));
  const q = (v: number) => ({ name: 'by-v', text: "SELECT v, current_setting('app.tenant_id') AS t, pg_backend_pid() AS pid FROM tenant_rows WHERE v = $1", values: [v] });
  const pids = new Set<number>();
  for (let round = 0; round < 30; round++) {
    await Promise.all(
      clients.map(async (c, i) => {
        const v = 1 + ((round + i) % 5);
        const r = await c.query(q(v));
        pids.add(r.rows[0].pid);
        t.same([r.rows[0].v, r.rows[0].t], [v, TENANTS[i]], 'right row, right tenant');
      }),
    );
  }
  t.ok(pids.size > 1, `the statement ran on ${pids.size} server connections`);
});

t.test('postgres.js (prepares every statement by default) in transaction mode', async (t) => {
  const { default: postgres } = await import('postgres');
  const sql = postgres({ host: '127.0.0.1', port: proxy.port, user: 'tenant_b', password: 'pw-b', database: 'postgres', max: 4, prepare: true, onnotice: () => {} });
  t.teardown(() => sql.end({ timeout: 5 }));
  for (let round = 0; round < 20; round++) {
    const rows = await Promise.all(
      [1, 2, 3, 4, 5].map((v) => sql`SELECT v, current_setting('app.tenant_id') AS t FROM tenant_rows WHERE v = ${v}`),
    );
    rows.forEach((r, i) => t.same([r[0]?.v, r[0]?.t], [i + 1, 'b']));
  }
  const inTx = await sql.begin(async (tx) => {
    await tx`SELECT 1`;
    return tx`SELECT count(*)::int AS n FROM tenant_rows`;
  });
  t.equal(inTx[0]?.n, 5, 'a transaction through sql.begin');
});

t.test('a name prepared twice is an error, as in PostgreSQL; Close frees it', async (t) => {
  const c = await tenantClient('a');
  t.teardown(() => c.end());
  // node-postgres never re-sends Parse for a name it knows: speak the protocol through its
  // connection object; with no query of its own active, the client reports errors as events.
  const raw = (c as unknown as { connection: { parse(m: object): void; sync(): void; close(m: object): void; once(e: string, f: () => void): void } }).connection;
  const errors: { code?: string }[] = [];
  // Server errors carry a SQLSTATE; node-postgres also complains (no code) about replies it did not ask for.
  c.on('error', (e: Error & { code?: string }) => e.code && errors.push(e));
  let parsed = 0;
  (raw as unknown as { on(e: string, f: () => void): void }).on('parseComplete', () => parsed++);
  const ready = () => new Promise<void>((resolve) => raw.once('readyForQuery', resolve));
  await c.query({ name: 'dup', text: 'SELECT 1 AS one', values: [] });
  parsed = 0;
  let done = ready();
  raw.parse({ name: 'dup', text: 'SELECT 2', types: [] });
  raw.sync();
  await done;
  t.same(errors.map((e) => e.code), ['42P05'], 'prepared statement "dup" already exists');
  t.equal(parsed, 0);
  done = ready();
  raw.close({ type: 'S', name: 'dup' });
  raw.parse({ name: 'dup', text: 'SELECT 2', types: [] });
  raw.sync();
  await done;
  t.same(errors.map((e) => e.code), ['42P05'], 'no new error');
  t.equal(parsed, 1, 'after Close the name can be prepared again');
});

t.test("a client cannot reach another client's prepared statement on a shared connection", async (t) => {
  const victim = await tenantClient('a');
  const thief = await tenantClient('b');
  t.teardown(async () => {
    await victim.end();
    await thief.end();
  });
  await victim.query({ name: 'secret', text: "SELECT 'victim-statement' AS s", values: [] });
  // On whichever connection the thief gets, look for statements prepared for others.
  const names = (await thief.query('SELECT name FROM pg_prepared_statements')).rows.map((r) => r.name as string);
  for (const name of [...names, 'secret']) {
    const err = await thief.query({ name, text: 'SELECT 1', values: [] }).then(
      (r) => (r.rows[0]?.s === 'victim-statement' ? { code: 'LEAKED' } : null),
      (e: { code?: string; message: string }) => e,
    );
    t.not(err?.code, 'LEAKED', `Bind to "${name}" does not run another client's statement`);
  }
  // A client that never prepared anything binds straight to a server-side name it saw.
  const fresh = await tenantClient('c');
  t.teardown(() => fresh.end());
  const raw = (fresh as unknown as { connection: { bind(m: object): void; execute(m: object): void; sync(): void; once(e: string, f: () => void): void } }).connection;
  const errors: { code?: string; message: string }[] = [];
  fresh.on('error', (e: Error & { code?: string }) => e.code && errors.push(e));
  const ready = new Promise<void>((resolve) => raw.once('readyForQuery', resolve));
  raw.bind({ statement: names[0] ?? 'secret', values: [] });
  raw.execute({});
  raw.sync();
  await ready;
  t.equal(errors[0]?.code, '26000', 'Bind of a name this client never prepared: does not exist');
  t.match(errors[0]?.message ?? '', /prepared statement ".*" does not exist/);
});

// The relay looks at CommandComplete only while a DDL audit waits for its tag: a connection
// that needs no settings switch must start looking before the DDL's answer arrives.
t.test('DDL is audited with its command tag on a connection that needs no switch', async (t) => {
  await pgs.query(`GRANT CREATE ON SCHEMA public TO ${SERVER_ROLE}`);
  const c = await connect('plain', 'plain-pw');
  t.teardown(() => c.end());
  const ddlEvents = () => proxy.audit.lines.filter((l) => l.event === 'ddl' && String(l.statement).includes('tx_ddl_probe'));
  await c.query('SELECT 1'); // the connection now holds this client's settings: the next lease prefers it
  await c.query('CREATE TABLE tx_ddl_probe (id int)');
  await c.query({ text: 'ALTER TABLE tx_ddl_probe ADD COLUMN note text', values: [], queryMode: 'extended' } as pg.QueryConfig);
  await c.query('SELECT 1; DROP TABLE tx_ddl_probe');
  await new Promise((r) => setTimeout(r, 100));
  t.same(
    ddlEvents().map((e) => [e.outcome, e.command_tag]),
    [
      ['ok', 'CREATE TABLE'],
      ['ok', 'ALTER TABLE'],
      ['ok', 'DROP TABLE'],
    ],
  );
});

// A statement prepared once runs again with Bind/Execute alone: each run is an event of its
// own, with its own outcome (before, only the Parse was recorded).
t.test('DDL prepared once is audited at every run, with a tag answered before its Sync', async (t) => {
  await pgs.query(`GRANT CREATE ON SCHEMA public TO ${SERVER_ROLE}`);
  const c = await connect('plain', 'plain-pw');
  t.teardown(() => c.end());
  const ddlEvents = () => proxy.audit.lines.filter((l) => l.event === 'ddl' && String(l.statement).includes('tx_runs_probe'));
  const mk = { name: 'mk_runs', text: 'CREATE TABLE tx_runs_probe (id int)' };
  const rm = { name: 'rm_runs', text: 'DROP TABLE tx_runs_probe' };
  await c.query(mk); // Parse, Bind, Execute, Sync
  const dup = await c.query(mk).then(() => null, (e: { code?: string }) => e.code); // Bind, Execute, Sync
  t.equal(dup, '42P07');
  await c.query(rm);
  await c.query('BEGIN');
  await c.query(mk);
  await c.query('ROLLBACK');
  await c.query(mk);
  await c.query({ name: 'sel_runs', text: 'SELECT 1' });
  // Prepared with Parse + Sync, then run with a Flush before the Sync: the tag arrives first.
  // (Raw protocol on a client of its own: pg.Client reports replies it did not ask for as errors.)
  const r = await connect('plain', 'plain-pw');
  t.teardown(() => r.end());
  r.on('error', () => {});
  const raw = (r as unknown as { connection: { parse(m: object): void; bind(m: object): void; execute(m: object): void; flush(): void; sync(): void; once(e: string, f: (m: { text?: string }) => void): void } }).connection;
  const rfq = () => new Promise<void>((resolve) => raw.once('readyForQuery', () => resolve()));
  let ready = rfq();
  raw.parse({ name: 'rm_raw', text: rm.text, types: [] });
  raw.sync();
  await ready;
  const tag = new Promise<string | undefined>((resolve) => raw.once('commandComplete', (m) => resolve(m.text)));
  raw.bind({ statement: 'rm_raw', portal: '', values: [] });
  raw.execute({ portal: '' });
  raw.flush();
  t.equal(await tag, 'DROP TABLE', 'answered before the Sync');
  ready = rfq();
  raw.sync();
  await ready;
  await new Promise((r) => setTimeout(r, 100));
  t.same(
    ddlEvents().map((e) => [String(e.statement).split(' ')[0], e.outcome, e.command_tag ?? e.sqlstate]),
    [
      ['CREATE', 'ok', 'CREATE TABLE'],
      ['CREATE', 'error', '42P07'],
      ['DROP', 'ok', 'DROP TABLE'],
      ['CREATE', 'ok', 'CREATE TABLE'], // in the block later rolled back: the run itself succeeded
      ['CREATE', 'ok', 'CREATE TABLE'],
      ['DROP', 'ok', ''], // rm_raw prepared: nothing ran yet
      ['DROP', 'ok', 'DROP TABLE'], // and run
    ],
  );

  // (round 8) Close and a new Parse of the name in one batch, then Bind/Execute: the new
  // statement ran, and is the one recorded as run (the old one's group was credited).
  const before = proxy.audit.lines.length;
  ready = rfq();
  raw.parse({ name: 'swap_raw', text: 'SELECT 1', types: [] });
  raw.sync();
  await ready;
  ready = rfq();
  (raw as unknown as { close(m: object): void }).close({ type: 'S', name: 'swap_raw' });
  raw.parse({ name: 'swap_raw', text: mk.text, types: [] });
  raw.bind({ statement: 'swap_raw', portal: '', values: [] });
  raw.execute({ portal: '' });
  raw.sync();
  await ready;
  await new Promise((r) => setTimeout(r, 100));
  t.same(
    proxy.audit.lines.slice(before).filter((l) => l.event === 'ddl').map((e) => [e.statement, e.outcome, e.command_tag ?? e.sqlstate]),
    [[mk.text, 'ok', 'CREATE TABLE']],
    'the run is credited to the statement that ran',
  );
  t.same((await pgs.query("SELECT to_regclass('tx_runs_probe') IS NOT NULL AS made")).rows, [{ made: true }]);
});
