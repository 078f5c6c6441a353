// Protocol-level prepared statements in transaction mode. A client's named statement must
// keep working when its next transaction lands on another server connection, so each one
// gets a server-side name of its own, its Parse is remembered, and it is prepared again
// on demand (right before a Bind or Describe that needs it) on a connection that lacks it.

import { randomBytes } from 'node:crypto';
import { MalformedMessage } from '../protocol/scanner.js';
import type { DdlGroup } from './ddl-tracker.js';
import type { TrackedSet } from './tracked-set.js';

export interface Statement {
  readonly serverName: string;
  /** The Parse frame under the server-side name, to replay on another connection. */
  readonly parse: Buffer;
  /** Its SQL may run behind an inline settings switch (session/inline-switch.ts). */
  readonly inlineSafe: boolean;
  /** The audited (DDL) statements in its SQL, recorded each time a portal bound to it runs; else null. */
  readonly ddl: DdlGroup | null;
  /** A tracked SET (session/tracked-set.ts): recorded each time a portal bound to it runs; else null. */
  readonly set: TrackedSet | null;
  /** Its place among the client's Parses and Closes (PreparedStatements.seq when registered). */
  readonly seq: number;
}

let nextStatement = 1;
/**
 * Server-side names are not guessable across restarts; they still show in
 * pg_prepared_statements on that connection (see README, Prepared statements).
 */
const PREFIX = `pgbastion_${randomBytes(4).toString('hex')}_s`;
/** A server-side name of ours, quoted as PostgreSQL quotes a statement name in its messages. */
const SERVER_NAME = new RegExp(`"(${PREFIX}[0-9]+)"`, 'g');
const PREFIX_BYTES = Buffer.from(PREFIX, 'latin1');
/** Closed statements whose names errors may still quote (see retired). */
const MAX_RETIRED = 16;

/** What a kept statement costs besides its Parse bytes (its record, the Map entries, the names). */
const STATEMENT_OVERHEAD = 256;

function cost(stmt: Statement): number {
  return stmt.parse.length + STATEMENT_OVERHEAD;
}

/** Whether a server message may name one of our server-side statements (a quick byte search). */
export function mentionsServerName(frame: Buffer): boolean {
  return frame.includes(PREFIX_BYTES);
}

interface Contender {
  readonly name: string;
  readonly stmt: Statement;
}

export class PreparedStatements {
  /** Made with the first statement: most clients never prepare one, and an empty Map costs ~150 bytes per idle client. */
  private byName: Map<string, Statement> | null = null;
  /** The client's name of each statement in byName, by server-side name. */
  private byServer: Map<string, string> | null = null;
  /**
   * Parses of a name already in use, sent under that statement's server-side name so that
   * the server decides, as PostgreSQL would for the client's name, whether it is free: each
   * fails (a syntax error, else 42P05) or takes the name when the statement before it is
   * lost or closed after it was sent. By server-side name, then by Parse message, oldest
   * first (each answer removes one in constant time, however many a client piles up).
   */
  private contenders: Map<string, Map<Buffer, Contender>> | null = null;
  /**
   * Client names of the statements closed last, by server-side name: a Bind pipelined behind
   * the Close gets the server's "does not exist" for it after the Close completed.
   */
  private retired: Map<string, string> | null = null;
  /**
   * The client's Parses of named statements, Closes and DEALLOCATEs, counted in the order it
   * sent them: a Close notes the count (see closed), so do messages that may replay a
   * statement (see replayable).
   */
  seq = 0;
  /**
   * Statements the server's answers ended (a Parse lost, a Close completed): never replayed
   * again. Made on first use, as the Maps above (an idle client holds none of these).
   */
  private gone: WeakSet<Statement> | null = null;
  /** Statements a Close or DEALLOCATE was read for, with the count then: not replayed for messages read after it. */
  private ending: WeakMap<Statement, number> | null = null;
  /** What the statements in byName and contenders take (STATEMENT_OVERHEAD + Parse bytes each). */
  private held = 0;

  /** Whether a Parse of `frameBytes` more fits within `limit` bytes of statements kept (limits.max_prepared_bytes). */
  fits(frameBytes: number, limit: number): boolean {
    return this.held + frameBytes + STATEMENT_OVERHEAD <= limit;
  }

  /** Bytes the kept statements take. */
  get heldBytes(): number {
    return this.held;
  }

  /** Registers a client Parse of `name`; returns the frame to forward and the server-side name. */
  define(frame: Buffer, name: string, nameEnd: number, inlineSafe: boolean, ddl: DdlGroup | null, set: TrackedSet | null): Statement {
    const serverName = `${PREFIX}${nextStatement++}`;
    const parse = replaceCString(frame, 5, nameEnd, serverName);
    const stmt = { serverName, parse, inlineSafe, ddl, set, seq: ++this.seq };
    this.held += cost(stmt);
    (this.byName ??= new Map()).set(name, stmt);
    (this.byServer ??= new Map()).set(serverName, name);
    return stmt;
  }

  /** A client Parse of `name` while `held` has that name: it goes out under held's server-side name (see contenders). */
  contend(held: Statement, frame: Buffer, name: string, nameEnd: number, inlineSafe: boolean, ddl: DdlGroup | null, set: TrackedSet | null): Statement {
    const stmt = { serverName: held.serverName, parse: replaceCString(frame, 5, nameEnd, held.serverName), inlineSafe, ddl, set, seq: ++this.seq };
    this.held += cost(stmt);
    const all = (this.contenders ??= new Map());
    let queue = all.get(held.serverName);
    if (queue === undefined) all.set(held.serverName, (queue = new Map()));
    queue.set(stmt.parse, { name, stmt });
    return stmt;
  }

  get(name: string): Statement | undefined {
    return this.byName?.get(name);
  }

  /**
   * Whether a message read when the count was `at` may still have `stmt` prepared again
   * where it is missing: not once the server's answers ended it (the server answers for it
   * as PostgreSQL would, without it), nor when a Close or DEALLOCATE of it was read before
   * the message. A message read before those still gets it (they are queued in order).
   */
  replayable(stmt: Statement, at: number): boolean {
    return !(this.gone?.has(stmt) ?? false) && (this.ending?.get(stmt) ?? Infinity) > at;
  }

  /** A Close (the name is freed when it completes: closed) or DEALLOCATE of `stmt` was read. */
  closing(stmt: Statement): void {
    const ending = (this.ending ??= new WeakMap());
    if (!ending.has(stmt)) ending.set(stmt, ++this.seq);
  }

  /** The server skipped a Close of `stmt`: it stays, to be prepared again where used. */
  closeSkipped(stmt: Statement): void {
    this.ending?.delete(stmt);
  }

  /** closeSkipped for the statement the client's name for `serverName` stands for, if `target` is its Parse. */
  closeSkippedFor(serverName: string, target: Buffer): void {
    const name = this.byServer?.get(serverName);
    const stmt = name === undefined ? undefined : this.byName!.get(name);
    if (stmt?.parse === target) this.closeSkipped(stmt);
  }

  /**
   * A fresh server-side name for a stand-in of `stmt` (see ClientSession.deallocateStandIn),
   * which errors show as the client's name for `stmt`.
   */
  standInFor(stmt: Statement): string {
    const standIn = `${PREFIX}${nextStatement++}`;
    // (A DEALLOCATE in a Parse forgot the name as it came: it is among the retired.)
    const name = this.byServer?.get(stmt.serverName) ?? this.retired?.get(stmt.serverName);
    if (name !== undefined) this.retire(standIn, name);
    return standIn;
  }

  /**
   * The statement a message read now that names `held`'s name would run, as far as the
   * client's messages tell: after a Close of held was read, the newest Parse of the name read
   * after that Close (a contender, which takes the name once the Close completes); else held.
   */
  latest(held: Statement): Statement {
    const closedAt = this.ending?.get(held);
    const queue = closedAt === undefined ? undefined : this.contenders?.get(held.serverName);
    let newest = held;
    for (const c of queue?.values() ?? []) if (c.stmt.seq > closedAt!) newest = c.stmt;
    return newest;
  }

  /** A Close or DEALLOCATE of `stmt` was read (closing) and has not failed or been skipped since. */
  isEnding(stmt: Statement): boolean {
    return this.ending?.has(stmt) ?? false;
  }

  /** SQL DEALLOCATE of `name` in a Parse: freed as it is read (the server's answer is not followed). */
  forget(name: string): void {
    const stmt = this.byName?.get(name);
    if (stmt === undefined) return;
    this.closing(stmt);
    this.held -= cost(stmt);
    for (const c of this.contenders?.get(stmt.serverName)?.values() ?? []) this.held -= cost(c.stmt);
    this.byName!.delete(name);
    this.byServer!.delete(stmt.serverName);
    this.contenders?.delete(stmt.serverName);
    this.retire(stmt.serverName, name);
  }

  /** DEALLOCATE ALL: every name is free again (their server-side copies go with the connection's). */
  clear(): void {
    for (const stmt of this.byName?.values() ?? []) this.closing(stmt);
    for (const queue of this.contenders?.values() ?? []) for (const c of queue.values()) this.closing(c.stmt);
    this.byName = null;
    this.byServer = null;
    this.contenders = null;
    this.retired = null;
    this.held = 0;
  }

  /** The server connection died: the contenders in flight will never be answered. */
  dropContenders(): void {
    for (const queue of this.contenders?.values() ?? []) for (const c of queue.values()) this.held -= cost(c.stmt);
    this.contenders = null;
  }

  /**
   * The server refused or skipped `parse`, a client's Parse of `serverName`. A contender that
   * lost is dropped; when the statement the client's name stands for lost, the name is free.
   */
  lost(serverName: string, parse: Buffer): void {
    const queue = this.contenders?.get(serverName);
    const contender = queue?.get(parse);
    if (contender !== undefined) {
      (this.gone ??= new WeakSet()).add(contender.stmt);
      this.held -= cost(contender.stmt);
      queue!.delete(parse);
      if (queue!.size === 0) this.contenders!.delete(serverName);
      return;
    }
    const name = this.byServer?.get(serverName);
    if (name !== undefined && this.byName!.get(name)!.parse === parse) this.free(name, serverName);
  }

  /**
   * A Close or a Query's DEALLOCATE of `serverName` completed on the server (one it skipped or
   * refused closed nothing, so the name is not freed when it is sent); `seq` was the count of
   * Parses when the client sent it. Like a lost Parse, it frees the client's name, unless the
   * name now stands for a Parse sent after the Close (a contender that took it when the one
   * before the Close was lost: the Close found nothing to close).
   */
  closed(serverName: string, seq: number): void {
    const name = this.byServer?.get(serverName);
    if (name === undefined || this.byName!.get(name)!.seq > seq) return;
    this.free(name, serverName);
  }

  /** Errors may still quote `serverName` for a while: keep the client's name for it (see retired). */
  private retire(serverName: string, name: string): void {
    const retired = (this.retired ??= new Map());
    retired.set(serverName, name);
    if (retired.size > MAX_RETIRED) retired.delete(retired.keys().next().value!);
  }

  /**
   * The statement `name` stands for (as `serverName`) is gone: the next contender takes the
   * name, or it is free (and retired: messages pipelined behind may still get errors naming it).
   */
  private free(name: string, serverName: string): void {
    const stmt = this.byName!.get(name)!;
    (this.gone ??= new WeakSet()).add(stmt);
    this.held -= cost(stmt);
    const queue = this.contenders?.get(serverName);
    const next = queue?.values().next().value;
    if (next === undefined) {
      this.byName!.delete(name);
      this.byServer!.delete(serverName);
      this.retire(serverName, name);
    } else {
      queue!.delete(next.stmt.parse);
      if (queue!.size === 0) this.contenders!.delete(serverName);
      this.byName!.set(name, next.stmt); // (same server-side name: byServer stands)
    }
  }

  /**
   * `text` (from a server error) with the server-side names of this client's statements
   * replaced by its own names, or null when it names none of them.
   */
  clientNamesIn(text: string): string | null {
    if (!text.includes(PREFIX)) return null;
    let changed = false;
    const out = text.replace(SERVER_NAME, (quoted: string, serverName: string) => {
      const name = this.byServer?.get(serverName) ?? this.contenders?.get(serverName)?.values().next().value?.name ?? this.retired?.get(serverName);
      if (name === undefined) return quoted;
      changed = true;
      return `"${name}"`;
    });
    return changed ? out : null;
  }
}

/** Offsets of the statement name in a Bind ('B') frame: after the portal name. */
export function bindStatementName(frame: Buffer): { start: number; end: number } {
  const portalEnd = frame.indexOf(0, 5);
  const end = portalEnd < 0 ? -1 : frame.indexOf(0, portalEnd + 1);
  if (end < 0) throw new MalformedMessage('Bind without the end of its names');
  return { start: portalEnd + 1, end };
}

/** Offsets of the name in a Describe/Close frame whose target is a statement ('S'), else null. */
export function statementTarget(frame: Buffer): { start: number; end: number } | null {
  if (frame.length < 6) throw new MalformedMessage('Describe/Close without its type');
  if (frame[5] !== 0x53 /* S */) return null;
  const end = frame.indexOf(0, 6);
  if (end < 0) throw new MalformedMessage('Describe/Close without the end of its name');
  return { start: 6, end };
}

/** A copy of `frame` with the C string at [start, end) replaced by `value` and the length fixed. */
export function replaceCString(frame: Buffer, start: number, end: number, value: string): Buffer {
  const v = Buffer.from(value, 'utf8');
  const out = Buffer.allocUnsafe(frame.length - (end - start) + v.length);
  frame.copy(out, 0, 0, start);
  v.copy(out, start);
  frame.copy(out, start + v.length, end);
  out.writeInt32BE(out.length - 1, 1);
  return out;
}
