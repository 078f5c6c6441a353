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

export class PreparedStatements {
  /** Made with the first statement: most clients never prepare one, and an empty Map costs ~150 bytes per idle client. */
  private byName: Map<string, Statement> | null = null;

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

  get(name: string): Statement | undefined {
    return this.byName?.get(name);
  }

  forget(name: string): void {
    this.byName?.delete(name);
  }

  /** DEALLOCATE ALL: every name is free again (their server-side copies go with the connection's). */
  clear(): void {
    this.byName = null;
  }

  /** The server refused (or skipped) the Parse behind `serverName`: the client's name is free again. */
  forgetServerName(serverName: string): void {
    if (this.byName === null) return;
    for (const [name, stmt] of this.byName) {
      if (stmt.serverName === serverName) {
        this.byName.delete(name);
        return;
      }
    }
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
