// Framer tests: every message type split at every byte offset must give the same frames,
// pass-through bytes must be forwarded exactly, and bad lengths must fail before allocation.

import t from 'tap';
import { serialize } from 'pg-protocol';
import { FrameError, INSPECT_ALL, MessageScanner, inspectTable, type ScanSink } from '../src/protocol/scanner.js';
import * as be from '../src/protocol/backend.js';

class Collect implements ScanSink {
  passed: Buffer[] = [];
  messages: { type: number; frame: Buffer }[] = [];
  pass(b: Buffer): void {
    this.passed.push(Buffer.from(b));
  }
  message(type: number, frame: Buffer): void {
    this.messages.push({ type, frame: Buffer.from(frame) });
  }
  /** Everything in stream order, as the relay would write it (messages forwarded too). */
  forwarded: Buffer[] = [];
}

const frontend: Record<string, Buffer> = {
  query: serialize.query('SELECT 1'),
  parse: serialize.parse({ name: 's1', text: 'SELECT $1::int', types: [23] }),
  bind: serialize.bind({ statement: 's1', values: ['42'] }),
  execute: serialize.execute({}),
  describe: serialize.describe({ type: 'S', name: 's1' }),
  close: serialize.close({ type: 'S', name: 's1' }),
  sync: serialize.sync(),
  flush: serialize.flush(),
  copyData: serialize.copyData(Buffer.from('1\tone\n')),
  copyDone: serialize.copyDone(),
  copyFail: serialize.copyFail('nope'),
  terminate: serialize.end(),
};
const backend: Record<string, Buffer> = {
  ready: be.readyForQuery('I'),
  param: be.parameterStatus('application_name', 'x'),
  key: be.backendKeyData(1, 2),
  error: be.fatal('08P01', 'boom'),
  authOk: be.authenticationOk,
  sasl: be.authenticationSasl(['SCRAM-SHA-256']),
  notice: be.noticeResponse({ severity: 'NOTICE', code: '00000', message: 'hi' }),
};
const all = { ...frontend, ...backend };
const stream = Buffer.concat(Object.values(all));

function run(chunks: Buffer[], inspect: Uint8Array): Collect {
  const sink = new Collect();
  const scanner = new MessageScanner(inspect, 1 << 20, sink);
  for (const c of chunks) scanner.feed(c);
  t.ok(scanner.atBoundary, 'scanner ends on a message boundary');
  return sink;
}

t.test('every message, split at every offset, inspected whole', async (t) => {
  for (const [name, msg] of Object.entries(all)) {
    for (let cut = 0; cut <= msg.length; cut++) {
      const sink = run([msg.subarray(0, cut), msg.subarray(cut)], INSPECT_ALL);
      t.equal(sink.messages.length, 1, `${name} cut at ${cut}: one message`);
      t.same(sink.messages[0]?.frame, msg, `${name} cut at ${cut}: same bytes`);
      t.equal(sink.passed.length, 0);
    }
  }
});

t.test('a whole stream split at every offset, pass-through bytes preserved exactly', async (t) => {
  const inspect = inspectTable('QZX');
  const expectedTypes = [0x51, 0x58, 0x5a];
  for (let cut = 0; cut <= stream.length; cut++) {
    const sink = run([stream.subarray(0, cut), stream.subarray(cut)], inspect);
    t.same(sink.messages.map((m) => m.type), expectedTypes, `cut ${cut}: inspected types`);
    // Re-assemble: pass-through bytes + inspected frames, in order, must equal the input.
    const inspectedBytes = sink.messages.reduce((n, m) => n + m.frame.length, 0);
    const passedBytes = sink.passed.reduce((n, b) => n + b.length, 0);
    t.equal(inspectedBytes + passedBytes, stream.length, `cut ${cut}: no byte lost or duplicated`);
  }
});

t.test('byte-at-a-time feeding keeps order', async (t) => {
  const order: string[] = [];
  const sink: ScanSink = {
    pass: (b) => order.push(`p${b.length}`),
    message: (type) => order.push(String.fromCharCode(type)),
  };
  const scanner = new MessageScanner(inspectTable('Z'), 1 << 20, sink);
  const bytes = Buffer.concat([frontend.query!, backend.ready!, frontend.sync!]);
  for (let i = 0; i < bytes.length; i++) scanner.feed(bytes.subarray(i, i + 1));
  const zAt = order.indexOf('Z');
  const beforeZ = order.slice(0, zAt).reduce((n, s) => n + Number(s.slice(1)), 0);
  t.equal(beforeZ, frontend.query!.length, 'all query bytes passed before Z');
  t.equal(order.slice(zAt + 1).reduce((n, s) => n + Number(s.slice(1)), 0), frontend.sync!.length);
});

t.test('pass-through is zero-copy: slices of the input chunk', async (t) => {
  const chunk = Buffer.concat([frontend.query!, frontend.sync!]);
  const got: Buffer[] = [];
  const scanner = new MessageScanner(inspectTable(''), 1 << 20, { pass: (b) => got.push(b), message: () => {} });
  scanner.feed(chunk);
  t.equal(got.length, 1);
  t.equal(got[0]!.buffer, chunk.buffer, 'same underlying memory');
});

t.test('bad lengths fail before anything is allocated', async (t) => {
  const cases: [string, number][] = [
    ['length 3', 3],
    ['negative length', -1],
    ['2^31-1', 0x7fffffff],
    ['just over the maximum', 1024 + 1],
  ];
  for (const [name, len] of cases) {
    const hdr = Buffer.alloc(5);
    hdr[0] = 0x51;
    hdr.writeInt32BE(len, 1);
    const scanner = new MessageScanner(INSPECT_ALL, 1024, { pass: () => {}, message: () => {} });
    let thrown: unknown;
    try {
      scanner.feed(hdr);
    } catch (e) {
      thrown = e;
    }
    t.ok(thrown instanceof FrameError, `${name}: FrameError`);
    t.match(thrown, { message: 'invalid message length', sqlstate: '08P01' });
  }
  const ok = Buffer.alloc(5);
  ok[0] = 0x51;
  ok.writeInt32BE(1024, 1);
  t.doesNotThrow(() => new MessageScanner(INSPECT_ALL, 1024, { pass: () => {}, message: () => {} }).feed(ok), 'exactly the maximum is fine');
});

t.test('pass-through says whether it starts a message, wherever the chunks are split', async (t) => {
  // (The session drops a stray CopyData whole; passing on the rest of one whose start it
  // dropped would hand the server its data as messages: the flag must be exact.)
  const empty = serialize.copyData(Buffer.alloc(0));
  const parts = [frontend.copyData!, frontend.query!, serialize.copyData(Buffer.alloc(300, 0x51)), empty, frontend.copyData!, frontend.copyDone!, empty, empty, frontend.copyData!, frontend.sync!];
  const stream = Buffer.concat(parts);
  const starts = new Set<number>();
  let at = 0;
  for (const p of parts) {
    starts.add(at);
    at += p.length;
  }
  const clientTable = inspectTable('XQPSFBDCEHcf'); // the session's: CopyData passes through
  let wrong = 0;
  const splits: number[][] = [];
  for (let i = 0; i <= stream.length; i++) splits.push([i]);
  for (let i = 0; i <= stream.length; i += 7) for (let j = i; j <= stream.length; j += 5) splits.push([i, j]);
  for (const cut of splits) {
    let offset = 0;
    const sink: ScanSink = {
      pass(b, startsMessage) {
        if (startsMessage !== starts.has(offset)) wrong++;
        offset += b.length;
      },
      message(_type, frame) {
        offset += frame.length;
      },
    };
    const scanner = new MessageScanner(clientTable, 1 << 20, sink);
    let from = 0;
    for (const c of [...cut, stream.length]) {
      scanner.feed(stream.subarray(from, c));
      from = c;
    }
    if (offset !== stream.length) wrong++;
  }
  t.equal(wrong, 0, `${splits.length} ways to split the stream, every pass-through flagged right`);
});

t.test('stop(): nothing after the message that stopped it reaches the sink, wherever the chunks are split', async (t) => {
  // After a Terminate PostgreSQL reads nothing more: what follows, even a bad length, is never seen.
  const badLength = Buffer.from([0x51, 0x7f, 0xff, 0xff, 0xff]);
  const stream = Buffer.concat([frontend.query!, frontend.copyData!, frontend.terminate!, frontend.query!, badLength]);
  const stopAt = frontend.query!.length + frontend.copyData!.length + frontend.terminate!.length;
  for (let cut = 0; cut <= stream.length; cut++) {
    const seen: string[] = [];
    let passed = 0;
    const sink: ScanSink = {
      pass: (b) => void (passed += b.length),
      message: (type) => {
        seen.push(String.fromCharCode(type));
        if (type === 0x58) scanner.stop();
      },
    };
    const scanner = new MessageScanner(inspectTable('QX'), 1 << 20, sink);
    scanner.feed(stream.subarray(0, cut));
    scanner.feed(stream.subarray(cut));
    scanner.feed(frontend.query!);
    if (seen.join('') !== 'QX' || passed !== frontend.copyData!.length) {
      t.fail(`split at ${cut}: saw ${seen.join('')} and ${passed} passed bytes`);
      return;
    }
  }
  t.pass(`all ${stream.length + 1} splits stop after the Terminate (${stopAt} bytes in)`);
});
