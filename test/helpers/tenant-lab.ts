// Two pinned tenants sharing ONE server connection, over a table whose row-level security
// follows app.tenant_id: the setting the inline-switch tests attack.

import type { Test } from 'tap';
import pg from 'pg';
import { freePort, startPostgres, type PgServer } from './postgres.js';
import { createServerRole, SERVER_ROLE, startProxy, type RunningProxy } from './proxy.js';

export const TENANTS = [
  { name: 'tenant_a', password: 'pw-a', pins: { 'app.tenant_id': 'a' } },
  { name: 'tenant_b', password: 'pw-b', pins: { 'app.tenant_id': 'b' } },
];

/** PostgreSQL with `notes` (tenant, body) under RLS, and a transaction-mode proxy with a pool of 1. Stopped in teardown. */
export async function tenantLab(t: Test): Promise<{ pgs: PgServer; proxy: RunningProxy; metricsPort: number }> {
  const pgs = await startPostgres();
  t.teardown(() => pgs.stop());
  await createServerRole(pgs);
  await pgs.query(`
    CREATE TABLE notes (tenant text NOT NULL DEFAULT current_setting('app.tenant_id', true), body text);
    ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
    CREATE POLICY by_tenant ON notes USING (tenant = current_setting('app.tenant_id', true)) WITH CHECK (tenant = current_setting('app.tenant_id', true));
    GRANT SELECT, INSERT ON notes TO ${SERVER_ROLE};
  `);
  const metricsPort = await freePort();
  const proxy = await startProxy(t, pgs, {
    users: TENANTS,
    extra: { pool: { mode: 'transaction', size: 1, acquire_timeout_ms: 5000 }, metrics: { host: '127.0.0.1', port: metricsPort } },
  });
  return { pgs, proxy, metricsPort };
}

/** A logged-in client of tenant `who` on the proxy at 127.0.0.1:`port`, ended in teardown. */
export async function tenantClient(t: Test, port: number, who: 'a' | 'b'): Promise<pg.Client> {
  const c = new pg.Client({ host: '127.0.0.1', port, user: `tenant_${who}`, password: `pw-${who}`, database: 'postgres' });
  c.on('error', () => undefined);
  await c.connect();
  t.teardown(() => c.end().catch(() => undefined));
  return c;
}

/**
 * What `c`'s next statement runs with: its pin (or `error <SQLSTATE>`), its server backend,
 * and how long it took (a client queued for the pool's one connection waits).
 */
export async function pinNow(c: pg.Client): Promise<{ pin: string; pid: number | null; ms: number }> {
  const started = Date.now();
  const got = await c.query<{ pin: string; pid: number }>("SELECT current_setting('app.tenant_id') AS pin, pg_backend_pid() AS pid").then(
    (x) => ({ pin: x.rows[0]!.pin, pid: x.rows[0]!.pid }),
    (e: { code?: string }) => ({ pin: `error ${e.code}`, pid: null }),
  );
  return { ...got, ms: Date.now() - started };
}
