// `ddl` audit events through the proxy, against a real PostgreSQL: no password reaches the
// audit trail in any of the forms that used to leak (continued strings, DO blocks,
// subscription connection strings), and DDL hidden from the standard reading by
// standard_conforming_strings = off is recorded. (test/ddl.test.ts has the pure tables.)

import t from 'tap';
import pg from 'pg';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, SERVER_ROLE, startProxy } from './helpers/proxy.js';

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
await pgs.query(`ALTER ROLE ${SERVER_ROLE} CREATEROLE`);
const USER_PASSWORD = 'marker-user-pw-77d2';
// (No pinned variables: with them DO blocks are refused, and their audit is the point here.)
const proxy = await startProxy(t, pgs, { users: [{ name: 'alice', password: USER_PASSWORD }], extra: { pinning: { variables: [] } } });

const settle = () => new Promise((r) => setTimeout(r, 150));
const ddlEvents = () => proxy.audit.lines.filter((l) => l.event === 'ddl');
/** The ddl events written while `run` ran. */
async function recorded(run: (c: pg.Client) => Promise<unknown>): Promise<Record<string, unknown>[]> {
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'alice', password: USER_PASSWORD, database: 'postgres' });
  await c.connect();
  const before = ddlEvents().length;
  try {
    await run(c);
  } finally {
    await c.end();
  }
  await settle();
  return ddlEvents().slice(before);
}
const extended = (text: string) => ({ text, values: [], queryMode: 'extended' }) as pg.QueryConfig;
const shape = (e: Record<string, unknown>) => [e.class, e.node, e.statement, e.outcome, e.command_tag ?? e.sqlstate];

t.test('a password continued over a newline is redacted whole (simple and extended protocol)', async (t) => {
  const got = await recorded(async (c) => {
    await c.query("CREATE ROLE r2 PASSWORD 'SECRETBBB1'\n'SECRETBBB2'");
    await c.query("ALTER ROLE r2 PASSWORD E'SECRETBBB3'\n'SECRETBBB4'");
    await c.query(extended("ALTER ROLE r2 PASSWORD 'SECRETBBB5'\n'SECRETBBB6'"));
    await c.query('DROP ROLE r2');
  });
  t.same(got.map(shape), [
    ['role', 'CreateRoleStmt', 'CREATE ROLE r2 PASSWORD <REDACTED>', 'ok', 'CREATE ROLE'],
    ['role', 'AlterRoleStmt', 'ALTER ROLE r2 PASSWORD <REDACTED>', 'ok', 'ALTER ROLE'],
    ['role', 'AlterRoleStmt', 'ALTER ROLE r2 PASSWORD <REDACTED>', 'ok', 'ALTER ROLE'], // session mode: the batch's tag
    ['role', 'DropRoleStmt', 'DROP ROLE r2', 'ok', 'DROP ROLE'],
  ]);
});

t.test('a password inside a DO block is redacted', async (t) => {
  const got = await recorded(async (c) => {
    await c.query("DO $$ BEGIN EXECUTE 'CREATE ROLE r3 PASSWORD ''SECRETCCC'''; END $$");
    await c.query('DROP ROLE r3');
  });
  t.same(got.map(shape), [
    ['dynamic', 'DoStmt', 'DO $$ BEGIN EXECUTE <REDACTED>; END $$', 'ok', 'DO'],
    ['role', 'DropRoleStmt', 'DROP ROLE r3', 'ok', 'DROP ROLE'],
  ]);
});

t.test('subscription connection strings are redacted, also when the statement fails', async (t) => {
  const got = await recorded(async (c) => {
    // Not a superuser: both fail (42501, 42704), and are recorded all the same.
    await c.query("CREATE SUBSCRIPTION s1 CONNECTION 'host=127.0.0.1 port=1 password=SECRETIII' PUBLICATION p WITH (connect = false)").catch(() => {});
    await c.query("ALTER SUBSCRIPTION s1 CONNECTION 'host=127.0.0.1 password=SECRETIII'").catch(() => {});
  });
  t.same(got.map((e) => [e.node, e.statement, e.outcome]), [
    ['CreateSubscriptionStmt', 'CREATE SUBSCRIPTION s1 CONNECTION <REDACTED> PUBLICATION p WITH (connect = false)', 'error'],
    ['AlterSubscriptionStmt', 'ALTER SUBSCRIPTION s1 CONNECTION <REDACTED>', 'error'],
  ]);
});

t.test('DDL that only a server with standard_conforming_strings = off sees is recorded', async (t) => {
  await pgs.query(`CREATE TABLE victim (x int); GRANT ALL ON victim TO ${SERVER_ROLE}; ALTER TABLE victim OWNER TO ${SERVER_ROLE}`);
  const got = await recorded(async (c) => {
    await c.query('SET standard_conforming_strings = off');
    await c.query("SELECT 'x\\' , ' ; DROP TABLE victim; -- '");
  });
  const { rows } = await pgs.query<{ t: string | null }>("SELECT to_regclass('victim')::text AS t");
  t.equal(rows[0]!.t, null, 'the server did drop the table');
  t.same(got.map(shape), [['ddl', 'DropStmt', 'DROP TABLE victim', 'ok', 'DROP TABLE']]);
});

t.test('a statement the parser cannot read is recorded as unparsed, its literals redacted', async (t) => {
  const got = await recorded((c) => c.query("CREATE ROLE r4 PASSWORD 'SECRETNNN' WITH NONSENSE").catch(() => {}));
  t.same(got.map(shape), [['unparsed', '', 'CREATE ROLE r4 PASSWORD<REDACTED>', 'error', '42601']]);
});

t.test('no secret in any log line', async (t) => {
  const all = JSON.stringify(proxy.log.lines) + JSON.stringify(proxy.audit.lines);
  t.notMatch(all, /SECRET/);
  t.ok(ddlEvents().length >= 10, 'the events above were all written');
});
