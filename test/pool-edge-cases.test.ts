// Transaction pooling under the protocol's corner cases, on a pool of ONE server connection
// so that every client shares it: extended-protocol work not yet closed by a Sync, COPY IN
// through the extended protocol, the unnamed statement, failed Parses, fast-path function
// calls, settings made under another client's client_encoding, and the clear of a connection
// holding too many statements.

import { sendCancel } from './helpers/cancel.js';
import net from 'node:net';
import t from 'tap';
import type { Test } from 'tap';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, SERVER_ROLE, startProxy } from './helpers/proxy.js';

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
await pgs.query(`CREATE TABLE copied (x int); GRANT ALL ON copied TO ${SERVER_ROLE}`);
// Calling a plpgsql function loads plpgsql in that backend (a DO block would, but DO is refused while variables are pinned).
await pgs.query(`CREATE FUNCTION load_plpgsql() RETURNS int LANGUAGE plpgsql AS $$BEGIN RETURN 1; END$$; GRANT EXECUTE ON FUNCTION load_plpgsql() TO ${SERVER_ROLE}`);
const proxy = await startProxy(t, pgs, {
  users: [
    { name: 'tenant_a', password: 'pw-a', pins: { 'app.tenant_id': 'a' } },
    { name: 'tenant_b', password: 'pw-b', pins: { 'app.tenant_id': 'テナント-b' } },
  ],
  extra: { pool: { mode: 'transaction', size: 1, acquire_timeout_ms: 5000 } },
});

interface Raw {
  parse(m: object): void;
  bind(m: object): void;
  execute(m: object): void;
  describe(m: object): void;
  sync(): void;
  sendCopyFromChunk(b: Buffer): void;
  endCopyFrom(): void;
  stream: { write(b: Buffer): void };
  once(e: string, f: (m: never) => void): void;
  on(e: string, f: (m: never) => void): void;
}

async function connect(user: string, password: string, extra: Partial<pg.ClientConfig> = {}) {
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user, password, database: 'postgres', ...extra });
  await c.connect();
  const errors: { code?: string; message: string }[] = [];
  c.on('error', (e: Error & { code?: string }) => e.code && errors.push(e));
  const raw = (c as unknown as { connection: Raw }).connection;
  const ready = () => new Promise<{ status: string }>((resolve) => raw.once('readyForQuery', resolve as (m: never) => void));
  /** Sends raw protocol messages and waits for the ReadyForQuery that ends them. */
  const roundTrip = async (send: () => void) => {
    const r = ready();
    send();
    return r;
  };
  return { c, raw, errors, ready, roundTrip };
}

/** Sends a CancelRequest with the key the proxy gave this client. */
function cancel(c: pg.Client): Promise<void> {
  const key = c as unknown as { processID: number; secretKey: number };
  return sendCancel(proxy.port, key.processID, key.secretKey);
}

/** What a raw client receives from now on, in order: `E <sqlstate>` for errors, `Z` for ReadyForQuery. */
function recordAnswers(raw: Raw): string[] {
  const answers: string[] = [];
  raw.on('errorMessage', (m: never) => answers.push(`E ${(m as { code: string }).code}`));
  raw.on('readyForQuery', () => answers.push('Z'));
  return answers;
}

/** A client of each tenant, ended in teardown. */
async function twoTenants(t: { teardown(f: () => unknown): void }) {
  const a = await connect('tenant_a', 'pw-a');
  const b = await connect('tenant_b', 'pw-b');
  t.teardown(async () => {
    await a.c.end();
    await b.c.end();
  });
  return { a, b };
}
const pinOf = async (c: pg.Client) => (await c.query("SELECT current_setting('app.tenant_id') AS v")).rows[0].v as string;

/**
 * A simple query spoken on the raw connection: node-postgres stops being queryable once it
 * saw replies it did not ask for, so after raw protocol work the checks go this way too.
 */
async function rawQuery(conn: Awaited<ReturnType<typeof connect>>, sql: string): Promise<string[]> {
  const rows: string[] = [];
  const onRow = ((m: { fields: (string | Buffer)[] }) => rows.push(String(m.fields[0]))) as (m: never) => void;
  conn.raw.on('dataRow', onRow);
  const r = conn.ready();
  const text = Buffer.from(sql + '\0');
  const head = Buffer.from([0x51, 0, 0, 0, 0]);
  head.writeInt32BE(4 + text.length, 1);
  conn.raw.stream.write(Buffer.concat([head, text]));
  await r;
  (conn.raw as unknown as { off(e: string, f: unknown): void }).off('dataRow', onRow);
  return rows;
}

t.test('extended-protocol work not closed by a Sync keeps the connection', async (t) => {
  const { a, b } = await twoTenants(t);
  await a.roundTrip(() => {
    // A simple query, then BEGIN through the extended protocol with no Sync yet.
    a.raw.stream.write(Buffer.from([0x51, 0, 0, 0, 13, ...Buffer.from('SELECT 1\0')]));
    a.raw.parse({ text: 'BEGIN' });
    a.raw.bind({});
    a.raw.execute({});
  });
  let bDone = false;
  const bPin = pinOf(b.c).then((v) => ((bDone = true), v));
  await new Promise((res) => setTimeout(res, 300));
  t.notOk(bDone, 'the other client waits: the connection is still mid-batch');
  t.equal((await a.roundTrip(() => a.raw.sync())).status, 'T', 'BEGIN took effect on the connection that ran it');
  await a.roundTrip(() => {
    a.raw.stream.write(Buffer.from([0x51, 0, 0, 0, 11, ...Buffer.from('COMMIT\0')]));
  });
  t.equal(await bPin, 'テナント-b', 'the other client then gets the connection with its own value');
  t.same(a.errors, []);
});

t.test('COPY FROM STDIN through the extended protocol releases the connection afterwards', async (t) => {
  const { a, b } = await twoTenants(t);
  const copyIn = new Promise((res) => a.raw.once('copyInResponse', res as (m: never) => void));
  a.raw.parse({ text: 'COPY copied FROM STDIN' });
  a.raw.bind({});
  a.raw.execute({});
  a.raw.sync();
  await copyIn;
  await a.roundTrip(() => {
    a.raw.sendCopyFromChunk(Buffer.from('1\n2\n'));
    a.raw.endCopyFrom();
    a.raw.sync();
  });
  t.equal((await b.c.query('SELECT count(*)::int AS n FROM copied')).rows[0].n, 2, 'the next client gets the connection');
  t.same(await rawQuery(a, "SELECT current_setting('app.tenant_id')"), ['a'], 'and the copying client keeps working');
});

t.test("the unnamed statement never runs for another client; a client's own is replayed", async (t) => {
  const { a, b } = await twoTenants(t);
  await a.roundTrip(() => {
    a.raw.parse({ text: "SELECT 'a-statement' AS s" });
    a.raw.sync();
  });
  await pinOf(b.c); // the connection passes through another client's transaction
  const rows: string[] = [];
  b.raw.on('dataRow', ((m: { fields: string[] }) => rows.push(String(m.fields[0]))) as (m: never) => void);
  await b.roundTrip(() => {
    b.raw.bind({});
    b.raw.execute({});
    b.raw.sync();
  });
  t.same(rows, [], "B did not run A's statement");
  t.equal(b.errors[0]?.code, '26000');
  t.match(b.errors[0]?.message ?? '', /unnamed prepared statement does not exist/);
  const aRows: string[] = [];
  a.raw.on('dataRow', ((m: { fields: string[] }) => aRows.push(String(m.fields[0]))) as (m: never) => void);
  await a.roundTrip(() => {
    a.raw.bind({});
    a.raw.execute({});
    a.raw.sync();
  });
  t.same(aRows, ['a-statement'], 'A still finds its own unnamed statement');
  t.same(a.errors, []);
});

t.test('a name whose Parse failed can be prepared again', async (t) => {
  const a = await connect('tenant_a', 'pw-a');
  t.teardown(() => a.c.end());
  await a.roundTrip(() => {
    a.raw.parse({ name: 's1', text: 'SELEC 1' });
    a.raw.sync();
  });
  t.equal(a.errors[0]?.code, '42601');
  await a.roundTrip(() => {
    a.raw.parse({ name: 's1', text: 'SELECT 1' });
    a.raw.sync();
  });
  t.equal(a.errors.length, 1, 'no "already exists"');
});

t.test('fast-path FunctionCall of set_config is refused', async (t) => {
  const a = await connect('tenant_a', 'pw-a');
  t.teardown(() => a.c.end());
  const args = ['app.tenant_id', 'b', 'false'].map((v) => Buffer.from(v));
  const body = Buffer.concat([
    Buffer.from([0, 0, 0x08, 0x1e]), // OID 2078 set_config
    Buffer.from([0, 0]), // argument formats: all text
    Buffer.from([0, 3]),
    ...args.flatMap((a) => [Buffer.from([0, 0, 0, a.length]), a]),
    Buffer.from([0, 0]), // result format text
  ]);
  const frame = Buffer.concat([Buffer.from('F'), Buffer.from([0, 0, 0, 0]), body]);
  frame.writeInt32BE(frame.length - 1, 1);
  await a.roundTrip(() => {
    a.raw.stream.write(frame);
  });
  t.equal(a.errors[0]?.code, '42501');
  t.same(await rawQuery(a, "SELECT current_setting('app.tenant_id')"), ['a'], 'pin unchanged, connection usable');
});

t.test("settings are applied correctly whatever client_encoding the previous client left", async (t) => {
  // (LATIN1 cannot even spell the pin; SJIS and its kind are refused: test/client-encoding.test.ts.)
  const latin1 = await connect('tenant_a', 'pw-a', { options: '-c client_encoding=LATIN1' } as Partial<pg.ClientConfig>);
  t.teardown(() => latin1.c.end());
  await latin1.c.query('SELECT 1');
  const b = await connect('tenant_b', 'pw-b');
  t.teardown(() => b.c.end());
  t.equal(await pinOf(b.c), 'テナント-b', 'non-ASCII pin intact after a LATIN1 client used the connection');
  t.equal(await pinOf(b.c), 'テナント-b');
});

t.test('SET of a startup parameter follows the client instead of pinning it to a connection', async (t) => {
  const { a, b } = await twoTenants(t);
  await a.c.query("SET application_name = 'jdbc-like'");
  await a.c.query('SET extra_float_digits TO 2');
  const bad = await a.c.query("SET extra_float_digits = 'lots'").then(
    () => null,
    (e: { code?: string }) => e,
  );
  t.equal(bad?.code, '22023', 'an invalid value is refused by the server and not remembered');
  for (let i = 0; i < 3; i++) {
    t.equal((await b.c.query("SELECT current_setting('application_name') AS v")).rows[0].v, '', 'another client does not inherit it');
    const r = await a.c.query("SELECT current_setting('application_name') AS app, current_setting('extra_float_digits') AS efd");
    t.same(r.rows[0], { app: 'jdbc-like', efd: '2' }, 'the client keeps it on every transaction');
  }
});

t.test('a SET inside a transaction is not taken for a setting the client keeps; a ROLLBACK undoes it', async (t) => {
  const { a, b } = await twoTenants(t);
  const app = async () => (await a.c.query("SELECT current_setting('application_name') AS v")).rows[0].v as string;
  await a.c.query('BEGIN');
  await a.c.query("SET application_name = 'rolled back'");
  await a.c.query('ROLLBACK');
  t.equal(await app(), '', 'undone');
  // b's statement would take the connection and switch it back and forth: a keeps its
  // connection instead (sticky), so b waits until a is done.
  let bDone = false;
  const bRan = pinOf(b.c).then((v) => ((bDone = true), v));
  await new Promise((r) => setTimeout(r, 200));
  t.equal(await app(), '', 'still undone on the next statement');
  t.notOk(bDone, 'a kept its server connection');
  await a.c.end();
  t.equal(await bRan, 'テナント-b', 'b then gets it, with its own settings');
  t.equal((await b.c.query("SELECT current_setting('application_name') AS v")).rows[0].v, '', "and none of a's");
});

t.test('a batch cut short by a lost server connection is answered at once, and its Sync with ReadyForQuery alone', async (t) => {
  const a = await connect('tenant_a', 'pw-a');
  t.teardown(() => a.c.end().catch(() => undefined));
  const answers = recordAnswers(a.raw);
  a.raw.parse({ text: 'INSERT INTO copied SELECT 4242 FROM pg_sleep(2)' });
  a.raw.bind({});
  a.raw.execute({});
  (a.raw as unknown as { flush(): void }).flush(); // a driver waiting for the results, without a Sync
  await new Promise((r) => setTimeout(r, 300));
  await pgs.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'INSERT INTO copied SELECT 4242%'");
  const until = Date.now() + 3000;
  while (!answers.includes('E 08006') && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
  t.same(answers, ['E 08006'], 'the error, without waiting for a Sync');
  await a.roundTrip(() => a.raw.sync());
  t.same(answers, ['E 08006', 'Z'], 'the Sync: ReadyForQuery, no second error');
  t.equal((await pgs.query('SELECT count(*)::int AS n FROM copied WHERE x = 4242')).rows[0].n, 0, 'the INSERT did not run');
  t.equal((await rawQuery(a, 'SELECT 1'))[0], '1', 'the client goes on');
});

t.test('SQL DEALLOCATE of a driver-prepared statement frees the client\'s name', async (t) => {
  const a = await connect('tenant_a', 'pw-a');
  t.teardown(() => a.c.end());
  await a.roundTrip(() => {
    a.raw.parse({ name: 'n1', text: 'SELECT 1' });
    a.raw.sync();
  });
  t.same(await rawQuery(a, 'DEALLOCATE n1'), [], 'DEALLOCATE succeeds');
  await a.roundTrip(() => {
    a.raw.parse({ name: 'n1', text: 'SELECT 2' });
    a.raw.sync();
  });
  t.same(a.errors, [], 'the name can be prepared again');
  await a.roundTrip(() => {
    a.raw.parse({ name: 'n2', text: 'SELECT 3' });
    a.raw.sync();
  });
  t.same(await rawQuery(a, 'DEALLOCATE ALL'), []);
  t.same(await rawQuery(a, 'DEALLOCATE n2'), [], '(answered by the server)');
  t.equal(a.errors.at(-1)?.code, '26000', 'after DEALLOCATE ALL the names are gone, as in PostgreSQL');
});

t.test('the same through the extended protocol (as pgJDBC and psycopg 3 send them)', async (t) => {
  const { a, b } = await twoTenants(t);
  await a.roundTrip(() => {
    a.raw.parse({ text: 'SET extra_float_digits = 3' });
    a.raw.bind({});
    a.raw.execute({});
    a.raw.sync();
  });
  t.same(await rawQuery(b, "SELECT current_setting('extra_float_digits')"), ['1'], 'not inherited by another client (1 is the default)');
  t.same(await rawQuery(a, "SELECT current_setting('extra_float_digits')"), ['3'], 'kept for the client');
  await a.roundTrip(() => {
    a.raw.parse({ name: 'p9', text: 'SELECT 9' });
    a.raw.sync();
  });
  await a.roundTrip(() => {
    a.raw.parse({ text: 'DEALLOCATE p9' });
    a.raw.bind({});
    a.raw.execute({});
    a.raw.sync();
  });
  t.same(a.errors, [], 'DEALLOCATE of a driver-prepared name through Parse/Bind/Execute works');
});


t.test('a cancel reaches a statement still waiting for a server connection', async (t) => {
  const { a, b } = await twoTenants(t);
  await a.c.query('BEGIN'); // holds the only server connection
  const started = Date.now();
  const waiting = b.c.query('SELECT pg_sleep(5)').then(
    () => null,
    (e: { code?: string }) => e,
  );
  await new Promise((r) => setTimeout(r, 200));
  await cancel(b.c);
  const err = await waiting;
  t.equal(err?.code, '57014', 'canceled before it ever ran');
  t.ok(Date.now() - started < 2000);
  await a.c.query('COMMIT');
  t.equal(await pinOf(b.c), 'テナント-b', 'and the client carries on');
});

t.test('a Parse cancelled while waiting for a server connection prepared nothing', async (t) => {
  const { a, b } = await twoTenants(t);
  const answers = recordAnswers(b.raw);
  const named = (statement: string) => serialize.bind({ statement, portal: '' });
  const settle = async (n: number) => {
    const end = Date.now() + 5000;
    while (answers.filter((x) => x === 'Z').length < n && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
  };
  b.raw.stream.write(Buffer.concat([serialize.parse({ name: 'w1', text: 'SELECT 1', types: [] }), serialize.sync()]));
  await settle(1);
  await a.c.query('BEGIN'); // holds the only server connection
  // A new statement, and a second Parse of w1 (which would have failed with 42P05).
  b.raw.stream.write(Buffer.concat([serialize.parse({ name: 'w2', text: 'SELECT 2', types: [] }), serialize.parse({ name: 'w1', text: 'SELECT 3', types: [] }), serialize.sync()]));
  await new Promise((r) => setTimeout(r, 200));
  await cancel(b.c);
  await settle(2);
  await a.c.query('COMMIT');
  b.raw.stream.write(Buffer.concat([serialize.close({ type: 'S', name: 'w1' }), serialize.sync(), named('w1'), serialize.execute({}), serialize.sync(), named('w2'), serialize.execute({}), serialize.sync()]));
  await settle(5);
  t.same(answers, ['Z', 'E 57014', 'Z', 'Z', 'E 26000', 'Z', 'E 26000', 'Z'], 'w1 closed (not replaced by the Parse that never ran), w2 never prepared');
});

t.test('a cancel while waiting answers every Query the client pipelined, each with its own ReadyForQuery', async (t) => {
  const { a, b } = await twoTenants(t);
  await a.c.query('BEGIN'); // holds the only server connection
  const answers = recordAnswers(b.raw);
  const both = new Promise<void>((resolve) => b.raw.on('readyForQuery', () => answers.filter((x) => x === 'Z').length === 2 && resolve()));
  // Two Query messages in one write, as a pipelining driver sends them.
  b.raw.stream.write(Buffer.concat([serialize.query('SELECT 1'), serialize.query('SELECT 2')]));
  await new Promise((r) => setTimeout(r, 200));
  await cancel(b.c);
  await Promise.race([both, new Promise((r) => setTimeout(r, 5000))]);
  t.same(answers, ['E 57014', 'Z', 'E 57014', 'Z'], 'two errors, two ReadyForQuery');
  await a.c.query('COMMIT');
  // (pg.Client itself is confused by answers to queries it did not send: raw from here on.)
  const rows = new Promise<unknown>((resolve) => b.raw.once('dataRow', resolve as (m: never) => void));
  b.raw.stream.write(serialize.query('SELECT 3'));
  t.ok(await rows, 'and the session carries on');
});

t.test('a cancel while waiting, of Parse/Bind/Execute not yet synced, answers the Sync that follows', async (t) => {
  const { a, b } = await twoTenants(t);
  await a.c.query('BEGIN'); // holds the only server connection
  const answers = recordAnswers(b.raw);
  b.raw.on('parseComplete', () => answers.push('1')); // none may arrive: the Parse never ran
  b.raw.parse({ text: 'SELECT 1' });
  b.raw.bind({});
  b.raw.execute({});
  b.raw.stream.write(serialize.flush());
  await new Promise((r) => setTimeout(r, 200));
  await cancel(b.c);
  const ready = b.ready();
  b.raw.sync();
  await Promise.race([ready, new Promise((r) => setTimeout(r, 5000))]);
  t.same(answers, ['E 57014', 'Z'], 'the cancelled work ends in an error at its Sync, as in PostgreSQL');
  await a.c.query('COMMIT');
});

t.test("a cancel never hits the next client's statement on the same connection", async (t) => {
  const { a, b } = await twoTenants(t);
  let hits = 0;
  for (let i = 0; i < 20; i++) {
    const running = a.c.query('SELECT pg_sleep(0.05)').catch(() => null);
    const next = b.c.query('SELECT pg_sleep(0.02), 1 AS ok').then(
      () => null,
      (e: { code?: string }) => e,
    );
    await new Promise((r) => setTimeout(r, 30));
    await cancel(a.c);
    await running;
    if ((await next)?.code === '57014') hits++;
  }
  t.equal(hits, 0, "no cancel meant for A's statement canceled B's");
});

t.test('past 1000 statements on a connection it is cleared (DEALLOCATE ALL), and a client re-prepares on demand', async (t) => {
  const { a, b } = await twoTenants(t);
  // Tenants alternate, so every lease switches pins too: both hidden statements go out together.
  for (let i = 0; i <= 1000; i++) {
    const who = i % 2 === 0 ? a : b;
    const r = await who.c.query({ name: `s${i}`, text: `SELECT ${i}::int AS n, current_setting('app.tenant_id') AS t` });
    if (r.rows[0].n !== i) t.fail(`statement ${i} answered ${r.rows[0].n}`);
  }
  const again = await a.c.query({ name: 's0', text: 'SELECT 0::int AS n, current_setting(\'app.tenant_id\') AS t' });
  t.same(again.rows, [{ n: 0, t: 'a' }], 'a statement prepared before the clear still works, with the right tenant');
  const other = await b.c.query({ name: 's999', text: 'SELECT 999::int AS n, current_setting(\'app.tenant_id\') AS t' });
  t.same(other.rows, [{ n: 999, t: 'テナント-b' }]);
  const held = await a.c.query('SELECT count(*)::int AS n FROM pg_prepared_statements');
  t.ok(held.rows[0].n < 10, `the server connection holds ${held.rows[0].n} statements after the clear, not 1000+`);
  t.same([...a.errors, ...b.errors], []);
});

/**
 * A proxy whose `placeholder` user pins plpgsql.tenant: a placeholder under a prefix an
 * extension reserves once loaded, so SET plpgsql.tenant works until plpgsql is loaded in that
 * backend, then fails. The pin is accepted at login and refused by the next switch on the same
 * server connection. Pool of one; `open` logs a client in to it.
 */
async function placeholderProxy(t: Test) {
  const own = await startProxy(t, pgs, {
    users: [
      { name: 'placeholder', password: 'pw-p', pins: { 'plpgsql.tenant': 'x' } },
      { name: 'tenant_a', password: 'pw-a', pins: { 'app.tenant_id': 'a' } },
    ],
    extra: {
      pool: { mode: 'transaction', size: 1, acquire_timeout_ms: 5000 },
      pinning: { variables: ['app.tenant_id', 'plpgsql.tenant'] },
      upstream: { require_primary: false }, // its check is a DO block, which would load plpgsql at once
    },
  });
  const open = async (user: string, password: string) => {
    const c = new pg.Client({ host: '127.0.0.1', port: own.port, user, password, database: 'postgres' });
    c.on('error', () => undefined);
    await c.connect();
    return c;
  };
  return { own, open };
}

t.test('a switch that fails fails the client\'s work, which never runs', async (t) => {
  await pgs.query(`CREATE TABLE ran (who text); GRANT ALL ON ran TO ${SERVER_ROLE}`);
  const { open } = await placeholderProxy(t);
  const p = await open('placeholder', 'pw-p');
  t.teardown(async () => {
    await p.end().catch(() => undefined);
    await pgs.query('DROP TABLE ran');
  });
  t.same((await p.query("SELECT current_setting('plpgsql.tenant') AS v")).rows, [{ v: 'x' }], 'the pin applies');
  const a = await open('tenant_a', 'pw-a');
  await a.query('SELECT load_plpgsql()'); // loads plpgsql on the one server connection
  await a.query("INSERT INTO ran VALUES ('a')");
  await a.end();
  const err = await p.query("INSERT INTO ran VALUES ('placeholder')").then(
    () => null,
    (e: Error & { code?: string; detail?: string }) => e,
  );
  t.equal(err?.code, '08006', 'the client gets an error for its statement');
  // (The switch failed inside its BEGIN block, status E: not a transaction of the client's.)
  // (Inline or separate, depending on what a left on the connection: either way not "the
  // transaction was rolled back", which would speak of a transaction of the client's.)
  t.match(err?.message, /^server connection lost(; the statement was not run)?$/, 'not "the transaction was rolled back"');
  t.match(err?.detail ?? '', /could not apply session settings: invalid configuration parameter name "plpgsql.tenant"/, 'saying why');
  t.same((await pgs.query<{ who: string }>('SELECT who FROM ran ORDER BY who')).rows, [{ who: 'a' }], 'its INSERT never ran');
  t.same((await p.query("SELECT current_setting('plpgsql.tenant') AS v")).rows, [{ v: 'x' }], 'its next statement runs, on a fresh server connection');
  const b = await open('tenant_a', 'pw-a');
  t.same((await b.query("SELECT current_setting('app.tenant_id') AS t")).rows, [{ t: 'a' }], 'other clients carry on');
  await b.end();
});

t.test('a client that leaves while its work waits for a server connection is gone at once; its work never runs', async (t) => {
  await pgs.query(`CREATE TABLE left_behind (who text); GRANT ALL ON left_behind TO ${SERVER_ROLE}`);
  t.teardown(() => pgs.query('DROP TABLE left_behind'));
  const holder = await connect('tenant_a', 'pw-a');
  t.teardown(() => holder.c.end().catch(() => undefined));
  await holder.c.query('BEGIN'); // the one server connection stays with it
  // As PgBouncer: work still waiting for a server connection goes with its client, whether it
  // closed the socket at once or said Terminate first (node-postgres end(), libpq PQfinish).
  for (const how of ['close', 'terminate']) {
    const before = proxy.server.runtime.clients;
    const leaver = await connect('tenant_a', 'pw-a');
    const stream = (leaver.c as unknown as { connection: { stream: { write(b: Buffer): void; end(): void; destroy(): void } } }).connection.stream;
    stream.write(serialize.query(`INSERT INTO left_behind VALUES ('${how}')`));
    await new Promise((r) => setTimeout(r, 100)); // read, queued, paused while it waits
    if (how === 'close') stream.destroy();
    else {
      stream.write(Buffer.from([0x58, 0, 0, 0, 4]));
      stream.end();
    }
    const end = Date.now() + 2000;
    while (proxy.server.runtime.clients > before && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    t.equal(proxy.server.runtime.clients, before, `${how}: the session ended while the server connection was still taken`);
  }
  // Left queued, each would get the connection only to hand it back, nested in the hand-over.
  t.equal(proxy.server.runtime.pools.find('postgres', SERVER_ROLE)?.stats.waiting ?? 0, 0, 'their requests left the queue with them');
  await holder.c.query('COMMIT');
  await holder.c.query('SELECT 1'); // the leases they asked for have come and gone
  t.same((await pgs.query('SELECT who FROM left_behind')).rows, [], 'their INSERTs never ran');
});

t.test('a client that vanishes while both directions are backed up ends its session and frees the connection', async (t) => {
  // It stops reading a big result (the proxy stops reading the server, which stops reading
  // too, blocked sending), keeps writing statements (held by the paused session), then goes.
  const before = proxy.server.runtime.clients;
  const c = await connect('tenant_a', 'pw-a');
  const sock = (c.c as unknown as { connection: { stream: net.Socket } }).connection.stream;
  sock.pause();
  sock.write(serialize.query("SELECT repeat('x', 2000) FROM generate_series(1, 200000)"));
  await new Promise((r) => setTimeout(r, 300));
  const filler = Buffer.concat(Array.from({ length: 4096 }, () => serialize.query('SELECT 1')));
  for (let i = 0; i < 100; i++) sock.write(filler);
  await new Promise((r) => setTimeout(r, 500));
  sock.destroy();
  const end = Date.now() + 3000;
  while (proxy.server.runtime.clients > before && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  t.equal(proxy.server.runtime.clients, before, 'the session ended');
  const next = await connect('tenant_b', 'pw-b');
  t.equal(await pinOf(next.c), 'テナント-b', 'and the one server connection serves the next client');
  await next.c.end();
});

t.test("a client's statement sent right before its Terminate runs, even when it is still being written to the server", async (t) => {
  await pgs.query(`CREATE TABLE before_leaving (n int, body text); GRANT ALL ON before_leaving TO ${SERVER_ROLE}`);
  t.teardown(() => pgs.query('DROP TABLE before_leaving'));
  // 8 MiB of text: more than the kernel takes at once, so part of it is still queued in the
  // proxy when the Terminate arrives and the server connection is let go.
  const big = 'x'.repeat(8 * 1024 * 1024);
  const other = await connect('tenant_a', 'pw-a');
  t.teardown(() => other.c.end());
  for (let n = 0; n < 3; n++) {
    // An idle server connection is at hand (the last one went with the previous leaver's
    // work in flight): work still waiting for a connection when its client leaves is dropped.
    await other.c.query('SELECT 1');
    const leaver = await connect('tenant_a', 'pw-a');
    leaver.raw.stream.write(Buffer.concat([serialize.query(`INSERT INTO before_leaving VALUES (${n}, '${big}')`), Buffer.from([0x58, 0, 0, 0, 4])]));
    const end = Date.now() + 10_000;
    let rows: { n: number; len: number }[] = [];
    while (rows.length <= n && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 50));
      rows = (await pgs.query<{ n: number; len: number }>('SELECT n, length(body) AS len FROM before_leaving ORDER BY n')).rows;
    }
    t.same(rows[n], { n, len: big.length }, `round ${n}: the INSERT ran, whole`);
  }
  t.same((await other.c.query('SELECT 1 AS one')).rows, [{ one: 1 }], 'the pool serves on');
});

t.test("statements read in the same write as the Terminate reach the server before the connection is let go", async (t) => {
  await pgs.query(`CREATE TABLE with_terminate (n int); GRANT ALL ON with_terminate TO ${SERVER_ROLE}`);
  t.teardown(() => pgs.query('DROP TABLE with_terminate'));
  const terminate = Buffer.from([0x58, 0, 0, 0, 4]);
  // Inside a transaction the client holds the server connection: its statements go straight
  // into the write batch of the read, which the Terminate in the same read used to drop.
  // The second round adds a refused SET, whose stand-in breaks the batch into two writes.
  const tails = [[], [serialize.query("SET app.tenant_id = 'x'")]];
  for (const [n, tail] of tails.entries()) {
    const leaver = await connect('tenant_a', 'pw-a');
    await leaver.c.query('BEGIN');
    leaver.raw.stream.write(Buffer.concat([serialize.query(`INSERT INTO with_terminate VALUES (${n})`), serialize.query('COMMIT'), ...tail, terminate]));
    const end = Date.now() + 5000;
    let rows: { n: number }[] = [];
    while (rows.length <= n && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 50));
      rows = (await pgs.query<{ n: number }>('SELECT n FROM with_terminate ORDER BY n')).rows;
    }
    t.same(rows[n], { n }, `round ${n}: the INSERT and its COMMIT ran`);
  }
  const next = await connect('tenant_b', 'pw-b');
  t.equal(await pinOf(next.c), 'テナント-b', 'the pool serves on');
  await next.c.end();
});

t.test('work sent before its Terminate (or close) behind a settings switch runs once the switch is done, with its own pin', async (t) => {
  await pgs.query(`CREATE TABLE left_switching (who text, n int); GRANT ALL ON left_switching TO ${SERVER_ROLE}`);
  t.teardown(() => pgs.query('DROP TABLE left_switching'));
  const terminate = Buffer.from([0x58, 0, 0, 0, 4]);
  // (A first login of a's may take the connection to log in, switching it then.)
  const first = await connect('tenant_a', 'pw-a');
  await first.c.end();
  const other = await connect('tenant_b', 'pw-b');
  t.teardown(() => other.c.end());
  for (let n = 0; n < 4; n++) {
    await other.c.query('SELECT 1'); // the one connection, idle, holds b's pin
    const before = proxy.server.runtime.clients;
    const leaver = await connect('tenant_a', 'pw-a');
    // Two statements cannot take the inline switch: the separate one goes out first, and the
    // work waits for its outcome (node-postgres's end() right after an unawaited query()).
    const work = serialize.query(`INSERT INTO left_switching SELECT current_setting('app.tenant_id'), ${n}; INSERT INTO left_switching VALUES ('second', ${n})`);
    // Round 0: in one write. Round 1: what follows the Terminate is never read. Round 2: the
    // client closes at once, before the switch is done. Round 3: it closes without a
    // Terminate (node-postgres's end() with a query under way), as PostgreSQL runs that too.
    const after = n === 1 ? Buffer.from('garbage that is not a message') : Buffer.alloc(0);
    leaver.raw.stream.write(Buffer.concat([work, ...(n === 3 ? [] : [terminate]), after]));
    if (n >= 2) (leaver.raw.stream as unknown as net.Socket).destroy();
    const end = Date.now() + 5000;
    let rows: { who: string }[] = [];
    while (rows.length < 2 && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 20));
      rows = (await pgs.query<{ who: string }>('SELECT who FROM left_switching WHERE n = $1 ORDER BY who', [n])).rows;
    }
    t.same(rows, [{ who: 'a' }, { who: 'second' }], `round ${n}: both statements ran, with the client's own pin`);
    while (proxy.server.runtime.clients > before && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    t.equal(proxy.server.runtime.clients, before, `round ${n}: then the session ended`);
  }
  t.equal(await pinOf(other.c), 'テナント-b', 'the pool serves on');
});

t.test('…and never runs when that switch fails: not with the previous client\'s settings', async (t) => {
  await pgs.query(`CREATE TABLE ran_leaving (who text); GRANT ALL ON ran_leaving TO ${SERVER_ROLE}`);
  const { own, open } = await placeholderProxy(t);
  const p = await open('placeholder', 'pw-p');
  t.teardown(async () => {
    await p.end().catch(() => undefined);
    await pgs.query('DROP TABLE ran_leaving');
  });
  await p.query('SELECT 1');
  const a = await open('tenant_a', 'pw-a');
  await a.query('SELECT load_plpgsql()'); // loads plpgsql on the one server connection
  await a.end();
  const leaver = (p as unknown as { connection: { stream: net.Socket } }).connection.stream;
  // Several statements: the separate switch, which fails inside its block. Written behind it
  // without waiting, the ROLLBACK would end that block and the INSERTs run with a's settings.
  leaver.write(Buffer.concat([
    serialize.query("ROLLBACK; INSERT INTO ran_leaving SELECT coalesce(current_setting('app.tenant_id', true), 'none'); INSERT INTO ran_leaving VALUES ('second')"),
    Buffer.from([0x58, 0, 0, 0, 4]),
  ]));
  const end = Date.now() + 3000;
  while (own.server.runtime.clients > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  t.equal(own.server.runtime.clients, 0, 'the session ended');
  const b = await open('tenant_a', 'pw-a');
  t.same((await b.query("SELECT current_setting('app.tenant_id') AS t")).rows, [{ t: 'a' }], 'the pool serves on');
  await b.end();
  t.same((await pgs.query('SELECT who FROM ran_leaving')).rows, [], 'its INSERTs never ran');
});
