// Text-only checks that need no parser: the pre-check that lets ordinary statements skip it,
// and the conservative rules for SQL that cannot be parsed here (DO bodies, PL function
// bodies, text the parser rejects).

import type { PinnedNames } from './pinned.js';

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

const STICKY_WORDS = /(?<![a-z_])(?:set|reset|prepare|listen|declare|load|do)(?![a-z0-9_])|temp|advisory/i;

/** Whether unparsable text contains a word of a form that could leave session state. */
export function mayBeSticky(text: string): boolean {
  return STICKY_WORDS.test(text);
}
