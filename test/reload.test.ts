// SIGHUP reload: the new configuration applies to new connections at once, sessions it
// no longer allows end at their next transaction boundary, and a bad file changes nothing.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import pg from 'pg';
import YAML from 'yaml';
import { makeScramSecret } from '../src/auth/scram.js';
import { loadConfigFile } from '../src/config/load.js';
import { createLogger } from '../src/logger.js';
import { ProxyServer } from '../src/proxy/server.js';
import { freePort, startPostgres } from './helpers/postgres.js';
import { createServerRole, LogCapture, SERVER_ROLE, SERVER_ROLE_PASSWORD } from './helpers/proxy.js';

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-reload-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const file = path.join(dir, 'pgbastion.yaml');
const secrets = { alice: await makeScramSecret('alice-pw'), bob: await makeScramSecret('bob-pw'), carol: await makeScramSecret('carol-pw') };

function writeConfig(port: number, users: Record<string, Record<string, string>>, extra: Record<string, unknown> = {}): void {
  writeFileSync(
    file,
    YAML.stringify({
      listen: { host: '127.0.0.1', port },
      upstreams: [{ host: pgs.host, port: pgs.port }],
      pool: { mode: 'transaction', size: 4 },
      users: Object.entries(users).map(([name, pins]) => ({ name, secret: secrets[name as keyof typeof secrets], server_role: SERVER_ROLE, pins })),
      server_roles: [{ name: SERVER_ROLE, password: SERVER_ROLE_PASSWORD }],
      hba: [{ type: 'host', database: 'all', user: 'all', address: '127.0.0.1/32', method: 'scram-sha-256' }],
      pinning: { variables: ['app.tenant_id'] },
      metrics: { host: '127.0.0.1', port: metricsPort },
      ...extra,
    }),
  );
}

const metricsPort = await freePort();
writeConfig(0, { alice: { 'app.tenant_id': 'a' }, bob: { 'app.tenant_id': 'b' } });
const audit = new LogCapture();
const server = new ProxyServer(await loadConfigFile(file), createLogger('info', new LogCapture()), { auditStream: audit });
const [addr] = await server.start();
t.teardown(() => server.close());
const port = addr!.port;
const reload = () => server.reload(() => loadConfigFile(file));

async function connect(user: string): Promise<{ c: pg.Client; errors: { code?: string }[] }> {
  const c = new pg.Client({ host: '127.0.0.1', port, user, password: `${user}-pw`, database: 'postgres' });
  const errors: { code?: string }[] = [];
  c.on('error', (e: Error & { code?: string }) => e.code && errors.push(e)); // (then "connection terminated", no code)
  await c.connect();
  return { c, errors };
}
const pin = async (c: pg.Client) => (await c.query("SELECT current_setting('app.tenant_id', true) AS v")).rows[0].v as string;
const settle = () => new Promise((r) => setTimeout(r, 200));

t.test('a new user, a removed user, changed pins', async (t) => {
  const alice = await connect('alice');
  const bobIdle = await connect('bob');
  const bobBusy = await connect('bob');
  t.equal(await pin(alice.c), 'a');
  await bobBusy.c.query('BEGIN');
  await pin(bobIdle.c);

  writeConfig(0, { alice: { 'app.tenant_id': 'a2' }, carol: { 'app.tenant_id': 'c' } });
  t.ok(await reload(), 'reload applied');
  await settle();

  const carol = await connect('carol');
  t.equal(await pin(carol.c), 'c', 'a user added by the reload can log in at once');
  await carol.c.end();
  t.same(bobIdle.errors.map((e) => e.code), ['57P01'], 'an idle session of a removed user is ended');
  t.equal(await pin(bobBusy.c), 'b', 'a session inside a transaction keeps working until it ends');
  await bobBusy.c.query('COMMIT');
  await settle();
  t.same(bobBusy.errors.map((e) => e.code), ['57P01'], 'and is ended at the transaction boundary');
  t.same(alice.errors.map((e) => e.code), ['57P01'], 'a session whose pins changed is ended');
  const alice2 = await connect('alice');
  t.equal(await pin(alice2.c), 'a2', 'a new session gets the new pins');
  await alice2.c.end();
  const reloaded = audit.lines.filter((l) => l.event === 'config.reloaded');
  t.match(reloaded.at(-1), { event: 'config.reloaded', generation: 2, needs_restart: [] });
  // SPEC §4: every event has the identity fields, null where no client is concerned.
  t.same(Object.keys(reloaded.at(-1)!).filter((k) => ['session_id', 'client_addr', 'client_port', 'user', 'database'].includes(k)).length, 5, 'with the identity fields');
  t.equal(reloaded.at(-1)!.session_id, null);
  for (const s of [alice, bobIdle, bobBusy]) await s.c.end().catch(() => {});
});

t.test('a bad file leaves the running configuration untouched', async (t) => {
  writeFileSync(file, 'listen: [unclosed\n');
  t.notOk(await reload(), 'reload refused');
  writeConfig(0, { alice: { 'app.tenant_id': 'a2' } }, { tls: { cert: path.join(dir, 'missing.crt'), key: path.join(dir, 'missing.key') } });
  t.notOk(await reload(), 'unreadable certificate: refused');
  const carol = await connect('carol');
  t.equal(await pin(carol.c), 'c', 'the previous configuration still serves');
  await carol.c.end();
  const failed = audit.lines.filter((l) => l.event === 'config.reload_failed');
  t.equal(failed.length, 2);
  t.match(failed[0], { generation: 2, error: /listen|YAML|line/i });
  t.match(failed[1], { error: /tls: cannot use/ });
  const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  t.match(metrics, /pgbastion_config_reloads_total\{result="failure"\} 2/);
  t.match(metrics, /pgbastion_config_reloads_total\{result="success"\} 1/);
  t.match(metrics, /pgbastion_config_generation 2/);
});

t.test('listen changes need a restart and say so', async (t) => {
  writeConfig(await freePort(), { alice: { 'app.tenant_id': 'a2' }, carol: { 'app.tenant_id': 'c' } });
  t.ok(await reload());
  t.match(audit.lines.filter((l) => l.event === 'config.reloaded').at(-1), { generation: 3, needs_restart: ['listen'] });
  const carol = await connect('carol');
  t.equal(await pin(carol.c), 'c', 'still listening where it was');
  await carol.c.end();
});

t.test('the pgbastion binary reloads on SIGHUP', async (t) => {
  const binDir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-sighup-'));
  t.teardown(() => rmSync(binDir, { recursive: true, force: true }));
  const binPort = await freePort();
  const binFile = path.join(binDir, 'pgbastion.yaml');
  const cfg = (users: string[]) =>
    YAML.stringify({
      listen: { host: '127.0.0.1', port: binPort },
      upstreams: [{ host: pgs.host, port: pgs.port }],
      users: users.map((name) => ({ name, secret: secrets[name as keyof typeof secrets], server_role: SERVER_ROLE })),
      server_roles: [{ name: SERVER_ROLE, password: SERVER_ROLE_PASSWORD }],
      hba: [{ type: 'host', database: 'all', user: 'all', address: 'all', method: 'scram-sha-256' }],
      audit: { destination: path.join(binDir, 'audit.log') },
    });
  writeFileSync(binFile, cfg(['alice']));
  const child = spawn(process.execPath, [path.resolve('dist/cli/main.js'), 'start', '-c', binFile], { stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = new Promise((r) => child.once('exit', r));
  t.teardown(async () => {
    child.kill('SIGTERM');
    await exited;
  });
  let log = '';
  child.stderr.on('data', (d: Buffer) => (log += d.toString()));
  for (let i = 0; i < 100 && !log.includes('pgbastion listening'); i++) await new Promise((r) => setTimeout(r, 50));
  const login = async (user: string) => {
    const c = new pg.Client({ host: '127.0.0.1', port: binPort, user, password: `${user}-pw`, database: 'postgres' });
    try {
      await c.connect();
      await c.end();
      return 'ok';
    } catch (e) {
      return (e as { code?: string }).code;
    }
  };
  t.equal(await login('carol'), '28P01', 'carol unknown before the reload');
  writeFileSync(binFile, cfg(['alice', 'carol']));
  child.kill('SIGHUP');
  for (let i = 0; i < 100 && !log.includes('configuration reloaded'); i++) await new Promise((r) => setTimeout(r, 50));
  t.equal(await login('carol'), 'ok', 'carol logs in after SIGHUP');
});

t.test('a login under way when a reload removes its user is refused at its end', async (t) => {
  // A reviewer's finding: the login went on with the user as it was when it started, and the
  // session lasted until some later reload.
  writeConfig(0, { alice: { 'app.tenant_id': 'a' }, bob: { 'app.tenant_id': 'b' } });
  t.ok(await reload());
  const c = new pg.Client({
    host: '127.0.0.1',
    port,
    user: 'bob',
    database: 'postgres',
    // Asked for once the proxy has named SCRAM: the exchange is under way.
    password: async () => {
      writeConfig(0, { alice: { 'app.tenant_id': 'a' } });
      await reload();
      return 'bob-pw';
    },
  });
  c.on('error', () => undefined);
  const err = await c.connect().then(() => null, (e: Error & { code?: string; detail?: string }) => e);
  await c.end().catch(() => undefined);
  t.equal(err?.code, '28000', 'refused');
  t.equal(err?.message, 'login no longer allowed after a configuration reload');
  t.equal(err?.detail, 'the user was removed');
});
