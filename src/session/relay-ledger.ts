// What the server still owes one client for the bytes relayed to it, and when the server
// connection is free to go back to the pool. A ReadyForQuery answers each Query, Sync and
// FunctionCall sent, except a Sync the server reads during COPY IN (PostgreSQL ignores it)
// and a Query or FunctionCall the server skips (sent inside an extended-protocol batch that
// failed before it). An extended-protocol batch is open from its first message to its
// Sync, or to the answer of a Query written after its last message (see closingQueryIn).
// Per owed ReadyForQuery the ledger keeps when it was asked for (query duration) and which
// tracked SETs it settles. Pure bookkeeping: the session acts on what it says.
//
// The count must never fall short: a ReadyForQuery the ledger did not expect would let the
// connection go back to the pool while the server still answers this client, and the
// next client would read those answers as its own. COPY IN is where that can happen, as
// whether PostgreSQL answers a Sync depends on whether the COPY already failed when it read
// it. Where the proxy cannot know, it errs on owing too much (the connection then stays
// with this client, and is closed when the client leaves): see copyInStarted, and the
// session, which does not send a Sync during a known COPY IN at all. Where the count may
// have fallen short after all, the ledger says so (inDoubt) and the session keeps the
// connection to this client for good: a COPY that failed before reading the Syncs dropped
// for it, an error raised at a copy message outside COPY IN (an expired statement_timeout
// is raised at whatever message comes next, and after CopyData the server does not skip to
// a Sync), and as tripwires any ReadyForQuery with nothing owed, or with nothing before it
// where it would answer a Query.

import type { TrackedSet } from './tracked-set.js';

/** The SETs one ReadyForQuery settles, and whether the server refused any of them. */
interface SetsInFlight {
  readonly sets: readonly TrackedSet[];
  failed: boolean;
  /**
   * Other statements ran in the same transaction as the SETs (a batch's other Executes, a
   * Query in it): one of them may have rolled the SETs back (ROLLBACK, ROLLBACK TO) without
   * an error, or committed them before one (COMMIT, then a failure). Whether they took is
   * not known from the replies.
   */
  readonly mixed: boolean;
}

/** No tracked SETs: one shared list, so the usual Query or batch (none) allocates none; frozen, so a push to it would throw. */
const NO_SETS = Object.freeze([]) as unknown as TrackedSet[];

export class RelayLedger {
  /** ReadyForQuery messages the server still owes. */
  owed = 0;
  /** Extended-protocol messages went out since the last Sync: the server is not done. */
  unsynced = false;
  /**
   * The server is (or may still be) in COPY IN: it started (CopyInResponse) and nothing
   * written since ends it for certain. The session sends no Sync meanwhile.
   */
  copyIn = false;
  /**
   * The SQLSTATE of an error the open batch met: the server skips everything up to the
   * batch's Sync, not written yet (null: no such error).
   */
  skipping: string | null = null;
  /** The count may be short (see above): the connection must not serve another client. */
  inDoubt = false;
  /**
   * Which COPY a CopyInResponse belongs to, and which Syncs behind it the server ignores:
   * the "work" (Execute, Query, FunctionCall) written since the last owed answer, per owed
   * answer the work written before it (times 2, plus 1 when it answers work of its own: a
   * Query or FunctionCall), what went out since the last work (only Flush and Sync, also
   * CopyData, or something that ends a COPY IN) and how many Syncs went out right behind it.
   */
  private workSinceOwe = 0;
  private readonly workBefore: number[] = [];
  private afterWork: 'direct' | 'data' | 'ends-copy' = 'ends-copy';
  private directSyncs = 0;
  /** Syncs were dropped at the CopyInResponse and nothing was answered since. */
  private copyDropped = false;
  /** Answers owed, and ReadyForQuery come, so far: to tell which came after what. */
  private owedTotal = 0;
  private answeredTotal = 0;
  /**
   * A copy message went out inside an open batch, outside COPY IN, before the answer owed
   * with this number: an error until then may be one the server raised at it (see above).
   */
  private strayCopyBefore = -1;
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
  /** Tracked SETs of Executes sent since the last Sync. */
  private setsSinceSync: TrackedSet[] = NO_SETS;

  /** A Query was written inside the open batch with no extended-protocol message after it (see closingQueryIn). */
  get endedByQuery(): boolean {
    return this.closingQueryIn >= 0;
  }

  /** Nothing owed and no batch open: in transaction mode the connection may go back. */
  get settled(): boolean {
    return this.owed === 0 && !this.unsynced;
  }

  /** Parse, Bind, Describe, Close, Execute or Flush went out. An Execute may run a tracked SET. */
  extended(isExecute: boolean, parsedSet: TrackedSet | undefined, isFlush = false): void {
    this.unsynced = true;
    this.closingQueryIn = -1;
    if (isExecute) this.work();
    else if (!isFlush) this.afterWork = 'ends-copy'; // in COPY IN, PostgreSQL fails the COPY on it
    if (parsedSet) {
      if (this.setsSinceSync === NO_SETS) this.setsSinceSync = [];
      this.setsSinceSync.push(parsedSet);
    }
  }

  /** CopyData went out (or another message the session does not look into). */
  copyData(): void {
    if (this.afterWork === 'direct') this.afterWork = 'data';
    this.strayCopy();
  }

  /** CopyDone or CopyFail went out: Syncs count again. */
  copyEnded(): void {
    this.strayCopy();
    this.copyIn = false;
    this.afterWork = 'ends-copy';
  }

  private strayCopy(): void {
    if (!this.copyIn && this.unsynced) this.strayCopyBefore = this.owedTotal;
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
    if (this.afterWork === 'direct') this.directSyncs++;
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
    this.work();
    if (this.unsynced) {
      // Inside a batch the Query commits the batch's implicit transaction with its own: the
      // batch's SETs take (or fail) with it, not with the Sync.
      const sets = set ? [...this.setsSinceSync, set] : this.setsSinceSync;
      this.setsSinceSync = NO_SETS;
      this.owe(now, sets, true);
      if (this.closingQueryIn < 0) this.closingQueryIn = this.owed;
    } else this.owe(now, set ? [set] : NO_SETS, true);
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
    // (Not an answer: answeredTotal counts ReadyForQuery only. The error this is concluded
    // from is seen here before errored() looks at the stray-copy window, and may itself be
    // one raised at a stray copy message, after which the server skipped nothing.)
    this.askedAt.shift();
    this.setsInFlight.shift();
    this.workBefore.shift();
  }

  /** A FunctionCall went out: answered by a ReadyForQuery, like a Sync it closes the batch's SETs. */
  functionCall(now: number): void {
    this.work();
    this.afterWork = 'ends-copy'; // (it starts no COPY)
    const sets = this.setsSinceSync;
    this.setsSinceSync = NO_SETS;
    this.owe(now, sets, true);
  }

  /**
   * COPY IN began. The Syncs written right behind the work that started it (nothing but
   * Flush and Sync between) were read in COPY IN and get no ReadyForQuery: they are no
   * longer owed. Returns how many were dropped (always the last ones owed).
   *
   * The COPY's work is the first written since the last answer: everything before it was
   * answered before the CopyInResponse. Only when it is also the last work written is it
   * known which Syncs follow it directly; otherwise none is dropped, and the later work ends
   * the COPY (PostgreSQL fails it on any message but CopyData, CopyDone, CopyFail, Flush and
   * Sync, and ends the connection), so Syncs written from now on are answered (or never).
   * A Sync behind CopyData stays owed (the server answers it if that data failed the COPY),
   * and so do all Syncs when something else follows them: owing too much keeps the
   * connection with this client, which is safe; owing too little is not. Dropped Syncs are
   * answered after all if the COPY fails before reading them (see errored).
   */
  copyInStarted(): number {
    this.strayCopyBefore = -1; // copy messages written so far went to this COPY
    let work = this.workSinceOwe;
    for (let i = 0; i < this.owed; i++) work += (this.workBefore[i]! >> 1) + (this.workBefore[i]! & 1);
    this.copyIn = work !== 1 ? work === 0 : this.afterWork !== 'ends-copy';
    if (work !== 1 || this.owed === 0) return 0;
    const first = this.workBefore[0]!;
    // Behind an Execute: every answer owed is a Sync written after it. Behind a Query: the
    // Query's own answer comes first, then the Syncs.
    const syncsOwed = first === 2 ? this.owed : first === 1 ? this.owed - 1 : -1;
    if (syncsOwed <= 0 || syncsOwed !== this.directSyncs) return 0;
    for (let i = 0; i < syncsOwed; i++) {
      this.owed--;
      this.askedAt.pop();
      this.setsInFlight.pop();
      this.workBefore.pop();
    }
    if (first === 2) this.unsynced = true; // the COPY's own Sync is still to come
    this.copyDropped = true;
    return syncsOwed;
  }

  /**
   * The server sent an ErrorResponse: the tracked SETs of the current batch did not take. An
   * error also ends COPY IN (the client then sends only Sync, or nothing after a Query). It
   * puts the count in doubt when it may have made the server answer Syncs dropped for a COPY,
   * or not skip to a Sync (raised at a copy message: see the header).
   */
  errored(): void {
    if (this.copyDropped || this.answeredTotal <= this.strayCopyBefore) this.inDoubt = true;
    this.copyIn = false;
    const current = this.setsInFlight[0];
    if (current) current.failed = true;
  }

  /**
   * A ReadyForQuery arrived. Returns when it was asked for (undefined if none was owed); the
   * tracked SETs it settles, unless the server refused one of them, go to `settle`; SETs
   * that ran among other statements (SetsInFlight.mixed), whatever the outcome, to `unsure`.
   * (No object per answer: this runs once per transaction.) `bare`: no other reply came
   * since the last one. A Query or FunctionCall always has one of its own (CommandComplete,
   * EmptyQueryResponse, FunctionCallResponse, ErrorResponse): a bare ReadyForQuery taken for
   * its answer means the count is one short, caught before the connection could go back.
   */
  answered(settle: (set: TrackedSet) => void, bare = false, unsure: () => void = () => {}): number | undefined {
    this.copyDropped = false;
    if (this.owed > 0) {
      if (bare && (this.workBefore[0]! & 1) === 1) this.inDoubt = true;
      this.owed--;
      this.answeredTotal++;
    } else this.inDoubt = true; // one more than counted: the count fell short somewhere
    if (this.closingQueryIn > 0 && --this.closingQueryIn === 0) {
      this.closingQueryIn = -1;
      this.unsynced = false;
    }
    this.workBefore.shift();
    const done = this.setsInFlight.shift();
    if (done?.mixed) unsure();
    else if (done && !done.failed) for (const set of done.sets) settle(set);
    return this.askedAt.shift();
  }

  /** The server connection is gone: nothing more will be answered. */
  reset(): void {
    this.owed = 0;
    this.unsynced = false;
    this.copyIn = false;
    this.skipping = null;
    this.inDoubt = false;
    this.copyDropped = false;
    this.strayCopyBefore = -1;
    this.closingQueryIn = -1;
    this.workSinceOwe = 0;
    this.afterWork = 'ends-copy';
    this.directSyncs = 0;
    this.askedAt.length = 0;
    this.setsInFlight.length = 0;
    this.workBefore.length = 0;
    this.setsSinceSync = NO_SETS;
  }

  /** An Execute, Query or FunctionCall went out. */
  private work(): void {
    this.workSinceOwe++;
    this.afterWork = 'direct';
    this.directSyncs = 0;
  }

  /** `ownWork`: the answer is to a Query or FunctionCall (counted in workSinceOwe by work()). */
  private owe(now: number, sets: readonly TrackedSet[], ownWork = false): void {
    this.owed++;
    this.owedTotal++;
    this.askedAt.push(now);
    // (Each SET is one Execute or Query: more work than SETs means other statements ran too.)
    this.setsInFlight.push(sets.length > 0 ? { sets, failed: false, mixed: this.workSinceOwe !== sets.length } : null);
    const before = ownWork ? this.workSinceOwe - 1 : this.workSinceOwe;
    this.workBefore.push(before * 2 + (ownWork ? 1 : 0));
    this.workSinceOwe = 0;
  }
}
