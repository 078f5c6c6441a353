// Builds the hidden statement that makes a server connection hold exactly one client's
// settings (startup parameters, tracked SETs and pins). RESET drops what a previous client
// set and this one did not, back to the server's own default.
//
// A value is applied with a plain `SET name = '…'` when that means exactly what the startup
// packet meant: printable ASCII without a backslash, for a setting whose SET does not
// re-quote a single literal (GUC_LIST_QUOTE, e.g. search_path). Anything else takes
// set_config() with the value in hex, which applies the raw value as a startup packet does.
// SET is a utility statement, set_config() a SELECT through the planner: in a pgbench test
// where every transaction switched tenants, PostgreSQL lost 35 % of its throughput to the
// set_config() form and 15 % to the SET form.
//
// It fails closed: it runs as one explicit transaction, so if any part fails the session
// is left in an aborted transaction and whatever the client pipelined behind it fails
// with 25P02 instead of running with someone else's values. The statement is pure ASCII
// without backslashes, so neither the client_encoding nor standard_conforming_strings a
// previous client left behind can change what it means.
//
// A switch of custom variables (pins) and a few core settings (INLINE_CORE) can instead ride
// in the client's own Query, ahead of its one statement and without BEGIN/COMMIT, or ahead of
// its extended-protocol batch: see inline-switch.ts.

import { serialize } from 'pg-protocol';

/**
 * Values a `SET … = '…'` literal carries unchanged whatever the session's client_encoding
 * (ASCII is a single byte in every one) and standard_conforming_strings (no backslash).
 */
const PLAIN_VALUE = /^[\x20-\x5b\x5d-\x7e]*$/;

/**
 * PostgreSQL's own GUC_LIST_QUOTE settings: SET quotes a single literal as one list element
 * (`SET search_path = 'a, b'` gives `"a, b"`). An extension may define more; one of theirs
 * given in a startup packet or as a pin, with a value that is not a plain identifier, would
 * then read quoted (a wrong value for that client, never another client's).
 */
const LIST_QUOTED = new Set(['search_path', 'temp_tablespaces', 'local_preload_libraries', 'session_preload_libraries', 'shared_preload_libraries', 'oauth_validator_libraries']);

/**
 * Settings whose SET merges a partial value with the one in force: `SET DateStyle = 'SQL'`
 * keeps the date order the session holds (a previous client's DMY), whereas in a startup
 * packet it merges with the server's default. So a switch resets them before setting a new
 * value: the client gets what it would get connecting directly.
 */
const MERGED_WITH_CURRENT = new Set(['datestyle']);

/** Whether SET merges a partial value of `name` with the one in force (see MERGED_WITH_CURRENT). */
export function mergesWithCurrent(name: string): boolean {
  return MERGED_WITH_CURRENT.has(name.toLowerCase());
}

/**
 * Core settings a switch may carry inline (ahead of the client's statement, in the same
 * transaction), besides custom variables such as pins: they act on the next statement of
 * that transaction, and they do not change how PostgreSQL reads its text, which it converts
 * and parses whole before running any of it. Not client_encoding or
 * standard_conforming_strings (read while the text is converted and parsed), nor
 * default_transaction_read_only and the like (read when the transaction starts, before the
 * switch), nor anything else nobody has checked. These are what drivers commonly send.
 */
const INLINE_CORE = new Set(['application_name', 'datestyle', 'intervalstyle', 'timezone', 'extra_float_digits', 'bytea_output']);

function switchesInline(name: string): boolean {
  return name.includes('.') || INLINE_CORE.has(name.toLowerCase());
}

/** A SQL string literal that is safe whatever standard_conforming_strings says. */
export function quoteLiteral(value: string): string {
  if (value.includes('\\')) return `E'${value.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
  return `'${value.replace(/'/g, "''")}'`;
}

/** A GUC name as a SQL identifier chain (`app.tenant_id` → "app"."tenant_id"). */
function quoteGucName(name: string): string {
  return name
    .split('.')
    .map((part) => `"${part.replace(/"/g, '""')}"`)
    .join('.');
}

/** The statements that turn `held` into `wanted` (setConfigSql wraps them). */
interface SwitchStatements {
  /** SET and RESET statements, then at most one SELECT of set_config() calls. */
  readonly statements: string[];
  /** Whether these may also ride ahead of a client's statement in its own Query (inlineSwitch). */
  readonly inlineable: boolean;
  /** A statement_timeout the previous client left must not cancel the switch. */
  readonly guardTimeout: boolean;
}

function switchStatements(wanted: ReadonlyMap<string, string>, held: ReadonlyMap<string, string>): SwitchStatements | null {
  if (holdsExactly(held, wanted)) return null; // the usual lease: checked without allocating
  const wantedLower = new Map<string, string>();
  for (const [name, value] of wanted) wantedLower.set(name.toLowerCase(), value);
  const statements: string[] = [];
  let inlineable = true;
  for (const [name] of held) {
    if (wantedLower.has(name.toLowerCase())) continue;
    statements.push(`RESET ${quoteGucName(name)}`);
    if (!switchesInline(name)) inlineable = false;
  }
  const calls: string[] = [];
  for (const [name, value] of wanted) {
    const before = heldValue(held, name);
    if (before === value) continue;
    if (!switchesInline(name)) inlineable = false;
    if (before !== undefined && mergesWithCurrent(name)) statements.push(`RESET ${quoteGucName(name)}`);
    if (PLAIN_VALUE.test(value) && !LIST_QUOTED.has(name.toLowerCase())) statements.push(`SET ${quoteGucName(name)} = ${quoteLiteral(value)}`);
    else calls.push(`pg_catalog.set_config(${quoteLiteral(name)}, ${utf8Hex(value)}, false)`);
  }
  if (calls.length > 0) statements.push(`SELECT ${calls.join(', ')}`);
  if (statements.length === 0) return null;
  // No statement_timeout may cancel the switch: neither one the previous client left (only
  // its own settings can have, and they are in `held`: a sticky client's connection is
  // DISCARDed on release) nor the one being set, which would cover the statements after it.
  // So the timeout's own statements go last, and the guard is set again behind them (a
  // SET LOCAL outlasts a later SET only until the commit, where the SET's value stays).
  // The usual switch of pins needs none of this.
  const timeoutLast = statements.filter((s) => TIMEOUT_STATEMENT.test(s));
  const guardTimeout = heldValue(held, 'statement_timeout') !== undefined || timeoutLast.length > 0;
  if (timeoutLast.length > 0) {
    const rest = statements.filter((s) => !TIMEOUT_STATEMENT.test(s));
    statements.length = 0;
    statements.push(...rest, ...timeoutLast, GUARD_TIMEOUT);
  }
  return { statements, inlineable: inlineable && calls.length === 0 && !guardTimeout, guardTimeout };
}

const GUARD_TIMEOUT = 'SET LOCAL statement_timeout = 0';
/** A SET or RESET of statement_timeout (names are quoted by quoteGucName; case may vary). */
const TIMEOUT_STATEMENT = /^(?:SET|RESET) "?statement_timeout"?(?: |$)/i;

/**
 * The statement that turns `held` into `wanted`, or null when they already agree (then no
 * round trip at all). Names compare case-insensitively, as PostgreSQL's GUC names do.
 */
export function setConfigSql(wanted: ReadonlyMap<string, string>, held: ReadonlyMap<string, string>): string | null {
  const sw = switchStatements(wanted, held);
  return sw === null ? null : inTransaction(sw);
}

function inTransaction(sw: SwitchStatements): string {
  return ['BEGIN', ...(sw.guardTimeout ? [GUARD_TIMEOUT] : []), ...sw.statements, 'COMMIT'].join('; ');
}

/**
 * A switch that can ride with the client's own work: in its Query, ahead of its one
 * statement (the text to put in front: ASCII, ending in "; "), or in its extended-protocol
 * batch, ahead of its first message (Parse/Bind/Execute of each statement on the unnamed
 * statement and portal). `statements` is how many it holds; in a Query each answers with one
 * CommandComplete, in a batch with ParseComplete, BindComplete and CommandComplete. See
 * inline-switch.ts for when and why.
 */
export interface InlineSwitch {
  readonly prefix: Buffer;
  readonly extended: Buffer;
  readonly statements: number;
}

/** Parse, Bind and Execute of each statement, unnamed, no parameters, text results. */
function extendedSwitch(statements: readonly string[]): Buffer {
  return Buffer.concat(
    statements.flatMap((text) => [serialize.parse({ name: '', text, types: [] }), serialize.bind({}), serialize.execute({})]),
  );
}

/** A switch between two settings: its Query message, and its inline form where it has one. */
export interface SwitchPlan {
  readonly query: Buffer;
  readonly inline: InlineSwitch | null;
}

/**
 * The switching statements, per (wanted, held) pair of settingsKey() fingerprints, which
 * determine the maps. Tenants switching back and forth on a saturated pool ask for the same
 * few pairs over and over, on every lease: they are looked up by the two key strings the
 * client and the connection already hold (hashed once), not by a key built per lookup.
 * Bounded in entries and in key text, since a client's own SET values can be long: past
 * either bound the cache starts afresh.
 */
const switchPlans = new Map<string, Map<string, SwitchPlan | null>>();
const MAX_PLANS = 4096;
const MAX_PLAN_KEY_CHARS = 1024 * 1024;
let planCount = 0;
let planKeyChars = 0;

/** How to turn `held` into `wanted` (null: nothing to switch), memoised by their keys. */
export function switchPlan(wanted: ReadonlyMap<string, string>, wantedKey: string, held: ReadonlyMap<string, string>, heldKey: string): SwitchPlan | null {
  if (wantedKey === heldKey) return null;
  let byHeld = switchPlans.get(wantedKey);
  const known = byHeld?.get(heldKey);
  if (known !== undefined) return known;
  const plan = planOf(switchStatements(wanted, held));
  const chars = wantedKey.length + heldKey.length;
  if (chars > MAX_PLAN_KEY_CHARS) return plan;
  if (planCount >= MAX_PLANS || planKeyChars + chars > MAX_PLAN_KEY_CHARS) {
    switchPlans.clear();
    planCount = 0;
    planKeyChars = 0;
    byHeld = undefined;
  }
  if (byHeld === undefined) {
    byHeld = new Map();
    switchPlans.set(wantedKey, byHeld);
    planKeyChars += wantedKey.length;
  }
  byHeld.set(heldKey, plan);
  planCount++;
  planKeyChars += heldKey.length;
  return plan;
}

function planOf(sw: SwitchStatements | null): SwitchPlan | null {
  if (sw === null) return null;
  return {
    query: serialize.query(inTransaction(sw)),
    inline: sw.inlineable
      ? { prefix: Buffer.from(`${sw.statements.join('; ')}; `, 'latin1'), extended: extendedSwitch(sw.statements), statements: sw.statements.length }
      : null,
  };
}

/**
 * A fingerprint of a set of settings: equal for maps holdsExactly() calls equal. The pool
 * compares it to prefer an idle connection holding a client's settings (a string compare
 * per candidate), and switchPlan trusts it: equal keys mean no switch. So a connection's
 * `applied` map must only ever change together with its `appliedKey` (holdExactly, holdOne,
 * noteDiscardAll), and a client's params with its paramsKey (setParams).
 */
export function settingsKey(settings: ReadonlyMap<string, string>): string {
  if (settings.size === 0) return '';
  const pairs = [...settings].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return JSON.stringify(pairs); // injective: no value can imitate a separator
}

/** Same names (as written) with the same values: a lease needs no statement. */
function holdsExactly(held: ReadonlyMap<string, string>, wanted: ReadonlyMap<string, string>): boolean {
  if (held.size !== wanted.size) return false;
  for (const [name, value] of wanted) if (held.get(name) !== value) return false;
  return true;
}

/** `value` as an expression of pure ASCII that yields it whatever the session's encodings. */
function utf8Hex(value: string): string {
  return `pg_catalog.convert_from(pg_catalog.decode('${Buffer.from(value, 'utf8').toString('hex')}', 'hex'), 'UTF8')`;
}

function heldValue(held: ReadonlyMap<string, string>, name: string): string | undefined {
  const direct = held.get(name);
  if (direct !== undefined) return direct;
  const lower = name.toLowerCase();
  for (const [k, v] of held) if (k.toLowerCase() === lower) return v;
  return undefined;
}
