// Pairs the audited statements a client sent with what the server answered: one batch per
// ReadyForQuery owed, filled with the CommandComplete tags and the first error seen, and
// settled when that ReadyForQuery arrives. Pure bookkeeping; the session writes the events.

import type { DdlStatement } from '../audit/ddl.js';

export type DdlOutcome = { outcome: 'ok'; command_tag: string } | { outcome: 'error'; sqlstate: string };

interface Batch {
  readonly stmts: DdlStatement[];
  /** From Executes (extended protocol) rather than one Query string. */
  readonly extended: boolean;
  readonly tags: string[];
  error: string | null;
}

export class DdlTracker {
  /** One entry per ReadyForQuery owed, oldest first; null when it answers nothing audited. */
  private readonly batches: (Batch | null)[] = [];
  private pending = 0;
  /**
   * The extended-protocol batch whose Sync has not gone out yet, holding the audited
   * statements of the portals it ran (Execute). Already last in `batches`, so that tags the
   * server sends before the Sync (the client sent Flush) reach it.
   */
  private open: Batch | null = null;

  constructor(private readonly record: (stmt: DdlStatement, outcome: DdlOutcome) => void) {}

  /** While true the session wants CommandComplete tags. */
  get active(): boolean {
    return this.pending > 0;
  }

  /** An Execute of a portal running these audited statements went out. */
  executed(stmts: readonly DdlStatement[]): void {
    if (this.open === null) {
      this.open = { stmts: [], extended: true, tags: [], error: null };
      this.batches.push(this.open);
      this.pending++;
    }
    this.open.stmts.push(...stmts);
  }

  /**
   * A Query (its statements) or a Sync went out: a ReadyForQuery is owed. It also answers the
   * portals run since the last Sync: a Query behind them runs in their transaction.
   */
  owed(fromQuery: readonly DdlStatement[] | null): void {
    const open = this.open;
    this.open = null;
    if (open !== null) {
      if (fromQuery !== null) open.stmts.push(...fromQuery);
      return;
    }
    if (fromQuery === null || fromQuery.length === 0) return void this.batches.push(null);
    this.batches.push({ stmts: [...fromQuery], extended: false, tags: [], error: null });
    this.pending++;
  }

  /** The last owed ReadyForQuery will not come (a Sync the server ignored in COPY IN): its portals wait for the next. */
  unowe(): void {
    const batch = this.batches.pop();
    if (!batch) return;
    if (batch.extended && this.open === null) {
      this.batches.push(batch);
      this.open = batch;
      return;
    }
    this.pending--;
  }

  /** The server connection died: nothing in flight will be answered. */
  abandon(): void {
    this.batches.length = 0;
    this.pending = 0;
    this.open = null;
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
 * (null: not recorded). Statements run by Executes take the outcome of their batch, up to
 * its Sync: its first error, else the last tag.
 */
function outcomeOf(batch: Batch, stmt: DdlStatement): DdlOutcome | null {
  if (batch.extended) {
    return batch.error ? { outcome: 'error', sqlstate: batch.error } : { outcome: 'ok', command_tag: batch.tags.at(-1) ?? '' };
  }
  if (stmt.index < batch.tags.length) return { outcome: 'ok', command_tag: batch.tags[stmt.index]! };
  return batch.error && stmt.index === batch.tags.length ? { outcome: 'error', sqlstate: batch.error } : null;
}
