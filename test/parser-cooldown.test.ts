// A statement deep enough to overflow the stack inside the policy parser taints its shared
// WebAssembly instance until a fresh one is loaded; some twenty of them in one burst broke
// it, and every client's statements that need the parser were refused (54001) until the
// reload landed. Now the user whose text faulted the parser gets no long text parsed for a
// second (policy/parser-cooldown.ts): its burst costs one fault, not twenty.

import t from 'tap';
import { serialize } from 'pg-protocol';
import { PolicyClassifier, loadPolicyParser } from '../src/policy/classify.js';
import { ALWAYS_PARSED_CHARS, ParserCooldown } from '../src/policy/parser-cooldown.js';
import { parserFaults, parserSettled } from '../src/policy/parser.js';
import { rawOf } from './helpers/raw-client.js';
import { tenantClient, tenantLab } from './helpers/tenant-lab.js';

t.test('the cooldown: long texts of a user whose text faulted the parser, for a while', async (t) => {
  let now = 0;
  const cooldown = new ParserCooldown(1000, () => now);
  const long = 'x'.repeat(ALWAYS_PARSED_CHARS + 1);
  const short = 'x'.repeat(ALWAYS_PARSED_CHARS);
  t.ok(cooldown.mayParse('a', long), 'nobody in cooldown');
  cooldown.start('a');
  t.notOk(cooldown.mayParse('a', long), "a's long text is not parsed");
  t.ok(cooldown.mayParse('a', short), 'its short text is (it cannot nest deep enough)');
  t.ok(cooldown.mayParse('b', long), "another user's long text is");
  now = 999;
  t.notOk(cooldown.mayParse('a', long), 'until the time is up');
  now = 1000;
  t.ok(cooldown.mayParse('a', long), 'then it is parsed again');
  cooldown.start('a');
  now = 1500;
  cooldown.start('a');
  now = 2200;
  t.notOk(cooldown.mayParse('a', long), 'a fault during the cooldown starts it again');
});

t.test('one text costs one fault, however many function bodies or query texts in it overflow the stack', async (t) => {
  // (A reviewer's finding: without pins, 40 deep SQL function bodies in one Query faulted the
  // parser 40 times, and broke it for another user.)
  const deepBody = (i: number) => `CREATE FUNCTION f${i}() RETURNS int LANGUAGE sql AS $$SELECT ${i}${' + 1'.repeat(12_000)}$$`;
  const deepQuery = (i: number) => `query_to_xml($q$SELECT ${i}${' + 1'.repeat(12_000)}$q$, true, true, '')`;
  await loadPolicyParser();
  for (const pinned of [[], ['app.tenant_id']]) {
    const c = new PolicyClassifier(pinned, { cacheSize: 0 });
    for (const [what, sql] of [
      ['function bodies', Array.from({ length: 10 }, (_, i) => deepBody(i)).join(';\n')],
      ['query_to_xml texts', `SELECT ${Array.from({ length: 10 }, (_, i) => deepQuery(i)).join(', ')}`],
      ['both readings (a backslash)', `${deepBody(0)}; SELECT 'x\\'`],
    ]) {
      const before = parserFaults;
      c.classify(sql!);
      t.equal(parserFaults - before, 1, `${what}, ${pinned.length > 0 ? 'pinned' : 'no pins'}`);
      await parserSettled();
    }
  }
});

/** Overflows the stack inside the parser (a left-deep chain of 12 000 additions); "temp" sends it to the parser. */
const deep = (i: number) => `SELECT ${i}${' + 1'.repeat(12_000)} AS temp_total`;
/** Over ALWAYS_PARSED_CHARS, shallow. */
const long = (tag: string) => `SELECT 1 AS temp_${tag} WHERE '${'x'.repeat(ALWAYS_PARSED_CHARS)}' <> ''`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test("a burst of deep statements from one user: other clients' statements are still checked; the user's long texts go unparsed for a second", async (t) => {
  const { proxy } = await tenantLab(t);
  const a = rawOf(await tenantClient(t, proxy.port, 'a'));
  const b = rawOf(await tenantClient(t, proxy.port, 'b'));
  const errors: string[] = [];
  a.raw.on('errorMessage', (m: { message: string }) => errors.push(m.message));
  // 60 deep statements in one write (no time for a fresh instance between them), while b
  // sends statements that need the parser. (Before: b's got "42601 table index is out of
  // bounds" from the broken instance.)
  const bErrors: string[] = [];
  b.raw.on('errorMessage', (m: { message: string }) => bErrors.push(m.message));
  const burst = a.send(60, ...Array.from({ length: 60 }, (_, i) => serialize.query(deep(i))));
  for (let i = 0; i < 20; i++) {
    await sleep(5);
    b.raw.stream.write(serialize.query(`SELECT ${i} AS temp_b`));
  }
  const replies = await burst;
  await b.until(20, 10_000);
  t.same(bErrors, [], "b's statements, sent meanwhile, are checked and run");
  t.same(b.seen.filter((r) => /^\d+$/.test(r)), Array.from({ length: 20 }, (_, i) => String(i)));
  t.equal(replies.filter((r) => r === 'E54001').length, 60, "each of a's refused with 54001");
  t.equal(errors.filter((m) => m.startsWith('statement not checked')).length, 59, 'all but the first without being parsed');
  const bc = await tenantClient(t, proxy.port, 'b');
  t.same((await bc.query(long('b'))).rows, [{ temp_b: 1 }], "b's long statement is parsed and runs");
  // a: short statements are checked as ever; long ones wait for the cooldown to end.
  t.same(await a.send(1, serialize.query('SELECT 1 AS temp_short')), ['columns:temp_short', '1', 'done:SELECT 1', 'Z'], "a's short statement runs");
  t.same(await a.send(1, serialize.query(long('a'))), ['E54001', 'Z'], "a's long statement is refused for now");
  await sleep(1100);
  t.same(await a.send(1, serialize.query(long('a2'))), ['columns:temp_a2', '1', 'done:SELECT 1', 'Z'], 'and parsed again a second later');
});
