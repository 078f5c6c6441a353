// Protocol-level prepared statements in transaction mode. A client's named statement must
// keep working when its next transaction lands on another server connection, so each one
// gets a server-side name of its own, its Parse is remembered, and it is prepared again
// on demand (right before a Bind or Describe that needs it) on a connection that lacks it.

import { randomBytes } from 'node:crypto';
import { FrameError } from '../protocol/scanner.js';
import type { DdlGroup } from './ddl-tracker.js';

export interface Statement {
  readonly serverName: string;
  /** The Parse frame under the server-side name, to replay on another connection. */
  readonly parse: Buffer;
  /** Its SQL may run behind an inline settings switch (session/inline-switch.ts). */
  readonly inlineSafe: boolean;
  /** The audited (DDL) statements in its SQL, recorded each time a portal bound to it runs; else null. */
  readonly ddl: DdlGroup | null;
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

/** Whether a server message may name one of our server-side statements (a quick byte search). */
export function mentionsServerName(frame: Buffer): boolean {
  return frame.includes(PREFIX_BYTES);
}

export class PreparedStatements {
  /** Made with the first statement: most clients never prepare one, and an empty Map costs ~150 bytes per idle client. */
  private byName: Map<string, Statement> | null = null;
  /**
   * Parses of a name already in use, sent under that statement's server-side name so that
   * the server decides, as PostgreSQL would for the client's name, whether it is free: each
   * fails (a syntax error, else 42P05) or takes the name when the Parses before it failed or
   * were skipped (lost) after it was sent. Oldest first.
   */
  private contenders: { readonly name: string; readonly stmt: Statement }[] | null = null;
  /**
   * Client names of the statements closed last, by server-side name: a Bind pipelined behind
   * the Close gets the server's "does not exist" for it after the Close completed.
   */
  private retired: Map<string, string> | null = null;

  has(name: string): boolean {
    return this.byName?.has(name) ?? false;
  }

  /** Registers a client Parse of `name`; returns the frame to forward and the server-side name. */
  define(frame: Buffer, name: string, nameEnd: number, inlineSafe: boolean, ddl: DdlGroup | null): Statement {
    const serverName = `${PREFIX}${nextStatement++}`;
    const parse = replaceCString(frame, 5, nameEnd, serverName);
    const stmt = { serverName, parse, inlineSafe, ddl };
    (this.byName ??= new Map()).set(name, stmt);
    return stmt;
  }

  /** A client Parse of `name` while `held` has that name: it goes out under held's server-side name (see contenders). */
  contend(held: Statement, frame: Buffer, name: string, nameEnd: number, inlineSafe: boolean, ddl: DdlGroup | null): Statement {
    const stmt = { serverName: held.serverName, parse: replaceCString(frame, 5, nameEnd, held.serverName), inlineSafe, ddl };
    (this.contenders ??= []).push({ name, stmt });
    return stmt;
  }

  get(name: string): Statement | undefined {
    return this.byName?.get(name);
  }

  forget(name: string): void {
    const stmt = this.byName?.get(name);
    if (stmt === undefined) return;
    this.byName!.delete(name);
    this.dropContenders((c) => c.stmt.serverName === stmt.serverName);
  }

  /** DEALLOCATE ALL: every name is free again (their server-side copies go with the connection's). */
  clear(): void {
    this.byName = null;
    this.contenders = null;
    this.retired = null;
  }

  /**
   * The server refused or skipped `parse`, a Parse of `serverName`. A contender that lost is
   * dropped; when the statement the client's name stands for lost, the name is free again,
   * and the next contender for it (if any) takes it, pending its own answer.
   */
  lost(serverName: string, parse: Buffer): void {
    if (this.dropContenders((c) => c.stmt.parse === parse)) return;
    const name = this.clientName(serverName, false);
    if (name !== undefined && this.byName!.get(name)!.parse === parse) this.free(name, serverName);
  }

  /**
   * A Close of `serverName` completed on the server (one it skipped closed nothing, so the
   * name is not freed when the Close is sent). Like a lost Parse, it frees the client's name.
   */
  closed(serverName: string): void {
    const name = this.clientName(serverName, false);
    if (name === undefined) return;
    this.free(name, serverName);
    const retired = (this.retired ??= new Map());
    retired.set(serverName, name);
    if (retired.size > MAX_RETIRED) retired.delete(retired.keys().next().value!);
  }

  /** `name` (held as `serverName`) is free: the next contender for it, if any, takes it. */
  private free(name: string, serverName: string): void {
    const next = this.contenders?.find((c) => c.stmt.serverName === serverName);
    if (next === undefined) this.byName!.delete(name);
    else {
      this.dropContenders((c) => c === next);
      this.byName!.set(name, next.stmt);
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
      const name = this.clientName(serverName);
      if (name === undefined) return quoted;
      changed = true;
      return `"${name}"`;
    });
    return changed ? out : null;
  }

  /** The client's name for `serverName`: held, or also contending or retired (`any`). */
  private clientName(serverName: string, any = true): string | undefined {
    for (const [name, stmt] of this.byName ?? []) if (stmt.serverName === serverName) return name;
    if (!any) return undefined;
    return this.contenders?.find((c) => c.stmt.serverName === serverName)?.name ?? this.retired?.get(serverName);
  }

  /** Drops the contenders `which` picks; returns whether there were any. */
  private dropContenders(which: (c: { readonly name: string; readonly stmt: Statement }) => boolean): boolean {
    const all = this.contenders;
    if (all === null) return false;
    const kept = all.filter((c) => !which(c));
    if (kept.length === all.length) return false;
    this.contenders = kept.length > 0 ? kept : null;
    return true;
  }
}

/** Offsets of the statement name in a Bind ('B') frame: after the portal name. */
export function bindStatementName(frame: Buffer): { start: number; end: number } {
  const portalEnd = frame.indexOf(0, 5);
  const end = portalEnd < 0 ? -1 : frame.indexOf(0, portalEnd + 1);
  if (end < 0) throw new FrameError('invalid Bind message');
  return { start: portalEnd + 1, end };
}

/** Offsets of the name in a Describe/Close frame whose target is a statement ('S'), else null. */
export function statementTarget(frame: Buffer): { start: number; end: number } | null {
  if (frame.length < 7) throw new FrameError('invalid Describe/Close message');
  if (frame[5] !== 0x53 /* S */) return null;
  const end = frame.indexOf(0, 6);
  if (end < 0) throw new FrameError('invalid Describe/Close message');
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
