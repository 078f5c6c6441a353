// The relay ledger as a table of message sequences: what is owed, whether a batch is open,
// and which tracked SETs a ReadyForQuery settles.

import t from 'tap';
import { RelayLedger } from '../src/session/relay-ledger.js';
import type { TrackedSet } from '../src/session/tracked-set.js';

const set = (name: string, value: string) => ({ name, value }) as TrackedSet;
const names = (sets: readonly TrackedSet[]) => sets.map((s) => `${s.name}=${s.value}`);

/** answered(), with what it returned and the SETs it settled. */
function answer(l: RelayLedger): { askedAt: number | undefined; settled: string[] } {
  const settled: TrackedSet[] = [];
  const askedAt = l.answered((set) => settled.push(set));
  return { askedAt, settled: names(settled) };
}

t.test('a simple Query owes one ReadyForQuery and settles its SET', async (t) => {
  const l = new RelayLedger();
  l.query(10, set('timezone', 'UTC'));
  t.same([l.owed, l.settled], [1, false]);
  const a = answer(l);
  t.equal(a.askedAt, 10);
  t.same(a.settled, ['timezone=UTC']);
  t.same([l.owed, l.settled], [0, true]);
});

t.test('an extended batch is open until its Sync; its SETs settle with that ReadyForQuery', async (t) => {
  const l = new RelayLedger();
  l.extended(false, set('application_name', 'a')); // Parse
  l.extended(false, undefined); // Bind
  l.extended(true, undefined); // Execute
  t.same([l.owed, l.unsynced, l.settled], [0, true, false], 'not settled without a Sync');
  t.equal(l.sync(20), true);
  t.same([l.owed, l.unsynced], [1, false]);
  t.same(answer(l).settled, ['application_name=a']);
  t.equal(l.settled, true);
});

t.test('an error means the SETs of that batch did not take', async (t) => {
  const l = new RelayLedger();
  l.query(1, set('timezone', 'Mars/Base'));
  l.query(2, set('timezone', 'UTC'));
  l.errored();
  t.same(answer(l).settled, [], 'the failed one settles nothing');
  t.same(answer(l).settled, ['timezone=UTC'], 'the next is unaffected');
});

t.test('COPY IN: Syncs behind its Execute are dropped, a Sync during it is not owed', async (t) => {
  const l = new RelayLedger();
  l.extended(false, undefined); // Parse COPY ... FROM STDIN
  l.extended(true, undefined); // Execute
  t.equal(l.sync(1), true);
  t.equal(l.sync(2), true);
  t.equal(l.owed, 2);
  t.equal(l.copyInStarted(), 2, 'both Syncs sent behind the Execute are ignored by the server');
  t.same([l.owed, l.unsynced], [0, true], 'the COPY still needs its own Sync');
  t.equal(l.sync(3), false, 'a Sync during COPY IN gets no ReadyForQuery');
  t.equal(l.owed, 0);
  l.copyEnded();
  t.equal(l.sync(4), true);
  t.same([l.owed, l.unsynced], [1, false]);
  t.equal(answer(l).askedAt, 4);
});

t.test('COPY IN from a simple Query: its own answer stays owed, Syncs right behind it do not', async (t) => {
  const l = new RelayLedger();
  l.query(1, undefined);
  t.equal(l.copyInStarted(), 0);
  t.same([l.owed, l.copyIn], [1, true]);

  const m = new RelayLedger();
  m.query(1, undefined);
  m.sync(2);
  t.equal(m.copyInStarted(), 1, 'read during COPY IN');
  t.same([m.owed, m.unsynced, m.copyIn], [1, false, true]);
  t.equal(answer(m).askedAt, 1, "the Query's answer");
});

// Which Syncs written before the CopyInResponse came will be answered. The count must never
// be short (the connection would go back while the server still answers); too many keeps the
// connection with the client.
const copyCases: [string, (l: RelayLedger) => void, { dropped: number; owed: number; copyIn: boolean }][] = [
  ['Execute, Sync, Sync: both read in COPY IN', (l) => (l.extended(true, undefined), l.sync(1), l.sync(2)), { dropped: 2, owed: 0, copyIn: true }],
  ['Execute, Flush, Sync: a Flush changes nothing', (l) => (l.extended(true, undefined), l.extended(false, undefined, true), l.sync(1)), { dropped: 1, owed: 0, copyIn: true }],
  ['Execute, CopyData, Sync: answered if the data failed the COPY: owed', (l) => (l.extended(true, undefined), l.copyData(), l.sync(1)), { dropped: 0, owed: 1, copyIn: true }],
  ['Execute, Sync, Parse: the Sync is ignored, the Parse ends the COPY', (l) => (l.extended(true, undefined), l.sync(1), l.extended(false, undefined)), { dropped: 1, owed: 0, copyIn: false }],
  ['Execute, Sync, CopyDone, Sync: the second is answered; the first stays owed (over-owing is safe)', (l) => (l.extended(true, undefined), l.sync(1), l.copyEnded(), l.sync(2)), { dropped: 0, owed: 2, copyIn: false }],
  [
    'two Executes, Sync: the COPY may be the first, then the second ends it and the Sync is answered',
    (l) => (l.extended(true, undefined), l.extended(false, undefined), l.extended(true, undefined), l.sync(1)),
    { dropped: 0, owed: 1, copyIn: false },
  ],
  ['Execute, Query: the Query ends the COPY; its answer stays owed', (l) => (l.extended(true, undefined), l.query(1, undefined)), { dropped: 0, owed: 1, copyIn: false }],
  ['Query, CopyData, Sync: owed', (l) => (l.query(1, undefined), l.copyData(), l.sync(2)), { dropped: 0, owed: 2, copyIn: true }],
  [
    'earlier work answered: only what follows its answer counts',
    (l) => (l.extended(true, undefined), l.sync(1), answer(l), l.extended(true, undefined), l.sync(2)),
    { dropped: 1, owed: 0, copyIn: true },
  ],
  ['a FunctionCall then a Sync: nothing dropped', (l) => (l.functionCall(1), l.sync(2)), { dropped: 0, owed: 2, copyIn: false }],
];
for (const [name, steps, want] of copyCases) {
  t.test(`COPY IN began after: ${name}`, async (t) => {
    const l = new RelayLedger();
    steps(l);
    const dropped = l.copyInStarted();
    t.same({ dropped, owed: l.owed, copyIn: l.copyIn }, want);
  });
}

t.test('a FunctionCall is answered like a Sync and closes the pending SETs', async (t) => {
  const l = new RelayLedger();
  l.extended(false, set('search_path', 'a'));
  l.functionCall(5);
  t.equal(l.owed, 1);
  t.same(answer(l).settled, ['search_path=a']);
});

t.test('answered with nothing owed, and a reset, leave a clean ledger', async (t) => {
  const l = new RelayLedger();
  t.same(answer(l), { askedAt: undefined, settled: [] });
  l.extended(true, set('x.y', '1'));
  l.query(1, undefined);
  l.reset();
  t.same([l.owed, l.unsynced, l.copyIn, l.settled], [0, false, false, true]);
  t.equal(l.sync(2), true);
  t.same(answer(l).settled, [], 'SETs sent on the lost connection are gone');
});

t.test('an error inside a batch: a Query written in it is skipped and owes nothing', async (t) => {
  const l = new RelayLedger();
  l.extended(false, undefined); // Parse
  l.extended(true, undefined); // Execute
  t.equal(l.query(1, set('timezone', 'UTC')), true, 'written before the error came back: owed for now');
  t.equal(l.sync(2), true);
  t.equal(l.owed, 2);
  l.queryIgnored(); // the error came with the Query's marker unanswered
  t.equal(l.owed, 1);
  const a = answer(l);
  t.same([a.askedAt, a.settled, l.settled], [2, [], true], "the Sync's answer; the skipped SET never took");
  // The error comes back before the Query is written.
  l.extended(true, undefined);
  l.skipToSync('22012');
  t.equal(l.skipping, '22012');
  t.equal(l.query(3, undefined), false, 'skipped: nothing owed');
  t.equal(l.owed, 0);
  t.equal(l.sync(4), true);
  t.same([l.skipping, l.owed], [null, 1], 'the Sync ends the skipping');
  answer(l);
  l.skipToSync('22012');
  t.equal(l.skipping, null, 'no batch open: nothing to skip');
});

t.test("a Query inside a batch settles the batch's SETs (it commits them); an error ends COPY IN", async (t) => {
  const l = new RelayLedger();
  l.extended(false, set('application_name', 'b')); // Parse of a SET
  l.extended(true, undefined); // Execute
  l.query(1, set('timezone', 'UTC'));
  l.sync(2);
  t.same(answer(l).settled, ['application_name=b', 'timezone=UTC'], "with the Query's answer");
  t.same(answer(l).settled, [], 'nothing left for the Sync');
  l.extended(true, undefined);
  l.copyInStarted();
  t.equal(l.sync(3), false, 'ignored during COPY IN');
  l.skipToSync('22P02');
  l.errored(); // bad CopyData
  t.equal(l.copyIn, false);
  t.equal(l.sync(4), true, 'the Sync after the error is answered');
  t.same([l.owed, l.skipping], [1, null]);
});

t.test("a Query after the batch's last message ends the batch when it is answered, without a Sync", async (t) => {
  const l = new RelayLedger();
  l.extended(false, undefined); // Parse
  l.extended(true, undefined); // Execute
  t.equal(l.endedByQuery, false, 'no Query yet');
  t.equal(l.query(1, undefined), true);
  t.equal(l.endedByQuery, true, 'a FunctionCall may follow behind the Query');
  t.equal(l.query(2, undefined), true, 'a second Query, written before the first was answered');
  t.same([l.unsynced, l.owed], [true, 2], 'until an answer, the server may still be skipping to a Sync');
  answer(l);
  t.same([l.unsynced, l.owed, l.settled], [false, 1, false], "the first Query's answer ends the batch");
  answer(l);
  t.equal(l.settled, true, 'settled: the connection can go back without a Sync');

  l.extended(true, undefined);
  l.query(3, undefined);
  l.extended(false, undefined); // Parse after the Query: the batch goes on
  t.equal(l.endedByQuery, false, 'not behind an extended message');
  answer(l);
  t.same([l.unsynced, l.settled], [true, false], 'a message after the Query keeps the batch open');
  l.sync(4);
  answer(l);
  t.equal(l.settled, true);

  l.extended(true, undefined);
  l.query(5, undefined);
  l.query(6, undefined);
  l.queryIgnored(); // an error before the first Query: the server skips both, up to the Sync
  l.queryIgnored();
  t.same([l.unsynced, l.owed], [true, 0], 'a skipped Query ends nothing');
  l.sync(7);
  answer(l);
  t.equal(l.settled, true);
});

t.test('in doubt: where the count may have fallen short, the ledger says so', async (t) => {
  const fresh = () => new RelayLedger();
  let l = fresh();
  l.extended(true, undefined);
  l.sync(1);
  l.copyInStarted(); // the Sync was dropped as read in COPY IN
  l.errored(); // but the COPY failed first: the server answers it
  t.equal(l.inDoubt, true, 'a COPY that failed after Syncs were dropped for it');

  l = fresh();
  l.extended(true, undefined);
  l.sync(1);
  l.copyInStarted();
  l.copyEnded();
  l.sync(2);
  answer(l); // the COPY's Sync: it got as far as the CopyDone
  l.errored();
  t.equal(l.inDoubt, false, 'an error after the COPY was answered');

  l = fresh();
  l.extended(false, undefined); // Parse, Bind (a batch open)
  l.copyData(); // outside COPY IN
  l.errored(); // an expired statement_timeout raised at it: no skip to Sync
  t.equal(l.inDoubt, true, 'an error behind a copy message inside a batch');

  l = fresh();
  l.extended(false, undefined);
  l.copyEnded(); // a CopyDone outside COPY IN, inside a batch
  l.sync(1);
  answer(l); // answered behind it: that error did not happen
  l.extended(true, undefined);
  l.errored();
  t.equal(l.inDoubt, false, 'a later error, in a later batch');

  l = fresh();
  l.query(1, undefined);
  l.copyData(); // outside a batch: no statement timeout is armed while the server waits
  l.errored();
  t.equal(l.inDoubt, false, 'copy messages outside a batch');

  l = fresh();
  answer(l);
  t.equal(l.inDoubt, true, 'a ReadyForQuery with nothing owed');
  l.reset();
  t.equal(l.inDoubt, false, 'a new server connection starts clean');
});

t.test('in doubt: a bare ReadyForQuery (nothing before it) taken as the answer to a Query or FunctionCall', async (t) => {
  const bare = (l: RelayLedger) => l.answered(() => {}, true);
  let l = new RelayLedger();
  l.sync(1);
  bare(l);
  t.equal(l.inDoubt, false, 'a Sync may be answered by ReadyForQuery alone');
  l.query(2, undefined);
  l.answered(() => {}, false);
  t.equal(l.inDoubt, false, 'a Query answered after replies of its own');
  l.sync(3);
  l.query(4, undefined);
  bare(l);
  t.equal(l.inDoubt, false, "the Sync's");
  bare(l);
  t.equal(l.inDoubt, true, "the Query's cannot be bare: one ReadyForQuery more than counted came before");
  l = new RelayLedger();
  l.functionCall(1);
  bare(l);
  t.equal(l.inDoubt, true, 'nor can a FunctionCall');
});
