// Child processes, cleanup and /proc readers for the benchmark harness.

import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';

export const asRoot = process.getuid?.() === 0;

// ---------------------------------------------------------------------------------------------
// Cleanup

/** Cleanup steps, run last-registered first, exactly once (normal end, error or signal). */
const cleanups: Array<() => Promise<void> | void> = [];
let cleaning: Promise<void> | null = null;
/** Short-lived commands in flight (pgbench), ended first on cleanup. */
const commands = new Set<ChildProcess>();
let interruptedBy: NodeJS.Signals | null = null;

export function onCleanup(step: () => Promise<void> | void): void {
  cleanups.push(step);
}

export function cleanupAll(): Promise<void> {
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

export function interrupted(): boolean {
  return interruptedBy !== null;
}

/** Throws once SIGINT/SIGTERM arrived, so loops stop starting new work. */
export function checkInterrupted(): void {
  if (interruptedBy !== null) throw new Error('interrupted');
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    interruptedBy = signal;
    console.error(`\n${signal}: stopping everything`);
    void cleanupAll().finally(() => process.exit(130));
  });
}

// ---------------------------------------------------------------------------------------------
// Commands

export interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<RunResult> {
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

export async function runOk(cmd: string, args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  const r = await run(cmd, args, env);
  if (r.status !== 0) throw new Error(`${path.basename(cmd)} ${args.join(' ')} exited ${r.status}:\n${r.stderr}${r.stdout}`);
  return r;
}

/**
 * [cmd, args] that run `argv` with the soft open-files limit raised to the hard one: S5 holds
 * thousands of client sockets in each proxy. `exec` keeps the proxy's PID that of the shell.
 */
export function withFdLimit(argv: string[]): [string, string[]] {
  return ['sh', ['-c', 'ulimit -n "$(ulimit -Hn)" && exec "$@"', 'sh', ...argv]];
}

/** Keeps the last ~20 kB a process wrote, for error messages. */
export function tailOf(child: ChildProcess): () => string {
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
export async function stopChild(child: ChildProcess, signal: NodeJS.Signals, pid = child.pid): Promise<void> {
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

/** Why `child` can no longer serve (it exited), or null while it runs. */
export function exitReason(child: ChildProcess, output: () => string): string | null {
  return child.exitCode !== null || child.signalCode !== null ? `exited (${child.exitCode ?? child.signalCode}):\n${output()}` : null;
}

/**
 * Immediate shutdown of the harness PostgreSQL, sent to the postmaster itself: as root the
 * helper's child is `runuser`, which does not pass SIGQUIT on, so its stop() alone ends in
 * SIGKILL of runuser and leaves the postmaster running (and our stderr pipe open) until it
 * notices its data directory is gone, about a minute later.
 */
export function quitPostmaster(dataDir: string): void {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  if (!existsSync(pidFile)) return;
  const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  try {
    if (Number.isInteger(pid) && pid > 0) process.kill(pid, 'SIGQUIT');
  } catch {
    // already gone
  }
}

// ---------------------------------------------------------------------------------------------
// Files

/** A temp dir owned by the postgres OS user when we are root and it is `forPostgres`. */
export function tempDir(prefix: string, forPostgres: boolean): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  chmodSync(dir, 0o755);
  if (forPostgres) giveToPostgres(dir);
  onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** As root: makes `file` the postgres OS user's (PostgreSQL and PgBouncer run as that user). */
export function giveToPostgres(file: string): void {
  if (!asRoot) return;
  const { uid, gid } = postgresUser();
  chownSync(file, uid, gid);
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

// ---------------------------------------------------------------------------------------------
// Readiness

/** Polls a SCRAM login until it succeeds; `failed` reports why the target can no longer come up. */
export async function waitForLogin(
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
// /proc readers

const CLK_TCK = await (async () => {
  const r = await run('getconf', ['CLK_TCK']);
  const n = Number(r.stdout.trim());
  return Number.isInteger(n) && n > 0 ? n : 100;
})();

/** /proc/<pid>/stat from field 3 (state) on, index 0; null when the process is gone. */
function statFields(pid: number): string[] | null {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // Field 2 (comm) may contain spaces and parentheses: count from the last ')'.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** User and system CPU seconds a process has used so far (/proc/<pid>/stat fields 14 and 15). */
export function cpuSeconds(pid: number): { user: number; system: number } {
  const fields = statFields(pid);
  if (!fields) throw new Error(`process ${pid} is gone: no /proc/${pid}/stat`);
  return { user: Number(fields[14 - 3]) / CLK_TCK, system: Number(fields[15 - 3]) / CLK_TCK };
}

/** cpuSeconds summed over `pids` (a pgbastion primary and its workers). */
export function cpuSecondsOf(pids: readonly number[]): { user: number; system: number } {
  const sum = { user: 0, system: 0 };
  for (const pid of pids) {
    const c = cpuSeconds(pid);
    sum.user += c.user;
    sum.system += c.system;
  }
  return sum;
}

/** The live (not zombie) processes whose parent is `ppid` (/proc/<pid>/stat field 4), ascending. */
export function childPids(ppid: number): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const fields = statFields(Number(name));
    if (fields && fields[0] !== 'Z' && Number(fields[4 - 3]) === ppid) pids.push(Number(name));
  }
  return pids.sort((a, b) => a - b);
}

/** Whether `pid` is alive (not a zombie) and its command line contains `marker`. */
export function runsWith(pid: number, marker: string): boolean {
  const fields = statFields(pid);
  if (!fields || fields[0] === 'Z') return false;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(marker);
  } catch {
    return false;
  }
}

/** Resident set size in KiB (/proc/<pid>/status VmRSS). */
export function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

/** The soft open-files limit of a process (/proc/<pid>/limits). */
export function openFilesLimit(pid: number): number {
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'));
  return !m || m[1] === 'unlimited' ? Infinity : Number(m[1]);
}
