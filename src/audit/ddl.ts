// Which statements of a SQL string the audit trail records as `ddl` (pgAudit's DDL and
// ROLE classes, plus DO blocks as `dynamic`), each with its own text, passwords redacted.
// Pure: takes the text, returns descriptions; the session pairs them with outcomes.

import { parseLocated } from '../policy/parser.js';
import { TextLru } from '../cache/text-lru.js';

export type DdlClass = 'ddl' | 'role' | 'dynamic';

export interface DdlStatement {
  /** Position among all statements of the string (the k-th CommandComplete answers it). */
  readonly index: number;
  readonly class: DdlClass;
  /** The parser's node type, e.g. CreateStmt, GrantRoleStmt. */
  readonly node: string;
  /** The statement's text, every password literal replaced by <REDACTED>. */
  readonly statement: string;
}

const ROLE = /^(CreateRole|AlterRole|AlterRoleSet|DropRole|Grant|GrantRole|AlterDefaultPrivileges)Stmt$/;
const DDL =
  /^(Create\w*|Alter\w*|Drop\w*|Rename|Comment|SecLabel|Truncate|Reindex|Cluster|Define|CompositeType|Index|View|Rule|ImportForeignSchema|RefreshMatView)Stmt$/;
/** Words one of which every audited statement contains; text without any is not parsed at all. */
const DDL_WORDS = 'create|alter|drop|grant|revoke|truncate|comment|security|reindex|cluster|refresh|import|do';
const MAY_BE_DDL = new RegExp(`\\b(${DDL_WORDS})\\b`, 'i');
/** SELECT ... INTO creates a table. */
const SELECT_INTO = /^\s*(with\b[\s\S]*|\()?\s*select\b[\s\S]*\binto\b/i;
/** The words of both: text without any (most statements) is dismissed by one scan. */
const MAY_BE_AUDITED = new RegExp(`\\b(${DDL_WORDS}|into)\\b`, 'i');

/** Verdicts by text, bounded in entries and in the text kept (see TextLru). */
const cache = new TextLru<DdlStatement[]>(2000, 4 * 1024 * 1024);
const NONE: DdlStatement[] = [];

/** The audited statements of `sql` (most texts: none, found without parsing). Cached by text. */
export function ddlStatements(sql: string): DdlStatement[] {
  if (!MAY_BE_AUDITED.test(sql) || (!MAY_BE_DDL.test(sql) && !SELECT_INTO.test(sql))) return NONE;
  const hit = cache.get(sql);
  if (hit) return hit;
  const found = classify(sql);
  if (sql.length <= 8192) cache.set(sql, found);
  return found;
}

function classify(sql: string): DdlStatement[] {
  const stmts = parseLocated(sql);
  if (stmts === null) return [];
  const bytes = Buffer.from(sql, 'utf8');
  const out: DdlStatement[] = [];
  stmts.forEach((s, index) => {
    const node = Object.keys(s.stmt as object)[0] ?? '';
    const cls: DdlClass | null = node === 'DoStmt' ? 'dynamic' : ROLE.test(node) ? 'role' : DDL.test(node) || isSelectInto(s.stmt) ? 'ddl' : null;
    if (cls === null) return;
    const end = s.length === null ? bytes.length : s.location + s.length;
    out.push({ index, class: cls, node, statement: redact(bytes, s.location, end, s.stmt).trim() });
  });
  return out;
}

function isSelectInto(stmt: unknown): boolean {
  return Boolean((stmt as { SelectStmt?: { intoClause?: unknown } }).SelectStmt?.intoClause);
}

/** The statement text with each password literal (found from the parser's DefElem positions) redacted. */
function redact(bytes: Buffer, start: number, end: number, stmt: unknown): string {
  const secrets = passwordPositions(stmt).sort((a, b) => a - b);
  if (secrets.length === 0) return bytes.toString('utf8', start, end);
  const parts: string[] = [];
  let pos = start;
  for (const at of secrets) {
    const lit = nextLiteral(bytes, Math.max(at, pos), end);
    // Fail closed: if the literal cannot be told apart, nothing after the keyword is shown.
    if (lit === null) return bytes.toString('utf8', start, Math.max(at, pos)) + '<REDACTED>';
    parts.push(bytes.toString('utf8', pos, lit.start), '<REDACTED>');
    pos = lit.end;
  }
  parts.push(bytes.toString('utf8', pos, end));
  return parts.join('');
}

/** Byte positions of every `password` option (CREATE/ALTER ROLE|USER, user mappings, ...). */
function passwordPositions(node: unknown, out: number[] = []): number[] {
  if (Array.isArray(node)) {
    for (const n of node) passwordPositions(n, out);
  } else if (node !== null && typeof node === 'object') {
    const def = (node as { DefElem?: { defname?: string; location?: number } }).DefElem;
    if (def && typeof def.defname === 'string' && def.defname.toLowerCase() === 'password' && typeof def.location === 'number') {
      out.push(def.location);
    }
    for (const v of Object.values(node)) passwordPositions(v, out);
  }
  return out;
}

/**
 * The next string literal at or after `from`: '...' (with '' inside), E'...' (backslash
 * escapes), U&'...', $tag$...$tag$; comments and other tokens are skipped.
 */
function nextLiteral(b: Buffer, from: number, end: number): { start: number; end: number } | null {
  let i = from;
  while (i < end) {
    const c = b[i]!;
    if (c === 0x2d /* - */ && b[i + 1] === 0x2d) {
      while (i < end && b[i] !== 0x0a) i++;
    } else if (c === 0x2f /* / */ && b[i + 1] === 0x2a /* * */) {
      let depth = 1;
      i += 2;
      while (i < end && depth > 0) {
        if (b[i] === 0x2f && b[i + 1] === 0x2a) (depth++, (i += 2));
        else if (b[i] === 0x2a && b[i + 1] === 0x2f) (depth--, (i += 2));
        else i++;
      }
    } else if (c === 0x27 /* ' */) {
      const backslash = i > 0 && (b[i - 1] === 0x45 || b[i - 1] === 0x65); // E'...'
      const start = backslash || (i > 1 && b[i - 1] === 0x26) ? i - (b[i - 1] === 0x26 ? 2 : 1) : i;
      i++;
      while (i < end) {
        if (backslash && b[i] === 0x5c) i += 2;
        else if (b[i] === 0x27 && b[i + 1] === 0x27) i += 2;
        else if (b[i] === 0x27) return { start, end: i + 1 };
        else i++;
      }
      return null;
    } else if (c === 0x24 /* $ */) {
      const m = /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/.exec(b.toString('latin1', i, Math.min(end, i + 64)));
      if (m) {
        const close = b.indexOf(m[0], i + m[0].length, 'latin1');
        if (close < 0 || close >= end) return null;
        return { start: i, end: close + m[0].length };
      }
      i++;
    } else if (c === 0x22 /* " */) {
      i++;
      while (i < end && !(b[i] === 0x22 && b[i + 1] !== 0x22)) i += b[i] === 0x22 ? 2 : 1;
      i++;
    } else {
      i++;
    }
  }
  return null;
}
