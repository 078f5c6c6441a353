// What pgbench talks to: direct PostgreSQL, PgBouncer and pgbastion, each started on first use
// (plaintext or client TLS) on 127.0.0.1 and stopped by the harness cleanup.

import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { freePort, pgBin, startPostgres, type PgServer } from '../test/helpers/postgres.js';
import {
  asRoot,
  childPids,
  exitReason,
  giveToPostgres,
  onCleanup,
  quitPostmaster,
  runOk,
  runsWith,
  stopChild,
  tailOf,
  tempDir,
  waitForLogin,
  withFdLimit,
} from './proc.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const PGBASTION_MAIN = path.join(ROOT, 'dist', 'cli', 'main.js');
const BARE_PIPE_MAIN = path.join(ROOT, 'bench', 'bare-pipe.ts');
/** The row name of the bare Node.js relay (bare-pipe.ts), S1's and S2's reference. */
export const BARE_PIPE = 'Node.js bare pipe';
export const PGBOUNCER_BIN = '/usr/sbin/pgbouncer';

export const SERVER_ROLE = 'bench_rw';
export const SERVER_PASSWORD = 'bench-pw';
export const PROXY_USER = 'bench';
/** Same as the server role's, so one PGPASSWORD works everywhere. */
export const PROXY_PASSWORD = 'bench-pw';
export const DATABASE = 'bench';

/**
 * Both proxies pool per transaction with fewer server connections than pgbench clients:
 * the configuration pgbastion is built for, and the one PgBouncer is usually run in.
 */
export const POOL_MODE = 'transaction';
export const POOL_SIZE = 20;
/** PgBouncer's max_client_conn; pgbastion's limits.max_clients default (10 000) is as high. */
export const MAX_CLIENTS = 10_000;

export interface Target {
  /** Row label: direct, PgBouncer, pgbastion, or a pgbastion variant. */
  name: string;
  /** One per running instance and transport: warm-ups are done once per key. */
  key: string;
  port: number;
  user: string;
  /** Clients must use TLS (PGSSLMODE=require); plaintext otherwise (PGSSLMODE=disable). */
  tls: boolean;
  /** The process whose CPU time and memory are the proxy's cost; undefined for direct PostgreSQL. */
  pid?: number;
  /**
   * The processes whose CPU time is summed as the proxy's cost when there is more than `pid`:
   * a pgbastion with `workers: N` is its primary (which accepts the connections and hands them
   * on) and its N workers. Default: [pid].
   */
  cpuPids?: readonly number[];
  /** Throws when the target died during the run. */
  check(): void;
  /** pgbastion: reads one counter (summed over its label sets) off its /metrics. */
  counter?(name: string): Promise<number>;
}

export interface Certs {
  cert: string;
  key: string;
}

/**
 * A throw-away self-signed RSA-2048 server certificate (pgbench uses sslmode=require, which
 * does not verify it), readable by the postgres OS user for PostgreSQL and PgBouncer.
 */
async function makeServerCert(): Promise<Certs> {
  const dir = tempDir('pgbastion-bench-tls-', true);
  const certs = { cert: path.join(dir, 'server.crt'), key: path.join(dir, 'server.key') };
  await runOk('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-keyout', certs.key, '-out', certs.cert,
  ]);
  // PostgreSQL refuses a key file that group or others can read.
  chmodSync(certs.key, 0o600);
  for (const f of [certs.cert, certs.key]) giveToPostgres(f);
  return certs;
}

/**
 * PostgreSQL with TLS available (clients choose with PGSSLMODE), the server role with `secret`
 * as its stored verifier (PostgreSQL keeps a SCRAM verifier given as the password verbatim;
 * the login password is still SERVER_PASSWORD), and a pgbench database of `scale`.
 */
async function startBenchPostgres(certs: Certs, scale: number, secret: string): Promise<PgServer> {
  const pgs = await startPostgres({ settings: { ssl: 'on', ssl_cert_file: certs.cert, ssl_key_file: certs.key } });
  onCleanup(async () => {
    quitPostmaster(pgs.dataDir);
    await pgs.stop();
  });
  console.log(`PostgreSQL on port ${pgs.port}`);
  await pgs.query(`CREATE ROLE ${SERVER_ROLE} LOGIN PASSWORD '${secret}'`);
  await pgs.query(`CREATE DATABASE ${DATABASE} OWNER ${SERVER_ROLE}`);
  console.log(`pgbench -i -s ${scale} ...`);
  await runOk(
    pgBin('pgbench'),
    ['-i', '-q', '-s', String(scale), '-h', pgs.host, '-p', String(pgs.port), '-U', SERVER_ROLE, DATABASE],
    { PGPASSWORD: SERVER_PASSWORD, PGSSLMODE: 'disable' },
  );
  return pgs;
}

/** A pgbastion users[] entry logging in with PROXY_PASSWORD as the server role. */
export interface BastionUser {
  name: string;
  pins?: Record<string, string>;
}

interface BastionOptions {
  name: string;
  key: string;
  tls: Certs | null;
  users: BastionUser[];
  pinning: string[];
  /** `workers:` (default 1); pool.size is POOL_SIZE / workers, so the upstream sees POOL_SIZE in all. */
  workers?: number;
  /** pool.affinity_ms (default: pgbastion's, 0). */
  affinityMs?: number;
}

/**
 * The set of running targets. Proxies start on first use, so `--only` starts just what the
 * chosen scenarios need; every one is stopped by the harness cleanup.
 */
export class Lab {
  private readonly started = new Map<string, Promise<Target>>();

  private constructor(
    readonly pgs: PgServer,
    /** SCRAM verifier of PROXY_PASSWORD, also stored for SERVER_ROLE: see startPgbouncer. */
    readonly secret: string,
    private readonly certs: Certs,
    /** Directory for V8 CPU profiles of pgbastion (node --cpu-prof), written when it stops. */
    private readonly cpuProfDir: string | null,
  ) {}

  static async start(scale: number, secret: string, cpuProfDir: string | null): Promise<Lab> {
    const certs = await makeServerCert();
    return new Lab(await startBenchPostgres(certs, scale, secret), secret, certs, cpuProfDir);
  }

  direct(tls: boolean): Target {
    return { name: 'direct', key: `direct${tls ? '-tls' : ''}`, port: this.pgs.port, user: SERVER_ROLE, tls, check() {} };
  }

  pgbouncer(tls: boolean): Promise<Target> {
    return this.once(`PgBouncer${tls ? '-tls' : ''}`, (key) => startPgbouncer(this.pgs, this.secret, key, tls ? this.certs : null));
  }

  /** bare-pipe.ts: clients log in to PostgreSQL through it as the server role. */
  barePipe(tls: boolean): Promise<Target> {
    return this.once(`bare-pipe${tls ? '-tls' : ''}`, (key) => startBarePipe(this.pgs, key, tls ? this.certs : null));
  }

  pgbastion(tls: boolean): Promise<Target> {
    return this.pgbastionWith({ name: 'pgbastion', key: `pgbastion${tls ? '-tls' : ''}`, tls, users: [{ name: PROXY_USER }], pinning: [] });
  }

  /**
   * A pgbastion with `workers: N` and pool.size POOL_SIZE / N per worker (so the upstream sees
   * the same POOL_SIZE server connections as from PgBouncer), otherwise configured like
   * pgbastion(tls) but for log_level info: see startPgbastion.
   */
  pgbastionWorkers(name: string, workers: number, tls = false): Promise<Target> {
    const key = `pgbastion-workers${workers}${tls ? '-tls' : ''}`;
    return this.pgbastionWith({ name, key, tls, users: [{ name: PROXY_USER }], pinning: [], workers });
  }

  /** A pgbastion with its own users and pinned variables (S7), plaintext unless `tls`. */
  pgbastionWith(o: { name: string; key: string; tls: boolean; users: BastionUser[]; pinning: string[]; workers?: number; affinityMs?: number }): Promise<Target> {
    return this.once(o.key, () => startPgbastion(this.pgs, this.secret, this.cpuProfDir, { ...o, tls: o.tls ? this.certs : null }));
  }

  private once(key: string, start: (key: string) => Promise<Target>): Promise<Target> {
    let t = this.started.get(key);
    if (!t) {
      t = start(key).then((target) => {
        const workers = target.cpuPids?.filter((p) => p !== target.pid) ?? [];
        console.log(`${target.key} on port ${target.port} (pid ${target.pid}${workers.length > 0 ? `, workers ${workers.join(' ')}` : ''})`);
        return target;
      });
      this.started.set(key, t);
    }
    return t;
  }
}

async function startPgbastion(pgs: PgServer, secret: string, cpuProfDir: string | null, o: BastionOptions): Promise<Target> {
  if (!existsSync(PGBASTION_MAIN)) {
    throw new Error(`${path.relative(ROOT, PGBASTION_MAIN)} is missing: build first (npm run build; npm run bench does it)`);
  }
  const workers = o.workers ?? 1;
  if (!Number.isInteger(workers) || workers < 1 || POOL_SIZE % workers !== 0) {
    throw new Error(`${o.key}: workers must divide the pool size ${POOL_SIZE}, got ${workers}`);
  }
  const dir = tempDir('pgbastion-bench-', false);
  const port = await freePort();
  const metricsPort = await freePort();
  const config = {
    ...(workers > 1 ? { workers } : {}),
    listen: { host: '127.0.0.1', port },
    upstreams: [{ host: pgs.host, port: pgs.port }],
    pool: { mode: POOL_MODE, size: POOL_SIZE / workers, ...(o.affinityMs !== undefined ? { affinity_ms: o.affinityMs } : {}) },
    users: o.users.map((u) => ({ name: u.name, secret, server_role: SERVER_ROLE, ...(u.pins ? { pins: u.pins } : {}) })),
    server_roles: [{ name: SERVER_ROLE, password: SERVER_PASSWORD }],
    // hostssl, like PgBouncer's client_tls_sslmode = require: plaintext clients are refused.
    hba: [{ type: o.tls ? 'hostssl' : 'host', database: 'all', user: 'all', address: 'all', method: 'scram-sha-256' }],
    ...(o.tls ? { tls: { cert: o.tls.cert, key: o.tls.key } } : {}),
    ...(o.pinning.length > 0 ? { pinning: { variables: o.pinning } } : {}),
    limits: { max_clients: MAX_CLIENTS },
    metrics: { host: '127.0.0.1', port: metricsPort },
    // With workers, a login can succeed while some workers are still starting: readiness is the
    // primary's "pgbastion listening" line, logged at info once every worker listens. At info
    // pgbastion also logs each session's start and end (a few dozen lines per S1 run).
    log_level: workers > 1 ? 'info' : 'warn',
  };
  const file = path.join(dir, 'pgbastion.yaml');
  writeFileSync(file, YAML.stringify(config), { mode: 0o600 });

  const nodeArgs = cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', cpuProfDir] : [];
  const [cmd, args] = withFdLimit([process.execPath, ...nodeArgs, PGBASTION_MAIN, 'start', '-c', file]);
  const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const output = tailOf(child);
  // With workers: every worker PID seen, so none outlives the harness (SIGTERM to the primary
  // stops its workers; a primary killed after the 5 s grace leaves them to exit on their own).
  const workerPids = new Set<number>();
  onCleanup(async () => {
    if (workers > 1 && child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      for (const p of childPids(child.pid)) workerPids.add(p);
    }
    await stopChild(child, 'SIGTERM');
    for (const p of workerPids) {
      if (!runsWith(p, file)) continue; // exited (or the PID is another process's by now)
      console.error(`${o.key}: killing leftover worker ${p}`);
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
  const died = () => exitReason(child, output);
  if (workers > 1) await primaryListening(o.key, child, died);
  await waitForLogin(
    o.key,
    { host: '127.0.0.1', port, user: o.users[0]!.name, password: PROXY_PASSWORD, database: DATABASE, ssl: o.tls ? { rejectUnauthorized: false } : false },
    died,
  );
  const pid = child.pid!;
  let cpuPids: number[] | undefined;
  if (workers > 1) {
    const children = childPids(pid);
    for (const p of children) workerPids.add(p);
    if (children.length !== workers) throw new Error(`${o.key}: expected ${workers} worker processes under pid ${pid}, found ${children.length} (${children.join(' ')})`);
    cpuPids = [pid, ...children];
  }
  /** A worker that exited was replaced by the primary: its CPU time is lost, the figures wrong. */
  const lostWorkers = (): string | null => {
    if (!cpuPids) return null;
    const now = childPids(pid);
    const lost = cpuPids.slice(1).filter((p) => !now.includes(p));
    return lost.length === 0 ? null : `worker(s) ${lost.join(' ')} exited (now: ${now.join(' ') || 'none'}):\n${output()}`;
  };
  return {
    name: o.name,
    key: o.key,
    port,
    user: o.users[0]!.name,
    tls: o.tls !== null,
    pid,
    ...(cpuPids ? { cpuPids } : {}),
    check() {
      const reason = died() ?? lostWorkers();
      if (reason) throw new Error(`${o.key} ${reason}`);
    },
    counter: (name) => scrapeCounter(metricsPort, name),
  };
}

async function startBarePipe(pgs: PgServer, key: string, tls: Certs | null): Promise<Target> {
  const port = await freePort();
  const argv = [process.execPath, '--import', 'tsx', BARE_PIPE_MAIN, String(port), String(pgs.port), ...(tls ? [tls.cert, tls.key] : [])];
  const [cmd, args] = withFdLimit(argv);
  const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const output = tailOf(child);
  onCleanup(() => stopChild(child, 'SIGTERM'));
  const died = () => exitReason(child, output);
  const conn = { host: '127.0.0.1', port, user: SERVER_ROLE, password: SERVER_PASSWORD, database: DATABASE, ssl: tls ? { rejectUnauthorized: false } : false };
  await waitForLogin(key, conn, died);
  return {
    name: BARE_PIPE,
    key,
    port,
    user: SERVER_ROLE,
    tls: tls !== null,
    pid: child.pid!,
    check() {
      const reason = died();
      if (reason) throw new Error(`${key} ${reason}`);
    },
  };
}

/** The sum of a counter's samples in a Prometheus text scrape of 127.0.0.1:port/metrics. */
async function scrapeCounter(port: number, name: string): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  if (!res.ok) throw new Error(`metrics on port ${port}: HTTP ${res.status}`);
  let sum = 0;
  for (const line of (await res.text()).split('\n')) {
    if (line.startsWith(name + ' ') || line.startsWith(name + '{')) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

/**
 * Waits for the primary's "pgbastion listening" log line (workers: N), which it writes once all
 * N workers listen. Each worker writes one too (with "worker": <id>): only the primary's
 * ("role": "primary") counts.
 */
async function primaryListening(key: string, child: ChildProcess, died: () => string | null, timeoutMs = 30_000): Promise<void> {
  let seen = false;
  let partial = '';
  const scan = (d: Buffer) => {
    const lines = (partial + d.toString()).split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      if (!line.startsWith('{')) continue;
      try {
        const entry = JSON.parse(line) as { msg?: unknown; role?: unknown };
        if (entry.msg === 'pgbastion listening' && entry.role === 'primary') seen = true;
      } catch {
        // not a log line
      }
    }
  };
  child.stderr!.on('data', scan);
  try {
    const deadline = Date.now() + timeoutMs;
    while (!seen) {
      const reason = died();
      if (reason !== null) throw new Error(`${key} did not start: ${reason}`);
      if (Date.now() > deadline) throw new Error(`${key}: no "pgbastion listening" line from the primary within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    child.stderr!.off('data', scan);
  }
}

async function startPgbouncer(pgs: PgServer, secret: string, key: string, tls: Certs | null): Promise<Target> {
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
      `max_client_conn = ${MAX_CLIENTS}`,
      // TLS towards the server stays off, as for pgbastion.
      ...(tls ? ['client_tls_sslmode = require', `client_tls_cert_file = ${tls.cert}`, `client_tls_key_file = ${tls.key}`] : []),
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
    giveToPostgres(f);
  }

  // PgBouncer refuses to run as root. Under runuser the spawned PID is runuser's, so the
  // pidfile gives the process to measure and signal.
  const argv = withFdLimit([PGBOUNCER_BIN, ini]);
  const [cmd, args]: [string, string[]] = asRoot ? ['runuser', ['-u', 'postgres', '--', argv[0], ...argv[1]]] : argv;
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const output = tailOf(child);
  const log = () => (existsSync(logFile) ? readFileSync(logFile, 'utf8').slice(-4000) : '(no log file)');
  const pid = (): number | undefined => {
    if (!existsSync(pidFile)) return undefined;
    const n = Number(readFileSync(pidFile, 'utf8').trim());
    return Number.isInteger(n) && n > 0 ? n : undefined;
  };
  // SIGINT is PgBouncer's safe shutdown (waits for clients); SIGTERM closes everything now.
  onCleanup(() => stopChild(child, 'SIGTERM', pid() ?? child.pid));
  const died = () => exitReason(child, () => `${output()}\n${log()}`);
  const conn = { host: '127.0.0.1', port, user: PROXY_USER, password: PROXY_PASSWORD, database: DATABASE, ssl: tls ? { rejectUnauthorized: false } : false };
  await waitForLogin(key, conn, died).catch((e: Error) => {
    throw new Error(`${e.message}\n--- ${logFile} ---\n${log()}`);
  });
  const bouncerPid = pid();
  if (bouncerPid === undefined) throw new Error(`PgBouncer is up but wrote no pidfile ${pidFile}`);
  return {
    name: 'PgBouncer',
    key,
    port,
    user: PROXY_USER,
    tls: tls !== null,
    pid: bouncerPid,
    check() {
      const reason = died();
      if (reason) throw new Error(`${key} ${reason}`);
    },
  };
}
