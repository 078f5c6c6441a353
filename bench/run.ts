// Benchmark harness (`npm run bench`): pgbench against direct PostgreSQL, PgBouncer and pgbastion
// on this machine, with proxy CPU accounting; writes bench/results/<date>.json and bench/RESULTS.md.

import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import YAML from 'yaml';
import { makeScramSecret } from '../src/auth/scram.js';
import { freePort, pgBin, startPostgres, type PgServer } from '../test/helpers/postgres.js';

// ---------------------------------------------------------------------------------------------
// Settings

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BENCH_DIR = path.join(ROOT, 'bench');
const PGBASTION_MAIN = path.join(ROOT, 'dist', 'cli', 'main.js');
const PGBOUNCER_BIN = '/usr/sbin/pgbouncer';

const SERVER_ROLE = 'bench_rw';
const SERVER_PASSWORD = 'bench-pw';
const PROXY_USER = 'bench';
const PROXY_PASSWORD = 'bench-pw'; // same as the server role's, so one PGPASSWORD works everywhere
const DATABASE = 'bench';

/**
 * Both proxies pool per transaction with fewer server connections than pgbench clients:
 * the configuration pgbastion is built for, and the one PgBouncer is usually run in.
 */
const POOL_MODE: 'session' | 'transaction' = 'transaction';
const POOL_SIZE = 20;

const THREADS = 2;
const WARMUP_S = 2; // per target before measuring: warms caches and V8's JIT, not recorded

const asRoot = process.getuid?.() === 0;

const USAGE = `usage: node --import tsx bench/run.ts [--quick] [--duration S] [--clients N] [--cpu-prof]

  --quick       scale 2, 5 s runs, 1 round (default: scale 10, 10 s runs, 3 rounds)
  --duration S  seconds per pgbench run
  --clients N   pgbench clients (default 32)
  --cpu-prof    run pgbastion under node --cpu-prof; reports are not written`;

interface Options {
  quick: boolean;
  /** Directory for a V8 CPU profile of pgbastion (node --cpu-prof), written when it stops. */
  cpuProfDir: string | null;
  duration: number;
  clients: number;
  rounds: number;
  scale: number;
  argv: string[];
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      duration: { type: 'string' },
      clients: { type: 'string' },
      'cpu-prof': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  const positive = (name: string, v: string | undefined, dflt: number): number => {
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got "${v}"\n${USAGE}`);
    return n;
  };
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const quick = values.quick ?? false;
  return {
    quick,
    cpuProfDir: values['cpu-prof'] ? path.join(os.tmpdir(), `pgbastion-bench-profile-${process.pid}`) : null,
    duration: positive('duration', values.duration, quick ? 5 : 10),
    clients: positive('clients', values.clients, 32),
    rounds: quick ? 1 : 3,
    scale: quick ? 2 : 10,
    argv,
  };
}

// ---------------------------------------------------------------------------------------------
// Processes and cleanup

/** Cleanup steps, run last-registered first, exactly once (normal end, error or signal). */
const cleanups: Array<() => Promise<void> | void> = [];
let cleaning: Promise<void> | null = null;
/** Short-lived commands in flight (pgbench), ended first on cleanup. */
const commands = new Set<ChildProcess>();
let interrupted = false;

function cleanupAll(): Promise<void> {
  cleaning ??= (async () => {
    for (const child of commands) child.kill('SIGTERM');
    for (const step of cleanups.reverse()) {
      try {
        await step();
      } catch (e) {
        console.error(`cleanup: ${(e as Error).message}`);
      }
    }
  })();
  return cleaning;
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    interrupted = true;
    console.error(`\n${signal}: stopping everything`);
    void cleanupAll().finally(() => process.exit(130));
  });
}

interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    commands.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('close', (status) => {
      commands.delete(child);
      resolve({ status, stdout, stderr });
    });
  });
}

async function runOk(cmd: string, args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  const r = await run(cmd, args, env);
  if (r.status !== 0) throw new Error(`${path.basename(cmd)} ${args.join(' ')} exited ${r.status}:\n${r.stderr}${r.stdout}`);
  return r;
}

/** Keeps the last ~20 kB a process wrote, for error messages. */
function tailOf(child: ChildProcess): () => string {
  let buf = '';
  const keep = (d: Buffer) => {
    buf += d.toString();
    if (buf.length > 40_000) buf = buf.slice(-20_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  return () => buf;
}

/** Signals `pid` (default: the child itself) and waits for the child to exit; SIGKILL after 5 s. */
async function stopChild(child: ChildProcess, signal: NodeJS.Signals, pid = child.pid): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const kill = (sig: NodeJS.Signals) => {
    try {
      if (pid !== undefined) process.kill(pid, sig);
    } catch {
      // already gone
    }
  };
  kill(signal);
  const timer = setTimeout(() => kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

/**
 * Immediate shutdown of the harness PostgreSQL, sent to the postmaster itself: as root the
 * helper's child is `runuser`, which does not pass SIGQUIT on, so its stop() alone ends in
 * SIGKILL of runuser and leaves the postmaster running (and our stderr pipe open) until it
 * notices its data directory is gone, about a minute later.
 */
function quitPostmaster(dataDir: string): void {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  if (!existsSync(pidFile)) return;
  const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  try {
    if (Number.isInteger(pid) && pid > 0) process.kill(pid, 'SIGQUIT');
  } catch {
    // already gone
  }
}

/** A temp dir owned by the postgres OS user when we are root (PgBouncer runs as that user). */
function tempDir(prefix: string, forPostgres: boolean): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  chmodSync(dir, 0o755);
  if (forPostgres && asRoot) {
    const { uid, gid } = postgresUser();
    chownSync(dir, uid, gid);
  }
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

let pgUserIds: { uid: number; gid: number } | null = null;
function postgresUser(): { uid: number; gid: number } {
  if (pgUserIds) return pgUserIds;
  const passwd = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith('postgres:'));
  if (!passwd) throw new Error('running as root needs a "postgres" OS user (Debian package postgresql creates it)');
  const [, , uid, gid] = passwd.split(':');
  pgUserIds = { uid: Number(uid), gid: Number(gid) };
  return pgUserIds;
}

/** Polls a SCRAM login until it succeeds; `failed` reports why the target can no longer come up. */
async function waitForLogin(
  what: string,
  conn: pg.ClientConfig,
  failed: () => string | null,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError = '';
  for (;;) {
    const reason = failed();
    if (reason !== null) throw new Error(`${what} did not start: ${reason}`);
    const c = new pg.Client({ ...conn, connectionTimeoutMillis: 2000 });
    try {
      await c.connect();
      await c.query('SELECT 1');
      await c.end();
      return;
    } catch (e) {
      lastError = (e as Error).message;
      await c.end().catch(() => {});
    }
    if (Date.now() > deadline) throw new Error(`${what} did not accept a login within ${timeoutMs} ms (last error: ${lastError})`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// ---------------------------------------------------------------------------------------------
// CPU accounting

const CLK_TCK = await (async () => {
  const r = await run('getconf', ['CLK_TCK']);
  const n = Number(r.stdout.trim());
  return Number.isInteger(n) && n > 0 ? n : 100;
})();

/** User and system CPU seconds a process has used so far (/proc/<pid>/stat fields 14 and 15). */
function cpuSeconds(pid: number): { user: number; system: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Field 2 (comm) may contain spaces and parentheses: count from the last ')'. Field 3 is index 0.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: Number(fields[14 - 3]) / CLK_TCK, system: Number(fields[15 - 3]) / CLK_TCK };
}

// ---------------------------------------------------------------------------------------------
// Targets

interface Target {
  name: string;
  port: number;
  user: string;
  /** The process whose CPU time is the proxy's cost; undefined for direct PostgreSQL. */
  pid?: number;
  /** Throws when the target died during the run. */
  check(): void;
}

/**
 * Creates the server role with `secret` as its stored verifier (PostgreSQL keeps a SCRAM
 * verifier given as the password verbatim; the login password is still SERVER_PASSWORD).
 */
async function preparePostgres(pgs: PgServer, scale: number, secret: string): Promise<void> {
  await pgs.query(`CREATE ROLE ${SERVER_ROLE} LOGIN PASSWORD '${secret}'`);
  await pgs.query(`CREATE DATABASE ${DATABASE} OWNER ${SERVER_ROLE}`);
  console.log(`pgbench -i -s ${scale} ...`);
  await runOk(
    pgBin('pgbench'),
    ['-i', '-q', '-s', String(scale), '-h', pgs.host, '-p', String(pgs.port), '-U', SERVER_ROLE, DATABASE],
    { PGPASSWORD: SERVER_PASSWORD },
  );
}

async function startPgbastion(pgs: PgServer, secret: string, cpuProfDir: string | null): Promise<Target> {
  if (!existsSync(PGBASTION_MAIN)) {
    throw new Error(`${path.relative(ROOT, PGBASTION_MAIN)} is missing: build first (npm run build; npm run bench does it)`);
  }
  const dir = tempDir('pgbastion-bench-', false);
  const port = await freePort();
  const config = {
    listen: { host: '127.0.0.1', port },
    upstreams: [{ host: pgs.host, port: pgs.port }],
    pool: { mode: POOL_MODE, size: POOL_SIZE },
    users: [{ name: PROXY_USER, secret, server_role: SERVER_ROLE }],
    server_roles: [{ name: SERVER_ROLE, password: SERVER_PASSWORD }],
    hba: [{ type: 'host', database: 'all', user: 'all', address: 'all', method: 'scram-sha-256' }],
    log_level: 'warn',
  };
  const file = path.join(dir, 'pgbastion.yaml');
  writeFileSync(file, YAML.stringify(config), { mode: 0o600 });

  const nodeArgs = cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', cpuProfDir] : [];
  const child = spawn(process.execPath, [...nodeArgs, PGBASTION_MAIN, 'start', '-c', file], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const output = tailOf(child);
  cleanups.push(() => stopChild(child, 'SIGTERM'));
  const died = () => (child.exitCode !== null || child.signalCode !== null ? `exited (${child.exitCode ?? child.signalCode}):\n${output()}` : null);
  await waitForLogin('pgbastion', { host: '127.0.0.1', port, user: PROXY_USER, password: PROXY_PASSWORD, database: DATABASE }, died);
  return {
    name: 'pgbastion',
    port,
    user: PROXY_USER,
    pid: child.pid!,
    check() {
      const reason = died();
      if (reason) throw new Error(`pgbastion ${reason}`);
    },
  };
}

async function startPgbouncer(pgs: PgServer, secret: string): Promise<Target> {
  if (!existsSync(PGBOUNCER_BIN)) throw new Error(`${PGBOUNCER_BIN} not found (install the Debian package pgbouncer)`);
  const dir = tempDir('pgbouncer-bench-', true);
  const port = await freePort();
  const ini = path.join(dir, 'pgbouncer.ini');
  const authFile = path.join(dir, 'userlist.txt');
  const logFile = path.join(dir, 'pgbouncer.log');
  const pidFile = path.join(dir, 'pgbouncer.pid');
  // With a SCRAM secret in auth_file PgBouncer cannot reuse the client's credentials upstream,
  // so the server login is spelled out in [databases]. PgBouncer (1.18 at least) then still
  // answers the server's SCRAM challenge with the keys from the client's login instead of that
  // password (pgbouncer/pgbouncer#944, #1461): it only works because the client's verifier is
  // the very one PostgreSQL stores for the server role (same salt, same keys).
  writeFileSync(
    ini,
    [
      '[databases]',
      `${DATABASE} = host=${pgs.host} port=${pgs.port} dbname=${DATABASE} user=${SERVER_ROLE} password=${SERVER_PASSWORD}`,
      '',
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      `unix_socket_dir = ${dir}`,
      'auth_type = scram-sha-256',
      `auth_file = ${authFile}`,
      `pool_mode = ${POOL_MODE}`,
      `default_pool_size = ${POOL_SIZE}`,
      'max_client_conn = 1000',
      `logfile = ${logFile}`,
      `pidfile = ${pidFile}`,
      'log_connections = 0',
      'log_disconnections = 0',
      '',
    ].join('\n'),
  );
  writeFileSync(authFile, `"${PROXY_USER}" "${secret}"\n`);
  for (const f of [ini, authFile]) {
    chmodSync(f, 0o600);
    if (asRoot) chownSync(f, postgresUser().uid, postgresUser().gid);
  }

  // PgBouncer refuses to run as root. Under runuser the spawned PID is runuser's, so the
  // pidfile gives the process to measure and signal.
  const [cmd, args] = asRoot ? ['runuser', ['-u', 'postgres', '--', PGBOUNCER_BIN, ini]] : [PGBOUNCER_BIN, [ini]];
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const output = tailOf(child);
  const log = () => (existsSync(logFile) ? readFileSync(logFile, 'utf8').slice(-4000) : '(no log file)');
  const pid = (): number | undefined => {
    if (!existsSync(pidFile)) return undefined;
    const n = Number(readFileSync(pidFile, 'utf8').trim());
    return Number.isInteger(n) && n > 0 ? n : undefined;
  };
  // SIGINT is PgBouncer's safe shutdown (waits for clients); SIGTERM closes everything now.
  cleanups.push(() => stopChild(child, 'SIGTERM', pid() ?? child.pid));
  const died = () =>
    child.exitCode !== null || child.signalCode !== null
      ? `exited (${child.exitCode ?? child.signalCode}):\n${output()}\n${log()}`
      : null;
  await waitForLogin('PgBouncer', { host: '127.0.0.1', port, user: PROXY_USER, password: PROXY_PASSWORD, database: DATABASE }, died).catch((e: Error) => {
    throw new Error(`${e.message}\n--- ${logFile} ---\n${log()}`);
  });
  const bouncerPid = pid();
  if (bouncerPid === undefined) throw new Error(`PgBouncer is up but wrote no pidfile ${pidFile}`);
  return {
    name: 'PgBouncer',
    port,
    user: PROXY_USER,
    pid: bouncerPid,
    check() {
      const reason = died();
      if (reason) throw new Error(`PgBouncer ${reason}`);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Scenario S1: pgbench select-only (-S), simple protocol, fixed duration

interface Sample {
  target: string;
  round: number;
  /** null: pgbench produced no result (see error). */
  tps: number | null;
  transactions: number | null;
  failedTransactions: number | null;
  latencyMs: number | null;
  /** pgbench exited non-zero; any figures cover the clients that kept running. */
  aborted: boolean;
  /** utime + stime of the proxy process over the run. */
  proxyCpuSeconds: number | null;
  /** The stime part of proxyCpuSeconds (kernel: mostly loopback TCP). */
  proxyCpuSystemSeconds: number | null;
  proxyCpuMsPer1kTx: number | null;
  /** First pgbench error line when it exited non-zero. */
  error?: string;
}

function pgbenchArgs(target: Target, clients: number, seconds: number): string[] {
  // No progress reports: pgbench 15 rejects "-P 0" and prints none without -P.
  return ['-S', '-n', '-c', String(clients), '-j', String(THREADS), '-T', String(seconds),
    '-h', '127.0.0.1', '-p', String(target.port), '-U', target.user, DATABASE];
}

function parsePgbench(out: string): { tps: number; transactions: number; failed: number; latencyMs: number | null } | null {
  const tps = /^tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)/m.exec(out);
  const tx = /^number of transactions actually processed: (\d+)/m.exec(out);
  if (!tps || !tx) return null;
  const failed = /^number of failed transactions: (\d+)/m.exec(out);
  const latency = /^latency average = ([0-9.]+) ms/m.exec(out);
  return {
    tps: Number(tps[1]),
    transactions: Number(tx[1]),
    failed: failed ? Number(failed[1]) : 0,
    latencyMs: latency ? Number(latency[1]) : null,
  };
}

async function measure(target: Target, opts: Options, round: number, seconds = opts.duration): Promise<Sample> {
  if (interrupted) throw new Error('interrupted');
  const cpuBefore = target.pid !== undefined ? cpuSeconds(target.pid) : null;
  const r = await run(pgBin('pgbench'), pgbenchArgs(target, opts.clients, seconds), { PGPASSWORD: SERVER_PASSWORD });
  if (interrupted) throw new Error('interrupted');
  const cpuAfter = target.pid !== undefined ? cpuSeconds(target.pid) : null;
  target.check(); // a dead proxy ends the benchmark; a failed pgbench run is recorded and reported
  const parsed = parsePgbench(r.stdout);
  if (!parsed && r.status === 0) throw new Error(`cannot parse pgbench output:\n${r.stdout}`);
  const cpuSystem = cpuBefore !== null && cpuAfter !== null ? cpuAfter.system - cpuBefore.system : null;
  const cpu = cpuBefore !== null && cpuAfter !== null ? cpuAfter.user - cpuBefore.user + cpuSystem! : null;
  const sample: Sample = {
    target: target.name,
    round,
    tps: parsed?.tps ?? null,
    transactions: parsed?.transactions ?? null,
    failedTransactions: parsed?.failed ?? null,
    latencyMs: parsed?.latencyMs ?? null,
    aborted: r.status !== 0,
    proxyCpuSeconds: cpu,
    proxyCpuSystemSeconds: cpuSystem,
    proxyCpuMsPer1kTx: cpu !== null && parsed && parsed.transactions > 0 ? (cpu * 1000 * 1000) / parsed.transactions : null,
  };
  if (sample.aborted) {
    const first = r.stderr.split('\n').find((l) => l.includes('error'));
    sample.error = `pgbench exit ${r.status}: ${(first ?? r.stderr.trim().split('\n')[0] ?? '').trim()}`;
  }
  return sample;
}

function describe(s: Sample): string {
  const figures =
    s.tps === null
      ? 'no result'
      : `${s.tps.toFixed(0)} tps` +
        (s.proxyCpuMsPer1kTx !== null
          ? `, proxy CPU ${s.proxyCpuSeconds!.toFixed(2)} s (${s.proxyCpuSystemSeconds!.toFixed(2)} s system) = ${s.proxyCpuMsPer1kTx.toFixed(1)} ms/1k tx`
          : '');
  return figures + (s.error ? `  [${s.error}]` : '');
}

// ---------------------------------------------------------------------------------------------
// Summary and report

interface Row {
  target: string;
  /** Median over the runs that produced a result; null when none did. */
  tps: number | null;
  vsDirect: number | null;
  vsPgbouncer: number | null;
  cpuMsPer1kTx: number | null;
  latencyMs: number | null;
  runs: number;
  abortedRuns: number;
}

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function summarize(samples: Sample[], targets: string[]): Row[] {
  const tpsOf = (t: string) => median(samples.flatMap((s) => (s.target === t && s.tps !== null ? [s.tps] : [])));
  const direct = tpsOf('direct');
  const bouncer = tpsOf('PgBouncer');
  return targets.map((t) => {
    const mine = samples.filter((s) => s.target === t);
    const tps = tpsOf(t);
    return {
      target: t,
      tps,
      vsDirect: direct && tps !== null ? tps / direct : null,
      vsPgbouncer: t === 'direct' || !bouncer || tps === null ? null : tps / bouncer,
      cpuMsPer1kTx: median(mine.flatMap((s) => (s.proxyCpuMsPer1kTx === null ? [] : [s.proxyCpuMsPer1kTx]))),
      latencyMs: median(mine.flatMap((s) => (s.latencyMs === null ? [] : [s.latencyMs]))),
      runs: mine.length,
      abortedRuns: mine.filter((s) => s.aborted).length,
    };
  });
}

const fmt = (n: number | null, digits: number, suffix = ''): string => (n === null ? '—' : n.toFixed(digits) + suffix);

function markdownTable(rows: Row[]): string {
  const lines = [
    '| target | TPS (median) | vs direct | vs PgBouncer | proxy CPU ms / 1k tx | latency avg ms | runs (failed) |',
    '|---|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of rows) {
    lines.push(
      `| ${r.target} | ${fmt(r.tps, 0)} | ${fmt(r.vsDirect, 2, '×')} | ${fmt(r.vsPgbouncer, 2, '×')} | ` +
        `${fmt(r.cpuMsPer1kTx, 1)} | ${fmt(r.latencyMs, 3)} | ${r.runs} (${r.abortedRuns}) |`,
    );
  }
  return lines.join('\n');
}

function consoleTable(rows: Row[]): string {
  const header = ['target', 'TPS', 'vs direct', 'vs PgBouncer', 'CPU ms/1k tx', 'lat ms', 'failed'];
  const body = rows.map((r) => [
    r.target,
    fmt(r.tps, 0),
    fmt(r.vsDirect, 2, 'x'),
    fmt(r.vsPgbouncer, 2, 'x'),
    fmt(r.cpuMsPer1kTx, 1),
    fmt(r.latencyMs, 3),
    `${r.abortedRuns}/${r.runs}`,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...body.map(line)].join('\n');
}

async function environment() {
  const meminfo = readFileSync('/proc/meminfo', 'utf8');
  const memKb = Number(/^MemTotal:\s+(\d+) kB/m.exec(meminfo)?.[1] ?? 0);
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const cpuModel = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? 'unknown';
  const nproc = (await run('nproc', [])).stdout.trim();
  const firstLine = async (cmd: string) => (await run(cmd, ['--version'])).stdout.split('\n')[0]!.trim();
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
  return {
    machine: { nproc: Number(nproc), memTotalGiB: Number((memKb / 1024 / 1024).toFixed(1)), cpuModel, kernel: os.release() },
    versions: {
      node: process.version,
      postgres: await firstLine(pgBin('postgres')),
      pgbench: await firstLine(pgBin('pgbench')),
      pgbouncer: await firstLine(PGBOUNCER_BIN),
      pgbastion: pkg.version,
    },
  };
}

function commandLine(argv: string[]): string {
  return argv.length === 0 ? 'npm run bench' : `npm run bench -- ${argv.join(' ')}`;
}

function writeReports(opts: Options, env: Awaited<ReturnType<typeof environment>>, samples: Sample[], rows: Row[], date: Date): void {
  const day = date.toISOString().slice(0, 10);
  const resultsDir = path.join(BENCH_DIR, 'results');
  mkdirSync(resultsDir, { recursive: true });
  const json = {
    date: date.toISOString(),
    command: commandLine(opts.argv),
    scenario: {
      id: 'S1',
      quick: opts.quick,
      pgbench: `pgbench -S -n -c ${opts.clients} -j ${THREADS} -T ${opts.duration}`,
      scale: opts.scale,
      rounds: opts.rounds,
      warmupSeconds: WARMUP_S,
      poolMode: POOL_MODE,
      poolSize: POOL_SIZE,
    },
    ...env,
    summary: rows,
    samples,
  };
  const jsonFile = path.join(resultsDir, `${day}.json`);
  writeFileSync(jsonFile + '.tmp', JSON.stringify(json, null, 2) + '\n');
  renameSync(jsonFile + '.tmp', jsonFile);

  const aborted = samples.filter((s) => s.aborted);
  const overbooked = POOL_MODE === 'session' && opts.clients > POOL_SIZE;
  const md = [
    '# pgbastion benchmark results',
    '',
    'Generated by `bench/run.ts`; rewritten on every run. Raw samples: ' + `[results/${day}.json](results/${day}.json).`,
    '',
    `## S1: select-only, ${opts.clients} clients, ${POOL_MODE} pooling`,
    '',
    `\`pgbench -S -n -c ${opts.clients} -j ${THREADS} -T ${opts.duration}\` on a scale-${opts.scale} database; ` +
      `targets alternate (direct, PgBouncer, pgbastion), ${opts.rounds} round(s) after a ${WARMUP_S} s warm-up each; medians shown. ` +
      `Both proxies: pool_mode ${POOL_MODE}, pool size ${POOL_SIZE}, SCRAM client login. ` +
      'Proxy CPU is utime+stime of the proxy process from /proc/<pid>/stat over the run.',
    '',
    markdownTable(rows),
    '',
    ...(overbooked
      ? [`Note: session pooling with ${opts.clients} clients and ${POOL_SIZE} server connections: ` +
          `${opts.clients - POOL_SIZE} clients cannot get a server until others disconnect, which happens only when the run ends. ` +
          'PgBouncer lets them log in and parks their first query; pgbastion leases the server at login, so they wait in ' +
          'the startup phase (limits.startup_timeout_ms / pool.acquire_timeout_ms, default 5 s) and fail.', '']
      : []),
    ...(aborted.length > 0
      ? ['Runs where pgbench exited non-zero (any figures cover the clients that kept running):', '',
          ...aborted.map((s) => `- ${s.target}, round ${s.round}: ${s.error}`), '']
      : []),
    '### All runs',
    '',
    '| round | target | TPS | transactions | proxy CPU s (system) | CPU ms / 1k tx |',
    '|---:|---|---:|---:|---:|---:|',
    ...samples.map(
      (s) =>
        `| ${s.round} | ${s.target} | ${fmt(s.tps, 0)} | ${s.transactions ?? '—'} | ` +
        `${s.proxyCpuSeconds === null ? '—' : `${s.proxyCpuSeconds.toFixed(2)} (${s.proxyCpuSystemSeconds!.toFixed(2)})`} | ${fmt(s.proxyCpuMsPer1kTx, 1)} |`,
    ),
    '',
    '## Environment',
    '',
    `- Date: ${date.toISOString()}`,
    `- Command: \`${commandLine(opts.argv)}\``,
    `- Machine: ${env.machine.nproc} CPUs (${env.machine.cpuModel}), ${env.machine.memTotalGiB} GiB RAM, Linux ${env.machine.kernel}; ` +
      'PostgreSQL, both proxies and pgbench share these CPUs',
    `- Versions: Node.js ${env.versions.node}; ${env.versions.postgres}; ${env.versions.pgbench}; ${env.versions.pgbouncer}; pgbastion ${env.versions.pgbastion}`,
    '- PostgreSQL: throw-away cluster from test/helpers/postgres.ts (fsync=off, synchronous_commit=off)',
    '',
  ].join('\n');
  writeFileSync(path.join(BENCH_DIR, 'RESULTS.md'), md);
  console.log(`\nwrote ${path.relative(ROOT, jsonFile)} and bench/RESULTS.md`);
}

// ---------------------------------------------------------------------------------------------
// Main

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  const date = new Date();
  const env = await environment();
  console.log(`S1: pgbench -S -c ${opts.clients} -T ${opts.duration}, ${opts.rounds} round(s), scale ${opts.scale}, ${POOL_MODE} pooling`);

  // One verifier for every login of PROXY_PASSWORD/SERVER_PASSWORD (they are equal): see startPgbouncer.
  const secret = await makeScramSecret(PROXY_PASSWORD);
  const pgs = await startPostgres();
  cleanups.push(async () => {
    quitPostmaster(pgs.dataDir);
    await pgs.stop();
  });
  console.log(`PostgreSQL on port ${pgs.port}`);
  await preparePostgres(pgs, opts.scale, secret);

  const bouncer = await startPgbouncer(pgs, secret);
  console.log(`PgBouncer on port ${bouncer.port} (pid ${bouncer.pid})`);
  const bastion = await startPgbastion(pgs, secret, opts.cpuProfDir);
  console.log(`pgbastion on port ${bastion.port} (pid ${bastion.pid})`);
  const direct: Target = { name: 'direct', port: pgs.port, user: SERVER_ROLE, check() {} };
  const targets = [direct, bouncer, bastion];

  for (const t of targets) {
    process.stdout.write(`warm-up ${t.name} ... `);
    console.log(describe(await measure(t, opts, 0, WARMUP_S)));
  }

  const samples: Sample[] = [];
  for (let round = 1; round <= opts.rounds; round++) {
    for (const t of targets) {
      process.stdout.write(`round ${round}/${opts.rounds} ${t.name.padEnd(9)} ... `);
      const s = await measure(t, opts, round);
      samples.push(s);
      console.log(describe(s));
    }
  }

  const rows = summarize(samples, targets.map((t) => t.name));
  console.log('\n' + consoleTable(rows));
  if (opts.cpuProfDir) {
    // Profiling slows pgbastion down: keep these figures out of the reports.
    console.log(`\nnot writing reports (profiled run); pgbastion CPU profile goes to ${opts.cpuProfDir}/ when it stops`);
  } else {
    writeReports(opts, env, samples, rows, date);
  }
}

try {
  await main();
} catch (e) {
  // After a signal, errors from the half-torn-down setup are just noise.
  if (!interrupted) console.error(`bench: ${(e as Error).message}`);
  process.exitCode = 1;
} finally {
  await cleanupAll();
}
