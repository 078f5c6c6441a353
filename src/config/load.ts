// Loads the YAML configuration: parse, schema-validate, resolve ${env:}/${file:} secrets, cross-check (the hba
// rules, or the hba_file, parsed by the proxy's own parser), freeze.
// Every problem is collected with its key path and YAML line:column, then thrown together as one ConfigError.

import { open, readFile } from 'node:fs/promises';
import { BlockList, isIP } from 'node:net';
import { dirname, resolve as resolvePath } from 'node:path';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { LineCounter, isMap, isScalar, isSeq, isAlias, parseDocument, type Document } from 'yaml';
import { parseHbaFile, rulesFromConfig, type HbaFileError } from '../hba/parse.js';
import type { AddressMatcher, HbaRule } from '../hba/rules.js';
import { NAME_BYTES } from '../protocol/startup.js';
import { configSchema, PATTERN_MESSAGE_KEYWORD, SERVED_HBA_METHODS } from './schema.js';
import type {
  AuditConfig,
  Config,
  Endpoint,
  HbaRuleConfig,
  ServerRoleConfig,
  TlsConfig,
  UpstreamConfig,
  UserConfig,
} from './types.js';

// ---------------------------------------------------------------------------------------------
// Public API

export interface ConfigProblem {
  path: string;
  message: string;
  line?: number;
  column?: number;
}

export class ConfigError extends Error {
  readonly problems: ConfigProblem[];

  constructor(problems: ConfigProblem[], source?: string) {
    const where = source ? ` in ${source}` : '';
    super(`invalid configuration${where}:\n  ${problems.map(formatProblem).join('\n  ')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

export interface LoadResult {
  config: Config;
  /** Accepted but risky settings, already formatted like problems. */
  warnings: string[];
}

export interface LoadOptions {
  /** Folder that relative paths in the config are resolved against. */
  baseDir: string;
  env?: NodeJS.ProcessEnv;
  /** Absolute path recorded as config.source. */
  source?: string;
}

/** `path.to.key: message (line L, column C)`; the one format used for problems and warnings. */
export function formatProblem(p: ConfigProblem): string {
  const where = p.line !== undefined ? ` (line ${p.line}, column ${p.column ?? 1})` : '';
  return `${p.path ? `${p.path}: ` : ''}${p.message}${where}`;
}

export async function loadConfigFile(path: string, env: NodeJS.ProcessEnv = process.env): Promise<Config> {
  return (await loadConfigFileWithWarnings(path, env)).config;
}

export async function loadConfigFileWithWarnings(
  path: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<LoadResult> {
  const source = resolvePath(path);
  let text: string;
  try {
    text = await readFile(source, 'utf8');
  } catch (e) {
    throw new ConfigError([{ path: '', message: `cannot read config file ${source}: ${errorReason(e)}` }], source);
  }
  return loadConfigTextWithWarnings(text, { baseDir: dirname(source), env, source });
}

export async function loadConfigText(text: string, opts: LoadOptions): Promise<Config> {
  return (await loadConfigTextWithWarnings(text, opts)).config;
}

export async function loadConfigTextWithWarnings(text: string, opts: LoadOptions): Promise<LoadResult> {
  const lineCounter = new LineCounter();
  // prettyErrors off: we compute positions ourselves and want one-line messages.
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const locate = makeLocator(doc, lineCounter);
  const col = new Collector(locate);

  for (const err of doc.errors) col.problemAt('', err.message, lineCounter.linePos(err.pos[0]));
  for (const w of doc.warnings) col.warnAt('', w.message, lineCounter.linePos(w.pos[0]));
  if (col.problems.length > 0) throw new ConfigError(col.problems, opts.source);

  if (doc.contents === null) {
    throw new ConfigError([{ path: '', message: 'the configuration is empty (upstreams is required)' }], opts.source);
  }
  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    throw new ConfigError([{ path: '', message: `cannot read YAML: ${errorReason(e)}` }], opts.source);
  }
  return processConfig(raw, { ...opts, env: opts.env ?? process.env }, col);
}

export async function buildConfig(
  obj: unknown,
  opts: { baseDir?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<Config> {
  return (await buildConfigWithWarnings(obj, opts)).config;
}

export async function buildConfigWithWarnings(
  obj: unknown,
  opts: { baseDir?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<LoadResult> {
  const ctx = { baseDir: opts.baseDir ?? process.cwd(), env: opts.env ?? process.env };
  return processConfig(obj, ctx, new Collector(() => undefined));
}

// ---------------------------------------------------------------------------------------------
// Pipeline

interface Context {
  baseDir: string;
  env: NodeJS.ProcessEnv;
  source?: string;
}

/** The validated document before normalisation: listen may still be one object, dates are strings. */
interface RawUser extends Omit<UserConfig, 'valid_until'> {
  valid_until?: string;
}
interface RawConfig extends Omit<Config, 'listen' | 'users' | 'source'> {
  listen: Endpoint | Endpoint[];
  users: RawUser[];
}

async function processConfig(input: unknown, ctx: Context, col: Collector): Promise<LoadResult> {
  // Work on a copy: ajv fills defaults in place and resolution rewrites strings.
  const data = toPlain(input);
  validateSchema(data, col);
  warnInlineSecrets(data, col);
  await resolveReferences(data, ctx, col);
  // Cross-checks run even when the schema failed, so `check` reports every problem at once; they
  // take the document as it is (any shape) and skip values already reported, so a wrong value is
  // not reported twice (a SCRAM secret that is not a string, an unset ${env:} password).
  col.settleReported();
  await checkSemantics(data, ctx, col);
  if (col.problems.length > 0) throw new ConfigError(inFileOrder(col.problems), ctx.source);
  const config = normalise(data as RawConfig, ctx, col);
  return { config: deepFreeze(config), warnings: inFileOrder(col.warnings).map(formatProblem) };
}

/** Deep copy of plain data; Dates become ISO strings so the schema can check them as text. */
function toPlain(v: unknown): unknown {
  if (v instanceof Date) return Number.isNaN(v.getTime()) ? 'invalid date' : v.toISOString();
  if (Array.isArray(v)) return v.map(toPlain);
  if (v !== null && typeof v === 'object') {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toPlain(x)]));
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// Problem collection and YAML positions

type Segment = string | number;
type Position = { line: number; column: number };
type Locator = (path: readonly Segment[], target: 'key' | 'value') => Position | undefined;
/** Where in the YAML a problem points: its key, its value, or nowhere (the message says where). */
type Target = 'key' | 'value' | 'none';

class Collector {
  readonly problems: ConfigProblem[] = [];
  readonly warnings: ConfigProblem[] = [];
  private readonly seen = new Set<string>();
  private settled: readonly string[] = [];

  constructor(readonly locate: Locator) {}

  problem(path: readonly Segment[], message: string, target: Target = 'value'): void {
    const p = this.at(path, message, target);
    if (this.settled.some((done) => isWithin(p.path, done))) return;
    const id = formatProblem(p);
    if (this.seen.has(id)) return; // allErrors can report the same thing through two schema routes
    this.seen.add(id);
    this.problems.push(p);
  }

  problemAt(path: string, message: string, pos: { line: number; col: number }): void {
    this.problems.push({ path, message, line: pos.line, column: pos.col });
  }

  /** From now on, problems at (or under) the paths reported so far are dropped: those values are known bad. */
  settleReported(): void {
    this.settled = this.problems.map((p) => p.path).filter((path) => path !== '');
  }

  warn(path: readonly Segment[], message: string, target: Target = 'value'): void {
    this.warnings.push(this.at(path, message, target));
  }

  warnAt(path: string, message: string, pos: { line: number; col: number }): void {
    this.warnings.push({ path, message, line: pos.line, column: pos.col });
  }

  private at(path: readonly Segment[], message: string, target: Target): ConfigProblem {
    return { path: formatPath(path), message, ...(target !== 'none' && this.locate(path, target)) };
  }
}

/** `users[0].secret` is within `users[0].secret` and within `users[0]`, not within `users[0].se`. */
function isWithin(path: string, ancestor: string): boolean {
  if (!path.startsWith(ancestor)) return false;
  const next = path[ancestor.length];
  return next === undefined || next === '.' || next === '[';
}

/** `users[0].pins["app.tenant_id"]`: dots for plain keys, brackets for indexes and odd keys. */
function formatPath(path: readonly Segment[]): string {
  let out = '';
  for (const seg of path) {
    const s = String(seg);
    if (typeof seg === 'number' || /^\d+$/.test(s)) out += `[${s}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(s)) out += out ? `.${s}` : s;
    else out += `[${JSON.stringify(s)}]`;
  }
  return out;
}

/**
 * Finds the YAML node for a key path. Paths that do not exist in the file (a missing required key,
 * a key filled in by a default) point at the deepest ancestor that does.
 */
function makeLocator(doc: Document, lc: LineCounter): Locator {
  const pos = (node: unknown): Position | undefined => {
    const range = (node as { range?: [number, number, number] } | null)?.range;
    if (!range) return undefined;
    const { line, col } = lc.linePos(range[0]);
    return { line, column: col };
  };
  return (path, target) => {
    let node: unknown = doc.contents;
    let best = pos(node);
    for (let i = 0; i < path.length; i++) {
      if (isAlias(node)) node = node.resolve(doc);
      const seg = String(path[i]);
      if (isMap(node)) {
        const pair = node.items.find((p) => (isScalar(p.key) ? String(p.key.value) : String(p.key)) === seg);
        if (!pair) break;
        const last = i === path.length - 1;
        if (last && target === 'key') return pos(pair.key) ?? best;
        node = pair.value;
        best = pos(pair.value) ?? pos(pair.key) ?? best; // `key:` with no value has no value node
      } else if (isSeq(node)) {
        node = node.items[Number(seg)];
        if (node === undefined) break;
        best = pos(node) ?? best;
      } else break;
    }
    return best;
  };
}

/** Problems sorted by position so they read top to bottom; unpositioned ones keep their order, last. */
function inFileOrder(problems: ConfigProblem[]): ConfigProblem[] {
  const key = (p: ConfigProblem) => (p.line ?? Infinity) * 1e6 + (p.column ?? 0);
  return problems.map((p, i) => ({ p, i })).sort((a, b) => key(a.p) - key(b.p) || a.i - b.i).map(({ p }) => p);
}

function errorReason(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  if (err?.code === 'ENOENT') return 'no such file';
  if (err?.code === 'EACCES') return 'permission denied';
  if (err?.code === 'EISDIR') return 'is a directory';
  return err?.code ?? err?.message ?? String(e);
}

// ---------------------------------------------------------------------------------------------
// Schema validation

let validator: ValidateFunction | undefined;

function getValidator(): ValidateFunction {
  if (!validator) {
    const ajv = new Ajv({ allErrors: true, useDefaults: true, verbose: true, allowUnionTypes: true });
    ajv.addKeyword(PATTERN_MESSAGE_KEYWORD);
    validator = ajv.compile(configSchema);
  }
  return validator;
}

function validateSchema(data: unknown, col: Collector): void {
  const validate = getValidator();
  if (validate(data)) return;
  for (const e of validate.errors ?? []) schemaProblem(e, col);
}

const TYPE_WORDS: Record<string, string> = {
  object: 'a mapping',
  array: 'a list',
  string: 'string',
  integer: 'integer',
  number: 'number',
  boolean: 'boolean (true or false)',
  null: 'null',
};

function schemaProblem(e: ErrorObject, col: Collector): void {
  const path = pointerToPath(e.instancePath);
  const params = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'if':
      return; // "must match then/else schema": the branch's own errors say what is wrong
    case 'additionalProperties':
      return col.problem([...path, String(params.additionalProperty)], 'unknown key', 'key');
    case 'required':
      return col.problem([...path, String(params.missingProperty)], 'is required');
    case 'type': {
      const types = ([] as string[]).concat(params.type as string | string[]);
      const what = types.map((t) => TYPE_WORDS[t] ?? t).join(' or ');
      return col.problem(path, path.length ? `must be ${what}` : `the configuration must be ${what} of settings`);
    }
    case 'enum':
      return col.problem(path, `must be one of ${(params.allowedValues as unknown[]).join(', ')}`);
    case 'const':
      return col.problem(path, `must be ${String(params.allowedValue)}`);
    case 'minimum':
      return col.problem(path, `must be >= ${String(params.limit)}`);
    case 'maximum':
      return col.problem(path, `must be <= ${String(params.limit)}`);
    case 'minItems':
    case 'minLength':
      return col.problem(path, params.limit === 1 ? 'must not be empty' : `must have at least ${params.limit} items`);
    case 'pattern': {
      const hint = (e.parentSchema as Record<string, unknown> | undefined)?.[PATTERN_MESSAGE_KEYWORD];
      return col.problem(path, typeof hint === 'string' ? hint : 'has an invalid format');
    }
    case 'not':
      // The only `not` is the root's hba/hba_file exclusion; point at the second of the two keys.
      return col.problem(['hba_file'], String((e.schema as { description?: string }).description), 'key');
    default:
      return col.problem(path, e.message ?? 'is invalid');
  }
}

function pointerToPath(pointer: string): Segment[] {
  if (pointer === '') return [];
  return pointer
    .slice(1)
    .split('/')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

// ---------------------------------------------------------------------------------------------
// Secret references: ${env:NAME} and ${file:PATH} in any string, pin templates left verbatim

const PIN_TEMPLATES = new Set(['user', 'database', 'cert.cn', 'cert.o', 'cert.ou']);
const REFERENCE = /\$\{([^}]*)\}/g;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
// A secret file is a password or a verifier; the cap keeps a mistaken /dev/zero from eating memory.
const MAX_SECRET_FILE_BYTES = 1024 * 1024;

interface StringSite {
  path: Segment[];
  value: string;
  set(v: string): void;
}

/** Every string value in the document, with a setter to replace it in place. */
function collectStrings(node: unknown, path: Segment[] = [], out: StringSite[] = []): StringSite[] {
  if (node === null || typeof node !== 'object') return out;
  const container = node as Record<string | number, unknown>;
  for (const key of Object.keys(container)) {
    const seg: Segment = Array.isArray(node) ? Number(key) : key;
    const value = container[key];
    const sitePath = [...path, seg];
    if (typeof value === 'string') {
      out.push({ path: sitePath, value, set: (v) => (container[key] = v) });
    } else collectStrings(value, sitePath, out);
  }
  return out;
}

function isPinValue(path: readonly Segment[]): boolean {
  return path.length === 4 && path[0] === 'users' && path[2] === 'pins';
}

/** Resolves references in place; a reference that cannot be resolved is a problem at its path. */
async function resolveReferences(data: unknown, ctx: Context, col: Collector): Promise<void> {
  const fileCache = new Map<string, Promise<string>>();
  for (const site of collectStrings(data)) {
    if (!site.value.includes('${')) continue;
    if (isPinValue(site.path)) {
      checkPinTemplates(site, col);
      continue;
    }
    const result = await substitute(site.value, ctx, fileCache);
    if (result.ok) site.set(result.value);
    else for (const m of result.errors) col.problem(site.path, m);
  }
}

function checkPinTemplates(site: StringSite, col: Collector): void {
  for (const m of site.value.matchAll(REFERENCE)) {
    if (!PIN_TEMPLATES.has(m[1]!)) {
      col.problem(site.path, 'unsupported template; pins may use ${user} ${database} ${cert.cn} ${cert.o} ${cert.ou}');
    }
  }
}

type Substitution = { ok: true; value: string } | { ok: false; errors: string[] };

async function substitute(
  text: string,
  ctx: Context,
  fileCache: Map<string, Promise<string>>,
): Promise<Substitution> {
  const errors: string[] = [];
  const parts: string[] = [];
  let last = 0;
  for (const m of text.matchAll(REFERENCE)) {
    parts.push(text.slice(last, m.index));
    last = m.index! + m[0].length;
    try {
      parts.push(await resolveOne(m[1]!, ctx, fileCache));
    } catch (e) {
      errors.push((e as Error).message);
    }
  }
  parts.push(text.slice(last));
  return errors.length ? { ok: false, errors } : { ok: true, value: parts.join('') };
}

/** Value of one `${...}` body. Error messages name the variable or file, never a value. */
async function resolveOne(body: string, ctx: Context, fileCache: Map<string, Promise<string>>): Promise<string> {
  if (body.startsWith('env:')) {
    const name = body.slice(4);
    if (!ENV_NAME.test(name)) throw new Error('${env:NAME} needs a valid environment variable name');
    const value = ctx.env[name];
    if (value === undefined) throw new Error(`environment variable ${name} is not set`);
    return value;
  }
  if (body.startsWith('file:')) {
    const file = body.slice(5).trim();
    if (!file) throw new Error('${file:PATH} needs a path');
    const abs = resolvePath(ctx.baseDir, file);
    if (!fileCache.has(abs)) fileCache.set(abs, readSecretFile(abs));
    return fileCache.get(abs)!;
  }
  // Deliberately not echoing the body: a literal "${" inside an inline password would leak it.
  throw new Error('unsupported ${...} reference; use ${env:NAME} or ${file:PATH}');
}

async function readSecretFile(abs: string): Promise<string> {
  let handle;
  try {
    handle = await open(abs, 'r');
    const buf = Buffer.alloc(MAX_SECRET_FILE_BYTES + 1);
    const { bytesRead } = await handle.read(buf, 0, buf.length, 0);
    if (bytesRead > MAX_SECRET_FILE_BYTES) throw new Error(`file ${abs} is larger than 1 MiB`);
    return buf.subarray(0, bytesRead).toString('utf8').replace(/\r?\n$/, '');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code) throw new Error(`cannot read file ${abs}: ${errorReason(e)}`);
    throw e;
  } finally {
    await handle?.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Cross-field (semantic) checks, on the document in whatever shape it has

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** The mapping entries of a list, with their indexes; other entries (and a non-list) the schema reported. */
function mappings(v: unknown): [number, Obj][] {
  if (!Array.isArray(v)) return [];
  return v.flatMap((entry, i): [number, Obj][] => (isObj(entry) ? [[i, entry]] : []));
}

function str(o: unknown, key: string): string | undefined {
  const v = isObj(o) ? o[key] : undefined;
  return typeof v === 'string' ? v : undefined;
}

/** `[index, name]` of the entries that have a string name. */
function namesOf(entries: [number, Obj][]): [number, string][] {
  return entries.flatMap(([i, e]): [number, string][] => {
    const name = str(e, 'name');
    return name === undefined ? [] : [[i, name]];
  });
}

/** The names a list defines, or undefined when it is no list (then nothing can be checked against it). */
function definedNames(list: unknown): Set<string> | undefined {
  return Array.isArray(list) ? new Set(namesOf(mappings(list)).map(([, n]) => n)) : undefined;
}

async function checkSemantics(data: unknown, ctx: Context, col: Collector): Promise<void> {
  if (!isObj(data)) return; // the schema said what the document must be
  checkServerRoles(data, col);
  checkUsers(data, col);
  checkCertMap(data, col);
  checkPinning(data, col);
  await checkHba(data, ctx, col);
  checkProxyProtocol(data, col);
  checkUpstream(data, col);
}

function reportDuplicates(names: [number, string][], what: string, base: Segment, col: Collector): void {
  const seen = new Set<string>();
  for (const [i, name] of names) {
    if (seen.has(name)) col.problem([base, i, 'name'], `duplicate ${what} ${name}`);
    seen.add(name);
  }
}

function checkServerRoles(c: Obj, col: Collector): void {
  const roles = mappings(c.server_roles);
  reportDuplicates(namesOf(roles), 'server role', 'server_roles', col);
  for (const [i, r] of roles) {
    // A reference can resolve to "", which the schema (checking the unresolved text) could not see.
    if (r.password === '') col.problem(['server_roles', i, 'password'], 'must not be empty');
  }
}

function checkUsers(c: Obj, col: Collector): void {
  const users = mappings(c.users);
  reportDuplicates(namesOf(users), 'user', 'users', col);
  const roles = definedNames(c.server_roles);
  for (const [i, u] of users) {
    // Clients' names are cut to PostgreSQL's 63 bytes at startup (as PostgreSQL cuts them):
    // a longer configured name could never be asked for.
    const name = str(u, 'name');
    if (name !== undefined && Buffer.byteLength(name) > NAME_BYTES) col.problem(['users', i, 'name'], `is longer than ${NAME_BYTES} bytes, the longest user name PostgreSQL (and so pgbastion) takes`);
    const role = str(u, 'server_role');
    if (roles && role !== undefined && !roles.has(role)) {
      col.problem(['users', i, 'server_role'], `server role ${role} is not defined in server_roles`);
    }
    const secret = str(u, 'secret');
    if (secret !== undefined && !isScramSecret(secret)) {
      col.problem(['users', i, 'secret'], 'must be a SCRAM-SHA-256 secret: SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>');
    }
    const validUntil = str(u, 'valid_until');
    if (validUntil !== undefined && parseTimestamp(validUntil) === undefined) {
      col.problem(['users', i, 'valid_until'], 'is not a valid date/time');
    }
  }
}

function checkCertMap(c: Obj, col: Collector): void {
  const users = definedNames(c.users);
  if (!users) return;
  for (const [i, m] of mappings(c.cert_map)) {
    const user = str(m, 'user');
    if (user !== undefined && !users.has(user)) col.problem(['cert_map', i, 'user'], `user ${user} is not defined in users`);
  }
}

// Customized option names as PostgreSQL accepts them for RLS variables: prefix.name.
const CUSTOM_OPTION = /^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$/;

function checkPinning(c: Obj, col: Collector): void {
  const variables = isObj(c.pinning) ? c.pinning.variables : undefined;
  if (!Array.isArray(variables)) return; // pins can only be checked against a list
  const declared = new Set<string>();
  variables.forEach((v: unknown, i) => {
    if (typeof v !== 'string') return;
    const path = ['pinning', 'variables', i];
    if (!CUSTOM_OPTION.test(v)) col.problem(path, 'must be a customized option name like app.tenant_id');
    else if (declared.has(v.toLowerCase())) col.problem(path, `duplicate variable ${v}`);
    declared.add(v.toLowerCase());
  });
  for (const [i, u] of mappings(c.users)) {
    if (!isObj(u.pins)) continue;
    const keys = new Set<string>();
    for (const key of Object.keys(u.pins)) {
      const path = ['users', i, 'pins', key];
      const lower = key.toLowerCase();
      if (keys.has(lower)) col.problem(path, 'pinned twice (names are case-insensitive)', 'key');
      else if (!declared.has(lower)) col.problem(path, 'is not listed in pinning.variables', 'key');
      keys.add(lower);
    }
  }
}

/** What the rules' checks need to know about client-facing TLS. */
interface TlsPresence {
  readonly configured: boolean;
  readonly ca: boolean;
}

/** Where a rule's problems and warnings go: `hba[i].method`, or `hba_file` with the file's line. */
interface RuleReporter {
  problem(field: 'method', message: string): void;
  warn(message: string): void;
}

/**
 * The rules are parsed here by the parser the proxy uses (src/hba), so `check` refuses what
 * `start` and reload would; then each rule is checked against what pgbastion serves.
 */
async function checkHba(c: Obj, ctx: Context, col: Collector): Promise<void> {
  if (c.hba === undefined && c.hba_file === undefined) {
    col.warn([], 'neither hba nor hba_file is set: every connection will be rejected');
  }
  const tls = { configured: isObj(c.tls), ca: str(c.tls, 'ca') !== undefined };
  if (Array.isArray(c.hba)) checkHbaEntries(c.hba, tls, col);
  // With both set, the schema reported hba_file and every hba_file problem would be dropped: skip the read.
  const hbaFile = str(c, 'hba_file');
  if (hbaFile && c.hba === undefined) await checkHbaFile(resolvePath(ctx.baseDir, hbaFile), tls, col);
}

function checkHbaEntries(entries: unknown[], tls: TlsPresence, col: Collector): void {
  entries.forEach((entry, i) => {
    if (!isObj(entry)) return;
    // rulesFromConfig copes with wrong types inside an entry (the schema reported them already).
    const { rules, errors } = rulesFromConfig([entry as unknown as HbaRuleConfig], 'config');
    for (const e of errors) col.problem(e.field ? ['hba', i, e.field] : ['hba', i], e.message);
    for (const rule of rules) {
      checkServedRule(rule, tls, {
        problem: (field, message) => col.problem(['hba', i, field], message),
        warn: (message) => col.warn(['hba', i], message),
      });
    }
  });
}

async function checkHbaFile(file: string, tls: TlsPresence, col: Collector): Promise<void> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    col.problem(['hba_file'], `cannot read ${file}: ${errorReason(e)}`);
    return;
  }
  // Problems inside the file name its line there, `FILE:LINE: message`, not a place in the YAML.
  const { rules, errors } = parseHbaFile(text, file);
  const problems: HbaFileError[] = [...errors];
  for (const rule of rules) {
    checkServedRule(rule, tls, {
      problem: (_field, message) => problems.push({ line: rule.line, message }),
      warn: (message) => col.warn(['hba_file'], `${file}:${rule.line}: ${message}`, 'none'),
    });
  }
  problems.sort((a, b) => a.line - b.line); // parse errors and unserved rules, top to bottom
  for (const p of problems) col.problem(['hba_file'], `${file}:${p.line}: ${p.message}`, 'none');
}

/** A parsed rule against what pgbastion can enforce: its methods, and what cert and hostssl need. */
function checkServedRule(rule: HbaRule, tls: TlsPresence, report: RuleReporter): void {
  if (!SERVED_HBA_METHODS.includes(rule.method)) {
    report.problem('method', `method ${rule.method} is not served by pgbastion (use scram-sha-256, cert, trust or reject)`);
  }
  if (rule.method === 'cert' && rule.type !== 'hostssl') report.problem('method', 'method cert is only allowed on hostssl rules');
  if (rule.method === 'cert' && !tls.ca) report.problem('method', 'method cert needs tls.ca to verify client certificates');
  if (rule.options.clientcert !== undefined && !tls.ca) report.problem('method', 'clientcert needs tls.ca to verify client certificates');
  // clientcert is the only option pgbastion enforces; one it would ignore must not look in
  // force (map= would have certificate names checked against cert_map, not the map it names).
  for (const name of Object.keys(rule.options)) {
    if (name === 'map') report.problem('method', 'option map is not served by pgbastion: certificate names map to users through cert_map');
    else if (name !== 'clientcert') report.problem('method', `option ${name} is not served by pgbastion`);
  }
  if (rule.type === 'hostssl' && !tls.configured) report.warn('hostssl rule never matches because tls is not configured');
  if (rule.method === 'trust' && rule.type !== 'local' && !isLoopbackNetwork(rule.address)) {
    const address = rule.address.kind === 'cidr' ? rule.address.text : rule.address.kind;
    report.warn(`trust on address ${address} lets anyone who can reach it in without a password`);
  }
}

function checkProxyProtocol(c: Obj, col: Collector): void {
  const trusted = isObj(c.proxy_protocol) ? c.proxy_protocol.trusted : undefined;
  if (!Array.isArray(trusted)) return;
  trusted.forEach((entry: unknown, i) => {
    const bad = typeof entry === 'string' ? cidrProblem(entry) : undefined;
    if (bad) col.problem(['proxy_protocol', 'trusted', i], bad);
  });
}

function checkUpstream(c: Obj, col: Collector): void {
  const upstream = isObj(c.upstream) ? c.upstream : {};
  const mode = str(upstream.tls, 'mode');
  const ca = str(upstream.tls, 'ca');
  if (ca !== undefined && mode !== undefined && mode !== 'verify-full') {
    col.warn(['upstream', 'tls', 'ca'], `is ignored unless mode is verify-full (mode is ${mode})`);
  }
  if (mode === 'verify-full' && ca === undefined) {
    col.problem(['upstream', 'tls', 'ca'], 'is required when mode is verify-full (the CA that signed the upstream certificates)');
  }
  const probeRole = str(upstream.health_check, 'server_role');
  const roles = definedNames(c.server_roles);
  if (probeRole !== undefined && roles && !roles.has(probeRole)) {
    col.problem(['upstream', 'health_check', 'server_role'], `names no server_roles entry ("${probeRole}")`);
  }
}

// ---------------------------------------------------------------------------------------------
// Inline secrets

/** Server-role passwords written into the file itself; SPEC §2 allows that only in test fixtures. */
function warnInlineSecrets(data: unknown, col: Collector): void {
  if (!isObj(data)) return;
  for (const [i, role] of mappings(data.server_roles)) {
    const password = str(role, 'password');
    // Anything left once the ${...} references are taken out was written inline.
    if (password && password.replace(REFERENCE, '') !== '') {
      col.warn(['server_roles', i, 'password'], 'inline secret; use ${file:PATH} or ${env:NAME} outside test fixtures');
    }
  }
}

/** Local shape check of a PostgreSQL SCRAM verifier; the scram module does the real work. */
function isScramSecret(s: string): boolean {
  const b64 = '([A-Za-z0-9+/]+={0,2})';
  const m = new RegExp(`^SCRAM-SHA-256\\$(\\d+):${b64}\\$${b64}:${b64}$`).exec(s);
  if (!m) return false;
  const iterations = Number(m[1]);
  const decodedLength = (x: string) => (x.length % 4 === 0 ? Buffer.from(x, 'base64').length : -1);
  return (
    Number.isSafeInteger(iterations) &&
    iterations >= 1 &&
    decodedLength(m[2]!) > 0 &&
    decodedLength(m[3]!) === 32 &&
    decodedLength(m[4]!) === 32
  );
}

const TIMESTAMP =
  /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?\s*([Zz]|[+-]\d{2}(?::?\d{2})?)?)?$/;

/** ISO-8601 / YAML timestamp to Date; no offset means UTC. Undefined for impossible dates. */
function parseTimestamp(s: string): Date | undefined {
  const m = TIMESTAMP.exec(s);
  if (!m) return undefined;
  const [, y, mo, d, h = '00', mi = '00', sec = '00', frac = '', zone = 'Z'] = m;
  const offset = zone.toUpperCase() === 'Z' ? 'Z' : normaliseOffset(zone);
  const date = new Date(`${y}-${mo}-${d}T${h}:${mi}:${sec}${frac}${offset}`);
  // Date() rolls 2027-02-31 over to March; reject that instead of guessing.
  const calendar = new Date(Date.UTC(Number(y), Number(mo) - 1, Number(d)));
  if (Number.isNaN(date.getTime()) || calendar.getUTCDate() !== Number(d)) return undefined;
  return date;
}

function normaliseOffset(zone: string): string {
  const digits = zone.slice(1).replace(':', '');
  return `${zone[0]}${digits.slice(0, 2)}:${digits.slice(2) || '00'}`;
}

// Addresses: CIDR blocks and loopback detection

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/** Problem text for a CIDR block or single IP address, undefined when valid. */
function cidrProblem(s: string): string | undefined {
  const [ip, bits, extra] = s.split('/');
  const family = isIP(ip!);
  if (!family || extra !== undefined) return 'must be an IP address or a CIDR block like 10.0.0.0/8';
  if (bits === undefined) return undefined;
  const max = family === 4 ? 32 : 128;
  if (!/^\d{1,3}$/.test(bits) || Number(bits) > max) return `has an invalid prefix length (0..${max})`;
  return undefined;
}

/** Is the rule's network inside loopback (127.0.0.0/8, ::1)? */
function isLoopbackNetwork(a: AddressMatcher): boolean {
  if (a.kind !== 'cidr') return false;
  const network = a.text.slice(0, a.text.indexOf('/'));
  // The block is inside loopback when its network address is and it is no wider than the loopback range.
  const minPrefix = a.family === 4 ? 8 : 128;
  return a.prefix >= minPrefix && LOOPBACK.check(network, a.family === 4 ? 'ipv4' : 'ipv6');
}

// ---------------------------------------------------------------------------------------------
// Normalisation into the Config contract

function normalise(c: RawConfig, ctx: Context, col: Collector): Config {
  const abs = (p: string) => resolvePath(ctx.baseDir, p);
  return {
    listen: Array.isArray(c.listen) ? c.listen : [c.listen],
    ...(c.proxy_protocol && { proxy_protocol: c.proxy_protocol }),
    ...(c.tls && { tls: normaliseTls(c.tls, abs) }),
    upstreams: c.upstreams,
    upstream: normaliseUpstream(c.upstream, abs),
    pool: c.pool,
    users: c.users.map(normaliseUser),
    server_roles: c.server_roles.map((r): ServerRoleConfig => ({ name: r.name, password: r.password })),
    cert_map: c.cert_map,
    ...(c.hba && { hba: c.hba.map((rule, i) => withLine(rule, col.locate(['hba', i], 'value'))) }),
    ...(c.hba_file !== undefined && { hba_file: abs(c.hba_file) }),
    pinning: { variables: c.pinning.variables.map((v) => v.toLowerCase()) },
    audit: normaliseAudit(c.audit, abs),
    ...(c.metrics && { metrics: c.metrics }),
    limits: c.limits,
    log_level: c.log_level,
    workers: c.workers,
    shutdown_timeout_ms: c.shutdown_timeout_ms,
    ...(ctx.source !== undefined && { source: ctx.source }),
  };
}

function normaliseTls(t: TlsConfig, abs: (p: string) => string): TlsConfig {
  return {
    cert: abs(t.cert),
    key: abs(t.key),
    ...(t.ca !== undefined && { ca: abs(t.ca) }),
    ...(t.crl !== undefined && { crl: abs(t.crl) }),
    min_version: t.min_version,
  };
}

function normaliseUpstream(u: UpstreamConfig, abs: (p: string) => string): UpstreamConfig {
  const tls = { mode: u.tls.mode, ...(u.tls.ca !== undefined && { ca: abs(u.tls.ca) }) };
  return { ...u, tls };
}

function normaliseAudit(a: AuditConfig, abs: (p: string) => string): AuditConfig {
  return { ...a, destination: a.destination === 'stdout' ? 'stdout' : abs(a.destination) };
}

function normaliseUser(u: RawUser): UserConfig {
  // Pin names are matched case-insensitively, like PostgreSQL option names, so store them lower-cased.
  const pins = Object.fromEntries(Object.entries(u.pins).map(([k, v]) => [k.toLowerCase(), v]));
  return {
    name: u.name,
    ...(u.secret !== undefined && { secret: u.secret }),
    server_role: u.server_role,
    pins,
    ...(u.valid_until !== undefined && { valid_until: parseTimestamp(u.valid_until)! }),
  };
}

function withLine(rule: HbaRuleConfig, pos: Position | undefined): HbaRuleConfig {
  return pos ? { ...rule, line: pos.line } : { ...rule };
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
