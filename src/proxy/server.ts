// The client-facing listener(s): accepts connections, enforces limits.max_clients, and
// hands each socket to a ClientSession. Owns the Runtime built from the loaded config.

import net from 'node:net';
import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import * as be from '../protocol/backend.js';
import { SqlState } from '../protocol/sqlstate.js';
import { endAndLinger } from '../net/linger.js';
import { loadPolicyParser } from '../policy/classify.js';
import { ClientSession } from '../session/client-session.js';
import { Runtime } from './runtime.js';

export class ProxyServer {
  private readonly servers: net.Server[] = [];
  private readonly sessions = new Set<ClientSession>();
  readonly runtime: Runtime;

  constructor(config: Config, logger: Logger) {
    this.runtime = new Runtime(config, logger);
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
    const addrs = this.addresses();
    this.runtime.logger.info({ listen: addrs.map((a) => `${a.address}:${a.port}`) }, 'pgbastion listening');
    return addrs;
  }

  addresses(): net.AddressInfo[] {
    return this.servers.map((s) => s.address() as net.AddressInfo);
  }

  private accept(socket: net.Socket): void {
    const rt = this.runtime;
    if (rt.clients >= rt.config.limits.max_clients) {
      socket.on('error', () => socket.destroy());
      endAndLinger(socket, be.fatal(SqlState.TOO_MANY_CONNECTIONS, 'sorry, too many clients already'));
      return;
    }
    rt.clients++;
    const session = new ClientSession(socket, rt);
    this.sessions.add(session);
    socket.once('close', () => this.sessions.delete(session));
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /** Stops listening, ends every session and closes every server connection. */
  async close(): Promise<void> {
    // net.Server.close() waits for open connections, so end the sessions before awaiting it.
    const closed = this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve())));
    for (const session of this.sessions) session.fatal(SqlState.ADMIN_SHUTDOWN, 'terminating connection due to administrator command');
    this.runtime.pools.closeAll();
    await Promise.all(closed);
  }
}
