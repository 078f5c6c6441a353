// Server connections for one (database, server role): bounded size, FIFO waiters with a
// timeout, idle reuse after a reset, and idle expiry. A connection in doubt is closed.

import type { Logger } from 'pino';
import type { ServerConnection } from '../upstream/server-connection.js';
import { UpstreamError } from '../upstream/errors.js';
import type { ClientOrigin } from '../upstream/dial.js';

export interface PoolOptions {
  size: number;
  acquireTimeoutMs: number;
  idleTimeoutMs: number;
  /** Opens and logs in a new server connection on behalf of `origin` (the PROXY header's client). */
  connect: (origin: ClientOrigin | null) => Promise<ServerConnection>;
  /** May this connection serve another client? False once its upstream or transport left the configuration. */
  keep: (conn: ServerConnection) => boolean;
  logger: Logger;
}

/** The pool could not hand out a connection in time. */
export class PoolTimeoutError extends Error {}

/** How a lease ends: with a connection, or with why there is none. */
export type LeaseCallback = (err: Error | null, conn: ServerConnection | null) => void;

interface Waiter {
  done: LeaseCallback;
  /** Date.now() after which it gets PoolTimeoutError. */
  deadline: number;
  origin: ClientOrigin | null;
}

const MAX_ACCEPTED = 10_000;
const settingKey = (name: string, value: string): string => `${name.toLowerCase()}\0${value}`;

export class Pool {
  /** Most recently used last: reuse the warmest connection first. */
  private readonly idle: ServerConnection[] = [];
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

  constructor(
    readonly name: string,
    private opts: PoolOptions,
  ) {}

  get stats(): { total: number; idle: number; waiting: number; active: number } {
    return { total: this.total, idle: this.idle.length, waiting: this.waiters.length, active: this.total - this.idle.length };
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
  setLimits(size: number, acquireTimeoutMs: number, idleTimeoutMs: number): void {
    this.opts = { ...this.opts, size, acquireTimeoutMs, idleTimeoutMs };
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
  request(origin: ClientOrigin | null, prefer: ((conn: ServerConnection) => boolean) | null, done: LeaseCallback): void {
    if (this.closed) return done(new UpstreamError('unreachable', 'pool is closed'), null);
    const conn = this.takeIdle(prefer);
    if (conn) return done(null, conn);
    if (this.total < this.opts.size) return this.openFor(origin, done);
    const deadline = Date.now() + this.opts.acquireTimeoutMs;
    this.waiters.push({ done, deadline, origin });
    if (deadline < this.waitTimerDue) this.armWaitTimer(deadline);
  }

  /** request() as a promise, for callers off the per-transaction path. */
  acquire(origin: ClientOrigin | null = null, prefer: ((conn: ServerConnection) => boolean) | null = null): Promise<ServerConnection> {
    return new Promise((resolve, reject) => {
      this.request(origin, prefer, (err, conn) => (err ? reject(err) : resolve(conn!)));
    });
  }

  /**
   * Returns a connection. `reset` is the housekeeping statement that makes it clean for the
   * next client (null: already clean). A connection that is not reusable is closed.
   */
  release(conn: ServerConnection, reusable: boolean, reset: string | null): void {
    conn.detach();
    if (!reusable || conn.isClosed || this.closed) return this.drop(conn);
    const pending = conn.cancelling;
    if (pending) {
      // A cancel aimed at the last client's statement could still interrupt the next one.
      conn.cancelling = null;
      void pending.then(() => this.release(conn, true, reset));
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
    for (const w of this.waiters.splice(0)) w.done(new UpstreamError('unreachable', 'pool is closing'), null);
    for (const conn of this.idle.splice(0)) conn.close();
    if (this.sweeper) clearInterval(this.sweeper);
  }

  /**
   * Closes the idle connections `doomed` picks (idle too long, upstream unhealthy or no
   * longer configured); returns how many. Taken off the list first, so forgetIdle skips them.
   */
  closeIdle(doomed: (conn: ServerConnection) => boolean): number {
    const gone = this.idle.filter(doomed);
    for (const conn of gone) {
      this.idle.splice(this.idle.indexOf(conn), 1);
      conn.close();
      this.total--;
    }
    return gone.length;
  }

  private takeIdle(prefer: ((conn: ServerConnection) => boolean) | null): ServerConnection | null {
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
        conn.whenClosedIdle(() => this.forgetIdle(conn));
        done(null, conn);
      },
      (err: unknown) => {
        this.total--;
        done(err instanceof Error ? err : new Error(String(err)), null);
      },
    )
      // `done` handles its own failures; one that escapes is a bug, logged, not a crash.
      .catch((err: unknown) => this.opts.logger.error({ err, pool: this.name }, 'lease callback failed'));
  }

  /** A clean connection goes to the longest waiter, else back to the idle list. */
  private handOver(conn: ServerConnection): void {
    if (conn.isClosed || this.total > this.opts.size || !this.opts.keep(conn)) return this.drop(conn);
    const waiter = this.waiters.shift();
    if (waiter) return waiter.done(null, conn);
    this.idle.push(conn);
    this.ensureSweeper();
  }

  private drop(conn: ServerConnection): void {
    conn.close();
    this.total--;
    const i = this.idle.indexOf(conn);
    if (i >= 0) this.idle.splice(i, 1);
    // A slot opened: a waiter may now get a fresh connection.
    const waiter = this.waiters.shift();
    if (waiter) this.openFor(waiter.origin, waiter.done);
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
    const message = `no server connection available within ${this.opts.acquireTimeoutMs} ms (pool ${this.name}, size ${this.opts.size})`;
    for (const w of late) w.done(new PoolTimeoutError(message), null);
  }

  private forgetIdle(conn: ServerConnection): void {
    const i = this.idle.indexOf(conn);
    if (i < 0) return;
    this.idle.splice(i, 1);
    this.total--;
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
