// PROXY protocol in front: from a trusted balancer the v1/v2 header names the client for
// rules, lockout and audit; from anyone else a header is refused; truncated and missing
// headers are protocol violations. Plus the parser on its own.

import net from 'node:net';
import t from 'tap';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { parseProxyHeader } from '../src/protocol/proxy-header.js';
import { parseFields } from '../src/protocol/fields.js';
import { startPostgres } from './helpers/postgres.js';
import { createServerRole, startProxy } from './helpers/proxy.js';
import { headerBalancer } from './helpers/balancer.js';

function v2(family: 4 | 6, src: string, sport: number, command = 0x21): Buffer {
  const sig = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
  let body: Buffer;
  if (family === 4) {
    body = Buffer.alloc(12);
    src.split('.').forEach((o, i) => (body[i] = Number(o)));
    Buffer.from([127, 0, 0, 1]).copy(body, 4);
    body.writeUInt16BE(sport, 8);
    body.writeUInt16BE(6432, 10);
  } else {
    body = Buffer.alloc(36);
    const words = expandV6(src);
    words.forEach((w, i) => body.writeUInt16BE(w, i * 2));
    body.writeUInt16BE(1, 30);
    body.writeUInt16BE(sport, 32);
    body.writeUInt16BE(6432, 34);
  }
  const head = Buffer.from([command, family === 4 ? 0x11 : 0x21, 0, 0]);
  head.writeUInt16BE(body.length, 2);
  return Buffer.concat([sig, head, body]);
}
function expandV6(s: string): number[] {
  const [a, b] = s.split('::');
  const left = a ? a.split(':') : [];
  const right = b ? b.split(':') : [];
  return [...left, ...Array(8 - left.length - right.length).fill('0'), ...right].map((h) => parseInt(h, 16));
}

t.test('parser', async (t) => {
  t.same(parseProxyHeader(Buffer.from('PROXY TCP4 203.0.113.7 10.0.0.1 5555 6432\r\nrest')), { kind: 'ok', length: 43, source: { address: '203.0.113.7', port: 5555 } });
  t.same(parseProxyHeader(Buffer.from('PROXY TCP6 2001:db8::7 2001:db8::1 5555 6432\r\n')), { kind: 'ok', length: 46, source: { address: '2001:db8::7', port: 5555 } });
  t.same(parseProxyHeader(Buffer.from('PROXY UNKNOWN\r\n')), { kind: 'ok', length: 15 });
  t.same(parseProxyHeader(Buffer.from('PROXY TCP4 203.0.113.7')), { kind: 'incomplete' });
  t.match(parseProxyHeader(Buffer.from('PROXY TCP4 999.0.113.7 10.0.0.1 5555 6432\r\n')), { kind: 'invalid' });
  t.match(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4 10.0.0.1 99999 6432\r\n')), { kind: 'invalid' });
  t.match(parseProxyHeader(Buffer.from('PROXY ' + 'x'.repeat(200))), { kind: 'invalid', message: /too long/ });
  t.same(parseProxyHeader(v2(4, '198.51.100.9', 4444)), { kind: 'ok', length: 28, source: { address: '198.51.100.9', port: 4444 } });
  t.same(parseProxyHeader(v2(6, '2001:db8::9', 4444)), { kind: 'ok', length: 52, source: { address: '2001:db8:0:0:0:0:0:9', port: 4444 } });
  t.same(parseProxyHeader(v2(4, '198.51.100.9', 4444, 0x20)), { kind: 'ok', length: 28 }, 'LOCAL keeps the peer address');
  t.same(parseProxyHeader(v2(4, '198.51.100.9', 4444).subarray(0, 20)), { kind: 'incomplete' });
  const huge = v2(4, '1.2.3.4', 1);
  huge.writeUInt16BE(60000, 14);
  t.match(parseProxyHeader(huge), { kind: 'invalid', message: /too long/ }, 'a huge claimed length is refused, not awaited');
  t.match(parseProxyHeader(Buffer.from([0, 0, 0, 8])), { kind: 'invalid' });
});

const pgs = await startPostgres();
t.teardown(() => pgs.stop());
await createServerRole(pgs);
const proxy = await startProxy(t, pgs, {
  users: [{ name: 'alice', password: 'alice-pw' }],
  extra: {
    proxy_protocol: { trusted: ['127.0.0.1/32', '::1'] },
    limits: { startup_timeout_ms: 800 },
    hba: [
      { type: 'host', database: 'all', user: 'alice', address: '203.0.113.0/24', method: 'scram-sha-256' },
      { type: 'host', database: 'all', user: 'alice', address: '2001:db8::/32', method: 'scram-sha-256' },
      { type: 'host', database: 'all', user: 'all', address: 'all', method: 'reject' },
    ],
  },
});
const untrusting = await startProxy(t, pgs, {
  users: [{ name: 'alice', password: 'alice-pw' }],
  extra: { proxy_protocol: { trusted: ['10.9.9.9/32'] }, hba: [{ type: 'host', database: 'all', user: 'all', address: 'all', method: 'scram-sha-256' }] },
});
// The balancer written in its IPv4-mapped form: peers are matched as IPv4, as in hba rules.
const mapped = await startProxy(t, pgs, {
  users: [{ name: 'alice', password: 'alice-pw' }],
  extra: { proxy_protocol: { trusted: ['::ffff:127.0.0.1'] }, hba: [{ type: 'host', database: 'all', user: 'all', address: 'all', method: 'scram-sha-256' }] },
});

async function login(port: number): Promise<string> {
  const c = new pg.Client({ host: '127.0.0.1', port, user: 'alice', password: 'alice-pw', database: 'postgres' });
  try {
    await c.connect();
    await c.query('SELECT 1');
    await c.end();
    return 'ok';
  } catch (e) {
    await c.end().catch(() => {});
    return `${(e as { code?: string }).code}: ${(e as Error).message}`;
  }
}

t.test('v1 and v2 (IPv4 and IPv6) headers from the trusted balancer name the client', async (t) => {
  for (const [what, header, addr, port] of [
    ['v1', Buffer.from('PROXY TCP4 203.0.113.7 127.0.0.1 5555 6432\r\n'), '203.0.113.7', 5555],
    ['v2 IPv4', v2(4, '203.0.113.8', 5556), '203.0.113.8', 5556],
    ['v2 IPv6', v2(6, '2001:db8::9', 5557), '2001:db8:0:0:0:0:0:9', 5557],
  ] as const) {
    t.equal(await login(await headerBalancer(t, proxy.port, header)), 'ok', `${what}: allowed by the rule for the header's address`);
    await new Promise((r) => setTimeout(r, 50));
    const start = proxy.audit.lines.filter((l) => l.event === 'session.start').at(-1);
    t.equal(start?.client_addr, addr, `${what}: audit shows the real client`);
    const logged = proxy.log.lines.filter((l) => l.session_id === start?.session_id);
    t.match(
      logged.find((l) => l.msg === 'session ended'),
      { client: `${addr}:${port}`, via: '127.0.0.1', user: 'alice', database: 'postgres' },
      `${what}: the session's log lines name the real client, the balancer, the user and database`,
    );
  }
  const other = await login(await headerBalancer(t, proxy.port, Buffer.from('PROXY TCP4 198.51.100.1 127.0.0.1 5555 6432\r\n')));
  t.match(other, /^28000: pg_hba\.conf rejects connection for host "198\.51\.100\.1"/, 'rules see the header address');
});

t.test('a trusted balancer written as an IPv4-mapped address is trusted', async (t) => {
  t.equal(await login(await headerBalancer(t, mapped.port, Buffer.from('PROXY TCP4 203.0.113.9 127.0.0.1 5555 6432\r\n'))), 'ok');
  await new Promise((r) => setTimeout(r, 50));
  t.equal(mapped.audit.lines.filter((l) => l.event === 'session.start').at(-1)?.client_addr, '203.0.113.9', 'the header names the client');
  t.match(await login(mapped.port), /^08P01: invalid PROXY protocol header/, 'and its header is required');
});

t.test('a trusted peer that sends no header, or a truncated one, is refused', async (t) => {
  const direct = await login(proxy.port);
  t.match(direct, /^08P01: invalid PROXY protocol header/);
  const truncated = await rawReply(proxy.port, v2(4, '203.0.113.7', 1).subarray(0, 20));
  t.match(truncated, /57014|closed/, 'a header that never completes ends at the startup timeout');
});

t.test('a header from an untrusted peer is a forgery: refused', async (t) => {
  const forged = await rawReply(untrusting.port, Buffer.concat([Buffer.from('PROXY TCP4 10.0.0.1 127.0.0.1 5555 6432\r\n'), serialize.startup({ user: 'alice', database: 'postgres' })]));
  t.match(forged, /08P01 PROXY protocol header from a peer not in proxy_protocol\.trusted/);
  t.equal(await login(untrusting.port), 'ok', 'without a header the untrusted peer is an ordinary client');
});

/** Sends bytes, returns "CODE message" of the first ErrorResponse, or "closed". */
function rawReply(port: number, bytes: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(bytes));
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => (buf = Buffer.concat([buf, d])));
    s.on('close', () => {
      if (buf[0] === 0x45) {
        const f = parseFields(buf.subarray(0, 1 + buf.readInt32BE(1)));
        resolve(`${f.C} ${f.M}`);
      } else resolve('closed');
    });
    s.on('error', () => {});
    setTimeout(() => s.destroy(), 3000);
  });
}
