// A separate settings switch (`BEGIN; SET …; COMMIT`, for work that cannot carry an inline
// one) that fails must not let the client's work run with the previous client's pin. The
// failed switch leaves an aborted BEGIN block, and work that starts with ROLLBACK leaves it:
// so the work waits for the switch's ReadyForQuery, and fails with it.

import t from 'tap';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { endServerConnections, SERVER_ROLE } from './helpers/proxy.js';
import { cancelClient } from './helpers/cancel.js';
import { rawOf } from './helpers/raw-client.js';
import { tenantLab } from './helpers/tenant-lab.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** A search_path that set_config() takes tens of milliseconds to apply (under the policy parser's 512 KiB). */
const LONG_PATH = Array.from({ length: 65_000 }, (_, i) => `s${i}`).join(', ');
const STEAL = "ROLLBACK; INSERT INTO public.loot SELECT current_setting('app.tenant_id') || ':' || coalesce((SELECT string_agg(body, ',') FROM public.notes), '')";

/**
 * From now on server connections start with a statement_timeout a switch to LONG_PATH
 * outlasts (`fail`), or without one.
 */
async function switchesToLongPath(outcome: 'fail' | 'succeed'): Promise<void> {
  await pgs.query(`ALTER ROLE ${SERVER_ROLE} ${outcome === 'fail' ? "SET statement_timeout = '5ms'" : 'RESET statement_timeout'}`);
  await endServerConnections(pgs);
}

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
  await a.query(`SET search_path = '${LONG_PATH}'`); // a's own setting, applied on every switch to a
  await switchesToLongPath('fail');
  t.same((await b.query("SELECT current_setting('app.tenant_id') AS pin")).rows, [{ pin: 'b' }], "b's pin on a new connection");
  const failures: string[] = [];
  for (let i = 0; i < 3; i++) {
    failures.push(await a.query(STEAL).then(() => 'ran', (e: { code?: string; detail?: string }) => `${e.code} ${e.detail}`));
    t.same((await b.query("SELECT current_setting('app.tenant_id') AS pin")).rows, [{ pin: 'b' }], 'b goes on');
  }
  // (The timeout's cancel can be reported as "due to user request": PostgreSQL signals the
  // backend's process group too.)
  for (const f of failures) t.match(f, /^08006 could not apply session settings: canceling statement due to /, 'a hears its switch failed');
  t.same((await pgs.query('SELECT body FROM loot')).rows, [], "a's work never ran");
});

t.test('a lone BEGIN goes out with a failing switch; work behind it, in the same write or later, never runs', async (t) => {
  await switchesToLongPath('succeed');
  const a = await client('tenant_a', 'pw-a');
  const b = await client('tenant_b', 'pw-b');
  await a.query(`SET search_path = '${LONG_PATH}'`);
  await switchesToLongPath('fail');
  const r = rawOf(a);
  let replies = 0;
  for (const together of [true, false]) {
    await pgs.query('DELETE FROM loot');
    t.same((await b.query("SELECT current_setting('app.tenant_id') AS pin")).rows, [{ pin: 'b' }], "b's pin");
    r.seen.length = 0;
    if (together) {
      // Two Queries in one write: the BEGIN is not alone, both wait for the switch.
      r.raw.stream.write(Buffer.concat([serialize.query('BEGIN'), serialize.query(STEAL)]));
    } else {
      // The BEGIN goes with the switch (which takes tens of ms to time out); the rest comes while it runs.
      r.raw.stream.write(serialize.query('BEGIN'));
      await sleep(5);
      r.raw.stream.write(serialize.query(STEAL));
    }
    replies += 2;
    await r.until(replies, 5000);
    await sleep(300);
    t.same(r.seen, ['E08006', 'Z', 'E08006', 'Z'], `${together ? 'together' : 'apart'}: both fail`);
    t.same((await pgs.query('SELECT body FROM loot')).rows, [], "a's work never ran under b's pin");
  }
});

t.test('a cancel while the work waits behind its switch: the work is not sent, the client hears 57014', async (t) => {
  await pgs.query('DELETE FROM loot');
  await switchesToLongPath('succeed'); // the switch to a's LONG_PATH takes tens of ms, and succeeds
  const a = await client('tenant_a', 'pw-a');
  const b = await client('tenant_b', 'pw-b');
  await a.query(`SET search_path = '${LONG_PATH}'`);
  let cancelled = 0;
  for (let i = 0; i < 3; i++) {
    t.same((await b.query("SELECT current_setting('app.tenant_id') AS pin")).rows, [{ pin: 'b' }], "b's pin");
    const work = a.query("INSERT INTO public.loot VALUES ('not cancelled')").then(
      () => 'ran',
      (e: { code?: string; detail?: string }) => `${e.code} ${e.detail}`,
    );
    await sleep(3);
    await cancelClient(proxy.port, a);
    const r = await work;
    if (r === 'ran') continue; // the switch was done before the cancel came: nothing to cancel
    cancelled++;
    t.equal(r, '57014 cancelled while its session settings were being applied');
  }
  t.ok(cancelled > 0, `cancelled while held: ${cancelled} of 3`);
  t.equal((await pgs.query('SELECT count(*)::int AS n FROM loot')).rows[0].n, 3 - cancelled, 'a cancelled INSERT never ran');
  t.same((await a.query("SELECT current_setting('app.tenant_id') AS pin")).rows, [{ pin: 'a' }], 'a goes on, with its pin');
  t.same((await b.query("SELECT current_setting('app.tenant_id') AS pin")).rows, [{ pin: 'b' }], 'and b with its own: the connection went back');
});

t.test('Parse/Bind/Execute and Flush held behind a switch, cancelled: the error comes at once, before any Sync', async (t) => {
  // (A reviewer's finding: the client waiting on its Flush heard nothing until its Sync.)
  await switchesToLongPath('succeed');
  const a = await client('tenant_a', 'pw-a');
  const b = await client('tenant_b', 'pw-b');
  await a.query(`SET search_path = '${LONG_PATH}'`);
  const r = rawOf(a);
  let cancelled = 0;
  for (let i = 0; i < 3; i++) {
    t.same((await b.query("SELECT current_setting('app.tenant_id') AS pin")).rows, [{ pin: 'b' }], "b's pin");
    r.seen.length = 0;
    r.raw.stream.write(Buffer.concat([serialize.parse({ text: "SELECT 'work'" }), serialize.bind(), serialize.execute(), serialize.flush()]));
    await sleep(3);
    await cancelClient(proxy.port, a);
    const until = Date.now() + 2000;
    while (r.seen.length < 3 && !r.seen.includes('E57014') && Date.now() < until) await sleep(5);
    const beforeSync = [...r.seen];
    t.same(await r.sendAndSettle(1, [serialize.sync()]), ['Z'], 'its Sync gets ReadyForQuery alone');
    if (beforeSync.includes('work')) continue; // the switch was done before the cancel came
    cancelled++;
    t.same(beforeSync, ['E57014'], 'the client waiting on its Flush hears the cancel, before any Sync');
  }
  t.ok(cancelled > 0, `cancelled while held: ${cancelled} of 3`);
});

t.test('a client that leaves while its switch runs: the connection is not handed on behind it', async (t) => {
  // (A reviewer's leak: the connection went back "clean" with the switch still running, and
  // a second client with the same settings wrote its work right behind it.)
  await pgs.query('DELETE FROM loot');
  await switchesToLongPath('succeed');
  const a1 = await client('tenant_a', 'pw-a');
  const a2 = await client('tenant_a', 'pw-a');
  const b = await client('tenant_b', 'pw-b');
  await a1.query(`SET search_path = '${LONG_PATH}'`);
  await a2.query(`SET search_path = '${LONG_PATH}'`);
  await switchesToLongPath('fail');
  await b.query('BEGIN'); // b holds the one connection, with b's pin
  const [r1, r2] = [rawOf(a1), rawOf(a2)];
  r1.raw.stream.write(serialize.query('SELECT 1'));
  await sleep(100);
  r2.raw.stream.write(serialize.query(STEAL));
  await sleep(100);
  r1.raw.stream.write(serialize.end()); // read once a1 gets the connection and its switch is sent
  await sleep(100);
  await b.query('COMMIT');
  await r2.until(1, 5000);
  await sleep(300);
  t.same((await pgs.query('SELECT body FROM loot')).rows, [], "a2's work did not run under b's pin");
  t.match(r2.seen[0] ?? '', /^E/, 'a2 hears an error');
});

t.test('Parse/Bind/Execute and Flush held behind a switch that fails: the error comes at once', async (t) => {
  await switchesToLongPath('succeed');
  const a = await client('tenant_a', 'pw-a');
  const b = await client('tenant_b', 'pw-b');
  await a.query(`SET search_path = '${LONG_PATH}'`);
  await switchesToLongPath('fail');
  await b.query('SELECT 1');
  const r = rawOf(a);
  r.raw.stream.write(Buffer.concat([serialize.parse({ text: 'SELECT 1' }), serialize.bind(), serialize.execute(), serialize.flush()]));
  const until = Date.now() + 3000;
  while (r.seen.length === 0 && Date.now() < until) await sleep(5);
  t.match(r.seen, [/^E08006$/], 'the client waiting on its Flush hears the error, before any Sync');
  t.same(await r.sendAndSettle(1, [serialize.sync()]), ['Z'], 'its Sync then gets ReadyForQuery alone');
});


t.test("the client's own statement_timeout does not cancel its switch (it is set last, behind a guard)", async (t) => {
  await switchesToLongPath('succeed');
  const a = await client('tenant_a', 'pw-a');
  const b = await client('tenant_b', 'pw-b');
  await a.query(`SET search_path = '${LONG_PATH}'`);
  await a.query("SET statement_timeout = '1ms'"); // shorter than set_config() of LONG_PATH in the switch
  for (let i = 0; i < 3; i++) {
    t.same((await b.query("SELECT current_setting('app.tenant_id') AS pin")).rows, [{ pin: 'b' }]);
    // a's statement itself may run out of its 1 ms (PostgreSQL resolves the long search_path
    // when a statement first uses it): that is its own 57014, not the switch's failure.
    const r = await a.query('SELECT 1 AS one').then(
      () => 'ran',
      (e: { code?: string; detail?: string }) => `${e.code} ${e.detail}`,
    );
    t.match(r, /^(?:ran|57014 undefined)$/, `the switch went through (${r})`);
  }
});
