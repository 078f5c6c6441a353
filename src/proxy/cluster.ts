// `workers: N` (N > 1): a primary process forks N workers (Node cluster) that share the
// client listeners, each with its own pools and audit stream. The primary accepts nothing
// itself; it serves /metrics (every worker's registry, aggregated), /healthz and /readyz,
// forwards SIGHUP/SIGTERM, restarts a worker that dies, relays CancelRequests that landed
// on a worker other than their session's, and keeps the one authentication-failure count
// (workers report each failure; the locks it decides are imposed on every worker).

import cluster, { type Worker } from 'node:cluster';
import client from 'prom-client';
import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import { LockoutTracker } from '../auth/lockout.js';
import { shareMockKey } from '../auth/mock.js';
import { startMetricsServer } from '../metrics/http.js';
import type { ProxyServer } from './server.js';

const RESTART_DELAY_MS = 1000;
/** Locks kept for workers that join later (the lockout tracker bounds its own tables). */
const MAX_REMEMBERED_LOCKS = 10_000;
const READY_TIMEOUT_MS = 2000;
/** How much longer than shutdown_timeout_ms SIGTERM waits for workers before killing them. */
const STOP_GRACE_MS = 5000;

type Message =
  | { type: 'pgbastion:cancel'; processId: number; secretKey: number }
  | { type: 'pgbastion:auth-failed' | 'pgbastion:auth-ok'; address: string; user: string }
  | { type: 'pgbastion:lock'; address: string; user: string; addressMs: number; userMs: number }
  | { type: 'pgbastion:joined' }
  | { type: 'pgbastion:ready?'; id: number }
  | { type: 'pgbastion:ready'; id: number; ok: boolean };

const isMessage = (m: unknown): m is Message => typeof m === 'object' && m !== null && String((m as { type?: unknown }).type).startsWith('pgbastion:');

/**
 * Runs the primary: forks the workers and stays up until SIGTERM/SIGINT. `reload` reads the
 * configuration again on SIGHUP (the primary keeps the lockout policy; workers reload themselves).
 */
export async function runPrimary(config: Config, logger: Logger, reload: () => Promise<Config>): Promise<void> {
  const log = logger.child({ role: 'primary' });
  const lockout = new LockoutTracker(config.limits.auth_failures);
  /** Locks decided so far, for workers that join later (expired ones are dropped as found). */
  const locks = new Map<string, { address: string; user: string }>();
  const lockMessage = (address: string, user: string): Extract<Message, { type: 'pgbastion:lock' }> => ({ type: 'pgbastion:lock', address, user, ...lockout.remaining(address, user) });
  /** Bounded: drop expired locks, then the oldest, so that many attacking addresses cannot grow it. */
  const forgetLocks = (): void => {
    for (const [key, { address, user }] of locks) {
      const { addressMs, userMs } = lockout.remaining(address, user);
      if (addressMs <= 0 && userMs <= 0) locks.delete(key);
    }
    for (const key of locks.keys()) {
      if (locks.size < MAX_REMEMBERED_LOCKS) break;
      locks.delete(key);
    }
  };
  const broadcast = (m: Message, except?: Worker): void => {
    for (const w of Object.values(cluster.workers ?? {})) if (w && w !== except && w.isConnected()) w.send(m);
  };
  let stopping = false;
  const aggregator = new client.AggregatorRegistry();
  let readyId = 0;
  const readyWaits = new Map<number, (ok: boolean) => void>();

  const fork = (): Worker => {
    const worker = cluster.fork();
    worker.on('message', (m: unknown) => {
      if (!isMessage(m)) return;
      if (m.type === 'pgbastion:cancel') {
        broadcast(m, worker); // the session is on some other worker: each checks its own keys
      } else if (m.type === 'pgbastion:auth-failed') {
        // Counted here for the whole instance, so spreading attempts over workers gains nothing.
        if (lockout.recordFailure(m.address, m.user).locked) {
          if (locks.size >= MAX_REMEMBERED_LOCKS) forgetLocks();
          locks.set(`${m.address}\0${m.user}`, { address: m.address, user: m.user });
          broadcast(lockMessage(m.address, m.user));
        }
      } else if (m.type === 'pgbastion:joined') {
        // A worker started after some locks were decided (a replacement): it gets those in force.
        forgetLocks();
        for (const { address, user } of locks.values()) worker.send(lockMessage(address, user));
      } else if (m.type === 'pgbastion:auth-ok') {
        lockout.recordSuccess(m.address, m.user);
      } else if (m.type === 'pgbastion:ready') readyWaits.get(m.id)?.(m.ok);
    });
    return worker;
  };

  let started = false;
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return;
    if (!started) {
      // It could not start (a port in use, say); the others would fail the same way.
      log.fatal({ worker: worker.id, code, signal }, 'a worker failed to start; stopping');
      for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGKILL');
      log.flush();
      process.exit(2);
    }
    log.error({ worker: worker.id, code, signal }, 'worker died; starting another');
    setTimeout(() => {
      if (!stopping) fork();
    }, RESTART_DELAY_MS);
  });

  // Ready when every worker answers and one of them has a usable upstream.
  const ready = async (): Promise<boolean> => {
    const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && w.isConnected());
    if (workers.length < config.workers) return false;
    const answers = workers.map(
      (w) =>
        new Promise<boolean>((resolve) => {
          const id = ++readyId;
          const timer = setTimeout(() => finish(false), READY_TIMEOUT_MS);
          const finish = (ok: boolean): void => {
            clearTimeout(timer);
            readyWaits.delete(id);
            resolve(ok);
          };
          readyWaits.set(id, finish);
          w.send({ type: 'pgbastion:ready?', id } satisfies Message);
        }),
    );
    return (await Promise.all(answers)).some(Boolean);
  };

  const listening = new Promise<void>((resolve) => {
    let n = 0;
    cluster.on('listening', () => {
      if (++n === config.workers * config.listen.length) resolve();
    });
  });
  shareMockKey(); // (before the first fork: every worker inherits the same key)
  for (let i = 0; i < config.workers; i++) fork();
  const metricsServer = config.metrics ? await startMetricsServer(config.metrics, { metrics: () => aggregator.clusterMetrics(), contentType: aggregator.contentType }, ready) : null;
  await listening;
  started = true;
  log.info({ workers: config.workers, listen: config.listen.map((l) => `${l.host}:${l.port}`) }, 'pgbastion listening');

  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down the workers');
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM');
    const killer = setTimeout(() => {
      for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGKILL');
    }, config.shutdown_timeout_ms + STOP_GRACE_MS);
    const check = setInterval(() => {
      if (Object.keys(cluster.workers ?? {}).length > 0) return;
      clearInterval(check);
      clearTimeout(killer);
      metricsServer?.close();
      log.flush();
      process.exit(0);
    }, 50);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => {
    // Each worker reloads the file itself (and reopens its audit file).
    log.info('SIGHUP: passing it to the workers');
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGHUP');
    reload().then(
      (next) => lockout.setPolicy(next.limits.auth_failures),
      () => {}, // the workers report a bad file (log, audit, metric)
    );
  });
}

/** In a worker: report metrics to the primary, answer readiness, pass unknown cancels on. */
export function joinCluster(server: ProxyServer): void {
  const rt = server.runtime;
  new client.AggregatorRegistry(); // installs prom-client's worker side of the metrics request
  client.AggregatorRegistry.setRegistries([rt.metrics.registry]);
  rt.cancels.elsewhere = (processId, secretKey) => process.send?.({ type: 'pgbastion:cancel', processId, secretKey } satisfies Message);
  rt.lockout.observer = {
    failed: (address, user) => process.send?.({ type: 'pgbastion:auth-failed', address, user } satisfies Message),
    succeeded: (address, user) => process.send?.({ type: 'pgbastion:auth-ok', address, user } satisfies Message),
  };
  process.send?.({ type: 'pgbastion:joined' } satisfies Message);
  process.on('message', (m: unknown) => {
    if (!isMessage(m)) return;
    if (m.type === 'pgbastion:cancel') {
      if (rt.cancels.cancel(m.processId, m.secretKey, false)) rt.logger.info('cancel request relayed from another worker delivered');
    } else if (m.type === 'pgbastion:lock') {
      rt.lockout.impose(m.address, m.user, m);
      rt.logger.warn({ address: m.address, user: m.user, address_ms: m.addressMs, user_ms: m.userMs }, 'lockout imposed by the primary (failures counted over all workers)');
    } else if (m.type === 'pgbastion:ready?') {
      void rt.pools.anyUpstreamUp().then((ok) => process.send?.({ type: 'pgbastion:ready', id: m.id, ok } satisfies Message));
    }
  });
}
