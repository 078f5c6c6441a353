// Refusing one message without breaking the protocol: the refused Query or Parse is
// replaced by a statement that fails to parse on the server with a unique token in its
// error (a Bind/Describe of a statement the client never prepared names a token that
// does not exist). The server then does exactly what PostgreSQL does for any failure —
// aborts an open transaction block, skips the rest of an extended-protocol batch until
// Sync, answers in order — and on the way back that one ErrorResponse is swapped for ours.

import { secureRandomBytes } from '../auth/random-pool.js';
import { serialize } from 'pg-protocol';
import * as be from '../protocol/backend.js';
import { parseFields } from '../protocol/fields.js';
import { SqlState } from '../protocol/sqlstate.js';

export interface RefusalText {
  /** SQLSTATE; 42501 (insufficient_privilege) unless given. */
  readonly code?: string;
  readonly message: string;
  readonly detail?: string;
}

const TOKEN = /pgbastion_t_[0-9a-f]{16}/;

/**
 * Refusals kept per session, and the bytes of their errors (which may quote a name the
 * client sent). Past either the oldest are forgotten (the newest is always kept): only
 * refusals the server skipped pile up (a client sending refused statements behind an error,
 * without Sync), and one forgotten too early only means its error would reach the client
 * unrewritten.
 */
export const MAX_PENDING = 10_000;
export const MAX_PENDING_BYTES = 4 * 1024 * 1024;

/** Pending refusals of one client session, matched by token when their error comes back. */
export class Refusals {
  /** Made with the first refusal: most clients never get one, and an empty Map costs ~150 bytes per idle client. */
  private pending: Map<string, Buffer> | null = null;
  /** Bytes of the errors in `pending`. */
  private bytes = 0;

  /** The Query frame to send instead of a refused simple-protocol Query. */
  query(text: RefusalText): Buffer {
    return serialize.query(this.register(text));
  }

  /** The Parse frame to send instead of a refused Parse (same statement name). */
  parse(statementName: string, text: RefusalText): Buffer {
    return serialize.parse({ name: statementName, text: this.register(text), types: [] });
  }

  /**
   * A statement name to send instead of `name`, which this client never prepared: nothing
   * on the server has it, so the client gets PostgreSQL's "does not exist" for its own name
   * and can never reach a statement another client prepared on that connection.
   */
  missingStatement(name: string): string {
    const message = name === '' ? 'unnamed prepared statement does not exist' : `prepared statement "${name}" does not exist`;
    return this.statement({ code: SqlState.UNDEFINED_PSTATEMENT, message });
  }

  /** A statement name to send in a refused Bind or Describe: nothing has it, and the client gets `text`. */
  statement(text: RefusalText): string {
    return this.register(text);
  }

  get size(): number {
    return this.pending?.size ?? 0;
  }

  /** Our ErrorResponse if `frame` is the server's error for one of our tokens, else null. */
  rewrite(frame: Buffer): Buffer | null {
    const fields = parseFields(frame);
    if (!fields.M) return null;
    const token = TOKEN.exec(fields.M)?.[0];
    if (!token) return null;
    const reply = this.pending?.get(token);
    if (!reply) return null;
    this.pending!.delete(token);
    this.bytes -= reply.length;
    return reply;
  }

  /**
   * Forgets refusals the server skipped (an earlier error in the same batch makes it skip
   * to Sync): called when nothing more is owed, so no error for them can still come.
   */
  clear(): void {
    this.pending = null;
    this.bytes = 0;
  }

  private register(text: RefusalText): string {
    const token = `pgbastion_t_${secureRandomBytes(8).toString('hex')}`;
    const reply = be.errorResponse({ severity: 'ERROR', code: text.code ?? SqlState.INSUFFICIENT_PRIVILEGE, message: text.message, detail: text.detail });
    const pending = (this.pending ??= new Map());
    pending.set(token, reply);
    this.bytes += reply.length;
    while (pending.size > 1 && (pending.size > MAX_PENDING || this.bytes > MAX_PENDING_BYTES)) {
      const [oldest, error] = pending.entries().next().value!;
      pending.delete(oldest);
      this.bytes -= error.length;
    }
    return token;
  }
}
