// The client-facing listener(s): accepts connections, enforces limits.max_clients, and
// hands each socket to a ClientSession. Owns the Runtime built from the loaded config.

import type http from 'node:http';
import net from 'node:net';
import { displayClientAddress } from '../hba/rules.js';
import { ConfigError, formatProblem } from '../config/load.js';
import { unservedFeatures } from '../config/unserved.js';
import { startMetricsServer } from '../metrics/http.js';
import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import * as be from '../protocol/backend.js';
import { SqlState } from '../protocol/sqlstate.js';
import { endAndLinger } from '../net/linger.js';
import { secureRandomBytes } from '../auth/random-pool.js';
import { loadPolicyParser } from '../policy/classify.js';
import { ClientSession } from '../session/client-session.js';
import { Runtime } from './runtime.js';

export class ProxyServer {
  private readonly servers: net.Server[] = [];
  /** Live sessions by their TCP socket, each removed when that socket closes. */
  private readonly sessions = new Map<net.Socket, ClientSession>();
  private readonly onSocketClosed = forgetOnClose(this.sessions);
  readonly runtime: Runtime;

  private metricsServer: http.Server | null = null;

  /** False in a worker process: the primary serves the metrics listener for all workers. */
  private readonly metricsListener: boolean;

  constructor(config: Config, logger: Logger, opts: { auditStream?: NodeJS.WritableStream; metricsListener?: boolean } = {}) {
    this.runtime = new Runtime(config, logger, { auditStream: opts.auditStream, sample: () => this.sample() });
    this.metricsListener = opts.metricsListener ?? true;
  }

  /** Client and server connections by state, for the gauges read at scrape time. */
  private sample(): { clients: Record<string, number>; servers: Record<string, number> } {
    const clients: Record<string, number> = { startup: 0, auth: 0, connecting: 0, ready: 0 };
    for (const s of this.sessions.values()) if (s.state !== 'closed') clients[s.state] = (clients[s.state] ?? 0) + 1;
    const servers = { active: 0, idle: 0, waiting_clients: 0 };
    for (const pool of this.runtime.pools.all()) {
      const st = pool.stats;
      servers.active += st.active;
      servers.idle += st.idle;
      servers.waiting_clients += st.waiting;
    }
    return { clients, servers };
  }

  /** Binds every configured listener; resolves with the bound addresses. */
  async start(): Promise<net.AddressInfo[]> {
    await loadPolicyParser(); // the SQL parser (WebAssembly) must be ready before the first client
    for (const ep of this.runtime.config.listen) {
      const server = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: ep.host, port: ep.port }, () => {
          server.off('error', reject);
          resolve();
        });
      });
      server.on('error', (err) => this.runtime.logger.error({ err }, 'listener error'));
      this.servers.push(server);
    }
    if (this.runtime.config.metrics && this.metricsListener) {
      this.metricsServer = await startMetricsServer(this.runtime.config.metrics, this.runtime.metrics.registry, () => this.runtime.pools.anyUpstreamUp());
    }
    const addrs = this.addresses();
    this.runtime.logger.info({ listen: addrs.map((a) => `${a.address}:${a.port}`) }, 'pgbastion listening');
    return addrs;
  }

  addresses(): net.AddressInfo[] {
    return this.servers.map((s) => s.address() as net.AddressInfo);
  }

  private accept(socket: net.Socket): void {
    const rt = this.runtime;
    if (rt.clients >= rt.config.limits.max_clients) return this.refuse(socket, SqlState.TOO_MANY_CONNECTIONS, 'sorry, too many clients already');
    if (rt.audit.refusesSessions) {
      // audit.on_failure: refuse — no session may start that could not be audited.
      return this.refuse(socket, SqlState.CANNOT_CONNECT_NOW, 'the audit trail is unavailable; new sessions are refused');
    }
    rt.clients++;
    const session = new ClientSession(socket, rt);
    this.sessions.set(socket, session);
    socket.on('close', this.onSocketClosed);
  }

  private refuse(socket: net.Socket, code: string, message: string): void {
    const rt = this.runtime;
    socket.on('error', () => socket.destroy());
    endAndLinger(socket, be.fatal(code, message));
    rt.metrics.denied('limit');
    rt.audit.connection(
      'session.denied',
      // (A session id of its own, as every connection gets, though no session was made for it.)
      { session_id: secureRandomBytes(6).toString('hex'), client_addr: displayClientAddress(socket.remoteAddress ?? ''), client_port: socket.remotePort ?? 0, user: null, database: null },
      { reason: 'limit', sqlstate: code, message },
    );
  }

  /**
   * SIGHUP: load → validate → build → swap. New connections see the new configuration at
   * once; sessions it no longer allows end at their next transaction boundary. A config
   * that fails at any step leaves the running one untouched. Returns whether it applied.
   */
  async reload(load: () => Promise<Config>): Promise<boolean> {
    const rt = this.runtime;
    let config: Config;
    let needsRestart: string[];
    try {
      config = await load();
      const unserved = unservedFeatures(config);
      if (unserved.refuse.length > 0) throw new Error(unserved.refuse.join('; '));
      needsRestart = rt.apply(config);
    } catch (err) {
      const message = err instanceof ConfigError ? err.problems.map(formatProblem).join('; ') : (err as Error).message;
      rt.logger.error({ err: message }, 'configuration reload failed; the running configuration is unchanged');
      rt.metrics.configReloads.inc({ result: 'failure' });
      rt.audit.write('config.reload_failed', { ...NO_CLIENT, generation: rt.generation, error: message });
      return false;
    }
    rt.metrics.configReloads.inc({ result: 'success' });
    rt.metrics.configGeneration.set(rt.generation);
    rt.audit.write('config.reloaded', { ...NO_CLIENT, generation: rt.generation, needs_restart: needsRestart });
    rt.logger.info({ generation: rt.generation, needs_restart: needsRestart }, 'configuration reloaded');
    for (const session of this.sessions.values()) session.recheck();
    return true;
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /**
   * Graceful stop: no new connections; sessions between transactions end at once (FATAL
   * 57P01), those in a transaction when it completes; after `timeoutMs` (shutdown_timeout_ms)
   * the rest are ended too. Then every server connection is closed and the audit trail flushed.
   */
  async close(timeoutMs = this.runtime.config.shutdown_timeout_ms): Promise<void> {
    // net.Server.close() waits for open connections, so end the sessions before awaiting it.
    const closed = this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve())));
    for (const session of this.sessions.values()) session.drain();
    const deadline = Date.now() + timeoutMs;
    const open = (): boolean => [...this.sessions.values()].some((s) => s.state !== 'closed');
    while (open() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    for (const session of this.sessions.values()) session.fatal(SqlState.ADMIN_SHUTDOWN, 'terminating connection due to administrator command');
    this.runtime.pools.closeAll();
    const metrics = this.metricsServer;
    if (metrics) closed.push(new Promise<void>((resolve) => metrics.close(() => resolve())));
    metrics?.closeAllConnections();
    await Promise.all(closed);
    await this.runtime.audit.close();
  }
}

/**
 * The 'close' listener of every accepted socket (`this` is the socket): one function for
 * all of them, where a closure per session cost ~0.2 KiB per idle client (bench S5).
 */
function forgetOnClose(sessions: Map<net.Socket, ClientSession>): (this: net.Socket) => void {
  return function (this: net.Socket): void {
    sessions.delete(this);
  };
}

/** SPEC §4: every event has the identity fields; a configuration event has no client, so they are null. */
const NO_CLIENT = { session_id: null, client_addr: null, client_port: null, user: null, database: null } as const;
