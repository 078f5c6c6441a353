// `SET name = value` of a parameter a client may also set at startup (application_name,
// extra_float_digits, DateStyle, ...). Drivers send these right after connecting (pgJDBC
// does); in transaction mode they are remembered with the client's other settings and
// applied on every lease, instead of pinning the client to one server connection.

import { allowedStartupName } from './startup-params.js';

export interface TrackedSet {
  /** PostgreSQL's spelling of the parameter. */
  readonly name: string;
  readonly value: string;
}

// One statement: SET [SESSION] name {= | TO} 'quoted' | word | number, optional semicolon.
const SIMPLE_SET = /^\s*set\s+(?:session\s+)?([a-z_][a-z0-9_]*)\s*(?:=|\bto\b)\s*(?:'((?:[^']|'')*)'|([a-z0-9_.+-]+))\s*;?\s*$/i;
// SET [SESSION] TIME ZONE 'quoted' | word | number: TimeZone (not LOCAL, DEFAULT or an INTERVAL).
const SET_TIME_ZONE = /^\s*set\s+(?:session\s+)?time\s+zone\s+(?:'((?:[^']|'')*)'|([a-z0-9_.+-]+))\s*;?\s*$/i;
// SELECT [pg_catalog.]set_config('name', 'value', false): how Django sets TimeZone.
const SET_CONFIG = /^\s*select\s+(?:pg_catalog\s*\.\s*)?set_config\s*\(\s*'([a-z_][a-z0-9_]*)'\s*,\s*'((?:[^']|'')*)'\s*,\s*false\s*\)\s*;?\s*$/i;

export function trackedSet(sql: string): TrackedSet | null {
  // A backslash reads differently under standard_conforming_strings = off ('x\'' may end
  // later, hiding more statements): such a SET is left to the policy, which makes it sticky.
  if (sql.includes('\\')) return null;
  const set = SIMPLE_SET.exec(sql);
  if (set) return tracked(set[1]!, set[2], set[3]);
  const zone = SET_TIME_ZONE.exec(sql);
  if (zone) return zone[2] !== undefined && /^local$/i.test(zone[2]) ? null : tracked('TimeZone', zone[1], zone[2]);
  const call = SET_CONFIG.exec(sql);
  if (call) return tracked(call[1]!, call[2], undefined);
  return null;
}

/**
 * `name` set to the quoted value (`''` inside) or else the bare word, when a client may set it
 * at startup. A bare DEFAULT resets the parameter (not tracked: the policy makes it sticky);
 * other bare words are numbers, or identifiers, which PostgreSQL folds to lower case.
 */
function tracked(name: string, quoted: string | undefined, word: string | undefined): TrackedSet | null {
  const canonical = allowedStartupName(name);
  if (canonical === null) return null;
  if (quoted !== undefined) return { name: canonical, value: quoted.replace(/''/g, "'") };
  if (/^default$/i.test(word!)) return null;
  return { name: canonical, value: /^[+-]?[0-9.]/.test(word!) ? word! : word!.toLowerCase() };
}
