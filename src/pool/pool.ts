// Server connections for one (database, server role): bounded size, FIFO waiters with a
// timeout, idle reuse after a reset, and idle expiry. A connection in doubt is closed.
//
// Affinity (pool.affinity_ms > 0): a connection released with settings (pins) that the
// longest waiter does not hold would cost that waiter a hidden statement to switch them.
// It goes instead to a waiter further back that holds the same settings, or is held for a
// client with those settings coming back (in transaction pooling the releasing client
// usually returns within a round trip). Each waiter's affinity clock starts the first time
// a connection goes elsewhere while it waits (or is held when it arrives); once it has run
// for affinity_ms that waiter is served in FIFO order again. So affinity delays no client by
// much more than affinity_ms, however long the queue itself makes clients wait.

import type { Logger } from 'pino';
import type { ServerConnection } from '../upstream/server-connection.js';
import { UpstreamError } from '../upstream/errors.js';
import type { ClientOrigin } from '../upstream/dial.js';

/** The limits a reload may change. */
export interface PoolLimits {
  size: number;
  acquireTimeoutMs: number;
  idleTimeoutMs: number;
  /** How long the longest waiter may be passed over for a client holding a connection's settings (0: strict FIFO). */
  affinityMs: number;
  /** How many sessions of one user may be sticky to this pool's connections at once (pool.max_sticky_per_user). */
  stickyPerUser: number;
}

export interface PoolOptions extends PoolLimits {
  /** Opens and logs in a new server connection on behalf of `origin` (the PROXY header's client). */
  connect: (origin: ClientOrigin | null) => Promise<ServerConnection>;
  /** May this connection serve another client? False once its upstream or transport left the configuration. */
  keep: (conn: ServerConnection) => boolean;
  logger: Logger;
  /**
   * Called once the pool holds nothing: no connection (open, opening, idle or leased), no
   * waiter, no session (see enter/leave). The registry then forgets and closes it.
   */
  onEmpty?: (pool: Pool) => void;
}

/** The pool could not hand out a connection in time. */
export class PoolTimeoutError extends Error {}

/** How a lease ends: with a connection, or with why there is none. */
export type LeaseCallback = (err: Error | null, conn: ServerConnection | null) => void;

/** Does this connection already hold the asking client's settings? */
export type Prefer = (conn: ServerConnection) => boolean;

interface Waiter {
  done: LeaseCallback;
  /** Date.now() after which it gets PoolTimeoutError. */
  deadline: number;
  /**
   * Date.now() when it was first passed over (0: never). The waiters with a clock started
   * are always a prefix of the queue: a pass-over starts every clock not yet started.
   */
  passedOver: number;
  origin: ClientOrigin | null;
  prefer: Prefer | null;
}

/** How far back in the queue a released connection looks for a waiter holding its settings. */
const AFFINITY_SCAN = 64;

const MAX_ACCEPTED = 10_000;
const settingKey = (name: string, value: string): string => `${name.toLowerCase()}\0${value}`;

export class Pool {
  /** Most recently used last: reuse the warmest connection first. */
  private readonly idle: ServerConnection[] = [];
  /**
   * Affinity: released connections kept for a client holding their settings, while waiters
   * who would need a switch wait (until the longest waiter's passedOver + affinityMs).
   */
  private readonly held: ServerConnection[] = [];
  private holdTimer: NodeJS.Timeout | null = null;
  private holdTimerDue = Infinity;
  private readonly waiters: Waiter[] = [];
  /** One timer for all waiters, due at the earliest deadline (see armWaitTimer). */
  private waitTimer: NodeJS.Timeout | null = null;
  private waitTimerDue = Infinity;
  /** Connections open or opening, idle ones included. */
  private total = 0;
  private sweeper: NodeJS.Timeout | null = null;
  private closed = false;
  /**
   * What a client is told at login without waiting for a server connection (PgBouncer's
   * "welcome"): the ParameterStatus values of a fresh connection, once one has logged in.
   */
  welcome: ReadonlyMap<string, string> | null = null;
  /** `name=value` settings a server has accepted: safe to apply later without a round trip. */
  private readonly accepted = new Set<string>();
  /** Client sessions holding this pool: counted by enter() (PoolRegistry.get), until their leave(). */
  private users = 0;
  /**
   * Sticky sessions per user name (each keeps a connection of this pool to itself until it
   * ends): bounded by stickyPerUser, so that one user cannot starve the others.
   */
  private readonly stickyByUser = new Map<string, number>();

  constructor(
    readonly name: string,
    private opts: PoolOptions,
  ) {}

  /** A client session takes this pool (PoolRegistry.get does it for the session). */
  enter(): void {
    this.users++;
  }

  /** The session that entered is over: it asks for no more connections (one still in flight may come back). */
  leave(): void {
    if (this.users === 0) return this.opts.logger.error({ pool: this.name }, 'pool left more often than entered');
    this.users--;
    this.settle();
  }

  /** May one more session of `user` become sticky? */
  hasStickyShare(user: string): boolean {
    return (this.stickyByUser.get(user) ?? 0) < this.opts.stickyPerUser;
  }

  /** A session of `user` becomes sticky: false (and nothing counted) when the user has no share left. */
  takeStickyShare(user: string): boolean {
    if (!this.hasStickyShare(user)) return false;
    this.stickyByUser.set(user, (this.stickyByUser.get(user) ?? 0) + 1);
    return true;
  }

  /** A sticky session of `user` that took a share has ended. */
  giveStickyShare(user: string): void {
    const n = this.stickyByUser.get(user) ?? 0;
    if (n <= 1) this.stickyByUser.delete(user);
    else this.stickyByUser.set(user, n - 1);
  }

  /** Client sessions holding this pool. */
  get sessions(): number {
    return this.users;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get stats(): { total: number; idle: number; waiting: number; active: number } {
    const idle = this.idle.length + this.held.length;
    return { total: this.total, idle, waiting: this.waiters.length, active: this.total - idle };
  }

  /** Remembers settings a server accepted (bounded: past the cap, logins just take the slow path). */
  noteAccepted(settings: ReadonlyMap<string, string>): void {
    for (const [name, value] of settings) {
      if (this.accepted.size >= MAX_ACCEPTED) return;
      this.accepted.add(settingKey(name, value));
    }
  }

  /** Can a client with these settings log in at once, its first lease applying them? */
  canWelcome(settings: ReadonlyMap<string, string>): boolean {
    if (this.welcome === null) return false;
    for (const [name, value] of settings) if (!this.accepted.has(settingKey(name, value))) return false;
    return true;
  }

  /** Reload: a smaller size takes effect as connections come back (extra ones are closed). */
  setLimits(limits: PoolLimits): void {
    this.opts = { ...this.opts, ...limits };
    this.settleHeld(Date.now());
  }

  /**
   * `origin`: the client asking, named in the PROXY header if a new connection is opened for
   * it. `prefer`: an idle connection it would rather have (one already holding its settings
   * and pins, so the lease needs no statement to switch them); else the warmest.
   *
   * `done` runs synchronously when an idle connection is at hand, and from inside release()
   * when a waiter is handed one: no promise and no extra event-loop turn per transaction.
   * The connection it gets is open (closed ones are dropped at every hand-over).
   */
  request(origin: ClientOrigin | null, prefer: Prefer | null, done: LeaseCallback): void {
    if (this.closed) return done(new UpstreamError('unreachable', 'pool is closed'), null);
    const conn = this.takeHeld(prefer) ?? this.takeIdle(prefer);
    if (conn) return done(null, conn);
    if (this.total < this.opts.size) return this.openFor(origin, done);
    const now = Date.now();
    const deadline = now + this.opts.acquireTimeoutMs;
    // Connections held for other settings: this client is passed over from the start.
    this.waiters.push({ done, deadline, passedOver: this.held.length > 0 ? now : 0, origin, prefer });
    if (deadline < this.waitTimerDue) this.armWaitTimer(deadline);
  }

  /**
   * Takes back a request still waiting (its client left). Left in the queue, it would get a
   * connection only to hand it straight back, inside the hand-over: a run of such waiters
   * is a run of nested calls, as deep as the run is long.
   */
  withdraw(done: LeaseCallback): void {
    const i = this.waiters.findIndex((w) => w.done === done);
    if (i < 0) return;
    this.waiters.splice(i, 1);
    // As when waiters time out: a hold may have lost its reason (see settleHeld).
    if (this.held.length > 0) this.settleHeld(Date.now());
    this.settle();
  }

  /** request() as a promise, for callers off the per-transaction path. */
  acquire(origin: ClientOrigin | null = null, prefer: Prefer | null = null): Promise<ServerConnection> {
    return new Promise((resolve, reject) => {
      this.request(origin, prefer, (err, conn) => (err ? reject(err) : resolve(conn!)));
    });
  }

  /**
   * Returns a connection. `reset` is the housekeeping statement that makes it clean for the
   * next client (null: already clean). A connection that is not reusable is closed, and so
   * is one with a hidden statement still running (a settings switch its client's work was
   * waiting for): the next client's work would run behind it, whatever it does.
   */
  release(conn: ServerConnection, reusable: boolean, reset: string | null): void {
    conn.detach();
    if (!reusable || conn.isClosed || conn.runningHidden || this.closed) return this.drop(conn);
    const pending = conn.cancelling;
    if (pending) {
      // A cancel aimed at the last client's statement could still interrupt the next one: the
      // connection waits for every cancel on its way, and goes when one was not seen through.
      conn.cancelling = null;
      void pending.then((seen) => (seen ? this.release(conn, true, reset) : this.drop(conn)));
      return;
    }
    if (reset === null) return this.handOver(conn);
    conn.runHidden(reset).then(
      () => this.handOver(conn),
      () => this.drop(conn),
    );
  }

  close(): void {
    this.closed = true;
    this.armWaitTimer(Infinity);
    this.armHoldTimer(Infinity);
    for (const w of this.waiters.splice(0)) w.done(new UpstreamError('unreachable', 'pool is closing'), null);
    for (const conn of this.idle.splice(0)) conn.close();
    for (const conn of this.held.splice(0)) conn.close();
    if (this.sweeper) clearInterval(this.sweeper);
  }

  /**
   * Closes the idle connections `doomed` picks (idle too long, upstream unhealthy or no
   * longer configured); returns how many. Taken off the list first, so forgetIdle skips them.
   */
  closeIdle(doomed: (conn: ServerConnection) => boolean): number {
    let closed = 0;
    for (const list of [this.idle, this.held]) {
      for (const conn of list.filter(doomed)) {
        list.splice(list.indexOf(conn), 1);
        conn.close();
        this.total--;
        closed++;
      }
    }
    this.refill();
    this.settle();
    return closed;
  }

  /** A held connection with the asker's settings: it skips the queue (no switch needed). */
  private takeHeld(prefer: Prefer | null): ServerConnection | null {
    if (prefer === null || this.held.length === 0) return null;
    for (let i = this.held.length - 1; i >= 0; i--) {
      const conn = this.held[i]!;
      if (conn.isClosed || !prefer(conn)) continue;
      this.held.splice(i, 1);
      if (this.opts.keep(conn)) return conn;
      this.drop(conn);
    }
    return null;
  }

  private takeIdle(prefer: Prefer | null): ServerConnection | null {
    if (prefer !== null) {
      for (let i = this.idle.length - 1; i >= 0; i--) {
        const conn = this.idle[i]!;
        if (conn.isClosed || !prefer(conn) || !this.opts.keep(conn)) continue;
        this.idle.splice(i, 1);
        return conn;
      }
    }
    while (this.idle.length > 0) {
      const conn = this.idle.pop()!;
      if (conn.isClosed) continue; // already counted out by forgetIdle
      if (this.opts.keep(conn)) return conn;
      conn.close();
      this.total--;
    }
    return null;
  }

  private openFor(origin: ClientOrigin | null, done: LeaseCallback): void {
    this.total++;
    this.opts.connect(origin).then(
      (conn) => {
        this.welcome ??= conn.loginParams;
        if (conn.isClosed) {
          // Gone right after its login (a server shutting down): this request tries again.
          this.total--;
          return this.request(origin, null, done);
        }
        this.forgetWhenClosedIdle(conn);
        done(null, conn);
      },
      (err: unknown) => {
        this.total--;
        // (Its session, if still there, still holds the pool: this removes it only when none does.)
        this.settle();
        done(err instanceof Error ? err : new Error(String(err)), null);
      },
    )
      // `done` handles its own failures; one that escapes is a bug, logged, not a crash.
      .catch((err: unknown) => this.opts.logger.error({ err, pool: this.name }, 'lease callback failed'));
  }

  /**
   * Made here, not in openFor: a closure there would share openFor's scope and keep `done`,
   * and with it the session that asked first, alive as long as the connection lives.
   */
  private forgetWhenClosedIdle(conn: ServerConnection): void {
    conn.whenClosedIdle(() => this.forgetIdle(conn));
  }

  /**
   * A clean connection goes to the longest waiter, else back to the idle list. With
   * affinity, when the longest waiter does not hold the connection's settings and has been
   * passed over for less than affinityMs, a waiter that does goes first, and failing one
   * the connection is held (see `held`).
   */
  private handOver(conn: ServerConnection): void {
    if (conn.isClosed || this.total > this.opts.size || !this.opts.keep(conn)) return this.drop(conn);
    const head = this.waiters[0];
    if (head === undefined) {
      this.idle.push(conn);
      return this.ensureSweeper();
    }
    // A connection holding no settings (fresh, or DISCARDed after a sticky client) is worth
    // no wait: whoever gets it pays the same switch.
    const now = this.opts.affinityMs > 0 && conn.appliedKey !== '' && !wants(head, conn) ? Date.now() : 0;
    if (now !== 0 && this.mayPassOver(head, now)) {
      this.startClocks(now);
      const scan = Math.min(this.waiters.length, AFFINITY_SCAN);
      for (let i = 1; i < scan; i++) {
        const w = this.waiters[i]!;
        if (!wants(w, conn)) continue;
        this.waiters.splice(i, 1);
        return w.done(null, conn);
      }
      this.held.push(conn);
      return this.armHoldTimer(head.passedOver + this.opts.affinityMs);
    }
    this.waiters.shift();
    head.done(null, conn);
    if (this.held.length > 0) this.settleHeld(Date.now());
  }

  /**
   * Ends holds that no longer have a reason: with nobody waiting a held connection is just
   * idle; once the longest waiter has been passed over for affinityMs it gets one (the
   * oldest held).
   */
  private settleHeld(now: number): void {
    while (this.held.length > 0) {
      const head = this.waiters[0];
      if (head === undefined) {
        for (const conn of this.held.splice(0)) if (!conn.isClosed) this.idle.push(conn);
        this.ensureSweeper();
        break;
      }
      if (this.mayPassOver(head, now)) {
        this.startClocks(now);
        return this.armHoldTimer(head.passedOver + this.opts.affinityMs);
      }
      const conn = this.takeAnyHeld();
      if (conn === null) break;
      this.waiters.shift();
      head.done(null, conn);
    }
    this.armHoldTimer(Infinity);
  }

  /**
   * May the longest waiter be passed over (again)? Its clock has not started or has time
   * left, and it is not so close to its acquire timeout that a hold would make it time out.
   */
  private mayPassOver(head: Waiter, now: number): boolean {
    if (this.opts.affinityMs <= 0) return false; // a reload may have turned affinity off
    if (head.deadline - now <= this.opts.affinityMs) return false;
    return head.passedOver === 0 || now - head.passedOver < this.opts.affinityMs;
  }

  /** A pass-over delays everyone waiting: starts the clocks not yet started (from the tail). */
  private startClocks(now: number): void {
    for (let i = this.waiters.length - 1; i >= 0 && this.waiters[i]!.passedOver === 0; i--) this.waiters[i]!.passedOver = now;
  }

  private armHoldTimer(due: number): void {
    if (due === this.holdTimerDue) return;
    if (this.holdTimer !== null) clearTimeout(this.holdTimer);
    this.holdTimer = null;
    this.holdTimerDue = due;
    if (due === Infinity) return;
    this.holdTimer = setTimeout(() => {
      this.holdTimer = null;
      this.holdTimerDue = Infinity;
      this.settleHeld(Date.now());
    }, Math.max(0, due - Date.now()));
  }

  private drop(conn: ServerConnection): void {
    // Off the lists first: closing an idle connection calls forgetIdle, which must not count it again.
    this.unlist(conn);
    conn.close();
    this.total--;
    // A slot opened: a waiter may now get a fresh connection.
    const waiter = this.waiters.shift();
    if (waiter) this.openFor(waiter.origin, waiter.done);
    else this.settle();
  }

  /**
   * (Re)arms the one wait timer for `due` (Infinity: none). Waiters mostly leave by being
   * served, so the timer may fire with nobody late; it then re-arms for the earliest
   * deadline left. One timer instead of a setTimeout/clearTimeout pair per wait.
   */
  private armWaitTimer(due: number): void {
    if (this.waitTimer !== null) clearTimeout(this.waitTimer);
    this.waitTimer = null;
    this.waitTimerDue = due;
    if (due === Infinity) return;
    this.waitTimer = setTimeout(() => this.expireWaiters(), Math.max(0, due - Date.now()));
  }

  private expireWaiters(): void {
    this.waitTimer = null;
    const now = Date.now();
    let next = Infinity;
    const late: Waiter[] = [];
    // In place: waiters keep their order (FIFO); reload may have changed the timeout, so
    // deadlines are not necessarily in order.
    let kept = 0;
    for (const w of this.waiters) {
      if (w.deadline <= now) late.push(w);
      else {
        this.waiters[kept++] = w;
        next = Math.min(next, w.deadline);
      }
    }
    this.waiters.length = kept;
    this.armWaitTimer(next);
    if (late.length === 0) return;
    // A late waiter takes a held connection rather than time out next to it.
    const timedOut: Waiter[] = [];
    for (const w of late) {
      const conn = this.takeAnyHeld();
      if (conn) w.done(null, conn);
      else timedOut.push(w);
    }
    this.settleHeld(Date.now());
    const message = `no server connection available within ${this.opts.acquireTimeoutMs} ms (pool ${this.name}, size ${this.opts.size})`;
    for (const w of timedOut) w.done(new PoolTimeoutError(message), null);
    this.settle();
  }

  /** The oldest usable held connection, or null. */
  private takeAnyHeld(): ServerConnection | null {
    while (this.held.length > 0) {
      const conn = this.held.shift()!;
      if (conn.isClosed) continue; // counted out by forgetIdle
      if (this.opts.keep(conn)) return conn;
      this.drop(conn);
    }
    return null;
  }

  private forgetIdle(conn: ServerConnection): void {
    if (!this.unlist(conn)) return;
    this.total--;
    this.refill();
    this.settle();
  }

  /** Takes `conn` off the idle or held list; false when it was on neither. */
  private unlist(conn: ServerConnection): boolean {
    for (const list of [this.idle, this.held]) {
      const i = list.indexOf(conn);
      if (i < 0) continue;
      list.splice(i, 1);
      return true;
    }
    return false;
  }

  /** Slots freed while clients wait (possible only when connections were held): open new ones. */
  private refill(): void {
    while (this.waiters.length > 0 && this.total < this.opts.size && !this.closed) {
      const waiter = this.waiters.shift()!;
      this.openFor(waiter.origin, waiter.done);
    }
  }

  /**
   * Tells the registry when nothing holds the pool any more, called wherever a connection,
   * a waiter or a session goes. Every connection is counted in `total` from the moment it is
   * asked for (openFor) until dropped, and every request that waits is in `waiters`, so no
   * lease is under way in an empty pool; with no session holding it, nobody can start one.
   */
  private settle(): void {
    if (this.users === 0 && this.total === 0 && this.waiters.length === 0 && !this.closed) this.opts.onEmpty?.(this);
  }

  private ensureSweeper(): void {
    if (this.sweeper) return;
    const every = Math.max(250, Math.min(this.opts.idleTimeoutMs, 10_000));
    this.sweeper = setInterval(() => this.sweep(), every);
    this.sweeper.unref();
  }

  private sweep(): void {
    const cutoff = Date.now() - this.opts.idleTimeoutMs;
    const closed = this.closeIdle((conn) => conn.idleSince < cutoff);
    if (closed > 0) this.opts.logger.debug({ pool: this.name, closed }, 'closed idle server connections');
    if (this.idle.length === 0 && this.sweeper) {
      clearInterval(this.sweeper);
      this.sweeper = null;
    }
  }
}

function wants(waiter: Waiter, conn: ServerConnection): boolean {
  return waiter.prefer !== null && waiter.prefer(conn);
}
