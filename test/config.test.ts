// Tests for the config loader (src/config/load.ts) and `pgbastion check` (src/cli/check.ts).
// Fixtures are YAML strings written into per-test temporary folders with t.testdir().

import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import {
  buildConfig,
  buildConfigWithWarnings,
  ConfigError,
  loadConfigFile,
  loadConfigFileWithWarnings,
  loadConfigText,
  loadConfigTextWithWarnings,
  type ConfigProblem,
} from '../src/config/load.js';
import { runCheck } from '../src/cli/check.js';

const b64 = (n: number) => randomBytes(n).toString('base64');
const SECRET = `SCRAM-SHA-256$4096:${b64(16)}$${b64(32)}:${b64(32)}`;
const UPSTREAMS = [{ host: '127.0.0.1', port: 5433 }];

/** A small valid config (20 lines, hba last so tests can append rules or top-level keys at line 21). */
const VALID_YAML = `listen: { host: 127.0.0.1, port: 6432 }
upstreams:
  - { host: 127.0.0.1, port: 5433 }
users:
  - name: tenant_a_app
    secret: "${SECRET}"
    server_role: app_rw
    pins: { app.tenant_id: "a" }
  - name: tenant_b_app
    secret: "${SECRET}"
    server_role: app_rw
    pins: { app.tenant_id: "b" }
server_roles:
  - { name: app_rw, password: "\${env:APP_RW_PASSWORD}" }
pinning:
  variables: [app.tenant_id]
hba:
  - { type: hostnossl, database: all, user: all, address: all, method: reject }
  - { type: host, database: all, user: all, address: 127.0.0.1/32, method: trust }
  - { type: host, database: all, user: all, address: all, method: scram-sha-256 }
`;

const ENV = { APP_RW_PASSWORD: 'rw-pass-do-not-print' };

async function problemsOf(p: Promise<unknown>): Promise<ConfigProblem[]> {
  try {
    await p;
  } catch (e) {
    if (e instanceof ConfigError) return e.problems;
    throw e;
  }
  throw new Error('expected a ConfigError');
}

const text = (yaml: string, env: NodeJS.ProcessEnv = ENV) => loadConfigText(yaml, { baseDir: '/cfg', env });
const find = (ps: ConfigProblem[], path: string) => ps.find((p) => p.path === path);

t.test('defaults fill every optional section', async (t) => {
  const c = await buildConfig({ upstreams: UPSTREAMS });
  t.same(c.listen, [{ host: '127.0.0.1', port: 6432 }]);
  t.same(c.upstream, {
    tls: { mode: 'disable' },
    send_proxy_protocol: false,
    require_primary: true,
    health_check: { interval_ms: 2000, timeout_ms: 1000, database: 'postgres' },
  });
  t.same(c.pool, { mode: 'transaction', size: 20, acquire_timeout_ms: 5000, server_idle_timeout_ms: 600000, idle_transaction_timeout_ms: 0, affinity_ms: 0, max_sticky_per_user: 0, sticky_idle_timeout_ms: 0 });
  t.same(c.users, []);
  t.same(c.server_roles, []);
  t.same(c.cert_map, []);
  t.same(c.pinning, { variables: [] });
  t.same(c.audit, { destination: 'stdout', ddl: true, connections: true, on_failure: 'continue' });
  t.same(c.limits, {
    max_clients: 10000,
    startup_timeout_ms: 5000,
    max_message_bytes: 67108864,
    max_prepared_bytes: 16777216,
    auth_failures: { max: 5, window_s: 60, lockout_s: 300 },
  });
  t.equal(c.log_level, 'info');
  t.equal(c.workers, 1);
  t.equal(c.shutdown_timeout_ms, 10000);
  t.equal(c.tls, undefined);
  t.equal(c.hba, undefined);
  t.equal(c.source, undefined);
  const tls = await buildConfig({ upstreams: UPSTREAMS, tls: { cert: 'a.crt', key: 'a.key' } }, { baseDir: '/x' });
  t.same(tls.tls, { cert: '/x/a.crt', key: '/x/a.key', min_version: 'TLSv1.2' });
});

t.test('listen is normalised to a list', async (t) => {
  const cases: [string, unknown, unknown][] = [
    ['single object', { host: '0.0.0.0', port: 0 }, [{ host: '0.0.0.0', port: 0 }]],
    ['list', [{ host: 'a', port: 1 }, { host: 'b', port: 2 }], [{ host: 'a', port: 1 }, { host: 'b', port: 2 }]],
  ];
  for (const [name, listen, want] of cases) {
    t.same((await buildConfig({ listen, upstreams: UPSTREAMS })).listen, want, name);
  }
  const ps = await problemsOf(buildConfig({ listen: [], upstreams: UPSTREAMS }));
  t.same(ps.map((p) => `${p.path}: ${p.message}`), ['listen: must not be empty']);
  const bad = await problemsOf(buildConfig({ listen: { host: 'a', port: 70000 }, upstreams: UPSTREAMS }));
  t.same(bad.map((p) => `${p.path}: ${p.message}`), ['listen.port: must be <= 65535']);
});

t.test('schema problems carry paths, human messages and line:column', async (t) => {
  const cases: { name: string; yaml: string; want: ConfigProblem[] }[] = [
    {
      name: 'unknown top-level key',
      yaml: VALID_YAML + 'lisen: { host: x, port: 1 }\n',
      want: [{ path: 'lisen', message: 'unknown key', line: 21, column: 1 }],
    },
    {
      name: 'unknown nested key',
      yaml: VALID_YAML + 'pool:\n  mode: session\n  siez: 3\n',
      want: [{ path: 'pool.siez', message: 'unknown key', line: 23, column: 3 }],
    },
    {
      name: 'unknown key in a list item',
      yaml: VALID_YAML.replace('server_role: app_rw\n    pins: { app.tenant_id: "a" }', 'server_role: app_rw\n    pin: {}'),
      want: [{ path: 'users[0].pin', message: 'unknown key', line: 8, column: 5 }],
    },
    {
      name: 'wrong type',
      yaml: VALID_YAML + 'pool:\n  size: twenty\n',
      want: [{ path: 'pool.size', message: 'must be integer', line: 22, column: 9 }],
    },
    {
      name: 'out of range',
      yaml: VALID_YAML + 'pool: { affinity_ms: 5000 }\n',
      want: [{ path: 'pool.affinity_ms', message: 'must be <= 1000', line: 21, column: 22 }],
    },
    {
      name: 'bad enum',
      yaml: VALID_YAML + 'pool: { mode: statement }\n',
      want: [{ path: 'pool.mode', message: 'must be one of transaction, session', line: 21, column: 15 }],
    },
    {
      name: 'missing required key points at its parent',
      yaml: VALID_YAML.replace('{ name: app_rw, password: "${env:APP_RW_PASSWORD}" }', '{ name: app_rw }'),
      want: [{ path: 'server_roles[0].password', message: 'is required', line: 14, column: 5 }],
    },
    {
      name: 'hba address required unless local',
      yaml: VALID_YAML + '  - { type: host, database: all, user: all, method: reject }\n',
      want: [{ path: 'hba[3].address', message: 'is required', line: 21, column: 5 }],
    },
    {
      name: 'bad valid_until',
      yaml: VALID_YAML.replace('pins: { app.tenant_id: "a" }', 'valid_until: next tuesday'),
      want: [{ path: 'users[0].valid_until', message: 'must be a date/time like 2027-12-31T00:00:00Z', line: 8, column: 18 }],
    },
  ];
  for (const c of cases) t.same(await problemsOf(text(c.yaml)), c.want, c.name);
});

t.test('upstreams is required and non-empty', async (t) => {
  t.same(await problemsOf(buildConfig({})), [{ path: 'upstreams', message: 'is required' }]);
  t.same(await problemsOf(buildConfig({ upstreams: [] })), [{ path: 'upstreams', message: 'must not be empty' }]);
  const empty = await problemsOf(text(''));
  t.match(empty[0]!.message, /empty/);
});

t.test('YAML syntax errors are problems with positions', async (t) => {
  const ps = await problemsOf(text('upstreams:\n  - { host: a, port: 1\npool: [\n'));
  t.ok(ps.length >= 1);
  t.type(ps[0]!.line, 'number');
  const dup = await problemsOf(text('upstreams: []\nupstreams: []\n'));
  t.equal(dup[0]!.line, 2, 'duplicate keys are refused');
});

t.test('${env:} references', async (t) => {
  const c = await text(VALID_YAML);
  t.equal(c.server_roles[0]!.password, 'rw-pass-do-not-print', 'whole value');

  const embedded = await text(
    VALID_YAML.replace('password: "${env:APP_RW_PASSWORD}"', 'password: "pre-${env:APP_RW_PASSWORD}-${env:SUFFIX}"'),
    { ...ENV, SUFFIX: 'z' },
  );
  t.equal(embedded.server_roles[0]!.password, 'pre-rw-pass-do-not-print-z', 'embedded and repeated');

  const other = { OTHER_SECRET: 'hunter2-other', ...ENV };
  const yaml = VALID_YAML.replace('"${env:APP_RW_PASSWORD}"', '"${env:MISSING_PW}"').replace(
    `secret: "${SECRET}"\n    server_role: app_rw\n    pins: { app.tenant_id: "b" }`,
    'secret: "${env:OTHER_SECRET}"\n    server_role: app_rw',
  );
  const err = (await text(yaml, other).then(
    () => undefined,
    (e: unknown) => e,
  )) as ConfigError;
  t.type(err, ConfigError);
  const p = find(err.problems, 'server_roles[0].password');
  t.match(p, { message: 'environment variable MISSING_PW is not set', line: 13 });
  // The secret that did resolve fails the SCRAM format check; neither message may carry its value.
  t.ok(find(err.problems, 'users[1].secret'));
  t.notMatch(err.message, /hunter2-other|rw-pass-do-not-print/, 'no secret value in the error');
  t.notMatch(JSON.stringify(err.problems), /hunter2-other|rw-pass-do-not-print/);

  const unknownRef = await problemsOf(text(VALID_YAML.replace('${env:APP_RW_PASSWORD}', '${APP_RW_PASSWORD}')));
  t.match(unknownRef, [{ path: 'server_roles[0].password', message: /unsupported/ }]);
});

t.test('${file:} references resolve relative to the config folder and drop one newline', async (t) => {
  const dir = t.testdir({
    'pw.txt': 'file-pass\n\n',
    'secret.txt': `${SECRET}\r\n`,
    'pgbastion.yaml': VALID_YAML.replace('"${env:APP_RW_PASSWORD}"', '"${file:pw.txt}"').replace(
      `secret: "${SECRET}"`,
      'secret: "${file:secret.txt}"',
    ),
  });
  const c = await loadConfigFile(join(dir, 'pgbastion.yaml'), {});
  t.equal(c.server_roles[0]!.password, 'file-pass\n', 'only one trailing newline trimmed');
  t.equal(c.users[0]!.secret, SECRET, 'CRLF trimmed too');

  const missing = await problemsOf(
    text(VALID_YAML.replace('"${env:APP_RW_PASSWORD}"', '"${file:/nonexistent/pw}"')),
  );
  t.match(missing, [{ path: 'server_roles[0].password', message: /cannot read file \/nonexistent\/pw: no such file/ }]);
});

t.test('pin templates are left verbatim; other references in pins are problems', async (t) => {
  const pins = '{ app.tenant_id: "${user}/${database}/${cert.cn}/${cert.o}/${cert.ou}" }';
  const c = await text(VALID_YAML.replace('{ app.tenant_id: "a" }', pins));
  t.equal(c.users[0]!.pins['app.tenant_id'], '${user}/${database}/${cert.cn}/${cert.o}/${cert.ou}');

  const ps = await problemsOf(text(VALID_YAML.replace('{ app.tenant_id: "a" }', '{ app.tenant_id: "${env:HOME}" }')));
  t.match(ps, [{ path: 'users[0].pins["app.tenant_id"]', message: /unsupported template/, line: 8 }]);
});

t.test('semantic cross-checks', async (t) => {
  const cases: { name: string; yaml: string; want: { path: string; message: RegExp; line?: number; column?: number } }[] = [
    {
      name: 'server_role must exist',
      yaml: VALID_YAML.replace('server_role: app_rw\n    pins: { app.tenant_id: "a" }', 'server_role: nope\n    pins: { app.tenant_id: "a" }'),
      want: { path: 'users[0].server_role', message: /server role nope is not defined/, line: 7 },
    },
    {
      name: 'pins key must be a pinning variable',
      yaml: VALID_YAML.replace('{ app.tenant_id: "a" }', '{ app.tenant_id: "a", app.role: "x" }'),
      want: { path: 'users[0].pins["app.role"]', message: /not listed in pinning.variables/, line: 8, column: 33 },
    },
    {
      name: 'a user name longer than 63 bytes (PostgreSQL cuts clients\' names to that)',
      yaml: VALID_YAML.replace('server_role: app_rw\n    pins: { app.tenant_id: "a" }', 'server_role: app_rw\n    pins: { app.tenant_id: "a" }').replace(/name: (\w+)\n(\s+)secret/, `name: ${'u'.repeat(64)}\n$2secret`),
      want: { path: 'users[0].name', message: /longer than 63 bytes/ },
    },
    {
      name: 'secret format',
      yaml: VALID_YAML.replace(`secret: "${SECRET}"`, `secret: "SCRAM-SHA-256$4096:${b64(16)}$${b64(16)}:${b64(32)}"`),
      want: { path: 'users[0].secret', message: /must be a SCRAM-SHA-256 secret/, line: 6 },
    },
    {
      name: 'zero iterations',
      yaml: VALID_YAML.replace(`secret: "${SECRET}"`, `secret: "SCRAM-SHA-256$0:${b64(16)}$${b64(32)}:${b64(32)}"`),
      want: { path: 'users[0].secret', message: /must be a SCRAM-SHA-256 secret/ },
    },
    {
      name: 'md5 rule refused',
      yaml: VALID_YAML + '  - { type: host, database: all, user: all, address: all, method: md5 }\n',
      want: { path: 'hba[3].method', message: /method md5 is not served by pgbastion/, line: 21 },
    },
    {
      name: 'unknown method keyword',
      yaml: VALID_YAML + '  - { type: host, database: all, user: all, address: all, method: kerberos }\n',
      want: { path: 'hba[3].method', message: /must be one of trust, reject, scram-sha-256/ },
    },
    {
      name: 'duplicate user',
      yaml: VALID_YAML.replace('name: tenant_b_app', 'name: tenant_a_app'),
      want: { path: 'users[1].name', message: /duplicate user tenant_a_app/ },
    },
    {
      name: 'duplicate server role',
      yaml: VALID_YAML.replace('server_roles:\n', 'server_roles:\n  - { name: app_rw, password: x }\n'),
      want: { path: 'server_roles[1].name', message: /duplicate server role app_rw/ },
    },
    {
      name: 'cert_map user must exist',
      yaml: VALID_YAML + 'cert_map:\n  - { cn: svc, user: ghost }\n',
      want: { path: 'cert_map[0].user', message: /user ghost is not defined/ },
    },
    {
      name: 'pinning variable name',
      yaml: VALID_YAML.replace('variables: [app.tenant_id]', 'variables: [app.tenant_id, search_path]'),
      want: { path: 'pinning.variables[1]', message: /customized option name/ },
    },
    {
      name: 'hba and hba_file are exclusive',
      yaml: VALID_YAML + 'hba_file: pg_hba.conf\n',
      want: { path: 'hba_file', message: /mutually exclusive/, line: 21, column: 1 },
    },
    {
      name: 'bad CIDR',
      yaml: VALID_YAML + '  - { type: host, database: all, user: all, address: 10.0.0.0/33, method: reject }\n',
      want: { path: 'hba[3].address', message: /invalid CIDR mask/ },
    },
  ];
  for (const c of cases) {
    const ps = await problemsOf(text(c.yaml));
    t.match(ps, [c.want], c.name);
    t.equal(ps.length, 1, `${c.name}: exactly one problem`);
  }
});

t.test('names are case-insensitive and stored lower-cased', async (t) => {
  const c = await text(
    VALID_YAML.replace('variables: [app.tenant_id]', 'variables: [App.Tenant_ID]').replace(
      '{ app.tenant_id: "a" }',
      '{ APP.TENANT_ID: "a" }',
    ),
  );
  t.same(c.pinning.variables, ['app.tenant_id']);
  t.same(c.users[0]!.pins, { 'app.tenant_id': 'a' });
});

t.test('trust off loopback is a warning, not an error', async (t) => {
  const loopback = await loadConfigTextWithWarnings(VALID_YAML, { baseDir: '/', env: ENV });
  t.same(loopback.warnings, [], '127.0.0.1/32 trust is quiet');
  for (const address of ['::1/128', '127.0.0.0/8', '::ffff:127.0.0.1']) {
    const r = await buildConfigWithWarnings({
      upstreams: UPSTREAMS,
      hba: [{ type: 'host', database: 'all', user: 'all', address, method: 'trust' }],
    });
    t.same(r.warnings, [], `${address} is loopback`);
  }
  const wide = await loadConfigTextWithWarnings(
    VALID_YAML + '  - { type: host, database: all, user: all, address: 10.0.0.0/8, method: trust }\n',
    { baseDir: '/', env: ENV },
  );
  t.equal(wide.warnings.length, 1);
  t.match(wide.warnings[0], /^hba\[3\]: trust on address 10\.0\.0\.0\/8 .*\(line 21, column 5\)$/);
  t.equal(wide.config.hba!.length, 4);
});

t.test('hba rules carry their YAML line', async (t) => {
  const c = await text(VALID_YAML);
  t.same(
    c.hba!.map((r) => r.line),
    [18, 19, 20],
  );
  const built = await buildConfig({
    upstreams: UPSTREAMS,
    hba: [{ type: 'local', database: 'all', user: 'all', method: 'reject' }],
  });
  t.equal(built.hba![0]!.line, undefined);
  const userLine = await problemsOf(
    buildConfig({
      upstreams: UPSTREAMS,
      hba: [{ type: 'local', database: 'all', user: 'all', method: 'reject', line: 3 }],
    }),
  );
  t.same(userLine, [{ path: 'hba[0].line', message: 'unknown key' }]);
});

t.test('hba_file is read and parsed at load, as the proxy would read it', async (t) => {
  const dir = t.testdir({
    'bad.conf': [
      'host all all 10.0.0.0/8 md5',
      '# a comment keeps its line',
      'host all all all bogus',
      'hostssl all all all cert',
      'host all all localhost reject',
      'host all all all scram-sha-256',
      'hostssl all all all scram-sha-256 clientcert=verify-full',
      'hostssl all all all cert map=mymap',
    ].join('\n'),
    'good.conf': 'host all all 10.0.0.0/8 trust\nhostssl all all all scram-sha-256\n',
  });
  const withFile = (name: string) => loadConfigTextWithWarnings(`upstreams: [{ host: h, port: 1 }]\nhba_file: ${name}\n`, { baseDir: dir, env: {} });

  const missing = await problemsOf(withFile('nope.conf'));
  t.same(missing, [{ path: 'hba_file', message: `cannot read ${join(dir, 'nope.conf')}: no such file`, line: 2, column: 11 }]);

  const bad = join(dir, 'bad.conf');
  t.same(
    (await problemsOf(withFile('bad.conf'))).map((p) => `${p.path}: ${p.message}`),
    [
      `hba_file: ${bad}:1: method md5 is not served by pgbastion (use scram-sha-256, cert, trust or reject)`,
      `hba_file: ${bad}:3: invalid authentication method "bogus"`,
      `hba_file: ${bad}:4: method cert needs tls.ca to verify client certificates`,
      `hba_file: ${bad}:5: host names are not supported by pgbastion: "localhost"`,
      `hba_file: ${bad}:7: clientcert needs tls.ca to verify client certificates`,
      `hba_file: ${bad}:8: method cert needs tls.ca to verify client certificates`,
      `hba_file: ${bad}:8: option map is not served by pgbastion: certificate names map to users through cert_map`,
    ],
    'every problem, with its line in the hba file, top to bottom',
  );

  const good = await withFile('good.conf');
  t.equal(good.config.hba_file, join(dir, 'good.conf'));
  t.same(good.warnings, [
    `hba_file: ${join(dir, 'good.conf')}:1: trust on address 10.0.0.0/8 lets anyone who can reach it in without a password`,
    `hba_file: ${join(dir, 'good.conf')}:2: hostssl rule never matches because tls is not configured`,
  ]);
});

t.test('hba entries are parsed at load as the proxy parses them', async (t) => {
  const rule = (over: Record<string, string>) => ({ type: 'host', database: 'all', user: 'all', address: 'all', method: 'reject', ...over });
  const ps = await problemsOf(
    buildConfig({
      upstreams: UPSTREAMS,
      hba: [
        rule({ address: 'localhost' }),
        rule({ address: 'samehost' }),
        rule({ type: 'local', address: '10.0.0.0/8' }),
        rule({ database: '@dbs.txt' }),
      ],
    }),
  );
  t.same(
    ps.map((p) => `${p.path}: ${p.message}`),
    [
      'hba[0].address: host names are not supported by pgbastion: "localhost"',
      'hba[1].address: address keyword "samehost" is not supported by pgbastion',
      'hba[2].address: "local" rules take no address',
      'hba[3].database: @file inclusions are not supported by pgbastion: "@dbs.txt"',
    ],
  );
});

t.test('cross-checks run alongside schema problems, on any shape', async (t) => {
  const yaml =
    VALID_YAML.replace(`secret: "${SECRET}"`, 'secret: "SCRAM-SHA-256$bad"').replace('server_role: app_rw', 'server_role: nope') +
    '  - { type: host, database: all, user: all, address: all, method: md5 }\n' +
    'pool: { siez: 3 }\n';
  t.same(
    (await problemsOf(text(yaml))).map((p) => `${p.path}: ${p.message} (line ${p.line})`),
    [
      'users[0].secret: must be a SCRAM-SHA-256 secret: SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (line 6)',
      'users[0].server_role: server role nope is not defined in server_roles (line 7)',
      'hba[3].method: method md5 is not served by pgbastion (use scram-sha-256, cert, trust or reject) (line 21)',
      'pool.siez: unknown key (line 22)',
    ],
    'the schema problem and the three cross-check problems together',
  );

  // A value the schema already refused is not reported a second time by a cross-check.
  const once = await problemsOf(buildConfig({ upstreams: UPSTREAMS, server_roles: [{ name: 'r', password: '' }], users: [{ name: 'u', server_role: 'r', secret: '' }] }));
  t.same(once.map((p) => `${p.path}: ${p.message}`), ['users[0].secret: must not be empty', 'server_roles[0].password: must not be empty']);

  // Whatever the shape, the result is a ConfigError (problemsOf rethrows anything else).
  const shapes: unknown[] = [
    { upstreams: UPSTREAMS, users: 5, server_roles: 'x', cert_map: [null, 5], hba: [null, 'x', { method: 5 }], pinning: { variables: 5 } },
    { upstreams: UPSTREAMS, upstream: { tls: 5, health_check: [] }, proxy_protocol: { trusted: [5, {}] }, tls: 5, hba_file: 5 },
    { upstreams: UPSTREAMS, users: [null, 5, { name: 3, server_role: [], pins: 5, secret: {}, valid_until: 7 }], server_roles: [{ name: {}, password: 5 }] },
    { upstreams: UPSTREAMS, pinning: 5, cert_map: [{ cn: 'x', user: 5 }], users: [{ name: 'u', server_role: 'r', pins: { 'a.b': 1 } }] },
    { upstreams: UPSTREAMS, hba: [{ type: 5, database: [], user: {}, address: 7, method: 'cert' }], hba_file: 'x' },
    null,
    [1, 2],
  ];
  for (const shape of shapes) {
    const ps = await problemsOf(buildConfig(shape));
    t.ok(ps.length > 0, JSON.stringify(shape));
  }
});

t.test('inline server-role passwords are warned about; references are not', async (t) => {
  const dir = t.testdir({ pw: 'from-a-file\n' });
  const r = await buildConfigWithWarnings(
    {
      upstreams: UPSTREAMS,
      server_roles: [
        { name: 'a', password: 'written-here' },
        { name: 'b', password: '${env:PW}' },
        { name: 'c', password: 'prefix-${env:PW}' },
        { name: 'd', password: '${file:pw}' },
      ],
      hba: [],
    },
    { baseDir: dir, env: { PW: 'from-env' } },
  );
  const hint = 'inline secret; use ${file:PATH} or ${env:NAME} outside test fixtures';
  t.same(r.warnings, [`server_roles[0].password: ${hint}`, `server_roles[2].password: ${hint}`]);
  t.equal(r.config.server_roles[3]!.password, 'from-a-file');
});

t.test('valid_until accepts a Date or a string and yields a Date', async (t) => {
  const base = { upstreams: UPSTREAMS, server_roles: [{ name: 'r', password: 'p' }] };
  const cases: [unknown, string][] = [
    [new Date('2027-12-31T00:00:00Z'), '2027-12-31T00:00:00.000Z'],
    ['2027-12-31T00:00:00Z', '2027-12-31T00:00:00.000Z'],
    ['2027-12-31', '2027-12-31T00:00:00.000Z'],
    ['2027-12-31 10:00:00+02', '2027-12-31T08:00:00.000Z'],
  ];
  for (const [valid_until, iso] of cases) {
    const c = await buildConfig({ ...base, users: [{ name: 'u', server_role: 'r', valid_until }] });
    t.ok(c.users[0]!.valid_until instanceof Date);
    t.equal(c.users[0]!.valid_until!.toISOString(), iso, String(valid_until));
  }
  const bad = await problemsOf(buildConfig({ ...base, users: [{ name: 'u', server_role: 'r', valid_until: '2027-02-31' }] }));
  t.match(bad, [{ path: 'users[0].valid_until', message: /not a valid date/ }]);
});

t.test('relative paths resolve against the config file folder', async (t) => {
  const dir = t.testdir({
    'pg_hba.conf': 'host all all all reject\n',
    'pgbastion.yaml': `upstreams: [{ host: h, port: 1 }]
tls: { cert: pki/server.crt, key: pki/server.key, ca: pki/ca.crt, crl: /abs/crl.pem }
upstream: { tls: { mode: verify-full, ca: up/ca.crt } }
hba_file: pg_hba.conf
audit: { destination: logs/audit.log }
`,
  });
  const c = await loadConfigFile(join(dir, 'pgbastion.yaml'), {});
  t.equal(c.source, join(dir, 'pgbastion.yaml'));
  t.same(c.tls, {
    cert: join(dir, 'pki/server.crt'),
    key: join(dir, 'pki/server.key'),
    ca: join(dir, 'pki/ca.crt'),
    crl: '/abs/crl.pem',
    min_version: 'TLSv1.2',
  });
  t.equal(c.upstream.tls.ca, join(dir, 'up/ca.crt'));
  t.equal(c.hba_file, join(dir, 'pg_hba.conf'));
  t.equal(c.audit.destination, join(dir, 'logs/audit.log'));
});

t.test('the result is deep-frozen', async (t) => {
  // ES modules run in strict mode, so writing to a frozen object throws instead of being ignored.
  const c = await text(VALID_YAML);
  t.ok(Object.isFrozen(c));
  t.throws(() => {
    (c as { workers: number }).workers = 2;
  }, TypeError);
  t.throws(() => {
    (c.pool as { size: number }).size = 1;
  }, TypeError);
  t.throws(() => {
    (c.users as unknown[]).push({});
  }, TypeError);
  t.throws(() => {
    (c.users[0]!.pins as Record<string, string>)['app.tenant_id'] = 'b';
  }, TypeError);
  t.throws(() => {
    (c.hba![0] as { method: string }).method = 'trust';
  }, TypeError);
});

t.test('buildConfig does not mutate its input', async (t) => {
  const input = { upstreams: UPSTREAMS, pool: { size: 3 } };
  const c = await buildConfig(input);
  t.same(input, { upstreams: UPSTREAMS, pool: { size: 3 } });
  t.equal(c.pool.mode, 'transaction');
});

t.test('loadConfigFileWithWarnings: unreadable file is a ConfigError', async (t) => {
  const ps = await problemsOf(loadConfigFileWithWarnings('/nonexistent/pgbastion.yaml', {}));
  t.match(ps, [{ path: '', message: /cannot read config file \/nonexistent\/pgbastion.yaml: no such file/ }]);
});

// ---------------------------------------------------------------------------------------------
// pgbastion check

async function check(args: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCheck(args, (s) => out.push(s), (s) => err.push(s));
  return { code, out, err };
}

function withEnv(t: Test, vars: Record<string, string | undefined>): void {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const apply = (v: Record<string, string | undefined>) => {
    for (const [k, x] of Object.entries(v)) {
      if (x === undefined) delete process.env[k];
      else process.env[k] = x;
    }
  };
  apply(vars);
  t.teardown(() => apply(saved));
}

t.test('check: valid file', async (t) => {
  withEnv(t, ENV);
  const dir = t.testdir({ 'pgbastion.yaml': VALID_YAML });
  const r = await check(['-c', join(dir, 'pgbastion.yaml')]);
  t.equal(r.code, 0);
  t.equal(r.out[0], 'config OK: 1 listener, 1 upstream, 2 users, 3 hba rules, pool transaction/20');
  t.same(
    r.out.slice(1).map((l) => l.split(': ').slice(0, 2).join(': ')),
    [],
    'only the not-yet-served warnings follow',
  );
  t.same(r.err, []);

  const long = await check([`--config=${join(dir, 'pgbastion.yaml')}`]);
  t.equal(long.code, 0);

  withEnv(t, { PGBASTION_CONFIG: join(dir, 'pgbastion.yaml') });
  t.equal((await check([])).code, 0, '$PGBASTION_CONFIG is the default');
});

t.test('check: warnings are printed after the summary', async (t) => {
  withEnv(t, ENV);
  const dir = t.testdir({
    'pgbastion.yaml': VALID_YAML + '  - { type: host, database: all, user: all, address: all, method: trust }\n',
  });
  const r = await check(['--config', join(dir, 'pgbastion.yaml')]);
  t.equal(r.code, 0);
  t.match(r.out[1], /^warning: hba\[3\]: trust on address all/, 'config warnings come right after the summary');
});

t.test('check: every problem is reported together', async (t) => {
  withEnv(t, { APP_RW_PASSWORD: undefined, PGBASTION_CONFIG: undefined });
  const dir = t.testdir({ 'pgbastion.yaml': VALID_YAML + 'pool:\n  siez: 3\n  size: many\n' });
  const file = join(dir, 'pgbastion.yaml');
  const r = await check(['-c', file]);
  t.equal(r.code, 1);
  t.same(r.out, []);
  t.same(r.err, [
    `${file}: 3 problems`,
    'server_roles[0].password: environment variable APP_RW_PASSWORD is not set (line 14, column 31)',
    'pool.siez: unknown key (line 22, column 3)',
    'pool.size: must be integer (line 23, column 9)',
  ]);
});

t.test('check: an inline password is a warning, exit 0', async (t) => {
  withEnv(t, ENV);
  const dir = t.testdir({ 'pgbastion.yaml': VALID_YAML.replace('"${env:APP_RW_PASSWORD}"', 'rw-pass-inline') });
  const r = await check(['-c', join(dir, 'pgbastion.yaml')]);
  t.equal(r.code, 0);
  t.same(r.out.slice(1), ['warning: server_roles[0].password: inline secret; use ${file:PATH} or ${env:NAME} outside test fixtures (line 14, column 31)']);
  t.notMatch(r.out.join('\n'), /rw-pass-inline/, 'the value is never printed');
});

t.test('check: hba_file problems exit 1, each with its line', async (t) => {
  withEnv(t, ENV);
  const dir = t.testdir({
    'pgbastion.yaml': VALID_YAML.replace(/^hba:\n(  - .*\n)+/m, 'hba_file: pg_hba.conf\n'),
    'pg_hba.conf': 'host all all all scram-sha-256\nhost all all all md5\n',
  });
  const r = await check(['-c', join(dir, 'pgbastion.yaml')]);
  t.equal(r.code, 1);
  t.same(r.err.slice(1), [`hba_file: ${join(dir, 'pg_hba.conf')}:2: method md5 is not served by pgbastion (use scram-sha-256, cert, trust or reject)`]);
});

t.test('check: unreadable file, bad arguments, help', async (t) => {
  const missing = await check(['-c', '/nonexistent/x.yaml']);
  t.equal(missing.code, 1);
  t.match(missing.err.join('\n'), /cannot read config file \/nonexistent\/x\.yaml: no such file/);

  const dir = t.testdir({ 'x.yaml': '{}' });
  withEnv(t, { PGBASTION_CONFIG: undefined });
  const cwd = process.cwd();
  process.chdir(dir);
  t.teardown(() => process.chdir(cwd));
  const dflt = await check([]);
  t.equal(dflt.code, 1);
  t.match(dflt.err.join('\n'), /config\/pgbastion\.yaml: no such file/, 'default path used');

  t.equal((await check(['-c'])).code, 1);
  t.equal((await check(['--bogus'])).code, 1);
  const help = await check(['--help']);
  t.equal(help.code, 0);
  t.match(help.out[0], /usage: pgbastion check/);
});
