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

export function trackedSet(sql: string): TrackedSet | null {
  // A backslash reads differently under standard_conforming_strings = off ('x\'' may end
  // later, hiding more statements): such a SET is left to the policy, which makes it sticky.
  if (sql.includes('\\')) return null;
  const m = SIMPLE_SET.exec(sql);
  if (!m) return null;
  const name = allowedStartupName(m[1]!);
  if (name === null) return null;
  const value = m[2] !== undefined ? m[2].replace(/''/g, "'") : m[3]!;
  return { name, value };
}
