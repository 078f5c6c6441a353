// Messages PostgreSQL ignores, sent by a client with nothing else on its way: CopyData,
// CopyDone or CopyFail outside a COPY, a Flush with nothing before it. They must not take
// the pool's connection: PostgreSQL never answers them, so nothing would give it back, and
// outside a transaction no idle_in_transaction_session_timeout ends it either. (A reviewer's
// finding: one 5-byte CopyData held the only server connection until the client left.)
// Pool of ONE server connection, two tenants.

import t from 'tap';
import { serialize } from 'pg-protocol';
import { rawOf } from './helpers/raw-client.js';
import { tenantClient, tenantLab } from './helpers/tenant-lab.js';

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
    const started = Date.now();
    const got = await b.query<{ pin: string }>("SELECT current_setting('app.tenant_id') AS pin").then(
      (x) => x.rows[0]?.pin,
      (e: { code?: string }) => `error ${e.code}`,
    );
    t.equal(got, 'b', 'another tenant gets the connection at once');
    t.ok(Date.now() - started < 2000, 'without waiting for it');
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
