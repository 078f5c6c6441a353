// After an error in an extended-protocol batch PostgreSQL skips every message up to the
// batch's Sync, a simple Query included: that Query gets no ReadyForQuery. The proxy must
// owe exactly what the server will answer, or the lease is never given back (the pool of
// ONE here then starves the other tenant) and the DDL audit pairs outcomes with the wrong
// statements. Each case runs on a raw client, then the other tenant must get the connection.
// Also here, the other ways a batch and what travels with it can be misread: a SET that a
// Query inside the batch commits, the unnamed statement after a Query or Close, a cancel of
// a batch run with a Flush, an error in COPY IN, a FunctionCall inside a batch, a SQL
// DEALLOCATE of a statement the connection lacks or the server skipped.

import t from 'tap';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { cancelClient } from './helpers/cancel.js';
import { endServerConnections, SERVER_ROLE } from './helpers/proxy.js';
import { rawOf } from './helpers/raw-client.js';
import { tenantClient, tenantLab } from './helpers/tenant-lab.js';

type Test = Parameters<Parameters<typeof t.test>[1]>[0];

const parse = (text: string, name = '') => serialize.parse({ name, text, types: [] });
const bind = () => serialize.bind({ statement: '', portal: '' });
/** Bind of the named statement `statement` to the unnamed portal. */
const named = (statement: string) => serialize.bind({ statement, portal: '' });
/** Close of the named statement `name`. */
const close = (name: string) => serialize.close({ type: 'S', name });
const execute = () => serialize.execute({ portal: '' });
const query = (sql: string) => serialize.query(sql);
const flush = () => serialize.flush();
const copyData = (text: string) => serialize.copyData(Buffer.from(text));
const sync = () => serialize.sync();
/** FunctionCall of `oid` with `args` (text format), text result. */
function functionCall(oid: number, ...args: string[]): Buffer {
  const values = args.map((a) => Buffer.from(a));
  const head = Buffer.alloc(1 + 4 + 4 + 2 + 2);
  head.write('F', 0);
  head.writeUInt32BE(oid, 5);
  head.writeUInt16BE(0, 9); // no argument formats: all text
  head.writeUInt16BE(values.length, 11);
  const b = Buffer.concat([head, ...values.flatMap((v) => [Buffer.from([0, 0, 0, v.length]), v]), Buffer.from([0, 0])]);
  b.writeInt32BE(b.length - 1, 1);
  return b;
}

const { pgs, proxy } = await tenantLab(t);
await pgs.query(`GRANT CREATE ON SCHEMA public TO ${SERVER_ROLE}`);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const open = (t: Test, who: 'a' | 'b'): Promise<pg.Client> => tenantClient(t, proxy.port, who);


/** The other tenant runs a statement: it can only when the pool's one connection went back. */
async function otherTenantGetsTheConnection(t: Test): Promise<void> {
  const a = await open(t, 'a');
  const r = await a.query<{ t: string }>("SELECT current_setting('app.tenant_id', true) AS t");
  t.equal(r.rows[0]!.t, 'a', 'the other tenant got the connection (the lease was given back)');
  await a.end();
}

/** The message texts of the errors `b` receives from now on. */
function errorTexts(b: ReturnType<typeof rawOf>): string[] {
  const messages: string[] = [];
  b.raw.on('errorMessage', ((m: { message: string }) => messages.push(m.message)) as (m: never) => void);
  return messages;
}

const ddlOf = (table: string) =>
  proxy.audit.lines.filter((l) => l.event === 'ddl' && String(l.statement).includes(table)).map((l) => [l.outcome, l.command_tag ?? l.sqlstate]);

t.test('a Query inside a batch that failed before it is skipped, answered by the Sync alone', async (t) => {
  const b = rawOf(await open(t, 'b'));
  const seen = await b.sendAndSettle(1, [parse('SELECT 1/0'), bind(), execute(), query('CREATE TABLE skip_probe_1 (x int)'), sync()]);
  t.same(seen, ['parsed', 'E22012', 'Z'], 'one error, one ReadyForQuery (as from PostgreSQL)');
  await otherTenantGetsTheConnection(t);
  t.same(await b.sendAndSettle(1, [query("SELECT to_regclass('skip_probe_1') IS NULL")]), ['columns:?column?', 't', 'done:SELECT 1', 'Z'], 'the skipped CREATE did not run');
  await b.sendAndSettle(1, [query('CREATE TABLE skip_probe_1b (x int)')]);
  t.same(ddlOf('skip_probe_1'), [['error', '22012'], ['ok', 'CREATE TABLE']], 'the skipped CREATE is recorded as failed; the next one with its own outcome');
});

t.test('the same when the error came back before the Query was written', async (t) => {
  const b = rawOf(await open(t, 'b'));
  t.same(await b.sendAndSettle(0, [parse('SELECT 1/0'), bind(), execute(), flush()], 'E22012'), ['parsed', 'E22012'], 'the error, no ReadyForQuery yet');
  const seen = await b.sendAndSettle(1, [query('CREATE TABLE skip_probe_2 (x int)'), query('SELECT 1'), sync()]);
  t.same(seen, ['Z'], 'both Queries skipped; the Sync answered');
  await otherTenantGetsTheConnection(t);
  await b.sendAndSettle(1, [query('DROP TABLE IF EXISTS skip_probe_2')]);
  t.same(ddlOf('skip_probe_2'), [['error', '22012'], ['ok', 'DROP TABLE']]);
});

t.test('a Query inside a batch that did not fail runs and is answered, then the Sync', async (t) => {
  const b = rawOf(await open(t, 'b'));
  const ok = await b.sendAndSettle(2, [parse('SELECT 1'), bind(), execute(), query('SELECT 2'), sync()]);
  t.same(ok, ['parsed', 'bound', '1', 'done:SELECT 1', 'columns:?column?', '2', 'done:SELECT 1', 'Z', 'Z'], 'no reply of the marker reaches the client');
  const failing = await b.sendAndSettle(2, [parse('SELECT 1'), bind(), execute(), query('SELECT 1/0'), sync()]);
  t.same(failing, ['parsed', 'bound', '1', 'done:SELECT 1', 'E22012', 'Z', 'Z'], 'the Query\'s own error');
  const ddl = await b.sendAndSettle(2, [parse('SELECT 1'), bind(), execute(), query('CREATE TABLE skip_probe_3 (x int)'), sync()]);
  t.same(ddl.at(-1), 'Z');
  await otherTenantGetsTheConnection(t);
  t.same(ddlOf('skip_probe_3'), [['ok', '']], 'recorded as run (the tag is not counted where a batch ran first)');
});

t.test('a Query after Parse/Bind/Execute without a Sync ends that batch: the lease goes back once it is answered', async (t) => {
  const b = rawOf(await open(t, 'b'));
  const seen = await b.sendAndSettle(1, [parse('SELECT 1'), bind(), execute(), query('SELECT 2')]);
  t.same(seen, ['parsed', 'bound', '1', 'done:SELECT 1', 'columns:?column?', '2', 'done:SELECT 1', 'Z'], 'answered as by PostgreSQL');
  await otherTenantGetsTheConnection(t);
  const again = await b.sendAndSettle(1, [query("SELECT current_setting('app.tenant_id', true) AS t")]);
  t.same(again, ['columns:t', 'b', 'done:SELECT 1', 'Z'], 'the client carries on, with its own pin');
  await otherTenantGetsTheConnection(t);
});

t.test('a Query behind one skipped Query in the same batch is skipped too', async (t) => {
  const b = rawOf(await open(t, 'b'));
  const seen = await b.sendAndSettle(1, [parse('SELECT 1/0'), bind(), execute(), query('SELECT 1'), parse('SELECT 2'), bind(), execute(), query('SELECT 3'), sync()]);
  t.same(seen, ['parsed', 'E22012', 'Z']);
  await otherTenantGetsTheConnection(t);
  t.same(await b.sendAndSettle(1, [query('SELECT 4')]), ['columns:?column?', '4', 'done:SELECT 1', 'Z'], 'the client carries on');
});

t.test('a failing unnamed Parse pipelined before a good one leaves the good one usable', async (t) => {
  const b = rawOf(await open(t, 'b'));
  t.same(await b.sendAndSettle(2, [parse('SELEC 1'), sync(), parse('SELECT 7'), sync()]), ['E42601', 'Z', 'parsed', 'Z']);
  await otherTenantGetsTheConnection(t);
  t.same(await b.sendAndSettle(1, [bind(), execute(), sync()]), ['bound', '7', 'done:SELECT 1', 'Z'], 'bound to the statement that exists');
});

t.test('a FunctionCall inside a batch is refused with 0A000; outside one it is relayed as before', async (t) => {
  const b = rawOf(await open(t, 'b'));
  const seen = await b.sendAndSettle(2, [parse('SELECT 1'), bind(), execute(), functionCall(957 /* lo_creat */), sync()]);
  t.same(seen, ['parsed', 'bound', '1', 'done:SELECT 1', 'E0A000', 'Z', 'Z']);
  await otherTenantGetsTheConnection(t);
  t.same(await b.sendAndSettle(1, [query('SELECT 5')]), ['columns:?column?', '5', 'done:SELECT 1', 'Z']);
});

/** lo_create(oid): one of the large-object functions pgbastion relays through FunctionCall. */
const LO_CREATE = 715;

t.test('a FunctionCall behind a Query that ends the batch is relayed, or skipped with it', async (t) => {
  const b = rawOf(await open(t, 'b'));
  const ok = await b.sendAndSettle(3, [parse('SELECT 1'), bind(), execute(), query('SELECT 2'), functionCall(LO_CREATE, '0'), sync()]);
  t.same(ok, ['parsed', 'bound', '1', 'done:SELECT 1', 'columns:?column?', '2', 'done:SELECT 1', 'Z', 'fn', 'Z', 'Z'], 'as from PostgreSQL');
  const after = await b.sendAndSettle(3, [parse('SELECT 3'), bind(), execute(), query('SELECT 4'), functionCall(LO_CREATE, '0'), bind(), execute(), sync()]);
  t.same(after.slice(-5), ['Z', 'fn', 'Z', 'E26000', 'Z'], 'no unnamed statement behind them: the Query dropped it');
  const failed = await b.sendAndSettle(1, [parse('SELECT 1/0'), bind(), execute(), query('SELECT 2'), functionCall(LO_CREATE, '0'), sync()]);
  t.same(failed, ['parsed', 'E22012', 'Z'], 'the Query and the FunctionCall skipped');
  await otherTenantGetsTheConnection(t);
  t.same(await b.sendAndSettle(0, [parse('SELECT 1/0'), bind(), execute(), query('SELECT 2'), flush()], 'E22012'), ['parsed', 'E22012']);
  t.same(await b.sendAndSettle(1, [functionCall(LO_CREATE, '0'), sync()]), ['Z'], 'the same when the error was known before the FunctionCall was written (the batch did not end)');
  await otherTenantGetsTheConnection(t);
});

t.test('a SET inside a batch with other statements (a Query commits it): the client keeps the connection, the next tenant does not inherit it', async (t) => {
  // Whether a SET took is not known from the replies once other statements share its
  // transaction (one may be a ROLLBACK, or a COMMIT before a failure): the client is sticky.
  const bc = await open(t, 'b');
  const b = rawOf(bc);
  const seen = await b.sendAndSettle(2, [parse("SET application_name = 'b_app'"), bind(), execute(), query('SELECT 1'), parse('SELECT 1/(random()*0)::int'), bind(), execute(), sync()]);
  t.same(seen, ['parsed', 'bound', 'done:SET', 'columns:?column?', '1', 'done:SELECT 1', 'Z', 'parsed', 'bound', 'E22012', 'Z'], 'as from PostgreSQL');
  t.same(await b.sendAndSettle(1, [query('SHOW application_name')]), ['columns:application_name', 'b_app', 'done:SHOW', 'Z'], 'b keeps it, as PostgreSQL committed it');
  b.raw.stream.write(serialize.end()); // the connection is reset as the sticky client leaves
  const a = await open(t, 'a');
  const shown = await a.query<{ application_name: string }>('SHOW application_name');
  t.not(shown.rows[0]!.application_name, 'b_app', "the other tenant does not run with b's setting");
  await a.end();
});

t.test('a Query or a Close drops the unnamed statement, also for the next transaction on another lease', async (t) => {
  const b = rawOf(await open(t, 'b'));
  t.same(await b.sendAndSettle(2, [parse('SELECT 11'), bind(), execute(), query('SELECT 2'), sync()]), ['parsed', 'bound', '11', 'done:SELECT 1', 'columns:?column?', '2', 'done:SELECT 1', 'Z', 'Z']);
  await otherTenantGetsTheConnection(t);
  t.same(await b.sendAndSettle(1, [bind(), execute(), sync()]), ['E26000', 'Z'], "PostgreSQL's answer: the Query dropped it");
  // The same after a Close of the unnamed statement.
  t.same(await b.sendAndSettle(1, [parse('SELECT 12'), bind(), execute(), serialize.close({ type: 'S', name: '' }), sync()]), ['parsed', 'bound', '12', 'done:SELECT 1', 'closed', 'Z']);
  await otherTenantGetsTheConnection(t);
  t.same(await b.sendAndSettle(1, [bind(), execute(), sync()]), ['E26000', 'Z'], 'closed: not replayed');
});

t.test('a Bind waiting for a server connection is not bound to an unnamed Parse that came after it', async (t) => {
  const b = rawOf(await open(t, 'b'));
  t.same(await b.sendAndSettle(0, [bind(), execute(), parse('SELECT 2')], 'E26000'), ['E26000'], 'no unnamed statement when the Bind came');
  t.same(await b.sendAndSettle(1, [sync()]), ['Z'], "PostgreSQL's answer: the Parse after the error is skipped");
});

t.test("a refusal's own error comes back when a batch is still open after an earlier ReadyForQuery", async (t) => {
  const b = rawOf(await open(t, 'b'));
  // The second Parse of s1 is refused (42P05) when read; its error comes after the first
  // Sync's ReadyForQuery, while the batch it is in has no Sync yet.
  const seen = await b.sendAndSettle(1, [sync(), parse('SELECT 1', 's1'), parse('SELECT 2', 's1'), flush()], 'Z');
  await sleep(200);
  t.same(seen.concat(await b.sendAndSettle(1, [sync()])), ['Z', 'parsed', 'E42P05', 'Z'], "PostgreSQL's answer, not the raw error of the refusal's stand-in");
  t.same(await b.sendAndSettle(1, [serialize.close({ type: 'S', name: 's1' }), sync()]), ['closed', 'Z']);
});

t.test('a Parse written after the batch\'s error came back creates nothing, and the name can be prepared again', async (t) => {
  const b = rawOf(await open(t, 'b'));
  t.same(await b.sendAndSettle(0, [parse('SELECT 1/0'), bind(), execute(), flush()], 'E22012'), ['parsed', 'E22012']);
  t.same(await b.sendAndSettle(1, [parse('SELECT 5', 's9'), sync()]), ['Z'], 'skipped, as in PostgreSQL');
  t.same(await b.sendAndSettle(1, [serialize.bind({ statement: 's9', portal: '' }), execute(), sync()]), ['E26000', 'Z'], 'it does not exist');
  t.same(await b.sendAndSettle(1, [parse('SELECT 6', 's9'), sync()]), ['parsed', 'Z'], 'prepared again (not 42P05)');
  t.same(await b.sendAndSettle(1, [serialize.bind({ statement: 's9', portal: '' }), execute(), sync()]), ['bound', '6', 'done:SELECT 1', 'Z']);
});

t.test('a name whose Parse fails is free for a Parse pipelined behind it, as in PostgreSQL', async (t) => {
  const b = rawOf(await open(t, 'b'));
  const seen = await b.sendAndSettle(2, [parse('SELEC 1', 'r1'), sync(), parse('SELECT 7', 'r1'), named('r1'), execute(), sync()]);
  t.same(seen, ['E42601', 'Z', 'parsed', 'bound', '7', 'done:SELECT 1', 'Z'], 'not 42P05: the first Parse created nothing');
  t.same(await b.sendAndSettle(1, [named('r1'), execute(), sync()]), ['bound', '7', 'done:SELECT 1', 'Z'], 'r1 is the second one, held by that connection');
  const skipped = await b.sendAndSettle(1, [parse('SELECT 1/0', 'r2'), named('r2'), execute(), parse('SELECT 8', 'r2'), sync()]);
  t.same(skipped, ['parsed', 'E22012', 'Z'], 'both Parses of r2 ran into the error: the second one skipped');
  await otherTenantGetsTheConnection(t);
  t.same(await b.sendAndSettle(1, [parse('SELECT 9', 'r2'), named('r2'), execute(), sync()]), ['E42P05', 'Z'], 'the first Parse of r2 created it');
  t.same(await b.sendAndSettle(1, [named('r2'), execute(), sync()]), ['E22012', 'Z'], 'r2 is still the first one (1/0 fails as it is planned, at the Bind)');
});

t.test("a Parse of a name in use: a syntax error comes before 42P05, and errors name the client's statement", async (t) => {
  const b = rawOf(await open(t, 'b'));
  const messages = errorTexts(b);
  t.same(await b.sendAndSettle(1, [parse('SELECT $1::int', 'd1'), sync()]), ['parsed', 'Z']);
  await otherTenantGetsTheConnection(t);
  t.same(await b.sendAndSettle(1, [parse('SELEC 2', 'd1'), sync()]), ['E42601', 'Z'], "PostgreSQL's order: the text is parsed before the name is checked");
  t.same(await b.sendAndSettle(1, [parse('SELECT 2', 'd1'), sync()]), ['E42P05', 'Z']);
  t.same(await b.sendAndSettle(1, [serialize.bind({ statement: 'd1', portal: '' }), sync()]), ['E08P01', 'Z'], 'a Bind without the parameter');
  t.same(messages.slice(1), ['prepared statement "d1" already exists', 'bind message supplies 0 parameters, but prepared statement "d1" requires 1'], "the client's name, never the server-side one");
});

t.test('a Close skipped after an error closes nothing; one that completes frees the name', async (t) => {
  const b = rawOf(await open(t, 'b'));
  const messages = errorTexts(b);
  t.same(await b.sendAndSettle(1, [parse('SELECT 3', 'c1'), sync()]), ['parsed', 'Z']);
  t.same(await b.sendAndSettle(1, [parse('SELECT 1/0'), bind(), execute(), close('c1'), sync()]), ['parsed', 'E22012', 'Z']);
  await otherTenantGetsTheConnection(t);
  t.same(await b.sendAndSettle(1, [named('c1'), execute(), sync()]), ['bound', '3', 'done:SELECT 1', 'Z'], 'c1 still exists, as in PostgreSQL');
  const again = await b.sendAndSettle(1, [close('c1'), parse('SELECT 4', 'c1'), named('c1'), execute(), sync()]);
  t.same(again, ['closed', 'parsed', 'bound', '4', 'done:SELECT 1', 'Z'], 'closed, then prepared again under the same name in one batch');
  t.same(await b.sendAndSettle(1, [close('c1'), named('c1'), execute(), sync()]), ['closed', 'E26000', 'Z'], 'a Bind behind the Close');
  t.same(messages.slice(1), ['prepared statement "c1" does not exist'], "the client's name");
  t.same(await b.sendAndSettle(1, [parse('SELECT 5', 'c1'), named('c1'), execute(), sync()]), ['parsed', 'bound', '5', 'done:SELECT 1', 'Z'], 'the name is free');
});

/** The pool's one server connection is closed: the next lease opens one that holds no statement of the client's. */
async function freshServerConnection(): Promise<void> {
  await endServerConnections(pgs);
}

t.test('a Close, then a Parse or a Bind of its name, where the connection does not hold the statement yet', async (t) => {
  const b = rawOf(await open(t, 'b'));
  const messages = errorTexts(b);
  t.same(await b.sendAndSettle(1, [parse('SELECT 3', 'n1'), sync()]), ['parsed', 'Z']);
  await freshServerConnection();
  const reparsed = await b.sendAndSettle(1, [close('n1'), parse('SELECT 4', 'n1'), named('n1'), execute(), sync()]);
  t.same(reparsed, ['closed', 'parsed', 'bound', '4', 'done:SELECT 1', 'Z'], 'the name was free after the Close (not 42P05)');
  await freshServerConnection();
  t.same(await b.sendAndSettle(1, [close('n1'), named('n1'), execute(), sync()]), ['closed', 'E26000', 'Z'], 'the Bind behind the Close finds nothing');
  t.same(messages, ['prepared statement "n1" does not exist']);
  t.same(await b.sendAndSettle(1, [parse('SELECT 5', 'n1'), named('n1'), execute(), sync()]), ['parsed', 'bound', '5', 'done:SELECT 1', 'Z']);
});

t.test('work held back behind an inline switch meets the Close before it as completed', async (t) => {
  const b = rawOf(await open(t, 'b'));
  t.same(await b.sendAndSettle(1, [parse('SELECT 3', 'h1'), sync()]), ['parsed', 'Z']);
  await freshServerConnection();
  await otherTenantGetsTheConnection(t); // so that b's next batch takes an inline switch
  // The batch runs 0.3 s; the Parse of h1 after it is read meanwhile and held until its ReadyForQuery.
  b.raw.stream.write(Buffer.concat([parse('SELECT pg_sleep(0.3)'), bind(), execute(), close('h1'), sync()]));
  await sleep(100);
  const seen = await b.sendAndSettle(2, [parse('SELECT 4', 'h1'), named('h1'), execute(), sync()]);
  t.same(seen, ['parsed', 'bound', '', 'done:SELECT 1', 'closed', 'Z', 'parsed', 'bound', '4', 'done:SELECT 1', 'Z'], 'h1 was closed first: not 42P05');
});

t.test('a Close closes what held the name where it stands in the pipeline', async (t) => {
  const b = rawOf(await open(t, 'b'));
  // The first Parse fails: the Close finds nothing, and the Parse behind it takes the name.
  const first = await b.sendAndSettle(2, [parse('SELEC 1', 'q1'), sync(), close('q1'), parse('SELECT 2', 'q1'), sync()]);
  t.same(first, ['E42601', 'Z', 'closed', 'parsed', 'Z']);
  t.same(await b.sendAndSettle(1, [named('q1'), execute(), sync()]), ['bound', '2', 'done:SELECT 1', 'Z'], 'q1 is the Parse behind the Close');
  t.same(await b.sendAndSettle(1, [parse('SELECT 3', 'q1'), sync()]), ['E42P05', 'Z']);
  // The second Parse fails (42P05): the Close closes the first.
  const second = await b.sendAndSettle(3, [parse('SELECT 1', 'q2'), sync(), parse('SELECT 2', 'q2'), sync(), close('q2'), sync()]);
  t.same(second, ['parsed', 'Z', 'E42P05', 'Z', 'closed', 'Z']);
  t.same(await b.sendAndSettle(1, [named('q2'), execute(), sync()]), ['E26000', 'Z'], 'q2 is closed');
  // The second Parse took the name (the first failed): the Close closes it.
  const third = await b.sendAndSettle(3, [parse('SELEC 1', 'q3'), sync(), parse('SELECT 2', 'q3'), sync(), close('q3'), sync()]);
  t.same(third, ['E42601', 'Z', 'parsed', 'Z', 'closed', 'Z']);
  t.same(await b.sendAndSettle(1, [named('q3'), execute(), sync()]), ['E26000', 'Z'], 'q3 is closed');
});

t.test('a replay of the client\'s statement that the server skipped leaves the statement the client\'s', async (t) => {
  const b = rawOf(await open(t, 'b'));
  t.same(await b.sendAndSettle(1, [parse('SELECT 6', 'k1'), sync()]), ['parsed', 'Z']);
  await freshServerConnection();
  t.same(await b.sendAndSettle(1, [parse('SELEC'), named('k1'), execute(), sync()]), ['E42601', 'Z'], 'the Bind (and the replay before it) skipped');
  t.same(await b.sendAndSettle(1, [named('k1'), execute(), sync()]), ['bound', '6', 'done:SELECT 1', 'Z'], 'k1 still exists, as in PostgreSQL');
});

t.test('after a skipped Close, its statement is prepared again where missing', async (t) => {
  const b = rawOf(await open(t, 'b'));
  t.same(await b.sendAndSettle(1, [parse('SELECT 11', 'c2'), sync()]), ['parsed', 'Z']);
  await freshServerConnection();
  t.same(await b.sendAndSettle(1, [parse('SELECT 1/0'), bind(), execute(), close('c2'), sync()]), ['parsed', 'E22012', 'Z']);
  await freshServerConnection();
  t.same(await b.sendAndSettle(1, [named('c2'), execute(), sync()]), ['bound', '11', 'done:SELECT 1', 'Z'], 'c2 still exists, as in PostgreSQL');
});

t.test('messages read before a DEALLOCATE still have its statement prepared where missing', async (t) => {
  const b = rawOf(await open(t, 'b'));
  t.same(await b.sendAndSettle(1, [parse('SELECT 7', 'e1'), sync()]), ['parsed', 'Z']);
  await freshServerConnection();
  const seen = await b.sendAndSettle(2, [named('e1'), execute(), sync(), query('DEALLOCATE e1')]);
  t.same(seen, ['bound', '7', 'done:SELECT 1', 'Z', 'done:DEALLOCATE', 'Z'], 'the Bind runs, then the DEALLOCATE');
  t.same(await b.sendAndSettle(1, [parse('SELECT 8', 'e2'), sync()]), ['parsed', 'Z']);
  await freshServerConnection();
  t.same(await b.sendAndSettle(2, [parse('SELECT 9', 'e2'), sync(), query('DEALLOCATE e2')]), ['E42P05', 'Z', 'done:DEALLOCATE', 'Z'], 'the Parse of the name in use fails');
});

/**
 * A raw client of tenant b that prepared `name` reading `table`, since dropped, on a fresh
 * server connection: replaying its Parse there would fail.
 */
async function withBrokenStatement(t: Test, table: string, name: string) {
  await pgs.query(`CREATE TABLE ${table} (x int); GRANT SELECT ON ${table} TO ${SERVER_ROLE}`);
  const b = rawOf(await open(t, 'b'));
  t.same(await b.sendAndSettle(1, [parse(`SELECT x FROM ${table}`, name), sync()]), ['parsed', 'Z']);
  await pgs.query(`DROP TABLE ${table}`);
  await freshServerConnection();
  return b;
}

t.test('a Close needs no replay of its statement, which could fail where the Close does not', async (t) => {
  const b = await withBrokenStatement(t, 'gone_soon', 'g1');
  t.same(await b.sendAndSettle(1, [close('g1'), query('SELECT 1')]), ['closed', 'columns:?column?', '1', 'done:SELECT 1', 'Z'], 'closed; the Query behind it runs');
  t.same(await b.sendAndSettle(1, [parse('SELECT 2', 'g1'), sync()]), ['parsed', 'Z'], 'the name is free');
});

t.test('a DEALLOCATE needs no replay of its statement either: the Query is answered where that replay would fail', async (t) => {
  const b = await withBrokenStatement(t, 'gone_later', 'g2');
  // A failed replay ahead of the Query would make the server skip the Query until a Sync
  // that never comes: the client would wait for good.
  t.same(await b.sendAndSettle(1, [query('DEALLOCATE g2')]), ['done:DEALLOCATE', 'Z'], "PostgreSQL's answer");
  t.same(await b.sendAndSettle(1, [parse('SELECT 3', 'g2'), sync()]), ['parsed', 'Z'], 'the name is free');
  await freshServerConnection();
  t.same(await b.sendAndSettle(1, [named('g2'), execute(), sync()]), ['bound', '3', 'done:SELECT 1', 'Z'], 'and stands for the new statement');
  await freshServerConnection();
  t.same(await b.sendAndSettle(2, [query('BEGIN'), query('SELECT 1/0')]), ['done:BEGIN', 'Z', 'E22012', 'Z']);
  t.same(await b.sendAndSettle(1, [query('DEALLOCATE g2')]), ['E25P02', 'Z'], 'in a failed transaction, the error PostgreSQL gives');
  t.same(await b.sendAndSettle(1, [query('ROLLBACK'), query('DEALLOCATE g2')]), ['done:ROLLBACK', 'Z', 'done:DEALLOCATE', 'Z'], 'g2 was not freed');
  t.same(await b.sendAndSettle(1, [parse('SELECT 4', 'g2'), sync()]), ['parsed', 'Z']);
  await freshServerConnection();
  // The transaction fails in a Query still unanswered when the DEALLOCATE is written.
  const seen = await b.sendAndSettle(3, [query('BEGIN'), query('SELECT 1/0'), query('DEALLOCATE g2')]);
  t.same(seen, ['done:BEGIN', 'Z', 'E22012', 'Z', 'E25P02', 'Z'], 'answered, as by PostgreSQL, when the failure was not known yet');
  t.same(await b.sendAndSettle(1, [query('ROLLBACK')]), ['done:ROLLBACK', 'Z']);
  await freshServerConnection();
  t.same(await b.sendAndSettle(1, [named('g2'), execute(), sync()]), ['bound', '4', 'done:SELECT 1', 'Z'], 'g2 still stands for its statement');
});

t.test('DEALLOCATE where the connection lacks the statement: twice pipelined, as a Parse run twice, inside a batch of a failed transaction', async (t) => {
  const b = rawOf(await open(t, 'b'));
  const messages = errorTexts(b);
  t.same(await b.sendAndSettle(1, [parse('SELECT 31', 'h1'), sync()]), ['parsed', 'Z']);
  await freshServerConnection();
  t.same(await b.sendAndSettle(2, [query('DEALLOCATE h1'), query('DEALLOCATE h1')]), ['done:DEALLOCATE', 'Z', 'E26000', 'Z'], 'the second finds nothing');
  t.same(messages, ['prepared statement "h1" does not exist'], "in the client's words");
  t.same(await b.sendAndSettle(1, [parse('SELECT 32', 'h2'), sync()]), ['parsed', 'Z']);
  await freshServerConnection();
  const twice = await b.sendAndSettle(1, [parse('DEALLOCATE h2'), bind(), execute(), bind(), execute(), sync()]);
  t.same(twice, ['parsed', 'bound', 'done:DEALLOCATE', 'bound', 'E26000', 'Z'], 'a DEALLOCATE prepared as the unnamed statement, run twice');
  t.same(messages.at(-1), 'prepared statement "h2" does not exist');
  t.same(await b.sendAndSettle(1, [parse('SELECT 33', 'h3'), sync()]), ['parsed', 'Z']);
  await freshServerConnection();
  t.same(await b.sendAndSettle(2, [query('BEGIN'), query('SELECT 1/0')]), ['done:BEGIN', 'Z', 'E22012', 'Z']);
  const inBatch = await b.sendAndSettle(1, [close('no_such'), query('DEALLOCATE h3')]);
  t.same(inBatch, ['closed', 'E25P02', 'Z'], 'the Query behind a Close, in the failed transaction, is answered');
  t.same(await b.sendAndSettle(2, [sync(), query('ROLLBACK')]), ['Z', 'done:ROLLBACK', 'Z']);
  await freshServerConnection();
  t.same(await b.sendAndSettle(1, [named('h3'), execute(), sync()]), ['bound', '33', 'done:SELECT 1', 'Z'], 'h3 still exists');
});

t.test('a DEALLOCATE whose server connection died before answering it frees nothing', async (t) => {
  const b = rawOf(await open(t, 'b'));
  t.same(await b.sendAndSettle(1, [parse('SELECT 41', 'k9'), sync()]), ['parsed', 'Z']);
  const cut = sleep(300).then(freshServerConnection);
  const seen = await b.sendAndSettle(2, [query('SELECT pg_sleep(3)'), query('DEALLOCATE k9')]);
  await cut;
  t.same(seen.filter((s) => s === 'Z').length, 2, 'both Queries answered (with the loss)');
  t.same(await b.sendAndSettle(1, [named('k9'), execute(), sync()]), ['bound', '41', 'done:SELECT 1', 'Z'], 'k9 still exists, prepared again where used');
});

t.test('a DEALLOCATE the server skipped frees nothing, whether the error came back before it was written or after', async (t) => {
  const b = rawOf(await open(t, 'b'));
  t.same(await b.sendAndSettle(1, [parse('SELECT 21', 'd1'), sync()]), ['parsed', 'Z']);
  t.same(await b.sendAndSettle(1, [parse('SELECT 1/0'), bind(), execute(), query('DEALLOCATE d1'), sync()]), ['parsed', 'E22012', 'Z'], 'skipped with the batch');
  await freshServerConnection();
  t.same(await b.sendAndSettle(1, [named('d1'), execute(), sync()]), ['bound', '21', 'done:SELECT 1', 'Z'], 'd1 still exists (prepared again where missing)');
  t.same(await b.sendAndSettle(0, [parse('SELECT 1/0'), bind(), execute(), flush()], 'E22012'), ['parsed', 'E22012']);
  t.same(await b.sendAndSettle(1, [query('DEALLOCATE d1'), sync()]), ['Z'], 'skipped, the error known when it was written');
  await freshServerConnection();
  t.same(await b.sendAndSettle(1, [named('d1'), execute(), sync()]), ['bound', '21', 'done:SELECT 1', 'Z'], 'd1 still exists (prepared again where missing)');
  t.same(await b.sendAndSettle(2, [query('DEALLOCATE d1'), named('d1'), execute(), sync()]), ['done:DEALLOCATE', 'Z', 'E26000', 'Z'], 'then it goes');
});

t.test('a Parse held behind an inline switch takes a name freed meanwhile, and the connection knows it holds it', async (t) => {
  const b = rawOf(await open(t, 'b'));
  await otherTenantGetsTheConnection(t); // so that b's next batch takes an inline switch
  b.raw.stream.write(Buffer.concat([parse('SELECT pg_sleep(0.3)'), bind(), execute(), parse('SELECT FROM WHERE', 'm1'), sync()]));
  await sleep(100);
  const seen = await b.sendAndSettle(2, [close('m1'), parse('SELECT 2', 'm1'), sync(), named('m1'), execute(), sync()]);
  t.same(seen, ['parsed', 'bound', '', 'done:SELECT 1', 'E42601', 'Z', 'closed', 'parsed', 'Z', 'bound', '2', 'done:SELECT 1', 'Z']);
  t.same(await b.sendAndSettle(1, [named('m1'), execute(), sync()]), ['bound', '2', 'done:SELECT 1', 'Z'], 'no replay of m1 where it exists (42P05)');
});

t.test('a Bind held behind an inline switch, of a statement whose Parse failed meanwhile, gets 26000', async (t) => {
  const b = rawOf(await open(t, 'b'));
  await otherTenantGetsTheConnection(t); // so that b's next batch takes an inline switch
  b.raw.stream.write(Buffer.concat([parse('SELECT pg_sleep(0.3)'), bind(), execute(), parse('SELECT FROM WHERE', 'm2'), sync()]));
  await sleep(100);
  const seen = await b.sendAndSettle(2, [named('m2'), execute(), sync()]);
  t.same(seen, ['parsed', 'bound', '', 'done:SELECT 1', 'E42601', 'Z', 'E26000', 'Z'], 'not the Parse tried again (42601)');
});

t.test("a DEALLOCATE of a statement whose Parse failed gets PostgreSQL's 26000 with the client's name", async (t) => {
  const b = rawOf(await open(t, 'b'));
  const messages = errorTexts(b);
  t.same(await b.sendAndSettle(2, [parse('SELEC 1', 'f1'), sync(), query('DEALLOCATE f1')]), ['E42601', 'Z', 'E26000', 'Z']);
  t.same(messages.slice(1), ['prepared statement "f1" does not exist']);
});

t.test('a cancel reaches a batch run with a Flush before its Sync', async (t) => {
  const bc = await open(t, 'b');
  const b = rawOf(bc);
  const started = Date.now();
  const cancel = sleep(300).then(() => cancelClient(proxy.port, bc));
  const seen = await b.sendAndSettle(0, [parse('SELECT pg_sleep(5)'), bind(), execute(), flush()], 'E57014');
  await cancel;
  t.same(seen, ['parsed', 'bound', 'E57014']);
  t.ok(Date.now() - started < 4000, 'cut short');
  t.same(await b.sendAndSettle(1, [sync()]), ['Z']);
  await otherTenantGetsTheConnection(t);
});

t.test('an error in COPY IN ends it: the Sync after it is answered, and later DDL is audited', async (t) => {
  await pgs.query(`CREATE TABLE copy_probe (x int); GRANT INSERT ON copy_probe TO ${SERVER_ROLE}`);
  const b = rawOf(await open(t, 'b'));
  await b.sendAndSettle(0, [parse('COPY copy_probe FROM STDIN'), bind(), execute(), flush()], 'bound');
  t.same(await b.sendAndSettle(0, [copyData('notanint\n')], 'E22P02'), ['E22P02']);
  t.same(await b.sendAndSettle(1, [sync()]), ['Z'], 'the Sync ends the skipping');
  await otherTenantGetsTheConnection(t);
  await b.sendAndSettle(1, [query('CREATE TABLE copy_probe_ddl (x int)')]);
  t.same(ddlOf('copy_probe_ddl'), [['ok', 'CREATE TABLE']]);
});

t.test('a COMMIT inside a failing batch makes the DDL before it permanent: audited ok, what follows it as failed', async (t) => {
  /** Parse/Bind/Execute of `sql` on the unnamed statement and portal. */
  const pbe = (sql: string) => [parse(sql), bind(), execute()];
  // [what, statements ahead of the CREATE in the batch, the committed CREATE's audited tag]
  const cases: [string, [sql: string, tag: string][], string][] = [
    ['the CREATE first (tags counted)', [], 'CREATE TABLE'],
    ['BEGIN first, as drivers send a transaction (the tag is not counted where an Execute came before anything audited)', [['BEGIN', 'BEGIN']], ''],
  ];
  for (const [n, [what, first, tag]] of cases.entries()) {
    const [kept, lost] = [`commit_probe_${2 * n + 1}`, `commit_probe_${2 * n + 2}`];
    const b = rawOf(await open(t, 'b'));
    const statements: [string, string][] = [...first, [`CREATE TABLE ${kept} (x int)`, 'CREATE TABLE'], ['COMMIT', 'COMMIT'], [`CREATE TABLE ${lost} (x int)`, 'CREATE TABLE']];
    const seen = await b.sendAndSettle(1, [...statements.flatMap(([sql]) => pbe(sql)), ...pbe('SELECT 1/0'), sync()]);
    const completed = statements.flatMap(([, done]) => ['parsed', 'bound', `done:${done}`]);
    t.same(seen, [...completed, 'parsed', 'E22012', 'Z'], `${what}: replies (1/0 fails at its Bind, the planner folds it)`);
    const exists = await b.sendAndSettle(1, [query(`SELECT to_regclass('${kept}') IS NOT NULL, to_regclass('${lost}') IS NOT NULL`)]);
    t.same(exists.slice(1, 2), ['t|f'], `${what}: PostgreSQL committed the first CREATE at the COMMIT; the second rolled back with the error`);
    await otherTenantGetsTheConnection(t);
    t.same(ddlOf(kept), [['ok', tag]], `${what}: the committed CREATE is audited as done (it was recorded as failed, 22012)`);
    t.same(ddlOf(lost), [['error', '22012']], `${what}: the rolled-back one as failed`);
  }
});
