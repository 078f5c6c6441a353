// Test harness: a pgbastion in this process, in front of a harness PostgreSQL, with a
// server role and proxy users created for the test. Stopped in teardown.

import { Writable } from 'node:stream';
import type { Test } from 'tap';
import { makeScramSecret } from '../../src/auth/scram.js';
import { buildConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';
import { createLogger } from '../../src/logger.js';
import { ProxyServer } from '../../src/proxy/server.js';
import type { PgServer } from './postgres.js';

export const SERVER_ROLE = 'app_rw';
export const SERVER_ROLE_PASSWORD = 'server-role-pw';

/** Creates the server role the proxy logs in as (idempotent). */
export async function createServerRole(pgs: PgServer, role = SERVER_ROLE, password = SERVER_ROLE_PASSWORD): Promise<void> {
  await pgs.query(
    `DO $$ BEGIN
       IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${role}') THEN
         CREATE ROLE ${role} LOGIN PASSWORD '${password}';
       END IF;
     END $$`,
  );
  await pgs.query(`GRANT ALL ON SCHEMA public TO ${role}`);
}

/**
 * Ends every server connection of `role` and waits until PostgreSQL has seen them go, and the
 * proxy has had time to hear it. (pg_terminate_backend only sends the signal: work handed to
 * such a connection straight after it returns meets a backend that is exiting.)
 */
export async function endServerConnections(pgs: PgServer, role = SERVER_ROLE): Promise<void> {
  await pgs.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [role]);
  const until = Date.now() + 5000;
  while (Date.now() < until) {
    const left = await pgs.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1', [role]);
    if (left.rows[0]!.n === 0) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  await new Promise((r) => setTimeout(r, 100));
}

export interface TestUser {
  name: string;
  password: string;
  server_role?: string;
  pins?: Record<string, string>;
  valid_until?: string;
}

/** Captures the operational log as parsed JSON objects. */
export class LogCapture extends Writable {
  readonly lines: Record<string, unknown>[] = [];
  override _write(chunk: Buffer, _enc: string, cb: () => void): void {
    for (const line of chunk.toString().split('\n')) if (line) this.lines.push(JSON.parse(line) as Record<string, unknown>);
    cb();
  }
}

export interface RunningProxy {
  port: number;
  server: ProxyServer;
  config: Config;
  log: LogCapture;
  /** Audit events (JSON objects) in the order written. */
  audit: LogCapture;
  url(user: string, password: string, database?: string): string;
}

export async function startProxy(
  t: Test,
  pgs: PgServer,
  opts: { users: TestUser[]; extra?: Record<string, unknown>; extraUsers?: Record<string, unknown>[] },
): Promise<RunningProxy> {
  const users = await Promise.all(
    opts.users.map(async (u) => ({
      name: u.name,
      secret: await makeScramSecret(u.password),
      server_role: u.server_role ?? SERVER_ROLE,
      ...(u.pins ? { pins: u.pins } : {}),
      ...(u.valid_until ? { valid_until: u.valid_until } : {}),
    })),
  );
  const config = await buildConfig({
    listen: { host: '127.0.0.1', port: 0 },
    upstreams: [{ host: pgs.host, port: pgs.port }],
    pool: { mode: 'session', size: 10 },
    users: [...users, ...(opts.extraUsers ?? [])],
    server_roles: [{ name: SERVER_ROLE, password: SERVER_ROLE_PASSWORD }],
    hba: [{ type: 'host', database: 'all', user: 'all', address: 'all', method: 'scram-sha-256' }],
    log_level: 'debug',
    pinning: { variables: ['app.tenant_id'] },
    ...opts.extra,
  });
  const log = new LogCapture();
  const audit = new LogCapture();
  const server = new ProxyServer(config, createLogger(config.log_level, log), { auditStream: audit });
  const [addr] = await server.start();
  t.teardown(() => server.close());
  const port = addr!.port;
  return {
    port,
    server,
    config,
    log,
    audit,
    url: (user, password, database = 'postgres') =>
      `postgresql://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${port}/${database}?sslmode=disable`,
  };
}
