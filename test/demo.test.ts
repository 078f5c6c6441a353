// The README's first command: `npm run demo` brings up PostgreSQL and pgbastion and prints
// a psql connection string that works, with the user's pin visible under RLS.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { freePort, pgBin } from './helpers/postgres.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-demo-'));
const env = { ...process.env, DEMO_DIR: dir, DEMO_PORT: String(await freePort()), DEMO_PG_PORT: String(await freePort()), DEMO_METRICS_PORT: String(await freePort()) };
const script = path.resolve('scripts/demo.sh');
t.teardown(() => {
  spawnSync('bash', [script, '--stop'], { env, stdio: 'ignore', timeout: 30_000 });
  rmSync(dir, { recursive: true, force: true });
});

t.test('demo --detach prints a psql connection string that works', async (t) => {
  const demo = spawnSync('bash', [script, '--detach'], { env, encoding: 'utf8', timeout: 180_000 });
  t.equal(demo.status, 0, demo.status === 0 ? "demo exits 0" : demo.stderr);
  const url = /psql "(postgresql:\/\/[^"]+)"/.exec(demo.stdout)?.[1];
  t.ok(url, 'connection string printed');
  if (!url) return;
  const psql = spawnSync(pgBin('psql'), ['-X', '-At', '-v', 'ON_ERROR_STOP=1', url, '-c', 'SELECT body FROM notes', '-c', 'SHOW app.tenant_id', '-c', 'SELECT current_user'], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  t.equal(psql.status, 0, psql.stderr);
  t.same(psql.stdout.trim().split('\n'), ['visible to tenant demo', 'demo', 'app_rw'], 'RLS shows only the pinned tenant');
});
