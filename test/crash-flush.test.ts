// A crash (uncaught exception, unhandled rejection) must not lose audit events the proxy
// already accepted. A child process runs the compiled proxy with a file audit trail,
// queues many events in one tick (they sit in the write stream's buffer), then crashes.
// With `exitOnCrash` installed every event reaches the file; without it (the control)
// most are lost, which shows the test can tell the difference.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';

const EVENTS = 20_000;
const dist = path.resolve('dist');
const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-crash-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

function crashWith(how: 'throw' | 'reject', handler: boolean) {
  const audit = path.join(dir, `audit-${how}-${handler}.log`);
  const script = path.join(dir, `crash-${how}-${handler}.mjs`);
  writeFileSync(
    script,
    `import { buildConfig } from ${JSON.stringify(path.join(dist, 'config/load.js'))};
import { createLogger } from ${JSON.stringify(path.join(dist, 'logger.js'))};
import { ProxyServer } from ${JSON.stringify(path.join(dist, 'proxy/server.js'))};
import { exitOnCrash } from ${JSON.stringify(path.join(dist, 'cli/start.js'))};
const config = await buildConfig({
  listen: { host: '127.0.0.1', port: 0 },
  upstreams: [{ host: '127.0.0.1', port: 1 }],
  upstream: { health_check: { interval_ms: 600000 } },
  audit: { destination: ${JSON.stringify(audit)} },
});
const logger = createLogger('info');
const server = new ProxyServer(config, logger);
await server.start();
${handler ? 'exitOnCrash(server, logger);' : ''}
await new Promise((r) => setTimeout(r, 100)); // the audit file is open
for (let i = 0; i < ${EVENTS}; i++) server.runtime.audit.write('config.reloaded', { generation: i });
${how === 'throw' ? "throw new Error('boom');" : "Promise.reject(new Error('boom'));"}
`,
  );
  const r = spawnSync(process.execPath, [script], { encoding: 'utf8', timeout: 30_000 });
  let lines: string[] = [];
  try {
    lines = readFileSync(audit, 'utf8').split('\n').filter(Boolean);
  } catch {
    /* never opened */
  }
  return { status: r.status, stderr: r.stderr, lines };
}

for (const how of ['throw', 'reject'] as const) {
  t.test(`${how}: every accepted audit event reaches the file`, async (t) => {
    const r = crashWith(how, true);
    t.equal(r.status, 70, 'exit code 70 (EX_SOFTWARE)');
    t.equal(r.lines.length, EVENTS, `${r.lines.length} of ${EVENTS} events written`);
    t.same(JSON.parse(r.lines.at(-1)!).generation, EVENTS - 1, 'the last one included, whole');
    const fatal = r.stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.level === 60);
    t.match(fatal, { msg: /crashed; flushing the audit trail/, err: /boom/ }, 'the crash is in the operational log');
  });
}

t.test('control: without the handler the buffered events are lost', async (t) => {
  const r = crashWith('throw', false);
  t.not(r.status, 0);
  t.ok(r.lines.length < EVENTS, `${r.lines.length} of ${EVENTS} events written`);
});
