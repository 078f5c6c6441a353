// Pairs the audited statements a client sent with what the server answered: one batch per
// ReadyForQuery owed, filled with the CommandComplete tags and the first error seen, and
// settled when that ReadyForQuery arrives. Pure bookkeeping; the session writes the events.

import type { DdlStatement } from '../audit/ddl.js';

export type DdlOutcome = { outcome: 'ok'; command_tag: string } | { outcome: 'error'; sqlstate: string };

interface Batch {
  readonly stmts: readonly DdlStatement[];
  /** From Parses (extended protocol) rather than one Query string. */
  readonly extended: boolean;
  readonly tags: string[];
  error: string | null;
}

export class DdlTracker {
  /** One entry per ReadyForQuery owed, oldest first; null when it answers nothing audited. */
  private readonly batches: (Batch | null)[] = [];
  private pending = 0;
  /** Audited statements of Parses sent since the last Sync. */
  private sinceSync: DdlStatement[] = [];

  constructor(private readonly record: (stmt: DdlStatement, outcome: DdlOutcome) => void) {}

  /** While true the session wants CommandComplete tags. */
  get active(): boolean {
    return this.pending > 0;
  }

  parsed(stmts: readonly DdlStatement[] | undefined): void {
    if (stmts) this.sinceSync.push(...stmts);
  }

  /** A Query (its statements) or a Sync (the Parses before it) went out: a ReadyForQuery is owed. */
  owed(fromQuery: readonly DdlStatement[] | null): void {
    const extended = fromQuery === null;
    const stmts = extended ? this.sinceSync : fromQuery;
    if (extended) this.sinceSync = [];
    if (stmts.length === 0) return void this.batches.push(null);
    this.batches.push({ stmts, extended, tags: [], error: null });
    this.pending++;
  }

  /** The last owed ReadyForQuery will not come (a Sync the server ignored in COPY IN). */
  unowe(): void {
    const batch = this.batches.pop();
    if (!batch) return;
    this.pending--;
    this.sinceSync.unshift(...batch.stmts);
  }

  /** The server connection died: nothing in flight will be answered. */
  abandon(): void {
    this.batches.length = 0;
    this.pending = 0;
    this.sinceSync = [];
  }

  commandComplete(tag: string): void {
    this.batches[0]?.tags.push(tag);
  }

  error(sqlstate: string): void {
    const batch = this.batches[0];
    if (batch && batch.error === null) batch.error = sqlstate;
  }

  /** A ReadyForQuery arrived: record the statements it answers. */
  ready(): void {
    const batch = this.batches.shift();
    if (!batch) return;
    this.pending--;
    for (const stmt of batch.stmts) {
      const outcome = outcomeOf(batch, stmt);
      if (outcome) this.record(stmt, outcome);
    }
  }
}

/**
 * A Query string runs its statements in order, each answered by one CommandComplete, and
 * stops at the first error: the statement at that position failed, later ones never ran
 * (null: not recorded). Statements from Parses take the outcome of their Sync.
 */
function outcomeOf(batch: Batch, stmt: DdlStatement): DdlOutcome | null {
  if (batch.extended) {
    return batch.error ? { outcome: 'error', sqlstate: batch.error } : { outcome: 'ok', command_tag: batch.tags.at(-1) ?? '' };
  }
  if (stmt.index < batch.tags.length) return { outcome: 'ok', command_tag: batch.tags[stmt.index]! };
  return batch.error && stmt.index === batch.tags.length ? { outcome: 'error', sqlstate: batch.error } : null;
}
