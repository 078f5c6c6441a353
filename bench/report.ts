// Medians, ratios and the issue's targets; the console table, results JSON and RESULTS.md.

import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pgBin } from '../test/helpers/postgres.js';
import type { Options, ScenarioId } from './options.js';
import { THREADS } from './pgbench.js';
import { run } from './proc.js';
import { PINS_OFF, PINS_ON, PINS_ON_AFFINITY, S7_AFFINITY_MS, S7_BLOCK_SUFFIX, S7_EXTENDED_SUFFIX, runNotes, S1_WORKERS, S1_WORKERS_TARGET, SCENARIOS, type Sample } from './scenarios.js';
import { BARE_PIPE, PGBOUNCER_BIN, POOL_MODE, POOL_SIZE, ROOT } from './targets.js';

const BENCH_DIR = path.join(ROOT, 'bench');

/** Medians over the runs of one target in one scenario case. */
export interface Row {
  scenario: ScenarioId;
  case: string;
  target: string;
  /** Median over the runs that produced a result; null when none did. */
  tps: number | null;
  vsDirect: number | null;
  vsPgbouncer: number | null;
  cpuMsPer1kTx: number | null;
  latencyMs: number | null;
  runs: number;
  abortedRuns: number;
  /** S5 */
  idleClients?: number;
  rssPerIdleKiB?: number | null;
  /** S5: median over rounds of TPS under idle clients / TPS without them. */
  vsNoIdle?: number | null;
  /** S6 */
  rate?: number;
  p50Ms?: number | null;
  p99Ms?: number | null;
  /** S6: p50/p99 minus direct PostgreSQL's. */
  addedP50Ms?: number | null;
  addedP99Ms?: number | null;
  /** S7: pins on TPS / pins off TPS. */
  vsPinsOff?: number | null;
  /** S7: pin switches per transaction. */
  switchesPerTx?: number | null;
  /** S7: the share of those switches that rode inline. */
  inlineShare?: number | null;
}

export function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** The figures `pick` finds in `samples` (those without one left out). */
const figures = (samples: Sample[], pick: (s: Sample) => number | null | undefined): number[] =>
  samples.flatMap((s) => {
    const v = pick(s);
    return v === null || v === undefined ? [] : [v];
  });
const medianOf = (samples: Sample[], pick: (s: Sample) => number | null | undefined) => median(figures(samples, pick));
const maxOf = (samples: Sample[], pick: (s: Sample) => number | null | undefined): number | null => {
  const found = figures(samples, pick);
  return found.length === 0 ? null : Math.max(...found);
};

const ratio = (a: number | null | undefined, b: number | null | undefined) => (a === null || a === undefined || !b ? null : a / b);

const difference = (a: number | null | undefined, b: number | null | undefined) =>
  a === null || a === undefined || b === null || b === undefined ? null : a - b;

/** One row per (scenario, case, target), in the order they ran. */
export function summarize(samples: Sample[]): Row[] {
  const groups = new Map<string, Sample[]>();
  for (const s of samples) {
    const k = `${s.scenario}\0${s.case}`;
    groups.set(k, [...(groups.get(k) ?? []), s]);
  }
  const rows: Row[] = [];
  for (const group of groups.values()) {
    const targets = [...new Set(group.map((s) => s.target))];
    const of = (t: string) => group.filter((s) => s.target === t);
    const tpsOf = (t: string) => medianOf(of(t), (s) => s.tps);
    const direct = of('direct');
    for (const t of targets) {
      const mine = of(t);
      const first = mine[0]!;
      const tps = tpsOf(t);
      const row: Row = {
        scenario: first.scenario,
        case: first.case,
        target: t,
        tps,
        vsDirect: ratio(tps, tpsOf('direct')),
        vsPgbouncer: t === 'direct' ? null : ratio(tps, tpsOf('PgBouncer')),
        cpuMsPer1kTx: medianOf(mine, (s) => s.proxyCpuMsPer1kTx),
        latencyMs: medianOf(mine, (s) => s.latencyMs),
        runs: mine.length,
        abortedRuns: mine.filter((s) => s.aborted).length,
      };
      if (first.scenario === 'S5' && first.idleClients !== undefined) {
        row.idleClients = first.idleClients;
        // The largest growth, not the median: a later round's clients reuse the memory the first
        // round's left behind (the V8 heap and malloc keep it), so their growth understates.
        row.rssPerIdleKiB = maxOf(mine, (s) => s.rssPerIdleKiB);
        row.vsNoIdle = medianOf(mine, (s) => ratio(s.tps, s.noIdleTps));
      }
      if (first.rate !== undefined) {
        row.rate = first.rate;
        row.p50Ms = medianOf(mine, (s) => s.p50Ms);
        row.p99Ms = medianOf(mine, (s) => s.p99Ms);
        row.addedP50Ms = difference(row.p50Ms, medianOf(direct, (s) => s.p50Ms));
        row.addedP99Ms = difference(row.p99Ms, medianOf(direct, (s) => s.p99Ms));
      }
      if (first.scenario === 'S7') {
        row.p50Ms = medianOf(mine, (s) => s.p50Ms);
        row.p99Ms = medianOf(mine, (s) => s.p99Ms);
        row.switchesPerTx = medianOf(mine, (s) => s.switchesPerTx);
        row.inlineShare = medianOf(mine, (s) => s.inlineShare);
      }
      if (t === PINS_ON || t === PINS_ON_AFFINITY) row.vsPinsOff = ratio(tps, tpsOf(PINS_OFF));
      rows.push(row);
    }
  }
  return rows;
}

/** S6: whether the target kept up with the fixed rate (pgbench -R falls behind when it cannot). */
const sustained = (r: Row) => r.rate === undefined || (r.tps ?? 0) >= 0.95 * r.rate;

// ---------------------------------------------------------------------------------------------
// The issue's targets

export interface Check {
  scenario: ScenarioId;
  goal: string;
  measured: string;
  /** null: cannot be judged (the reference failed or no figure); see `measured`. */
  met: boolean | null;
}

const fmt = (n: number | null | undefined, digits: number, suffix = ''): string =>
  n === null || n === undefined ? '—' : n.toFixed(digits) + suffix;

/** Judges pgbastion's rows against the targets for the scenarios that ran. */
export function checkTargets(rows: Row[]): Check[] {
  const row = (scenario: ScenarioId, target: string, kase?: string) =>
    rows.find((r) => r.scenario === scenario && r.target === target && (kase === undefined || r.case === kase));
  const checks: Check[] = [];
  /** Failed pgbastion runs fail the target; failed reference runs leave nothing to compare with. */
  interface Failure {
    text: string;
    met: false | null;
  }
  const atLeast = (scenario: ScenarioId, goal: string, value: number | null | undefined, min: number, failure: Failure | null) =>
    checks.push({
      scenario,
      goal,
      measured: fmt(value, 2, '×') + (failure ? ` (${failure.text})` : ''),
      met: failure ? failure.met : value === null || value === undefined ? false : value >= min,
    });
  const failures = (scenario: ScenarioId, target: string, kase?: string, reference?: string): Failure | null => {
    const mine = row(scenario, target, kase);
    const ref = reference === undefined ? undefined : row(scenario, reference, kase);
    if (mine && mine.abortedRuns > 0) return { text: `${target}: ${mine.abortedRuns}/${mine.runs} runs failed`, met: false };
    if (ref && ref.abortedRuns > 0) return { text: `${reference}: ${ref.abortedRuns}/${ref.runs} runs failed, no reference`, met: null };
    return null;
  };
  const vsBouncer = (scenario: ScenarioId, min: number, kase?: string) => {
    const b = row(scenario, 'pgbastion', kase);
    const goal = `${kase ? kase + ': ' : ''}pgbastion ≥ ${min.toFixed(1)}× PgBouncer`;
    if (b) atLeast(scenario, goal, b.vsPgbouncer, min, failures(scenario, 'pgbastion', kase, 'PgBouncer'));
  };
  vsBouncer('S1', 0.8);
  vsBouncer('S2', 0.9);
  vsBouncer('S3', 0.8, 'prepared');
  vsBouncer('S4', 1.0);
  const s5 = row('S5', 'pgbastion');
  if (s5) {
    checks.push({
      scenario: 'S5',
      goal: '≤ 32 KiB RSS per idle TLS client',
      measured: fmt(s5.rssPerIdleKiB, 1, ' KiB'),
      met: s5.rssPerIdleKiB === null || s5.rssPerIdleKiB === undefined ? false : s5.rssPerIdleKiB <= 32,
    });
    atLeast('S5', 'TPS under idle clients ≥ 0.9× without', s5.vsNoIdle, 0.9, failures('S5', 'pgbastion'));
  }
  const s6 = row('S6', 'pgbastion');
  const s6b = row('S6', 'PgBouncer');
  if (s6 && s6b) {
    // A target that cannot keep up with the rate only measures its queue: no latency to compare.
    const limit = s6b.addedP99Ms === null || s6b.addedP99Ms === undefined || !sustained(s6b) ? null : s6b.addedP99Ms + 0.2;
    const value = s6.addedP99Ms ?? null;
    checks.push({
      scenario: 'S6',
      goal: 'added p99 ≤ PgBouncer\'s + 0.2 ms',
      measured:
        `${fmt(value, 3, ' ms')} (limit ${fmt(limit, 3, ' ms')})` +
        (sustained(s6) ? '' : '; pgbastion did not sustain the rate') +
        (sustained(s6b) ? '' : '; PgBouncer did not sustain the rate, no reference'),
      met: !sustained(s6) || value === null ? false : limit === null ? null : value <= limit,
    });
  }
  // The first S7 case (one tenant per client) is the issue's; rows keep the order of the runs.
  const s7 = row('S7', PINS_ON);
  if (s7) atLeast('S7', 'pins on ≥ 0.95× pins off', s7.vsPinsOff, 0.95, failures('S7', PINS_ON, s7.case, PINS_OFF));
  const s7a = row('S7', PINS_ON_AFFINITY);
  if (s7a) {
    const goal = `the same with pool.affinity_ms ${S7_AFFINITY_MS} (opt-in)`;
    atLeast('S7', goal, s7a.vsPinsOff, 0.95, failures('S7', PINS_ON_AFFINITY, s7a.case, PINS_OFF));
  }
  const s7x = rows.find((r) => r.scenario === 'S7' && r.target === PINS_ON && r.case.endsWith(S7_EXTENDED_SUFFIX));
  if (s7x) atLeast('S7', 'the same over the extended protocol (-M extended)', s7x.vsPinsOff, 0.95, failures('S7', PINS_ON, s7x.case, PINS_OFF));
  return checks;
}

// ---------------------------------------------------------------------------------------------
// Tables

const HEADER = ['id', 'case', 'target', 'TPS', 'vs direct', 'vs PgBouncer', 'CPU ms/1k tx', 'lat avg ms', 'failed', 'notes'];

/** Scenario-specific figures of a row, as text. */
function notes(r: Row): string {
  const parts: string[] = [];
  if (r.scenario === 'S4') parts.push('TPS = connections/s');
  if (r.scenario === 'S5') {
    parts.push(
      r.idleClients === undefined
        ? 'no idle clients (max_connections)'
        : `${fmt(r.rssPerIdleKiB, 1)} KiB/idle client; TPS ${fmt(r.vsNoIdle, 2)}× of without idle clients`,
    );
  }
  if (r.rate !== undefined) {
    if (!sustained(r)) parts.push(`rate not sustained (${fmt(ratio(r.tps, r.rate), 2)}×): latency is mostly queueing`);
    parts.push(
      `p50 ${fmt(r.p50Ms, 3)} ms, p99 ${fmt(r.p99Ms, 3)} ms` +
        (r.target === 'direct' ? '' : `; added p50 ${fmt(r.addedP50Ms, 3)}, p99 ${fmt(r.addedP99Ms, 3)} ms`),
    );
  }
  if (r.vsPinsOff !== undefined) parts.push(`${fmt(r.vsPinsOff, 2)}× pins off`);
  if (r.scenario === 'S7') {
    const inline = r.inlineShare == null ? '' : ` (${Math.round(100 * r.inlineShare)} % inline)`;
    parts.push(`p99 ${fmt(r.p99Ms, 2)} ms; ${fmt(r.switchesPerTx, 2)} switches/tx${r.switchesPerTx ? inline : ''}`);
    if (r.target === PINS_ON && r.case.endsWith(S7_BLOCK_SUFFIX)) parts.push('no target');
  }
  if (r.target === S1_WORKERS_TARGET) {
    parts.push(
      `${S1_WORKERS} workers × pool.size ${POOL_SIZE / S1_WORKERS} = ${POOL_SIZE} server connections, as PgBouncer; ` +
        `CPU summed over primary + ${S1_WORKERS} workers; no target`,
    );
  }
  if (r.target === BARE_PIPE) parts.push('reference: Node.js stream.pipe() relay, no pooling or parsing, a PostgreSQL backend per client; no target');
  return parts.join('; ');
}

function cells(r: Row, times: string): string[] {
  return [
    r.scenario,
    r.case,
    r.target,
    fmt(r.tps, 0),
    fmt(r.vsDirect, 2, times),
    fmt(r.vsPgbouncer, 2, times),
    fmt(r.cpuMsPer1kTx, 1),
    fmt(r.latencyMs, 3),
    `${r.abortedRuns}/${r.runs}`,
    notes(r),
  ];
}

export function consoleTable(rows: Row[], checks: Check[]): string {
  const body = rows.map((r) => cells(r, 'x'));
  const widths = HEADER.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
  const left = new Set([0, 1, 2, HEADER.length - 1]);
  const line = (c: string[]) => c.map((v, i) => (left.has(i) ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join('  ').trimEnd();
  return [
    line(HEADER),
    line(widths.map((w) => '-'.repeat(w))),
    ...body.map(line),
    '',
    'targets:',
    ...checks.map((c) => `  ${c.scenario}  ${metText(c.met).padEnd(7)}  ${c.goal}: ${c.measured}`),
  ].join('\n');
}

const metText = (met: boolean | null) => (met === null ? 'n/a' : met ? 'met' : 'NOT met');

function markdownTable(rows: Row[]): string {
  return [
    `| ${HEADER.join(' | ')} |`,
    '|---|---|---|---:|---:|---:|---:|---:|---:|---|',
    ...rows.map((r) => `| ${cells(r, '×').join(' | ')} |`),
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------
// Files

export async function environment() {
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
      openssl: (await run('openssl', ['version'])).stdout.trim(),
      pgbastion: `${pkg.version} (${await sourceRevision()})`,
    },
  };
}

/** The commit the measured code was built from, and whether src/ had changes on top of it. */
async function sourceRevision(): Promise<string> {
  try {
    const head = await run('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']);
    if (head.status !== 0) return 'commit unknown';
    const dirty = (await run('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src'])).stdout.trim() !== '';
    return `commit ${head.stdout.trim()}${dirty ? ', with uncommitted changes in src/' : ''}`;
  } catch {
    return 'commit unknown'; // no git on this machine
  }
}

export type Environment = Awaited<ReturnType<typeof environment>>;

function commandLine(argv: string[]): string {
  return argv.length === 0 ? 'npm run bench' : `npm run bench -- ${argv.join(' ')}`;
}

/** results/<day>.json for a complete run; -quick and/or -S1-S3 suffixes otherwise. */
function jsonName(opts: Options, day: string): string {
  const parts = [day];
  if (opts.quick) parts.push('quick');
  if (opts.scenarios.length < SCENARIOS.length) parts.push(opts.scenarios.join('-'));
  return parts.join('-') + '.json';
}

function settings(opts: Options) {
  return {
    quick: opts.quick,
    scenarios: opts.scenarios,
    scale: opts.scale,
    clients: opts.clients,
    threads: THREADS,
    durationSeconds: opts.duration,
    warmupSeconds: opts.warmup,
    rounds: opts.rounds,
    idleClients: opts.idleClients,
    poolMode: POOL_MODE,
    poolSize: POOL_SIZE,
    /** S1's extra row: `workers: N` with pool.size poolSize / N per worker. */
    s1Workers: { target: S1_WORKERS_TARGET, workers: S1_WORKERS, poolSizePerWorker: POOL_SIZE / S1_WORKERS },
  };
}

/** Writes the results JSON, and RESULTS.md for a complete run; returns what was written. */
export function writeReports(opts: Options, env: Environment, samples: Sample[], rows: Row[], checks: Check[], date: Date): string[] {
  const day = date.toISOString().slice(0, 10);
  const resultsDir = path.join(BENCH_DIR, 'results');
  mkdirSync(resultsDir, { recursive: true });
  const name = jsonName(opts, day);
  const ran = SCENARIOS.filter((s) => opts.scenarios.includes(s.id));
  const json = {
    date: date.toISOString(),
    command: commandLine(opts.argv),
    settings: settings(opts),
    scenarios: ran.map((s) => ({ id: s.id, title: s.title, method: s.method(opts) })),
    ...env,
    summary: rows,
    targets: checks,
    samples,
  };
  const jsonFile = path.join(resultsDir, name);
  writeFileSync(jsonFile + '.tmp', JSON.stringify(json, null, 2) + '\n');
  renameSync(jsonFile + '.tmp', jsonFile);
  const written = [path.relative(ROOT, jsonFile)];
  if (opts.complete) {
    writeFileSync(path.join(BENCH_DIR, 'RESULTS.md'), resultsMarkdown(opts, env, samples, rows, checks, date, name));
    written.push('bench/RESULTS.md');
  }
  return written;
}

function resultsMarkdown(opts: Options, env: Environment, samples: Sample[], rows: Row[], checks: Check[], date: Date, jsonFile: string): string {
  const aborted = samples.filter((s) => s.aborted);
  return [
    '# pgbastion benchmark results',
    '',
    `Generated by \`bench/run.ts\`; rewritten on every complete run. Raw samples: [results/${jsonFile}](results/${jsonFile}).`,
    '',
    `Every scenario measures its targets in turn (direct PostgreSQL, PgBouncer, pgbastion; in S1 and S2 also ${S1_WORKERS_TARGET} and the reference ${BARE_PIPE}), ${opts.rounds} round(s) of ` +
      `${opts.duration} s, each round starting one target further along (round 2 begins with the second target, and so on), ` +
      `after a ${opts.warmup} s warm-up of each target instance on first use; figures are medians. ` +
      `Scale-${opts.scale} pgbench database. Both proxies: pool_mode ${POOL_MODE}, ${POOL_SIZE} server connections, ` +
      'SCRAM-SHA-256 client login, plaintext towards PostgreSQL. Proxy CPU is utime+stime of the proxy process ' +
      `(/proc/<pid>/stat) over the run, per 1000 transactions; for ${S1_WORKERS_TARGET} summed over its primary and workers, ` +
      `whose pool.size is ${POOL_SIZE / S1_WORKERS} each (${POOL_SIZE} server connections in all, as PgBouncer). ` +
      '"failed": runs where a pgbench exited non-zero.',
    '',
    '## Results',
    '',
    markdownTable(rows),
    '',
    '## Targets',
    '',
    '| id | target | measured | met |',
    '|---|---|---|---|',
    ...checks.map((c) => `| ${c.scenario} | ${c.goal} | ${c.measured} | ${metText(c.met)} |`),
    '',
    ...(aborted.length > 0
      ? ['Runs where pgbench exited non-zero (any figures cover the clients that kept running):', '',
          ...aborted.map((s) => `- ${s.scenario} ${s.case}, ${s.target}, round ${s.round}: ${s.error}`), '']
      : []),
    '## Scenarios',
    '',
    ...SCENARIOS.filter((s) => opts.scenarios.includes(s.id)).flatMap((s) => [`- **${s.id}, ${s.title}.** ${s.method(opts)}`]),
    '',
    '## All runs',
    '',
    '| id | case | round | target | TPS | transactions | proxy CPU s (system) | CPU ms / 1k tx | notes |',
    '|---|---|---:|---|---:|---:|---:|---:|---|',
    ...samples.map(
      (s) =>
        `| ${s.scenario} | ${s.case} | ${s.round} | ${s.target} | ${fmt(s.tps, 0)} | ${s.transactions ?? '—'} | ` +
        `${s.proxyCpuSeconds === null ? '—' : `${s.proxyCpuSeconds.toFixed(2)} (${s.proxyCpuSystemSeconds!.toFixed(2)})`} | ${fmt(s.proxyCpuMsPer1kTx, 1)} | ${runNotes(s)} |`,
    ),
    '',
    '## Environment',
    '',
    `- Date: ${date.toISOString()}`,
    `- Command: \`${commandLine(opts.argv)}\``,
    `- Machine: ${env.machine.nproc} CPUs (${env.machine.cpuModel}), ${env.machine.memTotalGiB} GiB RAM, Linux ${env.machine.kernel}; ` +
      'PostgreSQL, both proxies and pgbench share these CPUs',
    `- Versions: Node.js ${env.versions.node}; ${env.versions.postgres}; ${env.versions.pgbench}; ${env.versions.pgbouncer}; ` +
      `${env.versions.openssl}; pgbastion ${env.versions.pgbastion}`,
    '- PostgreSQL: throw-away cluster from test/helpers/postgres.ts (fsync=off, synchronous_commit=off, max_connections=200, ssl=on)',
    '',
  ].join('\n');
}
