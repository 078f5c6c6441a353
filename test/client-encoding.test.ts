// Client encodings whose characters may hide an ASCII byte (SJIS, BIG5, GBK, UHC, GB18030,
// JOHAB): a reviewer's attack read tenant a's rows as tenant b. In SJIS `0x81 0x5C` is one
// character to PostgreSQL and `\` to a UTF-8 reader, so `E'<81 5C>', set_config(...) --'` was
// one string literal to the policy and a set_config() call to the server. Refused wherever
// the client can set one; a connection the server reports one on by any other way (a
// function's dynamic SQL) is given up. Pool of ONE server connection, two pinned tenants.

import t from 'tap';
import { execFile } from 'node:child_process';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { pgBin } from './helpers/postgres.js';
import { SERVER_ROLE } from './helpers/proxy.js';
import { rawOf } from './helpers/raw-client.js';
import { pinNow, tenantClient, tenantLab } from './helpers/tenant-lab.js';

const { pgs, proxy } = await tenantLab(t);
await pgs.query("INSERT INTO notes VALUES ('a', 'secret of a'), ('b', 'note of b')");

/** The attack's Query: a set_config() the UTF-8 reading takes for part of a string literal. */
const hidden = Buffer.concat([
  Buffer.from("SELECT E'"),
  Buffer.from([0x81, 0x5c]),
  Buffer.from("', pg_catalog.set_config($$app.tenant_id$$, $$a$$, false) AS c --'"),
]);

t.test('SET client_encoding to such an encoding is refused, in every form; the attack then fails', async (t) => {
  const b = await tenantClient(t, proxy.port, 'b');
  for (const sql of ["SET client_encoding = 'SJIS'", "SET NAMES 'BIG5'", "SELECT set_config('client_encoding', 'GBK', false)", "BEGIN; SET LOCAL client_encoding = 'SJIS'; COMMIT"]) {
    const err = await b.query(sql).then(() => null, (e: Error & { code?: string }) => e);
    t.equal(err?.code, '42501', `refused: ${sql}`);
    t.equal(err?.message, 'permission denied to set parameter "client_encoding"');
  }
  await b.query('ROLLBACK').catch(() => undefined);
  t.same((await b.query('SHOW client_encoding')).rows, [{ client_encoding: 'UTF8' }], 'still UTF8');
  // The same bytes in UTF-8 are one string literal, as the policy reads them: nothing is set.
  const attacker = rawOf(await tenantClient(t, proxy.port, 'b'));
  const head = Buffer.alloc(5);
  head[0] = 0x51;
  head.writeInt32BE(4 + hidden.length + 1, 1);
  const replies = await attacker.send(1, head, hidden, Buffer.from([0]));
  const got = replies[0] ?? '';
  t.equal(got, 'E22021', 'invalid UTF-8 in the statement: PostgreSQL refuses it');
  t.equal((await pinNow(b)).pin, 'b', "b's pin is unchanged");
  t.same((await b.query('SELECT body FROM notes')).rows, [{ body: 'note of b' }], "and b reads only b's rows");
  t.ok(proxy.audit.lines.some((l) => l.event === 'policy.blocked' && l.variable === 'client_encoding'), 'audited');
});

t.test('client_encoding such an encoding at startup is FATAL 42501', async (t) => {
  // psql sends PGCLIENTENCODING as the client_encoding startup parameter. (Not spawnSync: the
  // proxy runs in this process.)
  const psql = (encoding: string) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const args = ['-X', '-At', '-h', '127.0.0.1', '-p', String(proxy.port), '-U', 'tenant_b', '-d', 'postgres', '-c', 'SHOW client_encoding'];
      const env = { ...process.env, PGPASSWORD: 'pw-b', PGCLIENTENCODING: encoding, PGSSLMODE: 'disable' };
      execFile(pgBin('psql'), args, { env, timeout: 20_000 }, (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
    });
  const refused = await psql('SJIS');
  t.not(refused.code, 0, 'psql with PGCLIENTENCODING=SJIS fails');
  t.match(refused.stderr, /FATAL: {2}permission denied to set parameter "client_encoding"/);
  t.match(refused.stderr, /DETAIL: {2}pgbastion reads statements as UTF-8/);
  t.equal((await psql('LATIN1')).stdout.trim(), 'LATIN1', 'an ASCII-safe encoding is fine');
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'tenant_b', password: 'pw-b', database: 'postgres', options: '-c client_encoding=win932' });
  c.on('error', () => undefined);
  const err = await c.connect().then(() => null, (e: Error & { code?: string }) => e);
  await c.end().catch(() => undefined);
  t.equal(err?.code, '42501', 'in options -c too');
});

t.test('a connection the server reports such an encoding on, set out of sight, is given up', async (t) => {
  // A function whose dynamic SQL no check on the client's text can see.
  await pgs.query(`CREATE FUNCTION to_sjis() RETURNS text LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'SET client_' || 'encoding = ' || quote_literal('SJ' || 'IS'); RETURN 'done'; END $$;
    GRANT EXECUTE ON FUNCTION to_sjis() TO ${SERVER_ROLE}`);
  t.teardown(() => pgs.query('DROP FUNCTION to_sjis()'));
  const b = await tenantClient(t, proxy.port, 'b');
  const before = (await pinNow(b)).pid;
  const err = await b.query('SELECT to_sjis()').then(() => null, (e: Error & { code?: string }) => e);
  t.equal(err?.code, '08006', 'the statement gets an error: its connection is gone');
  const a = await tenantClient(t, proxy.port, 'a');
  const next = await pinNow(a);
  t.not(next.pid, before, 'the next client gets another server connection');
  t.same((await a.query('SHOW client_encoding')).rows, [{ client_encoding: 'UTF8' }], 'in UTF8');
  t.equal((await pinNow(b)).pin, 'b', 'b carries on, on a fresh connection');
});

t.test('an encoding switched and switched back inside one batch, out of sight: the statement read in it is refused', async (t) => {
  // A reviewer's finding: within a batch PostgreSQL converts each message as it reads it and
  // reports a changed client_encoding only at ReadyForQuery, and only if it still differs:
  // switch to SJIS (here a function's dynamic SQL, as a DBA may have written), send the hidden
  // set_config, switch back, and the backstop never sees it. But the hidden text is not UTF-8,
  // which this client speaks: refused before the server reads it.
  await pgs.query(`CREATE FUNCTION enc(e text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'SET client_' || 'encoding = ' || quote_literal(e); RETURN e; END $$;
    GRANT EXECUTE ON FUNCTION enc(text) TO ${SERVER_ROLE}`);
  t.teardown(() => pgs.query('DROP FUNCTION enc(text)'));
  const b = rawOf(await tenantClient(t, proxy.port, 'b'));
  const step = (text: Buffer | string) => [
    (() => {
      const sql = typeof text === 'string' ? Buffer.from(text) : text;
      const body = Buffer.concat([Buffer.from([0]), sql, Buffer.from([0, 0, 0])]); // unnamed, text, no types
      const head = Buffer.alloc(5);
      head[0] = 0x50;
      head.writeInt32BE(4 + body.length, 1);
      return Buffer.concat([head, body]);
    })(),
    serialize.bind({}),
    serialize.execute({}),
  ];
  const replies = await b.sendAndSettle(1, [...step("SELECT enc('SJIS')"), ...step(hidden), ...step("SELECT enc('UTF8')"), ...step('SELECT tenant, body FROM notes'), serialize.sync()]);
  t.ok(replies.includes('E22021'), `the hidden statement is refused (${replies.join(' ')})`);
  t.notOk(replies.includes('a|secret of a'), "no row of a's");
  t.same(await b.send(1, serialize.query("SELECT current_setting('app.tenant_id') AS pin")), ['columns:pin', 'b', 'done:SELECT 1', 'Z'], "b's pin is b");
});
