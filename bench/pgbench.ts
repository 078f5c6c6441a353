// Running pgbench against a target and reading its results: summary output, proxy CPU over
// the run, and per-transaction latency logs (-l).

import { readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { pgBin } from '../test/helpers/postgres.js';
import { checkInterrupted, cpuSecondsOf, run, type RunResult } from './proc.js';
import { DATABASE, SERVER_PASSWORD, type Target } from './targets.js';

/** pgbench worker threads per process (the machine this was written for has 2 cores). */
export const THREADS = 2;

/** One pgbench process. */
export interface Job {
  args: string[];
  env: Record<string, string>;
}

/**
 * A pgbench process against `target` for `seconds`; `args` chooses the workload (-S, -c, -M,
 * -f ...). The transport is explicit: with the server's ssl=on, libpq's default sslmode=prefer
 * would silently use TLS for "plaintext" runs.
 */
export function pgbenchJob(target: Target, seconds: number, args: string[], user = target.user): Job {
  return {
    // -n: no vacuum (the proxies' users may not); no -P: pgbench 15 rejects "-P 0".
    args: [...args, '-n', '-T', String(seconds), '-h', '127.0.0.1', '-p', String(target.port), '-U', user, DATABASE],
    env: { PGPASSWORD: SERVER_PASSWORD, PGSSLMODE: target.tls ? 'require' : 'disable', PGGSSENCMODE: 'disable' },
  };
}

/** The pgbench processes of one run against `target`, all started together. */
export type Workload = (target: Target, seconds: number) => Job[];

/** pgbench's built-in select-only script (-S) with `clients` clients, plus `extra` options. */
export function selectOnly(clients: number, extra: string[] = []): Workload {
  return (target, seconds) => [pgbenchJob(target, seconds, ['-S', '-c', String(clients), '-j', String(THREADS), ...extra])];
}

/** What one run measured; the sums over its pgbench processes. */
export interface Measured {
  /** null: pgbench produced no result (see error). With -C this is connections per second. */
  tps: number | null;
  transactions: number | null;
  failedTransactions: number | null;
  latencyMs: number | null;
  /** A pgbench exited non-zero; any figures cover the clients that kept running. */
  aborted: boolean;
  /** utime + stime of the proxy process over the run (summed over Target.cpuPids, e.g. a primary and its workers). */
  proxyCpuSeconds: number | null;
  /** The stime part of proxyCpuSeconds (kernel: mostly loopback TCP). */
  proxyCpuSystemSeconds: number | null;
  proxyCpuMsPer1kTx: number | null;
  /** First pgbench error line when one exited non-zero. */
  error?: string;
}

interface Parsed {
  tps: number;
  transactions: number;
  failed: number;
  latencyMs: number | null;
}

function parsePgbench(out: string): Parsed | null {
  // -C prints "including reconnection times"; pgbench before 14 "excluding connections establishing".
  const tps = /^tps = ([0-9.]+) \((?:without initial connection time|including reconnection times|excluding connections establishing)\)/m.exec(out);
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

function firstError(r: RunResult): string {
  const line = r.stderr.split('\n').find((l) => l.includes('error')) ?? r.stderr.trim().split('\n')[0] ?? '';
  return `pgbench exit ${r.status}: ${line.trim()}`;
}

/** Runs `jobs` at once against `target`; the proxy's CPU time (all its processes') is read around them. */
export async function measure(target: Target, jobs: Job[]): Promise<Measured> {
  checkInterrupted();
  target.check();
  const pids = target.cpuPids ?? (target.pid !== undefined ? [target.pid] : []);
  const cpuBefore = pids.length > 0 ? cpuSecondsOf(pids) : null;
  const results = await Promise.all(jobs.map((j) => run(pgBin('pgbench'), j.args, j.env)));
  checkInterrupted();
  target.check(); // a dead proxy (or worker) ends the benchmark; a failed pgbench run is recorded and reported
  const cpuAfter = pids.length > 0 ? cpuSecondsOf(pids) : null;

  const parsed: Parsed[] = [];
  for (const r of results) {
    const p = parsePgbench(r.stdout);
    if (!p && r.status === 0) throw new Error(`cannot parse pgbench output:\n${r.stdout}`);
    if (p) parsed.push(p);
  }
  const transactions = parsed.reduce((n, p) => n + p.transactions, 0);
  const timed = parsed.filter((p) => p.latencyMs !== null && p.transactions > 0);
  const timedTx = timed.reduce((n, p) => n + p.transactions, 0);
  const cpuSystem = cpuBefore && cpuAfter ? cpuAfter.system - cpuBefore.system : null;
  const cpu = cpuBefore && cpuAfter ? cpuAfter.user - cpuBefore.user + cpuSystem! : null;
  const failedRun = results.find((r) => r.status !== 0);
  return {
    tps: parsed.length > 0 ? parsed.reduce((n, p) => n + p.tps, 0) : null,
    transactions: parsed.length > 0 ? transactions : null,
    failedTransactions: parsed.length > 0 ? parsed.reduce((n, p) => n + p.failed, 0) : null,
    latencyMs: timedTx > 0 ? timed.reduce((n, p) => n + p.latencyMs! * p.transactions, 0) / timedTx : null,
    aborted: failedRun !== undefined,
    proxyCpuSeconds: cpu,
    proxyCpuSystemSeconds: cpuSystem,
    proxyCpuMsPer1kTx: cpu !== null && transactions > 0 ? (cpu * 1000 * 1000) / transactions : null,
    ...(failedRun ? { error: firstError(failedRun) } : {}),
  };
}

export function describe(m: Measured): string {
  const figures =
    m.tps === null
      ? 'no result'
      : `${m.tps.toFixed(0)} tps` +
        (m.proxyCpuMsPer1kTx !== null
          ? `, proxy CPU ${m.proxyCpuSeconds!.toFixed(2)} s (${m.proxyCpuSystemSeconds!.toFixed(2)} s system) = ${m.proxyCpuMsPer1kTx.toFixed(1)} ms/1k tx`
          : '');
  return figures + (m.error ? `  [${m.error}]` : '');
}

/**
 * p50 and p99 of the per-transaction latencies pgbench -l wrote to `<prefix>.<pid>[.<thread>]`
 * (third column, µs; with -R measured from the scheduled start, so schedule lag counts),
 * in ms. The log files are removed.
 */
export function latencyPercentiles(prefix: string): { p50Ms: number | null; p99Ms: number | null; logged: number } {
  const dir = path.dirname(prefix);
  const base = path.basename(prefix) + '.';
  const latencies: number[] = [];
  for (const f of readdirSync(dir).filter((n) => n.startsWith(base))) {
    const file = path.join(dir, f);
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      const us = Number(line.split(' ')[2]);
      if (line !== '' && Number.isFinite(us)) latencies.push(us);
    }
    rmSync(file);
  }
  latencies.sort((a, b) => a - b);
  const at = (q: number) => (latencies.length === 0 ? null : latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]! / 1000);
  return { p50Ms: at(0.5), p99Ms: at(0.99), logged: latencies.length };
}
