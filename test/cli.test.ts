// The `pgbastion` binary as users run it (compiled dist/, separate process): check,
// scram-secret (its output accepted by PostgreSQL itself), hba explain, start/SIGTERM.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import pg from 'pg';
import { freePort, startPostgres } from './helpers/postgres.js';

const BIN = path.resolve('dist/cli/main.js');
const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbastion-cli-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

function cli(args: string[], opts: { input?: string; env?: Record<string, string>; cwd?: string } = {}) {
  const { PGBASTION_CONFIG: _ignored, ...env } = process.env;
  return spawnSync(process.execPath, [BIN, ...args], { input: opts.input ?? '', encoding: 'utf8', env: { ...env, ...opts.env }, timeout: 30_000, cwd: opts.cwd });
}

function writeConfig(name: string, text: string): string {
  const file = path.join(dir, name);
  writeFileSync(file, text);
  return file;
}

const SECRET = 'SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXowMTIzNDU=:YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXowMTIzNDU=';
const VALID = `listen: { host: 127.0.0.1, port: 6432 }
upstreams: [{ host: 127.0.0.1, port: 5432 }]
users:
  - { name: app, secret: "${SECRET}", server_role: app_rw }
server_roles:
  - { name: app_rw, password: "\${env:APP_RW_PW}" }
hba:
  - { type: host, database: all, user: app, address: 10.0.0.0/8, method: scram-sha-256 }
  - { type: host, database: all, user: all, address: all, method: reject }
`;

t.test('check: a valid file exits 0 with a summary', async (t) => {
  const r = cli(['check', '-c', writeConfig('valid.yaml', VALID)], { env: { APP_RW_PW: 'pw' } });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /^config OK: 1 listener, 1 upstream, 1 user, 2 hba rules/);
});

t.test('check: unknown key, wrong type and missing ${env:} exit 1, each named', async (t) => {
  const bad = VALID.replace('listen: { host: 127.0.0.1, port: 6432 }', 'listen: { host: 127.0.0.1, port: "many" }\nlisten_backlog: 5');
  const r = cli(['check', '-c', writeConfig('bad.yaml', bad)]);
  t.equal(r.status, 1);
  const all = r.stdout + r.stderr;
  t.match(all, /listen_backlog: .*(unknown|not allowed).*line 2/i, 'unknown key named with its line');
  t.match(all, /listen\.port: .*integer.*line 1/i, 'wrong type named with its line');
  t.match(all, /server_roles\[0\]\.password: environment variable APP_RW_PW is not set/, 'missing env named');
  t.notMatch(all, /config OK/);
});

t.test('check: a file that does not exist exits 1', async (t) => {
  const r = cli(['check', '-c', path.join(dir, 'nope.yaml')]);
  t.equal(r.status, 1);
  t.match(r.stderr + r.stdout, /nope\.yaml/);
});

t.test('scram-secret: PostgreSQL accepts the secret it prints', async (t) => {
  const pgs = await startPostgres();
  t.teardown(() => pgs.stop());
  const r = cli(['scram-secret'], { input: 'correct horse battery staple\n' });
  t.equal(r.status, 0, r.stderr);
  const secret = r.stdout.trim();
  t.match(secret, /^SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$/);
  t.notMatch(r.stdout + r.stderr, /horse/, 'the password is never echoed');
  await pgs.query(`CREATE ROLE secret_user LOGIN PASSWORD '${secret}'`);
  const stored = await pgs.query<{ rolpassword: string }>("SELECT rolpassword FROM pg_authid WHERE rolname = 'secret_user'");
  t.equal(stored.rows[0]!.rolpassword, secret, 'stored verbatim, not re-hashed');
  const ok = new pg.Client({ host: pgs.host, port: pgs.port, user: 'secret_user', password: 'correct horse battery staple', database: 'postgres' });
  await ok.connect();
  t.equal((await ok.query('SELECT current_user AS u')).rows[0].u, 'secret_user', 'login with the password works');
  await ok.end();
  const wrong = new pg.Client({ host: pgs.host, port: pgs.port, user: 'secret_user', password: 'wrong', database: 'postgres' });
  await t.rejects(wrong.connect(), { code: '28P01' });
  await wrong.end().catch(() => {});
});

t.test('scram-secret: iterations option and empty input', async (t) => {
  t.match(cli(['scram-secret', '--iterations', '10000'], { input: 'pw\n' }).stdout, /^SCRAM-SHA-256\$10000:/);
  const empty = cli(['scram-secret'], { input: '' });
  t.equal(empty.status, 1);
});

t.test('hba explain: first match wins, default deny', async (t) => {
  const file = writeConfig('explain.yaml', VALID);
  const env = { APP_RW_PW: 'pw' };
  const hit = cli(['hba', 'explain', '-c', file, '--user', 'app', '--database', 'db', '--address', '10.1.2.3'], { env });
  t.equal(hit.status, 0, hit.stderr);
  t.match(hit.stdout, /rule #1 .*-> scram-sha-256\ndecision: authenticate with SCRAM-SHA-256/);
  const rejected = cli(['hba', 'explain', '-c', file, '--user', 'app', '--database', 'db', '--address', '192.168.1.1'], { env });
  t.match(rejected.stdout, /rule #2 .*-> reject\ndecision: reject/);
  const missing = cli(['hba', 'explain', '-c', file, '--user', 'app'], { env });
  t.equal(missing.status, 1);
  t.match(missing.stderr, /missing --database, --address/);
});

t.test('start: bad config exits 1; SIGTERM stops a running proxy with exit 0', async (t) => {
  const bad = cli(['start', '-c', writeConfig('bad-start.yaml', 'listen: 5\n')]);
  t.equal(bad.status, 1);
  const port = await freePort();
  const file = writeConfig('start.yaml', VALID.replace('port: 6432', `port: ${port}`));
  const child = spawn(process.execPath, [BIN, 'start', '-c', file], { env: { ...process.env, APP_RW_PW: 'pw' }, stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => child.kill('SIGKILL'));
  let log = '';
  child.stderr.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  for (let i = 0; i < 100 && !log.includes('pgbastion listening'); i++) await new Promise((r) => setTimeout(r, 50));
  t.match(log, /pgbastion listening/);
  await new Promise<void>((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => (s.destroy(), resolve()));
    s.once('error', reject);
  });
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'exit 0 after SIGTERM');
});

t.test('hba_file is checked at load: check, start and hba explain exit 1 naming the problem', async (t) => {
  const env = { APP_RW_PW: 'pw' };
  const withHbaFile = VALID.replace(/^hba:\n(  - .*\n)+/m, 'hba_file: hba-file.conf\n');
  const file = writeConfig('hba-file.yaml', withHbaFile);
  const explainArgs = ['hba', 'explain', '-c', file, '--user', 'app', '--database', 'db', '--address', '10.1.2.3'];
  const hbaPath = path.join(dir, 'hba-file.conf');
  for (const [what, content, want] of [
    ['missing', undefined, /hba_file: cannot read .*hba-file\.conf: no such file/],
    ['md5 line', 'host all all 10.0.0.0/8 scram-sha-256\nhost all all all md5\n', /hba_file: .*hba-file\.conf:2: method md5 is not served by pgbastion/],
    ['bad method', 'host all all all kerberos\n', /hba_file: .*hba-file\.conf:1: invalid authentication method "kerberos"/],
  ] as const) {
    rmSync(hbaPath, { force: true });
    if (content !== undefined) writeFileSync(hbaPath, content);
    for (const args of [['check', '-c', file], ['start', '-c', file], explainArgs]) {
      const r = cli(args, { env });
      t.equal(r.status, 1, `${what}: ${args[0]} exits 1`);
      t.match(r.stderr, want, `${what}: ${args[0]} names the problem`);
    }
  }
  writeFileSync(hbaPath, 'host all all 10.0.0.0/8 scram-sha-256\n');
  const ok = cli(['check', '-c', file], { env });
  t.equal(ok.status, 0, ok.stderr);
  t.match(ok.stdout, /^config OK: .*hba_file .*hba-file\.conf/);
});

t.test('start: -c, --config FILE and --config=FILE read FILE; any other argument is refused', async (t) => {
  // Run where no config/pgbastion.yaml exists, so falling back to the default would show.
  const file = writeConfig('start-args.yaml', 'listen: 5\n');
  for (const args of [['-c', file], ['--config', file], [`--config=${file}`]]) {
    const r = cli(['start', ...args], { cwd: dir });
    t.equal(r.status, 1, args.join(' '));
    t.match(r.stderr, /invalid config .*start-args\.yaml/, `${args.join(' ')}: the given file is read`);
  }
  for (const args of [['-c', file, '--bogus'], ['-c', file, 'extra'], ['--verbose'], ['-c']]) {
    const r = cli(['start', ...args], { cwd: dir });
    t.equal(r.status, 1, args.join(' '));
    t.match(r.stderr, /^pgbastion start: (unknown argument|-c needs a file name)/, `${args.join(' ')}: refused before loading anything`);
  }
});

t.test('hba explain: an address that is not an IP address is an error, exit 1', async (t) => {
  const file = writeConfig('explain-addr.yaml', VALID);
  for (const address of ['garbage', '10.1.2', '::ffff:1.2.3', 'unix']) {
    const r = cli(['hba', 'explain', '-c', file, '--user', 'app', '--database', 'db', '--address', address], { env: { APP_RW_PW: 'pw' } });
    t.equal(r.status, 1, address);
    t.match(r.stderr, /--address needs an IPv4 or IPv6 address/, address);
    t.equal(r.stdout, '', `${address}: no decision printed`);
  }
});

t.test('usage errors exit 1, --help exits 0', async (t) => {
  t.equal(cli(['frobnicate']).status, 1);
  t.equal(cli(['--help']).status, 0);
  for (const cmd of ['start', 'check', 'scram-secret', 'certs', 'hba']) {
    const r = cli([cmd, '--help']);
    t.equal(r.status, 0, `${cmd} --help`);
    t.match(r.stdout, /usage: pgbastion/);
  }
});

t.test('TLS files that do not load: check and start refuse rather than serve without TLS', async (t) => {
  const file = writeConfig('tls.yaml', VALID + 'tls: { cert: missing.crt, key: missing.key }\n');
  const env = { APP_RW_PW: 'pw' };
  const check = cli(['check', '-c', file], { env });
  t.equal(check.status, 1);
  t.match(check.stderr, /tls: cannot use the certificate, key or CA files: .*missing\.crt/);
  const start = cli(['start', '-c', file], { env });
  t.equal(start.status, 1, 'start refuses');
  t.match(start.stderr, /tls: cannot use/);
});

t.test('check refuses an upstream CA that does not load; verify-full needs one', async (t) => {
  const env = { APP_RW_PW: 'pw' };
  const missing = cli(['check', '-c', writeConfig('up-ca.yaml', VALID + 'upstream: { tls: { mode: verify-full, ca: /nonexistent/ca.crt } }\n')], { env });
  t.equal(missing.status, 1, 'without the CA, verify-full could not verify anything: refused');
  t.match(missing.stderr, /upstream\.tls: cannot use the CA file: .*nonexistent/);
  const noCa = cli(['check', '-c', writeConfig('up-noca.yaml', VALID + 'upstream: { tls: { mode: verify-full } }\n')], { env });
  t.equal(noCa.status, 1);
  t.match(noCa.stderr, /upstream\.tls\.ca.*required when mode is verify-full/);
  const ok = cli(['check', '-c', writeConfig('up-proxy.yaml', VALID + 'upstream: { send_proxy_protocol: true, tls: { mode: require } }\n')], { env });
  t.equal(ok.status, 0, ok.stderr);
});
