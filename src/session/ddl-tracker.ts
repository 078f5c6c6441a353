// Pairs the audited statements a client sent with what the server answered: one batch per
// ReadyForQuery owed, filled with the completion tags and the first error seen, and settled
// when that ReadyForQuery arrives. Pure bookkeeping; the session writes the events.
//
// A Query string records each audited statement once, at its position in the string.
//
// The extended protocol records runs: each Execute of a portal bound to an audited statement
// (transaction mode, where the session knows which statement every name means; see
// ClientSession). A statement prepared in one batch and run in later ones is recorded at
// every run, with that run's outcome, which is the outcome of its batch (the batch is one
// transaction: when it fails, what ran before the error rolled back too), except for runs
// a COMMIT in the batch made permanent before its error (committedRuns). A Parse of an
// audited statement that no Execute of its batch ran is recorded too, with the batch's
// outcome: a submitted DDL text is never left out, whatever happens to it. (Its tag is empty
// where runs are followed; in session mode, where they are not, it is the batch's last tag,
// usually its own run's.)
//
// A batch keeps at most MAX_RUNS runs one by one; runs past that are counted per statement
// and recorded once each with their number (`runs`), so a client repeating Bind/Execute
// without a Sync grows neither memory nor the audit trail by one entry per message.
//
// Tags: each Execute is answered by one completion (CommandComplete, EmptyQueryResponse or
// PortalSuspended) until an error, so a run's tag is the completion at its Execute's
// position. That position is known when the batch was open before the first of its Executes
// went out (the relay then inspects every completion of it); otherwise the batch's last tag
// stands in.

import type { DdlStatement } from '../audit/ddl.js';

/**
 * `unknown`: the answer never came (the client left, or the server connection was lost,
 * with the statement on its way or running): it may have run, and committed. `reason` says which.
 */
export type DdlOutcome = ({ outcome: 'ok'; command_tag: string } | { outcome: 'error'; sqlstate: string } | { outcome: 'unknown'; reason: string }) & { runs?: number };

/** Runs a batch keeps one by one (see the module comment). */
export const MAX_RUNS = 1000;

/** The audited statements of one Parse; the same array for the same text (ddlStatements caches), so it stands for the text. */
export type DdlGroup = readonly DdlStatement[];

interface Run {
  readonly group: DdlGroup;
  /** Which Execute of the batch it was (0-based). */
  readonly index: number;
}

interface Batch {
  /** Statements of Query strings, by their index in it. */
  query: readonly DdlStatement[];
  /** Parses of audited statements in the batch (a text parsed again is the same group: see ddlStatements). */
  readonly parsed: Set<DdlGroup>;
  /** Executes in the batch that ran an audited statement (the first MAX_RUNS). */
  readonly runs: Run[];
  /** Runs past MAX_RUNS, counted by statement. */
  more: Map<DdlGroup, number> | null;
  /** Completion tags in order ('' for EmptyQueryResponse and PortalSuspended). */
  readonly tags: string[];
  /**
   * Executes of the batch written before it opened, whose completions may have been relayed
   * uninspected: tags[0] answers one of the first `before + 1` Executes (0: tags[i] answers
   * the i-th; see the module comment).
   */
  readonly before: number;
  /** Positions are lost altogether (batches merged, a Query behind the batch): tags are only a list. */
  lost: boolean;
  error: string | null;
  /** Its ReadyForQuery is owed (a Query or Sync went out); else more of it may still come. */
  closed: boolean;
  /** A Query closed it (written before the batch's Sync): the last tag is the Query's. */
  endsInQuery: boolean;
}

interface Portal {
  readonly group: DdlGroup;
  /** The batch (owed sequence number) of its Bind: it ends with that batch's transaction. */
  readonly seq: number;
}

export class DdlTracker {
  /** Batches with audited work, oldest first; null for an owed ReadyForQuery that answers none. */
  private readonly batches: (Batch | null)[] = [];
  /** The last entry of `batches`, while it is still open (no Query or Sync yet). */
  private open: Batch | null = null;
  /** Executes written since the last Query or Sync. */
  private executes = 0;
  /** Portals bound to audited statements, by name ('' the unnamed one); made with the first (most sessions run no DDL). */
  private portals: Map<string, Portal> | null = null;
  /** Batches in `batches` that are not null. */
  private pending = 0;
  /** Query/Sync messages written, and ReadyForQuery messages read. */
  private owedSeq = 0;
  private readySeq = 0;

  /**
   * `runsFollowed`: the session reports Binds and Executes (transaction mode); else only
   * Parses and Queries, and a Parse takes its batch's last tag.
   */
  constructor(
    private readonly record: (stmt: DdlStatement, outcome: DdlOutcome) => void,
    private readonly runsFollowed = true,
  ) {}

  /** While true the session wants completion tags (and errors) from the relay. */
  get active(): boolean {
    return this.pending > 0;
  }

  /** Whether any portal is bound to an audited statement: Bind and Execute need looking at. */
  get tracksPortals(): boolean {
    return this.portals !== null && this.portals.size > 0;
  }

  /** A Parse of audited statements went out. */
  parsed(stmts: DdlGroup | undefined): void {
    if (stmts && stmts.length > 0) this.current().parsed.add(stmts);
  }

  /**
   * A Bind went out: `portal` now runs `group` (null: nothing audited). A named portal that
   * still exists cannot be bound again (PostgreSQL refuses: 42P03), so its entry stays; the
   * unnamed one is replaced.
   */
  bound(portal: string, group: DdlGroup | null): void {
    if (portal !== '' && this.portals?.has(portal)) return;
    if (group === null) this.portals?.delete(portal);
    else (this.portals ??= new Map()).set(portal, { group, seq: this.owedSeq });
  }

  /** A Query went out: PostgreSQL drops the unnamed portal first. */
  queried(): void {
    this.portals?.delete('');
  }

  /** A Close of a portal went out. */
  closedPortal(portal: string): void {
    this.portals?.delete(portal);
  }

  /**
   * An Execute went out (`portal` null when no portal is tracked: nothing audited runs).
   * Returns whether it runs an audited statement.
   */
  executed(portal: string | null): boolean {
    const index = this.executes;
    const bound = portal === null ? undefined : this.portals?.get(portal);
    if (bound !== undefined) {
      const batch = this.current(); // before the count moves: is this Execute the batch's first?
      if (batch.runs.length < MAX_RUNS) batch.runs.push({ group: bound.group, index });
      else countMore(batch, bound.group, 1);
    }
    this.executes++;
    return bound !== undefined;
  }

  /** A Query (its statements) or a Sync (null) went out: a ReadyForQuery is owed. */
  owed(fromQuery: readonly DdlStatement[] | null): void {
    this.owedSeq++;
    const executes = this.executes;
    this.executes = 0;
    const open = this.open;
    this.open = null;
    if (open !== null) {
      open.closed = true;
      open.endsInQuery = fromQuery !== null;
      // A Query behind an unfinished extended batch: one ReadyForQuery answers both.
      if (fromQuery !== null && fromQuery.length > 0) {
        open.query = [...open.query, ...fromQuery];
        open.lost = true;
      }
      return;
    }
    if (fromQuery === null || fromQuery.length === 0) return void this.batches.push(null);
    // (Executes of a batch open before the Query, not audited, answer completions first.)
    this.batches.push({ query: fromQuery, parsed: new Set(), runs: [], more: null, tags: [], before: executes, lost: false, error: null, closed: true, endsInQuery: true });
    this.pending++;
  }

  /**
   * A Query went out that the server skips (`sqlstate` failed the batch it was written in,
   * whose Sync is still to come): its statements never run, and are recorded as failed with
   * that batch.
   */
  skippedQuery(stmts: readonly DdlStatement[], sqlstate: string): void {
    if (stmts.length === 0) return;
    const batch = this.current();
    batch.query = [...batch.query, ...stmts];
    batch.lost = true;
    batch.error ??= sqlstate;
  }

  /**
   * The ReadyForQuery owed first will not come: the server skipped the Query (or FunctionCall)
   * it was owed for (an error earlier in the batch it was written in) and goes on skipping up to
   * the next Sync, whose ReadyForQuery settles both.
   */
  queryIgnored(): void {
    const first = this.batches[0];
    if (first === undefined) return;
    this.readySeq++; // the skipped Query's number: portals bound before it end with the Sync's
    if (first === null) return void this.batches.shift();
    const second = this.batches[1];
    first.lost = true;
    if (second === null) return void this.batches.splice(1, 1);
    if (second === undefined) {
      first.closed = false;
      this.open = first;
      return;
    }
    absorb(first, second);
    first.query = [...first.query, ...second.query];
    first.error ??= second.error;
    first.closed = second.closed;
    first.endsInQuery = second.endsInQuery;
    if (this.open === second) this.open = first;
    this.batches.splice(1, 1);
    this.pending--;
  }

  /** The last owed ReadyForQuery will not come (a Sync the server ignored in COPY IN). */
  unowe(): void {
    const open = this.open;
    // The entry of that Sync: the last one, or the one before the batch opened since.
    const at = this.batches.length - (open === null ? 1 : 2);
    const entry = this.batches[at];
    if (entry === undefined) return;
    this.owedSeq--;
    if (entry === null) return void this.batches.splice(at, 1);
    // Reopened: what follows the ignored Sync joins it (uncounted: positions are lost).
    entry.closed = false;
    entry.lost = true;
    if (open !== null) {
      absorb(entry, open);
      this.batches.pop();
      this.pending--;
    }
    this.open = entry;
  }

  /**
   * No answer will come for the batches still pending (the client left with work on its way,
   * or the server connection died): each of their statements is recorded, with what is known
   * of it (a Query string's statements already completed or failed) or as `unknown`, since it
   * may have run and committed. Then nothing is pending and no portal survives.
   */
  unanswered(reason: string): void {
    for (const batch of this.batches) {
      if (batch === null) continue;
      const unknown: DdlOutcome = { outcome: 'unknown', reason };
      // A Query string is one transaction until a COMMIT in it: a statement that completed is
      // only known to stay when one followed it; the one that failed is known to have failed.
      const committed = countable(batch) ? committedRuns({ ...batch, error: batch.error ?? 'unanswered' }) : null;
      for (const stmt of batch.query) {
        if (countable(batch) && batch.error !== null && stmt.index > batch.tags.length) continue; // never ran
        const failed = countable(batch) && batch.error !== null && stmt.index === batch.tags.length;
        const kept = stmt.index < batch.tags.length && committed?.(stmt.index) === true;
        this.record(stmt, failed ? { outcome: 'error', sqlstate: batch.error! } : kept ? { outcome: 'ok', command_tag: batch.tags[stmt.index]! } : unknown);
      }
      for (const run of batch.runs) for (const stmt of run.group) this.record(stmt, unknown);
      for (const [group, runs] of batch.more ?? []) for (const stmt of group) this.record(stmt, { ...unknown, runs });
      const ran = new Set(batch.runs.map((r) => r.group));
      for (const group of batch.parsed) {
        if (ran.has(group) || batch.more?.has(group) === true) continue;
        for (const stmt of group) this.record(stmt, unknown);
      }
    }
    this.abandon();
  }

  /** Nothing in flight will be answered and no portal survives: forgets it all, recording nothing (see unanswered). */
  abandon(): void {
    this.batches.length = 0;
    this.pending = 0;
    this.open = null;
    this.executes = 0;
    this.portals = null;
  }

  commandComplete(tag: string): void {
    this.batches[0]?.tags.push(tag);
  }

  error(sqlstate: string): void {
    const batch = this.batches[0];
    if (batch && batch.error === null) batch.error = sqlstate;
  }

  /** A ReadyForQuery arrived: record the statements it answers. */
  ready(status: string): void {
    const seq = this.readySeq++;
    // Out of a transaction, the portals its Binds made are gone.
    if (status === 'I' && this.portals !== null && this.portals.size > 0) {
      for (const [name, p] of this.portals) if (p.seq <= seq) this.portals.delete(name);
    }
    const batch = this.batches[0];
    if (batch === undefined || (batch !== null && !batch.closed)) return;
    this.batches.shift();
    if (batch === null) return;
    this.pending--;
    for (const stmt of batch.query) {
      const outcome = queryOutcome(batch, stmt);
      if (outcome) this.record(stmt, outcome);
    }
    const counted = countable(batch);
    const committed = committedRuns(batch);
    for (const run of batch.runs) {
      const tag = counted ? (batch.tags[run.index] ?? '') : (batch.tags.at(-1) ?? '');
      const outcome: DdlOutcome = committed?.(run.index) === true ? { outcome: 'ok', command_tag: counted ? tag : '' } : outcomeOf(batch, tag);
      for (const stmt of run.group) this.record(stmt, outcome);
    }
    for (const [group, runs] of batch.more ?? []) {
      for (const stmt of group) this.record(stmt, { ...outcomeOf(batch, batch.tags.at(-1) ?? ''), runs });
    }
    const parseTag = this.runsFollowed || batch.endsInQuery ? '' : (batch.tags.at(-1) ?? '');
    const ran = new Set(batch.runs.map((r) => r.group));
    for (const group of batch.parsed) {
      if (ran.has(group) || batch.more?.has(group) === true) continue;
      for (const stmt of group) this.record(stmt, outcomeOf(batch, parseTag));
    }
  }

  /** The open batch, opened now if there is none. */
  private current(): Batch {
    if (this.open === null) {
      // Completions of Executes already written may have been relayed uninspected.
      this.open = { query: [], parsed: new Set(), runs: [], more: null, tags: [], before: this.executes, lost: false, error: null, closed: false, endsInQuery: false };
      this.batches.push(this.open);
      this.pending++;
    }
    return this.open;
  }
}

/** The Parses and runs of `from` join `into` (whose positions are then lost: uncounted). */
function absorb(into: Batch, from: Batch): void {
  for (const group of from.parsed) into.parsed.add(group);
  for (const run of from.runs) {
    if (into.runs.length < MAX_RUNS) into.runs.push(run);
    else countMore(into, run.group, 1);
  }
  for (const [group, n] of from.more ?? []) countMore(into, group, n);
}

/** Counts `n` runs of `group` past MAX_RUNS. */
function countMore(batch: Batch, group: DdlGroup, n: number): void {
  (batch.more ??= new Map()).set(group, (batch.more.get(group) ?? 0) + n);
}

/** Whether tags[i] answers the batch's i-th Execute. */
function countable(batch: Batch): boolean {
  return !batch.lost && batch.before === 0;
}

/** Tags after which a run's work is not committed by a later COMMIT (ROLLBACK is also ROLLBACK TO SAVEPOINT's tag). */
const UNCOMMITTING = new Set(['ROLLBACK', 'PREPARE TRANSACTION']);

/**
 * Whether the Execute at a given index of a failed batch was made permanent by a COMMIT in
 * it before the error; null when none can have been (the batch's outcome stands for every
 * run). A batch is one transaction only until a transaction-control statement in it ends
 * one (PostgreSQL commits at that Execute, not at the Sync), so with `P/B/E CREATE, P/B/E
 * COMMIT, P/B/E SELECT 1/0, S` the CREATE stays although the batch failed.
 *
 * Run i's completion is tags[i - k], k being the batch's Executes answered before it opened
 * (0 <= k <= before). It counts as committed only when that holds whatever k is: a COMMIT
 * answers an Execute after i (tag position > i), and no ROLLBACK or PREPARE TRANSACTION lies
 * between the run's earliest possible position and that COMMIT. Conservative: an ending that
 * may have come before the run keeps the batch's outcome. O(tags) once per failed batch.
 */
function committedRuns(batch: Batch): ((index: number) => boolean) | null {
  const tags = batch.tags;
  if (batch.error === null || batch.lost || !tags.includes('COMMIT')) return null;
  // nextCommit[x]: the first COMMIT at position >= x (tags.length: none);
  // resets[x]: how many uncommitting tags lie at positions < x.
  const nextCommit = new Array<number>(tags.length + 1).fill(tags.length);
  for (let x = tags.length - 1; x >= 0; x--) nextCommit[x] = tags[x] === 'COMMIT' ? x : nextCommit[x + 1]!;
  const resets = new Array<number>(tags.length + 1).fill(0);
  for (let x = 0; x < tags.length; x++) resets[x + 1] = resets[x]! + (UNCOMMITTING.has(tags[x]!) ? 1 : 0);
  return (i) => {
    const commit = nextCommit[i + 1] ?? tags.length;
    if (commit === tags.length) return false;
    const from = Math.max(0, i - batch.before + 1);
    return resets[commit]! - resets[from]! === 0;
  };
}

function outcomeOf(batch: Batch, tag: string): DdlOutcome {
  return batch.error ? { outcome: 'error', sqlstate: batch.error } : { outcome: 'ok', command_tag: tag };
}

/**
 * A Query string runs its statements in order, each answered by one CommandComplete, and
 * stops at the first error: the statement at that position failed, later ones never ran
 * (null: not recorded), earlier ones rolled back with it unless a COMMIT came between.
 */
function queryOutcome(batch: Batch, stmt: DdlStatement): DdlOutcome | null {
  if (!countable(batch)) return outcomeOf(batch, '');
  if (stmt.index < batch.tags.length) {
    // A Query string is one transaction too, until a transaction-control statement in it
    // ends one: `CREATE TABLE a (x int); SELECT 1/0` creates nothing (committedRuns).
    const kept = batch.error === null || committedRuns(batch)?.(stmt.index) === true;
    return kept ? { outcome: 'ok', command_tag: batch.tags[stmt.index]! } : { outcome: 'error', sqlstate: batch.error! };
  }
  return batch.error && stmt.index === batch.tags.length ? { outcome: 'error', sqlstate: batch.error } : null;
}
