// Brute-force lockout through the proxy: repeated wrong passwords lock the source address
// and the user; while locked even the right password is refused; the lock lifts on time.

import net from 'node:net';
import t from 'tap';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { ScramClientSession } from '../src/auth/scram.js';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, startProxy } from './helpers/proxy.js';

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
const proxy = await startProxy(t, pgs, {
  users: [
    { name: 'victim', password: 'right-pw' },
    { name: 'bystander', password: 'by-pw' },
  ],
  extra: { limits: { auth_failures: { max: 3, window_s: 60, lockout_s: 2 } } },
});

async function login(user: string, password: string): Promise<{ code?: string; message: string }> {
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user, password, database: 'postgres' });
  try {
    await c.connect();
    await c.query('SELECT 1');
    return { message: 'ok' };
  } catch (e) {
    const err = e as { code?: string; message: string };
    return { code: err.code, message: err.message };
  } finally {
    await c.end().catch(() => {});
  }
}

t.test('three failures lock; the right password is refused while locked; the lock lifts', async (t) => {
  t.equal((await login('victim', 'right-pw')).message, 'ok', 'works before any failure');
  for (let i = 1; i <= 3; i++) t.equal((await login('victim', `guess-${i}`)).code, '28P01', `failure ${i} is a plain 28P01`);
  const locked = await login('victim', 'right-pw');
  t.equal(locked.code, '28000', 'locked: refused before the password is checked');
  t.match(locked.message, /too many failed authentication attempts .*try again in \d+ s/);
  const other = await login('bystander', 'by-pw');
  t.equal(other.code, '28000', 'the address lock refuses every user from that address');
  await new Promise((r) => setTimeout(r, 2200));
  t.equal((await login('victim', 'right-pw')).message, 'ok', 'lock lifted after lockout_s');
});

t.test('unknown users count too, and are refused with the same words as known ones', async (t) => {
  for (let i = 1; i <= 3; i++) t.equal((await login('nobody', `x${i}`)).code, '28P01');
  const locked = await login('nobody', 'x');
  t.equal(locked.code, '28000');
  t.match(locked.message, /too many failed authentication attempts/);
  await new Promise((r) => setTimeout(r, 2200));
});

/**
 * A login taken up to the point where its proof is due: startup, SASLInitialResponse, the
 * server-first message read and the client-final computed but not sent. `finish` sends it
 * and says what came back: ok, or the error's SQLSTATE.
 */
async function loginUpToProof(user: string, password: string): Promise<{ finish: () => Promise<string> }> {
  const sock = net.connect(proxy.port, '127.0.0.1');
  let buf = Buffer.alloc(0);
  const waiters: (() => void)[] = [];
  sock.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    waiters.splice(0).forEach((w) => w());
  });
  sock.on('error', () => undefined);
  const next = async (): Promise<{ type: string; body: Buffer }> => {
    while (buf.length < 5 || buf.length < 1 + buf.readInt32BE(1)) await new Promise<void>((r) => waiters.push(r));
    const len = buf.readInt32BE(1);
    const msg = { type: String.fromCharCode(buf[0]!), body: buf.subarray(5, 1 + len) };
    buf = buf.subarray(1 + len);
    return msg;
  };
  await new Promise<void>((r) => sock.once('connect', () => r()));
  const params = Buffer.from(`user\0${user}\0database\0postgres\0\0`);
  const startup = Buffer.alloc(8);
  startup.writeInt32BE(8 + params.length, 0);
  startup.writeInt32BE(196608, 4);
  sock.write(Buffer.concat([startup, params]));
  await next(); // AuthenticationSASL
  const scram = new ScramClientSession(password);
  sock.write(Buffer.concat([serialize.sendSASLInitialResponseMessage(scram.mechanism, scram.clientFirst())]));
  const serverFirst = await next();
  const clientFinal = await scram.handleServerFirst(serverFirst.body.subarray(4).toString());
  return {
    finish: async () => {
      sock.write(serialize.sendSCRAMClientFinalMessage(clientFinal));
      for (;;) {
        const m = await next();
        if (m.type === 'E') {
          sock.destroy();
          return /\0C([0-9A-Z]{5})\0/.exec(`\0${m.body.toString('latin1')}`)?.[1] ?? 'E';
        }
        if (m.type === 'R' && m.body.readInt32BE(0) === 0) {
          sock.destroy();
          return 'ok';
        }
      }
    },
  };
}

t.test('logins already under way when the lock falls do not get their passwords checked', async (t) => {
  // A reviewer's finding: the lock was checked only at startup, so ten logins opened at once
  // each got a guess, and a right one among them logged in after the lock fell.
  await new Promise((r) => setTimeout(r, 2200)); // (the locks of the tests above lifted)
  const pending = [];
  for (let i = 0; i < 10; i++) pending.push(await loginUpToProof('victim', i === 9 ? 'right-pw' : `guess-${i}`));
  const answers: string[] = [];
  for (const p of pending) answers.push(await p.finish());
  t.same(answers.slice(0, 3), ['28P01', '28P01', '28P01'], 'three guesses are checked');
  t.same(answers.slice(3), Array(7).fill('28000'), 'then every login is refused unchecked, the right password too');
  await new Promise((r) => setTimeout(r, 2200));
});
