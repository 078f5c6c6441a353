// Test harness: a real, throw-away PostgreSQL (initdb into a temp dir, free port on
// 127.0.0.1, scram-sha-256, fsync=off), run as the `postgres` OS user when we are root.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';

export const SUPERUSER = 'postgres';
export const SUPERUSER_PASSWORD = 'harness-superuser-pw';

/** Finds a PostgreSQL server binary on PATH or under /usr/lib/postgresql/<newest>/bin. */
export function pgBin(name: string): string {
  const dirs = existsSync('/usr/lib/postgresql')
    ? readdirSync('/usr/lib/postgresql')
        .sort((a, b) => Number(b) - Number(a))
        .map((v) => `/usr/lib/postgresql/${v}/bin`)
    : [];
  for (const dir of [...dirs, ...(process.env.PATH ?? '').split(':')]) {
    const candidate = path.join(dir, name);
    if (existsSync(candidate)) return candidate;
  }
  throw new Error(`PostgreSQL binary "${name}" not found (install the Debian package postgresql)`);
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

const asRoot = process.getuid?.() === 0;

function pgUser(): { uid: number; gid: number } {
  const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim());
  return { uid, gid };
}

/** Runs a PostgreSQL binary, as the postgres OS user when we are root. */
function pgCommand(bin: string, args: string[]): [string, string[]] {
  return asRoot ? ['runuser', ['-u', 'postgres', '--', bin, ...args]] : [bin, args];
}

export interface PgServer {
  host: string;
  port: number;
  dataDir: string;
  /** Runs SQL as the superuser on `database` (default postgres). */
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[], database?: string): Promise<pg.QueryResult<R>>;
  stop(): Promise<void>;
  /** Connection settings for the superuser, for clients that talk to PostgreSQL directly. */
  superuser: { user: string; password: string };
}

const running = new Set<ChildProcess>();
const runningDataDirs = new Set<string>();
process.on('exit', () => {
  for (const dir of runningDataDirs) {
    const pid = postmasterPid(dir);
    if (pid) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
  for (const child of running) child.kill('SIGKILL');
});

function postmasterPid(dataDir: string): number | undefined {
  try {
    const pid = Number(readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    return pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * `standbyOf`: instead of initdb, take a base backup of that server (pg_basebackup -R) and
 * start it as a hot standby streaming from it; pg_is_in_recovery() is then true.
 */
export async function startPostgres(opts: { settings?: Record<string, string>; standbyOf?: PgServer } = {}): Promise<PgServer> {
  const root = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-pg-'));
  chmodSync(root, 0o755);
  const dataDir = path.join(root, 'data');
  const pwfile = path.join(root, 'pwfile');
  writeFileSync(pwfile, SUPERUSER_PASSWORD + '\n', { mode: 0o600 });
  if (asRoot) {
    const { uid, gid } = pgUser();
    chownSync(root, uid, gid);
    chownSync(pwfile, uid, gid);
  }
  if (opts.standbyOf) {
    const primary = opts.standbyOf;
    const [bbCmd, bbArgs] = pgCommand(pgBin('pg_basebackup'), [
      '-h', primary.host, '-p', String(primary.port), '-U', SUPERUSER, '-D', dataDir, '-R', '-X', 'stream', '--no-sync', '-w',
    ]);
    execFileSync(bbCmd, asRoot ? ['-u', 'postgres', '--', 'env', `PGPASSWORD=${SUPERUSER_PASSWORD}`, ...bbArgs.slice(3)] : bbArgs, {
      stdio: 'pipe',
      env: { ...process.env, PGPASSWORD: SUPERUSER_PASSWORD },
    });
  } else {
    const [initCmd, initArgs] = pgCommand(pgBin('initdb'), [
      '-D', dataDir, '-U', SUPERUSER, '--auth=scram-sha-256', `--pwfile=${pwfile}`, '-E', 'UTF8', '--no-sync', '--locale=C',
    ]);
    execFileSync(initCmd, initArgs, { stdio: 'pipe' });
  }

  // The port freePort found can be taken before the postmaster binds it (test files run in
  // parallel): then it exits at once, and it starts again on another port.
  for (let attempt = 1; ; attempt++) {
    const started = await launch(dataDir, root, opts.settings);
    if (started.ready) return serverOf(started, dataDir, root);
    if (attempt < 3 && started.log.includes('could not create any TCP/IP sockets')) continue;
    throw new Error(`postgres exited during start:\n${started.log}`);
  }
}

interface Launched {
  readonly ready: boolean;
  readonly port: number;
  readonly child: ReturnType<typeof spawn>;
  readonly exited: Promise<void>;
  readonly log: string;
}

/** Starts the postmaster on a free port; ready when a login succeeds (not ready: it exited). */
async function launch(dataDir: string, root: string, extra: Record<string, string> | undefined): Promise<Launched> {
  const port = await freePort();
  const settings: Record<string, string> = {
    listen_addresses: "'127.0.0.1'",
    port: String(port),
    unix_socket_directories: `'${root}'`,
    fsync: 'off',
    synchronous_commit: 'off',
    full_page_writes: 'off',
    max_connections: '200',
    password_encryption: "'scram-sha-256'",
    log_min_messages: 'warning',
    ...extra,
  };
  const [cmd, args] = pgCommand(pgBin('postgres'), ['-D', dataDir, ...Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v.replace(/^'|'$/g, '')}`])]);
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  running.add(child);
  runningDataDirs.add(dataDir);
  let log = '';
  child.stderr!.on('data', (d: Buffer) => {
    log += d.toString();
    if (log.length > 100_000) log = log.slice(-50_000);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) {
      running.delete(child);
      return { ready: false, port, child, exited, log };
    }
    // (Whatever holds the port may answer: a server that never replies, or another test's
    // PostgreSQL, whose data directory is not ours.)
    const c = new pg.Client({ host: '127.0.0.1', port, user: SUPERUSER, password: SUPERUSER_PASSWORD, database: 'postgres', connectionTimeoutMillis: 2000 });
    // (A client given up on, e.g. after its connect timed out on a busy event loop, may still
    // report its connection's end: not an error of the test.)
    c.on('error', () => {});
    try {
      await c.connect();
      const ours = (await c.query("SELECT current_setting('data_directory') AS d")).rows[0].d === dataDir;
      await c.end();
      if (ours) return { ready: true, port, child, exited, log };
      throw new Error('another server');
    } catch {
      await c.end().catch(() => {});
      if (Date.now() > deadline) throw new Error(`postgres did not become ready:\n${log}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

const connectTo = (port: number, database = 'postgres') =>
  new pg.Client({ host: '127.0.0.1', port, user: SUPERUSER, password: SUPERUSER_PASSWORD, database });

function serverOf(started: Launched, dataDir: string, root: string): PgServer {
  const { port, child, exited } = started;
  const connect = (database?: string) => connectTo(port, database);
  let stopped = false;
  return {
    host: '127.0.0.1',
    port,
    dataDir,
    superuser: { user: SUPERUSER, password: SUPERUSER_PASSWORD },
    async query(sql, params, database) {
      const c = connect(database);
      await c.connect();
      try {
        return await c.query(sql, params as unknown[]);
      } finally {
        await c.end();
      }
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      // SIGQUIT = immediate shutdown: nothing to keep in a throw-away cluster. Signal the
      // postmaster itself: runuser (our child when root) does not forward SIGQUIT.
      const postmaster = postmasterPid(dataDir);
      if (postmaster) {
        try {
          process.kill(postmaster, 'SIGQUIT');
        } catch {
          /* already gone */
        }
      }
      child.kill('SIGQUIT');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
      running.delete(child);
      runningDataDirs.delete(dataDir);
      rmSync(root, { recursive: true, force: true });
    },
  };
}
