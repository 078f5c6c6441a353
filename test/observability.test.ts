// The audit trail (asserted as JSON objects, field by field), the metrics endpoint, and a
// real Prometheus scraping it; no secret reaches any log.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import pg from 'pg';
import { freePort, startPostgres } from './helpers/postgres.js';
import { createServerRole, SERVER_ROLE, SERVER_ROLE_PASSWORD, startProxy } from './helpers/proxy.js';

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
const metricsPort = await freePort();
const USER_PASSWORD = 'marker-user-pw-5f1c';
const proxy = await startProxy(t, pgs, {
  users: [
    { name: 'alice', password: USER_PASSWORD, pins: { 'app.tenant_id': 'a' } },
    { name: 'bob', password: 'bob-pw' },
  ],
  extra: {
    metrics: { host: '127.0.0.1', port: metricsPort },
    limits: { auth_failures: { max: 2, window_s: 60, lockout_s: 60 } },
    hba: [
      { type: 'host', database: 'forbidden', user: 'all', address: 'all', method: 'reject' },
      { type: 'host', database: 'all', user: 'all', address: '127.0.0.1/32', method: 'scram-sha-256' },
    ],
  },
});

async function login(user: string, password: string, database = 'postgres'): Promise<pg.Client | { code?: string }> {
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user, password, database });
  try {
    await c.connect();
    return c;
  } catch (e) {
    await c.end().catch(() => {});
    return e as { code?: string };
  }
}
const events = (name: string) => proxy.audit.lines.filter((l) => l.event === name);
const settle = () => new Promise((r) => setTimeout(r, 150));

async function scrape(pathname = '/metrics'): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${metricsPort}${pathname}`);
  return { status: res.status, body: await res.text() };
}
function metric(body: string, name: string, labels = ''): number {
  const line = body.split('\n').find((l) => l.startsWith(`${name}${labels ? `{${labels}}` : ''} `) || (labels === '' && l.startsWith(`${name} `)));
  return line ? Number(line.split(' ').pop()) : NaN;
}

t.test('session.start and session.end, field by field', async (t) => {
  const c = (await login('alice', USER_PASSWORD)) as pg.Client;
  await c.query('SELECT 1');
  await c.query('BEGIN');
  await c.query('SELECT 2');
  await c.query('COMMIT');
  await c.end();
  await settle();
  const start = events('session.start').at(-1)!;
  t.match(start, {
    event: 'session.start',
    user: 'alice',
    database: 'postgres',
    client_addr: '127.0.0.1',
    auth_method: 'scram-sha-256',
    hba_rule: 2,
    server_role: SERVER_ROLE,
    tls: null,
    cert: null,
  });
  t.match(start.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, 'ISO time');
  t.type(start.session_id, 'string');
  t.type(start.client_port, 'number');
  const end = events('session.end').find((e) => e.session_id === start.session_id)!;
  t.ok(end, 'session.end for the same session');
  t.match(end, { user: 'alice', database: 'postgres', client_addr: '127.0.0.1' });
  t.type(end.duration_ms, 'number');
  t.ok((end.bytes_in as number) > 0 && (end.bytes_out as number) > 0, 'bytes counted both ways');
  t.ok((end.transactions as number) >= 2, `transactions: ${end.transactions}`);
});

t.test('policy.blocked', async (t) => {
  const c = (await login('alice', USER_PASSWORD)) as pg.Client;
  t.teardown(() => c.end());
  await c.query("SET app.tenant_id = 'b'").catch(() => {});
  await settle();
  t.match(events('policy.blocked').at(-1), { event: 'policy.blocked', user: 'alice', variable: 'app.tenant_id', why: /SET/, protocol: 'simple' });
});

t.test('ddl events: success, failure, extended protocol, multi-statement strings, redacted passwords', async (t) => {
  await pgs.query(`ALTER ROLE ${SERVER_ROLE} CREATEROLE`);
  const c = (await login('alice', USER_PASSWORD)) as pg.Client;
  t.teardown(() => c.end());
  const before = events('ddl').length;
  await c.query('CREATE TABLE audited (id int)');
  await c.query('CREATE TABLE audited (id int)').catch(() => {});
  await c.query({ text: 'ALTER TABLE audited ADD COLUMN note text', values: [], queryMode: 'extended' } as pg.QueryConfig);
  await c.query("SELECT 1; CREATE INDEX audited_id ON audited (id); COMMENT ON TABLE audited IS 'x'; SELECT 2");
  // (DO blocks are refused while variables are pinned: their audit, class dynamic, is in test/ddl-redaction.test.ts.)
  const MARK = 'marker-ddl-pw-93ab';
  await c.query(`CREATE ROLE audited_role LOGIN ENCRYPTED PASSWORD '${MARK}'`);
  await c.query(`ALTER ROLE audited_role /* 'decoy' */ PASSWORD E'${MARK}\\\\x'`);
  await c.query(`ALTER ROLE audited_role PASSWORD $q$${MARK}$q$`);
  await c.query('SELECT 1; DROP TABLE audited; SELECT 1/0; DROP TABLE never_runs').catch(() => {});
  await c.query('DROP ROLE audited_role');
  await settle();
  const ddl = events('ddl').slice(before);
  t.same(
    ddl.map((e) => [e.class, e.outcome, e.command_tag ?? e.sqlstate]),
    [
      ['ddl', 'ok', 'CREATE TABLE'],
      ['ddl', 'error', '42P07'],
      ['ddl', 'ok', 'ALTER TABLE'],
      ['ddl', 'ok', 'CREATE INDEX'],
      ['ddl', 'ok', 'COMMENT'],
      ['role', 'ok', 'CREATE ROLE'],
      ['role', 'ok', 'ALTER ROLE'],
      ['role', 'ok', 'ALTER ROLE'],
      ['ddl', 'error', '22012'], // rolled back with the error later in its string (one transaction)
      ['role', 'ok', 'DROP ROLE'],
    ],
  );
  t.match(ddl[0], { event: 'ddl', user: 'alice', database: 'postgres', server_role: SERVER_ROLE, statement: 'CREATE TABLE audited (id int)', node: 'CreateStmt' });
  t.equal(ddl[3]!.statement, 'CREATE INDEX audited_id ON audited (id)', 'each statement of a string on its own');
  t.equal(ddl[5]!.statement, 'CREATE ROLE audited_role LOGIN ENCRYPTED PASSWORD <REDACTED>');
  t.equal(ddl[6]!.statement, "ALTER ROLE audited_role /* 'decoy' */ PASSWORD <REDACTED>");
  t.equal(ddl[7]!.statement, 'ALTER ROLE audited_role PASSWORD <REDACTED>');
  const all = JSON.stringify(proxy.log.lines) + JSON.stringify(proxy.audit.lines);
  t.notOk(all.includes(MARK), 'the marker password is in no log line');
  const body = (await scrape()).body;
  t.equal(metric(body, 'pgbastion_ddl_statements_total', 'class="role",outcome="ok"'), 4);
});

t.test('session.denied with its reason: hba, auth, lockout, protocol', async (t) => {
  const before = events('session.denied').length;
  t.equal(((await login('bob', 'bob-pw', 'forbidden')) as { code?: string }).code, '28000');
  t.equal(((await login('bob', 'wrong')) as { code?: string }).code, '28P01');
  t.equal(((await login('bob', 'wrong')) as { code?: string }).code, '28P01');
  t.equal(((await login('bob', 'bob-pw')) as { code?: string }).code, '28000', 'locked out now');
  const garbage = net.connect(proxy.port, '127.0.0.1', () => garbage.write('GET / HTTP/1.1\r\n\r\n'));
  garbage.resume();
  await new Promise((r) => garbage.once('close', r));
  await settle();
  const denied = events('session.denied').slice(before);
  t.same(
    denied.map((d) => d.reason),
    ['hba', 'auth', 'auth', 'lockout', 'protocol'],
  );
  t.match(denied[0], { user: 'bob', database: 'forbidden', sqlstate: '28000', message: /pg_hba\.conf rejects connection/ });
  t.match(denied[1], { user: 'bob', sqlstate: '28P01' });
  t.match(denied[3], { sqlstate: '28000', message: /too many failed authentication attempts/ });
  t.match(denied[4], { user: null, sqlstate: '08P01' });
});

t.test('/metrics, /healthz, /readyz', async (t) => {
  const { status, body } = await scrape();
  t.equal(status, 200);
  const started = events('session.start').length;
  t.equal(metric(body, 'pgbastion_connections_total', 'outcome="started",reason=""'), started, 'started sessions counted');
  t.equal(metric(body, 'pgbastion_connections_total', 'outcome="denied",reason="lockout"'), 1);
  t.equal(metric(body, 'pgbastion_auth_total', 'method="scram-sha-256",result="fail"'), 2);
  t.equal(metric(body, 'pgbastion_auth_lockouts_total', 'by="address"'), 1);
  t.equal(metric(body, 'pgbastion_blocked_statements_total'), 1);
  t.equal(metric(body, 'pgbastion_hba_decisions_total', 'rule="1",decision="reject"'), 1);
  t.equal(metric(body, 'pgbastion_upstream_up', `upstream="${pgs.host}:${pgs.port}"`), 1);
  t.ok(metric(body, 'pgbastion_transactions_total') >= 2);
  t.match(body, /pgbastion_pool_wait_seconds_bucket\{le="0.001"\} \d+/);
  t.match(body, /pgbastion_query_duration_seconds_count \d+/);
  t.match(body, /process_cpu_user_seconds_total/, 'default process metrics');
  t.notMatch(body, /alice|bob|client_addr|user=/, 'no user or client address labels');
  t.equal((await scrape('/healthz')).status, 200);
  t.equal((await scrape('/readyz')).status, 200, 'ready: upstream reachable');
  t.equal((await scrape('/nope')).status, 404);
});

t.test('/readyz is 503 when no upstream is reachable', async (t) => {
  const port = await freePort();
  const deadUpstream = await freePort();
  const p = await startProxy(t, pgs, {
    users: [{ name: 'x', password: 'x' }],
    extra: { upstreams: [{ host: '127.0.0.1', port: deadUpstream }], metrics: { host: '127.0.0.1', port } },
  });
  void p;
  const res = await fetch(`http://127.0.0.1:${port}/readyz`);
  t.equal(res.status, 503);
});

t.test('no password reaches any log or audit line', async (t) => {
  const all = JSON.stringify(proxy.log.lines) + JSON.stringify(proxy.audit.lines);
  for (const secret of [USER_PASSWORD, 'bob-pw', SERVER_ROLE_PASSWORD]) t.notOk(all.includes(secret), `"${secret}" absent`);
});

t.test('a real Prometheus scrapes pgbastion', async (t) => {
  const promBin = spawnSync('which', ['prometheus']).stdout.toString().trim();
  t.ok(promBin, 'prometheus is installed (Debian package prometheus)');
  if (!promBin) return;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-prom-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const promPort = await freePort();
  writeFileSync(
    path.join(dir, 'prometheus.yml'),
    `global: { scrape_interval: 1s, evaluation_interval: 1s }\nscrape_configs:\n  - job_name: pgbastion\n    static_configs: [{ targets: ['127.0.0.1:${metricsPort}'] }]\n`,
  );
  const prom = spawn(promBin, [`--config.file=${path.join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${promPort}`], { stdio: 'ignore' });
  const exited = new Promise((r) => prom.once('exit', r));
  t.teardown(async () => {
    prom.kill('SIGTERM');
    await exited;
  });
  const query = async (q: string): Promise<number | null> => {
    try {
      const res = await fetch(`http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent(q)}`);
      const body = (await res.json()) as { data?: { result?: { value: [number, string] }[] } };
      const v = body.data?.result?.[0]?.value[1];
      return v === undefined ? null : Number(v);
    } catch {
      return null;
    }
  };
  const started = events('session.start').length;
  let up: number | null = null;
  let logins: number | null = null;
  for (let i = 0; i < 60 && (up !== 1 || logins !== started); i++) {
    await new Promise((r) => setTimeout(r, 500));
    up = await query('up{job="pgbastion"}');
    logins = await query('pgbastion_connections_total{job="pgbastion",outcome="started"}');
  }
  t.equal(up, 1, 'up{job="pgbastion"} == 1');
  t.equal(logins, started, `Prometheus saw the ${started} successful logins this test made`);
});

t.test('the shipped alert rules pass promtool', async (t) => {
  const r = spawnSync('promtool', ['check', 'rules', path.resolve('config/prometheus-alerts.yml')], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stdout + r.stderr);
  t.match(r.stdout, /SUCCESS: \d+ rules found/);
});

t.test('audit.on_failure: refuse — an unwritable audit destination refuses new sessions', async (t) => {
  const { buildConfig } = await import('../src/config/load.js');
  const { ProxyServer } = await import('../src/proxy/server.js');
  const { createLogger } = await import('../src/logger.js');
  const { makeScramSecret } = await import('../src/auth/scram.js');
  const { LogCapture } = await import('./helpers/proxy.js');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-audit-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const config = await buildConfig({
    listen: { host: '127.0.0.1', port: 0 },
    upstreams: [{ host: pgs.host, port: pgs.port }],
    users: [{ name: 'carol', secret: await makeScramSecret('carol-pw'), server_role: SERVER_ROLE }],
    server_roles: [{ name: SERVER_ROLE, password: SERVER_ROLE_PASSWORD }],
    hba: [{ type: 'host', database: 'all', user: 'all', address: 'all', method: 'scram-sha-256' }],
    // A directory where the audit file should be: opening it fails.
    audit: { destination: dir, on_failure: 'refuse' },
    metrics: { host: '127.0.0.1', port: await freePort() },
  });
  const log = new LogCapture();
  const server = new ProxyServer(config, createLogger('info', log));
  const [addr] = await server.start();
  t.teardown(() => server.close());
  await new Promise((r) => setTimeout(r, 200));
  const c = new pg.Client({ host: '127.0.0.1', port: addr!.port, user: 'carol', password: 'carol-pw', database: 'postgres' });
  const err = await c.connect().then(
    () => null,
    (e: { code?: string; message: string }) => e,
  );
  await c.end().catch(() => {});
  t.equal(err?.code, '57P03', 'refused while the audit trail cannot be written');
  t.match(err?.message ?? '', /audit trail is unavailable/);
  t.ok(log.lines.some((l) => l.msg === 'audit destination failed'), 'the failure is in the operational log');
  const body = await (await fetch(`http://127.0.0.1:${config.metrics!.port}/metrics`)).text();
  t.match(body, /pgbastion_audit_write_failures_total [1-9]/, 'and counted');
});

t.test('transaction duration: from the first statement to the ReadyForQuery back to idle', async (t) => {
  const port = await freePort();
  const own = await startProxy(t, pgs, { users: [{ name: 'carol', password: 'carol-pw' }], extra: { metrics: { host: '127.0.0.1', port } } });
  const body = async () => (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const count = (b: string) => metric(b, 'pgbastion_transaction_duration_seconds_count');
  const under = (b: string) => metric(b, 'pgbastion_transaction_duration_seconds_bucket', 'le="0.1"');
  const c = new pg.Client({ host: '127.0.0.1', port: own.port, user: 'carol', password: 'carol-pw', database: 'postgres' });
  await c.connect();
  const before = await body();
  await c.query('BEGIN');
  await c.query('SELECT pg_sleep(0.15)');
  await new Promise((r) => setTimeout(r, 100)); // the client's own time inside the block counts too
  await c.query('COMMIT');
  await c.query('SELECT 1');
  const after = await body();
  await c.end();
  t.equal(count(after) - count(before), 2, 'two transactions: the block, and the lone SELECT');
  t.equal(under(after) - under(before), 1, 'one under 0.1 s (the SELECT); the block took over 0.25 s');
});
