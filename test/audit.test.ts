// The audit sink on its own: JSON lines appended to a file, secrets censored by field name,
// a failing destination reported and retried, reopen for log rotation.

import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { Audit } from '../src/audit/audit.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-audit-unit-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const config = (destination: string) => ({ destination, ddl: true, connections: true, on_failure: 'refuse' as const });
const lines = (file: string) => readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
const who = { session_id: 's1', client_addr: '10.0.0.1', client_port: 5000, user: 'u', database: 'd' };

t.test('events are appended as JSON lines; existing content is kept', async (t) => {
  const file = path.join(dir, 'audit.log');
  writeFileSync(file, '{"event":"earlier"}\n');
  const audit = new Audit(config(file));
  audit.connection('session.start', who, { auth_method: 'scram-sha-256' });
  audit.write('policy.blocked', { ...who, variable: 'app.tenant_id', password: 'never-written', nested: { secret: 'nor-this' } });
  await audit.close();
  const got = lines(file);
  t.equal(got.length, 3);
  t.same(got[0], { event: 'earlier' });
  t.match(got[1], { event: 'session.start', session_id: 's1', client_addr: '10.0.0.1', user: 'u', auth_method: 'scram-sha-256' });
  t.match(got[1]!.time, /^\d{4}-\d\d-\d\dT/);
  t.equal(got[2]!.password, '<REDACTED>');
  t.same(got[2]!.nested, { secret: '<REDACTED>' });
  t.notOk(readFileSync(file, 'utf8').includes('never-written'));
});

t.test('connections: false and ddl: false silence their events', async (t) => {
  const file = path.join(dir, 'quiet.log');
  const audit = new Audit({ ...config(file), connections: false, ddl: false });
  audit.connection('session.end', who, {});
  audit.ddl(who, { statement: 'CREATE TABLE x ()' });
  audit.write('policy.blocked', who);
  await audit.close();
  t.same(lines(file).map((l) => l.event), ['policy.blocked']);
});

t.test('reopen() after rotation writes to a new file of the same name', async (t) => {
  const file = path.join(dir, 'rotated.log');
  const audit = new Audit(config(file));
  audit.write('policy.blocked', { n: 1 });
  await new Promise((r) => setTimeout(r, 50));
  renameSync(file, `${file}.1`);
  audit.reopen();
  audit.write('policy.blocked', { n: 2 });
  await audit.close();
  t.same(lines(`${file}.1`).map((l) => l.n), [1]);
  t.same(lines(file).map((l) => l.n), [2]);
});

t.test('an unwritable destination is reported, refuses sessions, and recovers', async (t) => {
  const target = path.join(dir, 'later');
  // A directory where the file should be: the open fails.
  const { mkdirSync } = await import('node:fs');
  mkdirSync(target);
  const failures: string[] = [];
  const audit = new Audit(config(target), (err) => failures.push(err.message));
  await new Promise((r) => setTimeout(r, 100));
  t.notOk(audit.healthy);
  t.ok(audit.refusesSessions, 'on_failure: refuse');
  t.ok(failures.length >= 1, 'failure reported');
  audit.write('policy.blocked', { dropped: true }); // must not throw
  rmSync(target, { recursive: true });
  await new Promise((r) => setTimeout(r, 2300));
  t.ok(audit.healthy, 'reopened once the path is writable');
  t.notOk(audit.refusesSessions);
  await audit.close();
});
