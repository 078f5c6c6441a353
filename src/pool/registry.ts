// One Pool per (database, server role), created on first use, with the upstream connect
// function that tries the configured endpoints in order of preference, skipping those the
// health checks (upstream/health.ts, run from here) found unusable.
//
// A pool is forgotten (and closed) as soon as nothing holds it: no server connection (open,
// opening, idle or leased), no waiter, no client session (get() counts the session, which
// gives it back with pool.leave() when it ends). Otherwise every database name a client
// asks for, even one that does not exist, would keep a pool for the life of the process.
// Removal is immediate rather than after an idle period (PgBouncer's autodb_idle_timeout):
// a pool that logged in anywhere keeps its idle connections until server_idle_timeout_ms,
// so it lives at least that long anyway, and what a new pool must rebuild (the welcome and
// the accepted settings) comes back with its first connection. Counting sessions, rather
// than removing a pool a session still holds, keeps a live session from ever leasing
// through a pool the registry (shutdown, reload, health, metrics) no longer sees.

import net from 'node:net';
import type { Logger } from 'pino';
import type { Config, Endpoint, PoolConfig } from '../config/types.js';
import { ServerConnection } from '../upstream/server-connection.js';
import { UpstreamError } from '../upstream/errors.js';
import { PLAIN_TRANSPORT, endpointKey, sameTransport, type ClientOrigin, type UpstreamTransport } from '../upstream/dial.js';
import { HealthChecker, usable, type Health } from '../upstream/health.js';
import { Pool, type PoolLimits } from './pool.js';
import type { Metrics } from '../metrics/metrics.js';

export class PoolRegistry {
  private readonly pools = new Map<string, Pool>();
  /** The endpoint the last server connection was opened on: a change is a failover. */
  private active: string | null = null;
  readonly health: HealthChecker;
  /** Endpoints whose health check login was refused (already logged). */
  private readonly probeLoginRefused = new Set<string>();
  /** host:port of the configured upstreams. */
  private configured: ReadonlySet<string>;

  constructor(
    private config: Config,
    private readonly logger: Logger,
    private readonly metrics: Metrics,
    private transport: UpstreamTransport = PLAIN_TRANSPORT,
  ) {
    this.configured = new Set(config.upstreams.map(endpointKey));
    this.health = new HealthChecker(
      (endpoint, timeoutMs) => this.probe(endpoint, timeoutMs),
      healthOptions(config),
      (endpoint, health, previous, error) => this.onHealthChange(endpoint, health, previous, error),
    );
    this.health.configure(config.upstreams, healthOptions(config));
  }

  /**
   * The pool for a client session, counted as held by it until its `pool.leave()`: a pool
   * is removed only once no session holds it (and it has no connection and no waiter).
   */
  get(database: string, role: string): Pool {
    const key = `${database}\0${role}`;
    let pool = this.pools.get(key);
    if (!pool) {
      const name = `${database}/${role}`;
      pool = new Pool(name, {
        ...poolLimits(this.config.pool),
        connect: (origin) => this.connect(database, role, origin),
        keep: (conn) => this.current(conn),
        logger: this.logger,
        onEmpty: (empty) => this.remove(key, empty),
      });
      this.pools.set(key, pool);
    }
    pool.enter();
    return pool;
  }

  /** The pool in use for (database, role), if any, without taking it (inspection, tests). */
  find(database: string, role: string): Pool | undefined {
    return this.pools.get(`${database}\0${role}`);
  }

  /** How many pools exist. */
  get size(): number {
    return this.pools.size;
  }

  /** Nothing holds `pool` any more: forgotten, and closed so that it can never open a connection again. */
  private remove(key: string, pool: Pool): void {
    if (this.pools.get(key) !== pool) return;
    this.pools.delete(key);
    pool.close();
    this.logger.debug({ pool: pool.name }, 'pool removed: no connection, waiter or session left');
  }

  /**
   * Readiness: some upstream was found usable (by a health check or a server connection);
   * before anything was found either way, some upstream accepts a TCP connection.
   */
  async anyUpstreamUp(timeoutMs = 1000): Promise<boolean> {
    const checked = this.health.anyUsable();
    if (checked !== null) return checked;
    const attempts = this.config.upstreams.map((ep) => tcpReachable(ep, timeoutMs).then(() => true, () => false));
    return (await Promise.all(attempts)).some(Boolean);
  }

  /** New pools and new server connections use `config`; existing pools take its limits. */
  setConfig(config: Config, transport: UpstreamTransport = PLAIN_TRANSPORT): void {
    this.config = config;
    this.transport = transport;
    this.configured = new Set(config.upstreams.map(endpointKey));
    for (const pool of this.pools.values()) {
      pool.setLimits(poolLimits(config.pool));
      // Connections to upstreams no longer listed, or opened with other TLS/PROXY settings,
      // close now if idle, else when their client is done with them.
      pool.closeIdle((conn) => !this.current(conn));
    }
    this.health.configure(config.upstreams, healthOptions(config));
  }

  all(): IterableIterator<Pool> {
    return this.pools.values();
  }

  closeAll(): void {
    this.health.stop();
    for (const pool of this.pools.values()) pool.close();
    this.pools.clear();
  }

  /**
   * Tries the upstreams in order, skipping those the health checks found down (or in
   * recovery, with require_primary) unless none is left; a login refusal is final, an
   * unreachable server or a standby moves on.
   */
  private async connect(database: string, role: string, origin: ClientOrigin | null): Promise<ServerConnection> {
    const serverRole = this.config.server_roles.find((r) => r.name === role);
    if (!serverRole) throw new UpstreamError('login', `no credentials configured for server role "${role}"`);
    const healthy = this.config.upstreams.filter((e) => this.health.isUsable(e));
    const candidates = healthy.length > 0 ? healthy : this.config.upstreams;
    let last: UpstreamError | null = null;
    for (const endpoint of candidates) {
      try {
        const conn = await ServerConnection.open({
          endpoint,
          user: role,
          password: serverRole.password,
          database,
          maxMessageBytes: this.config.limits.max_message_bytes,
          timeoutMs: this.config.pool.acquire_timeout_ms,
          logger: this.logger,
          transport: this.transport,
          origin,
        });
        if (this.config.upstream.require_primary) await conn.requirePrimary();
        this.noteConnected(endpoint);
        return conn;
      } catch (err) {
        const e = err instanceof UpstreamError ? err : new UpstreamError('unreachable', String(err));
        if (e.failure === 'login') throw e;
        this.health.report(endpoint, e.failure === 'standby' ? 'standby' : 'down', e.message);
        this.logger.warn({ upstream: endpointKey(endpoint), err: e.message }, 'upstream unusable');
        last = e;
      }
    }
    throw new UpstreamError('unreachable', last?.message ?? 'no upstream configured', last?.fields);
  }

  /** Was this connection opened to a configured upstream with the configured transport? */
  private current(conn: ServerConnection): boolean {
    return this.configured.has(conn.where) && (conn.transport === this.transport || sameTransport(conn.transport, this.transport));
  }

  /** A server connection logged in there: the endpoint is up (health, metric, readiness), maybe a failover. */
  private noteConnected(endpoint: Endpoint): void {
    const where = endpointKey(endpoint);
    // Its role is known only when require_primary checked it; a standby found by a probe stays one.
    const primary = this.config.upstream.require_primary || this.health.health(endpoint) !== 'standby';
    this.health.report(endpoint, primary ? 'primary' : 'standby');
    if (this.active !== null && this.active !== where) {
      this.metrics.upstreamFailovers.inc();
      this.logger.warn({ from: this.active, to: where }, 'new server connections now go to another upstream');
    }
    this.active = where;
  }

  /** Health check: log in as the probe's server role and ask whether the server is in recovery. */
  private async probe(endpoint: Endpoint, timeoutMs: number): Promise<'primary' | 'standby'> {
    const hc = this.config.upstream.health_check;
    const role = this.config.server_roles.find((r) => r.name === hc.server_role) ?? this.config.server_roles[0];
    if (!role) {
      // No credentials to log in with: reachability is all that can be checked.
      await tcpReachable(endpoint, timeoutMs);
      return 'primary';
    }
    let conn: ServerConnection;
    try {
      conn = await ServerConnection.open({
        endpoint,
        user: role.name,
        password: role.password,
        database: hc.database,
        maxMessageBytes: this.config.limits.max_message_bytes,
        timeoutMs,
        logger: this.logger,
        transport: this.transport,
        origin: null,
      });
    } catch (err) {
      // A server that answers with a login refusal is alive; the problem is the probe's credentials.
      if (err instanceof UpstreamError && err.failure === 'login' && err.fields?.C !== undefined) {
        const where = endpointKey(endpoint);
        if (!this.probeLoginRefused.has(where)) {
          this.probeLoginRefused.add(where); // said once, not every interval
          this.logger.warn({ upstream: where, err: err.message }, 'health check cannot log in; checking reachability only');
        }
        return 'primary';
      }
      throw err;
    }
    this.probeLoginRefused.delete(endpointKey(endpoint));
    try {
      const timer = setTimeout(() => conn.close(), timeoutMs);
      const recovering = await conn.inRecovery().finally(() => clearTimeout(timer));
      return recovering ? 'standby' : 'primary';
    } finally {
      conn.close();
    }
  }

  /** The one writer of pgbastion_upstream_up: it follows the endpoint's health. */
  private onHealthChange(endpoint: Endpoint, health: Health, previous: Health, error?: string): void {
    const where = endpointKey(endpoint);
    const ok = usable(health, this.config.upstream.require_primary);
    this.metrics.upstreamUp.set({ upstream: where }, ok ? 1 : 0);
    if (ok) {
      this.logger.info({ upstream: where, health, previous }, 'upstream healthy');
      return;
    }
    this.logger.warn({ upstream: where, health, previous, err: error }, 'upstream unhealthy: new server connections skip it');
    // Idle connections there would fail their next client (or, on a demoted server, refuse its writes).
    for (const pool of this.pools.values()) pool.closeIdle((conn) => conn.where === where);
  }
}

function healthOptions(config: Config): { intervalMs: number; timeoutMs: number; requirePrimary: boolean } {
  const hc = config.upstream.health_check;
  return { intervalMs: hc.interval_ms, timeoutMs: hc.timeout_ms, requirePrimary: config.upstream.require_primary };
}

function tcpReachable(endpoint: Endpoint, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: endpoint.host, port: endpoint.port });
    const done = (err?: Error): void => {
      sock.destroy();
      if (err) reject(err);
      else resolve();
    };
    sock.setTimeout(timeoutMs, () => done(new Error(`timed out connecting to ${endpointKey(endpoint)}`)));
    sock.once('connect', () => done());
    sock.once('error', (e) => done(e));
  });
}

/** The pool limits a config gives (affinity only in transaction mode). */
export function poolLimits(pool: PoolConfig): PoolLimits {
  // Session mode: a connection comes back DISCARDed, holding nobody's settings.
  const affinityMs = pool.mode === 'transaction' ? pool.affinity_ms : 0;
  return {
    size: pool.size,
    acquireTimeoutMs: pool.acquire_timeout_ms,
    idleTimeoutMs: pool.server_idle_timeout_ms,
    affinityMs,
    stickyPerUser: stickyPerUser(pool),
  };
}

/** pool.max_sticky_per_user, where 0 (the default) means half the pool, at least one connection. */
export function stickyPerUser(pool: Pick<PoolConfig, 'size' | 'max_sticky_per_user'>): number {
  return pool.max_sticky_per_user > 0 ? pool.max_sticky_per_user : Math.max(1, Math.floor(pool.size / 2));
}
