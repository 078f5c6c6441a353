// The normalised pg_hba rule model, pure IPv4/IPv6 address helpers and the first-match evaluator.
// No I/O; CIDRs are pre-parsed into 32-bit words at parse time and evaluation uses no regular expressions.

import type { HbaType } from '../config/types.js';

export type { HbaType };

/** Every authentication method keyword PostgreSQL accepts in pg_hba.conf. */
export const HBA_METHODS = [
  'trust',
  'reject',
  'scram-sha-256',
  'md5',
  'password',
  'gss',
  'sspi',
  'ident',
  'peer',
  'ldap',
  'radius',
  'cert',
  'pam',
  'bsd',
  'oauth',
] as const;

export type HbaMethod = (typeof HBA_METHODS)[number];

const METHOD_SET: ReadonlySet<string> = new Set<string>(HBA_METHODS);

export function isHbaMethod(s: string): s is HbaMethod {
  return METHOD_SET.has(s);
}

export const HBA_TYPES: readonly HbaType[] = ['local', 'host', 'hostssl', 'hostnossl'];

/**
 * Database column entry. Keywords only when written unquoted; `"all"` is the literal name all.
 * `samerole` (alias `samegroup`): pgbastion knows no role membership, so it matches only when the
 * database name equals the user name (a role is always a member of itself).
 */
export type DatabaseMatcher =
  | { readonly kind: 'all' }
  | { readonly kind: 'sameuser' }
  | { readonly kind: 'samerole' }
  | { readonly kind: 'replication' }
  | { readonly kind: 'name'; readonly name: string };

/**
 * User column entry. `+group` (unquoted) is parsed but pgbastion has no role membership:
 * a group matcher NEVER matches. Beware that a `reject` rule naming only groups therefore
 * never rejects anyone; list the user names instead.
 */
export type UserMatcher =
  | { readonly kind: 'all' }
  | { readonly kind: 'name'; readonly name: string }
  | { readonly kind: 'group'; readonly name: string };

export type Matcher = DatabaseMatcher | UserMatcher;

export type IpFamily = 4 | 6;

/** A parsed IP address: IPv4 as one 32-bit word, IPv6 as four (most significant first). */
export interface IpAddress {
  readonly family: IpFamily;
  readonly words: readonly number[];
}

export interface CidrMatcher {
  readonly kind: 'cidr';
  readonly family: IpFamily;
  readonly prefix: number;
  /** Network words with host bits already cleared (PostgreSQL ignores host bits in the rule). */
  readonly network: readonly number[];
  readonly mask: readonly number[];
  /** Canonical `network/prefix`, e.g. `10.0.0.0/8`, `ff20::/12`. */
  readonly text: string;
}

/** `none` for local rules, `all` for the address keyword all, else a network. */
export type AddressMatcher = { readonly kind: 'all' } | { readonly kind: 'none' } | CidrMatcher;

export interface HbaRule {
  /** 1-based position of the rule among the rules of its source ("rule #N"). */
  readonly index: number;
  /** Where it was written, e.g. `pg_hba.conf:12` or `config.yaml:40`. */
  readonly source: string;
  /** Line in the source (first line of a continued record); 0 when unknown. */
  readonly line: number;
  readonly type: HbaType;
  readonly databases: readonly DatabaseMatcher[];
  readonly users: readonly UserMatcher[];
  readonly address: AddressMatcher;
  readonly method: HbaMethod;
  readonly options: Readonly<Record<string, string>>;
}

export interface HbaConnection {
  /**
   * `unix` for a Unix-socket client, else an IPv4 or IPv6 literal as Node reports it.
   * IPv4-mapped IPv6 (`::ffff:10.1.1.1`, from dual-stack listeners) is treated as the IPv4
   * address, so it matches IPv4 rules exactly as a plain IPv4 client would (and not IPv6 ones).
   * A zone id suffix (`fe80::1%eth0`) is ignored. An unparsable address matches no host rule.
   */
  readonly address: string;
  readonly tls: boolean;
  readonly database: string;
  readonly user: string;
  /** A physical replication connection (`replication=true` / walsender without a database). */
  readonly replication: boolean;
}

// ---------------------------------------------------------------------------------------------
// Address helpers

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48; // 0-9
  if (c >= 97 && c <= 102) return c - 87; // a-f
  if (c >= 65 && c <= 70) return c - 55; // A-F
  return -1;
}

/**
 * Strict dotted-quad IPv4 (four decimal octets, no leading zeros, as inet_pton) → unsigned
 * 32-bit value, or null.
 */
export function parseIPv4(s: string): number | null {
  let value = 0;
  let octet = 0;
  let digits = 0;
  let parts = 0;
  const n = s.length;
  if (n === 0 || n > 15) return null;
  for (let i = 0; i <= n; i++) {
    const c = i < n ? s.charCodeAt(i) : 46; // a '.' sentinel closes the last octet
    if (c >= 48 && c <= 57) {
      if (digits > 0 && octet === 0) return null; // leading zero
      octet = octet * 10 + (c - 48);
      digits++;
      if (octet > 255) return null;
    } else if (c === 46) {
      if (digits === 0) return null;
      value = value * 256 + octet;
      parts++;
      if (parts > 4) return null;
      octet = 0;
      digits = 0;
    } else {
      return null;
    }
  }
  return parts === 4 ? value >>> 0 : null;
}

/**
 * IPv6 text (RFC 4291: `::` compression, embedded IPv4 tail) → four unsigned 32-bit words, or
 * null. Zone ids (`%eth0`) are rejected.
 */
export function parseIPv6(s: string): number[] | null {
  const n = s.length;
  if (n < 2 || n > 45) return null;
  const groups: number[] = [];
  let gap = -1; // index in groups where '::' stands
  let i = 0;
  if (s.charCodeAt(0) === 58) {
    if (s.charCodeAt(1) !== 58) return null;
    gap = 0;
    i = 2;
  }
  while (i < n) {
    let j = i;
    let v = 0;
    while (j < n) {
      const h = hexValue(s.charCodeAt(j));
      if (h < 0) break;
      v = v * 16 + h;
      j++;
    }
    if (j < n && s.charCodeAt(j) === 46) {
      // embedded IPv4 in the last 32 bits
      const v4 = parseIPv4(s.slice(i));
      if (v4 === null || groups.length > 6) return null;
      groups.push(v4 >>> 16, v4 & 0xffff);
      i = n;
      break;
    }
    const len = j - i;
    if (len === 0 || len > 4) return null;
    groups.push(v);
    if (groups.length > 8) return null;
    if (j === n) {
      i = n;
      break;
    }
    if (s.charCodeAt(j) !== 58) return null; // '%' zone ids and any other character
    j++;
    if (j < n && s.charCodeAt(j) === 58) {
      if (gap >= 0) return null;
      gap = groups.length;
      j++;
    } else if (j === n) {
      return null; // trailing single ':'
    }
    i = j;
  }
  if (gap >= 0) {
    if (groups.length > 7) return null; // '::' stands for at least one group
    const zeros = new Array<number>(8 - groups.length).fill(0);
    groups.splice(gap, 0, ...zeros);
  } else if (groups.length !== 8) {
    return null;
  }
  const words: number[] = [0, 0, 0, 0];
  for (let k = 0; k < 4; k++) words[k] = groups[2 * k]! * 65536 + groups[2 * k + 1]!;
  return words;
}

/** IPv4 or IPv6 literal (no zone id) → IpAddress, or null. */
export function parseIpAddress(s: string): IpAddress | null {
  if (s.indexOf(':') >= 0) {
    const words = parseIPv6(s);
    return words === null ? null : { family: 6, words };
  }
  const v4 = parseIPv4(s);
  return v4 === null ? null : { family: 4, words: [v4] };
}

/** True for ::ffff:a.b.c.d. */
export function isV4Mapped(a: IpAddress): boolean {
  return a.family === 6 && a.words[0] === 0 && a.words[1] === 0 && a.words[2] === 0xffff;
}

/**
 * A client address as reported by Node → IpAddress for matching: zone id dropped, IPv4-mapped
 * IPv6 turned into IPv4. Null for 'unix' and anything unparsable.
 */
export function parseClientAddress(s: string): IpAddress | null {
  const pct = s.indexOf('%');
  const a = parseIpAddress(pct >= 0 ? s.slice(0, pct) : s);
  if (a !== null && isV4Mapped(a)) return { family: 4, words: [a.words[3]!] };
  return a;
}

/** Client address for display in messages: IPv4-mapped IPv6 shown as IPv4, `unix` as `[local]`. */
export function displayClientAddress(s: string): string {
  if (s === 'unix') return '[local]';
  const a = parseClientAddress(s);
  if (a !== null && a.family === 4 && s.indexOf(':') >= 0) return formatIPv4(a.words[0]!);
  return s;
}

export function maxPrefix(family: IpFamily): number {
  return family === 4 ? 32 : 128;
}

/** Mask words for a prefix length (0..32 or 0..128). */
export function prefixToMask(family: IpFamily, prefix: number): number[] {
  const count = family === 4 ? 1 : 4;
  const words: number[] = [];
  for (let k = 0; k < count; k++) {
    const bits = Math.min(32, Math.max(0, prefix - 32 * k));
    words.push(bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0);
  }
  return words;
}

/** Prefix length of a contiguous mask, or null for a non-contiguous one (e.g. 255.0.255.0). */
export function maskToPrefix(words: readonly number[]): number | null {
  let prefix = 0;
  let ended = false;
  for (const w of words) {
    if (ended) {
      if (w !== 0) return null;
      continue;
    }
    if (w === 0xffffffff) {
      prefix += 32;
      continue;
    }
    const inv = ~w >>> 0; // must be 2^k - 1
    if ((inv & (inv + 1)) !== 0) return null;
    prefix += Math.clz32(inv);
    ended = true;
  }
  return prefix;
}

export function formatIPv4(v: number): string {
  return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

/** RFC 5952 text: lower case, longest run of two or more zero groups compressed. */
export function formatIPv6(words: readonly number[]): string {
  if (words[0] === 0 && words[1] === 0 && words[2] === 0xffff) return `::ffff:${formatIPv4(words[3]!)}`;
  const g: number[] = [];
  for (const w of words) g.push(w >>> 16, w & 0xffff);
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (from: number, to: number): string =>
    g
      .slice(from, to)
      .map((x) => x.toString(16))
      .join(':');
  if (bestStart < 0) return hex(0, 8);
  return `${hex(0, bestStart)}::${hex(bestStart + bestLen, 8)}`;
}

export function formatIpAddress(a: IpAddress): string {
  return a.family === 4 ? formatIPv4(a.words[0]!) : formatIPv6(a.words);
}

/** A network matcher from an address and a prefix length (host bits are cleared). */
export function cidrMatcher(addr: IpAddress, prefix: number): CidrMatcher {
  const mask = prefixToMask(addr.family, prefix);
  const network = addr.words.map((w, k) => (w & mask[k]!) >>> 0);
  const text = `${formatIpAddress({ family: addr.family, words: network })}/${prefix}`;
  return { kind: 'cidr', family: addr.family, prefix, network, mask, text };
}

/**
 * The network that clients are matched against (hba rules, proxy_protocol.trusted). An
 * IPv4-mapped IPv6 network of /96 or longer (`::ffff:10.0.0.0/104`) becomes its IPv4 form
 * (`10.0.0.0/8`): clients on dual-stack listeners are matched as IPv4 (parseClientAddress),
 * so the mapped form would never match anyone.
 */
export function clientNetwork(ip: IpAddress, prefix: number): CidrMatcher {
  if (isV4Mapped(ip) && prefix >= 96) return cidrMatcher({ family: 4, words: [ip.words[3]!] }, prefix - 96);
  return cidrMatcher(ip, prefix);
}

export function cidrContains(m: CidrMatcher, a: IpAddress): boolean {
  if (m.family !== a.family) return false;
  const net = m.network;
  const mask = m.mask;
  const w = a.words;
  for (let k = 0; k < net.length; k++) {
    if (((w[k]! & mask[k]!) >>> 0) !== net[k]) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Evaluation

function databaseMatches(list: readonly DatabaseMatcher[], conn: HbaConnection): boolean {
  for (const m of list) {
    if (conn.replication) {
      // physical replication connections only match the keyword replication
      if (m.kind === 'replication') return true;
      continue;
    }
    switch (m.kind) {
      case 'all':
        return true;
      case 'sameuser':
      case 'samerole':
        if (conn.database === conn.user) return true;
        break;
      case 'replication':
        break; // never matches a non-replication connection
      case 'name':
        if (m.name === conn.database) return true;
        break;
      default: {
        const never: never = m;
        return never;
      }
    }
  }
  return false;
}

function userMatches(list: readonly UserMatcher[], user: string): boolean {
  for (const m of list) {
    switch (m.kind) {
      case 'all':
        return true;
      case 'name':
        if (m.name === user) return true;
        break;
      case 'group':
        break; // role membership is unknown to pgbastion: never matches
      default: {
        const never: never = m;
        return never;
      }
    }
  }
  return false;
}

/** Does `rule` apply to `conn`? `addr` is the pre-parsed client address (null for unix/invalid). */
function ruleMatches(rule: HbaRule, conn: HbaConnection, isUnix: boolean, addr: IpAddress | null): boolean {
  if (isUnix) {
    if (rule.type !== 'local') return false;
  } else {
    if (rule.type === 'local') return false;
    if (rule.type === 'hostssl' && !conn.tls) return false;
    if (rule.type === 'hostnossl' && conn.tls) return false;
    if (addr === null) return false;
    const a = rule.address;
    if (a.kind === 'cidr') {
      if (!cidrContains(a, addr)) return false;
    } else if (a.kind !== 'all') {
      return false;
    }
  }
  return databaseMatches(rule.databases, conn) && userMatches(rule.users, conn.user);
}

/** First rule that applies to the connection, or null (which means reject). */
export function evaluate(rules: readonly HbaRule[], conn: HbaConnection): HbaRule | null {
  const isUnix = conn.address === 'unix';
  const addr = isUnix ? null : parseClientAddress(conn.address);
  for (const rule of rules) {
    if (ruleMatches(rule, conn, isUnix, addr)) return rule;
  }
  return null;
}
