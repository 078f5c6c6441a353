// Decides, for every Query and Parse string, whether it tampers with a pinned session variable
// (refuse) and whether it leaves session state a transaction pooler cannot move (sticky).
//
// Pipeline: lexical pre-check (ordinary statements stop here, no allocation) → LRU cache by
// exact text → PostgreSQL 17 parser → tree walk (walk.ts). The text is read twice when it holds
// a backslash: as written, and as a server with standard_conforming_strings = off reads it.
//
// Known limits (what no inspection of the statement text can see):
// - Functions, procedures, views, rules and triggers that already exist run code the text does
//   not show: `SELECT f()` where f calls set_config() is allowed. Restrict who may create them.
// - DO blocks and non-SQL function bodies are judged by their text only (a pinned name, its parts
//   as words, set_config, pg_settings, RESET, DISCARD, U& → refused). Dynamic SQL assembled at
//   run time (chr(), format(), decode(), concatenation of fragments of the parts) gets past it.
// - Identifiers are folded as in a UTF-8 database. Single-byte server encodings whose locale
//   folds high-bit letters to ASCII, and client encodings other than UTF-8 (the caller decodes
//   the bytes as UTF-8), are not modelled.
// - The grammar is PostgreSQL 17's. Text it rejects (and the pre-check let through) fails
//   closed in either reading: refused while variables are pinned (42601, the parser's error),
//   else judged as a DO block and sticky 'unparsed statement', unless every PostgreSQL rejects
//   it too (an unterminated literal). A harmless statement another version accepts, or one
//   whose standard_conforming_strings = off reading holds such text, is refused while pinned.
// - set_config() is matched by name in any schema, and any identifier spelled set_config (an
//   aggregate's sfunc, a column) is refused: conservative on purpose.
// - Only literal `set_config(<string constant>, ...)` names are trusted; casts, parameters and
//   expressions are refused (`'app.tenant_idXX'::varchar(13)` is app.tenant_id).

import { VerdictCache } from './cache.js';
import { nonStandardStringsReading } from './escape-strings.js';
import { failsEverywhere, mayMatter, namesEncoding, opaqueRisk, unanalysedRefusal } from './lexical.js';
import { ENCODING_REFUSED_DETAIL } from './client-encoding.js';
import { tooCostlyToParse } from './literals.js';
import { MAX_PARSED_CHARS, parseOrFailure, parseStatements, parserFaults } from './parser.js';
import { PinnedNames } from './pinned.js';
import { ALLOW, UNPARSED, merge, pinnedDetail, refusal, verdict, type PolicyVerdict } from './verdict.js';
import { inspect, type WalkEnv } from './walk.js';

export type { PolicyVerdict, Refusal } from './verdict.js';
export { loadPolicyParser } from './parser.js';

export interface PolicyClassifierOptions {
  /** Verdicts kept for repeated texts (0 disables the cache). Default 10 000. */
  readonly cacheSize?: number;
  /** Longer texts are classified every time, never cached. Default 8 192 characters. */
  readonly maxCachedLength?: number;
  /** Bound on the summed length of cached texts. Default 4 Mi characters. */
  readonly cacheChars?: number;
  /** Roles pgbastion's server connections log in as: no client may alter them (walk.ts). */
  readonly serverRoles?: readonly string[];
}

const TOO_COMPLEX = { code: '54001', message: 'statement too complex for pgbastion to check' } as const;
/** See parser-cooldown.ts. */
const COOLING = {
  code: '54001',
  message: "statement not checked: an earlier statement of this user was too complex for pgbastion's parser (retry in a second)",
} as const;

export class PolicyClassifier {
  private readonly pins: PinnedNames;
  private readonly cache: VerdictCache;
  private readonly env: WalkEnv;
  private readonly maxCachedLength: number;

  /** `pinned`: the `prefix.name` variables clients may not change (any case). */
  constructor(pinned: readonly string[], opts: PolicyClassifierOptions = {}) {
    this.pins = new PinnedNames(pinned);
    this.cache = new VerdictCache(opts.cacheSize ?? 10_000, opts.cacheChars ?? 4 * 1024 * 1024);
    this.maxCachedLength = opts.maxCachedLength ?? 8192;
    this.env = { pins: this.pins, parse: (sql) => this.parseUnlessFaulted(sql), serverRoles: new Set(opts.serverRoles ?? []) };
  }

  /**
   * parserFaults when the classification under way began. A text may be parsed many times
   * over (each reading; each SQL function body or query_to_xml text in it): once one of
   * those parses overflowed the stack, the rest of the text goes unparsed, so that one text
   * costs one fault (parser-cooldown.ts), not one per body.
   */
  private faultsBefore = 0;

  private faulted(): boolean {
    return parserFaults !== this.faultsBefore;
  }

  private parseUnlessFaulted(sql: string): readonly unknown[] | null {
    return this.faulted() ? null : parseStatements(sql);
  }

  /** Number of cached verdicts (for tests and metrics). */
  get cachedEntries(): number {
    return this.cache.size;
  }

  /**
   * Synchronous; never throws for any SQL text (only if loadPolicyParser() was not awaited).
   * `mayParse` false (parser-cooldown.ts): text not judged before is judged unparsed.
   */
  classify(sql: string, mayParse = true): PolicyVerdict {
    if (!mayMatter(sql)) return ALLOW;
    const hit = this.cache.get(sql);
    if (hit !== undefined) return hit;
    if (!mayParse) return this.unparsed(sql, COOLING);
    this.faultsBefore = parserFaults;
    const v = this.analyse(sql);
    if (sql.length <= this.maxCachedLength) this.cache.set(sql, v);
    return v;
  }

  private analyse(sql: string): PolicyVerdict {
    // The parser reads a C string; the server rejects a message with an embedded NUL, but
    // should one get here, every piece is judged rather than only the first.
    if (sql.includes('\0')) return sql.split('\0').reduce<PolicyVerdict>((acc, part) => merge(acc, this.analyse(part)), ALLOW);
    // Long code (16 MB of SETs held the event loop 4 s) and long runs of operator characters
    // (/*/*/*…, quadratic in PostgreSQL's scanner) are not parsed; long literals are.
    const costly = tooCostlyToParse(sql);
    if (costly === 'code') return this.unparsed(sql, { code: '54000', message: `statement too long for pgbastion to check (more than ${MAX_PARSED_CHARS} characters of code outside literals)` });
    if (costly === 'operators') return this.unparsed(sql, TOO_COMPLEX);
    const asWritten = this.reading(sql);
    const nonStandard = nonStandardStringsReading(sql);
    return nonStandard === null ? asWritten : merge(asWritten, this.reading(nonStandard));
  }

  /**
   * One reading of the text (as written, or as a server with standard_conforming_strings =
   * off reads it). Text the parser here rejects fails closed, unless it is text every
   * PostgreSQL rejects (an unterminated literal: nothing of it runs): the grammar here is
   * PostgreSQL 17's, and an older server accepts some text it does not (`… AS system_user`
   * on 15), which could hide anything behind it. While variables are pinned it is refused,
   * with the parser's own error (42601, usually PostgreSQL's words for the same typo);
   * without, it is judged as a DO block is: by what its text names, and sticky, its
   * connection closed when the client leaves.
   */
  private reading(sql: string): PolicyVerdict {
    const stmts = this.faulted() ? 'the parser overflowed its stack on this text' : parseOrFailure(sql);
    if (typeof stmts !== 'string') return inspect(stmts, this.env);
    if (failsEverywhere(stmts)) return ALLOW;
    // The parser's own limits (nesting depth, memory; also of the JSON it returns), else its
    // error in PostgreSQL's words (a syntax error, a zero-length identifier, …).
    return this.unparsed(sql, /stack|memory|exhausted/i.test(stmts) ? TOO_COMPLEX : { code: '42601', message: stmts });
  }

  /**
   * Text not parsed here (rejected by the parser, or too long for it): judged by what it names
   * (as a DO block is), then refused while variables are pinned (with `error`), else sticky,
   * its connection closed when the client leaves (UNPARSED).
   */
  private unparsed(sql: string, error: { code: string; message: string }): PolicyVerdict {
    const byText = unanalysedRefusal(sql, 'a statement that is not parsed here');
    if (byText !== null) return verdict(byText, null);
    // As in a DO block: any mention of the client encoding (SET NAMES 'SJIS' behind an
    // unparsable prefix, then a valid-UTF-8 text whose SJIS reading ends its string early).
    if (namesEncoding(sql)) return verdict(refusal('client_encoding', ENCODING_REFUSED_DETAIL), null);
    const first = this.pins.first;
    if (first === null) return verdict(null, UNPARSED);
    const risk = opaqueRisk(sql, this.pins) ?? first;
    const detail = pinnedDetail('a statement that is not parsed here', risk, 'could change', " (pgbastion's grammar is PostgreSQL 17's, and it parses at most 512 KiB: such text could hide anything, so it is refused while variables are pinned)");
    return verdict(Object.freeze({ ...refusal(risk, detail), ...error }), null);
  }
}
