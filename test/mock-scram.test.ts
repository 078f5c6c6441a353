// What an unknown user's SCRAM exchange is derived from (src/auth/mock.ts): a fake-salt key per
// instance (shared with its workers) and the iteration count most users have, so two runtimes
// of one instance answer an unknown name with the same salt, and a reload that adds or
// removes users does not move it.

import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import pino from 'pino';
import t from 'tap';
import { MOCK_KEY_ENV, mockIterations, mockSaltKey, shareMockKey } from '../src/auth/mock.js';
import { makeScramSecret, ScramServerSession } from '../src/auth/scram.js';
import { buildConfig } from '../src/config/load.js';
import type { Config } from '../src/config/types.js';
import { Runtime } from '../src/proxy/runtime.js';

const hex = (b: Buffer) => b.toString('hex');

t.test('fake-salt key: random per instance, from the environment when given, never from the config', async (t) => {
  // A reviewer's finding: derived from the server-role passwords (scrypt), the salt any
  // made-up name gets was an offline oracle for them: a dictionary found 'server-role-pw'.
  const key = mockSaltKey({});
  t.equal(key.length, 32);
  t.equal(hex(mockSaltKey({})), hex(key), 'one key for the life of the process');
  const given = 'ab'.repeat(32);
  t.equal(hex(mockSaltKey({ [MOCK_KEY_ENV]: given })), given, `${MOCK_KEY_ENV}, when set, is the key`);
  t.throws(() => mockSaltKey({ [MOCK_KEY_ENV]: 'not hex' }), /64 hexadecimal digits/);
  const env: NodeJS.ProcessEnv = {};
  shareMockKey(env);
  t.equal(env[MOCK_KEY_ENV], hex(key), 'shareMockKey hands the key to the workers the primary forks');
  const script = `import(${JSON.stringify(path.resolve('src/auth/mock.ts'))}).then((m) => process.stdout.write(m.mockSaltKey({}).toString('hex')))`;
  const elsewhere = () => execFileSync(process.execPath, ['--import', 'tsx', '-e', script], { encoding: 'utf8' });
  t.not(elsewhere(), elsewhere(), 'another instance draws its own: nothing about it comes from configuration or passwords');
});

t.test('fake iteration count: what most users have', async (t) => {
  const secret = async (iterations: number) => makeScramSecret('x', { iterations });
  const [s4096, s8192, s600k] = await Promise.all([secret(4096), secret(8192), secret(600000)]);
  const users = (...secrets: (string | undefined)[]) => ({
    users: secrets.map((s, i) => ({ name: `u${i}`, server_role: 'r', pins: {}, ...(s ? { secret: s } : {}) })),
  });
  const cases: Array<[string, Pick<Config, 'users'>, number]> = [
    ['no users', users(), 4096],
    ['users without secrets (cert only)', users(undefined, undefined), 4096],
    ['all 4096', users(s4096, s4096), 4096],
    ['all 600000', users(s600k, s600k, s600k), 600000],
    ['most 8192', users(s8192, s8192, s4096, undefined), 8192],
    ['a tie: the higher', users(s4096, s8192), 8192],
  ];
  for (const [name, config, want] of cases) t.equal(mockIterations(config), want, name);
});

t.test('two runtimes from one config answer an unknown name alike; a reload adding users moves nothing', async (t) => {
  const [secretA, secretB] = await Promise.all([makeScramSecret('pw-a', { iterations: 8192 }), makeScramSecret('pw-b', { iterations: 8192 })]);
  const base = {
    listen: { host: '127.0.0.1', port: 1 },
    upstreams: [{ host: '127.0.0.1', port: 1 }],
    server_roles: [{ name: 'app_rw', password: 'server-role-pw' }],
    hba: [{ type: 'host', database: 'all', user: 'all', address: '127.0.0.1/32', method: 'scram-sha-256' }],
  };
  const user = (name: string, secret: string) => ({ name, secret, server_role: 'app_rw' });
  const config = await buildConfig({ ...base, users: [user('tenant_a', secretA)] });
  const runtimes: Runtime[] = [];
  const runtime = (c: Config) => {
    const rt = new Runtime(c, pino({ level: 'silent' }), { auditStream: new PassThrough() });
    runtimes.push(rt);
    return rt;
  };
  t.teardown(() => {
    for (const rt of runtimes) rt.pools.closeAll();
  });
  const serverFirst = (rt: Runtime, name: string) => {
    const u = rt.users.get(name);
    const r = new ScramServerSession({ secret: u?.secret ?? null, fakeSaltKey: rt.fakeSaltKey, username: name }).start('SCRAM-SHA-256', 'n,,n=,r=abc');
    if (!r.ok) throw new Error('start failed');
    const m = /,s=([^,]+),i=(\d+)$/.exec(r.serverFirst)!;
    return { salt: m[1]!, iterations: Number(m[2]) };
  };

  const one = runtime(config);
  const two = runtime(await buildConfig({ ...base, users: [user('tenant_a', secretA)] }));
  t.same(serverFirst(two, 'ghost'), serverFirst(one, 'ghost'), 'an unknown name: one salt in both');
  t.same(serverFirst(two, 'tenant_a'), serverFirst(one, 'tenant_a'), 'as a known user');
  t.equal(serverFirst(one, 'ghost').iterations, serverFirst(one, 'tenant_a').iterations, 'the users’ iteration count (8192), not 4096');
  t.not(serverFirst(one, 'ghost').salt, serverFirst(one, 'ghost2').salt, 'each name its own salt');

  const before = serverFirst(one, 'tenant_b');
  one.apply(await buildConfig({ ...base, users: [user('tenant_a', secretA), user('tenant_b', secretB), user('tenant_c', secretB)] }));
  t.same(serverFirst(one, 'ghost'), serverFirst(two, 'ghost'), 'users added by a reload: an unknown name keeps its salt');
  t.not(serverFirst(one, 'tenant_b').salt, before.salt, 'tenant_b, now known, has its real salt');


});
