// Parsers from pg_hba.conf text and from YAML `hba:` entries into normalised HbaRule lists.
// Pure: no file access; every problem is returned with its line (or entry index), never thrown.

import type { HbaRuleConfig, HbaType } from '../config/types.js';
import {
  type AddressMatcher,
  type DatabaseMatcher,
  type HbaMethod,
  type HbaRule,
  type IpAddress,
  type UserMatcher,
  clientNetwork,
  isHbaMethod,
  maskToPrefix,
  maxPrefix,
  parseIpAddress,
} from './rules.js';

export interface HbaFileError {
  readonly line: number;
  readonly message: string;
}

export interface HbaConfigError {
  /** 0-based index of the entry in the `hba:` list (config path `hba[index]`). */
  readonly index: number;
  /** The entry's key the problem is in, when it is about one key. */
  readonly field?: 'type' | 'database' | 'user' | 'address' | 'method';
  readonly message: string;
}

/** One token of a column: `quoted` when any part of it was written in double quotes. */
export interface HbaToken {
  readonly text: string;
  readonly quoted: boolean;
}

/** A column: one token, or several joined by commas. */
export type HbaField = readonly HbaToken[];

export type Parsed<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: string };

function ok<T>(value: T): Parsed<T> {
  return { ok: true, value };
}

function fail<T>(error: string): Parsed<T> {
  return { ok: false, error };
}

const CONNECTION_TYPES: ReadonlySet<string> = new Set(['local', 'host', 'hostssl', 'hostnossl']);
const INCLUDE_DIRECTIVES: ReadonlySet<string> = new Set(['include', 'include_if_exists', 'include_dir']);

function isBlank(c: string): boolean {
  return c === ' ' || c === '\t' || c === '\r' || c === '\f' || c === '\v';
}

/**
 * Split one logical line into columns. Tokens end at unquoted whitespace, `,` or `#`; double
 * quotes may cover any part of a token and `""` inside quotes is a literal quote. A comma, with
 * optional whitespace on either side, continues the current column's list (PgBouncer's reading:
 * `user1,user2 , user3` is one column of three names). `#` outside quotes starts a comment when
 * `allowComments`, else it is an error.
 */
export function tokenizeLine(s: string, allowComments = true): Parsed<HbaField[]> {
  const fields: HbaField[] = [];
  const n = s.length;
  let i = 0;

  const skipBlanks = (): void => {
    while (i < n && isBlank(s[i]!)) i++;
  };
  const atCommentOrEnd = (): boolean => i >= n || s[i] === '#';

  const readToken = (): Parsed<HbaToken> => {
    let text = '';
    let quoted = false;
    let inQuote = false;
    while (i < n) {
      const c = s[i]!;
      if (inQuote) {
        if (c === '"') {
          if (s[i + 1] === '"') {
            text += '"';
            i += 2;
            continue;
          }
          inQuote = false;
          i++;
          continue;
        }
        text += c;
        i++;
        continue;
      }
      if (isBlank(c) || c === ',' || c === '#') break;
      if (c === '"') {
        inQuote = true;
        quoted = true;
        i++;
        continue;
      }
      text += c;
      i++;
    }
    if (inQuote) return fail('unterminated quoted string');
    return ok({ text, quoted });
  };

  for (;;) {
    skipBlanks();
    if (i >= n) break;
    if (s[i] === '#') {
      if (allowComments) break;
      return fail('unexpected "#"');
    }
    if (s[i] === ',') return fail('unexpected "," before a name');
    const field: HbaToken[] = [];
    for (;;) {
      const tok = readToken();
      if (!tok.ok) return tok;
      field.push(tok.value);
      const save = i;
      skipBlanks();
      if (i < n && s[i] === ',') {
        i++;
        skipBlanks();
        if (atCommentOrEnd()) return fail(`missing name after "," following "${tok.value.text}"`);
        if (s[i] === ',') return fail(`empty name in list after "${tok.value.text}"`);
        continue;
      }
      i = save;
      break;
    }
    fields.push(field);
  }
  return ok(fields);
}

// ---------------------------------------------------------------------------------------------
// Column interpreters shared by both sources

function single(field: HbaField, what: string): Parsed<HbaToken> {
  if (field.length > 1) return fail(`multiple values specified for ${what}`);
  return ok(field[0]!);
}

function parseType(field: HbaField): Parsed<HbaType> {
  const t = single(field, 'connection type');
  if (!t.ok) return t;
  const text = t.value.text;
  if (CONNECTION_TYPES.has(text)) return ok(text as HbaType);
  if (text === 'hostgssenc' || text === 'hostnogssenc') {
    return fail(`connection type "${text}" is not supported by pgbastion (it never offers GSSAPI encryption)`);
  }
  return fail(`invalid connection type "${text}"`);
}

function unsupportedNameSyntax(tok: HbaToken): string | null {
  if (tok.quoted) return null;
  if (tok.text.startsWith('@')) return `@file inclusions are not supported by pgbastion: "${tok.text}"`;
  if (tok.text.startsWith('/')) return `regular expressions are not supported by pgbastion: "${tok.text}"`;
  return null;
}

export function parseDatabases(field: HbaField): Parsed<DatabaseMatcher[]> {
  const out: DatabaseMatcher[] = [];
  for (const tok of field) {
    const bad = unsupportedNameSyntax(tok);
    if (bad !== null) return fail(bad);
    if (!tok.quoted) {
      switch (tok.text) {
        case 'all':
          out.push({ kind: 'all' });
          continue;
        case 'sameuser':
          out.push({ kind: 'sameuser' });
          continue;
        case 'samerole':
        case 'samegroup':
          out.push({ kind: 'samerole' });
          continue;
        case 'replication':
          out.push({ kind: 'replication' });
          continue;
        default:
          break;
      }
    }
    out.push({ kind: 'name', name: tok.text });
  }
  return ok(out);
}

export function parseUsers(field: HbaField): Parsed<UserMatcher[]> {
  const out: UserMatcher[] = [];
  for (const tok of field) {
    const bad = unsupportedNameSyntax(tok);
    if (bad !== null) return fail(bad);
    if (!tok.quoted && tok.text === 'all') {
      out.push({ kind: 'all' });
    } else if (!tok.quoted && tok.text.startsWith('+')) {
      if (tok.text.length === 1) return fail('missing group name after "+"');
      out.push({ kind: 'group', name: tok.text.slice(1) });
    } else {
      out.push({ kind: 'name', name: tok.text });
    }
  }
  return ok(out);
}

function looksLikeIp(s: string): boolean {
  if (s.indexOf(':') >= 0) return true;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c !== 46 && (c < 48 || c > 57)) return false;
  }
  return true;
}

/** `1.2.3.4`, `1.2.3.4/8` and friends. `needMask` is returned for a bare address. */
type AddressHead = { readonly kind: 'matcher'; readonly matcher: AddressMatcher } | { readonly kind: 'needMask'; readonly ip: IpAddress };

function parseAddressHead(tok: HbaToken): Parsed<AddressHead> {
  const text = tok.text;
  if (!tok.quoted) {
    if (text === 'all') return ok({ kind: 'matcher', matcher: { kind: 'all' } });
    if (text === 'samehost' || text === 'samenet') {
      return fail(`address keyword "${text}" is not supported by pgbastion`);
    }
  }
  const slash = text.indexOf('/');
  const host = slash >= 0 ? text.slice(0, slash) : text;
  if (host.indexOf('%') >= 0) {
    return fail(`invalid IP address "${text}": zone identifiers are not supported`);
  }
  const ip = parseIpAddress(host);
  if (ip === null) {
    if (host === '' || looksLikeIp(host)) return fail(`invalid IP address "${text}"`);
    return fail(`host names are not supported by pgbastion: "${text}"`);
  }
  if (slash < 0) return ok({ kind: 'needMask', ip });
  const bits = text.slice(slash + 1);
  let prefix = 0;
  let valid = bits.length > 0 && bits.length <= 3;
  for (let i = 0; valid && i < bits.length; i++) {
    const c = bits.charCodeAt(i);
    if (c < 48 || c > 57) valid = false;
    else prefix = prefix * 10 + (c - 48);
  }
  if (!valid || prefix > maxPrefix(ip.family)) return fail(`invalid CIDR mask in address "${text}"`);
  return ok({ kind: 'matcher', matcher: clientNetwork(ip, prefix) });
}

function applyMask(ip: IpAddress, addressText: string, maskTok: HbaToken): Parsed<AddressMatcher> {
  const m = maskTok.text;
  const mask = parseIpAddress(m);
  if (mask === null) {
    const hint = isHbaMethod(m)
      ? ` (address "${addressText}" has no "/" prefix length; write it in CIDR notation, e.g. "${addressText}/${maxPrefix(ip.family)}", or give a netmask column)`
      : '';
    return fail(`invalid IP mask "${m}"${hint}`);
  }
  if (mask.family !== ip.family) return fail('IP address and mask do not match');
  const prefix = maskToPrefix(mask.words);
  if (prefix === null) return fail(`invalid IP mask "${m}": not a contiguous netmask`);
  return ok(clientNetwork(ip, prefix));
}

function parseMethod(field: HbaField, type: HbaType): Parsed<HbaMethod> {
  const t = single(field, 'authentication type');
  if (!t.ok) return t;
  const text = t.value.text;
  if (!isHbaMethod(text)) return fail(`invalid authentication method "${text}"`);
  // PostgreSQL silently turns ident on local connections into peer.
  if (text === 'ident' && type === 'local') return ok('peer');
  return ok(text);
}

function parseOptions(fields: readonly HbaField[], type: HbaType): Parsed<Record<string, string>> {
  const options = new Map<string, string>();
  for (const field of fields) {
    for (const tok of field) {
      const eq = tok.text.indexOf('=');
      if (eq <= 0) return fail(`authentication option not in name=value format: ${tok.text}`);
      options.set(tok.text.slice(0, eq), tok.text.slice(eq + 1));
    }
  }
  const clientcert = options.get('clientcert');
  if (clientcert !== undefined) {
    if (type !== 'hostssl') return fail('clientcert can only be configured for "hostssl" rows');
    if (clientcert !== 'verify-ca' && clientcert !== 'verify-full') {
      return fail(`invalid value for clientcert: "${clientcert}"`);
    }
  }
  return ok(Object.fromEntries(options));
}

type RuleBody = Omit<HbaRule, 'index' | 'source' | 'line'>;

/** Interpret the columns of one pg_hba.conf record. */
function ruleFromFields(fields: readonly HbaField[]): Parsed<RuleBody> {
  const first = fields[0]!;
  if (first.length === 1 && !first[0]!.quoted && INCLUDE_DIRECTIVES.has(first[0]!.text)) {
    return fail(`"${first[0]!.text}" directives are not supported by pgbastion`);
  }
  const type = parseType(first);
  if (!type.ok) return type;
  let i = 1;
  const dbField = fields[i++];
  if (dbField === undefined) return fail('end-of-line before database specification');
  const databases = parseDatabases(dbField);
  if (!databases.ok) return databases;
  const userField = fields[i++];
  if (userField === undefined) return fail('end-of-line before role specification');
  const users = parseUsers(userField);
  if (!users.ok) return users;

  let address: AddressMatcher = { kind: 'none' };
  if (type.value !== 'local') {
    const addrField = fields[i++];
    if (addrField === undefined) return fail('end-of-line before IP address specification');
    const addrTok = single(addrField, 'host address');
    if (!addrTok.ok) return addrTok;
    const head = parseAddressHead(addrTok.value);
    if (!head.ok) return head;
    if (head.value.kind === 'matcher') {
      address = head.value.matcher;
    } else {
      const maskField = fields[i++];
      if (maskField === undefined) {
        return fail(
          'end-of-line before netmask specification (specify an address range in CIDR notation, or provide a separate netmask)',
        );
      }
      const maskTok = single(maskField, 'netmask');
      if (!maskTok.ok) return maskTok;
      const masked = applyMask(head.value.ip, addrTok.value.text, maskTok.value);
      if (!masked.ok) return masked;
      address = masked.value;
    }
  }

  const methodField = fields[i++];
  if (methodField === undefined) return fail('end-of-line before authentication method');
  const method = parseMethod(methodField, type.value);
  if (!method.ok) return method;
  const options = parseOptions(fields.slice(i), type.value);
  if (!options.ok) return options;
  return ok({
    type: type.value,
    databases: databases.value,
    users: users.value,
    address,
    method: method.value,
    options: options.value,
  });
}

/**
 * Parse pg_hba.conf text. Records may continue on the next line with a trailing backslash (as
 * PostgreSQL 16+); errors carry the record's first line. Lines with errors produce no rule, but
 * still count in the rule numbering (`HbaRule.index`).
 */
export function parseHbaFile(text: string, sourceName: string): { rules: HbaRule[]; errors: HbaFileError[] } {
  const rules: HbaRule[] = [];
  const errors: HbaFileError[] = [];
  const lines = text.split('\n');
  const stripCr = (l: string): string => (l.endsWith('\r') ? l.slice(0, -1) : l);
  let k = 0;
  let ruleNo = 0;
  while (k < lines.length) {
    const line = k + 1;
    let buf = stripCr(lines[k++]!);
    let lastCut = 0;
    // A backslash as the very last character joins the next line (PostgreSQL's rule, including
    // its guard that a backslash left over from the previous join does not join again).
    while (buf.length > lastCut && buf.endsWith('\\')) {
      buf = buf.slice(0, -1);
      lastCut = buf.length;
      if (k >= lines.length) break;
      buf += stripCr(lines[k++]!);
    }
    const fields = tokenizeLine(buf, true);
    if (!fields.ok) {
      ruleNo++; // a broken record still takes its place in the numbering
      errors.push({ line, message: fields.error });
      continue;
    }
    if (fields.value.length === 0) continue;
    ruleNo++;
    const body = ruleFromFields(fields.value);
    if (!body.ok) {
      errors.push({ line, message: body.error });
      continue;
    }
    rules.push({ index: ruleNo, source: `${sourceName}:${line}`, line, ...body.value });
  }
  return { rules, errors };
}

// ---------------------------------------------------------------------------------------------
// YAML entries

function nameList(value: unknown, what: 'database' | 'user'): Parsed<HbaField> {
  if (typeof value !== 'string') return fail(`${what} must be a string`);
  const fields = tokenizeLine(value, false);
  if (!fields.ok) return fields;
  if (fields.value.length === 0) return fail(`${what} must not be empty`);
  if (fields.value.length > 1) return fail(`multiple values specified for ${what} (separate names with commas)`);
  return ok(fields.value[0]!);
}

function configAddress(value: unknown): Parsed<AddressMatcher> {
  if (typeof value !== 'string') return fail('address must be a string');
  const fields = tokenizeLine(value, false);
  if (!fields.ok) return fields;
  if (fields.value.length === 0) return fail('address must not be empty');
  if (fields.value.length > 2) return fail(`too many values in address "${value}"`);
  const addrTok = single(fields.value[0]!, 'host address');
  if (!addrTok.ok) return addrTok;
  const head = parseAddressHead(addrTok.value);
  if (!head.ok) return head;
  const maskField = fields.value[1];
  if (head.value.kind === 'matcher') {
    if (maskField !== undefined) return fail(`unexpected netmask after "${addrTok.value.text}"`);
    return ok(head.value.matcher);
  }
  if (maskField === undefined) return ok(clientNetwork(head.value.ip, maxPrefix(head.value.ip.family)));
  const maskTok = single(maskField, 'netmask');
  if (!maskTok.ok) return maskTok;
  return applyMask(head.value.ip, addrTok.value.text, maskTok.value);
}

/**
 * Rules from the YAML `hba:` list. `database` and `user` use the pg_hba.conf column syntax
 * (comma lists, double quotes); `address` is `all`, a CIDR, a single address (as /32 or /128)
 * or `ADDRESS MASK`. Error indexes are 0-based; rule indexes (`rule #N`) are 1-based.
 */
export function rulesFromConfig(
  entries: readonly HbaRuleConfig[],
  sourceName: string,
): { rules: HbaRule[]; errors: HbaConfigError[] } {
  const rules: HbaRule[] = [];
  const errors: HbaConfigError[] = [];
  entries.forEach((entry, index) => {
    const err = (field: HbaConfigError['field'], message: string): void => {
      errors.push({ index, field, message });
    };
    const typeText = typeof entry.type === 'string' ? entry.type : String(entry.type);
    const type = parseType([{ text: typeText, quoted: false }]);
    if (!type.ok) return err('type', type.error);
    const dbField = nameList(entry.database, 'database');
    if (!dbField.ok) return err('database', dbField.error);
    const databases = parseDatabases(dbField.value);
    if (!databases.ok) return err('database', databases.error);
    const userField = nameList(entry.user, 'user');
    if (!userField.ok) return err('user', userField.error);
    const users = parseUsers(userField.value);
    if (!users.ok) return err('user', users.error);

    let address: AddressMatcher = { kind: 'none' };
    if (type.value === 'local') {
      if (entry.address !== undefined) return err('address', '"local" rules take no address');
    } else {
      if (entry.address === undefined) return err('address', `"${type.value}" rules need an address`);
      const a = configAddress(entry.address);
      if (!a.ok) return err('address', a.error);
      address = a.value;
    }

    const methodText = typeof entry.method === 'string' ? entry.method : String(entry.method);
    const method = parseMethod([{ text: methodText, quoted: false }], type.value);
    if (!method.ok) return err('method', method.error);

    const line = typeof entry.line === 'number' ? entry.line : 0;
    rules.push({
      index: index + 1,
      source: line > 0 ? `${sourceName}:${line}` : `${sourceName}:hba[${index}]`,
      line,
      type: type.value,
      databases: databases.value,
      users: users.value,
      address,
      method: method.value,
      options: {},
    });
    return undefined;
  });
  return { rules, errors };
}
