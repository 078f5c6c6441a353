// Benchmark harness (`npm run bench`): pgbench scenarios S1-S7 against direct PostgreSQL,
// PgBouncer and pgbastion on this machine, with proxy CPU and memory accounting; writes
// bench/results/<date>.json and bench/RESULTS.md (see bench/options.ts for what a partial run writes).

import { makeScramSecret } from '../src/auth/scram.js';
import { parseOptions } from './options.js';
import { cleanupAll, interrupted, tempDir } from './proc.js';
import { checkTargets, consoleTable, environment, summarize, writeReports } from './report.js';
import { SCENARIOS, type Context } from './scenarios.js';
import { Lab, POOL_MODE, PROXY_PASSWORD } from './targets.js';

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  const date = new Date();
  const env = await environment();
  console.log(
    `${opts.scenarios.join(', ')}: ${opts.clients} clients, ${opts.duration} s runs, ${opts.rounds} round(s), scale ${opts.scale}, ` +
      `${POOL_MODE} pooling, ${opts.idleClients} idle clients in S5${opts.quick ? ' (--quick)' : ''}`,
  );

  // One verifier for every login of PROXY_PASSWORD/SERVER_PASSWORD (they are equal): see startPgbouncer.
  const secret = await makeScramSecret(PROXY_PASSWORD);
  const lab = await Lab.start(opts.scale, secret, opts.cpuProfDir);
  const ctx: Context = { opts, lab, samples: [], warmed: new Set(), dir: tempDir('pgbastion-bench-run-', false) };
  for (const scenario of SCENARIOS.filter((s) => opts.scenarios.includes(s.id))) {
    console.log(`\n== ${scenario.id}: ${scenario.title}`);
    await scenario.run(ctx);
  }

  const rows = summarize(ctx.samples);
  const checks = checkTargets(rows);
  console.log('\n' + consoleTable(rows, checks));
  if (opts.cpuProfDir) {
    // Profiling slows pgbastion down: keep these figures out of the reports.
    console.log(`\nnot writing reports (profiled run); pgbastion CPU profiles go to ${opts.cpuProfDir}/ when it stops`);
  } else {
    console.log(`\nwrote ${writeReports(opts, env, ctx.samples, rows, checks, date).join(' and ')}`);
  }
}

try {
  await main();
} catch (e) {
  // After a signal, errors from the half-torn-down setup are just noise.
  if (!interrupted()) console.error(`bench: ${(e as Error).message}`);
  process.exitCode = 1;
} finally {
  await cleanupAll();
}
