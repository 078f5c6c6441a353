// No user enumeration through the SCRAM salt with `workers: 2` (SPEC §3), through the compiled
// binary: 16 logins each for a known user and an unknown one, stopped at server-first. The
// known user always gets its one real salt; the unknown one must too (one fake salt, whichever
// worker answers, and after a restart when PGBASTION_MOCK_SALT_KEY is set), with the known user's iteration count. Before
// the fix each worker drew its own random key, so an unknown name got two salts.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { makeScramSecret, ScramClientSession } from '../src/auth/scram.js';
import { freePort } from './helpers/postgres.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const LOGINS = 16;

const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-mock-salt-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const port = await freePort();
const file = path.join(dir, 'pgbastion.yaml');
// Not 4096: an unknown user must announce what the configured users' secrets have.
const secretA = await makeScramSecret('pw-a', { iterations: 8192 });
const secretB = await makeScramSecret('pw-b', { iterations: 8192 });
// No PostgreSQL: the logins stop at server-first, before any server connection is needed.
writeFileSync(
  file,
  `workers: 2
listen: { host: 127.0.0.1, port: ${port} }
upstreams: [{ host: 127.0.0.1, port: ${await freePort()} }]
users:
  - { name: tenant_a, secret: "${secretA}", server_role: app_rw }
  - { name: tenant_b, secret: "${secretB}", server_role: app_rw }
server_roles: [{ name: app_rw, password: "server-role-pw" }]
hba: [{ type: host, database: all, user: all, address: 127.0.0.1/32, method: scram-sha-256 }]
log_level: debug
limits: { auth_failures: { max: 1000, window_s: 60, lockout_s: 1 } }
`,
);

interface Running {
  child: ChildProcess;
  log: () => string;
}
const running: ChildProcess[] = [];
t.teardown(() => {
  for (const c of running) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

async function start(env: NodeJS.ProcessEnv = {}): Promise<Running> {
  const child = spawn(process.execPath, [path.resolve('dist/cli/main.js'), 'start', '-c', file], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  running.push(child);
  let log = '';
  child.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  for (let i = 0; i < 200 && !log.includes('pgbastion listening'); i++) await sleep(50);
  if (!log.includes('pgbastion listening')) throw new Error(`pgbastion did not start:\n${log}`);
  return { child, log: () => log };
}

async function stop(r: Running): Promise<void> {
  const exited = new Promise((resolve) => r.child.once('exit', resolve));
  r.child.kill('SIGTERM');
  await exited;
}

function message(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

function startupMessage(user: string): Buffer {
  const body = Buffer.from(`\0\0\0\0user\0${user}\0database\0postgres\0\0`, 'utf8');
  body.writeInt32BE(196608, 0); // protocol 3.0
  const len = Buffer.alloc(4);
  len.writeInt32BE(body.length + 4);
  return Buffer.concat([len, body]);
}

/** Connects, starts SCRAM as `user`; returns the server-first message and the local port. */
function serverFirstFor(user: string): Promise<{ serverFirst: string; localPort: number }> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    const scram = new ScramClientSession('any password');
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => done(new Error('no server-first within 5 s')), 5000);
    const done = (r: string | Error) => {
      clearTimeout(timer);
      const localPort = sock.localPort!;
      sock.destroy();
      if (r instanceof Error) reject(r);
      else resolve({ serverFirst: r, localPort });
    };
    sock.on('error', done);
    sock.on('connect', () => sock.write(startupMessage(user)));
    sock.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 5 && buf.length >= 1 + buf.readInt32BE(1)) {
        const type = String.fromCharCode(buf[0]!);
        const body = buf.subarray(5, 1 + buf.readInt32BE(1));
        buf = buf.subarray(1 + buf.readInt32BE(1));
        if (type === 'E') return done(new Error(`error: ${body.toString('utf8').replace(/\0/g, ' ')}`));
        if (type !== 'R') return done(new Error(`unexpected message ${type}`));
        const code = body.readInt32BE(0);
        if (code === 10) {
          const d = Buffer.from(scram.clientFirst(), 'utf8');
          const len = Buffer.alloc(4);
          len.writeInt32BE(d.length);
          sock.write(message('p', Buffer.concat([Buffer.from(`${scram.mechanism}\0`, 'utf8'), len, d])));
        } else if (code === 11) return done(body.subarray(4).toString('utf8'));
        else return done(new Error(`unexpected authentication request ${code}`));
      }
    });
  });
}

/** The worker that served the client on `localPort` (its debug line naming the rule matched). */
async function workerOf(r: Running, localPort: number): Promise<unknown> {
  const client = `127.0.0.1:${localPort}`;
  for (let i = 0; i < 100; i++) {
    for (const l of r.log().split('\n')) {
      if (!l.startsWith('{')) continue;
      const line = JSON.parse(l) as Record<string, unknown>;
      if (line.msg === 'hba rule matched' && line.client === client) return line.worker;
    }
    await sleep(20);
  }
  throw new Error(`no log line for ${client}`);
}

/**
 * Salts, iteration counts and serving workers of at least `LOGINS` logins, one after the other
 * (the workers take turns), more if need be until both workers have answered (for up to 10 s).
 */
async function probe(r: Running, user: string): Promise<{ salts: Set<string>; iterations: Set<string>; workers: Set<unknown> }> {
  const salts = new Set<string>();
  const iterations = new Set<string>();
  const workers = new Set<unknown>();
  const deadline = Date.now() + 10_000;
  for (let i = 0; i < LOGINS || (workers.size < 2 && Date.now() < deadline); i++) {
    if (i >= LOGINS) await sleep(100); // the other worker may be busy a moment (a loaded machine)
    const { serverFirst, localPort } = await serverFirstFor(user);
    const m = /,s=([^,]+),i=(\d+)$/.exec(serverFirst);
    if (!m) throw new Error('malformed server-first');
    salts.add(m[1]!);
    iterations.add(m[2]!);
    workers.add(await workerOf(r, localPort));
  }
  return { salts, iterations, workers };
}

let first = await start();
const known = await probe(first, 'tenant_a');
const unknown = await probe(first, 'ghost');

t.test('workers: 2, one instance: an unknown user gets one salt, as a known user does', async (t) => {
  t.same([...known.workers].sort(), [1, 2], 'tenant_a: logins served by both workers');
  // Seen rarely: every login handed to one worker. Show what the instance logged.
  if (known.workers.size < 2 || unknown.workers.size < 2) t.comment(first.log().split('\n').filter((l) => !l.includes('"level":20')).join('\n'));
  t.same([...unknown.workers].sort(), [1, 2], 'ghost: logins served by both workers');
  t.equal(known.salts.size, 1, 'tenant_a: one salt');
  t.equal(unknown.salts.size, 1, `ghost: one salt (got ${[...unknown.salts].join(' ')})`);
  t.not([...unknown.salts][0], [...known.salts][0]);
  t.same([...known.iterations], ['8192']);
  t.same([...unknown.iterations], ['8192'], 'ghost announces the users’ iteration count too');
});

t.test('after a restart: the same salt with PGBASTION_MOCK_SALT_KEY, another without', async (t) => {
  const key = { PGBASTION_MOCK_SALT_KEY: '5a'.repeat(32) };
  await stop(first);
  first = await start(key);
  const keyed = await probe(first, 'ghost');
  t.equal(keyed.salts.size, 1, 'one salt from both workers');
  t.not([...keyed.salts][0], [...unknown.salts][0], 'another instance, another key: nothing comes from the configuration');
  t.same([...(await probe(first, 'tenant_a')).salts], [...known.salts], 'tenant_a: its one salt, of course');
  await stop(first);
  first = await start(key);
  t.same([...(await probe(first, 'ghost')).salts], [...keyed.salts], 'restarted with the same key: the same salt');
  await stop(first);
});
