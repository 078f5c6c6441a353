// Scratch (reviewer): a stray CopyData hit by an expired statement_timeout, with a Query
// (which gets markQuery's marker) and a Sync behind it in the same write. Pool of ONE
// connection, tenant b queued behind a. statement_timeout here is the server role's default
// (so b's lease needs only the pin switch, which rides inline in b's Query).
import t from 'tap';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, SERVER_ROLE, startProxy } from './helpers/proxy.js';
import { rawOf } from './helpers/raw-client.js';

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
await pgs.query(`ALTER ROLE ${SERVER_ROLE} SET statement_timeout = '300ms'`);
await pgs.query(`CREATE TABLE secrets (tenant text, secret text); INSERT INTO secrets VALUES ('a', 'a-secret-row'), ('b', 'b-row');
  GRANT ALL ON secrets TO ${SERVER_ROLE}`);
const proxy = await startProxy(t, pgs, {
  users: [
    { name: 'tenant_a', password: 'pw-a', pins: { 'app.tenant_id': 'a' } },
    { name: 'tenant_b', password: 'pw-b', pins: { 'app.tenant_id': 'b' } },
  ],
  extra: { pool: { mode: 'transaction', size: 1, acquire_timeout_ms: 10000 } },
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const { query, parse, bind, sync, flush } = serialize;
const copyData = (text: string) => serialize.copyData(Buffer.from(text));
const B_QUERY = "SELECT secret FROM secrets WHERE tenant = current_setting('app.tenant_id')";
const A_QUERY = "SELECT secret FROM secrets WHERE tenant = current_setting('app.tenant_id')";
const B_ANSWER = ['columns:secret', 'b-row', 'done:SELECT 1', 'Z'];
type Teardown = { teardown(f: () => unknown): void };

async function connect(t: Teardown, user: string, password: string) {
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user, password, database: 'postgres' });
  await c.connect();
  c.on('error', () => {});
  t.teardown(() => c.end().catch(() => {}));
  return rawOf(c);
}

const doubts = () => proxy.log.lines.filter((l) => l.reason === 'replies in doubt').length;

t.test('stray CopyData + Query + Sync: b reads a\'s row', async (t) => {
  const a = await connect(t, 'tenant_a', 'pw-a');
  const b = await connect(t, 'tenant_b', 'pw-b');
  t.same(await a.send(1, query('SHOW statement_timeout')), ['columns:statement_timeout', '300ms', 'done:SHOW', 'Z']);
  await a.sendAndSettle(0, [parse({ text: 'SELECT 1' }), bind({}), flush()], 'bound');
  const bAnswer = b.send(1, query(B_QUERY));
  await sleep(600); // the timeout expires while the server waits for the batch's next message
  const aGot = await a.sendAndSettle(3, [copyData('x'), query(A_QUERY), sync()]);
  const bGot = await bAnswer;
  await sleep(500);
  t.comment('a got: ' + JSON.stringify(aGot));
  t.comment('b got: ' + JSON.stringify(bGot) + ' (all b saw: ' + JSON.stringify(b.seen) + ')');
  t.equal(doubts(), 1, 'a was made sticky (replies in doubt)');
  t.same(bGot, B_ANSWER, 'b gets exactly its own answer');
});
