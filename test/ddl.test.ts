// Pure parts of DDL auditing: which statements are audited (and how their text is
// redacted), and how outcomes pair with the server's answers.

import t from 'tap';
import { MAX_PARSED_CHARS } from '../src/policy/parser.js';
import { ddlStatements } from '../src/audit/ddl.js';
import { loadPolicyParser } from '../src/policy/classify.js';
import { DdlTracker, MAX_RUNS, type DdlGroup, type DdlOutcome } from '../src/session/ddl-tracker.js';

await loadPolicyParser();

t.test('classification', async (t) => {
  const cases: [string, [string, string][]][] = [
    ['SELECT 1', []],
    ['INSERT INTO t VALUES (1)', []],
    ['UPDATE t SET x = 1', []],
    ['create table t (x int)', [['ddl', 'CreateStmt']]],
    ['ALTER TABLE t ADD COLUMN y int', [['ddl', 'AlterTableStmt']]],
    ['DROP INDEX i', [['ddl', 'DropStmt']]],
    ['TRUNCATE t', [['ddl', 'TruncateStmt']]],
    ["COMMENT ON TABLE t IS 'x'", [['ddl', 'CommentStmt']]],
    ['GRANT SELECT ON t TO r', [['role', 'GrantStmt']]],
    ['REVOKE r FROM u', [['role', 'GrantRoleStmt']]],
    ['CREATE ROLE r', [['role', 'CreateRoleStmt']]],
    ['ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO r', [['role', 'AlterDefaultPrivilegesStmt']]],
    ["ALTER SYSTEM SET work_mem = '4MB'", [['ddl', 'AlterSystemStmt']]],
    ['REINDEX TABLE t', [['ddl', 'ReindexStmt']]],
    ['CLUSTER t USING i', [['ddl', 'ClusterStmt']]],
    ['CREATE EXTENSION pgcrypto', [['ddl', 'CreateExtensionStmt']]],
    ['SELECT * INTO newt FROM t', [['ddl', 'SelectStmt']]],
    ['DO $$BEGIN END$$', [['dynamic', 'DoStmt']]],
    ['SELECT 1; CREATE TABLE a (x int); SELECT 2; DROP TABLE a', [['ddl', 'CreateStmt'], ['ddl', 'DropStmt']]],
    // (round 8) EXPLAIN ANALYZE runs its statement; PREPARE of a SELECT INTO is recorded when
    // prepared; SELECT INTO after a comment or another statement; REASSIGN OWNED.
    ['EXPLAIN ANALYZE CREATE TABLE x1 AS SELECT 1 AS a', [['ddl', 'CreateTableAsStmt']]],
    ['EXPLAIN (ANALYZE, COSTS OFF) SELECT 1 AS a INTO x2', [['ddl', 'SelectStmt']]],
    ['EXPLAIN (ANALYZE true) CREATE MATERIALIZED VIEW x3 AS SELECT 1', [['ddl', 'CreateTableAsStmt']]],
    ['EXPLAIN (ANALYZE off) CREATE TABLE x4 AS SELECT 1', []],
    ['EXPLAIN (ANALYZE 0) SELECT 1 INTO x4', []],
    ['EXPLAIN (ANALYZE on, ANALYZE false) SELECT 1 INTO x4', []],
    ['EXPLAIN CREATE TABLE x4 AS SELECT 1', []],
    ['PREPARE p2 AS SELECT 1 AS a INTO x10', [['ddl', 'PrepareStmt']]],
    ['PREPARE p3 AS SELECT 1 AS a', []],
    ['/* report */ SELECT 1 AS a INTO x4', [['ddl', 'SelectStmt']]],
    ['-- c\nSELECT 1 AS a INTO x5', [['ddl', 'SelectStmt']]],
    ['BEGIN; SELECT 1 AS a INTO w1; COMMIT', [['ddl', 'SelectStmt']]],
    ['INSERT INTO t SELECT 1', []],
    ['REASSIGN OWNED BY app_rw TO app_rw', [['ddl', 'ReassignOwnedStmt']]],
    ['CREAT TABLE broken', []],
    ['CREATE TABLEE broken', [['unparsed', '']]],
  ];
  for (const [sql, want] of cases) t.same(ddlStatements(sql).map((d) => [d.class, d.node]), want, sql);
  t.same(ddlStatements('SELECT 1; CREATE TABLE a (x int); SELECT 2').map((d) => d.index), [1], 'index among all statements');
});

t.test('password redaction: every literal of a statement that may carry one', async (t) => {
  const cases: [string, string][] = [
    ["CREATE ROLE r LOGIN PASSWORD 'p1'", 'CREATE ROLE r LOGIN PASSWORD <REDACTED>'],
    ["create user r with encrypted password 'p''2' valid until 'infinity'", 'create user r with encrypted password <REDACTED> valid until <REDACTED>'],
    ["ALTER ROLE r PASSWORD /* 'decoy' */ 'p3'", "ALTER ROLE r PASSWORD /* 'decoy' */ <REDACTED>"],
    ["ALTER USER r PASSWORD -- 'decoy'\n'p4'", "ALTER USER r PASSWORD -- 'decoy'\n<REDACTED>"],
    ["ALTER ROLE r PASSWORD E'p\\'5'", 'ALTER ROLE r PASSWORD <REDACTED>'],
    ['ALTER ROLE r PASSWORD $x$p6$x$', 'ALTER ROLE r PASSWORD <REDACTED>'],
    ["CREATE USER MAPPING FOR r SERVER s OPTIONS (user 'u', password 'p7')", 'CREATE USER MAPPING FOR r SERVER s OPTIONS (user <REDACTED>, password <REDACTED>)'],
    // No literal: nothing to hide.
    ['ALTER ROLE r PASSWORD NULL', 'ALTER ROLE r PASSWORD NULL'],
  ];
  for (const [sql, want] of cases) t.equal(ddlStatements(sql)[0]?.statement, want, sql);
  const multi = ddlStatements("SELECT 1; CREATE ROLE a PASSWORD 'pa'; CREATE ROLE b PASSWORD 'pb'");
  t.same(multi.map((d) => d.statement), ['CREATE ROLE a PASSWORD <REDACTED>', 'CREATE ROLE b PASSWORD <REDACTED>']);
  for (const [sql] of cases) t.notMatch(JSON.stringify(ddlStatements(sql)), /p[1-7]|p\\'5|p''2/, `no secret left: ${sql}`);
});

t.test('redaction: continued strings, every quoting, DO blocks, function bodies, connection strings', async (t) => {
  // [sql, the statement as recorded]; no SECRET may be left.
  const cases: [string, string][] = [
    // Adjacent literals over a newline are one string (the SQL standard's concatenation).
    ["CREATE ROLE r2 PASSWORD 'SECRETBBB1'\n'SECRETBBB2'", 'CREATE ROLE r2 PASSWORD <REDACTED>'],
    ["CREATE ROLE r2 PASSWORD E'SECRETBBB1\\''\n  'SECRETBBB2'", 'CREATE ROLE r2 PASSWORD <REDACTED>'],
    ["ALTER ROLE r2 PASSWORD 'SECRETBBB1' -- note\n'SECRETBBB2' VALID UNTIL 'infinity'", 'ALTER ROLE r2 PASSWORD <REDACTED> VALID UNTIL <REDACTED>'],
    ["ALTER ROLE r2 PASSWORD 'SECRETBBB1'\n-- PostgreSQL 15 continues over this comment\n'SECRETBBB2'", 'ALTER ROLE r2 PASSWORD <REDACTED>'],
    ["ALTER ROLE r2 PASSWORD U&'SECRET!0031'\n'SECRET2' UESCAPE '!'", 'ALTER ROLE r2 PASSWORD <REDACTED> UESCAPE <REDACTED>'],
    ['CREATE USER r /*c*/ ENCRYPTED /*c*/ PASSWORD /*c*/ $a$SECRETDDD$a$', 'CREATE USER r /*c*/ ENCRYPTED /*c*/ PASSWORD /*c*/ <REDACTED>'],
    ["create role r password'SECRETEEE'", 'create role r password<REDACTED>'],
    // A word ending in e before a quote is no E'' prefix: the backslash escapes nothing.
    ["ALTER ROLE r PASSWORD 'SECRET\\'\n'SECRET2'", 'ALTER ROLE r PASSWORD <REDACTED>'],
    // DO blocks and function bodies in SQL or PL/pgSQL: the literals inside the body.
    ["DO $$ BEGIN EXECUTE 'CREATE ROLE r3 PASSWORD ''SECRETCCC'''; END $$", 'DO $$ BEGIN EXECUTE <REDACTED>; END $$'],
    ["DO $d$ BEGIN EXECUTE format('ALTER ROLE %I PASSWORD %L', 'r3', $p$SECRETCCC$p$); END $d$", 'DO $d$ BEGIN EXECUTE format(<REDACTED>, <REDACTED>, <REDACTED>); END $d$'],
    ["DO 'BEGIN EXECUTE ''ALTER ROLE r3 PASSWORD ''''SECRETCCC''''''; END'", 'DO <REDACTED>'],
    [
      "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN PERFORM dblink_connect('host=h password=SECRETFFF'); END $f$",
      'CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN PERFORM dblink_connect(<REDACTED>); END $f$',
    ],
    ["CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT 'postgresql://u:SECRETGGG@h/d' $$", 'CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT <REDACTED> $$'],
    ["CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT 'password=SECRETGGG'; END", 'CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT <REDACTED>; END'],
    // Another language's strings are not SQL's: the whole body goes.
    ['CREATE FUNCTION f() RETURNS void LANGUAGE plpython3u AS $f$ plpy.connect("password=SECRETHHH") $f$', 'CREATE FUNCTION f() RETURNS void LANGUAGE plpython3u AS <REDACTED>'],
    // Connection strings and foreign-data credentials.
    ["CREATE SUBSCRIPTION s1 CONNECTION 'host=h password=SECRETIII dbname=d' PUBLICATION p", 'CREATE SUBSCRIPTION s1 CONNECTION <REDACTED> PUBLICATION p'],
    ["ALTER SUBSCRIPTION s1 CONNECTION 'host=h password=SECRETIII'", 'ALTER SUBSCRIPTION s1 CONNECTION <REDACTED>'],
    ["CREATE SERVER s FOREIGN DATA WRAPPER dblink_fdw OPTIONS (host 'h', password 'SECRETJJJ')", 'CREATE SERVER s FOREIGN DATA WRAPPER dblink_fdw OPTIONS (host <REDACTED>, password <REDACTED>)'],
    ["ALTER USER MAPPING FOR r SERVER s OPTIONS (SET password 'SECRETKKK')", 'ALTER USER MAPPING FOR r SERVER s OPTIONS (SET password <REDACTED>)'],
    ["CREATE FOREIGN TABLE ft (a int) SERVER s OPTIONS (odbc_PWD 'SECRETLLL')", 'CREATE FOREIGN TABLE ft (a int) SERVER s OPTIONS (odbc_PWD <REDACTED>)'],
    ["ALTER SYSTEM SET primary_conninfo = 'host=h password=SECRETMMM'", 'ALTER SYSTEM SET primary_conninfo = <REDACTED>'],
    // (round 8) A "quoted identifier" is a value in SET clauses, and comments are free text:
    // those that name a secret go; others stay.
    ['CREATE FUNCTION fq() RETURNS int LANGUAGE sql SET application_name = "host=db password=SECRETOOO" AS $$SELECT 1$$', 'CREATE FUNCTION fq() RETURNS int LANGUAGE sql SET application_name = <REDACTED> AS $$SELECT 1$$'],
    ['ALTER FUNCTION fq() SET application_name TO "password=SECRETPPP"', 'ALTER FUNCTION fq() SET application_name TO <REDACTED>'],
    ["CREATE ROLE \"Alice\" PASSWORD 'SECRETQQQ' /* the old password was SECRETQQQ2 */", 'CREATE ROLE "Alice" PASSWORD <REDACTED> <REDACTED>'],
    ["ALTER ROLE r PASSWORD 'SECRETQQQ' -- pwd SECRETQQQ3", 'ALTER ROLE r PASSWORD <REDACTED> <REDACTED>'],
    ["DO $$ BEGIN -- password SECRETRRR\n PERFORM 1; /* \"token SECRETRRR2\" */ END $$", 'DO $$ BEGIN <REDACTED>\n PERFORM 1; <REDACTED> END $$'],
    // Neither reading parses: still recorded, every literal hidden.
    ["CREATE ROLE r4 PASSWORD 'SECRETNNN' WITH NONSENSE", 'CREATE ROLE r4 PASSWORD<REDACTED>'], // unparsed: everything after the word
  ];
  for (const [sql, want] of cases) {
    const got = ddlStatements(sql);
    t.equal(got[0]?.statement, want, sql);
    t.notMatch(JSON.stringify(got), /SECRET/, `no secret left: ${sql}`);
  }
  // Statements with nothing secret keep their literals.
  for (const sql of ["COMMENT ON TABLE t IS 'plain'", "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT 'plain' $$", "DO $$BEGIN RAISE NOTICE 'plain'; END$$"]) {
    t.equal(ddlStatements(sql)[0]?.statement, sql, `kept: ${sql}`);
  }
});

t.test('standard_conforming_strings = off: both readings are audited', async (t) => {
  // [sql, [index, node, statement] of each audited statement]
  const cases: [string, [number, string, string][]][] = [
    // One SELECT as written; a SELECT and a DROP to a server with the setting off.
    ["SELECT 'x\\' , ' ; DROP TABLE victim; -- '", [[1, 'DropStmt', 'DROP TABLE victim']]],
    ["SELECT N'x\\' , ' ; DROP TABLE victim; -- '", [[1, 'DropStmt', 'DROP TABLE victim']]],
    // E'' takes escapes either way: the DROP is inside a string in both readings.
    ["SELECT E'x\\\\' , ' ; DROP TABLE victim; -- '", []],
    // The other way round: only the reading with the setting on holds the DDL.
    ["SELECT 'x\\'; DROP TABLE victim; -- '", [[1, 'DropStmt', 'DROP TABLE victim']]],
    // The same statement in both readings: recorded once.
    ["CREATE TABLE t (a text DEFAULT 'a\\b')", [[0, 'CreateStmt', "CREATE TABLE t (a text DEFAULT 'a\\b')"]]],
    ["SET standard_conforming_strings = off; CREATE ROLE r PASSWORD 'SECRET\\'Z'", [[1, 'CreateRoleStmt', 'CREATE ROLE r PASSWORD <REDACTED>']]],
    // A password in one reading is hidden from every event of the other.
    ["CREATE ROLE r PASSWORD 'SECRETa\\'; CREATE TABLE SECRETb(); --'", [[0, 'CreateRoleStmt', 'CREATE ROLE r PASSWORD <REDACTED>'], [1, 'CreateStmt', '<REDACTED>']]],
    // A reading that does not parse (with the setting off the quote never closes): all its literals are hidden.
    ["CREATE TABLE t (p text DEFAULT 'C:\\')", [[0, 'CreateStmt', 'CREATE TABLE t (p text DEFAULT <REDACTED>']]],
  ];
  for (const [sql, want] of cases) t.same(ddlStatements(sql).map((d) => [d.index, d.node, d.statement]), want, sql);
});

t.test('a text neither reading parses is recorded as unparsed', async (t) => {
  t.same(ddlStatements("CREATE TABLEE broken (a text DEFAULT 'x')"), [{ index: 0, class: 'unparsed', node: '', statement: 'CREATE TABLEE broken (a text DEFAULT <REDACTED>)' }]);
  t.same(ddlStatements("SELECT 1; DROP TABLE 'oops'"), [{ index: 0, class: 'unparsed', node: '', statement: 'SELECT 1; DROP TABLE <REDACTED>' }]);
  // A password without its quotes (the server refuses it, but the text is recorded).
  t.same(ddlStatements('ALTER ROLE bob PASSWORD hunter2'), [{ index: 0, class: 'unparsed', node: '', statement: 'ALTER ROLE bob PASSWORD<REDACTED>' }]);
  t.same(ddlStatements('CREATE USER x WITH ENCRYPTED PASSWORD hunter2 VALID UNTIL tomorrow'), [{ index: 0, class: 'unparsed', node: '', statement: 'CREATE USER x WITH ENCRYPTED PASSWORD<REDACTED>' }]);
  t.same(ddlStatements('CREAT TABLE broken'), [], 'no DDL word: not looked at');
});

t.test('tracker: outcomes per statement of a Query string', async (t) => {
  const seen: [string, DdlOutcome][] = [];
  const tracker = new DdlTracker((stmt, outcome) => seen.push([stmt.node, outcome]));
  const stmts = ddlStatements('SELECT 1; CREATE TABLE a (x int); SELECT 1/0; DROP TABLE a');
  tracker.owed(stmts);
  t.ok(tracker.active);
  tracker.commandComplete('SELECT 1');
  tracker.commandComplete('CREATE TABLE');
  tracker.error('22012');
  tracker.ready('I');
  // (round 8) The string is one transaction: the CREATE rolled back with the error.
  t.same(seen, [['CreateStmt', { outcome: 'error', sqlstate: '22012' }]], 'CREATE rolled back by the error after it; DROP after the error never ran');
  t.notOk(tracker.active);
  tracker.owed(ddlStatements('CREATE TABLE a (x int)'));
  tracker.error('42P07');
  tracker.ready('I');
  t.same(seen[1], ['CreateStmt', { outcome: 'error', sqlstate: '42P07' }]);
  // A COMMIT between the statement and the error made it permanent; a ROLLBACK in between did not.
  tracker.owed(ddlStatements('CREATE TABLE b (x int); COMMIT; SELECT 1/0'));
  for (const tag of ['CREATE TABLE', 'COMMIT']) tracker.commandComplete(tag);
  tracker.error('22012');
  tracker.ready('I');
  t.same(seen[2], ['CreateStmt', { outcome: 'ok', command_tag: 'CREATE TABLE' }], 'committed before the error');
  tracker.owed(ddlStatements('BEGIN; CREATE TABLE c (x int); ROLLBACK; COMMIT; SELECT 1/0'));
  for (const tag of ['BEGIN', 'CREATE TABLE', 'ROLLBACK', 'COMMIT']) tracker.commandComplete(tag);
  tracker.error('22012');
  tracker.ready('I');
  t.same(seen[3], ['CreateStmt', { outcome: 'error', sqlstate: '22012' }], 'rolled back before the COMMIT');
});

t.test('tracker: extended protocol, pipelining, and a Sync the server ignored', async (t) => {
  const seen: [string, DdlOutcome][] = [];
  const tracker = new DdlTracker((stmt, outcome) => seen.push([stmt.node, outcome]), false); // session mode: Parses only
  tracker.owed([]); // an unrelated Query in flight first
  tracker.parsed(ddlStatements('CREATE TABLE b (x int)'));
  tracker.owed(null); // its Sync
  tracker.ready('I'); // the Query's ReadyForQuery: nothing recorded
  t.same(seen, []);
  tracker.commandComplete('CREATE TABLE');
  tracker.ready('I');
  t.same(seen, [['CreateStmt', { outcome: 'ok', command_tag: 'CREATE TABLE' }]]);
  tracker.parsed(ddlStatements('DROP TABLE b'));
  tracker.owed(null);
  tracker.unowe(); // COPY IN swallowed that Sync: the statements wait for the next one
  tracker.owed(null);
  tracker.error('2BP01');
  tracker.ready('I');
  t.same(seen[1], ['DropStmt', { outcome: 'error', sqlstate: '2BP01' }]);
});

t.test('tracker: each run of a prepared audited statement is recorded, with its own outcome', async (t) => {
  const seen: [string, DdlOutcome][] = [];
  const tracker = new DdlTracker((stmt, outcome) => seen.push([stmt.statement, outcome]));
  const create = ddlStatements('CREATE TABLE c (x int)');
  // Prepared (Parse + Sync): recorded once, with an empty tag, since nothing of it ran.
  tracker.parsed(create);
  tracker.owed(null);
  t.ok(tracker.active, 'tags wanted before the Sync: a Flush may bring them');
  tracker.ready('I');
  t.same(seen, [['CREATE TABLE c (x int)', { outcome: 'ok', command_tag: '' }]]);
  // Run twice in later batches.
  for (const [reply, want] of [
    ['CREATE TABLE', { outcome: 'ok', command_tag: 'CREATE TABLE' }],
    ['42P07', { outcome: 'error', sqlstate: '42P07' }],
  ] as const) {
    t.notOk(tracker.tracksPortals);
    tracker.bound('', create);
    t.equal(tracker.executed(''), true);
    t.ok(tracker.active);
    tracker.owed(null);
    if (reply === 'CREATE TABLE') tracker.commandComplete(reply);
    else tracker.error(reply);
    tracker.ready('I');
    t.same(seen.at(-1), ['CREATE TABLE c (x int)', want]);
  }
  t.equal(seen.length, 3);
  // Parse, Bind and Execute in one batch: one event, the run's.
  const drop = ddlStatements('DROP TABLE c');
  tracker.parsed(drop);
  tracker.bound('', drop);
  tracker.executed('');
  tracker.owed(null);
  tracker.commandComplete('DROP TABLE');
  tracker.ready('I');
  t.same(seen.slice(3), [['DROP TABLE c', { outcome: 'ok', command_tag: 'DROP TABLE' }]]);
});

t.test('tracker: run tags by position, runs skipped after an error, portals end with the transaction', async (t) => {
  const seen: [string, DdlOutcome][] = [];
  const tracker = new DdlTracker((stmt, outcome) => seen.push([stmt.statement, outcome]));
  const create = ddlStatements('CREATE TABLE d (x int)');
  // Parse first (the batch is open before any Execute), then a SELECT, an empty query, the DDL.
  tracker.parsed(create);
  tracker.bound('sel', null);
  t.equal(tracker.executed(null), false);
  t.equal(tracker.executed(null), false);
  tracker.bound('', create);
  t.equal(tracker.executed(''), true);
  tracker.owed(null);
  for (const tag of ['SELECT 1', '', 'CREATE TABLE']) tracker.commandComplete(tag);
  tracker.ready('I');
  t.same(seen, [['CREATE TABLE d (x int)', { outcome: 'ok', command_tag: 'CREATE TABLE' }]]);
  // Inside a transaction block a named portal outlives its batch, until the transaction ends.
  tracker.bound('p', create);
  tracker.owed(null);
  tracker.ready('T');
  t.ok(tracker.tracksPortals);
  t.equal(tracker.executed('p'), true);
  tracker.owed(null);
  tracker.error('42P07');
  tracker.ready('E');
  t.same(seen[1], ['CREATE TABLE d (x int)', { outcome: 'error', sqlstate: '42P07' }]);
  tracker.owed([]); // ROLLBACK
  tracker.ready('I');
  t.notOk(tracker.tracksPortals, 'gone with the transaction');
  t.equal(tracker.executed('p'), false);
  tracker.owed(null);
  tracker.ready('I');
  // A Bind pipelined behind a batch still in flight survives that batch's end.
  tracker.owed([]);
  tracker.bound('q', create);
  tracker.ready('I');
  t.equal(tracker.executed('q'), true);
  tracker.owed(null);
  tracker.commandComplete('CREATE TABLE');
  tracker.ready('I');
  t.same(seen[2], ['CREATE TABLE d (x int)', { outcome: 'ok', command_tag: 'CREATE TABLE' }]);
  // A Query behind an unfinished extended batch: one ReadyForQuery, batch outcome for both.
  tracker.bound('', create);
  tracker.executed('');
  tracker.owed(ddlStatements('DROP TABLE d'));
  tracker.commandComplete('CREATE TABLE');
  tracker.commandComplete('DROP TABLE');
  tracker.ready('I');
  t.same(seen.slice(3).map(([s, o]) => [s, o.outcome]), [['DROP TABLE d', 'ok'], ['CREATE TABLE d (x int)', 'ok']]);
  t.notOk(tracker.active);
});

t.test('tracker: runs a COMMIT in the batch made permanent before its error are recorded ok', async (t) => {
  const create = ddlStatements('CREATE TABLE c1 (x int)');
  const drop = ddlStatements('DROP TABLE c2');
  const alter = ddlStatements('ALTER TABLE c3 ADD y int');
  const err = { outcome: 'error', sqlstate: '22012' };
  // [what, an unaudited Execute (BEGIN) before the batch opened, Executes (audited group or null), completion tags, error, records]
  const cases: [string, boolean, (DdlGroup | null)[], string[], string | null, [string, object][]][] = [
    ['CREATE, COMMIT, DROP, 1/0: the CREATE was committed, the DROP rolled back with the error', false, [create, null, drop, null],
      ['CREATE TABLE', 'COMMIT', 'DROP TABLE'], '22012', [['CREATE TABLE c1 (x int)', { outcome: 'ok', command_tag: 'CREATE TABLE' }], ['DROP TABLE c2', err]]],
    ['a ROLLBACK (also ROLLBACK TO SAVEPOINT\'s tag) before the COMMIT: not committed by it', false, [create, null, alter, null, null],
      ['CREATE TABLE', 'ROLLBACK', 'ALTER TABLE', 'COMMIT'], '22012', [['CREATE TABLE c1 (x int)', err], ['ALTER TABLE c3 ADD y int', { outcome: 'ok', command_tag: 'ALTER TABLE' }]]],
    ['PREPARE TRANSACTION ends the transaction uncommitted: a COMMIT after it commits nothing of it', false, [create, null, null, null],
      ['CREATE TABLE', 'PREPARE TRANSACTION', 'COMMIT'], '22012', [['CREATE TABLE c1 (x int)', err]]],
    ['BEGIN first, its completion among the tags: the COMMIT is certainly after the CREATE (ok, no tag)', true, [create, null, null],
      ['BEGIN', 'CREATE TABLE', 'COMMIT'], '22012', [['CREATE TABLE c1 (x int)', { outcome: 'ok', command_tag: '' }]]],
    ['BEGIN first, its completion relayed before the batch opened: the COMMIT could be the CREATE\'s own position (conservative)', true, [create, null, null],
      ['CREATE TABLE', 'COMMIT'], '22012', [['CREATE TABLE c1 (x int)', err]]],
    ['without an error the batch\'s outcome stands for every run, as before', false, [create, null],
      ['CREATE TABLE', 'COMMIT'], null, [['CREATE TABLE c1 (x int)', { outcome: 'ok', command_tag: 'CREATE TABLE' }]]],
  ];
  for (const [what, beginFirst, groups, tags, error, expected] of cases) {
    const seen: [string, DdlOutcome][] = [];
    const tracker = new DdlTracker((stmt, outcome) => seen.push([stmt.statement, outcome]));
    if (beginFirst) {
      tracker.bound('', null);
      tracker.executed('');
    }
    for (const g of groups) {
      tracker.bound('', g);
      tracker.executed('');
    }
    tracker.owed(null);
    for (const tag of tags) tracker.commandComplete(tag);
    if (error) tracker.error(error);
    tracker.ready('I');
    t.same(seen, expected, what);
    t.notOk(tracker.active);
  }
});

t.test('tracker: a first Execute keeps tag positions, named portals are not re-bound, runs past MAX_RUNS are counted', async (t) => {
  const seen: [string, DdlOutcome][] = [];
  const tracker = new DdlTracker((stmt, outcome) => seen.push([stmt.statement, outcome]));
  const create = ddlStatements('CREATE TABLE e (x int)');
  tracker.bound('p1', create);
  tracker.executed('p1');
  tracker.bound('', null);
  tracker.executed('');
  tracker.owed(null);
  tracker.commandComplete('CREATE TABLE');
  tracker.commandComplete('SELECT 1');
  tracker.ready('I');
  t.same(seen, [['CREATE TABLE e (x int)', { outcome: 'ok', command_tag: 'CREATE TABLE' }]], 'the tag at its own position');
  // A Bind of a named portal that exists fails on the server (42P03): the portal still runs the DDL.
  tracker.bound('p', create);
  tracker.owed(null);
  tracker.ready('T');
  tracker.bound('p', null);
  tracker.owed(null);
  tracker.error('42P03');
  tracker.ready('E');
  t.equal(tracker.executed('p'), true, 'still the DDL');
  tracker.owed(null);
  tracker.ready('T');
  // A Query drops the unnamed portal.
  tracker.bound('', create);
  tracker.queried();
  t.equal(tracker.executed(''), false);
  tracker.owed([]);
  tracker.ready('I');
  t.equal(seen.length, 2);
  // An Execute went out before anything audited in the batch: positions are unknown, the last tag stands in.
  seen.length = 0;
  tracker.executed(null);
  tracker.bound('', create);
  tracker.executed('');
  tracker.executed(null);
  tracker.owed(null);
  for (const tag of ['SELECT 1', 'CREATE TABLE', 'SELECT 2']) tracker.commandComplete(tag);
  tracker.ready('I');
  t.same(seen, [['CREATE TABLE e (x int)', { outcome: 'ok', command_tag: 'SELECT 2' }]]);
  // One Bind, many Executes without a Sync: MAX_RUNS events, then one with the count.
  seen.length = 0;
  tracker.bound('', create);
  for (let i = 0; i < MAX_RUNS + 5; i++) tracker.executed('');
  tracker.owed(null);
  tracker.error('42P07');
  tracker.ready('I');
  t.equal(seen.length, MAX_RUNS + 1);
  t.same(seen.at(-1), ['CREATE TABLE e (x int)', { outcome: 'error', sqlstate: '42P07', runs: 5 }]);
});

t.test('tracker: a Query the server skipped after an error in its batch is settled with the Sync', async (t) => {
  const seen: [string, DdlOutcome][] = [];
  const tracker = new DdlTracker((stmt, outcome) => seen.push([stmt.statement, outcome]));
  const create = ddlStatements('CREATE TABLE q (x int)');
  const drop = ddlStatements('DROP TABLE q');
  // P/B/E (fails), Query CREATE, Sync: the error comes while both ReadyForQuery are owed.
  tracker.executed(null);
  tracker.owed(create); // the Query: no audited work before it, an Execute went out first
  tracker.owed(null); // the Sync
  tracker.queryIgnored();
  tracker.error('22012');
  tracker.ready('I'); // the Sync's
  t.same(seen, [['CREATE TABLE q (x int)', { outcome: 'error', sqlstate: '22012' }]]);
  t.notOk(tracker.active, 'nothing more owed');
  // The next statement pairs with its own ReadyForQuery.
  seen.length = 0;
  tracker.owed(drop);
  tracker.commandComplete('DROP TABLE');
  tracker.ready('I');
  t.same(seen, [['DROP TABLE q', { outcome: 'ok', command_tag: 'DROP TABLE' }]]);
  // The skipped Query's batch joins an audited batch behind it, still open; a Query written
  // once the error is known is skipped too.
  seen.length = 0;
  tracker.parsed(drop);
  tracker.owed(create); // Query inside the batch that parsed the DROP
  tracker.parsed(create);
  tracker.queryIgnored();
  tracker.error('42601');
  t.ok(tracker.active);
  tracker.skippedQuery(drop, '42601');
  tracker.owed(null);
  tracker.ready('I');
  t.same(
    seen.map(([s, o]) => [s, o.outcome]),
    [
      ['CREATE TABLE q (x int)', 'error'],
      ['DROP TABLE q', 'error'],
      ['DROP TABLE q', 'error'],
      ['CREATE TABLE q (x int)', 'error'],
    ],
    'every statement of the skipped stretch, as failed',
  );
  t.notOk(tracker.active);
  // A Query skipped behind an unaudited failing batch still records its statements as failed.
  seen.length = 0;
  tracker.skippedQuery(create, '22012');
  tracker.owed(null);
  tracker.ready('I');
  t.same(seen, [['CREATE TABLE q (x int)', { outcome: 'error', sqlstate: '22012' }]]);
});

t.test('tracker, session mode: a Parse in a batch a Query closed does not take the Query\'s tag', async (t) => {
  const seen: [string, DdlOutcome][] = [];
  const tracker = new DdlTracker((stmt, outcome) => seen.push([stmt.statement, outcome]), false);
  tracker.parsed(ddlStatements('CREATE TABLE s (x int)'));
  tracker.owed([]); // Query('SELECT 1') before the Sync
  tracker.owed(null);
  for (const tag of ['CREATE TABLE', 'SELECT 1']) tracker.commandComplete(tag);
  tracker.ready('I');
  tracker.ready('I');
  t.same(seen, [['CREATE TABLE s (x int)', { outcome: 'ok', command_tag: '' }]]);
});

t.test('text with too much code for the parser: one unparsed event giving its size when its code names DDL (round 9)', async (t) => {
  const filler = `'${'x'.repeat(MAX_PARSED_CHARS)}'`;
  const code = `${'1+'.repeat(MAX_PARSED_CHARS / 2)}1`;
  const got = ddlStatements(`CREATE TABLE big AS SELECT ${code} AS v`);
  t.same(got.map((d) => [d.class, d.node]), [['unparsed', '']]);
  t.match(got[0]?.statement, /^<\d+ bytes, not parsed here>$/);
  t.same(ddlStatements(`INSERT INTO t VALUES ('please do create the table', ${code})`), [], 'DDL words only inside literals: nothing');
  t.same(ddlStatements(`INSERT INTO t VALUES (1) /* create */ -- drop\n, (${code})`), [], 'or comments');
  t.equal(ddlStatements(`SELECT 'x\\' , ' ; DROP TABLE t; -- ', ${code}`).length, 1, 'either reading: with standard_conforming_strings off this is a DROP');
  t.equal(ddlStatements(`SELECT 'x' , ' ; DROP TABLE t; -- ', ${code}`).length, 0, 'and without the backslash, a string');
  // Long literals are parsed as usual: the statement is classified (round 10).
  t.same(ddlStatements(`CREATE TABLE big AS SELECT ${filler} AS v`).map((d) => [d.class, d.node]), [['ddl', 'CreateTableAsStmt']]);
});

t.test('tracker: unanswered work (round 10)', async (t) => {
  const seen: [string, DdlOutcome][] = [];
  const tracker = new DdlTracker((stmt, outcome) => seen.push([stmt.node, outcome]));
  // A completed statement of a string whose end never came: rolled back unless a COMMIT followed it.
  tracker.owed(ddlStatements('CREATE TABLE a (x int); SELECT pg_sleep(9)'));
  tracker.commandComplete('CREATE TABLE');
  tracker.unanswered('client disconnected');
  t.same(seen.pop(), ['CreateStmt', { outcome: 'unknown', reason: 'client disconnected' }], 'completed, not committed: unknown');
  tracker.owed(ddlStatements('CREATE TABLE a (x int); COMMIT; SELECT pg_sleep(9)'));
  for (const tag of ['CREATE TABLE', 'COMMIT']) tracker.commandComplete(tag);
  tracker.unanswered('client disconnected');
  t.same(seen.pop(), ['CreateStmt', { outcome: 'ok', command_tag: 'CREATE TABLE' }], 'a COMMIT followed it: ok');
  tracker.owed(ddlStatements('SELECT 1/0; CREATE TABLE b (x int)'));
  tracker.error('22012');
  tracker.unanswered('server connection lost');
  t.same(seen, [], 'after the error nothing ran: not recorded');
  // A portal bound to DDL inside a transaction dies with its connection: a later run of
  // another portal of that name is not taken for it.
  const create = ddlStatements('CREATE TABLE phantom (x int)');
  tracker.parsed(create);
  tracker.bound('p1', create);
  tracker.owed(null);
  tracker.ready('T');
  seen.length = 0; // (the Parse that no Execute ran is recorded at its Sync)
  tracker.unanswered('server connection lost');
  t.equal(tracker.executed('p1'), false, 'the portal is forgotten');
  t.same(seen, []);
});
