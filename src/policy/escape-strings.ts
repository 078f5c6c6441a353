// The text as a server with standard_conforming_strings = off reads it, rewritten so that the
// parser (which always assumes on) sees the same tokens: every plain '...' becomes E'...'.
//
// Why: any client may SET standard_conforming_strings = off. Then `SELECT 'x\' , ' ; SET
// app.tenant_id = 1; -- '` is two harmless strings to the parser but a SELECT and a SET to the
// server. Classifying both readings closes that gap.

import { Ch, isIdentCont, isIdentStart, isTagCont } from './sql-chars.js';

/**
 * The standard_conforming_strings = off reading of `sql`, or null when it is the same as the
 * default one (no plain or national string literal contains a backslash).
 * Follows PostgreSQL's scan.l: comments (nested), "identifiers", $tag$ quotes, U&'...', B'...',
 * X'...' (no backslash escapes in either mode), E'...' (escapes in both), N'...' and '...'
 * (escapes only when off), and string continuation across a newline. PostgreSQL 15 also
 * continues a string across `-- comments`, which the PostgreSQL 17 parser here rejects: the
 * rewrite drops such comments so both read one string.
 */
export function nonStandardStringsReading(sql: string): string | null {
  if (!sql.includes('\\')) return null;
  const n = sql.length;
  const edits: Edit[] = [];
  let escapes = false; // whether any plain string needed its E
  let i = 0;
  while (i < n) {
    const c = sql.charCodeAt(i);
    if (c === Ch.Dash && sql.charCodeAt(i + 1) === Ch.Dash) {
      i = lineEnd(sql, i);
    } else if (c === Ch.Slash && sql.charCodeAt(i + 1) === Ch.Star) {
      i = blockCommentEnd(sql, i);
    } else if (c === Ch.DQuote) {
      i = doubledQuoteEnd(sql, i, Ch.DQuote, edits);
    } else if (c === Ch.Quote) {
      const end = escapeStringEnd(sql, i, edits);
      if (sql.slice(i, end).includes('\\')) {
        edits.push({ from: i, to: i, text: ' E' });
        escapes = true;
      }
      i = end;
    } else if (c === Ch.Dollar) {
      i = dollarQuoteEnd(sql, i);
    } else if (isIdentStart(c)) {
      let j = i + 1;
      while (j < n && isIdentCont(sql.charCodeAt(j))) j++;
      const next = sql.charCodeAt(j);
      const single = j === i + 1 ? sql[i]!.toLowerCase() : '';
      if (next === Ch.Quote && single === 'e') {
        i = escapeStringEnd(sql, j, edits);
      } else if (next === Ch.Quote && (single === 'b' || single === 'x')) {
        i = doubledQuoteEnd(sql, j, Ch.Quote, edits);
      } else if (next === Ch.Quote && single === 'n') {
        // N'...' is the keyword NCHAR then an ordinary string literal (scan.l xnstart).
        const end = escapeStringEnd(sql, j, edits);
        if (sql.slice(j, end).includes('\\')) {
          edits.push({ from: i, to: j, text: ' NCHAR E' });
          escapes = true;
        }
        i = end;
      } else if (single === 'u' && next === Ch.Amp && (sql.charCodeAt(j + 1) === Ch.Quote || sql.charCodeAt(j + 1) === Ch.DQuote)) {
        // U&'...' and U&"...": doubling only; backslash starts a Unicode escape, decoded later.
        i = doubledQuoteEnd(sql, j + 1, sql.charCodeAt(j + 1), edits);
      } else {
        i = j;
      }
    } else {
      i++;
    }
  }
  return escapes ? applyEdits(sql, edits) : null;
}

/** Replace sql[from, to) by text. */
interface Edit {
  readonly from: number;
  readonly to: number;
  readonly text: string;
}

function applyEdits(sql: string, edits: readonly Edit[]): string {
  let out = '';
  let at = 0;
  for (const e of [...edits].sort((a, b) => a.from - b.from)) {
    out += sql.slice(at, e.from) + e.text;
    at = e.to;
  }
  return out + sql.slice(at);
}

function lineEnd(sql: string, i: number): number {
  while (i < sql.length && sql.charCodeAt(i) !== Ch.LF && sql.charCodeAt(i) !== Ch.CR) i++;
  return i;
}

function blockCommentEnd(sql: string, i: number): number {
  let depth = 0;
  while (i < sql.length) {
    if (sql.charCodeAt(i) === Ch.Slash && sql.charCodeAt(i + 1) === Ch.Star) {
      depth++;
      i += 2;
    } else if (sql.charCodeAt(i) === Ch.Star && sql.charCodeAt(i + 1) === Ch.Slash) {
      depth--;
      i += 2;
      if (depth === 0) return i;
    } else {
      i++;
    }
  }
  return i;
}

/**
 * End (exclusive) of a literal opened at `open` whose only escape is a doubled quote. String
 * literals (not "identifiers") continue across a newline like escape strings do.
 */
function doubledQuoteEnd(sql: string, open: number, quote: number, edits: Edit[]): number {
  let i = open + 1;
  while (i < sql.length) {
    if (sql.charCodeAt(i) === quote) {
      if (sql.charCodeAt(i + 1) === quote) {
        i += 2;
        continue;
      }
      const next = quote === Ch.Quote ? continuation(sql, i + 1, edits) : -1;
      if (next < 0) return i + 1;
      i = next + 1;
    } else {
      i++;
    }
  }
  return i;
}

/** End (exclusive) of a backslash-escaped string opened at `open`, continuation segments included. */
function escapeStringEnd(sql: string, open: number, edits: Edit[]): number {
  let i = open + 1;
  while (i < sql.length) {
    const c = sql.charCodeAt(i);
    if (c === Ch.Backslash) {
      i += 2;
    } else if (c === Ch.Quote) {
      if (sql.charCodeAt(i + 1) === Ch.Quote) {
        i += 2;
        continue;
      }
      const next = continuation(sql, i + 1, edits);
      if (next < 0) return i + 1;
      i = next + 1;
    } else {
      i++;
    }
  }
  return i;
}

/**
 * Where a string continues after its closing quote: whitespace holding at least one newline
 * (and -- comments) then a quote, as in `'a'\n'b'` = 'ab'. Returns that quote's index or -1;
 * on a continuation, records the deletion of the comments in between.
 */
function continuation(sql: string, i: number, edits: Edit[]): number {
  let newline = false;
  const comments: Edit[] = [];
  while (i < sql.length) {
    const c = sql.charCodeAt(i);
    if (c === Ch.LF || c === Ch.CR) {
      newline = true;
      i++;
    } else if (c === 32 || c === 9 || c === 12 || c === 11) {
      i++;
    } else if (c === Ch.Dash && sql.charCodeAt(i + 1) === Ch.Dash) {
      const end = lineEnd(sql, i);
      comments.push({ from: i, to: end, text: '' });
      i = end;
    } else {
      break;
    }
  }
  if (!newline || sql.charCodeAt(i) !== Ch.Quote) return -1;
  edits.push(...comments);
  return i;
}

/** After a `$` at `i`: past the whole $tag$...$tag$ literal if one starts there, else past the `$`. */
function dollarQuoteEnd(sql: string, i: number): number {
  let j = i + 1;
  if (sql.charCodeAt(j) !== Ch.Dollar) {
    if (!isIdentStart(sql.charCodeAt(j))) return i + 1; // $1 parameter or a lone $
    while (j < sql.length && isTagCont(sql.charCodeAt(j))) j++;
    if (sql.charCodeAt(j) !== Ch.Dollar) return i + 1;
  }
  const tag = sql.slice(i, j + 1);
  const close = sql.indexOf(tag, j + 1);
  return close < 0 ? sql.length : close + tag.length;
}
