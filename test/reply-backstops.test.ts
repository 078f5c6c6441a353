// The backstops behind reply accounting, attacked with a server that says more than it was
// asked (test/helpers/upstream-tap.ts slips the messages in; a real PostgreSQL cannot be made
// to on cue). Each would otherwise let replies meant for one client reach another on a
// shared server connection, or a client read rows its switch was meant to hide:
// - the inline switch gives the connection up on any reply a SET cannot give
//   (ServerConnection.switchOutOfStep);
// - a ReadyForQuery with nothing owed, or a bare one taken for a Query's answer, makes the
//   session sticky ("replies in doubt"), and its connection is closed when it leaves, never
//   handed on (RelayLedger.inDoubt).
// Pool of ONE server connection, two pinned tenants, rows checked against the tenant asking.

import t from 'tap';
import pg from 'pg';
import { readyForQuery } from '../src/protocol/backend.js';
import { startProxy } from './helpers/proxy.js';
import { TENANTS, tenantClient, tenantLab } from './helpers/tenant-lab.js';
import { upstreamTap } from './helpers/upstream-tap.js';

const { pgs } = await tenantLab(t);
const tap = await upstreamTap(t, pgs.port);
const proxy = await startProxy(t, pgs, {
  users: TENANTS,
  extra: { pool: { mode: 'transaction', size: 1, acquire_timeout_ms: 5000 }, upstreams: [{ host: '127.0.0.1', port: tap.port }] },
});
await pgs.query("INSERT INTO notes VALUES ('a', 'a-secret'), ('b', 'b-note')");

function message(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeInt32BE(4 + body.length, 1);
  return Buffer.concat([head, body]);
}
const cstring = (s: string) => Buffer.from(`${s}\0`);
const dataRow = (value: string) => {
  const v = Buffer.from(value);
  const body = Buffer.alloc(2 + 4 + v.length);
  body.writeInt16BE(1, 0);
  body.writeInt32BE(v.length, 2);
  v.copy(body, 6);
  return message('D', body);
};
const commandComplete = (tag: string) => message('C', cstring(tag));

const open = (t: Test, who: 'a' | 'b'): Promise<pg.Client> => tenantClient(t, proxy.port, who);
type Test = Parameters<Parameters<typeof t.test>[1]>[0];

const pid = async (c: pg.Client) => (await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
const doubts = () => proxy.log.lines.filter((l) => l.msg === 'client is now sticky to its server connection' && l.reason === 'replies in doubt').length;

t.test('a reply no SET gives, ahead of an inline switch, gives the connection up: the client never reads it', async (t) => {
  const forged: [string, Buffer][] = [
    ['a DataRow', dataRow('a-secret')],
    ['a ReadyForQuery', readyForQuery('I')],
    ["another command's tag", Buffer.concat([commandComplete('SELECT 1')])],
  ];
  for (const [what, bytes] of forged) {
    const [a, b] = [await open(t, 'a'), await open(t, 'b')];
    const before = await pid(a); // the one connection holds a's pin
    const injected = tap.inject(`SET "app"."tenant_id" = 'b'; `, bytes, 'before');
    const got = await b.query<{ body: string }>('SELECT body FROM notes').then(
      (r) => r.rows.map((x) => x.body).join(','),
      (e: Error & { code?: string }) => `error ${e.code}`,
    );
    await injected;
    t.equal(got, 'error 08006', `${what}: b hears a lost connection, not the forged reply`);
    t.same((await b.query<{ body: string }>('SELECT body FROM notes')).rows, [{ body: 'b-note' }], `${what}: b's next statement reads b's row`);
    t.not(await pid(b), before, `${what}: on a new server connection`);
  }
});

t.test('a ReadyForQuery with nothing owed: the session keeps its connection, which is closed when it leaves', async (t) => {
  const a = await open(t, 'a');
  const b = await open(t, 'b');
  const doubted = doubts();
  await a.query('BEGIN'); // a holds the connection between statements
  const held = await pid(a);
  const injected = tap.inject("SELECT body FROM notes WHERE body = 'a-secret'", readyForQuery('T'), 'after');
  t.same((await a.query<{ body: string }>("SELECT body FROM notes WHERE body = 'a-secret'")).rows, [{ body: 'a-secret' }]);
  await injected;
  await new Promise((r) => setTimeout(r, 50)); // read by the proxy with nothing owed, not taken for the COMMIT's answer
  await a.query('COMMIT'); // (a client that is not sticky gives the connection back here)
  const waiting = b.query<{ body: string; pid: number }>('SELECT body, pg_backend_pid() AS pid FROM notes');
  await new Promise((r) => setTimeout(r, 200));
  t.equal(doubts(), doubted + 1, 'the session turned sticky: replies in doubt');
  await a.end().catch(() => undefined);
  const r = await waiting;
  t.same(r.rows.map((x) => x.body), ['b-note'], "b reads its own row, and nothing of a's replies");
  t.not(r.rows[0]?.pid, held, "b is on a new server connection: a's was closed, not handed on");
});

t.test('a bare ReadyForQuery taken for the answer to a Query: the connection is not handed on', async (t) => {
  const a = await open(t, 'a');
  const b = await open(t, 'b');
  const doubted = doubts();
  const held = await pid(a);
  // The server "answers" a's Query with a ReadyForQuery alone, then with its real replies.
  const sql = "SELECT body FROM notes WHERE body = 'a-secret' AND true";
  const injected = tap.inject(sql, readyForQuery('I'), 'before');
  await a.query(sql).catch(() => undefined);
  await injected;
  const waiting = b.query<{ body: string; pid: number }>('SELECT body, pg_backend_pid() AS pid FROM notes').then(
    (r) => r.rows,
    (e: Error) => e.message,
  );
  await new Promise((r) => setTimeout(r, 200));
  t.equal(doubts(), doubted + 1, 'the session turned sticky: replies in doubt');
  await a.end().catch(() => undefined);
  const rows = await waiting;
  t.same(typeof rows === 'string' ? rows : rows.map((x) => x.body), ['b-note'], "b reads its own row: none of a's replies reached it");
  t.not(typeof rows === 'string' ? held : rows[0]?.pid, held, "b is on a new server connection: a's was closed, not handed on");
});
