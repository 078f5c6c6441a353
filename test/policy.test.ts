// Pinning policy: every refused form in several spellings, the allowed and sticky tables, the
// lexical pre-check, the standard_conforming_strings = off reading, and the verdict cache.

import t from 'tap';
import { PolicyClassifier, loadPolicyParser, type PolicyVerdict } from '../src/policy/classify.js';
import { VerdictCache } from '../src/policy/cache.js';
import { nonStandardStringsReading } from '../src/policy/escape-strings.js';
import { mayMatter } from '../src/policy/lexical.js';
import { ALLOW } from '../src/policy/verdict.js';
import { MAX_PARSED_CHARS, parserReloads, parserSettled } from '../src/policy/parser.js';

const PINS = ['app.tenant_id', 'App.User_Id']; // configuration case does not matter

/** The same statement upper-cased, lower-cased and in alternating case. */
function spellings(sql: string): string[] {
  let i = 0;
  const mixed = sql.replace(/[a-z]/gi, (ch) => (i++ % 2 === 0 ? ch.toUpperCase() : ch.toLowerCase()));
  return [...new Set([sql, sql.toUpperCase(), sql.toLowerCase(), mixed])];
}

// [sql, variable the refusal must name (default app.tenant_id), text the detail must contain]
type Refused = [string, string?, string?];
const refused: Refused[] = [
  // SET and RESET forms, with comments, whitespace and quoting between the tokens
  ["SET app.tenant_id = 'b'", undefined, 'SET would change'],
  ["SET SESSION app.tenant_id TO 'b'"],
  ["SET LOCAL app.tenant_id = 'b'", undefined, 'SET LOCAL'],
  ['SET app.tenant_id TO DEFAULT', undefined, 'TO DEFAULT would reset'],
  ['SET app.tenant_id FROM CURRENT', undefined, 'FROM CURRENT'],
  ['RESET app.tenant_id', undefined, 'RESET would reset'],
  ["SET/**/app . tenant_id = 'b'"],
  ["set app.tenant_id--x\n= 'b'"],
  ["SET /* a /* nested */ comment */ app.tenant_id = 'b'"],
  ["\n\tSET\n app\n.\ntenant_id\t=\n'b'"],
  ['SET "app"."tenant_id" = \'b\''],
  ['SET "app".tenant_id TO \'b\''],
  ['SET "app.tenant_id" = \'b\''],
  ['SET "App"."Tenant_ID" = \'b\''], // GUC lookup is case-insensitive even for quoted names
  ['SET U&"\\0061pp".tenant_id = \'b\''],
  ['SET U&"!0061pp" UESCAPE \'!\' . tenant_id = \'b\''],
  ["SET app.user_id = 'b'", 'app.user_id'],
  ['RESET ALL', undefined, 'RESET ALL would reset "app.tenant_id"'],
  ['DISCARD ALL', undefined, 'DISCARD ALL would reset'],
  // set_config anywhere an expression can stand
  ["SELECT set_config('app.tenant_id', 'b', false)", undefined, 'set_config() would change'],
  ["SELECT set_config('app.tenant_id', 'b', true)"],
  ["SELECT pg_catalog.set_config('app.tenant_id', 'b', false)"],
  ['SELECT "pg_catalog"."set_config"(\'app.tenant_id\', \'b\', false)'],
  ["SELECT set_config('APP.Tenant_Id', 'b', false)"],
  ["SELECT 1 FROM t WHERE set_config('app.tenant_id', 'b', false) IS NOT NULL"],
  ["WITH x AS (SELECT set_config('app.tenant_id', 'b', false)) SELECT * FROM x"],
  ["SELECT * FROM (SELECT set_config('app.tenant_id', 'b', false)) s"],
  ["VALUES (set_config('app.tenant_id', 'b', false))"],
  ["SELECT * FROM set_config('app.tenant_id', 'b', false)"],
  ["SELECT * FROM ROWS FROM (set_config('app.tenant_id', 'b', false))"],
  ["SELECT lower(set_config('app.tenant_id', 'b', false))"],
  ["SELECT set_config('app.other', set_config('app.tenant_id', 'b', false), true)"],
  ["SELECT CASE WHEN true THEN set_config('app.tenant_id', 'b', false) END"],
  ["COPY (SELECT set_config('app.tenant_id', 'b', false)) TO STDOUT"],
  ["EXPLAIN ANALYZE SELECT set_config('app.tenant_id', 'b', false)"],
  ["PREPARE p AS SELECT set_config('app.tenant_id', $1, false)"],
  ["CREATE VIEW v AS SELECT set_config('app.tenant_id', 'b', false)"],
  ["CREATE TABLE t2 AS SELECT set_config('app.tenant_id', 'b', false)"],
  ["CREATE RULE r AS ON INSERT TO t DO ALSO SELECT set_config('app.tenant_id', 'b', false)"],
  ["INSERT INTO t SELECT set_config('app.tenant_id', 'b', false)"],
  ["UPDATE t SET x = set_config('app.tenant_id', 'b', false)"],
  ["CALL p(set_config('app.tenant_id', 'b', false))"],
  ["SELECT set_config(setting_name => 'app.tenant_id', new_value => 'b', is_local => false)"],
  // set_config whose name is not a plain constant: it could be any name
  ["SELECT set_config($1, 'b', false)", undefined, 'not a string constant'],
  ["SELECT set_config('app.' || 'tenant_id', 'b', false)"],
  ['SELECT set_config(name, \'b\', false) FROM t'],
  ["SELECT set_config('app.tenant_idXX'::varchar(13), 'b', false)"], // the cast truncates to app.tenant_id
  ["SELECT set_config(lower('APP.TENANT_ID'), 'b', false)"],
  // ALTER ... SET / RESET
  ["ALTER ROLE r SET app.tenant_id = 'b'", undefined, 'ALTER ROLE ... SET'],
  ["ALTER USER r IN DATABASE d SET app.tenant_id TO 'b'"],
  ['ALTER ROLE ALL RESET app.tenant_id'],
  ['ALTER ROLE r RESET ALL', undefined, 'ALTER ROLE ... RESET ALL'],
  ["ALTER DATABASE d SET app.tenant_id = 'b'", undefined, 'ALTER DATABASE'],
  ['ALTER DATABASE d RESET ALL'],
  ["ALTER SYSTEM SET app.tenant_id = 'b'", undefined, 'ALTER SYSTEM SET'],
  ['ALTER SYSTEM RESET app.tenant_id'],
  ['ALTER SYSTEM RESET ALL'],
  // function-level SET clauses change the value while the function runs
  ["CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.tenant_id = 'b' AS 'SELECT 1'", undefined, 'CREATE FUNCTION ... SET'],
  ["CREATE OR REPLACE PROCEDURE p() LANGUAGE sql SET app.tenant_id FROM CURRENT AS 'SELECT 1'"],
  ["ALTER FUNCTION f() SET app.tenant_id = 'b'", undefined, 'ALTER FUNCTION ... SET'],
  ['ALTER PROCEDURE p() RESET app.tenant_id'],
  ['ALTER ROUTINE f() RESET ALL'],
  // function bodies: SQL is parsed, other languages judged by their text
  ["CREATE FUNCTION f(n text) RETURNS text LANGUAGE sql AS $$ SELECT set_config(n, 'b', false) $$", undefined, 'CREATE FUNCTION body'],
  ["CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'SET app.tenant_id = ''b'''"],
  ["CREATE FUNCTION f() RETURNS text BEGIN ATOMIC SELECT set_config('app.tenant_id', 'b', false); END"],
  ["CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'SET app.tenant_id = 1'; END $$", undefined, 'LANGUAGE plpgsql'],
  ['CREATE FUNCTION f(text, text, bool) RETURNS text LANGUAGE internal AS \'set_config_by_name\''],
  // set_config reached without a call: an aggregate whose transition function it is
  ["CREATE AGGREGATE a(text, bool) (sfunc = set_config, stype = text, initcond = 'app.tenant_id')", undefined, 'a reference to set_config'],
  // pg_settings is SET in disguise
  ["UPDATE pg_settings SET setting = 'b' WHERE name = 'app.tenant_id'", undefined, 'UPDATE pg_settings'],
  ["UPDATE pg_catalog.pg_settings SET setting = 'b'"],
  ["WITH u AS (UPDATE pg_settings SET setting = 'b' WHERE name = 'app.tenant_id' RETURNING 1) SELECT * FROM u"],
  // built-ins that run SQL given as text: what the text holds cannot be told (a reviewer's bypass)
  // (a constant text is inspected first, and its own refusal named)
  ["SELECT query_to_xml('SELECT set_config(''app.tenant_id'', ''b'', false)', true, false, '')", undefined, 'the SQL query_to_xml() runs: set_config()'],
  ["SELECT query_to_xml('SELECT s' || 'et_config(''app.tenant_id'', ''b'', false)', true, false, '')", undefined, 'query_to_xml(), which runs SQL given as text'],
  ["SELECT pg_catalog.query_to_xml_and_xmlschema('SELECT 1', true, false, '')"],
  ["SELECT query_to_xmlschema($1, true, false, '')"],
  ["SELECT * FROM ts_stat('SELECT to_tsvector(set_config(''app.tenant_id'', ''b'', false))')", undefined, 'ts_stat()'],
  ["SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery')", undefined, 'ts_rewrite()'],
  // DO: procedural code, judged by what its body mentions
  ["DO $$BEGIN PERFORM set_config('app.tenant_id', 'b', false); END$$", undefined, 'a DO block'],
  ["DO $$BEGIN SET app.tenant_id = 'b'; END$$"],
  ['DO $$BEGIN EXECUTE \'SET "app"."tenant_id" = 1\'; END$$'],
  ["DO $$BEGIN EXECUTE 'SET app.' || 'tenant_id = 1'; END$$"],
  ["DO $$BEGIN EXECUTE 'RESET ALL'; END$$"],
  ["DO LANGUAGE plpgsql 'BEGIN PERFORM pg_catalog.set_config(''app.tenant_id'', ''b'', false); END'"],
  // several statements: one refused refuses all
  ["SELECT 1; SET app.tenant_id = 'b'"],
  ["SET app.other = 'x'; SELECT set_config('app.tenant_id', 'b', false); SELECT 2"],
  ['BEGIN; DISCARD ALL; COMMIT'],
  // a second reading with standard_conforming_strings = off (a client may turn it off)
  ["SELECT 'x\\' , ' ; SET app.tenant_id = 1; -- '"],
  ["SELECT 'x\\' , ' ; SELECT set_config($$app.tenant_id$$, $$b$$, false); -- '"],
  // PostgreSQL 15 accepts this (system_user became reserved in 16); the parser here does not
  ['SET app.tenant_id = system_user', undefined, 'is not parsed here'],
];

// Other clients' protocol-level statements, on server connections they share (a reviewer's
// finding: run and dropped through SQL): [sql, message the refusal must give]
const othersStatements: [string, string][] = [
  ['EXECUTE pgbastion_d4874ec2_s1', 'permission denied for prepared statement "pgbastion_d4874ec2_s1"'],
  ['EXECUTE "pgbastion_d4874ec2_s1"(1, 2)', 'permission denied for prepared statement "pgbastion_d4874ec2_s1"'],
  ['EXECUTE U&"pgbastion\\005fd4874ec2_s1"', 'permission denied for prepared statement "pgbastion_d4874ec2_s1"'],
  ['DEALLOCATE PREPARE pgbastion_d4874ec2_s1', 'permission denied for prepared statement "pgbastion_d4874ec2_s1"'],
  ['PREPARE pgbastion_x AS SELECT 1', 'permission denied for prepared statement "pgbastion_x"'],
  ["DO $$BEGIN EXECUTE 'DEALLOCATE pgbastion_d4874ec2_s1'; END$$", 'permission denied for the prepared statements of other clients'],
  ["CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$BEGIN EXECUTE 'DEALLOCATE pgbastion_d4874ec2_s1'; END$$", 'permission denied for the prepared statements of other clients'],
];

// Escape spellings whose meaning depends on the case of the escape letters: as written only.
const refusedExact: Refused[] = [
  ["SELECT set_config(E'app.tenant\\x5fid', 'b', false)"],
  ["SELECT set_config(U&'app.tenant\\005fid', 'b', false)"],
  ["SELECT set_config(U&'\\0061pp.tenant_id', 'b', false)"],
  ['SELECT U&"set\\005fconfig"(\'app.tenant_id\', \'b\', false)'],
  ["SELECT set_config('app.tenant_id', 'b', false)\0SELECT 1"],
  ["SELECT 1\0SET app.tenant_id = 'b'"],
];

// [sql, expected sticky reason or null]
const allowed: [string, string | null][] = [
  ['SELECT abalance FROM pgbench_accounts WHERE aid = $1', null],
  ['UPDATE t SET x = 1 WHERE id = 2', null],
  ['UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2', null],
  ['INSERT INTO t (a, b) VALUES ($1, $2)', null],
  ['BEGIN', null],
  ['COMMIT', null],
  ['', null],
  [';', null],
  ['SET LOCAL statement_timeout = 5', null],
  ["SELECT 'pgbastion'", null],
  ['EXECUTE my_statement', null],
  ["SELECT ts_rewrite('a'::tsquery, 'a'::tsquery, 'b'::tsquery)", null], // runs nothing
  ["SET LOCAL app.other = 'x'", null],
  ['SET TRANSACTION ISOLATION LEVEL SERIALIZABLE', null],
  ["SELECT current_setting('app.tenant_id')", null],
  ["SELECT current_setting('app.tenant_id', true)::int AS tenant", null],
  ["SELECT 'SET app.tenant_id = 1'", null],
  ["SELECT $$ SELECT set_config('app.tenant_id', 'b', false) $$", null],
  ["SELECT 1 -- set app.tenant_id = 'b'", null],
  ['-- set app.tenant_id', null],
  ["/* RESET ALL; SELECT set_config('app.tenant_id', 'b', false) */ SELECT 1", null],
  ['SELECT "set app.tenant_id" FROM t', null],
  ["SELECT set_config('app.other', 'x', true)", null],
  ["SELECT set_config(new_value => 'x', setting_name => 'app.other', is_local => true)", null],
  ["SELECT name, setting FROM pg_settings WHERE name = 'app.tenant_id'", null],
  ['DISCARD TEMP', null],
  ['DISCARD PLANS', null],
  ['DEALLOCATE ALL', null],
  ['UNLISTEN *', null],
  ['SET CONSTRAINTS ALL DEFERRED', null],
  ['DECLARE c CURSOR FOR SELECT 1', null],
  ['SELECT pg_advisory_xact_lock(1)', null],
  ['CREATE TABLE t (a int)', null],
  ['SELECT * FROM templates ORDER BY id OFFSET 5', null],
  ["CREATE FUNCTION tenant() RETURNS int LANGUAGE sql STABLE AS $$ SELECT current_setting('app.tenant_id')::int $$", null],
  ["UPDATE t SET path = 'C:\\dir', note = current_setting('app.tenant_id')", null],
  // syntax errors without a word of any inspected form, and text every PostgreSQL rejects
  // (unterminated): never parsed, or allowed; never a throw (the rest: 'fail closed' below)
  ['SELEC 1', null],
  ["SELECT 'abc", null],
  ['DO $$ unterminated', null],
  ["SET app.tenant_id = 'b", null],
];

const sticky: [string, string][] = [
  ["SET app.other = 'x'", 'SET'],
  ['SET search_path TO a, b', 'SET'],
  ["SET TIME ZONE 'UTC'", 'SET'],
  ['SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY', 'SET'],
  ['RESET search_path', 'RESET'],
  ['SET ROLE bob', 'SET ROLE'],
  ['SET SESSION AUTHORIZATION bob', 'SET SESSION AUTHORIZATION'],
  ['PREPARE p(int) AS SELECT $1', 'PREPARE'],
  ['LISTEN channel', 'LISTEN'],
  ['CREATE TEMP TABLE t (a int)', 'temporary table'],
  ['CREATE TEMPORARY TABLE t (a int)', 'temporary table'],
  ['CREATE LOCAL TEMP TABLE IF NOT EXISTS t (a int)', 'temporary table'],
  ['CREATE TABLE pg_temp.t (a int)', 'temporary table'],
  ['CREATE TEMP TABLE t AS SELECT 1', 'temporary table'],
  ['SELECT 1 AS a INTO TEMP t', 'temporary table'],
  ['CREATE TEMP SEQUENCE s', 'temporary sequence'],
  ['CREATE TEMP VIEW v AS SELECT 1', 'temporary view'],
  ["CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", 'temporary object'],
  ['SELECT pg_advisory_lock(1)', 'advisory lock'],
  ['SELECT pg_catalog.pg_advisory_lock(1, 2)', 'advisory lock'],
  ['SELECT pg_advisory_lock_shared(1)', 'advisory lock'],
  ['SELECT pg_try_advisory_lock(1)', 'advisory lock'],
  ['SELECT x FROM t WHERE pg_try_advisory_lock_shared(t.id)', 'advisory lock'],
  ['DECLARE c CURSOR WITH HOLD FOR SELECT 1', 'DECLARE WITH HOLD'],
  ['DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT 1', 'DECLARE WITH HOLD'],
  ["LOAD 'auto_explain'", 'LOAD'],
  ["SELECT set_config('app.other', 'x', false)", 'set_config'],
  ["SELECT set_config('app.other', 'x', $1)", 'set_config'],
  ["SELECT 1; SET app.other = 'x'; SELECT 2", 'SET'],
];

// Client encodings whose characters may hide an ASCII byte (see src/policy/client-encoding.ts):
// refused wherever they are set, with or without pinned variables.
const encodingRefused = [
  "SET client_encoding = 'SJIS'",
  'SET client_encoding TO sjis',
  "SET SESSION client_encoding = 'Shift_JIS'",
  "SET LOCAL client_encoding = 'BIG5'",
  "SET NAMES 'gbk'",
  "SET names 'WIN949'",
  'SET CLIENT_ENCODING = "GB18030"',
  "SET client_encoding = 'johab'",
  "set client_encoding = 'shift-jis-2004'",
  "SELECT set_config('client_encoding', 'SJIS', false)",
  "SELECT pg_catalog.set_config('CLIENT_ENCODING', 'win932', true)",
  "SELECT set_config('client_encoding', $1, false)", // not a constant: could be any
  "SELECT set_config('client_encoding', lower('SJIS'), false)",
  "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET client_encoding = 'SJIS' AS 'SELECT 1'",
  "BEGIN; SET LOCAL client_encoding = 'SJIS'; SELECT 1; COMMIT",
  "SET client_encoding = 'S\u212AJIS'", // the Kelvin sign: JavaScript lower-cases it to k, PostgreSQL drops it
  "SET client_encoding = '\u0130SJIS'",
  "DO $$BEGIN SET client_encoding = 'UTF8'; END$$", // procedural text that sets the encoding at all
  "DO $$BEGIN EXECUTE 'SET NAMES ' || quote_literal('x'); END$$",
  "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$BEGIN SET client_encoding = 'SJIS'; END$$",
];
const encodingAllowed = ["SET client_encoding = 'UTF8'", "SET NAMES 'LATIN1'", "SET client_encoding = 'EUC_JP'", "SET client_encoding = 'WIN1252'", 'SET client_encoding TO DEFAULT', 'RESET client_encoding', "SELECT set_config('client_encoding', 'EUC_KR', false)"];

const policy = new PolicyClassifier(PINS);
const uncached = new PolicyClassifier(PINS, { cacheSize: 0 });

t.before(async () => {
  await loadPolicyParser();
});

t.test('refused forms, in every spelling', async (t) => {
  const check = (sql: string, variable = 'app.tenant_id', detail?: string): void => {
    const v = policy.classify(sql);
    t.ok(v.refuse, `refused: ${JSON.stringify(sql)}`);
    if (!v.refuse) return;
    t.equal(v.refuse.variable, variable, `variable: ${JSON.stringify(sql)}`);
    // (Text the parser here rejects is refused with its error, 42601: see 'fail closed' below.)
    if (v.refuse.code === '42601') t.match(v.refuse.message, /^syntax error/);
    else t.equal(v.refuse.message, `permission denied to set parameter "${variable}"`);
    if (detail !== undefined) t.match(v.refuse.detail, detail, `detail: ${JSON.stringify(sql)}`);
    t.equal(v.sticky, null, 'refuse wins over sticky');
  };
  for (const [sql, variable, detail] of refused) {
    for (const s of spellings(sql)) check(s, variable, s === sql ? detail : undefined);
  }
  for (const [sql, variable, detail] of refusedExact) check(sql, variable, detail);
  for (const [sql, message] of othersStatements) {
    for (const classifier of [policy, new PolicyClassifier([])]) {
      const v = classifier.classify(sql);
      t.equal(v.refuse?.message, message, sql);
      t.equal(v.refuse?.variable, null, 'no variable');
    }
  }
});

t.test('allowed forms', async (t) => {
  for (const [sql, reason] of allowed) {
    const v = policy.classify(sql);
    t.equal(v.refuse, null, `not refused: ${JSON.stringify(sql)} (${v.refuse?.detail})`);
    t.equal(v.sticky, reason, `sticky: ${JSON.stringify(sql)}`);
  }
});

t.test('sticky forms', async (t) => {
  for (const [sql, reason] of sticky) {
    for (const s of spellings(sql)) {
      const v = policy.classify(s);
      t.equal(v.refuse, null, `not refused: ${JSON.stringify(s)}`);
      t.equal(v.sticky, reason, `sticky: ${JSON.stringify(s)}`);
    }
  }
});

t.test('without pinned variables nothing is refused, session changes stay sticky', async (t) => {
  const none = new PolicyClassifier([]);
  t.same(none.classify('DISCARD ALL'), ALLOW);
  t.same(none.classify('RESET ALL'), { refuse: null, sticky: 'RESET' });
  t.same(none.classify("SELECT set_config($1, 'x', false)"), { refuse: null, sticky: 'set_config' });
  t.same(none.classify("DO $$BEGIN PERFORM set_config('a.b', 'x', false); END$$"), { refuse: null, sticky: 'DO' });
});

t.test('the lexical pre-check', async (t) => {
  for (const sql of ['SELECT abalance FROM pgbench_accounts WHERE aid = $1', 'BEGIN', 'COMMIT', 'INSERT INTO t VALUES (1)', 'SELECT * FROM t OFFSET 3', "SELECT current_setting('app.tenant_id')"]) {
    t.notOk(mayMatter(sql), `skips the parser: ${sql}`);
  }
  for (const sql of [
    'UPDATE t SET x = 1',
    'SET x = 1',
    'set/**/x = 1',
    '(SET',
    'SELECT "set_config"(1)',
    'SELECT U&"\\0073et_config"(1)', // no trigger word spelled out: the U& is the trigger
    'u&"x"',
    'SELECT pg_advisory_lock(1)',
    'SELECT 1;DISCARD ALL',
    'CREATE TEMP TABLE t()',
    'do $$ $$',
  ]) {
    t.ok(mayMatter(sql), `goes to the parser: ${sql}`);
  }
  // every refused form reaches the parser (otherwise it could not have been refused, but say so)
  for (const [sql] of [...refused, ...refusedExact]) for (const s of spellings(sql)) t.ok(mayMatter(s), s);
});

t.test('the standard_conforming_strings = off reading', async (t) => {
  const cases: [string, string | null][] = [
    ['SELECT 1', null],
    ["SELECT 'plain'", null],
    ["SELECT 'a\\'", "SELECT E'a\\'"],
    ["SELECT 'a\\', 'b'", "SELECT E'a\\', 'b'"],
    ["SELECT E'a\\'b'", null],
    ["SELECT $$a\\$$, 'x'", null],
    ["SELECT $t$ 'a\\' $t$", null],
    ['SELECT "a\\"', null],
    ["SELECT 1 -- 'a\\'", null],
    ["SELECT /* 'a\\' /* */ */ 1", null],
    ["SELECT U&'a\\0061'", null],
    ["SELECT B'01', X'1F', 'c\\'", "SELECT B'01', X'1F', E'c\\'"],
    ["SELECT N'x\\'", "SELECT  NCHAR E'x\\'"],
    ["SELECT 'a'\n'b\\'", "SELECT E'a'\n'b\\'"],
    ["SELECT a$$b, 'c\\'", "SELECT a$$b, E'c\\'"],
    ["SELECT B'01'\n'\\', 'c\\'", "SELECT B'01'\n'\\', E'c\\'"], // a continued bit string has no escapes
    ["SELECT 'q' -- c\n 'r\\'", "SELECT E'q' \n 'r\\'"], // PostgreSQL 15 continues across the comment
  ];
  for (const [sql, want] of cases) {
    const got = nonStandardStringsReading(sql);
    if (want === null) t.equal(got, null, sql);
    else t.equal(got?.replace(/ +/g, ' ').trim(), want.replace(/ +/g, ' ').trim(), sql);
  }
});

t.test('known false positive: \\\' in a string plus a pinned name elsewhere', async (t) => {
  // With standard_conforming_strings = off the string swallows its closing quote and the text
  // does not parse; as that reading mentions a pinned name, it is refused (see classify.ts).
  const v = policy.classify("UPDATE t SET path = 'C:\\', note = current_setting('app.tenant_id')");
  t.equal(v.refuse?.variable, 'app.tenant_id');
});

t.test('unusual input never throws', async (t) => {
  const deep = 'SELECT ' + '('.repeat(20_000) + "set_config('app.tenant_id', 'b', false)" + ')'.repeat(20_000);
  const long = "SELECT 1 + " + Array.from({ length: 20_000 }, () => '1').join(' + ') + "; SET app.tenant_id = 'b'";
  for (const sql of [' ', '\0', ';;;', '$$', "'", '"', '/*', 'SET', 'U&', '\\', '\uD800', deep, long]) {
    t.doesNotThrow(() => policy.classify(sql), JSON.stringify(sql.slice(0, 40)));
  }
  t.ok(policy.classify(long).refuse, 'a statement after a very long expression is still seen');
});

t.test('cache: bounded, and a cached verdict equals the uncached one', async (t) => {
  for (const sql of [...refused.map((r) => r[0]), ...allowed.map((a) => a[0]), ...sticky.map((s) => s[0])]) {
    const want: PolicyVerdict = uncached.classify(sql);
    t.same(policy.classify(sql), want, `first: ${sql}`);
    t.same(policy.classify(sql), want, `cached: ${sql}`);
  }
  t.equal(uncached.cachedEntries, 0);

  const small = new PolicyClassifier(PINS, { cacheSize: 50 });
  for (let i = 0; i < 500; i++) small.classify(`UPDATE t SET x = ${i} WHERE id = ${i}`);
  t.equal(small.cachedEntries, 50, 'entries stay at the bound');

  const short = new PolicyClassifier(PINS, { maxCachedLength: 10 });
  short.classify('UPDATE t SET x = 1 WHERE id = 2');
  t.equal(short.cachedEntries, 0, 'long texts are not cached');

  const lru = new VerdictCache(2, 1000);
  lru.set('a', ALLOW);
  lru.set('b', ALLOW);
  lru.get('a');
  lru.set('c', ALLOW);
  t.same([lru.get('a'), lru.get('b'), lru.get('c')], [ALLOW, undefined, ALLOW], 'least recently used goes first');

  const chars = new VerdictCache(100, 100);
  for (let i = 0; i < 10; i++) chars.set(String(i).repeat(30), ALLOW);
  t.equal(chars.size, 3, 'total text length is bounded too');
  t.ok(chars.chars <= 100);
});

t.test('micro-benchmark (informational, no assertion)', async (t) => {
  const run = (cl: PolicyClassifier, sql: string, n: number): number => {
    for (let i = 0; i < n / 10; i++) cl.classify(sql);
    const start = process.hrtime.bigint();
    for (let i = 0; i < n; i++) cl.classify(sql);
    return Number(process.hrtime.bigint() - start) / n;
  };
  const select = run(policy, 'SELECT abalance FROM pgbench_accounts WHERE aid = $1', 200_000);
  const update = run(policy, 'UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2', 200_000);
  const parsed = run(uncached, 'UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2', 2_000);
  t.comment(`pre-check only (SELECT): ${select.toFixed(0)} ns/op; cached (UPDATE ... SET): ${update.toFixed(0)} ns/op; parsed, uncached: ${parsed.toFixed(0)} ns/op`);
});

t.test('client encodings that may hide ASCII bytes are refused, pins or none', async (t) => {
  for (const classifier of [policy, new PolicyClassifier([])]) {
    for (const sql of encodingRefused) {
      const v = classifier.classify(sql);
      t.equal(v.refuse?.message, 'permission denied to set parameter "client_encoding"', sql);
      t.match(v.refuse?.detail ?? '', /SJIS, BIG5, GBK, UHC, GB18030 and JOHAB/);
    }
    for (const sql of encodingAllowed) t.equal(classifier.classify(sql).refuse, null, `allowed: ${sql}`);
  }
});

t.test('role and database defaults, server roles and signals to server processes are refused, pins or none', async (t) => {
  // Reviewers' findings: a tenant set its shared role's search_path to pg_temp for every later
  // server connection, changed its password (locking every client out), or terminated other
  // tenants' backends, which run as the same role.
  const serverRoles = ['app_rw', 'Report Role'];
  for (const classifier of [new PolicyClassifier(PINS, { serverRoles }), new PolicyClassifier([], { serverRoles })]) {
    const cases: [string, RegExp][] = [
      ['ALTER ROLE CURRENT_USER SET search_path = pg_temp, public', /configuration defaults of a role/],
      ["ALTER ROLE app_rw IN DATABASE postgres SET default_transaction_read_only = on", /configuration defaults of a role/],
      ['ALTER USER someone RESET ALL', /configuration defaults of a role|permission denied to set parameter "app.tenant_id"/],
      ["ALTER DATABASE postgres SET statement_timeout = '1ms'", /configuration defaults of a database/],
      ['ALTER ROLE ALL SET work_mem = 64', /configuration defaults of a role/],
      ["ALTER ROLE CURRENT_USER PASSWORD 'mine-now'", /^permission denied to alter role$/],
      ["ALTER USER app_rw WITH ENCRYPTED PASSWORD 'x'", /^permission denied to alter role$/],
      ['ALTER ROLE SESSION_USER VALID UNTIL \'2000-01-01\'', /^permission denied to alter role$/],
      ['ALTER ROLE "Report Role" NOLOGIN', /^permission denied to alter role$/],
      ['ALTER ROLE app_rw RENAME TO other', /^permission denied to alter role$/],
      ['SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = current_user', /signal server processes/],
      ['SELECT pg_catalog.pg_cancel_backend(12345)', /signal server processes/],
      ['SELECT "pg_cancel_backend"(1)', /signal server processes/],
      ['SELECT pg_terminate_backend(pg_backend_pid())', /signal server processes/], // unqualified: a function of the client's may shadow it
      ['SELECT pg_terminate_backend(public.pg_backend_pid())', /signal server processes/],
      ['ALTER DATABASE postgres CONNECTION LIMIT 0', /alter database/],
      ['ALTER DATABASE postgres RENAME TO gone', /alter database/],
      ['ALTER DATABASE postgres OWNER TO someone', /alter database/],
      // A reviewer's finding: without pins, SQL run from text and procedural code reached the
      // signals unseen. Text given as a constant is inspected; procedural code by its text.
      ["SELECT query_to_xml('SELECT pg_terminate_backend(pid) FROM pg_stat_activity', true, false, '')", /signal server processes/],
      ["SELECT query_to_xml(query => 'SELECT pg_cancel_backend(1)', nulls => true, tableforest => false, targetns => '')", /signal server processes/],
      ["SELECT * FROM ts_stat('SELECT to_tsvector(pg_terminate_backend(1)::text)')", /signal server processes/],
      ["SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, pg_cancel_backend(1)::text::tsquery')", /signal server processes/],
      ["DO $$BEGIN PERFORM pg_terminate_backend(pid) FROM pg_stat_activity; END$$", /signal server processes/],
      ["CREATE FUNCTION kill_all() RETURNS void LANGUAGE plpgsql AS $$BEGIN PERFORM \"pg_cancel_backend\"(1); END$$", /signal server processes/],
      ["CREATE FUNCTION kill_all() RETURNS bool LANGUAGE sql AS 'SELECT pg_terminate_backend(1)'", /signal server processes/],
      // (round 8) DO $$ EXECUTE 'ALTER ROLE CURRENT_USER PASSWORD ...' $$ locked every client of the role out.
      ["DO $$BEGIN EXECUTE 'ALTER ROLE CURRENT_USER PASSWORD ''owned'''; END$$", /alter roles or databases/],
      ["DO $$BEGIN EXECUTE 'alter\n  user current_user SET search_path = pg_temp'; END$$", /alter roles or databases/],
      ["CREATE PROCEDURE p() LANGUAGE plpgsql AS $$BEGIN EXECUTE 'ALTER DATABASE postgres CONNECTION LIMIT 0'; END$$", /alter roles or databases/],
    ];
    for (const [sql, message] of cases) t.match(classifier.classify(sql).refuse?.message ?? 'allowed', message, sql);
    for (const sql of ["ALTER ROLE other_role PASSWORD 'x'", 'ALTER ROLE report_role NOLOGIN', 'SELECT pid FROM pg_stat_activity', "SET search_path = public", 'SELECT pg_terminate_backend(pg_catalog.pg_backend_pid())']) {
      t.equal(classifier.classify(sql).refuse, null, `allowed: ${sql}`);
    }
  }
  // Without pins, SQL runners stay allowed, and what their constant text leaves is seen.
  const none = new PolicyClassifier([]);
  for (const sql of ["SELECT query_to_xml('SELECT 1', true, false, '')", "SELECT * FROM ts_stat('SELECT to_tsvector(''a'')')", "SELECT ts_rewrite('a'::tsquery, 'a'::tsquery, 'b'::tsquery)", "SELECT query_to_xml($1, true, false, '')"]) {
    t.same(none.classify(sql), { refuse: null, sticky: null }, `allowed: ${sql}`);
  }
  t.equal(none.classify("SELECT query_to_xml('SELECT set_config(''work_mem'', ''64'', false)', true, false, '')").sticky, 'set_config', 'a session set_config in the text makes the session sticky');
  t.equal(none.classify("SELECT query_to_xml('SELECT 1; SET search_path = pg_temp', true, false, '')").refuse, null);
  t.equal(none.classify("DO $$BEGIN EXECUTE 'ALTER TABLE t ADD COLUMN role_alter int'; END$$").refuse, null, 'ALTER of anything else in a DO block: sticky, not refused');
});

t.test('procedural code is refused while variables are pinned, whatever it mentions; sticky without', async (t) => {
  // A reviewer's finding: DO blocks and plpgsql bodies assembled ALTER ROLE ... SET, a new
  // password, pg_terminate_backend, or a switch of client_encoding and back, out of any text
  // rule's sight ('ALTER ' || 'ROLE ...').
  const none = new PolicyClassifier([]);
  for (const sql of [
    "DO $$BEGIN RAISE NOTICE 'hello'; END$$",
    "DO $$BEGIN EXECUTE 'ALTER ' || 'ROLE CURRENT_USER SET search_path = pg_temp'; END$$",
    "DO LANGUAGE plpgsql $$BEGIN PERFORM 1; END$$",
    "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$BEGIN RETURN 1; END$$",
    "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$BEGIN COMMIT; END$$",
  ]) {
    t.match(policy.classify(sql).refuse?.detail ?? 'allowed', /procedural code can run any statement it assembles/, sql);
    t.equal(none.classify(sql).refuse, null, `no pins: allowed: ${sql}`);
  }
  t.equal(none.classify("DO $$BEGIN RAISE NOTICE 'hello'; END$$").sticky, 'DO', 'and a DO block is sticky');
  t.equal(policy.classify("CREATE FUNCTION g() RETURNS text LANGUAGE sql AS $$SELECT current_setting('app.tenant_id')$$").refuse, null, 'a SQL function, parsed and inspected, stays allowed');
});

t.test('SQL function bodies: both readings, no session state, no view over pg_settings (while pinned)', async (t) => {
  // A reviewer's round-4 findings: a body harmless as written ran set_config when called with
  // standard_conforming_strings = off (its own SET clause, or SET LOCAL); a body could leave a
  // session SET on the shared connection at its call; an updatable view over pg_settings set
  // client_encoding through pg_settings' own rule.
  const hidden = "CREATE FUNCTION f() RETURNS text LANGUAGE sql SET standard_conforming_strings = off AS $f$SELECT 'a\\' , ' ; SELECT set_config($q$app.tenant_id$q$, $q$a$q$, false) ; -- '$f$";
  for (const [sql, detail] of [
    [hidden, /app.tenant_id|set_config/],
    ["CREATE FUNCTION h() RETURNS text LANGUAGE sql AS $f$SELECT 'a\\' || ' ; SELECT set_config($q$app.tenant_id$q$, $q$a$q$, false) ; -- '$f$", /app.tenant_id|set_config/],
    ["CREATE FUNCTION ro() RETURNS text LANGUAGE sql AS $f$SELECT set_config('default_transaction_read_only', 'on', false)$f$", /leaves session state \(set_config\)/],
    ['CREATE FUNCTION sp() RETURNS void LANGUAGE sql AS $f$SET search_path = elsewhere$f$', /leaves session state \(SET\)/],
    ['CREATE FUNCTION tt() RETURNS void LANGUAGE sql AS $f$CREATE TEMP TABLE x (a int)$f$', /leaves session state \(temporary table\)/],
    ['CREATE TEMP VIEW s AS SELECT name, setting FROM pg_settings', /a view over pg_settings/],
    ['CREATE VIEW s AS SELECT * FROM pg_catalog.pg_settings', /a view over pg_settings/],
    ['CREATE RULE "_RETURN" AS ON SELECT TO b_s DO INSTEAD SELECT name, setting FROM pg_settings', /a rule over pg_settings/], // round 5: a table made a view
    ['CREATE RULE r AS ON INSERT TO t DO ALSO UPDATE pg_settings SET setting = $$x$$ WHERE name = $$search_path$$', /pg_settings/],
  ] as const) {
    t.match(policy.classify(sql).refuse?.detail ?? 'allowed', detail, sql);
  }
  for (const sql of [
    "CREATE FUNCTION ok() RETURNS text LANGUAGE sql AS $f$SELECT current_setting('app.tenant_id')$f$",
    "CREATE FUNCTION ok2() RETURNS text LANGUAGE sql AS $f$SELECT 'a\\b'$f$", // a backslash that changes nothing
    'CREATE FUNCTION ok3() RETURNS void LANGUAGE sql AS $f$SET LOCAL work_mem = 64$f$',
    'CREATE VIEW v AS SELECT 1 AS one',
  ]) {
    t.equal(policy.classify(sql).refuse, null, `allowed: ${sql}`);
  }
});

t.test('setseed() is sticky, as SET seed: the next client would draw the same random() sequence', async (t) => {
  t.same(policy.classify('SELECT setseed(0.5)'), { refuse: null, sticky: 'setseed' });
  t.same(new PolicyClassifier([]).classify('SELECT random(), setseed(0.1)').sticky, 'setseed');
  // SET seed reseeds as setseed does, even LOCAL (a transaction's end does not reseed back).
  for (const sql of ['SET seed = 0.5', 'SET LOCAL seed TO 0.5', "SELECT set_config('seed', '0.5', true)", 'BEGIN; SET LOCAL "seed" = 0.1; COMMIT']) {
    t.same(policy.classify(sql), { refuse: null, sticky: 'setseed' }, sql);
  }
});

t.test('an operator, aggregate or cast over a function judged at its calls gets the same verdict (round 6)', async (t) => {
  // Its calls are A_Exprs, out of funcCall's sight: CREATE OPERATOR <~> (function = ts_stat)
  // ran set_config from text; ### (function = pg_terminate_backend) ended another tenant's
  // backend; %%% (function = pg_advisory_lock) left a lock for the next tenant.
  for (const [sql, message] of [
    ['CREATE OPERATOR public.<~> (rightarg = text, function = ts_stat)', /permission denied to set parameter "app.tenant_id"/],
    ['CREATE OPERATOR public.### (leftarg = int, rightarg = bigint, function = pg_terminate_backend)', /signal server processes/],
    ['CREATE OPERATOR public.%%% (rightarg = bigint, procedure = pg_advisory_lock)', /permission denied to set parameter "app.tenant_id"/],
    ['CREATE AGGREGATE agg(text) (sfunc = query_to_xml, stype = xml)', /permission denied to set parameter "app.tenant_id"/],
    ['CREATE AGGREGATE agg2(float8) (sfunc = setseed, stype = float8)', /permission denied to set parameter "app.tenant_id"/],
  ] as const) {
    t.match(policy.classify(sql).refuse?.message ?? 'allowed', message, sql);
  }
  const none = new PolicyClassifier([]);
  t.match(none.classify('CREATE OPERATOR public.### (leftarg = int, rightarg = bigint, function = pg_cancel_backend)').refuse?.message ?? 'allowed', /signal server processes/, 'signals: with or without pins');
  t.equal(none.classify('CREATE OPERATOR public.%%% (rightarg = bigint, function = pg_advisory_lock)').sticky, 'pg_advisory_lock', 'without pins: sticky, as the call is');
  t.equal(policy.classify('CREATE OPERATOR public.@@@ (leftarg = int, rightarg = int, function = int4pl)').refuse, null, 'an ordinary operator is allowed');
});

t.test('attribute notation: rel.fn is a call of fn (round 7)', async (t) => {
  // q.ts_stat ran ts_stat(q) through an implicit cast of q's row to text: b set its pin to a.
  for (const [sql, message] of [
    ['SELECT q.ts_stat FROM q', /permission denied to set parameter "app.tenant_id"/],
    ['SELECT (q).query_to_xml FROM q', /permission denied to set parameter "app.tenant_id"/],
    ['SELECT q.set_config FROM q', /permission denied to set parameter "app.tenant_id"/],
    ['SELECT lk.pg_terminate_backend FROM lk', /signal server processes/],
  ] as const) {
    t.match(policy.classify(sql).refuse?.message ?? 'allowed', message, sql);
  }
  t.equal(policy.classify('SELECT lk.pg_advisory_lock FROM lk').sticky, 'advisory lock', 'a session lock: sticky');
  t.equal(policy.classify('SELECT (lk).setseed FROM lk').sticky, 'setseed');
  t.same(policy.classify('SELECT n.body, n.tenant FROM notes n'), { refuse: null, sticky: null }, 'ordinary columns');
  t.match(policy.classify('CREATE CAST (q AS text) WITH FUNCTION q_text(q) AS IMPLICIT').refuse?.detail ?? 'allowed', /implicit or assignment cast/, 'the cast that makes it resolve, while pinned');
  t.match(policy.classify('CREATE CAST (q AS text) WITH INOUT AS ASSIGNMENT').refuse?.detail ?? 'allowed', /implicit or assignment cast/);
  t.equal(policy.classify('CREATE CAST (q AS text) WITH FUNCTION q_text(q)').refuse, null, 'an explicit cast shows where it is used');
  t.equal(new PolicyClassifier([]).classify('CREATE CAST (q AS text) WITH FUNCTION q_text(q) AS IMPLICIT').refuse, null, 'without pins: allowed');
});

t.test('stored code that leaves session state is refused while pinned; sticky without (round 8)', async (t) => {
  // A reviewer's finding: a view calling set_config('search_path', 'pg_temp, public', false),
  // selected from a later, non-sticky session, made the next tenant's rows land in a
  // temporary table. Defaults, checks, policies, rules, domains, trigger conditions and
  // indexes run their expressions in whatever session uses the object, as views do.
  const stored = [
    "CREATE VIEW public.sp AS SELECT set_config('search_path', 'pg_temp, public', false) AS x",
    'CREATE VIEW lk AS SELECT pg_advisory_lock(4242)::text',
    'CREATE VIEW sd AS SELECT setseed(0.42)',
    "CREATE MATERIALIZED VIEW mv AS SELECT set_config('work_mem', '64', false)",
    "CREATE TABLE own (x text DEFAULT set_config('default_transaction_read_only', 'on', false))",
    "CREATE TABLE g (x text GENERATED ALWAYS AS (set_config('work_mem', '64', false)) STORED)",
    "CREATE TABLE c (x int CHECK (pg_try_advisory_lock(x)))",
    "ALTER TABLE own ALTER COLUMN x SET DEFAULT set_config('work_mem', '64', false)",
    "ALTER TABLE own ADD CONSTRAINT k CHECK (setseed(0.5) IS NOT NULL)",
    "CREATE POLICY p ON own USING (pg_advisory_lock(1) IS NOT NULL)",
    "ALTER POLICY p ON own USING (set_config('work_mem', '64', false) IS NOT NULL)",
    "CREATE RULE r AS ON INSERT TO own DO ALSO SELECT set_config('work_mem', '64', false)",
    "CREATE DOMAIN d AS text DEFAULT set_config('work_mem', '64', false)",
    "CREATE DOMAIN d2 AS int CHECK (pg_advisory_lock(VALUE) IS NOT NULL)",
    "ALTER DOMAIN d ADD CONSTRAINT k CHECK (setseed(0.1) IS NOT NULL)",
    "CREATE TRIGGER t BEFORE INSERT ON own FOR EACH ROW WHEN (pg_try_advisory_lock(1)) EXECUTE FUNCTION f()",
    "CREATE INDEX i ON own ((set_config('work_mem', x, false)))",
    "CREATE FUNCTION fd(a text DEFAULT set_config('work_mem', '64', false)) RETURNS text LANGUAGE sql AS 'SELECT a'",
    "CREATE FUNCTION fa() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT set_config('work_mem', '64', false); END",
    'CREATE VIEW av AS SELECT q.pg_advisory_lock FROM q',
    'CREATE FUNCTION fs() RETURNS int LANGUAGE sql SET seed = 0.5 AS $$SELECT 1$$',
    'ALTER FUNCTION fs() SET seed = 0.5',
  ];
  const none = new PolicyClassifier([]);
  for (const sql of stored) {
    t.match(policy.classify(sql).refuse?.detail ?? 'allowed', /stored code .* leaves session state/, `pinned: ${sql}`);
    t.not(none.classify(sql).sticky, null, `without pins, sticky: ${sql}`);
  }
  // Stored code that leaves nothing, and the same calls run now, are what they were.
  for (const sql of [
    "CREATE VIEW ok AS SELECT set_config('work_mem', '64', true), pg_advisory_xact_lock(1), now()",
    "CREATE TABLE ok2 (x timestamptz DEFAULT now(), y text DEFAULT current_setting('app.tenant_id', true) CHECK (y <> ''))",
    "CREATE POLICY ok3 ON own USING (x = current_setting('app.tenant_id', true))",
    "CREATE TEMP VIEW tv AS SELECT 1",
  ]) {
    t.equal(policy.classify(sql).refuse, null, `allowed: ${sql}`);
  }
  t.equal(policy.classify("SELECT set_config('work_mem', '64', false)").sticky, 'set_config', 'a call run now: sticky, as before');
  t.equal(policy.classify('SELECT pg_advisory_lock(1)').sticky, 'advisory lock');
  t.equal(policy.classify("INSERT INTO own SELECT setseed(0.5)::text").sticky, 'setseed');
});

t.test("a function's SET search_path naming pg_temp, or FROM CURRENT, is refused while pinned (round 8)", async (t) => {
  // A reviewer's finding: CREATE FUNCTION mk() ... SET search_path = pg_temp AS $$CREATE TABLE
  // notes ...$$ only made its creator sticky; called from a later session, it left a
  // temporary notes table that captured the next tenant's rows.
  for (const sql of [
    "CREATE FUNCTION public.mk() RETURNS void LANGUAGE sql SET search_path = pg_temp AS $$ CREATE TABLE notes (tenant text DEFAULT 'a', body text) $$",
    'ALTER FUNCTION public.mk() SET search_path = pg_temp, public',
    'ALTER PROCEDURE public.pr() SET search_path TO "pg_temp"',
    "CREATE FUNCTION mk2() RETURNS void LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT 1 $$",
    'ALTER FUNCTION mk2() SET search_path FROM CURRENT',
  ]) {
    t.match(policy.classify(sql).refuse?.detail ?? 'allowed', /a function's SET search_path/, sql);
  }
  for (const sql of ["CREATE FUNCTION ok() RETURNS int LANGUAGE sql SET search_path = public, pg_catalog AS 'SELECT 1'", 'ALTER FUNCTION ok() SET work_mem FROM CURRENT']) {
    t.equal(policy.classify(sql).refuse, null, `allowed: ${sql}`);
  }
  t.equal(new PolicyClassifier([]).classify('ALTER FUNCTION public.mk() SET search_path = pg_temp').sticky, 'search_path with pg_temp', 'without pins: sticky, as before');
});

t.test('text the parser here rejects fails closed, unless every PostgreSQL rejects it (round 9)', async (t) => {
  // A reviewer's round-9 finding: PostgreSQL 15 accepts `… AS system_user` (a keyword only
  // from 16), the PostgreSQL 17 parser here does not, and text that does not parse was judged
  // by a few words only: a DO block in front of it changed the pin, a signal behind it ended
  // another tenant's transaction, a setseed() in it was not even sticky.
  const tail = 'SELECT 1 AS one FROM (SELECT 1) AS system_user';
  const none = new PolicyClassifier([]);
  for (const sql of [
    `DO $$BEGIN EXECUTE 'SET app.ten' || 'ant_id = ''b'''; END$$; ${tail}`,
    'SELECT setseed(0.42) FROM (SELECT 1) AS system_user',
    'UPDATE t SET',
    'SET app.other =',
    "SET application_name = 'x\\''; SELECT 1 FROM (SELECT 1) AS system_user; --'", // only the standard_conforming_strings = off reading fails
  ]) {
    const v = policy.classify(sql);
    t.equal(v.refuse?.code, '42601', `pinned, refused: ${sql}`);
    t.match(v.refuse?.message, /^syntax error at or near|^syntax error at end of input/, 'with the parser\'s own words');
    t.match(v.refuse?.detail, /is not parsed here/);
    t.same(none.classify(sql), { refuse: null, sticky: 'unparsed statement' }, `without pins, sticky (and closed, not reset): ${sql}`);
  }
  t.match(policy.classify('UPDATE t SET "" = 1').refuse, { code: '42601', message: /^zero-length delimited identifier/ }, "the parser's other errors in its words too");
  // Inside a SQL runner's text, or a SQL function body, the same (a signal behind the tail passed).
  for (const classifier of [policy, none]) {
    t.match(classifier.classify("SELECT query_to_xml('SELECT pg_terminate_backend(1) FROM (SELECT 1) AS system_user', true, false, '')").refuse?.message, /signal server processes/);
    t.match(classifier.classify("CREATE FUNCTION k() RETURNS bool LANGUAGE sql AS 'SELECT pg_cancel_backend(1) FROM (SELECT 1) AS system_user'").refuse?.message, /signal server processes/);
  }
  t.equal(none.classify("SELECT query_to_xml('SELECT setseed(0.1) FROM (SELECT 1) AS system_user', true, false, '')").sticky, 'unparsed statement', 'without pins, run now: sticky and closed');
  // (round 10) What it names, spelled through comments or Unicode escapes, counts the same.
  for (const classifier of [policy, none]) {
    for (const sql of [
      "SELECT 1 FROM pg_class system_user LIMIT 1; ALTER/**/ROLE CURRENT_USER PASSWORD 'hijacked'",
      "DO $$ BEGIN ALTER/**/ROLE CURRENT_USER PASSWORD 'hijacked2'; END $$",
      "DO $$ BEGIN EXECUTE 'ALTER /* a /* nested */ one */ USER current_user PASSWORD ''x'''; END $$",
      "DO $$ BEGIN ALTER -- a comment\n ROLE CURRENT_USER NOLOGIN; END $$",
    ]) {
      t.match(classifier.classify(sql).refuse?.message, /alter roles or databases/, sql);
    }
    for (const sql of [
      `SELECT 1 FROM pg_class system_user LIMIT 1; SELECT U&"pg_terminate!005fbackend" UESCAPE '!' (pid) FROM pg_stat_activity`,
      String.raw`DO $$ BEGIN PERFORM U&"pg_cancel\005fbackend"(1); END $$`,
      String.raw`DO $$ BEGIN EXECUTE U&'EXECUTE pgbastion\005fs1'; END $$`,
    ]) {
      t.match(classifier.classify(sql).refuse?.message, /Unicode escapes/, sql);
    }
  }
  t.equal(none.classify("DO $$ BEGIN ALTER TABLE users /* the role column */ ADD COLUMN role text; END $$").refuse, null, 'ALTER TABLE naming a role column: not refused');
  // What it names is refused with or without pins, as in a DO block.
  for (const classifier of [policy, none]) {
    t.match(classifier.classify('SELECT pg_terminate_backend(pid) FROM pg_stat_activity AS system_user').refuse?.message, /signal server processes/);
    t.match(classifier.classify('EXECUTE pgbastion_s1 AS system_user').refuse?.message, /prepared statements of other clients/);
  }
  // Text no PostgreSQL accepts runs nothing: left to the server's own error.
  for (const sql of ["SET app.tenant_id = 'b", 'DO $$ unterminated', 'SELECT set_config(/* unterminated', 'CREATE TABLE "unterminated (a int)']) {
    t.same(policy.classify(sql), { refuse: null, sticky: null }, `allowed: ${sql}`);
  }
});

t.test('the reason that decides how the connection is given back wins, in any order (round 9)', async (t) => {
  // A reviewer's round-9 finding: only the first sticky reason was kept, so a setseed() behind
  // a SET, in a PREPARE or in a WITH HOLD cursor got the connection reset, not closed.
  for (const sql of ['PREPARE p AS SELECT setseed(0.42)', "SET work_mem = '2MB'; SELECT setseed(0.42)", 'DECLARE c CURSOR WITH HOLD FOR SELECT setseed(0.42)', "SET work_mem = '2MB'; LOAD 'auto_explain'"]) {
    t.match(policy.classify(sql).sticky, /^(setseed|LOAD)$/, sql);
  }
  t.equal(policy.classify("SET application_name = 'x\\'; CREATE TEMP TABLE t (a int); --'").sticky, 'SET', 'first reason otherwise');
});

t.test('without pins, writing to pg_settings is SET: sticky (round 9)', async (t) => {
  const none = new PolicyClassifier([]);
  for (const sql of ["UPDATE pg_settings SET setting = 'pg_temp' WHERE name = 'search_path'", "UPDATE pg_catalog.pg_settings SET setting = 'on' WHERE name = 'default_transaction_read_only'"]) {
    t.equal(none.classify(sql).sticky, 'SET', sql);
  }
  t.equal(none.classify("SELECT setting FROM pg_settings WHERE name = 'search_path'").sticky, null, 'reading it is not');
});

t.test('text too long or too complex for the parser is judged without it (round 9)', async (t) => {
  // A reviewer's round-9 finding: 16 MB of `SET …;` held the event loop for 4 s and grew the
  // parser's memory for good; `1+1+…` exhausted it. Past MAX_PARSED_CHARS nothing is parsed.
  const none = new PolicyClassifier([], { cacheSize: 0 });
  const pinned = new PolicyClassifier(PINS, { cacheSize: 0 });
  const long = 'SET application_name = x;'.repeat(Math.ceil((MAX_PARSED_CHARS + 1) / 25));
  const started = performance.now();
  const v = pinned.classify(long);
  t.ok(performance.now() - started < 100, 'judged without the parser');
  t.match(v.refuse, { code: '54000', message: /^statement too long for pgbastion to check/ });
  t.same(none.classify(long), { refuse: null, sticky: 'unparsed statement' }, 'without pins: sticky, closed when the client leaves');
  t.match(none.classify(`SELECT pg_cancel_backend(1); ${long}`).refuse?.message, /signal server processes/, 'what it names still counts');
  t.equal(pinned.classify(`SELECT ${'1,'.repeat(MAX_PARSED_CHARS)}1`).refuse, null, 'no inspected form named: not looked at, however long');
  // (round 10) Long literals are data: a bulk upsert of 600 KB with trigger words in its data is parsed, and allowed.
  const upsert = `INSERT INTO docs (id, body) VALUES (1, '${'lorem tempor do set create alter user '.repeat(16_000)}') ON CONFLICT (id) DO UPDATE SET body = excluded.body`;
  t.same(pinned.classify(upsert), { refuse: null, sticky: null }, 'a bulk upsert with long literals');
  t.same(none.classify(upsert), { refuse: null, sticky: null });
  const deep = `/* set */ SELECT ${'1+'.repeat(200_000)}1`;
  t.match(pinned.classify(deep).refuse, { code: '54001', message: 'statement too complex for pgbastion to check' }, 'the parser\'s own limits: 54001');
  t.equal(none.classify(deep).sticky, 'unparsed statement');
});

t.test('a parse that overflows the stack inside the parser gets a fresh parser instance (round 10)', async (t) => {
  // A reviewer's round-10 finding: ~40 such parses left the WebAssembly instance unusable,
  // and every later statement that needs the parser was refused, for every client.
  const deep = `SELECT ${Array.from({ length: 10000 }, (_, i) => String(i)).join(' + ')} /* set */`;
  const c = new PolicyClassifier(PINS, { cacheSize: 0 });
  const before = parserReloads;
  for (let i = 0; i < 60; i++) {
    t.equal(c.classify(deep).refuse?.code, '54001');
    await parserSettled(); // (as between a client's messages, which arrive on later turns)
  }
  t.ok(parserReloads > before, `fresh instances loaded (${parserReloads - before})`);
  t.match(c.classify("SET app.tenant_id = 'b'").refuse, { message: 'permission denied to set parameter "app.tenant_id"' }, 'the parser still works');
  t.same(c.classify('SELECT 1 FROM t WHERE x IN (SELECT y FROM temp_rows)'), { refuse: null, sticky: null });
});

t.test('round 11: the encoding rule for unparsed text; linear text rules; operator runs are not parsed', async (t) => {
  const none = new PolicyClassifier([], { cacheSize: 0 });
  // Behind an unparsable prefix, SET client_encoding TO 'SJIS' then let a valid-UTF-8 string
  // end early in SJIS: pg_terminate_backend of another client's backend ran.
  // (Review of the parser cooldown: with a comment inside, SET/**/NAMES, the rule missed it.)
  for (const sql of [
    "SELECT * FROM pg_class AS system_user LIMIT 0; SET client_encoding TO 'SJIS'",
    "SELECT * FROM pg_class AS system_user LIMIT 0; SET NAMES 'SJIS'",
    "SELECT * FROM pg_class AS system_user LIMIT 0; SET/**/NAMES 'SJIS'",
    "SELECT * FROM pg_class AS system_user LIMIT 0; SET --x\nNAMES 'SJIS'",
    "DO $$BEGIN EXECUTE 'SET/**/NAMES ''SJIS'''; END$$",
  ]) {
    t.equal(none.classify(sql).refuse?.variable, 'client_encoding', sql);
  }
  let started = performance.now();
  none.classify(`DO $$BEGIN ${'--\n'.repeat(400_000)} PERFORM 1; END$$`);
  t.ok(performance.now() - started < 3000, `comments in a long DO body: linear (${Math.round(performance.now() - started)} ms)`);
  started = performance.now();
  const run = `SET x = 1 /*${'/*'.repeat(16_384)}`;
  t.match(policy.classify(run).refuse, { code: '54001' }, 'a long run of operator characters: refused while pinned, not parsed');
  t.equal(none.classify(run).sticky, 'unparsed statement');
  t.ok(performance.now() - started < 1000, `without its square's cost (${Math.round(performance.now() - started)} ms)`);
  t.same(policy.classify(`UPDATE t SET banner = '${'='.repeat(5000)}' /* ${'-'.repeat(200)} */`), { refuse: null, sticky: null }, 'runs inside literals, and short ones in comments, are fine');
});
