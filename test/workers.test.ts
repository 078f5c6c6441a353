// `workers: 2` through the compiled binary: both workers serve clients from one listener,
// each client's pin holds on every transaction, one /metrics shows the whole instance, a
// CancelRequest reaches its session whichever worker it lands on, SIGHUP reaches every
// worker, a killed worker is replaced, failed logins on different workers add up to one
// lockout, and SIGTERM stops them all with exit 0.

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import pg from 'pg';
import { makeScramSecret } from '../src/auth/scram.js';
import { freePort, startPostgres } from './helpers/postgres.js';
import { createServerRole, SERVER_ROLE, SERVER_ROLE_PASSWORD } from './helpers/proxy.js';
import { cancelClient } from './helpers/cancel.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);

const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-workers-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const port = await freePort();
const metricsPort = await freePort();
const file = path.join(dir, 'pgbastion.yaml');
const secretA = await makeScramSecret('pw-a');
const secretB = await makeScramSecret('pw-b');
const writeConfig = (pinB: string) =>
  writeFileSync(
    file,
    `workers: 2
listen: { host: 127.0.0.1, port: ${port} }
metrics: { host: 127.0.0.1, port: ${metricsPort} }
upstreams: [{ host: 127.0.0.1, port: ${pgs.port} }]
pool: { mode: transaction, size: 3 }
pinning: { variables: [app.tenant_id] }
users:
  - { name: tenant_a, secret: "${secretA}", server_role: ${SERVER_ROLE}, pins: { app.tenant_id: "a" } }
  - { name: tenant_b, secret: "${secretB}", server_role: ${SERVER_ROLE}, pins: { app.tenant_id: "${pinB}" } }
server_roles: [{ name: ${SERVER_ROLE}, password: "${SERVER_ROLE_PASSWORD}" }]
hba: [{ type: host, database: all, user: all, address: 127.0.0.1/32, method: scram-sha-256 }]
log_level: info
limits: { auth_failures: { max: 3, window_s: 60, lockout_s: 30 } }
`,
  );
writeConfig('b');

const child = spawn(process.execPath, [path.resolve('dist/cli/main.js'), 'start', '-c', file], { stdio: ['ignore', 'ignore', 'pipe'] });
let log = '';
child.stderr.on('data', (d: Buffer) => (log += d.toString()));
const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
t.teardown(() => {
  if (child.exitCode === null) child.kill('SIGKILL');
  for (const pid of workerPids()) process.kill(pid, 'SIGKILL');
});
for (let i = 0; i < 200 && !log.includes('pgbastion listening'); i++) await sleep(50);

function workerPids(): number[] {
  try {
    return execFileSync('pgrep', ['-P', String(child.pid)]).toString().split('\n').filter(Boolean).map(Number);
  } catch {
    return []; // none
  }
}
const logLines = () => log.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
const connect = async (user: 'tenant_a' | 'tenant_b') => {
  const c = new pg.Client({ host: '127.0.0.1', port, user, password: user === 'tenant_a' ? 'pw-a' : 'pw-b', database: 'postgres' });
  await c.connect();
  return c;
};
const pinOf = async (c: pg.Client) => (await c.query("SELECT current_setting('app.tenant_id') AS v")).rows[0].v as string;
const scrape = async (what: string) => {
  const r = await fetch(`http://127.0.0.1:${metricsPort}${what}`);
  return { status: r.status, text: await r.text() };
};

t.test('started: a primary and two workers', async (t) => {
  t.match(log, /pgbastion listening/);
  t.equal(workerPids().length, 2);
});

t.test('both workers serve; every pin holds on every transaction', async (t) => {
  const users = Array.from({ length: 24 }, (_, i) => (i % 2 === 0 ? 'tenant_a' : 'tenant_b') as 'tenant_a' | 'tenant_b');
  const wrong: string[] = [];
  // Connected one after the other: the primary hands connections out in turn, whereas a
  // burst may all go to whichever worker is free first.
  const clients: pg.Client[] = [];
  for (const user of users) clients.push(await connect(user));
  await Promise.all(
    clients.map(async (c, i) => {
      const user = users[i]!;
      for (let k = 0; k < 5; k++) {
        const v = await pinOf(c);
        if (v !== (user === 'tenant_a' ? 'a' : 'b')) wrong.push(`client ${i} (${user}) saw ${v}`);
      }
      await c.end();
    }),
  );
  t.same(wrong, []);
  const workersSeen = () => new Set(logLines().filter((l) => l.msg === 'session started').map((l) => l.worker));
  // The workers' logs come through a pipe: give the last lines a moment to arrive.
  for (let i = 0; i < 60 && workersSeen().size < 2; i++) await sleep(50);
  const workers = workersSeen();
  t.same([...workers].sort(), [1, 2], 'sessions on both workers');
});

t.test('one /metrics for the whole instance; /readyz', async (t) => {
  const m = await scrape('/metrics');
  t.equal(m.status, 200);
  const accepted = [...m.text.matchAll(/^pgbastion_auth_total\{[^}]*result="ok"[^}]*\} (\d+)/gm)].map((x) => Number(x[1]));
  t.same(accepted, [24], 'logins on both workers, summed in one series');
  t.match(m.text, /^pgbastion_config_generation 1$/m);
  t.match(m.text, /^process_resident_memory_bytes \d+/m, 'process metrics too');
  t.equal((await scrape('/readyz')).status, 200);
  t.equal((await scrape('/healthz')).status, 200);
});

t.test('a CancelRequest reaches its session whichever worker accepts it', async (t) => {
  // Cancel connections are spread over the workers: with 6 tries, some land on the other worker.
  for (let i = 0; i < 6; i++) {
    const c = await connect('tenant_a');
    const started = Date.now();
    const sleeping = c.query('SELECT pg_sleep(20)').catch((e: { code?: string }) => e);
    await sleep(200);
    await cancelClient(port, c);
    t.match(await sleeping, { code: '57014' }, `try ${i + 1}: canceled in ${Date.now() - started} ms`);
    await c.end();
  }
  const relayed = () => logLines().filter((l) => l.msg === 'cancel request relayed from another worker delivered').length;
  for (let i = 0; i < 40 && relayed() === 0; i++) await sleep(50);
  t.ok(relayed() >= 1, `${relayed()} of 6 went through the relay between workers`);
});

t.test('SIGHUP reaches every worker', async (t) => {
  writeConfig('b2');
  child.kill('SIGHUP');
  for (let i = 0; i < 100 && logLines().filter((l) => l.msg === 'configuration reloaded').length < 2; i++) await sleep(50);
  t.equal(logLines().filter((l) => l.msg === 'configuration reloaded').length, 2, 'both workers reloaded');
  const seen = await Promise.all(Array.from({ length: 8 }, async () => {
    const c = await connect('tenant_b');
    const v = await pinOf(c);
    await c.end();
    return v;
  }));
  t.same(new Set(seen), new Set(['b2']), 'new sessions on both workers get the new pin');
  t.match((await scrape('/metrics')).text, /^pgbastion_config_generation 2$/m);
});

t.test('a worker that dies is replaced', async (t) => {
  const [victim] = workerPids();
  process.kill(victim!, 'SIGKILL');
  for (let i = 0; i < 100; i++) {
    const pids = workerPids();
    if (pids.length === 2 && !pids.includes(victim!)) break;
    await sleep(50);
  }
  const pids = workerPids();
  t.equal(pids.length, 2);
  t.notOk(pids.includes(victim!), 'a new process took its place');
  t.match(log, /worker died; starting another/);
  for (let i = 0; i < 4; i++) {
    const c = await connect('tenant_a');
    t.equal(await pinOf(c), 'a');
    await c.end();
  }
});

// Last before SIGTERM: it locks 127.0.0.1 out.
t.test('failed logins spread over the workers are counted together', async (t) => {
  const login = async (password: string): Promise<string> => {
    const c = new pg.Client({ host: '127.0.0.1', port, user: 'tenant_b', password, database: 'postgres' });
    try {
      await c.connect();
      await c.end();
      return 'ok';
    } catch (e) {
      return `${(e as { code?: string }).code} ${(e as Error).message}`;
    }
  };
  // Connections go to the workers in turn: 2 failures on one, 1 on the other, 3 in all.
  for (let i = 0; i < 3; i++) t.match(await login('wrong'), /^28P01/, `failure ${i + 1}`);
  // However the connections were spread, the primary counted 3 and told every worker.
  const imposedOn = () => new Set(logLines().filter((l) => l.msg === 'lockout imposed by the primary (failures counted over all workers)').map((l) => l.worker));
  for (let i = 0; i < 60 && imposedOn().size < 2; i++) await sleep(50);
  t.equal(imposedOn().size, 2, 'both workers hold the lock');
  for (let i = 0; i < 2; i++) {
    t.match(await login('pw-b'), /^28000 too many failed authentication attempts/, `then locked on every worker, even with the right password (${i + 1})`);
  }
});

t.test('SIGTERM stops the workers and exits 0', async (t) => {
  const pids = workerPids();
  child.kill('SIGTERM');
  t.equal(await exited, 0);
  const alive = pids.filter((pid) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  });
  t.same(alive, [], 'no worker left behind');
});
