// The real PostgreSQL 17 parser (libpg-query, compiled to WebAssembly): loaded once at
// startup, then called synchronously. Nothing else in pgbastion imports libpg-query.
//
// A parse that fails other than with the parser's own error (a RangeError when deep input
// overflows the JavaScript stack inside WebAssembly, a RuntimeError) leaves the instance's
// shadow stack unwound: some 40 of them and every later parse fails ("memory access out of
// bounds"), for every client. So the first such failure has a fresh instance loaded
// (require() again, past the module cache); parses go on with the old one until it is ready.

import { createRequire } from 'node:module';

type Lib = typeof import('libpg-query');

const require = createRequire(import.meta.url);
const ENTRY = require.resolve('libpg-query');

let lib: Lib | null = null;
let loaded = false;
/** A fresh instance on its way (see the module comment), or null. */
let reloading: Promise<void> | null = null;
/** Fresh instances loaded after a failure or a long text (for tests and logs). */
export let parserReloads = 0;
/** Parses that overflowed the stack: deep input (see parser-cooldown.ts). */
export let parserFaults = 0;

async function freshInstance(): Promise<Lib> {
  // Out of the module cache, and out of its parent's children, which would keep the old
  // instance (and its memory) alive. libpg-query.js stays: it makes a new instance per call.
  const old = require.cache[ENTRY];
  const siblings = old?.parent?.children;
  if (old && siblings) siblings.splice(siblings.indexOf(old) >>> 0, 1);
  delete require.cache[ENTRY];
  const fresh = require(ENTRY) as Lib;
  await fresh.loadModule();
  return fresh;
}

/** Called with every exception the parser throws: its own errors are SqlErrors; anything else taints the instance. */
function afterFailure(err: unknown): void {
  const name = (err as { name?: unknown } | null)?.name;
  if (name === 'SqlError') return;
  // Blamed on the text only when it overflowed the stack itself; an instance already broken
  // fails every text otherwise (memory access or table index out of bounds).
  if (name === 'RangeError') parserFaults++;
  reload();
}

/** Loads a fresh instance, to be used once ready (one at a time). */
function reload(): void {
  if (reloading !== null) return;
  reloading = freshInstance().then(
    (fresh) => {
      lib = fresh;
      parserReloads++;
      reloading = null;
    },
    () => {
      reloading = null; // (tried again at the next failure)
    },
  );
}

function parseSync(sql: string): unknown {
  try {
    return lib!.parseSync(sql);
  } catch (err) {
    afterFailure(err);
    throw err;
  } finally {
    if (sql.length > FRESH_AFTER_CHARS) reload();
  }
}

/** Resolves once a fresh instance asked for by a failure is in use (tests). */
export async function parserSettled(): Promise<void> {
  while (reloading !== null) await reloading;
}

/**
 * The most code (characters outside literals and comments: literals.ts tooCostlyToParse) of a text
 * handed to the parser, which runs on the event loop every client shares (about 0.3 ms per
 * KiB of code, 0.02 ms per KiB of literal): 512 KiB holds the longest parameter list
 * PostgreSQL takes (65 535 `$n`). Callers judge text with more without it.
 */
export const MAX_PARSED_CHARS = 512 * 1024;

/**
 * After a text this long is parsed, a fresh instance is loaded: WebAssembly memory never
 * shrinks, and a parse holds the text several times over (a 64 MiB literal would keep
 * hundreds of MB for the life of the process).
 */
const FRESH_AFTER_CHARS = 4 * 1024 * 1024;

/** Loads the parser's WebAssembly module. Call once before the first classify(). */
export async function loadPolicyParser(): Promise<void> {
  if (lib === null) {
    const first = require(ENTRY) as Lib;
    await first.loadModule();
    lib = first;
  }
  loaded = true;
}

type Tree = { stmts?: { stmt?: unknown; stmt_location?: number; stmt_len?: number }[] };

/** The parser's tree of `sql`, or its message when it rejects the text (one parse either way). */
function parse(sql: string): Tree | string {
  if (!loaded) throw new Error('policy parser not loaded: await loadPolicyParser() before classify()');
  if (sql.trim() === '') return {}; // libpg-query refuses empty input; PostgreSQL runs it as nothing
  try {
    return parseSync(sql) as Tree;
  } catch (err) {
    // Syntax errors, and the parser's own limits (nesting depth, memory): both mean "not parsed".
    return err instanceof Error ? err.message : String(err);
  }
}

/**
 * The raw statements of `sql` (each a `{ NodeType: {...} }` object in libpg-query's JSON
 * form), or the parser's message (e.g. `syntax error at or near "x"`) when it rejects the
 * text. Throws only when the parser was never loaded.
 */
export function parseOrFailure(sql: string): readonly unknown[] | string {
  const tree = parse(sql);
  if (typeof tree === 'string') return tree;
  return (tree.stmts ?? []).map((s) => s.stmt ?? null).filter((s) => s !== null);
}

/** Like parseOrFailure, null when the parser rejects the text. */
export function parseStatements(sql: string): readonly unknown[] | null {
  const stmts = parseOrFailure(sql);
  return typeof stmts === 'string' ? null : stmts;
}

/** One statement of a parsed string with its place in the text (byte offsets, as PostgreSQL counts). */
export interface LocatedStatement {
  readonly stmt: unknown;
  readonly location: number;
  /** null: to the end of the text. */
  readonly length: number | null;
}

/** Like parseStatements, keeping where each statement sits in `sql`. */
export function parseLocated(sql: string): readonly LocatedStatement[] | null {
  const tree = parse(sql);
  if (typeof tree === 'string') return null;
  return (tree.stmts ?? [])
    .filter((s) => s.stmt !== undefined)
    .map((s) => ({ stmt: s.stmt, location: s.stmt_location ?? 0, length: s.stmt_len ?? null }));
}
