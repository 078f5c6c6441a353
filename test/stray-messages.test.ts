// Messages PostgreSQL ignores, sent by a client with nothing else on its way: CopyData,
// CopyDone or CopyFail outside a COPY, a Flush with nothing before it. They must not take
// the pool's connection: PostgreSQL never answers them, so nothing would give it back, and
// outside a transaction no idle_in_transaction_session_timeout ends it either. (A reviewer's
// finding: one 5-byte CopyData held the only server connection until the client left.)
// Pool of ONE server connection, two tenants.

import t from 'tap';
import { serialize } from 'pg-protocol';
import { cancelClient } from './helpers/cancel.js';
import { rawOf } from './helpers/raw-client.js';
import { pinNow, tenantClient, tenantLab } from './helpers/tenant-lab.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const { proxy } = await tenantLab(t);

/** A CopyData message with `size` bytes of data. */
const copyData = (size: number) => serialize.copyData(Buffer.alloc(size, 0x78));

const smuggler = serialize.copyData(serialize.query("SELECT 'smuggled' AS s"));

const strays: [string, Buffer[]][] = [
  ['a CopyData', [copyData(1)]],
  ['a CopyDone', [serialize.copyDone()]],
  ['a CopyFail', [serialize.copyFail('never mind')]],
  ['a Flush', [serialize.flush()]],
  ['CopyData of 200 kB (read in several pieces)', [copyData(200_000)]],
  // Its data is a whole Query: should the proxy drop the header and pass on the rest, the
  // server would run a statement no policy check saw.
  ['CopyData whose data, written apart from its header, is a Query', [smuggler.subarray(0, 5), smuggler.subarray(5)]],
  ['CopyData whose header comes in two writes', [smuggler.subarray(0, 2), smuggler.subarray(2, 5), smuggler.subarray(5)]],
  ['several in one write', [Buffer.concat([copyData(10), copyData(20), serialize.copyDone(), serialize.flush()])]],
];

for (const [what, writes] of strays) {
  t.test(`${what}, with nothing else on its way, does not hold the pool's connection`, async (t) => {
    const a = await tenantClient(t, proxy.port, 'a');
    const b = await tenantClient(t, proxy.port, 'b');
    await b.query('SELECT 1');
    const r = rawOf(a);
    for (const w of writes) {
      r.raw.stream.write(w);
      await sleep(20);
    }
    await sleep(200);
    const got = await pinNow(b);
    t.equal(got.pin, 'b', 'another tenant gets the connection at once');
    t.ok(got.ms < 2000, 'without waiting for it');
    t.same(r.seen, [], 'the sender hears nothing, as from PostgreSQL');
    t.same(await r.send(1, serialize.query("SELECT current_setting('app.tenant_id') AS pin")), ['columns:pin', 'a', 'done:SELECT 1', 'Z'], 'and its next statement runs as usual');
  });
}

t.test('inside a transaction they still go to the server, in order', async (t) => {
  const a = await tenantClient(t, proxy.port, 'a');
  const r = rawOf(a);
  t.same(await r.send(1, serialize.query('BEGIN')), ['done:BEGIN', 'Z']);
  r.raw.stream.write(Buffer.concat([copyData(5), serialize.flush()]));
  await sleep(100);
  t.same(await r.send(1, serialize.query('COMMIT')), ['done:COMMIT', 'Z'], 'the transaction goes on');
});

t.test('an empty CopyData whose header is split, then a CopyData in the same write: both dropped', async (t) => {
  const a = await tenantClient(t, proxy.port, 'a');
  const b = await tenantClient(t, proxy.port, 'b');
  await b.query('SELECT 1');
  const r = rawOf(a);
  const empty = serialize.copyData(Buffer.alloc(0));
  r.raw.stream.write(empty.subarray(0, 3));
  await sleep(50);
  r.raw.stream.write(Buffer.concat([empty.subarray(3), copyData(1)]));
  await sleep(200);
  const got = await Promise.race([
    b.query<{ pin: string }>("SELECT current_setting('app.tenant_id') AS pin").then((x) => x.rows[0]?.pin),
    sleep(2000).then(() => 'still waiting'),
  ]);
  t.equal(got, 'b', 'another tenant gets the connection at once');
  t.same(r.seen, []);
});

// The rest of a passed-through message must never reach another server connection than its
// start: a CopyData whose data is a whole Query would run it there, past every check. (A
// reviewer's findings, older than the drop of stray messages.)
const smuggled = serialize.copyData(serialize.query("SELECT set_config('app.tenant_id', 'b', false); SELECT body FROM notes"));

t.test("a CopyData half sent when the server connection dies: its rest does not run on the next one", async (t) => {
  const b = await tenantClient(t, proxy.port, 'b');
  await b.query("INSERT INTO notes (body) VALUES ('b-secret')");
  const a = await tenantClient(t, proxy.port, 'a');
  const r = rawOf(a);
  t.same(await r.send(1, serialize.query('SELECT pg_terminate_backend(pg_catalog.pg_backend_pid())'), smuggled.subarray(0, 5)), ['columns:pg_terminate_backend', 't', 'E57P01', 'Z']);
  await sleep(200);
  r.seen.length = 0;
  r.raw.stream.write(smuggled.subarray(5));
  await sleep(500);
  t.same(r.seen, [], 'nothing ran');
  t.same(await r.send(1, serialize.query("SELECT current_setting('app.tenant_id') AS pin")), ['columns:pin', 'a', 'done:SELECT 1', 'Z'], 'a is still a');
});

t.test('a CopyData started behind work that is cancelled before it had a connection: its rest does not run', async (t) => {
  const holder = await tenantClient(t, proxy.port, 'a');
  const a = await tenantClient(t, proxy.port, 'a');
  await holder.query('BEGIN'); // holds the one connection
  const r = rawOf(a);
  r.raw.stream.write(Buffer.concat([serialize.query('SELECT 1'), smuggled.subarray(0, 5)]));
  await sleep(100);
  await cancelClient(proxy.port, a);
  await sleep(100);
  t.same(r.seen, ['E57014', 'Z'], 'the waiting Query is cancelled');
  r.seen.length = 0;
  r.raw.stream.write(smuggled.subarray(5));
  await sleep(100);
  await holder.query('COMMIT');
  await sleep(500);
  t.same(r.seen, [], 'nothing ran');
  t.same(await r.send(1, serialize.query("SELECT current_setting('app.tenant_id') AS pin")), ['columns:pin', 'a', 'done:SELECT 1', 'Z'], 'a is still a');
});
