// The string literals, dollar-quoted strings, comments and "identifiers" of SQL text, found
// as PostgreSQL's scanner (scan.l) finds them, in UTF-8 byte offsets: for redacting literals
// (audit/ddl.ts) and for telling what parsing a text would cost (tooCostlyToParse).

import { MAX_PARSED_CHARS } from './parser.js';
import { Ch, isIdentCont, isIdentStart, isTagCont } from './sql-chars.js';

/** A piece of the text in UTF-8 byte offsets (as the parser reports them), [start, end). */
export interface Span {
  readonly start: number;
  readonly end: number;
}

// ---- Lexing (PostgreSQL's scan.l, for literals only) ------------------------------------

export interface Literal extends Span {
  /** Between the opening quote (or $tag$) and the closing one; bodyEnd = end when not closed. */
  readonly bodyStart: number;
  readonly bodyEnd: number;
  readonly dollar: boolean;
  readonly closed: boolean;
  /** The parser here would read it otherwise (backslash escapes when off, -- comments in a continuation). */
  readonly mask: boolean;
}

/**
 * The string literals and dollar-quoted strings of b[from, to), in order. '...' and N'...'
 * take backslash escapes only when `backslashInPlain` (standard_conforming_strings = off),
 * E'...' always, B'...', X'...', U&'...' never; all continue over a newline ('a'\n'b' is
 * one literal; PostgreSQL before 17 also over -- comments). Comments and "identifiers" are
 * skipped, their spans added to `opaque` when given; a literal not closed runs to `to`.
 */
export function lex(b: Buffer, from: number, to: number, backslashInPlain: boolean, opaque: Span[] | null = null): Literal[] {
  const out: Literal[] = [];
  let i = from;
  const skip = (end: number) => {
    opaque?.push({ start: i, end });
    i = end;
  };
  while (i < to) {
    const c = b[i]!;
    let lit: Literal | null = null;
    if (c === Ch.Dash && b[i + 1] === Ch.Dash) {
      skip(lineEnd(b, i, to));
    } else if (c === Ch.Slash && b[i + 1] === Ch.Star) {
      skip(commentEnd(b, i, to));
    } else if (c === Ch.DQuote) {
      skip(identifierEnd(b, i, to));
    } else if (c === Ch.Quote) {
      lit = quoted(b, i, i, to, backslashInPlain, backslashInPlain);
    } else if (c === Ch.Dollar) {
      lit = dollarQuoted(b, i, to);
      if (lit === null) i++;
    } else if (isIdentStart(c)) {
      // A whole word first: only a one-letter word before the quote is a prefix (rolE'x' is not E'x').
      let j = i + 1;
      while (j < to && isIdentCont(b[j]!)) j++;
      const one = j === i + 1 ? c | 0x20 : 0;
      const quote = b[j] === Ch.Quote;
      if (quote && one === 0x65 /* e */) lit = quoted(b, i, j, to, true, false);
      else if (quote && (one === 0x62 /* b */ || one === 0x78) /* x */) lit = quoted(b, i, j, to, false, false);
      else if (quote && one === 0x6e /* n */) lit = quoted(b, i, j, to, backslashInPlain, backslashInPlain);
      else if (one === 0x75 /* u */ && b[j] === Ch.Amp && b[j + 1] === Ch.Quote) lit = quoted(b, i, j + 1, to, false, false);
      else if (one === 0x75 && b[j] === Ch.Amp && b[j + 1] === Ch.DQuote) skip(identifierEnd(b, j + 1, to));
      else i = j;
    } else {
      i++;
    }
    if (lit !== null) {
      out.push(lit);
      i = lit.end;
    }
  }
  return out;
}

/**
 * A quoted literal opened at `open` (its prefix from `start`), continuation segments
 * included. `maskBackslash`: it is masked when it holds a backslash (a plain string read
 * with escapes, unlike the parser here).
 */
function quoted(b: Buffer, start: number, open: number, to: number, escapes: boolean, maskBackslash: boolean): Literal {
  let i = open + 1;
  let backslash = false;
  let commented = false;
  while (i < to) {
    const c = b[i]!;
    if (c === Ch.Backslash) {
      backslash = true;
      i += escapes ? 2 : 1;
    } else if (c === Ch.Quote && b[i + 1] === Ch.Quote) {
      i += 2;
    } else if (c === Ch.Quote) {
      const next = continuation(b, i + 1, to);
      if (next === null) {
        return { start, end: i + 1, bodyStart: open + 1, bodyEnd: i, dollar: false, closed: true, mask: commented || (maskBackslash && backslash) };
      }
      commented ||= next.commented;
      i = next.at + 1;
    } else {
      i++;
    }
  }
  return { start, end: to, bodyStart: open + 1, bodyEnd: to, dollar: false, closed: false, mask: false };
}

/**
 * Where a string continues after its closing quote: whitespace holding a newline (and --
 * comments) then a quote. Returns that quote's index, or null.
 */
function continuation(b: Buffer, i: number, to: number): { at: number; commented: boolean } | null {
  let newline = false;
  let commented = false;
  while (i < to) {
    const c = b[i]!;
    if (c === Ch.LF || c === Ch.CR) {
      newline = true;
      i++;
    } else if (c === 0x20 || c === 0x09 || c === 0x0c || c === 0x0b) {
      i++;
    } else if (c === Ch.Dash && b[i + 1] === Ch.Dash) {
      commented = true;
      i = lineEnd(b, i, to);
    } else {
      break;
    }
  }
  return newline && i < to && b[i] === Ch.Quote ? { at: i, commented } : null;
}

/** A $tag$...$tag$ string starting at `i`, or null when none starts there ($1, a lone $). */
function dollarQuoted(b: Buffer, i: number, to: number): Literal | null {
  let j = i + 1;
  if (b[j] !== Ch.Dollar) {
    if (j >= to || !isIdentStart(b[j]!)) return null;
    while (j < to && isTagCont(b[j]!)) j++;
    if (j >= to || b[j] !== Ch.Dollar) return null;
  }
  const tag = b.subarray(i, j + 1);
  const close = b.indexOf(tag, j + 1);
  if (close < 0 || close + tag.length > to) return { start: i, end: to, bodyStart: j + 1, bodyEnd: to, dollar: true, closed: false, mask: false };
  return { start: i, end: close + tag.length, bodyStart: j + 1, bodyEnd: close, dollar: true, closed: true, mask: false };
}

function lineEnd(b: Buffer, i: number, to: number): number {
  while (i < to && b[i] !== Ch.LF && b[i] !== Ch.CR) i++;
  return i;
}

/** Past a /* comment *\/ (they nest), or `to`. */
function commentEnd(b: Buffer, i: number, to: number): number {
  let depth = 0;
  while (i < to) {
    if (b[i] === Ch.Slash && b[i + 1] === Ch.Star) {
      depth++;
      i += 2;
    } else if (b[i] === Ch.Star && b[i + 1] === Ch.Slash) {
      i += 2;
      if (--depth === 0) return i;
    } else {
      i++;
    }
  }
  return to;
}

/** Past a "quoted identifier" ("" inside), or `to`. */
function identifierEnd(b: Buffer, i: number, to: number): number {
  i++;
  while (i < to) {
    if (b[i] === Ch.DQuote && b[i + 1] === Ch.DQuote) i += 2;
    else if (b[i] === Ch.DQuote) return i + 1;
    else i++;
  }
  return to;
}

/** Characters PostgreSQL's scanner reads as operator characters (scan.l op_chars). */
const OPERATOR = new Uint8Array(128);
for (const c of '~!@#^&|`?%+-*/<>=') OPERATOR[c.charCodeAt(0)] = 1;

/**
 * The longest run of operator characters a text may hold outside its literals and still be
 * parsed: past it the scanner's time grows with the run's square (its rule for `/*` takes
 * every operator character after it, then backs up; 128 KiB of `/*` took 34 s). SQL has
 * no use for runs anywhere near this long.
 */
export const MAX_OPERATOR_RUN = 1024;

/**
 * Why parsing `sql` would cost the event loop too much, or null: `code`, more than
 * MAX_PARSED_CHARS characters of it outside literals and comments (the parser's cost grows
 * with code; a long literal costs little), or `operators`, a run of more than
 * MAX_OPERATOR_RUN operator characters outside literals. As either standard_conforming_strings
 * reading lexes the text; one pass per reading, none for text too short to pass a bound.
 */
export function tooCostlyToParse(sql: string): 'code' | 'operators' | null {
  if (sql.length <= MAX_OPERATOR_RUN) return null;
  const bytes = Buffer.from(sql, 'utf8');
  for (const backslashInPlain of bytes.includes(0x5c /* \\ */) ? [false, true] : [false]) {
    const opaque: Span[] = [];
    const literals = lex(bytes, 0, bytes.length, backslashInPlain, opaque);
    let notCode = 0;
    for (const s of opaque) if (bytes[s.start] !== 0x22 /* " */) notCode += s.end - s.start; // comments (identifiers are code)
    let k = 0;
    let run = 0;
    for (let i = 0; i < bytes.length; i++) {
      if (k < literals.length && i === literals[k]!.start) {
        notCode += literals[k]!.end - i;
        i = literals[k++]!.end - 1;
        run = 0;
      } else if (OPERATOR[bytes[i]!] === 1) {
        if (++run > MAX_OPERATOR_RUN) return 'operators';
      } else {
        run = 0;
      }
    }
    if (bytes.length - notCode > MAX_PARSED_CHARS) return 'code';
  }
  return null;
}
