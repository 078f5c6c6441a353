// A real HAProxy (Debian package `haproxy`) for tests: runs `config` in the foreground with
// a free port substituted for every {PORT}; stopped in teardown. Its log (stdout and
// stderr) is kept for assertions.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './postgres.js';

export interface RunningHaproxy {
  port: number;
  log(): string;
}

export async function startHaproxy(t: { teardown(f: () => unknown): void }, config: string): Promise<RunningHaproxy> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-haproxy-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  const file = path.join(dir, 'haproxy.cfg');
  writeFileSync(file, config.replaceAll('{PORT}', String(port)));
  const child = spawn('haproxy', ['-f', file, '-db'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (d: Buffer) => (log += d.toString()));
  child.stderr.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise((r) => child.once('exit', r));
  t.teardown(async () => {
    child.kill('SIGTERM');
    await exited;
  });
  // Ready once it accepts connections.
  const deadline = Date.now() + 10_000;
  while (!(await accepts(port))) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`haproxy did not start:\n${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { port, log: () => log };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
