// pgbastion logs in to its upstream with SCRAM-SHA-256 only: a server that asks for a
// cleartext password, or says AuthenticationOk without proving it knows the secret, is an
// impostor as far as pgbastion is concerned — it gets no password and no client.

import net from 'node:net';
import t from 'tap';
import pg from 'pg';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, SERVER_ROLE_PASSWORD, startProxy } from './helpers/proxy.js';

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);

/** A fake "PostgreSQL" that answers every startup packet with `reply`, recording what it is sent. */
async function impostor(t: { teardown(f: () => unknown): void }, reply: Buffer): Promise<{ port: number; received: () => Buffer }> {
  const chunks: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    let answered = false;
    s.on('data', (d: Buffer) => {
      chunks.push(d);
      if (!answered) {
        answered = true;
        s.write(reply);
      }
    });
    s.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    return new Promise((r) => server.close(r));
  });
  return { port: (server.address() as net.AddressInfo).port, received: () => Buffer.concat(chunks) };
}

const auth = (code: number) => {
  const b = Buffer.alloc(9);
  b.write('R', 0);
  b.writeInt32BE(8, 1);
  b.writeInt32BE(code, 5);
  return b;
};
const readyForQuery = Buffer.from([0x5a, 0, 0, 0, 5, 0x49]);

for (const [what, reply] of [
  ['asks for a cleartext password', auth(3)],
  ['says AuthenticationOk at once', Buffer.concat([auth(0), readyForQuery])],
] as const) {
  t.test(`an upstream that ${what} is refused`, async (t) => {
    const fake = await impostor(t, reply);
    const proxy = await startProxy(t, pgs, {
      users: [{ name: 'alice', password: 'alice-pw' }],
      extra: { upstreams: [{ host: '127.0.0.1', port: fake.port }] },
    });
    const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'alice', password: 'alice-pw', database: 'postgres' });
    const err = await c.connect().then(
      () => null,
      (e: { code?: string }) => e,
    );
    await c.end().catch(() => {});
    t.equal(err?.code, '08006', 'the client gets FATAL 08006');
    t.notOk(fake.received().includes(Buffer.from(SERVER_ROLE_PASSWORD)), 'the server role password was never sent');
  });
}
