// Text-only checks that need no parser: the pre-check that lets ordinary statements skip it,
// and the conservative rules for SQL that cannot be parsed here (DO bodies, PL function
// bodies, text the parser rejects).

import type { PinnedNames } from './pinned.js';
import { statementsRefusal, type Refusal } from './verdict.js';
import { SETS_ENCODING } from './client-encoding.js';

/**
 * Words without which no statement can earn a verdict. Matched on the raw text, strings and
 * comments included, so no quoting, comment or escape can hide them: the scan never decides
 * what is code. Every inspected form needs one of them as a keyword, and keywords cannot be
 * quoted or escaped:
 *   set reset             SET/RESET, ALTER ROLE|DATABASE|SYSTEM|FUNCTION ... SET|RESET, function SET clauses
 *   discard               DISCARD ALL
 *   do create alter       DO bodies, CREATE FUNCTION bodies and every CREATE TEMP form; ALTER only for clarity
 *   prepare listen declare load   sticky statements
 * and these as substrings, because they are identifiers (quotable) or parts of one:
 *   set_config pg_settings advisory (pg_advisory_lock, pg_try_advisory_lock...) temp (pg_temp, TEMPORARY)
 *   query_to_xml ts_stat ts_rewrite   built-ins that run SQL given as text (walk.ts SQL_RUNNERS)
 *   pgbastion_            the names of other clients' prepared statements (walk.ts statementName)
 *   pg_terminate_backend pg_cancel_backend   signals to server processes, which other clients share
 *   setseed               the session's random() sequence (sticky)
 *   u&                    a U&"..." identifier can spell any of the above with \XXXX escapes
 * The pinned names themselves are not triggers: mentioning one is harmless without one of the
 * verbs above. A false positive only costs one parse (then a cache hit).
 */
const TRIGGERS =
  /(?<![a-z_])(?:set|reset|discard|do|create|alter|prepare|listen|declare|load)(?![a-z0-9_])|set_config|pg_settings|advisory|temp|query_to_xml|ts_stat|ts_rewrite|pgbastion_|pg_terminate_backend|pg_cancel_backend|setseed|u&/i;

/** False when `sql` certainly neither tampers with a pinned variable nor leaves session state. */
export function mayMatter(sql: string): boolean {
  return TRIGGERS.test(sql);
}

/**
 * Forms that change variables whatever their name: set_config, pg_settings, SQL run from
 * text, RESET (ALL), DISCARD (ALL).
 */
const OPAQUE_RISK = /set_config|pg_settings|query_to_xml|ts_stat|ts_rewrite|u&|(?<![a-z0-9_$])(?:reset|discard)(?![a-z0-9_$])/;

/**
 * For SQL this module cannot parse: the pinned variable it might change, or null. Refuses
 * when the text mentions a pinned name (whole, or all its parts as words: `"app"."tenant_id"`),
 * set_config, pg_settings, a built-in that runs SQL from text, RESET, DISCARD or a U&
 * escape. Dynamic SQL assembled at run time (`'SE' || 'T'`, chr(), format(), decode()) can
 * still get past it: see the limits listed in classify.ts.
 */
export function opaqueRisk(text: string, pins: PinnedNames): string | null {
  if (pins.first === null) return null;
  const lower = text.toLowerCase();
  if (OPAQUE_RISK.test(lower)) return pins.first;
  return pins.mentionedIn(lower);
}


/** Names of other clients' prepared statements (prepared.ts names them pgbastion_…). */
export const OTHERS_STATEMENTS = /pgbastion_/i;

/**
 * What is refused with or without pins (signals to other backends, ALTER ROLE|DATABASE),
 * named in text that cannot be analysed (procedural code, text the parser rejects).
 */
export const SHARED_TEXT = /pg_(?:terminate|cancel)_backend|(?<![a-z0-9_$])alter\s+(?:role|user|group|database)(?![a-z0-9_$])/i;

/**
 * Parser failures that PostgreSQL of any version shares (a literal, identifier or comment
 * not closed): the server refuses such text before anything in it runs. Any other failure
 * (a syntax error, the parser's own limits) may be text another version accepts.
 */
const UNTERMINATED = /^unterminated /;

export function failsEverywhere(parserMessage: string): boolean {
  return UNTERMINATED.test(parserMessage);
}

/**
 * The refusal text that cannot be analysed earns by what it names (`what` says what it is:
 * a DO block, a function body, a statement that does not parse here): other clients'
 * prepared statements, a signal to a server process, ALTER ROLE|DATABASE. Text rules only:
 * a name assembled at run time gets past (README).
 */
export function unanalysedRefusal(text: string, what: string): Refusal | null {
  if (OTHERS_STATEMENTS.test(text)) {
    return statementsRefusal('permission denied for the prepared statements of other clients', `${what} mentions a pgbastion_ name, and cannot be analysed.`);
  }
  // U&"…" and U&'…' can spell any name with escapes (U&"pg_terminate!005fbackend" UESCAPE '!').
  if (UNICODE_ESCAPES.test(text)) {
    return statementsRefusal('permission denied for Unicode escapes in text pgbastion cannot analyse', `${what} holds a U& name or string, which can spell any name unseen.`);
  }
  // ALTER/**/ROLE and ALTER -- …\nROLE are ALTER ROLE to PostgreSQL, in code and in dynamic SQL.
  const m = SHARED_TEXT.exec(text) ?? SHARED_TEXT.exec(withoutComments(text));
  if (m === null) return null;
  return m[0].toLowerCase().startsWith('pg_')
    ? statementsRefusal('permission denied to signal server processes through pgbastion', `${what} names ${m[0]}, which would hit the server connections other clients use, and cannot be analysed.`)
    : statementsRefusal('permission denied to alter roles or databases through pgbastion', `${what} names ${m[0].replace(/\s+/g, ' ').toUpperCase()}: every server connection pgbastion opens depends on them, for all its clients; it goes to PostgreSQL directly.`);
}

const UNICODE_ESCAPES = /u&\s*['"]/i;

/** Does text not analysed here name the client encoding, also with comments inside the words (SET, a comment, NAMES)? */
export function namesEncoding(text: string): boolean {
  return SETS_ENCODING.test(text) || SETS_ENCODING.test(withoutComments(text));
}

/**
 * `text` with every comment dropped, wherever it stands (inside strings too: those may be
 * SQL run later). Only for matching text rules, on top of the text as it is: dropping
 * comment-like bytes from a string can only make a rule match more.
 */
function withoutComments(text: string): string {
  let out = '';
  let from = 0; // start of the text not yet copied
  let i = 0;
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c === 0x2d /* - */ && text.charCodeAt(i + 1) === 0x2d) {
      out += text.slice(from, i) + ' ';
      const nl = text.indexOf('\n', i);
      i = from = nl < 0 ? text.length : nl;
    } else if (c === 0x2f /* / */ && text.charCodeAt(i + 1) === 0x2a /* * */) {
      out += text.slice(from, i) + ' ';
      let depth = 0;
      while (i < text.length) {
        if (text.charCodeAt(i) === 0x2f && text.charCodeAt(i + 1) === 0x2a) {
          depth++;
          i += 2;
        } else if (text.charCodeAt(i) === 0x2a && text.charCodeAt(i + 1) === 0x2f) {
          i += 2;
          if (--depth === 0) break;
        } else i++;
      }
      from = i;
    } else {
      i++;
    }
  }
  return out + text.slice(from);
}
