// Compatibility matrix: real PostgreSQL drivers of other languages through pgbastion.
// psycopg 2 and 3 (Python), pgJDBC (Java), ruby-pg and DBD::Pg (Perl) each run one client
// program (test/compat/) that goes through every step below and prints one JSON line per
// step with what it observed; this file decides pass or fail from those observations, in
// transaction and in session pool mode, over TLS (SCRAM and certificate logins), and writes
// the result to test/COMPATIBILITY.md.
//
// Debian packages: python3-psycopg2 python3-psycopg libpostgresql-jdbc-java ruby-pg
// libdbd-pg-perl (plus the JDK for `java`). A driver that is not installed fails its test.
//
// The proxy runs inside this process: clients are spawned asynchronously, never with a
// synchronous child_process call.

import { spawn } from 'node:child_process';
import { createPrivateKey } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import pg from 'pg';
import { initCaDir, issueClientToDir } from '../src/tls/certs.js';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, SERVER_ROLE, startProxy, type RunningProxy } from './helpers/proxy.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const COMPAT = path.join(HERE, 'compat');
const MATRIX_FILE = path.join(COMPAT, '..', 'COMPATIBILITY.md');
const CLIENT_TIMEOUT_MS = 90_000;

// ---------------------------------------------------------------------------------------
// Fixtures: one PostgreSQL, a CA with a client certificate, two proxies (transaction and
// session pool mode) that only accept TLS.

const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-compat-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const pki = path.join(dir, 'pki');
await initCaDir(pki);
const CERT_CN = 'compat-client';
const [CLIENT_CERT, CLIENT_KEY] = (await issueClientToDir(pki, { cn: CERT_CN })).files as [string, string];
// pgJDBC 42.5 reads client keys as PKCS-8 DER only.
const CLIENT_KEY_DER = path.join(pki, `${CERT_CN}.pk8`);
writeFileSync(CLIENT_KEY_DER, createPrivateKey(readFileSync(CLIENT_KEY)).export({ type: 'pkcs8', format: 'der' }), { mode: 0o600 });
const CA = path.join(pki, 'ca.crt');

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
await pgs.query(`
  CREATE TABLE compat_rls (tenant text NOT NULL, v int NOT NULL);
  INSERT INTO compat_rls VALUES ('a', 1), ('a', 2), ('a', 3), ('b', 4), ('b', 5), ('c', 6), ('c', 7), ('c', 8), ('c', 9);
  ALTER TABLE compat_rls ENABLE ROW LEVEL SECURITY;
  CREATE POLICY by_tenant ON compat_rls USING (tenant = current_setting('app.tenant_id', true));
  GRANT SELECT ON compat_rls TO ${SERVER_ROLE};
  CREATE TABLE compat_items (run text NOT NULL, k int NOT NULL, v text);
  CREATE TABLE compat_copy (run text NOT NULL, n int NOT NULL, t text);
  GRANT ALL ON compat_items, compat_copy TO ${SERVER_ROLE};
`);
const PG_VERSION = (await pgs.query<{ v: string }>("SELECT current_setting('server_version') AS v")).rows[0]!.v;

const USER = { name: 'tenant_a', password: 'compat-pw-a' };
const CERT_USER = 'cert_a';
const CHURN_USER = { name: 'churn_b', password: 'churn-pw-b' };

type Mode = 'transaction' | 'session';
// Small, and kept busy by other tenants (startChurn), so that a client's transactions land on
// different server connections.
const TX_POOL_SIZE = 2;
const MODES: Mode[] = ['transaction', 'session'];
const proxyOptions = (pool: Record<string, unknown>) => ({
  users: [
    { ...USER, pins: { 'app.tenant_id': 'a' } },
    { ...CHURN_USER, pins: { 'app.tenant_id': 'b' } },
  ],
  extraUsers: [{ name: CERT_USER, server_role: SERVER_ROLE, pins: { 'app.tenant_id': 'cert:${cert.cn}' } }],
  extra: {
    pool,
    log_level: 'warn',
    tls: { cert: path.join(pki, 'server.crt'), key: path.join(pki, 'server.key'), ca: CA },
    cert_map: [{ cn: CERT_CN, user: CERT_USER }],
    hba: [
      { type: 'hostnossl', database: 'all', user: 'all', address: 'all', method: 'reject' },
      { type: 'hostssl', database: 'all', user: CERT_USER, address: 'all', method: 'cert' },
      { type: 'hostssl', database: 'all', user: 'all', address: 'all', method: 'scram-sha-256' },
    ],
  },
});
const proxies: Record<Mode, RunningProxy> = {
  transaction: await startProxy(t, pgs, proxyOptions({ mode: 'transaction', size: TX_POOL_SIZE, acquire_timeout_ms: 8_000 })),
  session: await startProxy(t, pgs, proxyOptions({ mode: 'session', size: 20, acquire_timeout_ms: 8_000 })),
};

// ---------------------------------------------------------------------------------------
// The clients and the steps.

interface ClientDef {
  id: string;
  label: string;
  cmd: string;
  args: string[];
  /** A command that exits 0 when the driver is installed, and the packages to install if not. */
  probe: [string, string[]];
  packages: string;
}

const JDBC_JAR = '/usr/share/java/postgresql.jar';
const CLIENTS: ClientDef[] = [
  {
    id: 'psycopg2',
    label: 'psycopg2 (Python)',
    cmd: '/usr/bin/python3',
    args: [path.join(COMPAT, 'psycopg2_client.py')],
    probe: ['/usr/bin/python3', ['-c', 'import psycopg2']],
    packages: 'python3-psycopg2',
  },
  {
    id: 'psycopg3',
    label: 'psycopg 3 (Python)',
    cmd: '/usr/bin/python3',
    args: [path.join(COMPAT, 'psycopg3_client.py')],
    probe: ['/usr/bin/python3', ['-c', 'import psycopg']],
    packages: 'python3-psycopg',
  },
  {
    id: 'jdbc',
    label: 'pgJDBC (Java)',
    cmd: 'java',
    args: ['-cp', JDBC_JAR, path.join(COMPAT, 'JdbcClient.java')],
    probe: ['java', ['-cp', JDBC_JAR, '-version']],
    packages: 'libpostgresql-jdbc-java + a JDK (java 11+)',
  },
  {
    id: 'ruby-pg',
    label: 'ruby-pg (Ruby)',
    cmd: 'ruby',
    args: [path.join(COMPAT, 'ruby_pg_client.rb')],
    probe: ['ruby', ['-e', 'require "pg"']],
    packages: 'ruby-pg',
  },
  {
    id: 'dbd-pg',
    label: 'DBD::Pg (Perl)',
    cmd: 'perl',
    args: [path.join(COMPAT, 'dbd_pg_client.pl')],
    probe: ['perl', ['-MDBD::Pg', '-e', '1']],
    packages: 'libdbd-pg-perl',
  },
];

type Obs = Record<string, unknown>;
interface Check {
  what: string;
  ok: boolean;
  got: unknown;
  want: string;
}
const eq = (o: Obs, key: string, want: unknown): Check => ({
  what: key,
  ok: JSON.stringify(o[key]) === JSON.stringify(want),
  got: o[key],
  want: JSON.stringify(want),
});
const cmp = (o: Obs, key: string, want: string, test: (v: number) => boolean): Check => ({
  what: key,
  ok: typeof o[key] === 'number' && test(o[key] as number),
  got: o[key],
  want,
});

/** What the proxy's audit trail says about a client run's sessions (user tenant_a or cert_a). */
interface AuditSummary {
  sessions: number;
  tls: number;
  certAuth: number;
}
interface Ctx {
  run: string;
  mode: Mode;
  client: string;
  audit: AuditSummary;
}

interface StepDef {
  id: string;
  title: string;
  expect: (o: Obs, ctx: Ctx) => Check[];
}

const STEPS: StepDef[] = [
  {
    id: 'tls_scram_login',
    title: 'TLS + SCRAM login (sslmode=require)',
    expect: (o, { audit }) => [
      eq(o, 'current_user', SERVER_ROLE),
      { what: 'ssl (as the driver reports it)', ok: o.ssl !== false, got: o.ssl, want: 'true, or null where the driver does not say' },
      { what: 'sessions on TLS (audit session.start)', ok: audit.sessions > 0 && audit.tls === audit.sessions, got: `${audit.tls} of ${audit.sessions}`, want: 'all' },
    ],
  },
  {
    id: 'cert_login',
    title: 'certificate login (cert rule, verify-full)',
    expect: (o, { audit }) => [
      eq(o, 'current_user', SERVER_ROLE),
      eq(o, 'tenant', `cert:${CERT_CN}`),
      { what: 'cert logins (audit session.start)', ok: audit.certAuth === 1, got: audit.certAuth, want: '1' },
    ],
  },
  { id: 'simple_query', title: 'simple query', expect: (o) => [eq(o, 'value', 2), eq(o, 'text', 'hello')] },
  { id: 'param_query', title: 'parameterised query', expect: (o) => [eq(o, 'value', 42), eq(o, 'text', 'wörld-ok')] },
  {
    id: 'prepared_repeat',
    title: 'prepared statement over ≥ 20 transactions',
    expect: (o, { mode, client }) => [
      cmp(o, 'iterations', '>= 20', (v) => v >= 20),
      eq(o, 'correct', o.iterations),
      cmp(o, 'prepared_in', '>= 20 (statement seen in pg_prepared_statements)', (v) => v >= 20),
      // In transaction mode the statement must have been used on more than one server
      // connection (prepared again there by the proxy); psycopg2's SQL PREPARE is sticky.
      ...(mode === 'transaction' && client !== 'psycopg2' ? [cmp(o, 'backends', '>= 2 in transaction mode', (v) => v >= 2)] : []),
    ],
  },
  {
    id: 'prepared_free',
    title: "prepared statement freed the driver's way, in a transaction",
    expect: (o) => [eq(o, 'free_error', null), eq(o, 'check_sqlstate', null), eq(o, 'remaining', 0)],
  },
  { id: 'tx_commit', title: 'transaction: commit', expect: (o) => [eq(o, 'count', 2)] },
  { id: 'tx_rollback', title: 'transaction: rollback', expect: (o) => [eq(o, 'before', 2), eq(o, 'inside', 3), eq(o, 'after', 2)] },
  {
    id: 'error_recovery',
    title: 'error, then recovery on the same connection',
    expect: (o) => [eq(o, 'sqlstate', '22012'), eq(o, 'in_failed_tx', '25P02'), eq(o, 'after', 1)],
  },
  { id: 'copy_in', title: 'COPY FROM STDIN', expect: (o) => [eq(o, 'count', 1000), eq(o, 'sum', 500500)] },
  {
    id: 'copy_out',
    title: 'COPY TO STDOUT',
    expect: (o) => [eq(o, 'lines', 1000), eq(o, 'first', '1\tx1'), eq(o, 'last', '1000\tx1000')],
  },
  { id: 'large_result', title: 'large result (100 000 rows)', expect: (o) => [eq(o, 'rows', 100_000), eq(o, 'sum', 5_000_050_000)] },
  {
    id: 'cancel',
    title: 'cancel a running pg_sleep',
    expect: (o) => [
      eq(o, 'sqlstate', '57014'),
      cmp(o, 'after_cancel_ms', '< 2000', (v) => v < 2000),
      cmp(o, 'total_ms', '< 3000', (v) => v < 3000),
      eq(o, 'after', 1),
    ],
  },
  {
    id: 'listen_notify',
    title: 'LISTEN/NOTIFY',
    expect: (o, { run }) => [eq(o, 'channel', `compat_${run}`), eq(o, 'payload', `hello-${run}`)],
  },
  {
    id: 'pinned_rls',
    title: "current_setting('app.tenant_id') + RLS",
    expect: (o) => [eq(o, 'tenant', 'a'), eq(o, 'tenants', ['a']), eq(o, 'rows', 3)],
  },
  {
    id: 'tamper_refused',
    title: "SET app.tenant_id refused (42501), connection usable",
    expect: (o) => [
      eq(o, 'sqlstate', '42501'),
      { what: 'message', ok: /app\.tenant_id/.test(String(o.message)), got: o.message, want: 'names app.tenant_id' },
      eq(o, 'sqlstate_param', '42501'),
      eq(o, 'tenant_after', 'a'),
      eq(o, 'tenants_after', ['a']),
      eq(o, 'rows_after', 3),
    ],
  },
];

/** Steps a driver cannot do, with the reason; a client reporting n.a. elsewhere fails. */
const NOT_APPLICABLE: Record<string, Record<string, string>> = {};

// ---------------------------------------------------------------------------------------
// Running a client.

interface StepLine {
  step: string;
  status: 'ok' | 'error' | 'na';
  observed?: Obs;
  error?: { sqlstate?: string | null; message?: string; type?: string; trace?: string };
  reason?: string;
  ms?: number;
}
interface RunOutput {
  status: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  lines: Map<string, StepLine>;
  garbage: string[];
  ms: number;
}

function spawnCollect(cmd: string, args: string[], env: Record<string, string>, timeoutMs: number) {
  return new Promise<{ status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; error?: Error }>((resolve) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d: string) => (stdout += d));
    child.stderr.on('data', (d: string) => {
      stderr += d;
      if (stderr.length > 200_000) stderr = stderr.slice(-100_000);
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      resolve({ status: null, signal: null, stdout, stderr, error });
    });
    child.once('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
  });
}

const runTag = (client: ClientDef, mode: Mode) => `${client.id.replace(/-/g, '_')}_${mode === 'transaction' ? 'tx' : 'sess'}`;

async function runClient(client: ClientDef, mode: Mode): Promise<RunOutput> {
  const started = Date.now();
  const r = await spawnCollect(
    client.cmd,
    client.args,
    {
      PGB_HOST: '127.0.0.1',
      PGB_PORT: String(proxies[mode].port),
      PGB_USER: USER.name,
      PGB_PASSWORD: USER.password,
      PGB_RUN: runTag(client, mode),
      PGB_CA: CA,
      PGB_CERT: CLIENT_CERT,
      PGB_KEY: CLIENT_KEY,
      PGB_KEY_DER: CLIENT_KEY_DER,
      PGB_CERT_USER: CERT_USER,
      // libpq must not pick up a certificate from ~/.postgresql for the password logins.
      PGSSLCERT: '/nonexistent/compat.crt',
      PGSSLKEY: '/nonexistent/compat.key',
      PGSSLROOTCERT: '/nonexistent/root.crt',
      PYTHONDONTWRITEBYTECODE: '1',
      PYTHONIOENCODING: 'utf-8',
      LANG: 'C.UTF-8',
    },
    CLIENT_TIMEOUT_MS,
  );
  const lines = new Map<string, StepLine>();
  const garbage: string[] = [];
  for (const line of r.stdout.split('\n')) {
    if (!line.trim()) continue;
    try {
      const parsed = JSON.parse(line) as StepLine;
      lines.set(parsed.step, parsed);
    } catch {
      garbage.push(line);
    }
  }
  return { status: r.status, signal: r.signal, stderr: (r.error ? `${r.error.message}\n` : '') + r.stderr, lines, garbage, ms: Date.now() - started };
}

// Other tenants' short transactions on the transaction pool while a client runs, so that the
// client's transactions (and its prepared statements) land on different server connections.
// Whatever goes wrong for them (an error, a wrong pinned value) is collected: a client's
// actions must never reach another tenant's statements.
function startChurn(workers = TX_POOL_SIZE + 1): () => Promise<string[]> {
  let stop = false;
  const problems: string[] = [];
  const started = Date.now();
  const loops = Array.from({ length: workers }, async (_, w) => {
    while (!stop) {
      const c = new pg.Client({
        host: '127.0.0.1',
        port: proxies.transaction.port,
        user: CHURN_USER.name,
        password: CHURN_USER.password,
        database: 'postgres',
        ssl: { rejectUnauthorized: false },
      });
      c.on('error', () => {});
      let sql = 'connect';
      try {
        await c.connect();
        while (!stop) {
          for (sql of ['BEGIN', "SELECT pg_sleep(0.003), current_setting('app.tenant_id') AS t", 'COMMIT']) {
            const r = await c.query(sql);
            if (r.rows[0] && r.rows[0].t !== 'b') problems.push(`+${Date.now() - started} ms churn ${w}: app.tenant_id = ${r.rows[0].t}, want b`);
          }
          await new Promise((r) => setTimeout(r, 2));
        }
      } catch (e) {
        const err = e as { code?: string; message?: string };
        problems.push(`+${Date.now() - started} ms churn ${w}: ${sql} failed: ${err.code ?? ''} ${err.message ?? String(e)}`);
      } finally {
        await c.end().catch(() => {});
      }
    }
  });
  return async () => {
    stop = true;
    await Promise.all(loops);
    return problems;
  };
}

/** sticky_sessions_total of the transaction-mode proxy, by reason. */
async function stickyCounts(): Promise<Record<string, number>> {
  const got = await proxies.transaction.server.runtime.metrics.sticky.get();
  return Object.fromEntries(got.values.map((v) => [String(v.labels.reason), v.value]));
}

/**
 * Sessions a client may legitimately make sticky in transaction mode: the LISTEN session,
 * and psycopg2's SQL PREPARE sessions (prepared_repeat, prepared_free).
 */
const EXPECTED_STICKY: Record<string, Record<string, number>> = {
  psycopg2: { LISTEN: 1, PREPARE: 2 }, // keys in alphabetical order
};
const TX_STICKY_STEP = 'tx_sticky';
const TX_STICKY_TITLE = 'transaction mode: no session pinned to a server connection beyond LISTEN / SQL PREPARE';
const TX_CHURN_STEP = 'tx_churn';
const TX_CHURN_TITLE = "transaction mode: another tenant's concurrent transactions undisturbed";

async function probe(client: ClientDef): Promise<string | null> {
  const [cmd, args] = client.probe;
  const r = await spawnCollect(cmd, args, {}, 30_000);
  if (r.status === 0) return null;
  return `driver not available (install ${client.packages}): ${(r.error?.message ?? r.stderr).trim().split('\n').slice(-1)[0]}`;
}

// ---------------------------------------------------------------------------------------
// Tests: one per client; both pool modes run at once, then each step is asserted.

type Cell = { status: 'pass' | 'fail' | 'n.a.'; detail?: string };
const matrix = new Map<string, Cell>(); // `${client}|${mode}|${step}`
const driverInfo = new Map<string, string>();
const runtimes: string[] = [];

const fmt = (v: unknown) => (typeof v === 'string' ? JSON.stringify(v) : JSON.stringify(v) ?? String(v));

// COMPAT_CLIENTS=psycopg3,jdbc runs only those (for debugging; COMPATIBILITY.md is then not written).
const only = process.env.COMPAT_CLIENTS?.split(',').filter(Boolean);
for (const client of CLIENTS) {
  if (only && !only.includes(client.id)) continue;
  t.test(client.label, async (t) => {
    const missing = await probe(client);
    if (missing) {
      t.fail(missing);
      for (const mode of MODES) for (const step of STEPS) matrix.set(`${client.id}|${mode}|${step.id}`, { status: 'fail', detail: missing });
      return;
    }
    const auditFrom = { transaction: proxies.transaction.audit.lines.length, session: proxies.session.audit.lines.length };
    const stickyBefore = await stickyCounts();
    const stopChurn = startChurn();
    const outputs = await Promise.all(MODES.map(async (mode) => [mode, await runClient(client, mode)] as const));
    const churnProblems = await stopChurn();
    const stickyAfter = await stickyCounts();
    const audits = Object.fromEntries(
      MODES.map((mode) => {
        const starts = proxies[mode].audit.lines
          .slice(auditFrom[mode])
          .filter((e) => e.event === 'session.start' && (e.user === USER.name || e.user === CERT_USER));
        const summary: AuditSummary = {
          sessions: starts.length,
          tls: starts.filter((e) => e.tls !== null && typeof e.tls === 'object').length,
          certAuth: starts.filter((e) => e.auth_method === 'cert' && JSON.stringify(e.cert ?? null).includes(CERT_CN)).length,
        };
        return [mode, summary];
      }),
    ) as Record<Mode, AuditSummary>;
    const sticky = Object.fromEntries(
      Object.entries(stickyAfter)
        .map(([reason, n]) => [reason, n - (stickyBefore[reason] ?? 0)] as const)
        .filter(([, n]) => n > 0)
        .sort(([a], [b]) => a.localeCompare(b)),
    );
    const expectedSticky = EXPECTED_STICKY[client.id] ?? { LISTEN: 1 };
    t.same(sticky, expectedSticky, `${client.id} sessions made sticky in transaction mode, by reason`);
    matrix.set(
      `${client.id}|transaction|${TX_STICKY_STEP}`,
      JSON.stringify(sticky) === JSON.stringify(expectedSticky)
        ? { status: 'pass' }
        : { status: 'fail', detail: `sticky sessions by reason ${JSON.stringify(sticky)}, want ${JSON.stringify(expectedSticky)}` },
    );
    matrix.set(`${client.id}|session|${TX_STICKY_STEP}`, { status: 'n.a.' });
    t.same(churnProblems, [], `another tenant's transactions on the transaction pool were unaffected while ${client.id} ran`);
    matrix.set(
      `${client.id}|transaction|${TX_CHURN_STEP}`,
      churnProblems.length ? { status: 'fail', detail: churnProblems.slice(0, 3).join('; ') } : { status: 'pass' },
    );
    matrix.set(`${client.id}|session|${TX_CHURN_STEP}`, { status: 'n.a.' });
    if (churnProblems.length) {
      for (const [mode, out] of outputs) {
        let at = 0;
        t.comment(`${mode} step end times: ${[...out.lines.values()].map((l) => `${l.step} +${(at += l.ms ?? 0)} ms`).join(', ')}`);
      }
    }
    for (const [mode, out] of outputs) {
      runtimes.push(`${client.id} ${mode}: ${out.ms} ms`);
      const run = runTag(client, mode);
      await t.test(`${mode} pool mode`, async (t) => {
        if (out.status !== 0 || out.garbage.length) {
          t.comment(`exit ${out.status} ${out.signal ?? ''}; stderr:\n${out.stderr.slice(-3000)}\nnon-JSON output:\n${out.garbage.join('\n').slice(-2000)}`);
        }
        t.equal(out.status, 0, `${client.id} exits 0 (signal ${out.signal ?? 'none'})`);
        const seen = (step: string, keys: string[]) =>
          `${step} ${JSON.stringify(Object.fromEntries(keys.map((k) => [k, out.lines.get(step)?.observed?.[k]])))}`;
        t.comment(
          [seen('tls_scram_login', ['ssl']), seen('prepared_repeat', ['backends', 'prepared_in', 'names']), seen('cancel', ['after_cancel_ms', 'total_ms'])].join('; '),
        );
        const driver = out.lines.get('tls_scram_login')?.observed?.driver;
        if (typeof driver === 'string') driverInfo.set(client.id, driver);
        for (const step of STEPS) {
          const key = `${client.id}|${mode}|${step.id}`;
          const line = out.lines.get(step.id);
          if (!line) {
            const detail = `no result line (client exit ${out.status}${out.signal ? ` ${out.signal}` : ''}): ${out.stderr.trim().split('\n').slice(-3).join(' | ')}`;
            t.fail(`${step.id}: ${detail}`);
            matrix.set(key, { status: 'fail', detail });
            continue;
          }
          if (line.status === 'na') {
            const allowed = NOT_APPLICABLE[client.id]?.[step.id];
            if (allowed) {
              t.pass(`${step.id}: n.a. (${line.reason})`);
              matrix.set(key, { status: 'n.a.', detail: line.reason ?? allowed });
            } else {
              t.fail(`${step.id}: the client reports n.a. (${line.reason}) but the step is expected to work`);
              matrix.set(key, { status: 'fail', detail: `unexpected n.a.: ${line.reason}` });
            }
            continue;
          }
          if (line.status === 'error') {
            const e = line.error ?? {};
            const detail = `${e.type ?? 'error'} ${e.sqlstate ? `[${e.sqlstate}] ` : ''}${(e.message ?? '').split('\n')[0]}`;
            t.fail(`${step.id}: ${detail}`, { trace: e.trace });
            matrix.set(key, { status: 'fail', detail });
            continue;
          }
          const observed = line.observed ?? {};
          const checks = step.expect(observed, { run, mode, client: client.id, audit: audits[mode] });
          const failed = checks.filter((c) => !c.ok);
          for (const c of checks) t.ok(c.ok, `${step.id}: ${c.what} = ${fmt(c.got)} (want ${c.want})`);
          if (failed.length) t.comment(`${step.id} observed: ${JSON.stringify(observed)}`);
          const note = typeof observed.note === 'string' ? observed.note : undefined;
          matrix.set(
            key,
            failed.length
              ? { status: 'fail', detail: failed.map((c) => `${c.what} = ${fmt(c.got)}, want ${c.want}`).join('; ') }
              : { status: 'pass', ...(note ? { detail: note } : {}) },
          );
        }
      });
    }
  });
}

t.test('write test/COMPATIBILITY.md', async (t) => {
  const md = renderMatrix();
  t.comment(runtimes.join('\n'));
  const switches = await proxies.transaction.server.runtime.metrics.settingsSwitchCount();
  t.comment(`transaction pool: ${switches.inline} settings switches inline (with a client's Query or batch), ${switches.separate} separate`);
  if (only) {
    t.comment(`COMPAT_CLIENTS set: COMPATIBILITY.md not written\n${md}`);
    return;
  }
  writeFileSync(MATRIX_FILE, md);
  t.ok(existsSync(MATRIX_FILE));
});

function renderMatrix(): string {
  const out: string[] = [];
  out.push('# Driver compatibility matrix');
  out.push('');
  out.push('Generated by `npx tap test/compat.test.ts` from what each client observed; do not edit by hand.');
  out.push(`Each client runs through pgbastion over TLS (hba: \`hostnossl reject\`), against PostgreSQL ${PG_VERSION},`);
  out.push(`as a user pinned to \`app.tenant_id = a\`, in transaction pool mode (pool of ${TX_POOL_SIZE}, kept busy by another`);
  out.push("tenant's transactions) and in session pool mode. Cells: transaction / session; — where a row is about");
  out.push('transaction mode only. Notes say how a driver did a step and, for a failure, what was observed;');
  out.push('n.a. is a step the driver cannot do.');
  out.push('');
  const counts = { pass: 0, fail: 0, 'n.a.': 0 };
  for (const cell of matrix.values()) if (cell.detail || cell.status !== 'n.a.') counts[cell.status]++;
  out.push(`Totals: ${counts.pass} pass, ${counts.fail} fail, ${counts['n.a.']} n.a.`);
  out.push('');
  out.push('| step | ' + CLIENTS.map((c) => c.label).join(' | ') + ' |');
  out.push('| --- | ' + CLIENTS.map(() => '---').join(' | ') + ' |');
  const notes: string[] = [];
  const noteIndex = new Map<string, number>();
  for (const step of [...STEPS, { id: TX_STICKY_STEP, title: TX_STICKY_TITLE }, { id: TX_CHURN_STEP, title: TX_CHURN_TITLE }]) {
    const cells = CLIENTS.map((client) => {
      const parts = MODES.map((mode) => {
        const cell = matrix.get(`${client.id}|${mode}|${step.id}`);
        if (!cell) return 'not run';
        if (cell.status === 'n.a.' && !cell.detail) return '—';
        let text = cell.status;
        if (cell.detail) {
          const note = `${client.label}, ${step.title}${cell.status === 'pass' ? '' : ` (${mode})`}: ${cell.status === 'pass' ? '' : `${cell.status}: `}${cell.detail}`;
          let n = noteIndex.get(note);
          if (n === undefined) {
            n = notes.length + 1;
            noteIndex.set(note, n);
            notes.push(note);
          }
          text += `[^${n}]`;
        }
        return text;
      });
      return parts.join(' / ');
    });
    out.push(`| ${step.title} | ${cells.join(' | ')} |`);
  }
  out.push('');
  out.push('Drivers: ' + CLIENTS.map((c) => `${c.label}: ${driverInfo.get(c.id) ?? 'unknown'}`).join('; ') + '.');
  out.push('');
  for (const [i, note] of notes.entries()) out.push(`[^${i + 1}]: ${note.replace(/\|/g, '\\|').replace(/\n/g, ' ')}`);
  out.push('');
  return out.join('\n');
}
