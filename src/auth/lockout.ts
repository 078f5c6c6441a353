// Authentication-failure lockout (limits.auth_failures): counts failures per source address
// (IPv6 per /64) and per user name in a sliding window, and refuses further attempts while locked.

/**
 * Semantics, in one place:
 *
 * - A failure is counted against the client's normalised address and against the user name.
 *   When either key reaches `max` failures within the last `window_s` seconds (sliding
 *   window, exact: each key keeps at most `max` timestamps), that key is locked for
 *   `lockout_s` seconds. The failure that reaches `max` is the one that trips the lock; the
 *   next attempt is refused.
 * - The caller must call `check()` before evaluating any credential and, when it says locked,
 *   refuse without evaluating the password: a locked key gives the same answer whether the
 *   password would have been right or wrong, so the lockout is not a password oracle.
 * - Attempts refused while locked are not counted and do not extend the lockout
 *   (`recordFailure` on a locked key just reports the current lock).
 * - A successful login clears the counter of the address it came from, and nothing else.
 *   The user's counter is deliberately NOT cleared by a success: otherwise an attacker who
 *   knows one password (or a colleague logging in) could keep resetting the counter of a
 *   user being guessed at from other addresses. The cost is that a legitimate user who
 *   mistyped a few times may still be near the per-user limit until those failures age out of
 *   the window. A success never lifts an existing lock (it cannot happen through the normal
 *   flow, since a locked attempt is refused before authentication).
 * - A lock on an address refuses every user from that address (the /64 for IPv6); a lock on a
 *   user refuses that user from every address. Other addresses and users are unaffected.
 * - Memory is bounded: each table (addresses, users) holds at most `maxEntries` keys.
 *   When full, entries are evicted in this order: expired locks, then unlocked counters
 *   least recently failed first, and only when every entry is an active lock, the lock that
 *   ends soonest. An attacker rotating addresses or user names therefore churns unlocked
 *   counters (which can reset a victim's partial count: unavoidable with bounded memory) but
 *   cannot lift an active lock unless the table is entirely made of active locks.
 * - The clock is injectable and in milliseconds; the default is monotonic
 *   (`performance.now()`), so wall-clock jumps neither lift nor extend locks.
 * - `setPolicy` (reload) keeps all counters and active locks; locks keep their original end
 *   time, the new window/max apply from the next failure on.
 */

import { isIP } from 'node:net';

export interface LockoutPolicy {
  max: number;
  window_s: number;
  lockout_s: number;
}

export type LockoutVerdict =
  | { locked: false }
  | { locked: true; by: 'address' | 'user'; retryAfterS: number };

export interface LockoutTrackerOptions {
  /** Milliseconds from any fixed origin; default performance.now() (monotonic). */
  now?: () => number;
  /** Largest number of keys per table (addresses, users); default 100 000. */
  maxEntries?: number;
}

/**
 * Told of every counted failure and every success, so that several processes (workers: N)
 * can share one count: the primary counts them all and imposes the locks it decides.
 */
export interface LockoutObserver {
  failed(address: string, user: string): void;
  succeeded(address: string, user: string): void;
}

/** Locks decided elsewhere, as milliseconds from now (clocks of processes differ). */
export interface ImposedLock {
  addressMs: number;
  userMs: number;
}

const DEFAULT_MAX_ENTRIES = 100_000;
const NOT_LOCKED: LockoutVerdict = Object.freeze({ locked: false }) as LockoutVerdict;

/** The FATAL message text for a refused attempt. */
export function lockoutMessage(v: LockoutVerdict): string {
  if (!v.locked) return '';
  const what = v.by === 'address' ? 'from this address' : 'for this user';
  return `too many failed authentication attempts ${what}; try again in ${v.retryAfterS} s`;
}

/**
 * The key a source address is counted under. IPv4 addresses are kept whole; IPv4-mapped IPv6
 * (`::ffff:a.b.c.d`, also in hex form) becomes the plain IPv4 address, so the same client
 * counts once whether it reached a dual-stack or an IPv4 listener. Any other IPv6 address is
 * reduced to its /64 network (`2001:db8:0:1::/64`), since one subscriber typically controls a
 * whole /64. Zone ids are dropped. Anything else (a Unix socket path, empty) is kept as is.
 */
export function normaliseAddress(address: string): string {
  const family = isIP(address);
  if (family === 4) return address;
  let a = address;
  const pct = a.indexOf('%');
  if (pct >= 0) a = a.slice(0, pct);
  if (family !== 6 && isIP(a) !== 6) return address;
  const hextets = expandIPv6(a.toLowerCase());
  if (hextets === null) return address;
  if (hextets.slice(0, 5).every((h) => h === 0) && hextets[5] === 0xffff) {
    const hi = hextets[6]!;
    const lo = hextets[7]!;
    return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
  }
  return `${hextets.slice(0, 4).map((h) => h.toString(16)).join(':')}::/64`;
}

/** Eight 16-bit groups of a syntactically valid IPv6 address (already checked by isIP). */
function expandIPv6(a: string): number[] | null {
  let text = a;
  const tail: number[] = [];
  const lastColon = text.lastIndexOf(':');
  const last = text.slice(lastColon + 1);
  if (last.includes('.')) {
    const o = last.split('.').map(Number);
    if (o.length !== 4 || o.some((n) => !Number.isInteger(n) || n < 0 || n > 255)) return null;
    tail.push((o[0]! << 8) | o[1]!, (o[2]! << 8) | o[3]!);
    text = text.slice(0, lastColon + 1) + '0'; // one placeholder group, replaced below
  }
  const parse = (s: string): number[] => (s === '' ? [] : s.split(':').map((h) => parseInt(h, 16)));
  const dbl = text.indexOf('::');
  let groups: number[];
  const want = tail.length > 0 ? 7 : 8; // the placeholder group stands for two
  if (dbl >= 0) {
    const head = parse(text.slice(0, dbl));
    const rest = parse(text.slice(dbl + 2));
    const fill = want - head.length - rest.length;
    if (fill < 0) return null;
    groups = [...head, ...new Array<number>(fill).fill(0), ...rest];
  } else {
    groups = parse(text);
  }
  if (groups.length !== want) return null;
  if (tail.length > 0) groups = [...groups.slice(0, 6), ...tail];
  if (groups.length !== 8 || groups.some((g) => !Number.isInteger(g) || g < 0 || g > 0xffff)) return null;
  return groups;
}

/** A binary min-heap of (until, key), with lazy deletion checked by the caller. */
class LockHeap {
  private readonly items: Array<{ until: number; key: string }> = [];

  get length(): number {
    return this.items.length;
  }

  peek(): { until: number; key: string } | undefined {
    return this.items[0];
  }

  push(until: number, key: string): void {
    const items = this.items;
    items.push({ until, key });
    let i = items.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (items[p]!.until <= items[i]!.until) break;
      [items[p], items[i]] = [items[i]!, items[p]!];
      i = p;
    }
  }

  pop(): { until: number; key: string } | undefined {
    const items = this.items;
    const top = items[0];
    const last = items.pop();
    if (items.length > 0 && last !== undefined) {
      items[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < items.length && items[l]!.until < items[m]!.until) m = l;
        if (r < items.length && items[r]!.until < items[m]!.until) m = r;
        if (m === i) break;
        [items[m], items[i]] = [items[i]!, items[m]!];
        i = m;
      }
    }
    return top;
  }
}

/** One table of keys (addresses or users): failure timestamps and active locks. */
class KeyTable {
  /** Unlocked keys with recent failures, least recently failed first (Map insertion order). */
  private readonly counting = new Map<string, number[]>();
  /** Locked keys and when their lock ends (ms). */
  private readonly locked = new Map<string, number>();
  /** Locks by end time; entries whose key no longer has that end time are stale. */
  private readonly heap = new LockHeap();

  constructor(private readonly maxEntries: number) {}

  get size(): number {
    return this.counting.size + this.locked.size;
  }

  /** When the key's lock ends, or 0 if it is not locked. */
  lockedUntil(key: string, now: number): number {
    const until = this.locked.get(key);
    if (until === undefined) return 0;
    if (until > now) return until;
    this.locked.delete(key);
    return 0;
  }

  /** Count a failure; returns the lock end time if the key is (now) locked, else 0. */
  fail(key: string, now: number, policy: LockoutPolicy): number {
    const already = this.lockedUntil(key, now);
    if (already > 0) return already;
    const windowStart = now - policy.window_s * 1000;
    const times = this.counting.get(key) ?? [];
    this.counting.delete(key); // re-inserted below: most recently failed goes last
    let drop = 0;
    while (drop < times.length && times[drop]! <= windowStart) drop++;
    if (drop > 0) times.splice(0, drop);
    times.push(now);
    if (times.length > policy.max) times.splice(0, times.length - policy.max);
    let result = 0;
    if (times.length >= policy.max) {
      const until = now + policy.lockout_s * 1000;
      this.locked.set(key, until);
      this.heap.push(until, key);
      result = until;
    } else {
      this.counting.set(key, times);
    }
    this.sweep(now, policy);
    this.enforceBound();
    return result;
  }

  /** Lock the key until `until` (or keep a longer lock it already has). */
  lock(key: string, until: number): void {
    if ((this.locked.get(key) ?? 0) >= until) return;
    this.counting.delete(key);
    this.locked.set(key, until);
    this.heap.push(until, key);
    this.enforceBound();
  }

  /** Forget the key's failure count (not its lock). */
  clear(key: string): void {
    this.counting.delete(key);
  }

  /** Drop expired locks and counters whose failures have all left the window. */
  sweep(now: number, policy: LockoutPolicy): void {
    for (let top = this.heap.peek(); top !== undefined && top.until <= now; top = this.heap.peek()) {
      this.heap.pop();
      if (this.locked.get(top.key) === top.until) this.locked.delete(top.key);
    }
    const windowStart = now - policy.window_s * 1000;
    for (const [key, times] of this.counting) {
      const newest = times[times.length - 1];
      if (newest !== undefined && newest > windowStart) break; // the rest failed more recently
      this.counting.delete(key);
    }
  }

  private enforceBound(): void {
    while (this.size > this.maxEntries) {
      const oldest = this.counting.keys().next();
      if (!oldest.done) {
        this.counting.delete(oldest.value);
        continue;
      }
      // Only active locks remain: evict the one that ends soonest.
      const top = this.heap.pop();
      if (top === undefined) break;
      if (this.locked.get(top.key) === top.until) this.locked.delete(top.key);
    }
  }
}

function validatePolicy(policy: LockoutPolicy): LockoutPolicy {
  const { max, window_s, lockout_s } = policy;
  if (!Number.isInteger(max) || max < 1) throw new RangeError(`auth_failures.max must be an integer >= 1 (got ${max})`);
  if (!Number.isFinite(window_s) || window_s <= 0) throw new RangeError(`auth_failures.window_s must be > 0 (got ${window_s})`);
  if (!Number.isFinite(lockout_s) || lockout_s <= 0) throw new RangeError(`auth_failures.lockout_s must be > 0 (got ${lockout_s})`);
  return { max, window_s, lockout_s };
}

export class LockoutTracker {
  private policy: LockoutPolicy;
  private readonly now: () => number;
  private readonly addresses: KeyTable;
  private readonly users: KeyTable;
  /** Set in a worker process: failures and successes are also reported to the primary. */
  observer: LockoutObserver | null = null;

  constructor(policy: LockoutPolicy, opts: LockoutTrackerOptions = {}) {
    this.policy = validatePolicy(policy);
    this.now = opts.now ?? (() => performance.now());
    const maxEntries = opts.maxEntries ?? DEFAULT_MAX_ENTRIES;
    if (!Number.isInteger(maxEntries) || maxEntries < 1) throw new RangeError(`maxEntries must be an integer >= 1 (got ${maxEntries})`);
    this.addresses = new KeyTable(maxEntries);
    this.users = new KeyTable(maxEntries);
  }

  /** Call before evaluating any credential; when locked, refuse without evaluating it. */
  check(address: string, user: string): LockoutVerdict {
    const now = this.now();
    return this.verdict(now, this.addresses.lockedUntil(normaliseAddress(address), now), this.users.lockedUntil(user, now));
  }

  /** Count a failed authentication; returns a locked verdict if the address or user is now locked. */
  recordFailure(address: string, user: string): LockoutVerdict {
    const now = this.now();
    const addrKey = normaliseAddress(address);
    const addrUntil = this.addresses.lockedUntil(addrKey, now);
    const userUntil = this.users.lockedUntil(user, now);
    if (addrUntil > 0 || userUntil > 0) return this.verdict(now, addrUntil, userUntil); // not counted while locked
    this.observer?.failed(address, user);
    return this.verdict(now, this.addresses.fail(addrKey, now, this.policy), this.users.fail(user, now, this.policy));
  }

  /** A successful login clears its address's counter; the user's counter is kept (see above). */
  recordSuccess(address: string, user: string): void {
    this.observer?.succeeded(address, user);
    this.addresses.clear(normaliseAddress(address));
  }

  /** How long the address and the user stay locked from now (ms, 0: not locked). */
  remaining(address: string, user: string): ImposedLock {
    const now = this.now();
    const left = (until: number): number => (until > 0 ? until - now : 0);
    return { addressMs: left(this.addresses.lockedUntil(normaliseAddress(address), now)), userMs: left(this.users.lockedUntil(user, now)) };
  }

  /** Applies locks another process decided (the primary, counting every worker's failures). */
  impose(address: string, user: string, lock: ImposedLock): void {
    const now = this.now();
    if (lock.addressMs > 0) this.addresses.lock(normaliseAddress(address), now + lock.addressMs);
    if (lock.userMs > 0) this.users.lock(user, now + lock.userMs);
  }

  /** Replace the policy (reload); counters and active locks are kept. */
  setPolicy(policy: LockoutPolicy): void {
    this.policy = validatePolicy(policy);
  }

  /** Number of keys held per table, after dropping expired ones. */
  size(): { addresses: number; users: number } {
    const now = this.now();
    this.addresses.sweep(now, this.policy);
    this.users.sweep(now, this.policy);
    return { addresses: this.addresses.size, users: this.users.size };
  }

  /** Locked by whichever key stays locked longer (its retry time is the honest one); ties name the address. */
  private verdict(now: number, addrUntil: number, userUntil: number): LockoutVerdict {
    if (addrUntil <= 0 && userUntil <= 0) return NOT_LOCKED;
    const byAddress = addrUntil >= userUntil;
    const until = byAddress ? addrUntil : userUntil;
    return { locked: true, by: byAddress ? 'address' : 'user', retryAfterS: Math.max(1, Math.ceil((until - now) / 1000)) };
  }
}
