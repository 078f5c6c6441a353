// Human-readable rendering of HBA rules and of the decision for one connection.
// Used by `pgbastion hba explain`, logs and audit; pure, no I/O.

import {
  type AddressMatcher,
  type DatabaseMatcher,
  type HbaConnection,
  type HbaMethod,
  type HbaRule,
  type UserMatcher,
  evaluate,
} from './rules.js';

export interface HbaExplanation {
  readonly rule: HbaRule | null;
  readonly decision: 'reject' | HbaMethod;
  readonly text: string;
}

const DB_KEYWORDS: ReadonlySet<string> = new Set(['all', 'sameuser', 'samerole', 'samegroup', 'replication']);

/** Write a name so that parsing it back gives the same literal name (quotes when needed). */
export function quoteName(name: string, keywords: ReadonlySet<string>): string {
  let plain = name.length > 0 && !keywords.has(name);
  if (plain) {
    const c0 = name[0];
    if (c0 === '+' || c0 === '@' || c0 === '/') plain = false;
  }
  for (let i = 0; plain && i < name.length; i++) {
    const c = name[i];
    if (c === ' ' || c === '\t' || c === ',' || c === '"' || c === '#' || c === '\r' || c === '\f' || c === '\v') {
      plain = false;
    }
  }
  return plain ? name : `"${name.split('"').join('""')}"`;
}

const USER_KEYWORDS: ReadonlySet<string> = new Set(['all']);

function formatDatabase(m: DatabaseMatcher): string {
  return m.kind === 'name' ? quoteName(m.name, DB_KEYWORDS) : m.kind;
}

function formatUser(m: UserMatcher): string {
  switch (m.kind) {
    case 'all':
      return 'all';
    case 'group':
      return `+${m.name}`;
    case 'name':
      return quoteName(m.name, USER_KEYWORDS);
    default: {
      const never: never = m;
      return never;
    }
  }
}

function formatAddress(a: AddressMatcher): string | null {
  switch (a.kind) {
    case 'none':
      return null;
    case 'all':
      return 'all';
    case 'cidr':
      return a.text;
    default: {
      const never: never = a;
      return never;
    }
  }
}

/** One rule in pg_hba.conf syntax, e.g. `hostssl appdb tenant_a_app 10.0.0.0/8 cert`. */
export function formatRule(rule: HbaRule): string {
  const parts: string[] = [rule.type, rule.databases.map(formatDatabase).join(','), rule.users.map(formatUser).join(',')];
  const address = formatAddress(rule.address);
  if (address !== null) parts.push(address);
  parts.push(rule.method);
  for (const [k, v] of Object.entries(rule.options)) parts.push(`${k}=${quoteName(v, new Set())}`);
  return parts.join(' ');
}

/** Which rule decides for `conn`, the resulting method, and a one-line summary. */
export function explain(rules: readonly HbaRule[], conn: HbaConnection): HbaExplanation {
  const rule = evaluate(rules, conn);
  if (rule === null) return { rule: null, decision: 'reject', text: 'no matching rule -> reject' };
  return {
    rule,
    decision: rule.method,
    text: `rule #${rule.index} (${rule.source}) ${formatRule(rule)} -> ${rule.method}`,
  };
}
