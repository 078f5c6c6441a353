// One Pool per (database, server role), created on first use, with the upstream
// connect function that tries each configured endpoint in order of preference.

import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import { ServerConnection } from '../upstream/server-connection.js';
import { UpstreamError } from '../upstream/errors.js';
import { Pool } from './pool.js';

export class PoolRegistry {
  private readonly pools = new Map<string, Pool>();

  constructor(
    private config: Config,
    private readonly logger: Logger,
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

  all(): IterableIterator<Pool> {
    return this.pools.values();
  }

  closeAll(): void {
    for (const pool of this.pools.values()) pool.close();
    this.pools.clear();
  }

  /** Tries every upstream in order; a login refusal is final, a network failure moves on. */
  private async connect(database: string, role: string): Promise<ServerConnection> {
    const serverRole = this.config.server_roles.find((r) => r.name === role);
    if (!serverRole) throw new UpstreamError('login', `no credentials configured for server role "${role}"`);
    let last: UpstreamError | null = null;
    for (const endpoint of this.config.upstreams) {
      try {
        return await ServerConnection.open({
          endpoint,
          user: role,
          password: serverRole.password,
          database,
          maxMessageBytes: this.config.limits.max_message_bytes,
          timeoutMs: this.config.pool.acquire_timeout_ms,
          logger: this.logger,
        });
      } catch (err) {
        const e = err instanceof UpstreamError ? err : new UpstreamError('unreachable', String(err));
        if (e.failure === 'login') throw e;
        this.logger.warn({ upstream: `${endpoint.host}:${endpoint.port}`, err: e.message }, 'upstream unreachable');
        last = e;
      }
    }
    throw new UpstreamError('unreachable', last?.message ?? 'no upstream configured');
  }
}
