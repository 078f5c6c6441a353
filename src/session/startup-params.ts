// Policy for client startup parameters: which are forwarded upstream, which are refused.
// Pure: takes the packet's parameters and the pinned names, returns a decision.

import { ENCODING_REFUSED_DETAIL, hidesAscii } from '../policy/client-encoding.js';
import { TEMP_PATH, searchPathHasTemp } from '../policy/temp-schema.js';

/** GUCs a client may set at startup, by lower-cased name → PostgreSQL's spelling. */
const ALLOWED = new Map(
  [
    'application_name', 'client_encoding', 'DateStyle', 'TimeZone', 'IntervalStyle',
    'extra_float_digits', 'search_path', 'standard_conforming_strings', 'bytea_output',
    'default_transaction_isolation', 'default_transaction_read_only', 'statement_timeout',
    'lock_timeout', 'idle_in_transaction_session_timeout', 'client_min_messages',
  ].map((n) => [n.toLowerCase(), n]),
);

/** PostgreSQL's spelling of `name` when a client may set it at startup, else null. */
export function allowedStartupName(name: string): string | null {
  return ALLOWED.get(name.toLowerCase()) ?? null;
}

/** Parameters with a meaning of their own in the startup packet (not GUCs). */
const RESERVED = new Set(['user', 'database', 'options', 'replication']);

export interface StartupParamDecision {
  /** Parameters to hold on the client's server connection, in PostgreSQL's spelling. */
  readonly forward: ReadonlyMap<string, string>;
  /** Names dropped because they are not on the allowlist (logged, not fatal). */
  readonly dropped: readonly string[];
  /** A pinned variable the client tried to set (or client_encoding, see refusedWhy): the session must be refused. */
  readonly refused?: string;
  /** Why, when it is not a pinned variable. */
  readonly refusedWhy?: string;
  /** The settings leave session state a transaction pooler cannot move: the client keeps its connection. */
  readonly sticky?: string;
  /** A malformed `options` value. */
  readonly invalid?: string;
}

/** Splits a libpq `options` string into `name=value` settings (`-c n=v`, `-cn=v`, `--n=v`). */
export function parseOptions(options: string): { settings: [string, string][]; invalid?: string } {
  const words: string[] = [];
  let cur = '';
  let inWord = false;
  for (let i = 0; i < options.length; i++) {
    const ch = options[i]!;
    if (ch === '\\' && i + 1 < options.length) {
      cur += options[++i];
      inWord = true;
    } else if (ch === ' ' || ch === '\t' || ch === '\n' || ch === '\r') {
      if (inWord) words.push(cur);
      cur = '';
      inWord = false;
    } else {
      cur += ch;
      inWord = true;
    }
  }
  if (inWord) words.push(cur);

  const settings: [string, string][] = [];
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!;
    let setting: string | undefined;
    if (w === '-c') setting = words[++i];
    else if (w.startsWith('-c')) setting = w.slice(2);
    else if (w.startsWith('--')) setting = w.slice(2);
    else return { settings, invalid: `invalid command-line argument for server process: ${w}` };
    const eq = setting?.indexOf('=') ?? -1;
    if (setting === undefined || eq === 0) return { settings, invalid: `invalid command-line argument for server process: ${setting ?? w}` };
    // PostgreSQL's words for a setting without a value.
    if (eq < 0) return { settings, invalid: w.startsWith('--') ? `--${setting} requires a value` : `-c ${setting} requires a value` };
    settings.push([setting.slice(0, eq).replace(/-/g, '_'), setting.slice(eq + 1)]);
  }
  return { settings };
}

export function decideStartupParams(
  params: ReadonlyMap<string, string>,
  pinned: readonly string[],
): StartupParamDecision {
  const forward = new Map<string, string>();
  const dropped: string[] = [];
  const pinnedSet = new Set(pinned.map((p) => p.toLowerCase()));

  let refusedWhy: string | undefined;
  let sticky: string | undefined;
  const consider = (name: string, value: string): string | undefined => {
    const lower = name.toLowerCase();
    if (pinnedSet.has(lower)) return lower;
    if (lower === 'client_encoding' && hidesAscii(value)) {
      refusedWhy = ENCODING_REFUSED_DETAIL;
      return lower;
    }
    if (lower === 'search_path' && searchPathHasTemp(value)) sticky = TEMP_PATH;
    const canonical = ALLOWED.get(lower);
    if (canonical) forward.set(canonical, value);
    else dropped.push(name);
    return undefined;
  };

  const settings = [...params].filter(([name]) => !RESERVED.has(name));
  const options = params.get('options');
  if (options) {
    const parsed = parseOptions(options);
    if (parsed.invalid) return { forward, dropped, invalid: parsed.invalid };
    settings.push(...parsed.settings);
  }
  for (const [name, value] of settings) {
    const refused = consider(name, value);
    if (refused) return { forward, dropped, refused, ...(refusedWhy ? { refusedWhy } : {}) };
  }
  return { forward, dropped, ...(sticky ? { sticky } : {}) };
}
