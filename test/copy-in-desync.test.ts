// COPY IN must not let a client make the proxy hand its server connection on early. During
// COPY IN PostgreSQL ignores a Sync, unless the COPY already failed on data it read before
// that Sync, and then it answers it; and it fails the COPY on any other message, which is
// then not run. A proxy that guesses wrong expects one ReadyForQuery fewer than the server
// sends, gives the connection to the next client while the server is still answering the
// first, and the next client reads the first one's answers as its own. Each case here is
// an attack on a pool of ONE server connection, with the other tenant's query waiting for
// it, and checks that this query gets exactly its own answer.

import t from 'tap';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, SERVER_ROLE, startProxy } from './helpers/proxy.js';
import { rawOf } from './helpers/raw-client.js';

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
await pgs.query(`CREATE TABLE copied (x int); GRANT ALL ON copied TO ${SERVER_ROLE}`);
// A COPY into slow_fail fails after its CopyInResponse went out, before it reads any data.
await pgs.query(`CREATE TABLE slow_fail (x int); GRANT ALL ON slow_fail TO ${SERVER_ROLE};
  CREATE FUNCTION slow_fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.5); RAISE EXCEPTION 'slow_fail'; END $$;
  CREATE TRIGGER slow_fail BEFORE INSERT ON slow_fail FOR EACH STATEMENT EXECUTE FUNCTION slow_fail()`);
const proxy = await startProxy(t, pgs, {
  users: [
    { name: 'tenant_a', password: 'pw-a', pins: { 'app.tenant_id': 'a' } },
    { name: 'tenant_b', password: 'pw-b', pins: { 'app.tenant_id': 'b' } },
  ],
  extra: { pool: { mode: 'transaction', size: 1, acquire_timeout_ms: 10000 } },
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const { query, parse, bind, execute, sync } = serialize;
const copyData = (text: string) => serialize.copyData(Buffer.from(text));
const copyDone = () => serialize.copyDone();
const COPY = 'COPY copied FROM STDIN';
/** What tenant b's query must get: its own row, under its own pin, and nothing else. */
const B_ANSWER = ['columns:?column?', 'b:b', 'done:SELECT 1', 'Z'];

type Teardown = { teardown(f: () => unknown): void };

async function connect(t: Teardown, user: string, password: string) {
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user, password, database: 'postgres' });
  await c.connect();
  c.on('error', () => {}); // (the attacker's session may be ended)
  t.teardown(() => c.end().catch(() => {}));
  return rawOf(c);
}

/**
 * Tenant a holds the connection in COPY IN (`start`, answered up to `startReply`), tenant b
 * queues behind it, then a writes `attack` in one write. Returns what a got for the attack,
 * and b's answer.
 */
async function attack(t: Teardown, start: Buffer[], startReply: string, attackMessages: Buffer[], attackReply: string) {
  const a = await connect(t, 'tenant_a', 'pw-a');
  const b = await connect(t, 'tenant_b', 'pw-b');
  await a.sendAndSettle(0, start, startReply);
  const bAnswer = b.send(1, query("SELECT 'b:' || current_setting('app.tenant_id')"));
  await sleep(50); // b waits for the one connection
  const aGot = await a.sendAndSettle(0, attackMessages, attackReply);
  return { aGot, bGot: await bAnswer, a, b };
}

t.test('during COPY IN: failing data, a Sync and a Query in one write end the session', async (t) => {
  const { aGot, bGot } = await attack(t, [query(COPY)], 'copyin', [copyData('notanint\n'), sync(), query("SELECT 'from-a'")], 'E08P01');
  // PostgreSQL would run that Query if the data failed first, and otherwise fail the COPY
  // on it and end the connection: the proxy does not guess, it ends the session as the second.
  t.same(aGot, ['E08P01', 'E08P01'], 'unexpected message type 0x51 during COPY from stdin; protocol synchronization was lost');
  t.same(bGot, B_ANSWER);
});

t.test('a Sync during COPY IN is not sent: good data, a Sync, CopyDone get one ReadyForQuery', async (t) => {
  const { aGot, bGot } = await attack(t, [query(COPY)], 'copyin', [copyData('1\n'), sync(), copyDone()], 'Z');
  t.same(aGot, ['done:COPY 1', 'Z'], 'as from PostgreSQL, which ignores the Sync');
  t.same(bGot, B_ANSWER);
});

t.test('once the COPY is known to have failed, a Sync and a Query are answered', async (t) => {
  const a = await connect(t, 'tenant_a', 'pw-a');
  const b = await connect(t, 'tenant_b', 'pw-b');
  await a.sendAndSettle(0, [query(COPY)], 'copyin');
  const bAnswer = b.send(1, query("SELECT 'b:' || current_setting('app.tenant_id')"));
  await sleep(50);
  t.same(await a.send(1, copyData('notanint\n')), ['E22P02', 'Z']);
  // (The connection may have gone to b meanwhile: a's work then waits for it.)
  t.same(await a.send(2, sync(), query("SELECT 'a:' || current_setting('app.tenant_id')")), ['Z', 'columns:?column?', 'a:a', 'done:SELECT 1', 'Z']);
  t.same(await bAnswer, B_ANSWER);
});

t.test('pipelined before the COPY began: Parse/Bind/Execute of COPY, failing data, Sync, Query', async (t) => {
  const { a, bAnswer } = await aHoldsBWaits(t);
  const got = await a.send(3, query('COMMIT'), parse({ text: COPY }), bind({}), execute({}), copyData('notanint\n'), sync(), query("SELECT 'a-after'"));
  // The Sync comes behind failing data: the server answers it (it was skipping to a Sync).
  t.same(got, ['done:COMMIT', 'Z', 'parsed', 'bound', 'copyin', 'E22P02', 'Z', 'columns:?column?', 'a-after', 'done:SELECT 1', 'Z']);
  t.same(await bAnswer, B_ANSWER);
});

t.test('pipelined before the COPY began: work behind its Execute ends the COPY (and the server connection)', async (t) => {
  const { a, bAnswer } = await aHoldsBWaits(t);
  await a.send(2, query('COMMIT'), parse({ text: COPY }), bind({}), execute({}), parse({ text: "SELECT 'a-after'" }), bind({}), execute({}), sync());
  // PostgreSQL fails the COPY on the Parse and ends the connection; the proxy relays that
  // FATAL as an ERROR (the client's connection outlives a server connection) and answers the Sync.
  t.same(a.seen, ['done:COMMIT', 'Z', 'parsed', 'bound', 'copyin', 'E08P01', 'E08P01', 'Z']);
  t.same(await bAnswer, B_ANSWER);
});

t.test("libpq's extended COPY: the Sync behind the Execute is ignored, the one after CopyDone answered", async (t) => {
  const { aGot, bGot, a } = await attack(t, [parse({ text: COPY }), bind({}), execute({}), sync()], 'copyin', [copyData('2\n'), copyDone(), sync()], 'Z');
  t.same(aGot, ['done:COPY 1', 'Z']);
  t.same(bGot, B_ANSWER);
  t.same(await a.send(1, query("SELECT 'a:' || current_setting('app.tenant_id')")), ['columns:?column?', 'a:a', 'done:SELECT 1', 'Z'], 'a is served next, with its own pin');
});

// Where the proxy cannot tell how many replies will come, the connection stays with the
// client that caused it (sticky, "replies in doubt") and is closed when it leaves: the
// client gets what PostgreSQL sends, and the other tenant waits for a fresh connection.

/** b's query, waited for as long as a keeps the connection. */
function bQuery(b: ReturnType<typeof rawOf>): Promise<string[]> {
  b.seen.length = 0;
  const want = b.st.ready + 1;
  b.raw.stream.write(query("SELECT 'b:' || current_setting('app.tenant_id')"));
  return b.until(want, 20000).then(() => [...b.seen]);
}

/**
 * a holds the one connection (a transaction open), so that b's query queues behind
 * everything a sends next. `d0`: the sticky sessions for replies in doubt so far.
 */
async function aHoldsBWaits(t: Teardown & { same: (a: unknown, b: unknown, m?: string) => void }) {
  const a = await connect(t, 'tenant_a', 'pw-a');
  const b = await connect(t, 'tenant_b', 'pw-b');
  const d0 = doubts();
  t.same(await a.send(1, query('BEGIN')), ['done:BEGIN', 'Z']);
  const bAnswer = bQuery(b);
  await sleep(50);
  return { a, bAnswer, d0 };
}

/** a's session: what it gets must be what PostgreSQL sends; b must not be served meanwhile. */
async function afterDoubt(t: { same: (a: unknown, b: unknown, m?: string) => void; equal: (a: unknown, b: unknown, m?: string) => void }, a: ReturnType<typeof rawOf>, bAnswer: Promise<string[]>) {
  let bDone = false;
  void bAnswer.then(() => (bDone = true));
  const a12 = await a.send(3, query("SELECT 'a1'"), query("SELECT 'a2' FROM pg_sleep(0.1)"), sync());
  t.same(a12, ['columns:?column?', 'a1', 'done:SELECT 1', 'Z', 'columns:?column?', 'a2', 'done:SELECT 1', 'Z', 'Z'], 'both Queries run, the Sync answered');
  t.same(await a.send(1, query("SELECT 'a3:' || current_setting('app.tenant_id')")), ['columns:?column?', 'a3:a', 'done:SELECT 1', 'Z'], "a's own answer, with its own pin");
  t.equal(bDone, false, 'b is not served on that connection');
}

/** How many sessions the proxy made sticky for replies in doubt so far. */
const doubts = () => proxy.log.lines.filter((l) => l.msg === 'client is now sticky to its server connection' && l.reason === 'replies in doubt').length;

/** Ends a's session; b then gets a fresh connection and exactly its own answer. */
async function thenB(t: { same: (a: unknown, b: unknown, m?: string) => void }, a: ReturnType<typeof rawOf>, bAnswer: Promise<string[]>, doubtsBefore: number) {
  t.same(doubts(), doubtsBefore + 1, "a's session was made sticky, once");
  a.raw.stream.write(serialize.end());
  t.same(await bAnswer, B_ANSWER);
}

for (const form of ['extended', 'simple'] as const) {
  t.test(`a COPY that fails before reading anything answers the Syncs behind it (${form} protocol)`, async (t) => {
    const { a, bAnswer, d0 } = await aHoldsBWaits(t);
    // FREEZE on a table not created in this transaction: 55000 right after CopyInResponse.
    const copy = 'COPY copied FROM STDIN (FREEZE)';
    const start = form === 'extended' ? [parse({ text: copy }), bind({}), execute({})] : [query(copy)];
    const got = await a.send(form === 'extended' ? 3 : 4, query('COMMIT'), ...start, sync(), sync());
    const began = form === 'extended' ? ['parsed', 'bound', 'copyin', 'E55000', 'Z', 'Z'] : ['copyin', 'E55000', 'Z', 'Z', 'Z'];
    t.same(got, ['done:COMMIT', 'Z', ...began], 'as from PostgreSQL');
    await afterDoubt(t, a, bAnswer);
    await thenB(t, a, bAnswer, d0);
  });
}

for (const after of ['Queries', 'a Sync and a Query', 'a Query and a Sync, in the same write as a CopyDone'] as const) {
  t.test(`statement_timeout raised at a copy message inside a batch: no skip to Sync (then ${after})`, async (t) => {
    const a = await connect(t, 'tenant_a', 'pw-a');
    const b = await connect(t, 'tenant_b', 'pw-b');
    const d0 = doubts();
    t.same(await a.send(1, query('SET statement_timeout = 200')), ['done:SET', 'Z']);
    await a.sendAndSettle(0, [parse({ text: 'SELECT 1' }), bind({}), serialize.flush()], 'bound');
    const bAnswer = bQuery(b);
    await sleep(400); // the timeout expires while the server waits for the batch's next message
    if (after === 'Queries') {
      t.same(await a.send(1, copyData('x')), ['E57014', 'Z'], 'PostgreSQL answers the error with ReadyForQuery at once');
      await afterDoubt(t, a, bAnswer);
    } else if (after === 'a Sync and a Query') {
      const got = await a.send(3, copyData('x'), sync(), query("SELECT 'a1'"));
      t.same(got, ['E57014', 'Z', 'Z', 'columns:?column?', 'a1', 'done:SELECT 1', 'Z']);
    } else {
      // The error comes while the Query's marker is unanswered: taken for a skip of the
      // Query, which the server then runs. (The marker's ParseComplete can show, once in doubt.)
      const got = await a.send(3, copyDone(), query("SELECT 'a1'"), sync());
      t.same(got.filter((r) => r !== 'parsed'), ['E57014', 'Z', 'columns:?column?', 'a1', 'done:SELECT 1', 'Z', 'Z']);
    }
    if (after !== 'Queries') t.same(await a.send(1, query("SELECT 'a3:' || current_setting('app.tenant_id')")), ['columns:?column?', 'a3:a', 'done:SELECT 1', 'Z']);
    await thenB(t, a, bAnswer, d0);
  });
}

t.test('a COPY that fails late, with work written after its CopyInResponse: that work stays with the client', async (t) => {
  const { a, bAnswer, d0 } = await aHoldsBWaits(t);
  a.seen.length = 0;
  const ready = a.st.ready;
  a.raw.stream.write(Buffer.concat([query('COMMIT'), parse({ text: 'COPY slow_fail FROM STDIN' }), bind({}), execute({}), sync(), sync()]));
  while (!a.seen.includes('copyin')) await sleep(2);
  // Written while the server sleeps in the trigger: it then answers both Syncs (the COPY
  // failed before reading them), ignores the CopyDone, runs this Query and answers it.
  // (A Query alone, during COPY IN, would end the session: see the first test.)
  a.raw.stream.write(Buffer.concat([copyDone(), query("SELECT 'a1:' || current_setting('app.tenant_id')")]));
  await a.until(ready + 4);
  // (Once in doubt the replies go to the client as they come: the ParseComplete of the
  // marker the proxy wrote in front of the Query can show too.)
  t.same(
    a.seen.filter((r) => r !== 'parsed'),
    ['done:COMMIT', 'Z', 'bound', 'copyin', 'EP0001', 'Z', 'Z', 'columns:?column?', 'a1:a', 'done:SELECT 1', 'Z'],
  );
  t.same(await a.send(1, query("SELECT 'a3:' || current_setting('app.tenant_id')")), ['columns:?column?', 'a3:a', 'done:SELECT 1', 'Z']);
  await thenB(t, a, bAnswer, d0);
});
