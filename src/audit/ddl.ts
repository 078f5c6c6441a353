// Which statements of a SQL string the audit trail records as `ddl` (pgAudit's DDL and
// ROLE classes, plus DO blocks as `dynamic`), each with its own text, secrets redacted.
// Pure: takes the text, returns descriptions; the session pairs them with outcomes.
//
// Two readings. Any client may SET standard_conforming_strings = off, and then
// `SELECT 'x\' , ' ; DROP TABLE t; -- '` is a SELECT and a DROP to the server but one SELECT
// to the parser here (which always assumes on). Both readings are classified and their
// audited statements united; each keeps its index in its own reading, so the tracker records
// one only if the server answered that many statements (see ddl-tracker.ts queryOutcome).
// The second reading is parsed from a copy in which each literal the parser here would read
// differently is masked byte for byte (its content replaced by x), so every position the
// parser reports is a position in the client's text. (policy/escape-strings.ts rewrites the
// text instead, which moves positions: fine for a verdict, not for redacting the original.)
//
// Redaction is conservative. A statement that may carry a secret (a password or other
// credential option, a subscription's or foreign server's connection string, a mention of
// one in its text, e.g. inside a DO block) has every string literal and dollar-quoted string
// redacted, as either reading lexes them (a literal in one may be bare words in the other).
// In DO and CREATE FUNCTION bodies written in SQL or PL/pgSQL only the literals inside the
// body go, so the code stays readable. What either reading cannot parse at all is treated as
// secret throughout; a text neither reading parses is still recorded, as class `unparsed`.

import { parseLocated, type LocatedStatement } from '../policy/parser.js';
import { TextLru } from '../cache/text-lru.js';
import { lex, tooCostlyToParse, type Literal, type Span } from '../policy/literals.js';

/** `unparsed`: neither reading parses (the whole text, every literal redacted; node ''). */
export type DdlClass = 'ddl' | 'role' | 'dynamic' | 'unparsed';

export interface DdlStatement {
  /** Position among all statements of the string (the k-th CommandComplete answers it). */
  readonly index: number;
  readonly class: DdlClass;
  /** The parser's node type, e.g. CreateStmt, GrantRoleStmt ('' when unparsed). */
  readonly node: string;
  /** The statement's text, every literal that may hold a secret replaced by <REDACTED>. */
  readonly statement: string;
}

const ROLE = /^(CreateRole|AlterRole|AlterRoleSet|DropRole|Grant|GrantRole|AlterDefaultPrivileges)Stmt$/;
const DDL =
  /^(Create\w*|Alter\w*|Drop\w*|Rename|Comment|SecLabel|Truncate|Reindex|Cluster|Define|CompositeType|Index|View|Rule|ImportForeignSchema|RefreshMatView|ReassignOwned)Stmt$/;
/** Words one of which every audited statement contains; text without any is not parsed at all. */
const DDL_WORDS = 'create|alter|drop|grant|revoke|truncate|comment|security|reindex|cluster|refresh|import|reassign|do';
const MAY_BE_DDL = new RegExp(`\\b(${DDL_WORDS})\\b`, 'i');
/**
 * SELECT ... INTO creates a table. Anywhere in the text: after a comment, another statement,
 * EXPLAIN ANALYZE or PREPARE.
 */
const SELECT_INTO = /\bselect\b[\s\S]*\binto\b/i;
/** The words of both: text without any (most statements) is dismissed by one scan. */
const MAY_BE_AUDITED = new RegExp(`\\b(${DDL_WORDS}|into)\\b`, 'i');

/** Statements whose options are connection settings and credentials (subscriptions, foreign servers, user mappings). */
const SECRET_NODES = /^(Create|Alter)(Subscription|ForeignServer|UserMapping)Stmt$/;
/** Option names (DefElem) that may carry a credential: PASSWORD, OPTIONS (password …, odbc_PWD …, secret_key …). */
const SECRET_OPTION = /pass|pwd|secret|key|token|cred|conn/i;
/** Text that may hold a credential: the word, a connection string, a URI with user info. */
const SECRET_TEXT = /pass|pwd|secret|conninfo|credential|token|\/\/[^\s'"/@]*@/i;
const REDACTED = '<REDACTED>';

/** Verdicts by text, bounded in entries and in the text kept (see TextLru). */
const cache = new TextLru<DdlStatement[]>(2000, 4 * 1024 * 1024);
const NONE: DdlStatement[] = [];

/**
 * The audited statements of `sql` (most texts: none, found without parsing). Cached by text.
 * `mayParse` false (policy/parser-cooldown.ts): text not seen before is recorded as unparsed.
 */
export function ddlStatements(sql: string, mayParse = true): DdlStatement[] {
  if (!MAY_BE_AUDITED.test(sql) || (!MAY_BE_DDL.test(sql) && !SELECT_INTO.test(sql))) return NONE;
  const hit = cache.get(sql);
  if (hit) return hit;
  if (!mayParse) return notParsed(sql);
  const found = tooCostlyToParse(sql) === null ? classify(sql) : notParsed(sql);
  if (sql.length <= 8192) cache.set(sql, found);
  return found;
}

/**
 * Text too costly for the parser (policy/literals.ts tooCostlyToParse): when its code (outside
 * literals and comments, as either reading lexes it) holds a word of an audited statement,
 * one `unparsed` event that gives its size, not its text (which could be megabytes, and hold anything).
 */
function notParsed(sql: string): DdlStatement[] {
  const bytes = Buffer.from(sql, 'utf8');
  const readings = bytes.includes(0x5c /* \ */) ? [false, true] : [false];
  for (const backslashInPlain of readings) {
    const opaque: Span[] = [];
    const spans = merged([...lex(bytes, 0, bytes.length, backslashInPlain, opaque), ...opaque]);
    const code: string[] = [];
    let pos = 0;
    for (const span of spans) {
      code.push(bytes.toString('utf8', pos, span.start));
      pos = span.end;
    }
    code.push(bytes.toString('utf8', pos));
    const text = code.join(' ');
    if (MAY_BE_DDL.test(text) || SELECT_INTO.test(text)) {
      return [{ index: 0, class: 'unparsed', node: '', statement: `<${bytes.length} bytes, not parsed here>` }];
    }
  }
  return NONE;
}


/** An audited statement of one reading, before its text is redacted. */
interface Found {
  readonly index: number;
  readonly class: DdlClass;
  readonly node: string;
  readonly span: Span;
}

function classify(sql: string): DdlStatement[] {
  const bytes = Buffer.from(sql, 'utf8');
  const readings = readingsOf(bytes);
  const lexings = readings.map((r) => r.literals);
  const opaques = readings.map((r) => r.opaque);
  const found: Found[] = [];
  const hidden: Span[] = [];
  for (const r of readings) {
    if (r.stmts === null) {
      // Statements this reading cannot tell apart: any literal of the text may be a password.
      for (const lits of lexings) for (const l of lits) hidden.push(l);
      continue;
    }
    r.stmts.forEach((s, index) => {
      const span = { start: s.location, end: s.length === null ? bytes.length : s.location + s.length };
      const node = Object.keys(s.stmt as object)[0] ?? '';
      // Every statement, audited or not: in the other reading its literals may lie inside an audited one.
      for (const secret of secretsOf(bytes, span, node, s.stmt, lexings, opaques)) hidden.push(secret);
      const audited = auditedAs(node, s.stmt);
      if (audited !== null) found.push({ index, class: audited.class, node: audited.node, span });
    });
  }
  if (readings.every((r) => r.stmts === null)) {
    found.push({ index: 0, class: 'unparsed', node: '', span: { start: 0, end: bytes.length } });
    // A secret need not be a literal in text no one parsed (PASSWORD hunter2, quotes
    // forgotten): everything after the first word that may name one goes.
    const m = SECRET_TEXT.exec(sql);
    if (m !== null) {
      const wordEnd = m.index + m[0].length + (/^\w*/.exec(sql.slice(m.index + m[0].length))?.[0].length ?? 0);
      hidden.push({ start: Buffer.byteLength(sql.slice(0, wordEnd)), end: bytes.length });
    }
  }
  const cuts = merged(hidden);
  return distinct(found.map((f) => ({ index: f.index, class: f.class, node: f.node, statement: redact(bytes, f.span, cuts).trim() })));
}

/**
 * The class and node a statement is recorded under, or null. EXPLAIN ANALYZE runs its
 * statement (recorded as that statement's node); PREPARE of a SELECT INTO is recorded when
 * prepared, since its EXECUTE names nothing the text here can resolve.
 */
function auditedAs(node: string, stmt: unknown): { class: DdlClass; node: string } | null {
  if (node === 'ExplainStmt') {
    const explain = (stmt as { ExplainStmt: { query?: object; options?: unknown[] } }).ExplainStmt;
    const inner = explain.query;
    if (inner === undefined || !analyzes(explain.options)) return null;
    return auditedAs(Object.keys(inner)[0] ?? '', inner);
  }
  if (node === 'PrepareStmt') {
    const query = (stmt as { PrepareStmt: { query?: unknown } }).PrepareStmt.query;
    return isSelectInto(query) ? { class: 'ddl', node } : null;
  }
  if (node === 'DoStmt') return { class: 'dynamic', node };
  if (ROLE.test(node)) return { class: 'role', node };
  return DDL.test(node) || isSelectInto(stmt) ? { class: 'ddl', node } : null;
}

/** EXPLAIN's options turn ANALYZE on (not ANALYZE false|off|0; the last one given counts). */
function analyzes(options: unknown[] | undefined): boolean {
  let on = false;
  for (const o of options ?? []) {
    const d = (o as { DefElem?: { defname?: string; arg?: unknown } }).DefElem;
    if (d?.defname?.toLowerCase() !== 'analyze') continue;
    // defGetBoolean's false: the words false and off, or the integer 0 (printed as {}).
    const arg = d.arg as { String?: { sval?: string }; Integer?: { ival?: number } } | undefined;
    const word = arg?.String?.sval?.toLowerCase();
    on = arg?.Integer !== undefined ? (arg.Integer.ival ?? 0) !== 0 : word !== 'false' && word !== 'off';
  }
  return on;
}

function isSelectInto(stmt: unknown): boolean {
  return Boolean((stmt as { SelectStmt?: { intoClause?: unknown } }).SelectStmt?.intoClause);
}

/** A statement both readings found (same index, node and redacted text) once; in index order, the standard reading's first. */
function distinct(stmts: readonly DdlStatement[]): DdlStatement[] {
  const seen = new Set<string>();
  const out = stmts.filter((d) => {
    const key = `${d.index}\0${d.node}\0${d.statement}`;
    return seen.has(key) ? false : (seen.add(key), true);
  });
  return out.sort((a, b) => a.index - b.index);
}

// ---- Readings ---------------------------------------------------------------------------

interface Reading {
  /** Its string literals and dollar-quoted strings, in order. */
  readonly literals: readonly Literal[];
  /** Its comments and "quoted identifiers": text a secret can hide in too (secretsOf). */
  readonly opaque: readonly Span[];
  /** null: the parser rejects it. */
  readonly stmts: readonly LocatedStatement[] | null;
}

/** The standard reading, and the standard_conforming_strings = off one where it differs. */
function readingsOf(bytes: Buffer): Reading[] {
  const opaque: Span[] = [];
  const standard = lex(bytes, 0, bytes.length, false, opaque);
  const out: Reading[] = [{ literals: standard, opaque, stmts: parsed(bytes, standard) }];
  if (bytes.includes(0x5c /* \ */)) {
    const offOpaque: Span[] = [];
    const off = lex(bytes, 0, bytes.length, true, offOpaque);
    // Literals in the same places: the same statements (a backslash escaping no quote).
    if (!sameSpans(off, standard)) out.push({ literals: off, opaque: offOpaque, stmts: parsed(bytes, off) });
  }
  return out;
}

/** The statements of one reading; null when the server would reject it (a literal not closed) or the parser does. */
function parsed(bytes: Buffer, literals: readonly Literal[]): readonly LocatedStatement[] | null {
  return literals.some((l) => !l.closed) ? null : parseLocated(masked(bytes, literals));
}

function sameSpans(a: readonly Span[], b: readonly Span[]): boolean {
  return a.length === b.length && a.every((s, k) => s.start === b[k]!.start && s.end === b[k]!.end);
}

/** The text with each literal the parser here would read differently masked (same length in bytes). */
function masked(bytes: Buffer, literals: readonly Literal[]): string {
  const todo = literals.filter((l) => l.mask && l.closed);
  if (todo.length === 0) return bytes.toString('utf8');
  const copy = Buffer.from(bytes);
  for (const l of todo) copy.fill(0x78 /* x */, l.bodyStart, l.bodyEnd);
  return copy.toString('utf8');
}

// ---- What to hide -----------------------------------------------------------------------

/** The spans to redact for one statement of a reading: none unless it may carry a secret. */
function secretsOf(bytes: Buffer, span: Span, node: string, stmt: unknown, lexings: readonly (readonly Literal[])[], opaques: readonly (readonly Span[])[]): Span[] {
  if (!SECRET_NODES.test(node) && !hasOption(stmt, SECRET_OPTION) && !SECRET_TEXT.test(bytes.toString('utf8', span.start, span.end))) return [];
  const code = sqlBodies(node, stmt);
  const out: Span[] = [];
  // A "quoted identifier" is a value too (SET application_name = "password=…"), and a
  // comment is free text: each that names a secret goes whole.
  for (const spans of opaques) {
    for (let k = firstEndingAfter(spans, span.start); k < spans.length && spans[k]!.start < span.end; k++) {
      const o = spans[k]!;
      if (SECRET_TEXT.test(bytes.toString('utf8', o.start, o.end))) out.push(o);
    }
  }
  for (const lits of lexings) {
    for (let k = firstEndingAfter(lits, span.start); k < lits.length && lits[k]!.start < span.end; k++) {
      const lit = lits[k]!;
      if (!(code && lit.dollar)) out.push(lit);
      else for (const inner of secretsWithin(bytes, lit.bodyStart, lit.bodyEnd)) out.push(inner);
    }
  }
  // Fail closed: a password option with no literal found after it hides the rest of the statement.
  for (const at of passwordPositions(stmt)) {
    if (!out.some((s) => s.start >= at && s.start < span.end)) out.push({ start: at, end: span.end });
  }
  return out;
}

/**
 * In b[from, to), the content of a function body: every literal as either reading lexes it,
 * and the comments and "quoted identifiers" that name a secret.
 */
function secretsWithin(bytes: Buffer, from: number, to: number): Span[] {
  const opaque: Span[] = [];
  const out: Span[] = lex(bytes, from, to, false, opaque);
  if (bytes.subarray(from, to).includes(0x5c)) out.push(...lex(bytes, from, to, true, opaque));
  for (const o of opaque) if (SECRET_TEXT.test(bytes.toString('utf8', o.start, o.end))) out.push(o);
  return out;
}

/** Index of the first span (of ordered, not overlapping ones: one lexing, or merged cuts) that ends after `at`. */
function firstEndingAfter(lits: readonly Span[], at: number): number {
  let lo = 0;
  let hi = lits.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (lits[mid]!.end > at) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** Whether a DO or CREATE FUNCTION body is SQL or PL/pgSQL, whose own literals can be found. */
function sqlBodies(node: string, stmt: unknown): boolean {
  type Opt = { DefElem?: { defname?: string; arg?: { String?: { sval?: string } } } };
  const s = stmt as { DoStmt?: { args?: Opt[] }; CreateFunctionStmt?: { options?: Opt[] } };
  const options = node === 'DoStmt' ? s.DoStmt?.args : node === 'CreateFunctionStmt' ? s.CreateFunctionStmt?.options : undefined;
  if (options === undefined) return false;
  const language = options.find((o) => o.DefElem?.defname === 'language')?.DefElem?.arg?.String?.sval ?? (node === 'DoStmt' ? 'plpgsql' : 'sql');
  return /^(sql|plpgsql)$/i.test(language);
}

type DefElem = { defname?: string; location?: number; arg?: unknown };

/** Whether any option (DefElem) in the tree has a name matching `name`. */
function hasOption(node: unknown, name: RegExp): boolean {
  return defElems(node).some((d) => typeof d.defname === 'string' && name.test(d.defname));
}

/** Byte positions of every `password` option with a value (CREATE/ALTER ROLE|USER, user mappings, ...). */
function passwordPositions(node: unknown): number[] {
  return defElems(node)
    .filter((d) => d.defname?.toLowerCase() === 'password' && d.arg !== undefined && typeof d.location === 'number')
    .map((d) => d.location!);
}

function defElems(node: unknown, out: DefElem[] = []): DefElem[] {
  if (Array.isArray(node)) {
    for (const n of node) defElems(n, out);
  } else if (node !== null && typeof node === 'object') {
    const def = (node as { DefElem?: DefElem }).DefElem;
    if (def) out.push(def);
    for (const v of Object.values(node)) defElems(v, out);
  }
  return out;
}

/** Sorted, overlapping or touching spans joined. */
function merged(spans: readonly Span[]): Span[] {
  const out: { start: number; end: number }[] = [];
  for (const s of [...spans].sort((a, b) => a.start - b.start)) {
    const last = out.at(-1);
    if (last !== undefined && s.start <= last.end) last.end = Math.max(last.end, s.end);
    else out.push({ start: s.start, end: s.end });
  }
  return out;
}

/** The text of `span` with the parts of `cuts` (merged) inside it replaced by <REDACTED>. */
function redact(bytes: Buffer, span: Span, cuts: readonly Span[]): string {
  const parts: string[] = [];
  let pos = span.start;
  for (let k = firstEndingAfter(cuts, span.start); k < cuts.length && cuts[k]!.start < span.end; k++) {
    const cut = cuts[k]!;
    parts.push(bytes.toString('utf8', pos, Math.max(pos, cut.start)), REDACTED);
    pos = Math.min(cut.end, span.end);
  }
  parts.push(bytes.toString('utf8', pos, span.end));
  return parts.join('');
}
