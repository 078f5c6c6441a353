// `pgbastion start`: load and validate the config, bind the listeners, and stay up
// until SIGTERM/SIGINT, then stop accepting, end sessions and exit 0.

import { loadConfigFile } from '../config/load.js';
import { loadConfigOrReport, parseConfigArgs } from './load-config.js';
import { unservedFeatures } from '../config/unserved.js';
import { createLogger } from '../logger.js';
import { ProxyServer } from '../proxy/server.js';
import type { Logger } from 'pino';
import cluster from 'node:cluster';
import v8 from 'node:v8';
import { joinCluster, runPrimary } from '../proxy/cluster.js';

/** How long a crashing process waits for the audit trail to reach its file. */
const CRASH_FLUSH_MS = 3000;

const HELP = `usage: pgbastion start [-c FILE]

Runs the proxy. SIGHUP reloads FILE; SIGTERM/SIGINT stop it gracefully.

options:
  -c, --config FILE   config file (default: $PGBASTION_CONFIG, else config/pgbastion.yaml)
  -h, --help          show this help`;

/** Returns -1 while the proxy runs (the process exits on a signal), else an exit code. */
export async function runStart(args: string[], out: (s: string) => void, err: (s: string) => void): Promise<number> {
  const parsed = parseConfigArgs(args);
  if ('error' in parsed) {
    err(`pgbastion start: ${parsed.error}\n\n${HELP}`);
    return 1;
  }
  if (parsed.help) {
    out(HELP);
    return 0;
  }
  // Allocation-site pretenuring off. From a run of logins, whose objects live as long as
  // their connections, V8 learns to allocate some sites' objects straight into the old
  // generation; sites the relay shares then put per-transaction garbage there for the rest
  // of the process's life. Measured in the lab (50 s of bench S4's logins, then S2's TLS
  // load): with it, 4-6 ms scavenges, the heap growing 2.6 MB between them, 7 mark-compacts
  // in 8 s and 19.2 µs of user CPU per transaction; without, 0.7-0.9 ms scavenges, a flat
  // heap, no mark-compact, 16.5 µs. (The flag is read at each GC, so setting it now works.)
  v8.setFlagsFromString('--no-allocation-site-pretenuring');
  const file = parsed.file;
  const config = await loadConfigOrReport(file, err);
  if (!config) return 1;

  const unserved = unservedFeatures(config);
  if (unserved.refuse.length > 0) {
    err(`pgbastion: ${file} asks for what this build cannot serve safely:`);
    for (const r of unserved.refuse) err(`  ${r}`);
    return 1;
  }
  const baseLogger = createLogger(config.log_level);
  if (config.workers > 1 && cluster.isPrimary) {
    await runPrimary(config, baseLogger, () => loadConfigFile(file));
    return -1;
  }
  const logger = cluster.isWorker ? baseLogger.child({ worker: cluster.worker!.id }) : baseLogger;
  const server = new ProxyServer(config, logger, { metricsListener: !cluster.isWorker });
  try {
    await server.start();
  } catch (e) {
    logger.fatal({ err: (e as Error).message }, 'cannot start');
    logger.flush();
    err(`pgbastion: cannot start: ${(e as Error).message}`);
    return 2;
  }

  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    void server.close().then(() => {
      logger.flush();
      process.exit(0);
    });
  };
  exitOnCrash(server, logger);
  if (cluster.isWorker) joinCluster(server);
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  let reloading = Promise.resolve();
  process.on('SIGHUP', () => {
    // One reload at a time, in signal order; the audit file is reopened too (log rotation).
    reloading = reloading.then(async () => {
      logger.info({ file }, 'SIGHUP: reloading configuration');
      await server.reload(() => loadConfigFile(file));
      server.runtime.audit.reopen();
    });
  });
  return -1;
}

/**
 * An uncaught exception or unhandled rejection ends the process (its state can no longer be
 * trusted), but first the audit events already accepted are written out: the audit
 * stream is ended and awaited, bounded by CRASH_FLUSH_MS. Exit code 70 (EX_SOFTWARE).
 */
export function exitOnCrash(server: ProxyServer, logger: Logger): void {
  let crashing = false;
  const crash = (err: unknown, origin: string): void => {
    if (crashing) return;
    crashing = true;
    logger.fatal({ err: err instanceof Error ? err.stack : String(err), origin }, 'crashed; flushing the audit trail and exiting');
    const flushed = server.runtime.audit.close().catch(() => {});
    const deadline = new Promise((r) => setTimeout(r, CRASH_FLUSH_MS).unref());
    void Promise.race([flushed, deadline]).then(() => {
      logger.flush();
      process.exit(70);
    });
  };
  process.on('uncaughtException', (err) => crash(err, 'uncaughtException'));
  process.on('unhandledRejection', (reason) => crash(reason, 'unhandledRejection'));
}
