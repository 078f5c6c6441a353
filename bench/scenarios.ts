// The benchmark scenarios S1-S7. Each measures its targets in turn (direct, PgBouncer,
// pgbastion; S1 also pgbastion with workers), `rounds` times, after a warm-up of every target
// instance not used before.

import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { openIdleClients } from './idle-clients.js';
import type { Options, ScenarioId } from './options.js';
import { describe, latencyPercentiles, measure, pgbenchJob, selectOnly, THREADS, type Measured, type Workload } from './pgbench.js';
import { openFilesLimit, rssKiB } from './proc.js';
import { BARE_PIPE, DATABASE, POOL_SIZE, PROXY_PASSWORD, PROXY_USER, SERVER_ROLE, type BastionUser, type Lab, type Target } from './targets.js';

/** One measured pgbench run (or set of concurrent pgbench processes) against one target. */
export interface Sample extends Measured {
  scenario: ScenarioId;
  /** The variant within the scenario (S3: extended or prepared). */
  case: string;
  target: string;
  round: number;
  /** S5: idle TLS clients held open during this run, and the proxy's RSS before and after opening them. */
  idleClients?: number;
  idleOpenSeconds?: number;
  rssBeforeKiB?: number;
  rssAfterKiB?: number;
  rssPerIdleKiB?: number;
  /** S5: TPS of the same load on the same target just before the idle clients were opened. */
  noIdleTps?: number | null;
  /** S6: the fixed rate (pgbench -R) and the latency percentiles from the per-transaction log. */
  rate?: number;
  p50Ms?: number | null;
  p99Ms?: number | null;
  /** S7: switches of a server connection's pins (inline or hidden), per transaction (from /metrics). */
  switchesPerTx?: number | null;
  /** S7: the share of those switches that rode inline (with the client's Query or batch). */
  inlineShare?: number | null;
}

type RunFigures = Omit<Sample, 'scenario' | 'case' | 'target' | 'round'>;

export interface Context {
  opts: Options;
  lab: Lab;
  samples: Sample[];
  /** Target keys already warmed up. */
  warmed: Set<string>;
  /** Scratch directory (pgbench scripts and logs), removed by the cleanup. */
  dir: string;
}

export interface Scenario {
  id: ScenarioId;
  title: string;
  /** What exactly is run and compared, for RESULTS.md. */
  method(opts: Options): string;
  run(ctx: Context): Promise<void>;
}

/** S1's extra row: pgbastion with `workers: 2`, pool.size halved (no target applies to it). */
export const S1_WORKERS = 2;
export const S1_WORKERS_TARGET = `pgbastion workers=${S1_WORKERS}`;

/** S7's pgbastion configurations (a third, PINS_ON_AFFINITY, below). */
export const PINS_OFF = 'pgbastion pins off';
export const PINS_ON = 'pgbastion pins on';
/** pool.affinity_ms of S7's third configuration. */
export const S7_AFFINITY_MS = 5;
export const PINS_ON_AFFINITY = `pgbastion pins on, affinity_ms ${S7_AFFINITY_MS}`;
/** S7's second case: this many clients share each tenant. */
const S7_CLIENTS_PER_TENANT = 4;
/** The S7 case over the extended protocol ends its name with this. */
export const S7_EXTENDED_SUFFIX = ', extended protocol';
/** The S7 case whose transactions are BEGIN; SELECT; COMMIT ends its name with this. */
export const S7_BLOCK_SUFFIX = ', BEGIN … COMMIT';
/** S7's case label; the target applies to the first, one tenant per client. */
export const s7Case = (clients: number, tenants: number) => (tenants === clients ? `${tenants} tenants` : `${tenants} tenants × ${clients / tenants} clients`);

const S4_CLIENTS = 16;
const PINNED_VARIABLE = 'app.tenant_id';
const SWITCHES = 'pgbastion_settings_switches_total';
/** One sample of it: scrapeCounter matches a name followed by a space. */
const INLINE_SWITCHES = `${SWITCHES}{form="inline"}`;
const TRANSACTIONS = 'pgbastion_transactions_total';

/** The S5, S6 and S7 figures of a run, as text ('' for other scenarios). */
export function runNotes(s: RunFigures): string {
  const parts: string[] = [];
  if (s.idleClients !== undefined) {
    parts.push(
      `${s.idleClients} idle clients opened in ${s.idleOpenSeconds!.toFixed(1)} s, RSS ${s.rssBeforeKiB} → ${s.rssAfterKiB} KiB ` +
        `= ${s.rssPerIdleKiB!.toFixed(1)} KiB each; without them ${s.noIdleTps?.toFixed(0) ?? '—'} tps`,
    );
  }
  if (s.p99Ms !== undefined) parts.push(`p50 ${s.p50Ms?.toFixed(3) ?? '—'} ms, p99 ${s.p99Ms?.toFixed(3) ?? '—'} ms`);
  if (s.switchesPerTx !== undefined) {
    parts.push(`${s.switchesPerTx?.toFixed(2) ?? '—'} pin switches per transaction (${s.inlineShare == null ? '—' : Math.round(100 * s.inlineShare)} % inline)`);
  }
  return parts.join('; ');
}

/**
 * Runs `workload` for `seconds` on each target not warmed up yet. `scope` names a warm-up of
 * its own (a code path the first warm-up of the instance did not exercise); '' is the one
 * warm-up of each target instance on first use.
 */
async function warmUp(ctx: Context, targets: Target[], workload: Workload, seconds = ctx.opts.warmup, scope = ''): Promise<void> {
  for (const t of targets) {
    const key = `${scope}${t.key}`;
    if (ctx.warmed.has(key)) continue;
    process.stdout.write(`warm-up ${scope}${t.key} (${seconds} s) ... `);
    console.log(describe(await measure(t, workload(t, seconds))));
    ctx.warmed.add(key);
  }
}

/**
 * Warms up the targets not used yet, then runs `once` on each target in turn, `rounds` times,
 * recording a sample per run. `once` defaults to one run of `workload`.
 *
 * Each round starts one target further along the list (round 1: A B C, round 2: B C A, ...):
 * on this shared 2-core machine throughput drifts within a round, and a fixed order would
 * hand that drift to whichever target always runs last.
 */
async function inRounds(
  ctx: Context,
  id: ScenarioId,
  kase: string,
  targets: Target[],
  workload: Workload,
  once: (t: Target, round: number) => Promise<RunFigures> = (t) => measure(t, workload(t, ctx.opts.duration)),
): Promise<void> {
  await warmUp(ctx, targets, workload);
  const { rounds } = ctx.opts;
  for (let round = 1; round <= rounds; round++) {
    for (const t of rotated(targets, round - 1)) {
      process.stdout.write(`${id} ${kase} round ${round}/${rounds} ${t.name} ... `);
      const figures = await once(t, round);
      ctx.samples.push({ scenario: id, case: kase, target: t.name, round, ...figures });
      console.log([describe(figures), runNotes(figures)].filter((x) => x !== '').join('; '));
    }
  }
}

/** `xs` starting at index `by` (mod its length), wrapping round. */
function rotated<T>(xs: readonly T[], by: number): T[] {
  if (xs.length === 0) return [];
  const k = by % xs.length;
  return [...xs.slice(k), ...xs.slice(0, k)];
}

async function plainTargets(lab: Lab): Promise<Target[]> {
  return [lab.direct(false), await lab.pgbouncer(false), await lab.pgbastion(false)];
}

async function tlsTargets(lab: Lab): Promise<Target[]> {
  return [lab.direct(true), await lab.pgbouncer(true), await lab.pgbastion(true)];
}

/** S1's and S2's reference row (no target applies to it), described once for both. */
const BARE_PIPE_METHOD =
  `Reference row "${BARE_PIPE}" (no target applies to it; not in --quick runs): bench/bare-pipe.ts, a Node.js relay with no pooling, parsing, ` +
  'policy or audit that joins each client to a PostgreSQL connection of its own with stream.pipe() both ways (with TLS: ' +
  "SSLRequest answered 'S', the socket wrapped in a server TLSSocket); the clients log in to PostgreSQL through it as the " +
  'server role, so PostgreSQL runs one backend per client. It shows what Node\'s socket and TLS machinery alone cost per transaction.';

/** The bare-pipe reference row, left out of --quick smoke runs (which must stay under 3 minutes). */
async function reference(ctx: Context, tls: boolean): Promise<Target[]> {
  return ctx.opts.quick ? [] : [await ctx.lab.barePipe(tls)];
}

const pgbenchS = (o: Options, extra = '') => `pgbench -S${extra} -n -c ${o.clients} -j ${THREADS} -T ${o.duration}`;

const S1: Scenario = {
  id: 'S1',
  title: 'select-only, plaintext',
  method: (o) =>
    `\`${pgbenchS(o)}\`, PGSSLMODE=disable. Extra row "${S1_WORKERS_TARGET}" (no target applies to it): a second ` +
    `pgbastion configured like the first but with \`workers: ${S1_WORKERS}\` and pool.size ${POOL_SIZE / S1_WORKERS} per ` +
    `worker, so the upstream sees the same ${POOL_SIZE} server connections as from PgBouncer, and log_level info (its ` +
    'readiness is the primary\'s "pgbastion listening" line; info adds only a line per session start and end). Its proxy ' +
    'CPU is summed over the primary (which accepts the connections and hands them to the workers) and both workers. ' +
    BARE_PIPE_METHOD,
  run: async (ctx) => {
    const targets = [
      ...(await plainTargets(ctx.lab)),
      await ctx.lab.pgbastionWorkers(S1_WORKERS_TARGET, S1_WORKERS),
      ...(await reference(ctx, false)),
    ];
    await inRounds(ctx, 'S1', 'select-only', targets, selectOnly(ctx.opts.clients));
  },
};

const S2: Scenario = {
  id: 'S2',
  title: 'select-only, client TLS',
  method: (o) =>
    `\`${pgbenchS(o)}\` with PGSSLMODE=require against a second PgBouncer (client_tls_sslmode = require) and a second ` +
    'pgbastion (tls + hostssl rule); direct PostgreSQL with ssl=on. Self-signed RSA-2048 certificate; no TLS towards the server. ' +
    `Extra row "${S1_WORKERS_TARGET}" (no target applies to it): as in S1, with TLS. ` +
    `Reference row "${BARE_PIPE}": as in S1, with TLS.`,
  run: async (ctx) => {
    const targets = [
      ...(await tlsTargets(ctx.lab)),
      await ctx.lab.pgbastionWorkers(S1_WORKERS_TARGET, S1_WORKERS, true),
      ...(await reference(ctx, true)),
    ];
    await inRounds(ctx, 'S2', 'TLS', targets, selectOnly(ctx.opts.clients));
  },
};

const S3: Scenario = {
  id: 'S3',
  title: 'extended and prepared protocol',
  method: (o) =>
    `\`${pgbenchS(o, ' -M extended')}\` (unnamed statements: Parse/Bind/Execute every time) and \`-M prepared\` ` +
    '(each client prepares once, then Bind/Execute); plaintext. In transaction pooling a proxy must make a client\'s ' +
    'prepared statements exist on whichever server connection it gets: pgbastion does; PgBouncer before 1.21 ' +
    '(max_prepared_statements) does not.',
  run: async (ctx) => {
    const targets = await plainTargets(ctx.lab);
    for (const mode of ['extended', 'prepared']) await inRounds(ctx, 'S3', mode, targets, selectOnly(ctx.opts.clients, ['-M', mode]));
  },
};

const S4: Scenario = {
  id: 'S4',
  title: 'connection churn, TLS + SCRAM',
  method: (o) =>
    `\`pgbench -C -S -n -c ${S4_CLIENTS} -j ${THREADS} -T ${o.duration}\`, PGSSLMODE=require: a new connection (TCP, TLS ` +
    'handshake, SCRAM-SHA-256 login) for every transaction, so TPS = connections/s. pgbastion writes an audit line per ' +
    'session start and end (its default); PgBouncer logs no connections. Before the rounds each target runs this ' +
    `workload for ${o.loginWarmup} s: pgbastion's login path is JavaScript that V8 optimises only after a few thousand ` +
    'logins (without it, proxy CPU per login fell from 2.5 to 2.2 to 1.75 ms over three 10 s rounds), and the ' +
    "instance's first warm-up (S2's load) logs in only its 32 clients.",
  run: async (ctx) => {
    const targets = await tlsTargets(ctx.lab);
    const churn = selectOnly(S4_CLIENTS, ['-C']);
    await warmUp(ctx, targets, churn, ctx.opts.loginWarmup, 'S4:');
    await inRounds(ctx, 'S4', 'connect per tx', targets, churn);
  },
};

const S5: Scenario = {
  id: 'S5',
  title: 'idle TLS clients + load',
  method: (o) =>
    `Per round and proxy: S2's load (\`${pgbenchS(o)}\` over TLS) without idle clients; RSS of the proxy process ` +
    `(/proc/<pid>/status VmRSS); ${o.idleClients} TLS clients log in (SCRAM) and stay idle; RSS again 1 s later; the same load ` +
    'again while they are held; then they disconnect. TPS is the run under idle clients, "KiB/idle" the RSS growth divided ' +
    'by their number (the largest over rounds, in practice the first: later rounds reuse the memory the first one\'s clients ' +
    'left behind, which the V8 heap and malloc keep, and understate it), and "vs no idle" the TPS ratio of the two runs of ' +
    'the round (median over rounds). Direct PostgreSQL ' +
    `cannot hold ${o.idleClients} connections (max_connections = 200, a process each): it only runs the load, for reference.`,
  run: async (ctx) => {
    const load = selectOnly(ctx.opts.clients);
    await inRounds(ctx, 'S5', `${ctx.opts.idleClients} idle`, await tlsTargets(ctx.lab), load, (t) => underIdleClients(ctx, t, load));
  },
};

/** S5 on one target: the load without, then with, idle TLS clients held open. */
async function underIdleClients(ctx: Context, t: Target, load: Workload): Promise<RunFigures> {
  const run = () => measure(t, load(t, ctx.opts.duration));
  if (t.pid === undefined) return run();
  const count = ctx.opts.idleClients;
  const fdLimit = openFilesLimit(t.pid);
  if (fdLimit < count + 1000) throw new Error(`${t.key} may open only ${fdLimit} files, too few for ${count} idle clients (raise ulimit -Hn)`);
  const noIdle = await run();
  const rssBeforeKiB = rssKiB(t.pid);
  const started = performance.now();
  const idle = await openIdleClients({ port: t.port, user: PROXY_USER, password: PROXY_PASSWORD, database: DATABASE, count });
  try {
    const idleOpenSeconds = (performance.now() - started) / 1000;
    await new Promise((r) => setTimeout(r, 1000)); // let the proxy finish the logins' leftovers (GC, buffers)
    const rssAfterKiB = rssKiB(t.pid);
    const loaded = await run();
    return {
      ...loaded,
      idleClients: idle.count,
      idleOpenSeconds,
      rssBeforeKiB,
      rssAfterKiB,
      rssPerIdleKiB: (rssAfterKiB - rssBeforeKiB) / idle.count,
      noIdleTps: noIdle.tps,
    };
  } finally {
    await idle.close();
  }
}

const S6: Scenario = {
  id: 'S6',
  title: 'latency at a fixed rate',
  method: (o) =>
    `\`${pgbenchS(o, ' -R <rate>')} -l\`, plaintext, the rate being half of S1's direct median TPS (measured first when S1 is ` +
    'not run). p50/p99 come from the per-transaction log (latency from the scheduled start, so queueing counts); ' +
    '"added" is the difference to direct PostgreSQL\'s median. On a 2-core machine that rate can be near what a proxy ' +
    'sustains at all (pgbench, PostgreSQL and the proxy share the cores), and its latency is then mostly queueing; so when ' +
    'S1 ran, a second case (no target) runs at half of PgBouncer\'s S1 median, a load both proxies carry with headroom.',
  run: async (ctx) => {
    const targets = await plainTargets(ctx.lab);
    const rate = Math.round((await directS1Tps(ctx, targets[0]!)) / 2);
    const once = (rate: number) => async (t: Target, round: number): Promise<RunFigures> => {
      const prefix = path.join(ctx.dir, `s6-${rate}-${round}-${t.key}`);
      const m = await measure(t, selectOnly(ctx.opts.clients, ['-R', String(rate), '-l', `--log-prefix=${prefix}`])(t, ctx.opts.duration));
      const { p50Ms, p99Ms } = latencyPercentiles(prefix);
      return { ...m, rate, p50Ms, p99Ms };
    };
    await inRounds(ctx, 'S6', `rate ${rate}/s`, targets, selectOnly(ctx.opts.clients), once(rate));
    const bouncer = medianS1Tps(ctx, 'PgBouncer');
    if (bouncer !== null) {
      const lighter = Math.round(bouncer / 2);
      await inRounds(ctx, 'S6', `rate ${lighter}/s (half of PgBouncer's S1)`, targets, selectOnly(ctx.opts.clients), once(lighter));
    }
  },
};

/** Median S1 TPS of `target` in this run, or null when S1 was not run. */
function medianS1Tps(ctx: Context, target: string): number | null {
  const s1 = ctx.samples.filter((s) => s.scenario === 'S1' && s.target === target && s.tps !== null).map((s) => s.tps!);
  return s1.length === 0 ? null : s1.sort((a, b) => a - b)[s1.length >> 1]!;
}

/** Median S1 TPS of direct PostgreSQL from this run, or one S1 run now when S1 was not run. */
async function directS1Tps(ctx: Context, direct: Target): Promise<number> {
  const measured = medianS1Tps(ctx, 'direct');
  if (measured !== null) return measured;
  await warmUp(ctx, [direct], selectOnly(ctx.opts.clients));
  process.stdout.write('S6 rate: S1 on direct ... ');
  const m = await measure(direct, selectOnly(ctx.opts.clients)(direct, ctx.opts.duration));
  console.log(describe(m));
  if (m.tps === null) throw new Error(`S6: no S1 figure for direct PostgreSQL to derive the rate from (${m.error ?? 'no result'})`);
  return m.tps;
}

const S7: Scenario = {
  id: 'S7',
  title: 'cost of pinning',
  method: (o) =>
    `pgbastion only: three instances alike but for pins and pool.affinity_ms. ${o.clients} pgbench processes (\`-c 1 -j 1 -T ${o.duration} -l\`), ` +
    `process j logged in as user tenant_<k>, k = j mod the case's tenant count, run a custom script: \`SELECT abalance FROM tenant_accounts WHERE aid = ... \\gset\` ` +
    'on an aid of tenant k (simple protocol; \\gset fails the client unless it sees exactly that row). tenant_accounts is ' +
    `pgbench_accounts with tenant = aid % ${o.clients} and row-level security ` +
    `\`USING (tenant = coalesce(nullif(current_setting('${PINNED_VARIABLE}', true), '')::int, tenant))\`, so all ` +
    `configurations read the same row. "pins on": every user has pins { ${PINNED_VARIABLE}: <k> } and pinning.variables lists it, so a lease of a ` +
    "server connection last used by another tenant first switches it: `SET \"app\".\"tenant_id\" = '<k>'; ` goes in front of the client's statement in its own Query (the inline switch; the separate `BEGIN; SET …; COMMIT` Query is for other statements), and the classifier " +
    'checks each statement for the pinned name. "pins off": no pins, no pinned variables (the classifier still runs, as it ' +
    `always does). "affinity_ms ${S7_AFFINITY_MS}": pins on with pool.affinity_ms ${S7_AFFINITY_MS}. Cases: ${o.clients} tenants (one per client; the target ` +
    `applies to it, with the default pool.affinity_ms 0), ${Math.floor(o.clients / S7_CLIENTS_PER_TENANT)} tenants × ${S7_CLIENTS_PER_TENANT} clients, ` +
    `${o.clients} tenants with \`-M extended\` (pins off and on only: the switch rides ahead of the Parse/Bind/Describe/Execute/Sync batch as Parse/Bind/Execute of the SET), ` +
    `and ${o.clients} tenants whose transactions are \`BEGIN; SELECT … \\gset; COMMIT;\` (three Queries; pins off and on only, no target, not in --quick runs): a BEGIN cannot take the ` +
    'inline switch, so a lease that needs one sends the separate `BEGIN; SET …; COMMIT` Query, the client\'s BEGIN in the same write behind it, and PostgreSQL runs one more transaction per switch. ' +
    'TPS are the sums over the processes; the figure is pins on / pins off. p50/p99 from the per-transaction logs; switches per ' +
    'transaction from pgbastion_settings_switches_total / pgbastion_transactions_total on /metrics, and the share of them with form="inline".',
  run: async (ctx) => {
    const clients = ctx.opts.clients;
    const { select, block } = await prepareTenants(ctx, clients);
    const users = (pinned: boolean): BastionUser[] =>
      Array.from({ length: clients }, (_, k) => ({ name: `tenant_${k}`, ...(pinned ? { pins: { [PINNED_VARIABLE]: String(k) } } : {}) }));
    const off = await ctx.lab.pgbastionWith({ name: PINS_OFF, key: 'pgbastion-pins-off', tls: false, users: users(false), pinning: [] });
    const on = await ctx.lab.pgbastionWith({ name: PINS_ON, key: 'pgbastion-pins-on', tls: false, users: users(true), pinning: [PINNED_VARIABLE] });
    const affine = await ctx.lab.pgbastionWith({
      name: PINS_ON_AFFINITY,
      key: 'pgbastion-pins-on-affinity',
      tls: false,
      users: users(true),
      pinning: [PINNED_VARIABLE],
      affinityMs: S7_AFFINITY_MS,
    });
    // Process j logs in as tenant_(j % tenants): one tenant per client, then several clients
    // per tenant; then one tenant per client again over the extended protocol (most drivers),
    // and with transaction blocks (the separate switch), pins off and on only.
    const cases = [
      { tenants: clients, extended: false, script: select, suffix: '', targets: [off, on, affine] },
      { tenants: Math.max(1, Math.floor(clients / S7_CLIENTS_PER_TENANT)), extended: false, script: select, suffix: '', targets: [off, on, affine] },
      { tenants: clients, extended: true, script: select, suffix: S7_EXTENDED_SUFFIX, targets: [off, on] },
      // (No target: left out of --quick runs, which must stay under 3 minutes.)
      ...(ctx.opts.quick ? [] : [{ tenants: clients, extended: false, script: block, suffix: S7_BLOCK_SUFFIX, targets: [off, on] }]),
    ];
    for (const { tenants, extended, script, suffix, targets } of cases) {
      const protocol = extended ? ['-M', 'extended'] : [];
      const jobs = (t: Target, seconds: number, extra: string[] = []) =>
        Array.from({ length: clients }, (_, j) =>
          pgbenchJob(t, seconds, ['-c', '1', '-j', '1', ...protocol, '-f', script, '-D', `tenant=${j % tenants}`, ...extra], `tenant_${j % tenants}`),
        );
      const once = async (t: Target, round: number): Promise<RunFigures> => {
        const prefix = path.join(ctx.dir, `s7-${tenants}${extended ? '-x' : ''}${script === block ? '-b' : ''}-${round}-${t.key}`);
        const counts = () => Promise.all([t.counter!(SWITCHES), t.counter!(TRANSACTIONS), t.counter!(INLINE_SWITCHES)]);
        const [switches0, tx0, inline0] = await counts();
        const m = await measure(t, jobs(t, ctx.opts.duration, ['-l', `--log-prefix=${prefix}`]));
        const [switches1, tx1, inline1] = await counts();
        const { p50Ms, p99Ms } = latencyPercentiles(prefix);
        const switches = switches1 - switches0;
        return {
          ...m,
          p50Ms,
          p99Ms,
          switchesPerTx: tx1 > tx0 ? switches / (tx1 - tx0) : null,
          inlineShare: switches > 0 ? (inline1 - inline0) / switches : null,
        };
      };
      await inRounds(ctx, 'S7', s7Case(clients, tenants) + suffix, targets, jobs, once);
    }
  },
};

/**
 * Creates tenant_accounts with RLS and writes the pgbench scripts reading one row of tenant
 * :tenant: as one statement (`select`), and inside BEGIN … COMMIT (`block`).
 */
async function prepareTenants(ctx: Context, tenants: number): Promise<{ select: string; block: string }> {
  const rows = 100_000 * ctx.opts.scale;
  await ctx.lab.pgs.query(
    `CREATE TABLE tenant_accounts (tenant int NOT NULL, aid int PRIMARY KEY, abalance int NOT NULL);
     INSERT INTO tenant_accounts SELECT aid % ${tenants}, aid, abalance FROM pgbench_accounts;
     ALTER TABLE tenant_accounts ENABLE ROW LEVEL SECURITY;
     CREATE POLICY by_tenant ON tenant_accounts
       USING (tenant = coalesce(nullif(current_setting('${PINNED_VARIABLE}', true), '')::int, tenant));
     GRANT SELECT ON tenant_accounts TO ${SERVER_ROLE};
     ANALYZE tenant_accounts;`,
    [],
    DATABASE,
  );
  // aid = j * tenants + k with j >= 1 has aid % tenants = k and stays within 1..rows.
  const pick = `\\set aid random(1, ${Math.floor(rows / tenants) - 1}) * ${tenants} + :tenant\n`;
  // \gset fails the client unless exactly one row comes back: the pin (or its absence) must show the tenant's row.
  const read = 'SELECT abalance FROM tenant_accounts WHERE aid = :aid \\gset\n';
  const select = path.join(ctx.dir, 'tenant-select.sql');
  writeFileSync(select, pick + read);
  const block = path.join(ctx.dir, 'tenant-block.sql');
  writeFileSync(block, `${pick}BEGIN;\n${read}COMMIT;\n`);
  return { select, block };
}

export const SCENARIOS: readonly Scenario[] = [S1, S2, S3, S4, S5, S6, S7];
