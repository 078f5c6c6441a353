// Table tests for the pure startup-phase policies: packet decoding, startup parameter
// allowlist and pinned-name refusal, `options` parsing, hidden set_config statements.

import t from 'tap';
import { serialize } from 'pg-protocol';
import { parseStartupPacket, startupLength } from '../src/protocol/startup.js';
import { decideStartupParams, parseOptions } from '../src/session/startup-params.js';
import { quoteLiteral, setConfigSql, settingsKey, switchPlan } from '../src/session/set-config.js';

function packet(code: number, body = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(8 + body.length);
  b.writeInt32BE(b.length, 0);
  b.writeInt32BE(code, 4);
  body.copy(b, 8);
  return b;
}

t.test('startup packets', async (t) => {
  t.same(parseStartupPacket(packet(80877103)), { kind: 'ssl' });
  t.same(parseStartupPacket(packet(80877104)), { kind: 'gssenc' });
  const cancel = Buffer.alloc(8);
  cancel.writeInt32BE(7, 0);
  cancel.writeInt32BE(-9, 4);
  t.same(parseStartupPacket(packet(80877102, cancel)), { kind: 'cancel', processId: 7, secretKey: -9 });
  t.same(parseStartupPacket(packet((2 << 16) | 0, Buffer.from([0]))), { kind: 'unsupported', major: 2, minor: 0 });
  const s = parseStartupPacket(serialize.startup({ user: 'u', database: 'd', application_name: 'a' }));
  t.equal(s.kind, 'startup');
  if (s.kind === 'startup') {
    t.equal(s.minor, 0);
    t.same([...s.params], [['user', 'u'], ['database', 'd'], ['application_name', 'a'], ['client_encoding', 'UTF8']]);
  }
  const bad = Buffer.concat([packet(3 << 16), Buffer.from('user\0u')]);
  bad.writeInt32BE(bad.length, 0);
  t.equal(parseStartupPacket(bad).kind, 'invalid', 'missing terminator');
  const opt = Buffer.from('user\0u\0_pq_.foo\0x\0\0');
  const withOpt = parseStartupPacket(packet((3 << 16) | 2, opt));
  t.match(withOpt, { kind: 'startup', minor: 2, protocolOptions: ['_pq_.foo'] });
  t.equal(startupLength(Buffer.from([0, 0, 0, 3])), null);
  t.equal(startupLength(Buffer.from([0, 0, 0x27, 0x11])), null, '10001 is over the limit');
  t.equal(startupLength(Buffer.from([0, 0, 0x27, 0x10])), 10000);
  t.equal(startupLength(Buffer.from([0x7f, 0xff, 0xff, 0xff])), null);
});

t.test('startup parameters', async (t) => {
  const cases: { name: string; params: Record<string, string>; forward?: Record<string, string>; refused?: string; invalid?: boolean }[] = [
    { name: 'allowlist, canonical spelling', params: { user: 'u', datestyle: 'ISO', application_name: 'x' }, forward: { DateStyle: 'ISO', application_name: 'x' } },
    { name: 'unknown dropped', params: { work_mem: '1GB', session_authorization: 'postgres' }, forward: {} },
    { name: 'pinned name refused', params: { 'App.Tenant_ID': 'b' }, refused: 'app.tenant_id' },
    { name: 'pinned name in options', params: { options: '-c app.tenant_id=b' }, refused: 'app.tenant_id' },
    { name: 'pinned name in --options', params: { options: '--app.tenant-id=b' }, refused: 'app.tenant_id' },
    { name: 'options forwarded through allowlist', params: { options: '-csearch_path=a,b -c TimeZone=UTC --work_mem=1' }, forward: { search_path: 'a,b', TimeZone: 'UTC' } },
    { name: 'malformed options', params: { options: 'garbage' }, invalid: true },
  ];
  for (const c of cases) {
    const d = decideStartupParams(new Map(Object.entries(c.params)), ['app.tenant_id']);
    if (c.forward) t.same(Object.fromEntries(d.forward), c.forward, c.name);
    t.equal(d.refused, c.refused, `${c.name}: refused`);
    t.equal(Boolean(d.invalid), Boolean(c.invalid), `${c.name}: invalid`);
  }
  t.same(parseOptions('-c a=b\\ c').settings, [['a', 'b c']], 'backslash escapes a space');
  t.equal(parseOptions('-c work_mem').invalid, '-c work_mem requires a value', "PostgreSQL's words");
  t.equal(parseOptions('--work-mem').invalid, '--work-mem requires a value');
  t.equal(parseOptions('-c').invalid, 'invalid command-line argument for server process: -c');
  t.equal(parseOptions('garbage').invalid, 'invalid command-line argument for server process: garbage');
});

t.test('switchPlan: the statement as a Query message, memoised by the two settings keys', async (t) => {
  const a = new Map([['app.tenant_id', 'a']]);
  const b = new Map([['app.tenant_id', 'b']]);
  const [ka, kb] = [settingsKey(a), settingsKey(b)];
  const toB = switchPlan(b, kb, a, ka);
  t.same(toB?.query, serialize.query(setConfigSql(b, a)!), 'what setConfigSql says, framed');
  t.equal(switchPlan(b, kb, a, ka), toB, 'the same plan the next time');
  t.same(switchPlan(a, ka, b, kb)?.query, serialize.query(setConfigSql(a, b)!), 'the other direction is its own entry');
  t.equal(switchPlan(a, ka, new Map(a), ka), null, 'equal keys: nothing to switch');
  const upper = new Map([['TimeZone', 'UTC']]);
  const lower = new Map([['timezone', 'UTC']]);
  t.equal(switchPlan(upper, settingsKey(upper), lower, settingsKey(lower)), null, 'keys differ only by case: setConfigSql has nothing to do');
});

t.test('switchPlan: bounded; a pair past the bounds is worked out again, the same', async (t) => {
  const a = new Map([['app.tenant_id', 'a']]);
  const b = new Map([['app.tenant_id', 'b']]);
  const [ka, kb] = [settingsKey(a), settingsKey(b)];
  const first = switchPlan(b, kb, a, ka);
  for (let i = 0; i < 4100; i++) {
    const w = new Map([['app.tenant_id', `w${i}`]]);
    switchPlan(w, settingsKey(w), a, ka);
  }
  const again = switchPlan(b, kb, a, ka);
  t.not(again, first, 'more than 4096 pairs: the cache started afresh');
  t.same(again, first, 'with the same plan');
  const long = new Map([['app.note', 'x'.repeat(1024 * 1024)]]);
  const kl = settingsKey(long);
  const big = switchPlan(long, kl, a, ka);
  t.not(switchPlan(long, kl, a, ka), big, 'keys longer than the whole budget are not kept');
  t.same(switchPlan(long, kl, a, ka)?.query, serialize.query(setConfigSql(long, a)!));
});

t.test('switchPlan: the inline form only for plain SET/RESET of custom variables and a few core settings', async (t) => {
  const plan = (wanted: [string, string][], held: [string, string][]) => {
    const [w, h] = [new Map(wanted), new Map(held)];
    const inline = switchPlan(w, settingsKey(w), h, settingsKey(h))?.inline;
    return inline ? { text: inline.prefix.toString('latin1'), statements: inline.statements } : inline;
  };
  t.same(plan([['app.tenant_id', 'b']], [['app.tenant_id', 'a']]), { text: `SET "app"."tenant_id" = 'b'; `, statements: 1 }, 'a pin');
  t.same(
    plan([['app.t', '2'], ['application_name', 'x']], [['app.u', '1'], ['application_name', 'x']]),
    { text: `RESET "app"."u"; SET "app"."t" = '2'; `, statements: 2 },
    'an unchanged core setting does not count',
  );
  t.same(
    plan([['app.t', '1'], ['application_name', 'y'], ['TimeZone', 'UTC']], [['application_name', 'x'], ['DateStyle', 'ISO'], ['extra_float_digits', '3']]),
    { text: `RESET "DateStyle"; RESET "extra_float_digits"; SET "app"."t" = '1'; SET "application_name" = 'y'; SET "TimeZone" = 'UTC'; `, statements: 5 },
    'core settings that act on the next statement and not on how its text is read',
  );
  t.same(
    plan([['DateStyle', 'SQL']], [['DateStyle', 'ISO, DMY']]),
    { text: `RESET "DateStyle"; SET "DateStyle" = 'SQL'; `, statements: 2 },
    "DateStyle is reset first: a partial value would keep the previous client's date order",
  );
  t.same(plan([['DateStyle', 'SQL']], []), { text: `SET "DateStyle" = 'SQL'; `, statements: 1 }, 'not when the connection holds the default');
  t.equal(plan([['app.t', '1'], ['default_transaction_read_only', 'on']], []), null, 'read when the transaction starts');
  t.equal(plan([['app.t', '1']], [['default_transaction_isolation', 'serializable']]), null, 'reset, also read when the transaction starts');
  t.equal(plan([['client_encoding', 'LATIN1']], [['client_encoding', 'UTF8']]), null, 'read while the whole text is converted');
  t.equal(plan([['standard_conforming_strings', 'off']], []), null, 'read while the whole text is parsed');
  t.equal(plan([['work_mem', '64MB']], []), null, 'anything not checked');
  t.equal(plan([['app.t', 'é']], []), null, 'a value that needs set_config()');
  t.equal(plan([['app.t', '2'], ['statement_timeout', '1s']], [['app.t', '1'], ['statement_timeout', '1s']]), null, "a previous client's statement_timeout needs SET LOCAL");
});

t.test('set_config statements', async (t) => {
  t.equal(quoteLiteral("it's"), "'it''s'");
  t.equal(quoteLiteral('a\\b'), "E'a\\\\b'");
  t.equal(setConfigSql(new Map([['a', '1']]), new Map([['a', '1']])), null, 'nothing to do');
  t.equal(setConfigSql(new Map([['TimeZone', 'UTC']]), new Map([['timezone', 'UTC']])), null, 'names compare case-insensitively');
  const hex = (v: string) => `pg_catalog.convert_from(pg_catalog.decode('${Buffer.from(v).toString('hex')}', 'hex'), 'UTF8')`;
  const tx = (body: string) => `BEGIN; ${body}; COMMIT`;
  t.equal(
    setConfigSql(new Map([['app.tenant_id', 'b']]), new Map([['app.tenant_id', 'a'], ['application_name', 'x']])),
    tx(`RESET "application_name"; SET "app"."tenant_id" = 'b'`),
    'what the previous client set and this one did not is reset',
  );
  t.equal(setConfigSql(new Map(), new Map([['app.tenant_id', 'a']])), tx('RESET "app"."tenant_id"'), 'a client without pins gets none');
  t.equal(
    setConfigSql(new Map([['application_name', 'x'], ['TimeZone', 'UTC']]), new Map([['TimeZone', 'UTC']])),
    tx(`SET "application_name" = 'x'`),
  );
  t.equal(setConfigSql(new Map([['app.t', "it's"]]), new Map()), tx(`SET "app"."t" = 'it''s'`), 'printable ASCII: a plain SET');
  t.equal(
    setConfigSql(new Map([['search_path', 'a, b'], ['DateStyle', 'ISO, MDY']]), new Map()),
    tx(`SET "DateStyle" = 'ISO, MDY'; SELECT pg_catalog.set_config('search_path', ${hex('a, b')}, false)`),
    'search_path: SET would quote the literal as one element, so set_config',
  );
  t.equal(
    setConfigSql(new Map([['app.t', 'é'], ['app.u', 'a\\b'], ['app.v', 'a\nb']]), new Map()),
    tx(`SELECT pg_catalog.set_config('app.t', ${hex('é')}, false), pg_catalog.set_config('app.u', ${hex('a\\b')}, false), pg_catalog.set_config('app.v', ${hex('a\nb')}, false)`),
    'non-ASCII, a backslash or a control character: set_config with the value in hex',
  );
  t.equal(
    setConfigSql(new Map([['app.t', '2']]), new Map([['app.t', '1'], ['Statement_Timeout', '1ms']])),
    `BEGIN; SET LOCAL statement_timeout = 0; SET "app"."t" = '2'; RESET "Statement_Timeout"; SET LOCAL statement_timeout = 0; COMMIT`,
    "a statement_timeout the previous client left cannot cancel the switch",
  );
  t.equal(
    setConfigSql(new Map([['app.t', '2'], ['statement_timeout', '1'], ['search_path', 'a, b']]), new Map([['app.t', '1']])),
    `BEGIN; SET LOCAL statement_timeout = 0; SET "app"."t" = '2'; SELECT pg_catalog.set_config('search_path', ${hex('a, b')}, false); SET "statement_timeout" = '1'; SET LOCAL statement_timeout = 0; COMMIT`,
    "nor can the one being set: it goes last, and the guard again behind it (a reviewer's leak: a slow set_config after it timed out)",
  );
  t.match(setConfigSql(new Map([['app.t', "テナント'\\"]]), new Map()), /^[\x20-\x7e]+$/, 'pure ASCII, whatever the value');
  // The pool's affinity fingerprint: equal exactly when the maps hold the same pairs.
  const key = (...pairs: [string, string][]) => settingsKey(new Map(pairs));
  t.equal(key(['a', '1'], ['b', '2']), key(['b', '2'], ['a', '1']), 'order does not matter');
  t.equal(key(), '', 'no settings');
  for (const [x, y] of [
    [key(['a', '1']), key(['a', '2'])],
    [key(['a', '1']), key(['A', '1'])],
    [key(['a', '1']), key(['a', '1'], ['b', ''])],
    [key(['a', '1\u0001b\u00002']), key(['a', '1'], ['b', '2'])],
  ] as const) t.not(x, y, `${JSON.stringify(x)} ≠ ${JSON.stringify(y)}`);
  t.notMatch(setConfigSql(new Map([['app.t', 'a\\b']]), new Map())!, /\\/, 'no backslash: standard_conforming_strings cannot matter');
});
