// Command line of the benchmark harness.

import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

export const SCENARIO_IDS = ['S1', 'S2', 'S3', 'S4', 'S5', 'S6', 'S7'] as const;
export type ScenarioId = (typeof SCENARIO_IDS)[number];

export const USAGE = `usage: node --import tsx bench/run.ts [--quick] [--only S1,S3] [--duration S] [--rounds N] [--clients N] [--cpu-prof]

  --quick         scale 2, 4 s runs, 1 s warm-ups, 1 round, 1000 idle clients in S5
                  (default: scale 10, 10 s runs, 2 s warm-ups (S4: 30 s), 3 rounds, 5000 idle clients)
  --only IDS      run only these scenarios (comma-separated, ${SCENARIO_IDS.join(' ')})
  --duration S    seconds per pgbench run
  --rounds N      runs per target and scenario, alternating the targets (medians are reported)
  --clients N     pgbench clients (default 32; S4 always uses 16)
  --idle N        idle TLS clients held open in S5
  --cpu-prof      run pgbastion under node --cpu-prof; reports are not written

A full run writes bench/results/<date>.json and bench/RESULTS.md. A --quick or --only run
writes only bench/results/<date>-quick.json or <date>-S1-S3.json (or both suffixes).`;

export interface Options {
  quick: boolean;
  /** Directory for V8 CPU profiles of pgbastion (node --cpu-prof), written when it stops. */
  cpuProfDir: string | null;
  duration: number;
  /** Warm-up seconds, once per target instance before its first measured run; not recorded. */
  warmup: number;
  /** S4: seconds of its own connect-per-transaction load each target gets before its rounds. */
  loginWarmup: number;
  clients: number;
  rounds: number;
  scale: number;
  idleClients: number;
  /** Scenarios to run, in order. */
  scenarios: ScenarioId[];
  /** All scenarios at full settings: the run RESULTS.md describes. */
  complete: boolean;
  argv: string[];
}

function positive(name: string, v: string | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got "${v}"\n${USAGE}`);
  return n;
}

function scenarioList(v: string | undefined): ScenarioId[] {
  if (v === undefined) return [...SCENARIO_IDS];
  const wanted = v.split(',').map((s) => s.trim().toUpperCase()).filter((s) => s !== '');
  for (const id of wanted) {
    if (!(SCENARIO_IDS as readonly string[]).includes(id)) throw new Error(`--only: unknown scenario "${id}"\n${USAGE}`);
  }
  return SCENARIO_IDS.filter((id) => wanted.includes(id));
}

export function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      duration: { type: 'string' },
      rounds: { type: 'string' },
      clients: { type: 'string' },
      idle: { type: 'string' },
      'cpu-prof': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const quick = values.quick ?? false;
  const scenarios = scenarioList(values.only);
  if (scenarios.length === 0) throw new Error(`--only: no scenario given\n${USAGE}`);
  return {
    quick,
    cpuProfDir: values['cpu-prof'] ? path.join(os.tmpdir(), `pgbastion-bench-profile-${process.pid}`) : null,
    duration: positive('duration', values.duration, quick ? 4 : 10),
    warmup: quick ? 1 : 2,
    loginWarmup: quick ? 1 : 30,
    clients: positive('clients', values.clients, 32),
    rounds: positive('rounds', values.rounds, quick ? 1 : 3),
    scale: quick ? 2 : 10,
    idleClients: positive('idle', values.idle, quick ? 1000 : 5000),
    scenarios,
    complete: !quick && scenarios.length === SCENARIO_IDS.length,
    argv,
  };
}
