// The protocol-level statements pgbastion prepares for clients stay on server connections
// that other clients use next (transaction mode). No client may run them or drop them
// through SQL.

import t from 'tap';
import pg from 'pg';
import { tenantLab } from './helpers/tenant-lab.js';

const { pgs, proxy } = await tenantLab(t);
await pgs.query(`INSERT INTO notes VALUES ('a', 'a-note'), ('b', 'b-secret')`);

async function client(user: string, password: string) {
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user, password, database: 'postgres' });
  await c.connect();
  c.on('error', () => {});
  t.teardown(() => c.end().catch(() => {}));
  return c;
}
const outcome = (p: Promise<pg.QueryResult>) => p.then((r) => JSON.stringify(r.rows), (e: { code?: string; message: string }) => `${e.code} ${e.message}`);

t.test("tenant a can neither run nor drop tenant b's prepared statement", async (t) => {
  const b = await client('tenant_b', 'pw-b');
  const q = { name: 'lookup', text: "SELECT body FROM notes WHERE body <> 'b-customer-card-4111111111111111'", values: [] };
  t.same((await b.query(q)).rows, [{ body: 'b-secret' }]);
  const a = await client('tenant_a', 'pw-a'); // on the same server connection (a pool of one)
  // (pg_prepared_statements still lists it, text included: see README, Prepared statements.)
  const names = (await a.query("SELECT name FROM pg_prepared_statements WHERE statement LIKE '%b-customer-card%'")).rows.map((r) => r.name as string);
  t.equal(names.length, 1, "b's statement is on the connection a uses");
  for (const sql of [`EXECUTE ${names[0]}`, `DEALLOCATE ${names[0]}`, `DEALLOCATE PREPARE "${names[0]}"`]) {
    t.equal(await outcome(a.query(sql)), `42501 permission denied for prepared statement "${names[0]}"`, sql);
    t.equal(await outcome(a.query({ text: sql, values: [] })), `42501 permission denied for prepared statement "${names[0]}"`, `${sql} (extended protocol)`);
  }
  t.same((await b.query(q)).rows, [{ body: 'b-secret' }], "b's statement still runs");
});
