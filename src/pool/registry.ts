// One Pool per (database, server role), created on first use, with the upstream
// connect function that tries each configured endpoint in order of preference.

import net from 'node:net';
import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import { ServerConnection } from '../upstream/server-connection.js';
import { UpstreamError } from '../upstream/errors.js';
import { Pool } from './pool.js';
import type { Metrics } from '../metrics/metrics.js';

export class PoolRegistry {
  private readonly pools = new Map<string, Pool>();
  /** Did the last attempt to open a server connection reach an upstream? null: none yet. */
  private lastUp: boolean | null = null;

  constructor(
    private config: Config,
    private readonly logger: Logger,
    private readonly metrics: Metrics,
  ) {}

  get(database: string, role: string): Pool {
    const key = `${database}\0${role}`;
    let pool = this.pools.get(key);
    if (!pool) {
      const name = `${database}/${role}`;
      pool = new Pool(name, {
        size: this.config.pool.size,
        acquireTimeoutMs: this.config.pool.acquire_timeout_ms,
        idleTimeoutMs: this.config.pool.server_idle_timeout_ms,
        connect: () => this.connect(database, role),
        logger: this.logger,
      });
      this.pools.set(key, pool);
    }
    return pool;
  }

  /**
   * Readiness: the last server connection opened fine, or (none yet / the last failed)
   * some configured upstream accepts a TCP connection right now.
   */
  async anyUpstreamUp(timeoutMs = 1000): Promise<boolean> {
    if (this.lastUp === true) return true;
    const attempts = this.config.upstreams.map(
      (ep) =>
        new Promise<boolean>((resolve) => {
          const sock = net.connect({ host: ep.host, port: ep.port });
          const done = (ok: boolean) => {
            sock.destroy();
            resolve(ok);
          };
          sock.setTimeout(timeoutMs, () => done(false));
          sock.once('connect', () => done(true));
          sock.once('error', () => done(false));
        }),
    );
    return (await Promise.all(attempts)).some(Boolean);
  }

  /** New pools and new server connections use `config`; existing pools take its limits. */
  setConfig(config: Config): void {
    this.config = config;
    for (const pool of this.pools.values()) pool.setLimits(config.pool.size, config.pool.acquire_timeout_ms, config.pool.server_idle_timeout_ms);
  }

  all(): IterableIterator<Pool> {
    return this.pools.values();
  }

  closeAll(): void {
    for (const pool of this.pools.values()) pool.close();
    this.pools.clear();
  }

  /** Tries every upstream in order; a login refusal is final, an unreachable server or a standby moves on. */
  private async connect(database: string, role: string): Promise<ServerConnection> {
    const serverRole = this.config.server_roles.find((r) => r.name === role);
    if (!serverRole) throw new UpstreamError('login', `no credentials configured for server role "${role}"`);
    let last: UpstreamError | null = null;
    for (const [i, endpoint] of this.config.upstreams.entries()) {
      const label = { upstream: `${endpoint.host}:${endpoint.port}` };
      try {
        const conn = await ServerConnection.open({
          endpoint,
          user: role,
          password: serverRole.password,
          database,
          maxMessageBytes: this.config.limits.max_message_bytes,
          timeoutMs: this.config.pool.acquire_timeout_ms,
          logger: this.logger,
        });
        if (this.config.upstream.require_primary) await conn.requirePrimary();
        this.metrics.upstreamUp.set(label, 1);
        this.lastUp = true;
        if (i > 0) this.metrics.upstreamFailovers.inc();
        return conn;
      } catch (err) {
        const e = err instanceof UpstreamError ? err : new UpstreamError('unreachable', String(err));
        if (e.failure === 'login') throw e;
        this.metrics.upstreamUp.set(label, 0);
        this.logger.warn({ upstream: `${endpoint.host}:${endpoint.port}`, err: e.message }, 'upstream unreachable');
        last = e;
      }
    }
    this.lastUp = false;
    throw new UpstreamError('unreachable', last?.message ?? 'no upstream configured', last?.fields);
  }
}
