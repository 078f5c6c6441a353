// Brute-force lockout through the proxy: repeated wrong passwords lock the source address
// and the user; while locked even the right password is refused; the lock lifts on time.

import t from 'tap';
import pg from 'pg';
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
