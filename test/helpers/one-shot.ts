// One client, one statement: log in to 127.0.0.1:`port` as alice (the user the upstream
// suites create), run `sql`, disconnect. The first column of the first row, or the error's
// SQLSTATE, and how long it all took.

import pg from 'pg';

export interface OneShot {
  value?: unknown;
  code?: string;
  ms: number;
}

export async function oneShot(port: number, sql: string, user = 'alice', password = 'alice-pw'): Promise<OneShot> {
  const started = Date.now();
  const c = new pg.Client({ host: '127.0.0.1', port, user, password, database: 'postgres' });
  try {
    await c.connect();
    const r = await c.query(sql);
    return { value: Object.values(r.rows[0] as object)[0], ms: Date.now() - started };
  } catch (e) {
    return { code: (e as { code?: string }).code, ms: Date.now() - started };
  } finally {
    await c.end().catch(() => {});
  }
}
