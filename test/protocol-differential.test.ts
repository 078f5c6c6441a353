// Differential fuzz of the frontend protocol: the same seeded, random sequences of Parse,
// Bind, Describe, Execute, Close, Flush, Sync and simple Query (and now and then one of them
// cut before its first string's terminator, which PostgreSQL answers with ERROR 08P01
// and survives) are sent once straight to
// PostgreSQL (as the server role) and once through pgbastion, and the reply streams must be
// the same after normalisation: message type letters, the SQLSTATE of ErrorResponses, the
// CommandComplete tags, DataRow values and the ReadyForQuery status; ParameterStatus,
// NoticeResponse, BackendKeyData and error texts are dropped. Named statements are renamed
// server-side by pgbastion; the client must not see it. In transaction mode the pool has ONE
// connection, and a second client runs `SELECT 1` between sequences so that it changes hands.
// A third run pins the two clients to different tenants, so that every lease switches the
// connection's settings (inline with the client's first message, or separately): none of the
// switch's replies may show. Between sequences both sides are reset alike: ROLLBACK,
// DEALLOCATE ALL, CLOSE ALL.

import net from 'node:net';
import t, { type Test } from 'tap';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { startPostgres, type PgServer } from './helpers/postgres.js';
import { createServerRole, SERVER_ROLE, SERVER_ROLE_PASSWORD, startProxy, type RunningProxy } from './helpers/proxy.js';

const SEED = 0x9e3779b9;
const SEQUENCES = 400;
/**
 * Sequences known to differ, by mode and index, with the issue they show; skipped so the
 * file passes. Remove an entry once its issue is fixed.
 */
type Variant = 'transaction' | 'session' | 'pinned';
const KNOWN_BAD: Record<Variant, Record<number, string>> = {
  transaction: {},
  pinned: {},
  session: {},
};

// ---------------------------------------------------------------------------------------
// PRNG (xorshift32) and the message generator.

function xorshift(seed: number) {
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s / 0x100000000;
  };
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    pick: <T,>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!,
  };
}
type Rng = ReturnType<typeof xorshift>;

type Msg =
  | { k: 'Query'; sql: string }
  | { k: 'Parse'; name: string; sql: string }
  | { k: 'Bind'; portal: string; stmt: string }
  | { k: 'Describe'; type: 'S' | 'P'; name: string }
  | { k: 'Execute'; portal: string; rows: number }
  | { k: 'Close'; type: 'S' | 'P'; name: string }
  | { k: 'Flush' }
  | { k: 'Sync' }
  /** `of` cut before its first string's terminator: PostgreSQL answers ERROR 08P01 and goes on. */
  | { k: 'Cut'; of: Msg };

const QUERIES = [
  'SELECT 1', 'SELECT n FROM generate_series(1,3) n', 'SELECT 1/0', 'SELEC 1', 'BEGIN', 'COMMIT', 'ROLLBACK',
  'SAVEPOINT s', 'ROLLBACK TO s', 'SELECT 1; SELECT 2', '', 'DEALLOCATE s1',
] as const;
const PARSES = [
  'SELECT 1', 'SELECT n FROM generate_series(1,3) n', 'SELECT 1/0', 'SELEC 1', 'BEGIN', 'COMMIT', 'ROLLBACK',
  'SAVEPOINT s', 'ROLLBACK TO s', "SELECT 'x' AS v",
] as const;
const STMTS = ['', '', 's1', 's2', 'nosuch'] as const;
const PORTALS = ['', '', 'p1'] as const;

function genMessage(r: Rng): Msg {
  const x = r.int(100);
  if (x < 10) return { k: 'Query', sql: r.pick(QUERIES) };
  if (x < 28) return { k: 'Parse', name: r.pick(STMTS.slice(0, 4)), sql: r.pick(PARSES) };
  if (x < 46) return { k: 'Bind', portal: r.pick(PORTALS), stmt: r.pick(STMTS) };
  if (x < 56) return r.int(2) ? { k: 'Describe', type: 'S', name: r.pick(STMTS) } : { k: 'Describe', type: 'P', name: r.pick(PORTALS) };
  if (x < 74) return { k: 'Execute', portal: r.pick(PORTALS), rows: r.pick([0, 0, 1, 2]) };
  if (x < 82) return r.int(2) ? { k: 'Close', type: 'S', name: r.pick(STMTS) } : { k: 'Close', type: 'P', name: r.pick(PORTALS) };
  if (x < 84) return { k: 'Flush' };
  if (x < 86) {
    let of = genMessage(r);
    while (!['Query', 'Parse', 'Bind', 'Describe', 'Close'].includes(of.k)) of = genMessage(r);
    return { k: 'Cut', of };
  }
  return { k: 'Sync' };
}

interface Sequence { msgs: Msg[]; splits: number[] }

function genSequence(r: Rng): Sequence {
  const n = 5 + r.int(21);
  const msgs: Msg[] = [];
  for (let i = 0; i < n - 1; i++) msgs.push(genMessage(r));
  msgs.push({ k: 'Sync' });
  // Half are written at once; the others are cut at 1-3 random byte offsets.
  const splits: number[] = [];
  if (r.int(2)) for (let i = 1 + r.int(3); i > 0; i--) splits.push(r.next());
  return { msgs, splits: splits.sort() };
}

function encode(m: Msg): Buffer {
  switch (m.k) {
    case 'Query': return serialize.query(m.sql);
    case 'Parse': return serialize.parse({ name: m.name, text: m.sql, types: [] });
    case 'Bind': return serialize.bind({ portal: m.portal, statement: m.stmt, values: [] });
    case 'Describe': return serialize.describe({ type: m.type, name: m.name });
    case 'Execute': return serialize.execute({ portal: m.portal, rows: m.rows });
    case 'Close': return serialize.close({ type: m.type, name: m.name });
    case 'Flush': return serialize.flush();
    case 'Sync': return serialize.sync();
    case 'Cut': {
      const whole = encode(m.of);
      const nul = whole.indexOf(0, m.of.k === 'Describe' || m.of.k === 'Close' ? 6 : 5);
      const cut = Buffer.from(whole.subarray(0, nul));
      cut.writeInt32BE(cut.length - 1, 1);
      return cut;
    }
  }
}

function show(m: Msg): string {
  switch (m.k) {
    case 'Query': return `Query(${JSON.stringify(m.sql)})`;
    case 'Parse': return `Parse(${JSON.stringify(m.name)}, ${JSON.stringify(m.sql)})`;
    case 'Bind': return `Bind(portal=${JSON.stringify(m.portal)}, stmt=${JSON.stringify(m.stmt)})`;
    case 'Describe': return `Describe(${m.type}, ${JSON.stringify(m.name)})`;
    case 'Execute': return `Execute(${JSON.stringify(m.portal)}, rows=${m.rows})`;
    case 'Close': return `Close(${m.type}, ${JSON.stringify(m.name)})`;
    case 'Cut': return `Cut(${show(m.of)})`;
    default: return m.k;
  }
}

// ---------------------------------------------------------------------------------------
// A raw client: logged in by pg, then its socket is read and written directly.

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

class Raw {
  private buf: Buffer = Buffer.alloc(0);
  readonly seen: string[] = [];
  private constructor(readonly client: pg.Client, private readonly stream: net.Socket) {
    stream.removeAllListeners('data');
    stream.on('data', (d: Buffer) => this.onData(d));
  }

  static async open(cfg: pg.ClientConfig): Promise<Raw> {
    const c = new pg.Client(cfg);
    c.on('error', () => undefined);
    await c.connect();
    return new Raw(c, (c as unknown as { connection: { stream: net.Socket } }).connection.stream);
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    while (this.buf.length >= 5) {
      const len = this.buf.readInt32BE(1);
      if (this.buf.length < 1 + len) break;
      const type = String.fromCharCode(this.buf[0]!);
      const body = this.buf.subarray(5, 1 + len);
      this.buf = this.buf.subarray(1 + len);
      const n = normalise(type, body);
      if (n !== null) this.seen.push(n);
    }
  }

  async write(bytes: Buffer, splits: number[]): Promise<void> {
    let at = 0;
    for (const s of splits) {
      const cut = Math.max(at, Math.floor(s * bytes.length));
      if (cut > at) this.stream.write(bytes.subarray(at, cut));
      at = cut;
      await sleep(1 + Math.floor(s * 1000) % 4);
    }
    this.stream.write(bytes.subarray(at));
  }

  /** Waits until `marker` is a DataRow followed by ReadyForQuery; false on timeout. */
  async waitFor(marker: string, ms = 5000): Promise<boolean> {
    const end = Date.now() + ms;
    for (;;) {
      const i = this.seen.indexOf(`D:${marker}`);
      if (i >= 0 && this.seen.slice(i).some((s) => s.startsWith('Z'))) return true;
      if (Date.now() > end) return false;
      await sleep(1);
    }
  }

  close(): void {
    this.stream.destroy();
  }
}

function cstrings(body: Buffer): string[] {
  const out: string[] = [];
  let i = 0;
  while (i < body.length) {
    const z = body.indexOf(0, i);
    if (z < 0) break;
    out.push(body.toString('utf8', i, z));
    i = z + 1;
  }
  return out;
}

function normalise(type: string, body: Buffer): string | null {
  switch (type) {
    case 'S': case 'N': case 'K': case 'A': return null;
    case 'E': {
      let i = 0;
      while (i < body.length && body[i] !== 0) {
        const code = String.fromCharCode(body[i]!);
        const z = body.indexOf(0, i + 1);
        if (code === 'C') return `E:${body.toString('utf8', i + 1, z)}`;
        i = z + 1;
      }
      return 'E:?';
    }
    case 'C': return `C:${cstrings(body)[0]}`;
    case 'D': {
      const n = body.readInt16BE(0);
      const vals: string[] = [];
      let i = 2;
      for (let f = 0; f < n; f++) {
        const len = body.readInt32BE(i);
        i += 4;
        if (len < 0) vals.push('NULL');
        else { vals.push(body.toString('utf8', i, i + len)); i += len; }
      }
      return `D:${vals.join('|')}`;
    }
    case 'Z': return `Z${String.fromCharCode(body[0]!)}`;
    default: return type;
  }
}

// ---------------------------------------------------------------------------------------
// Running one sequence on one side.

const RESET = ['ROLLBACK', 'DEALLOCATE ALL', 'CLOSE ALL'];

async function runOn(raw: Raw, seq: Sequence, index: number): Promise<string[] | 'TIMEOUT'> {
  raw.seen.length = 0;
  const marker = `mk${index}`;
  const bytes = Buffer.concat(seq.msgs.map(encode));
  await raw.write(bytes, seq.splits);
  await raw.write(Buffer.concat([...RESET, `SELECT '${marker}'`].map((q) => serialize.query(q))), []);
  if (!(await raw.waitFor(marker))) return 'TIMEOUT';
  const got = [...raw.seen];
  // Cut the reset's fixed replies off: C:ROLLBACK Z, C:DEALLOCATE ALL ZI, C:CLOSE CURSOR ALL ZI, T D:mk C:SELECT 1 ZI.
  const at = got.lastIndexOf('C:ROLLBACK', got.indexOf(`D:${marker}`));
  const tail = got.slice(at);
  const want = ['C:ROLLBACK', 'ZI', 'C:DEALLOCATE ALL', 'ZI', 'C:CLOSE CURSOR ALL', 'ZI', 'T', `D:${marker}`, 'C:SELECT 1', 'ZI'];
  if (at < 0 || JSON.stringify(tail) !== JSON.stringify(want)) return [...got, 'BAD-RESET'];
  return got.slice(0, at);
}

/**
 * Which messages PostgreSQL skipped (after an error, up to the Sync) and which it answered
 * with an error, read off its own replies. Used to recognise the accepted differences (see
 * knownDifference).
 */
function outcomes(msgs: Msg[], rep: string[]): { skipped: boolean[]; failed: boolean[] } {
  const skipped: boolean[] = [];
  const failed: boolean[] = [];
  let i = 0;
  let skipping = false;
  const take = () => rep[i++] ?? '';
  const fails = (r: string): boolean => {
    failed[failed.length - 1] = r.startsWith('E');
    if (r.startsWith('E')) skipping = true;
    return r.startsWith('E');
  };
  for (const m of msgs) {
    failed.push(false);
    if (m.k === 'Sync') {
      while (i < rep.length && !rep[i]!.startsWith('Z')) i++;
      i++;
      skipping = false;
      skipped.push(false);
      continue;
    }
    skipped.push(skipping);
    if (skipping) continue;
    switch (m.k) {
      case 'Parse': case 'Bind': fails(take()); break;
      case 'Describe': {
        const r = take();
        if (!fails(r) && r === 't') take();
        break;
      }
      case 'Execute': {
        while (rep[i]?.startsWith('D:')) i++;
        fails(take());
        break;
      }
      case 'Close': take(); break;
      case 'Flush': break;
      case 'Query':
        while (i < rep.length && !rep[i]!.startsWith('Z')) i++;
        i++;
        break;
    }
  }
  return { skipped, failed };
}

/**
 * The known difference, after a message PostgreSQL skipped (an earlier one of its batch
 * failed) whose effect pgbastion applied when the message came: an unnamed Parse (26000 for
 * the unnamed statement). Null for any other difference.
 */
function knownDifference(seq: Sequence, direct: string[], proxied: string[]): string | null {
  let d = 0;
  while (d < direct.length && direct[d] === proxied[d]) d++;
  const { skipped } = outcomes(seq.msgs, direct);
  const skippedMsgs = seq.msgs.filter((_, i) => skipped[i]);
  if (proxied[d] !== 'E:26000') return null;
  if (skippedMsgs.some((m) => m.k === 'Parse' && m.name === ''))
    return '(4) a skipped unnamed Parse: pgbastion answers 26000 for the unnamed statement';
  return null;
}

// ---------------------------------------------------------------------------------------

/**
 * pinned: transaction mode, the two clients pinned to different tenants (app.tenant_id), so
 * every lease switches the connection's settings, inline with the client's first message.
 */
async function lab(t: Test, mode: Variant): Promise<{ pgs: PgServer; proxy: RunningProxy }> {
  const pgs = await startPostgres();
  t.teardown(() => pgs.stop());
  await createServerRole(pgs);
  const pinned = mode === 'pinned';
  const proxy = await startProxy(t, pgs, {
    users: [
      { name: 'fuzz', password: 'pw-fuzz', ...(pinned ? { pins: { 'app.tenant_id': 'a' } } : {}) },
      { name: 'other', password: 'pw-other', ...(pinned ? { pins: { 'app.tenant_id': 'b' } } : {}) },
    ],
    extra: { pool: { mode: mode === 'session' ? 'session' : 'transaction', size: mode === 'session' ? 4 : 1, acquire_timeout_ms: 5000 } },
  });
  return { pgs, proxy };
}

async function differential(t: Test, mode: Variant): Promise<void> {
  const { pgs, proxy } = await lab(t, mode);
  const directCfg = { host: '127.0.0.1', port: pgs.port, user: SERVER_ROLE, password: SERVER_ROLE_PASSWORD, database: 'postgres' };
  const proxyCfg = { host: '127.0.0.1', port: proxy.port, user: 'fuzz', password: 'pw-fuzz', database: 'postgres' };
  let direct = await Raw.open(directCfg);
  let proxied = await Raw.open(proxyCfg);
  const other = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'other', password: 'pw-other', database: 'postgres' });
  other.on('error', () => undefined);
  await other.connect();
  t.teardown(async () => {
    direct.close();
    proxied.close();
    await other.end().catch(() => undefined);
  });

  const rng = xorshift(SEED);
  const sequences = Array.from({ length: SEQUENCES }, () => genSequence(rng));
  const unknown: unknown[] = [];
  const known: string[] = [];
  let skipped = 0;
  for (const [index, seq] of sequences.entries()) {
    if (KNOWN_BAD[mode][index]) {
      skipped++;
      continue;
    }
    const [d, p] = await Promise.all([runOn(direct, seq, index), runOn(proxied, seq, index)]);
    if (d === 'TIMEOUT') { direct.close(); direct = await Raw.open(directCfg); }
    if (p === 'TIMEOUT') { proxied.close(); proxied = await Raw.open(proxyCfg); }
    if (JSON.stringify(d) !== JSON.stringify(p)) {
      const why = d !== 'TIMEOUT' && p !== 'TIMEOUT' ? knownDifference(seq, d, p) : null;
      if (why) known.push(`#${index} ${why}`);
      else unknown.push({ index, messages: seq.msgs.map(show), splits: seq.splits.length, direct: d, proxied: p });
    }
    // The one connection changes hands (transaction mode).
    await other.query('SELECT 1');
  }
  if (process.env.PGB_DIFF_DUMP) {
    const { writeFileSync } = await import('node:fs');
    writeFileSync(`${process.env.PGB_DIFF_DUMP}.${mode}.json`, JSON.stringify(unknown, null, 1));
  }
  t.comment(`${mode}: ${SEQUENCES - skipped} sequences run, ${known.length} known differences filtered${known.length > 0 ? ` (${known.join('; ')})` : ''}, ${skipped} known-bad skipped`);
  t.same(unknown, [], `${mode} mode: PostgreSQL and pgbastion answer alike`);
  if (mode === 'pinned') {
    const switches = await proxy.server.runtime.metrics.settingsSwitchCount();
    t.comment(`pinned: ${switches.inline} inline and ${switches.separate} separate settings switches`);
    t.ok(switches.inline + switches.separate >= SEQUENCES, 'the connection switched tenants at least once per sequence');
  }
}

t.test('transaction mode, pool of one shared with another client', (t) => differential(t, 'transaction'));
t.test('session mode', (t) => differential(t, 'session'));
t.test('transaction mode, pool of one shared with a client pinned to another tenant: every lease switches', (t) => differential(t, 'pinned'));
