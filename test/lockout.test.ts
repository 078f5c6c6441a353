// Tests for the authentication-failure lockout (src/auth/lockout.ts), limits.auth_failures.
// A fake millisecond clock drives every case; no timers, no network.

import t from 'tap';
import {
  LockoutTracker,
  lockoutMessage,
  normaliseAddress,
  type LockoutPolicy,
  type LockoutVerdict,
} from '../src/auth/lockout.js';

const POLICY: LockoutPolicy = { max: 5, window_s: 60, lockout_s: 300 };

function setup(policy: LockoutPolicy = POLICY, maxEntries?: number) {
  let ms = 1_000_000;
  const clock = {
    advance(s: number) {
      ms += s * 1000;
    },
  };
  const tracker = new LockoutTracker(policy, { now: () => ms, ...(maxEntries === undefined ? {} : { maxEntries }) });
  return { tracker, clock };
}

const A = '192.0.2.10';
const B = '198.51.100.7';
const C = '203.0.113.99';

function failN(tr: LockoutTracker, n: number, address: string, user: string): LockoutVerdict[] {
  const out: LockoutVerdict[] = [];
  for (let i = 0; i < n; i++) out.push(tr.recordFailure(address, user));
  return out;
}

t.test('locks an address after max failures within the window', async (t) => {
  const { tracker } = setup();
  const verdicts = failN(tracker, 5, A, 'alice');
  t.same(verdicts.slice(0, 4).map((v) => v.locked), [false, false, false, false], 'first max-1 failures do not lock');
  t.match(verdicts[4], { locked: true }, 'the max-th failure trips the lock');
  const v = tracker.check(A, 'bob');
  t.match(v, { locked: true, by: 'address', retryAfterS: 300 }, 'another user from the same address is refused');
  t.equal(lockoutMessage(v), 'too many failed authentication attempts from this address; try again in 300 s');
});

t.test('table: window and lockout expiry', async (t) => {
  const cases: Array<{ name: string; steps: Array<number | 'fail'>; checkAfter: number; locked: boolean }> = [
    // Numbers advance the clock by that many seconds.
    { name: '5 failures in 4 s lock', steps: ['fail', 1, 'fail', 1, 'fail', 1, 'fail', 1, 'fail'], checkAfter: 0, locked: true },
    { name: '5 failures within 59 s lock', steps: ['fail', 59, 'fail', 'fail', 'fail', 'fail'], checkAfter: 0, locked: true },
    { name: 'failures spread 15 s apart (only 4 per 60 s) never lock', steps: Array.from({ length: 20 }, () => ['fail' as const, 15]).flat(), checkAfter: 0, locked: false },
    { name: 'oldest failure leaves the window at exactly 60 s', steps: ['fail', 60, 'fail', 'fail', 'fail', 'fail'], checkAfter: 0, locked: false },
    { name: 'still locked 299 s later', steps: ['fail', 'fail', 'fail', 'fail', 'fail'], checkAfter: 299, locked: true },
    { name: 'lock expires after lockout_s', steps: ['fail', 'fail', 'fail', 'fail', 'fail'], checkAfter: 300, locked: false },
  ];
  for (const c of cases) {
    const { tracker, clock } = setup();
    for (const s of c.steps) {
      if (s === 'fail') tracker.recordFailure(A, 'alice');
      else clock.advance(s);
    }
    clock.advance(c.checkAfter);
    t.equal(tracker.check(A, 'alice').locked, c.locked, c.name);
  }
});

t.test('after a lock expires the counter starts afresh', async (t) => {
  const { tracker, clock } = setup();
  failN(tracker, 5, A, 'alice');
  clock.advance(300);
  t.same(tracker.check(A, 'alice'), { locked: false });
  t.same(failN(tracker, 4, A, 'alice').map((v) => v.locked), [false, false, false, false], 'four more failures do not re-lock');
  t.match(tracker.recordFailure(A, 'alice'), { locked: true, retryAfterS: 300 }, 'the fifth re-locks');
});

t.test('retryAfterS counts down and rounds up', async (t) => {
  const { tracker, clock } = setup();
  failN(tracker, 5, A, 'alice');
  clock.advance(12.5);
  t.match(tracker.check(A, 'alice'), { locked: true, retryAfterS: 288 });
  clock.advance(287.4); // 0.1 s left
  t.match(tracker.check(A, 'alice'), { locked: true, retryAfterS: 1 });
});

t.test('attempts while locked are not counted and do not extend the lock', async (t) => {
  const { tracker, clock } = setup();
  failN(tracker, 5, A, 'alice');
  clock.advance(100);
  t.match(tracker.recordFailure(A, 'alice'), { locked: true, retryAfterS: 200 });
  t.match(tracker.recordFailure(C, 'carol'), { locked: false }, 'another address and user are unaffected');
  clock.advance(200);
  t.same(tracker.check(A, 'alice'), { locked: false }, 'lock ended at the original time');
});

t.test('user lock applies across addresses', async (t) => {
  const { tracker } = setup();
  const addrs = [A, B, C, '10.0.0.1', '10.0.0.2'];
  const verdicts = addrs.map((a) => tracker.recordFailure(a, 'alice'));
  t.same(verdicts.slice(0, 4).map((v) => v.locked), [false, false, false, false]);
  t.match(verdicts[4], { locked: true, by: 'user', retryAfterS: 300 });
  const v = tracker.check('172.16.0.1', 'alice');
  t.match(v, { locked: true, by: 'user' }, 'a fresh address is refused for that user');
  t.equal(lockoutMessage(v), 'too many failed authentication attempts for this user; try again in 300 s');
  t.same(tracker.check('172.16.0.1', 'bob'), { locked: false }, 'other users from that address are fine');
  t.same(tracker.check(A, 'bob'), { locked: false }, 'no address got locked (one failure each)');
});

t.test('address lock does not affect other addresses', async (t) => {
  const { tracker } = setup();
  const users = ['u1', 'u2', 'u3', 'u4', 'u5'];
  const verdicts = users.map((u) => tracker.recordFailure(A, u));
  t.match(verdicts[4], { locked: true, by: 'address' });
  for (const u of users) t.same(tracker.check(B, u), { locked: false }, `${u} from another address is fine`);
  t.match(tracker.check(A, 'zed'), { locked: true, by: 'address' });
});

t.test('both locked: the verdict names the longer lock', async (t) => {
  const { tracker, clock } = setup();
  failN(tracker, 4, B, 'alice'); // user alice at 4
  clock.advance(10);
  failN(tracker, 4, A, 'mallory'); // address A at 4
  tracker.recordFailure(C, 'alice'); // locks user alice (ends at +300 from now)
  clock.advance(10);
  tracker.recordFailure(A, 'someone'); // locks address A, ends 10 s after alice's lock
  t.match(tracker.check(A, 'alice'), { locked: true, by: 'address', retryAfterS: 300 });
  clock.advance(295);
  t.match(tracker.check(A, 'alice'), { locked: true, by: 'address', retryAfterS: 5 });
  t.same(tracker.check(B, 'alice'), { locked: false }, 'alice lock over');
});

t.test('success clears the address counter but not the user counter', async (t) => {
  const { tracker } = setup();
  failN(tracker, 4, A, 'alice');
  tracker.recordSuccess(A, 'alice');
  // Address A starts again from zero: four failures for other users do not lock it.
  t.same(
    ['u1', 'u2', 'u3', 'u4'].map((u) => tracker.recordFailure(A, u).locked),
    [false, false, false, false],
    'address counter was cleared',
  );
  // alice's own counter still holds 4: one more failure from anywhere locks her.
  t.match(tracker.recordFailure(B, 'alice'), { locked: true, by: 'user' }, 'user counter was not cleared');
});

t.test('success from another address does not reset an attacked user', async (t) => {
  const { tracker } = setup();
  failN(tracker, 4, A, 'alice'); // attacker at A
  tracker.recordSuccess(B, 'alice'); // alice logs in from B (or an attacker knowing some password)
  tracker.recordSuccess(A, 'bob'); // attacker at A logs in as bob, clearing A's address counter
  t.match(tracker.recordFailure(A, 'alice'), { locked: true, by: 'user' }, 'the fifth guess at alice still locks her');
});

t.test('success never lifts an active lock', async (t) => {
  const { tracker } = setup();
  failN(tracker, 5, A, 'alice');
  tracker.recordSuccess(A, 'alice');
  t.match(tracker.check(A, 'bob'), { locked: true, by: 'address' });
});

t.test('IPv6 addresses count per /64', async (t) => {
  const { tracker } = setup();
  const within = ['2001:db8:1:2::1', '2001:db8:1:2::dead:beef', '2001:DB8:1:2:ffff:ffff:ffff:ffff', '2001:0db8:0001:0002:0:0:0:5', '2001:db8:1:2:a:b:c:d%eth0'];
  const verdicts = within.map((a, i) => tracker.recordFailure(a, `user${i}`));
  t.same(verdicts.slice(0, 4).map((v) => v.locked), [false, false, false, false]);
  t.match(verdicts[4], { locked: true, by: 'address' }, 'five addresses in one /64 lock it');
  t.match(tracker.check('2001:db8:1:2:1234::9', 'x'), { locked: true, by: 'address' }, 'any address in the /64 is refused');
  t.same(tracker.check('2001:db8:1:3::1', 'x'), { locked: false }, 'the neighbouring /64 is fine');
  t.equal(tracker.size().addresses, 1);
});

t.test('normaliseAddress', async (t) => {
  const cases: Array<[string, string]> = [
    ['192.0.2.1', '192.0.2.1'],
    ['::ffff:192.0.2.1', '192.0.2.1'],
    ['::FFFF:192.0.2.1', '192.0.2.1'],
    ['::ffff:c000:201', '192.0.2.1'],
    ['2001:db8::1', '2001:db8:0:0::/64'],
    ['2001:db8:aa:bb:cc:dd:ee:ff', '2001:db8:aa:bb::/64'],
    ['::1', '0:0:0:0::/64'],
    ['::', '0:0:0:0::/64'],
    ['fe80::1%eth0', 'fe80:0:0:0::/64'],
    ['64:ff9b::192.0.2.1', '64:ff9b:0:0::/64'],
    ['2001:db8:1:2:3:4:192.0.2.1', '2001:db8:1:2::/64'],
    ['/var/run/pgbastion/.s.PGSQL.6432', '/var/run/pgbastion/.s.PGSQL.6432'],
    ['', ''],
  ];
  for (const [input, want] of cases) t.equal(normaliseAddress(input), want, JSON.stringify(input));
});

t.test('IPv4-mapped and plain IPv4 share one counter', async (t) => {
  const { tracker } = setup();
  failN(tracker, 3, '::ffff:192.0.2.1', 'x');
  failN(tracker, 2, '192.0.2.1', 'y');
  t.match(tracker.check('::ffff:192.0.2.1', 'z'), { locked: true, by: 'address' });
  t.same(tracker.check('::ffff:192.0.2.2', 'z'), { locked: false });
});

t.test('memory stays bounded under address rotation; locked entries survive', async (t) => {
  const maxEntries = 1000;
  const { tracker, clock } = setup(POLICY, maxEntries);
  failN(tracker, 5, A, 'victim-user'); // A is locked; victim-user has 5 failures -> also locked
  t.match(tracker.check(A, 'x'), { locked: true, by: 'address' });
  let peak = 0;
  for (let i = 0; i < 120_000; i++) {
    // Rotating IPv4 sources, each guessing a fresh user name once.
    const addr = `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
    tracker.recordFailure(addr, `u${i}`);
    if (i % 1000 === 0) {
      const s = tracker.size();
      peak = Math.max(peak, s.addresses, s.users);
      clock.advance(1); // still well inside the lockout
    }
  }
  const s = tracker.size();
  peak = Math.max(peak, s.addresses, s.users);
  t.ok(peak <= maxEntries, `peak table size ${peak} <= ${maxEntries}`);
  t.match(tracker.check(A, 'x'), { locked: true, by: 'address' }, 'the locked address survived the churn');
  t.match(tracker.check(B, 'victim-user'), { locked: true, by: 'user' }, 'the locked user survived the churn');
});

t.test('IPv6 rotation across many /64s is bounded too', async (t) => {
  const { tracker } = setup(POLICY, 500);
  for (let i = 0; i < 20_000; i++) tracker.recordFailure(`2001:db8:${(i >> 16).toString(16)}:${(i & 0xffff).toString(16)}::1`, 'u');
  t.ok(tracker.size().addresses <= 500);
});

t.test('a table full of locks evicts the lock that ends soonest', async (t) => {
  const { tracker, clock } = setup({ max: 1, window_s: 60, lockout_s: 300 }, 3);
  tracker.recordFailure('10.0.0.1', 'a'); // ends at +300
  clock.advance(10);
  tracker.recordFailure('10.0.0.2', 'b'); // ends at +310
  clock.advance(10);
  tracker.recordFailure('10.0.0.3', 'c'); // ends at +320
  clock.advance(10);
  tracker.recordFailure('10.0.0.4', 'd'); // table over its bound: 10.0.0.1 goes
  t.same(tracker.size(), { addresses: 3, users: 3 });
  t.same(tracker.check('10.0.0.1', 'zz'), { locked: false }, 'soonest-ending lock evicted');
  for (const a of ['10.0.0.2', '10.0.0.3', '10.0.0.4']) t.match(tracker.check(a, 'zz'), { locked: true }, `${a} still locked`);
});

t.test('unlocked counters are evicted before locks, least recently failed first', async (t) => {
  const { tracker, clock } = setup(POLICY, 3);
  failN(tracker, 5, A, 'locked-user'); // locks A and locked-user
  tracker.recordFailure(B, 'u1');
  clock.advance(1);
  tracker.recordFailure(C, 'u2');
  clock.advance(1);
  tracker.recordFailure('10.0.0.9', 'u3'); // over the bound: B (oldest unlocked) goes, A stays
  t.equal(tracker.size().addresses, 3);
  t.match(tracker.check(A, 'x'), { locked: true, by: 'address' });
  // C still has its one failure: four more lock it; B would need five.
  t.match(failN(tracker, 4, C, 'v')[3], { locked: true, by: 'address' }, 'C kept its count');
});

t.test('expired counters and locks are dropped', async (t) => {
  const { tracker, clock } = setup();
  failN(tracker, 5, A, 'alice');
  tracker.recordFailure(B, 'bob');
  t.same(tracker.size(), { addresses: 2, users: 2 });
  clock.advance(60);
  t.same(tracker.size(), { addresses: 1, users: 1 }, 'counters out of the window are gone, locks stay');
  clock.advance(240);
  t.same(tracker.size(), { addresses: 0, users: 0 }, 'expired locks are gone');
});

t.test('setPolicy keeps counters and locks', async (t) => {
  const { tracker, clock } = setup();
  failN(tracker, 5, A, 'alice'); // locked under the old policy (ends +300)
  failN(tracker, 3, B, 'bob');
  tracker.setPolicy({ max: 4, window_s: 120, lockout_s: 30 });
  t.match(tracker.check(A, 'x'), { locked: true, retryAfterS: 300 }, 'existing lock keeps its end time');
  t.match(tracker.recordFailure(B, 'bob'), { locked: true, retryAfterS: 30 }, 'B had 3, the 4th hits the new max');
  clock.advance(90);
  failN(tracker, 3, C, 'carol');
  clock.advance(90); // 90 s later: inside the new 120 s window
  // Lower max below the current count: the next failure locks.
  tracker.setPolicy({ max: 2, window_s: 120, lockout_s: 30 });
  t.match(tracker.recordFailure(C, 'carol2'), { locked: true, by: 'address' });
  t.throws(() => tracker.setPolicy({ max: 0, window_s: 60, lockout_s: 300 }), RangeError);
  t.throws(() => tracker.setPolicy({ max: 5, window_s: 0, lockout_s: 300 }), RangeError);
  t.throws(() => tracker.setPolicy({ max: 5, window_s: 60, lockout_s: Number.NaN }), RangeError);
});

t.test('lockoutMessage for an unlocked verdict is empty', async (t) => {
  t.equal(lockoutMessage({ locked: false }), '');
});

t.test('default clock works', async (t) => {
  const tr = new LockoutTracker({ max: 2, window_s: 60, lockout_s: 60 });
  tr.recordFailure(A, 'u');
  t.match(tr.recordFailure(A, 'u'), { locked: true, by: 'address', retryAfterS: 60 });
});

t.test('workers: the observer hears counted failures and successes; imposed locks hold and expire', async (t) => {
  const { tracker, clock } = setup({ max: 2, window_s: 60, lockout_s: 30 });
  const heard: string[] = [];
  tracker.observer = { failed: (a, u) => heard.push(`fail ${a} ${u}`), succeeded: (a, u) => heard.push(`ok ${a} ${u}`) };
  tracker.recordFailure(A, 'alice');
  tracker.recordSuccess(A, 'alice');
  failN(tracker, 2, B, 'bob'); // locks B and bob
  tracker.recordFailure(B, 'bob'); // refused while locked: not counted, not reported
  t.same(heard, [`fail ${A} alice`, `ok ${A} alice`, `fail ${B} bob`, `fail ${B} bob`]);
  t.same(tracker.remaining(B, 'bob'), { addressMs: 30_000, userMs: 30_000 });
  t.same(tracker.remaining(C, 'carol'), { addressMs: 0, userMs: 0 });

  // A lock decided by another process, in milliseconds from now.
  tracker.impose(C, 'carol', { addressMs: 10_000, userMs: 0 });
  t.match(tracker.check(C, 'someone'), { locked: true, by: 'address', retryAfterS: 10 });
  t.match(tracker.check(A, 'carol'), { locked: false }, 'the user was not locked');
  tracker.impose(C, 'carol', { addressMs: 2_000, userMs: 0 });
  t.match(tracker.check(C, 'x'), { retryAfterS: 10 }, 'a shorter imposed lock does not cut a longer one');
  clock.advance(11);
  t.match(tracker.check(C, 'x'), { locked: false }, 'and it expires');
});
