// A separate settings switch (`BEGIN; SET …; COMMIT`, for work that cannot carry an inline
// one) that fails must not let the client's work run with the previous client's pin. The
// failed switch leaves an aborted BEGIN block, and work that starts with ROLLBACK leaves it:
// so the work waits for the switch's ReadyForQuery, and fails with it.

import t from 'tap';
import pg from 'pg';
import { SERVER_ROLE } from './helpers/proxy.js';
import { tenantLab } from './helpers/tenant-lab.js';

const { pgs, proxy } = await tenantLab(t);
await pgs.query(`INSERT INTO notes VALUES ('b', 'b-secret'); CREATE TABLE loot (body text); GRANT ALL ON loot TO ${SERVER_ROLE}`);

async function client(user: string, password: string) {
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user, password, database: 'postgres' });
  c.on('error', () => {});
  await c.connect();
  t.teardown(() => c.end().catch(() => {}));
  return c;
}

t.test("a switch that fails: the client's work behind it does not run, under the other tenant's pin or at all", async (t) => {
  const a = await client('tenant_a', 'pw-a');
  const b = await client('tenant_b', 'pw-b');
  // a's own setting, applied on every switch to a: a search_path long enough that
  // set_config() of it takes tens of milliseconds.
  const path = Array.from({ length: 150_000 }, (_, i) => `s${i}`).join(', ');
  await a.query(`SET search_path = '${path}'`);
  // From now on server connections start with a statement_timeout the switch outlasts.
  await pgs.query(`ALTER ROLE ${SERVER_ROLE} SET statement_timeout = '10ms'`);
  await pgs.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '${SERVER_ROLE}'`);
  t.same((await b.query("SELECT current_setting('app.tenant_id') AS pin")).rows, [{ pin: 'b' }], "b's pin on a new connection");
  const failures: string[] = [];
  for (let i = 0; i < 3; i++) {
    const steal = "ROLLBACK; INSERT INTO public.loot SELECT current_setting('app.tenant_id') || ':' || coalesce((SELECT string_agg(body, ',') FROM public.notes), '')";
    failures.push(await a.query(steal).then(() => 'ran', (e: { code?: string; message: string }) => `${e.code} ${e.message}`));
    t.same((await b.query("SELECT current_setting('app.tenant_id') AS pin")).rows, [{ pin: 'b' }], 'b goes on');
  }
  // (The timeout's cancel can be reported as "due to user request": PostgreSQL signals the
  // backend's process group too.)
  for (const f of failures) t.match(f, /^57014 could not apply session settings: canceling statement due to /, 'a hears its switch failed');
  t.same((await pgs.query('SELECT body FROM loot')).rows, [], "a's work never ran");
});
