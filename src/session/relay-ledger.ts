// What the server still owes one client for the bytes relayed to it, and when the server
// connection is free to go back to the pool. A ReadyForQuery answers each Query, Sync and
// FunctionCall sent, except a Sync sent during COPY IN (PostgreSQL ignores it) and a Query
// or FunctionCall the server skips (sent inside an extended-protocol batch that failed
// before it). An extended-protocol batch is open from its first message to its Sync, or
// to the answer of a Query written after its last message (see closingQueryIn). Per owed
// ReadyForQuery the ledger keeps when it was asked for (query duration) and which tracked
// SETs it settles. Pure bookkeeping: the session acts on what it says.

import type { TrackedSet } from './tracked-set.js';

/** The SETs one ReadyForQuery settles, and whether the server refused any of them. */
interface SetsInFlight {
  readonly sets: readonly TrackedSet[];
  failed: boolean;
}

/** No tracked SETs: one shared list, so the usual Query or batch (none) allocates none; frozen, so a push to it would throw. */
const NO_SETS = Object.freeze([]) as unknown as TrackedSet[];

export class RelayLedger {
  /** ReadyForQuery messages the server still owes. */
  owed = 0;
  /** Extended-protocol messages went out since the last Sync: the server is not done. */
  unsynced = false;
  /** The server is in COPY IN: it ignores Sync until CopyDone/CopyFail. */
  copyIn = false;
  /**
   * The SQLSTATE of an error the open batch met: the server skips everything up to the
   * batch's Sync, not written yet (null: no such error).
   */
  skipping: string | null = null;
  /** Syncs sent since the last Execute (-1: the last work came from a simple Query). */
  private syncsAfterExecute = -1;
  /**
   * Answers to come, up to and including that of the first Query written inside the open
   * batch with no extended-protocol message after it (-1: no such Query). When that answer comes the
   * server ran the Query, so nothing before it failed, and nothing it can skip follows:
   * the batch ended there as at a Sync (PostgreSQL commits its implicit transaction with the
   * Query's). Without this a client that never sends Sync would keep its lease for good.
   */
  private closingQueryIn = -1;
  private readonly askedAt: number[] = [];
  private readonly setsInFlight: (SetsInFlight | null)[] = [];
  /** Tracked SETs of Parses sent since the last Sync. */
  private setsSinceSync: TrackedSet[] = NO_SETS;

  /** A Query was written inside the open batch with no extended-protocol message after it (see closingQueryIn). */
  get endedByQuery(): boolean {
    return this.closingQueryIn >= 0;
  }

  /** Nothing owed and no batch open: in transaction mode the connection may go back. */
  get settled(): boolean {
    return this.owed === 0 && !this.unsynced;
  }

  /** Parse, Bind, Describe, Close, Execute or Flush went out. A Parse may carry a tracked SET. */
  extended(isExecute: boolean, parsedSet: TrackedSet | undefined): void {
    this.unsynced = true;
    this.closingQueryIn = -1;
    if (isExecute) this.syncsAfterExecute = 0;
    if (parsedSet) {
      if (this.setsSinceSync === NO_SETS) this.setsSinceSync = [];
      this.setsSinceSync.push(parsedSet);
    }
  }

  /** CopyDone or CopyFail went out: Syncs count again. */
  copyEnded(): void {
    this.copyIn = false;
  }

  /**
   * A Sync went out. Returns false during COPY IN, where it is ignored by the server and
   * answered by nothing.
   */
  sync(now: number): boolean {
    if (this.copyIn) return false;
    this.unsynced = false;
    this.skipping = null;
    this.closingQueryIn = -1;
    if (this.syncsAfterExecute >= 0) this.syncsAfterExecute++;
    const sets = this.setsSinceSync;
    this.setsSinceSync = NO_SETS;
    this.owe(now, sets);
    return true;
  }

  /**
   * A simple Query went out (with the tracked SET it is, if any). Returns false when the
   * server will skip it (see skipping): nothing answers it, and its SET does not take.
   */
  query(now: number, set: TrackedSet | undefined): boolean {
    if (this.skipping !== null) return false;
    this.syncsAfterExecute = -1;
    if (this.unsynced) {
      // Inside a batch the Query commits the batch's implicit transaction with its own: the
      // batch's SETs take (or fail) with it, not with the Sync.
      const sets = set ? [...this.setsSinceSync, set] : this.setsSinceSync;
      this.setsSinceSync = NO_SETS;
      this.owe(now, sets);
      if (this.closingQueryIn < 0) this.closingQueryIn = this.owed;
    } else this.owe(now, set ? [set] : NO_SETS);
    return true;
  }

  /** An error with `sqlstate` came while a batch is open: the server skips to its Sync. */
  skipToSync(sqlstate: string): void {
    if (this.unsynced) this.skipping ??= sqlstate;
  }

  /**
   * The ReadyForQuery owed first will not come: it was owed for a Query (or a FunctionCall
   * behind one) the server skipped, written inside a batch that failed before it. Its SET
   * does not take.
   */
  queryIgnored(): void {
    if (this.owed === 0) return;
    // (When that was the Query closing the batch, the server is still skipping to the Sync.)
    if (this.closingQueryIn > 0) this.closingQueryIn = this.closingQueryIn === 1 ? -1 : this.closingQueryIn - 1;
    this.owed--;
    this.askedAt.shift();
    this.setsInFlight.shift();
  }

  /** A FunctionCall went out: answered by a ReadyForQuery, like a Sync it closes the batch's SETs. */
  functionCall(now: number): void {
    this.syncsAfterExecute = -1;
    const sets = this.setsSinceSync;
    this.setsSinceSync = NO_SETS;
    this.owe(now, sets);
  }

  /**
   * COPY IN began. When an Execute started it, the Syncs already sent behind that Execute
   * will get no ReadyForQuery: they are no longer owed. Returns how many were dropped.
   */
  copyInStarted(): number {
    this.copyIn = true;
    let dropped = 0;
    for (; this.syncsAfterExecute > 0; this.syncsAfterExecute--) {
      this.owed--;
      this.askedAt.pop();
      this.setsInFlight.pop();
      this.unsynced = true; // the COPY's own Sync is still to come
      dropped++;
    }
    return dropped;
  }

  /**
   * The server sent an ErrorResponse: the tracked SETs of the current batch did not take. An
   * error also ends COPY IN (the client then sends only Sync, or nothing after a Query).
   */
  errored(): void {
    this.copyIn = false;
    const current = this.setsInFlight[0];
    if (current) current.failed = true;
  }

  /**
   * A ReadyForQuery arrived. Returns when it was asked for (undefined if none was owed); the
   * tracked SETs it settles, unless the server refused one of them, go to `settle`. (No
   * object per answer: this runs once per transaction.)
   */
  answered(settle: (set: TrackedSet) => void): number | undefined {
    if (this.owed > 0) this.owed--;
    if (this.closingQueryIn > 0 && --this.closingQueryIn === 0) {
      this.closingQueryIn = -1;
      this.unsynced = false;
    }
    const done = this.setsInFlight.shift();
    if (done && !done.failed) for (const set of done.sets) settle(set);
    return this.askedAt.shift();
  }

  /** The server connection is gone: nothing more will be answered. */
  reset(): void {
    this.owed = 0;
    this.unsynced = false;
    this.copyIn = false;
    this.skipping = null;
    this.syncsAfterExecute = -1;
    this.closingQueryIn = -1;
    this.askedAt.length = 0;
    this.setsInFlight.length = 0;
    this.setsSinceSync = NO_SETS;
  }

  private owe(now: number, sets: readonly TrackedSet[]): void {
    this.owed++;
    this.askedAt.push(now);
    this.setsInFlight.push(sets.length > 0 ? { sets, failed: false } : null);
  }
}
