// Tests for src/auth/scram.ts and src/cli/scram-secret.ts: RFC 7677 vector, PostgreSQL secrets,
// server/client exchanges, malformed messages, channel binding, the client cache and the CLI.

import crypto from 'node:crypto';
import { Readable } from 'node:stream';
import forge from 'node-forge';
import t from 'tap';
import {
  ScramClientError,
  ScramClientSession,
  ScramServerSession,
  clearScramClientCache,
  makeScramSecret,
  parseScramSecret,
  preparePassword,
  scramClientCacheStats,
  tlsServerEndPointHash,
  type ScramFailure,
  type ScramSecret,
} from '../src/auth/scram.js';
import { runScramSecret } from '../src/cli/scram-secret.js';

const fakeSaltKey = crypto.randomBytes(32);

// RFC 7677 §3
const RFC = {
  password: 'pencil',
  clientNonce: 'rOprNGfwEbeRWgbNEkqO',
  serverNonceSuffix: '%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0',
  salt: 'W22ZaJ0SNY7soEsUEjb6gQ==',
  clientFirst: 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO',
  serverFirst: 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096',
  clientFinal:
    'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
  serverFinal: 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
};

// Secret PostgreSQL's regression suite stores for the empty password (password.sql).
const PG_EMPTY_PASSWORD_SECRET =
  'SCRAM-SHA-256$4096:hpFyHTUsSWcR7O9P$LgZFIt6Oqdo27ZFKbZ2nV+vtnYM995pDh9ca6WSi120=:qVV5NeluNfUPkwm7Vqat25RjSPLkGeoZBQs6wVv+um4=';
const PG_SECRET =
  'SCRAM-SHA-256$4096:VLK4RMaQLCvNtQ==$6YtlR4t69SguDiwFvbVgVZtuz6gpJQQqUMZ7IQJK5yI=:ps75jrHeYU4lXCcXI4O8oIdJ3eO8o2jirjruw9phBTo=';

async function secretFor(password: string, iterations = 4096): Promise<ScramSecret> {
  const s = parseScramSecret(await makeScramSecret(password, { iterations }));
  if (s === null) throw new Error('makeScramSecret produced an unparseable secret');
  return s;
}

function server(secret: ScramSecret | null, extra: Partial<ConstructorParameters<typeof ScramServerSession>[0]> = {}) {
  return new ScramServerSession({ secret, fakeSaltKey, username: 'alice', ...extra });
}

/** Full exchange; returns the server's verdict and the client's check of server-final. */
async function login(
  srv: ScramServerSession,
  cli: ScramClientSession,
  mechanism = cli.mechanism,
): Promise<{ ok: boolean; failure?: ScramFailure; serverVerified?: boolean }> {
  const first = srv.start(mechanism, cli.clientFirst());
  if (!first.ok) return { ok: false, failure: first.failure };
  const fin = srv.finish(await cli.handleServerFirst(first.serverFirst));
  if (!fin.ok) return { ok: false, failure: fin.failure };
  return { ok: true, serverVerified: cli.verifyServerFinal(fin.serverFinal) };
}

function saltOf(serverFirst: string): string {
  return /,s=([^,]+),/.exec(serverFirst)![1]!;
}

t.test('RFC 7677 test vector, server side', async (t) => {
  const secret = parseScramSecret(
    await makeScramSecret(RFC.password, { iterations: 4096, salt: Buffer.from(RFC.salt, 'base64') }),
  )!;
  const srv = server(secret, { username: 'user', nonceSuffix: RFC.serverNonceSuffix });
  t.same(srv.start('SCRAM-SHA-256', RFC.clientFirst), { ok: true, serverFirst: RFC.serverFirst });
  t.same(srv.finish(RFC.clientFinal), { ok: true, serverFinal: RFC.serverFinal });
});

t.test('RFC 7677 test vector, client side', async (t) => {
  const cli = new ScramClientSession(RFC.password, { username: 'user', nonce: RFC.clientNonce });
  t.equal(cli.mechanism, 'SCRAM-SHA-256');
  t.equal(cli.clientFirst(), RFC.clientFirst);
  t.equal(await cli.handleServerFirst(RFC.serverFirst), RFC.clientFinal);
  t.equal(cli.verifyServerFinal(RFC.serverFinal), true);
});

t.test('makeScramSecret reproduces a PostgreSQL-generated secret', async (t) => {
  const salt = Buffer.from('hpFyHTUsSWcR7O9P', 'base64');
  t.equal(await makeScramSecret('', { salt, iterations: 4096 }), PG_EMPTY_PASSWORD_SECRET);
});

t.test('makeScramSecret defaults and validation', async (t) => {
  const s = parseScramSecret(await makeScramSecret('secret'))!;
  t.equal(s.iterations, 4096);
  t.equal(s.salt.length, 16);
  const again = parseScramSecret(await makeScramSecret('secret'))!;
  t.not(s.salt.toString('hex'), again.salt.toString('hex'), 'fresh random salt each time');
  t.equal(parseScramSecret(await makeScramSecret('secret', { iterations: 1 }))!.iterations, 1);
  await t.rejects(makeScramSecret('x', { iterations: 0 }), RangeError);
  await t.rejects(makeScramSecret('x', { iterations: 1.5 }), RangeError);
  await t.rejects(makeScramSecret('x', { salt: Buffer.alloc(0) }), RangeError);
  await t.rejects(makeScramSecret('x'.repeat(1025)), RangeError, 'over PostgreSQL’s 1024-byte limit');
});

t.test('parseScramSecret', async (t) => {
  const made = await makeScramSecret('hunter2', { iterations: 10000 });
  const parsed = parseScramSecret(made)!;
  t.equal(parsed.iterations, 10000);
  t.equal(parsed.storedKey.length, 32);
  t.equal(parsed.serverKey.length, 32);
  t.match(made, /^SCRAM-SHA-256\$10000:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$/);

  const pg = parseScramSecret(PG_SECRET)!;
  t.equal(pg.iterations, 4096);
  t.equal(pg.salt.toString('base64'), 'VLK4RMaQLCvNtQ==');
  t.equal(pg.storedKey.toString('base64'), '6YtlR4t69SguDiwFvbVgVZtuz6gpJQQqUMZ7IQJK5yI=');

  const k = '6YtlR4t69SguDiwFvbVgVZtuz6gpJQQqUMZ7IQJK5yI=';
  const malformed = [
    '',
    'md5cd3578025fe2c3d7ed1b9a9b26238b70',
    'SCRAM-SHA-256',
    `SCRAM-SHA-1$4096:VLK4RMaQLCvNtQ==$${k}:${k}`,
    `scram-sha-256$4096:VLK4RMaQLCvNtQ==$${k}:${k}`,
    `SCRAM-SHA-256$4096:VLK4RMaQLCvNtQ==$${k}`, // no ServerKey
    `SCRAM-SHA-256$4096$${k}:${k}`, // no salt
    `SCRAM-SHA-256$:VLK4RMaQLCvNtQ==$${k}:${k}`, // no iterations
    `SCRAM-SHA-256$0:VLK4RMaQLCvNtQ==$${k}:${k}`,
    `SCRAM-SHA-256$-1:VLK4RMaQLCvNtQ==$${k}:${k}`,
    `SCRAM-SHA-256$4096x:VLK4RMaQLCvNtQ==$${k}:${k}`,
    `SCRAM-SHA-256$${'9'.repeat(40)}:VLK4RMaQLCvNtQ==$${k}:${k}`, // overflows
    `SCRAM-SHA-256$2147483648:VLK4RMaQLCvNtQ==$${k}:${k}`,
    `SCRAM-SHA-256$4096:VLK4RMaQLCvNtQ=$${k}:${k}`, // bad padding
    `SCRAM-SHA-256$4096:VLK4RMaQ*CvNtQ==$${k}:${k}`, // bad character
    `SCRAM-SHA-256$4096:VLK4RMaQLCvNtQ==$${k.slice(0, -4)}:${k}`, // StoredKey 30 bytes
    `SCRAM-SHA-256$4096:VLK4RMaQLCvNtQ==$${k}:${k}AAAA`, // ServerKey 35 bytes
    `SCRAM-SHA-256$4096:VLK4RMaQLCvNtQ==$${k}:${k}$extra`,
    ` ${PG_SECRET}`,
    `${PG_SECRET}\n`,
  ];
  for (const s of malformed) t.equal(parseScramSecret(s), null, `rejects ${JSON.stringify(s.slice(0, 60))}`);

  // From PostgreSQL's password.sql: leading zeros in the iteration count are still 4096.
  t.equal(parseScramSecret(`SCRAM-SHA-256$${'0'.repeat(500)}4096:wNFxNSk1hAXBkgub8py3bg==$${k}:${k}`)?.iterations, 4096);
});

t.test('client and server agree; wrong password is an auth failure', async (t) => {
  const secret = await secretFor('correct horse');
  const ok = await login(server(secret), new ScramClientSession('correct horse'));
  t.same(ok, { ok: true, serverVerified: true });

  const bad = await login(server(secret), new ScramClientSession('battery staple'));
  t.same(bad, { ok: false, failure: { kind: 'auth' } });

  const srv = server(secret);
  t.same(srv.mechanisms(), ['SCRAM-SHA-256']);
  const first = srv.start('SCRAM-SHA-256', 'n,,n=,r=abc');
  t.ok(first.ok);
  if (first.ok) {
    t.match(first.serverFirst, /^r=abc[A-Za-z0-9+/]{24},s=[A-Za-z0-9+/=]+,i=4096$/, '18 random nonce bytes');
  }
});

t.test('server-final from an impostor is rejected by the client', async (t) => {
  const secret = await secretFor('pw');
  const srv = server(secret);
  const cli = new ScramClientSession('pw');
  const first = srv.start('SCRAM-SHA-256', cli.clientFirst());
  if (!first.ok) throw new Error('start failed');
  const fin = srv.finish(await cli.handleServerFirst(first.serverFirst));
  if (!fin.ok) throw new Error('finish failed');
  const tampered = fin.serverFinal.slice(0, 2) + Buffer.alloc(32, 1).toString('base64');
  t.equal(cli.verifyServerFinal(tampered), false);

  for (const final of ['v=', 'v=!!!!', 'x=abc', `${fin.serverFinal},x=1`, 'e=invalid-proof']) {
    const c = new ScramClientSession('pw');
    const s = server(secret);
    const f = s.start('SCRAM-SHA-256', c.clientFirst());
    if (!f.ok) throw new Error('start failed');
    await c.handleServerFirst(f.serverFirst);
    t.equal(c.verifyServerFinal(final), false, `rejects ${final}`);
    if (final.startsWith('e=')) t.equal(c.serverError, 'invalid-proof');
  }
});

t.test('unknown user: same-looking exchange that always fails', async (t) => {
  const cli = new ScramClientSession('whatever');
  t.same(await login(server(null), cli), { ok: false, failure: { kind: 'auth' } });

  const a1 = server(null, { username: 'mallory' }).start('SCRAM-SHA-256', 'n,,n=,r=abc');
  const a2 = server(null, { username: 'mallory' }).start('SCRAM-SHA-256', 'n,,n=,r=def');
  const b = server(null, { username: 'trent' }).start('SCRAM-SHA-256', 'n,,n=,r=abc');
  if (!a1.ok || !a2.ok || !b.ok) throw new Error('start failed');
  t.equal(saltOf(a1.serverFirst), saltOf(a2.serverFirst), 'stable salt per username');
  t.not(saltOf(a1.serverFirst), saltOf(b.serverFirst), 'different usernames, different salts');
  t.equal(Buffer.from(saltOf(a1.serverFirst), 'base64').length, 16);
  t.match(a1.serverFirst, /,i=4096$/);

  const otherProcess = new ScramServerSession({
    secret: null,
    fakeSaltKey: crypto.randomBytes(32),
    username: 'mallory',
  }).start('SCRAM-SHA-256', 'n,,n=,r=abc');
  if (!otherProcess.ok) throw new Error('start failed');
  t.not(saltOf(otherProcess.serverFirst), saltOf(a1.serverFirst), 'salt depends on the process key');
});

t.test('malformed client-first-message', async (t) => {
  const secret = await secretFor('pw', 1);
  const cases: Array<[string, string, ScramFailure | RegExp]> = [
    ['SCRAM-SHA-1', 'n,,n=,r=abc', /invalid SASL authentication mechanism/],
    ['SCRAM-SHA-256-PLUS', 'n,,n=,r=abc', /invalid SASL authentication mechanism/], // not offered
    ['SCRAM-SHA-256', '', /unexpected channel-binding flag "end of string"/],
    ['SCRAM-SHA-256', 'x,,n=,r=abc', /unexpected channel-binding flag "x"/],
    ['SCRAM-SHA-256', 'n', /comma expected/],
    ['SCRAM-SHA-256', 'n,a=bob,n=,r=abc', /client uses authorization identity, but it is not supported/],
    ['SCRAM-SHA-256', 'n,x,n=,r=abc', /unexpected attribute "x" in client-first-message/],
    ['SCRAM-SHA-256', 'n,,m=ext,n=,r=abc', /client requires an unsupported SCRAM extension/],
    ['SCRAM-SHA-256', 'n,,r=abc', /^malformed SCRAM message \(attribute "n" expected\)$/],
    ['SCRAM-SHA-256', 'n,,n=', /^malformed SCRAM message \(attribute "r" expected\)$/],
    ['SCRAM-SHA-256', 'n,,n=,x=abc', /^malformed SCRAM message \(attribute "r" expected\)$/],
    ['SCRAM-SHA-256', 'n,,n=,rabc', /expected character "=" for attribute "r"/],
    ['SCRAM-SHA-256', 'n,,n=,r=', /empty nonce/],
    ['SCRAM-SHA-256', 'n,,n=,r=ab c', /non-printable characters in SCRAM nonce/],
    ['SCRAM-SHA-256', 'n,,n=,r=ab\u00e9', /non-printable characters in SCRAM nonce/],
    ['SCRAM-SHA-256', 'n,,n=,r=abc,1=x', /attribute expected/],
    ['SCRAM-SHA-256', 'p=tls-server-end-point,,n=,r=abc', /without channel binding, but the SCRAM message includes channel binding data/],
  ];
  for (const [mech, msg, want] of cases) {
    const r = server(secret).start(mech, msg);
    t.equal(r.ok, false, `${mech} ${JSON.stringify(msg)} fails`);
    if (r.ok) continue;
    if (want instanceof RegExp) {
      t.equal(r.failure.kind, 'protocol');
      t.match((r.failure as { message: string }).message, want);
    } else t.same(r.failure, want);
  }

  // Accepted variations: a user name (ignored), extensions after the nonce.
  t.ok(server(secret).start('SCRAM-SHA-256', 'n,,n=someone=2Celse,r=abc').ok);
  t.ok(server(secret).start('SCRAM-SHA-256', 'n,,n=,r=abc,x=ext').ok);
  t.ok(server(secret).start('SCRAM-SHA-256', 'y,,n=,r=abc').ok, 'y,, when PLUS was not offered');
});

t.test('malformed client-final-message', async (t) => {
  const secret = await secretFor('pw', 1);
  /** Start an exchange with a real client and return the pieces for forging the final. */
  async function prepared() {
    const srv = server(secret);
    const cli = new ScramClientSession('pw');
    const first = srv.start('SCRAM-SHA-256', cli.clientFirst());
    if (!first.ok) throw new Error('start failed');
    const good = await cli.handleServerFirst(first.serverFirst);
    const nonce = /^r=([^,]+)/.exec(first.serverFirst)![1]!;
    const proof = /,p=(.+)$/.exec(good)![1]!;
    return { srv, good, nonce, proof };
  }

  const cases: Array<[string, (p: { good: string; nonce: string; proof: string }) => string, ScramFailure | RegExp]> = [
    ['missing c=', (p) => `r=${p.nonce},p=${p.proof}`, /attribute "c" expected/],
    ['missing r=', (p) => `c=biws,p=${p.proof}`, /^malformed SCRAM message \(attribute "r" expected\)$/],
    ['missing p=', (p) => `c=biws,r=${p.nonce}`, /attribute "p" expected/],
    ['wrong nonce', (p) => `c=biws,r=${p.nonce}x,p=${p.proof}`, /invalid SCRAM response \(nonce does not match\)/],
    ['client nonce only', (p) => `c=biws,r=${p.nonce.slice(0, 10)},p=${p.proof}`, /nonce does not match/],
    ['bad base64 in c=', (p) => `c=biw*,r=${p.nonce},p=${p.proof}`, /invalid base64 in channel-binding attribute/],
    ['c= for another gs2 header', (p) => `c=eSws,r=${p.nonce},p=${p.proof}`, /unexpected SCRAM channel-binding attribute/],
    ['bad base64 proof', (p) => `c=biws,r=${p.nonce},p=${p.proof.slice(1)}`, /malformed proof/],
    ['short proof', (p) => `c=biws,r=${p.nonce},p=AAAA`, /malformed proof/],
    ['attribute after proof', (p) => `${p.good},x=1`, /garbage found at the end of client-final-message/],
    ['trailing comma', (p) => `${p.good},`, /garbage found at the end/],
    ['flipped proof', (p) => `c=biws,r=${p.nonce},p=${Buffer.alloc(32, 7).toString('base64')}`, { kind: 'auth' }],
  ];
  for (const [name, forge, want] of cases) {
    const p = await prepared();
    const r = p.srv.finish(forge(p));
    t.equal(r.ok, false, `${name} fails`);
    if (r.ok) continue;
    if (want instanceof RegExp) {
      t.equal(r.failure.kind, 'protocol', `${name} is a protocol failure`);
      t.match((r.failure as { message: string }).message, want, name);
    } else t.same(r.failure, want, name);
  }

  // Extensions between r= and p= are allowed and are part of the AuthMessage.
  const p = await prepared();
  t.same(p.srv.finish(p.good.replace(',p=', ',x=ext,p=')), { ok: false, failure: { kind: 'auth' } });
  const q = await prepared();
  t.ok(q.srv.finish(q.good).ok, 'the unmodified message succeeds');
});

t.test('steps out of order are programming errors', async (t) => {
  const secret = await secretFor('pw', 1);
  const srv = server(secret);
  t.throws(() => srv.finish('c=biws'), /called in state "initial"/);
  t.ok(srv.start('SCRAM-SHA-256', 'n,,n=,r=abc').ok);
  t.throws(() => srv.start('SCRAM-SHA-256', 'n,,n=,r=abc'), /called in state "challenged"/);
  srv.finish('c=biws,r=x,p=AAAA');
  t.throws(() => srv.finish('c=biws'), /called in state "done"/);

  const failed = server(secret);
  t.equal(failed.start('SCRAM-SHA-256', 'bogus').ok, false);
  t.throws(() => failed.finish('c=biws'), /called in state "done"/, 'no finish after a failed start');

  const cli = new ScramClientSession('pw');
  await t.rejects(cli.handleServerFirst('r=x,s=AAAA,i=1'), /called in state "initial"/);
  t.throws(() => cli.verifyServerFinal('v=AAAA'), /called in state "initial"/);
  cli.clientFirst();
  t.throws(() => cli.clientFirst(), /called in state "first-sent"/);
});

t.test('client rejects a bad server-first-message', async (t) => {
  const cases: Array<[string, (nonce: string) => string, RegExp]> = [
    ['nonce not extending ours', () => 'r=someoneelse,s=AAAAAAAAAAAAAAAAAAAAAA==,i=4096', /nonce mismatch/],
    ['nonce equal to ours', (n) => `r=${n},s=AAAAAAAAAAAAAAAAAAAAAA==,i=4096`, /nonce mismatch/],
    ['no salt', (n) => `r=${n}xyz,i=4096`, /attribute "s" expected/],
    ['empty salt', (n) => `r=${n}xyz,s=,i=4096`, /invalid salt/],
    ['bad salt', (n) => `r=${n}xyz,s=AAA*,i=4096`, /invalid salt/],
    ['zero iterations', (n) => `r=${n}xyz,s=AAAA,i=0`, /invalid iteration count/],
    ['negative iterations', (n) => `r=${n}xyz,s=AAAA,i=-5`, /invalid iteration count/],
    ['huge iterations', (n) => `r=${n}xyz,s=AAAA,i=99999999999`, /invalid iteration count/],
    ['garbage at end', (n) => `r=${n}xyz,s=AAAA,i=1,x=1`, /garbage at end/],
    ['mandatory extension', (n) => `m=x,r=${n}xyz,s=AAAA,i=1`, /unsupported SCRAM extension/],
  ];
  for (const [name, make, want] of cases) {
    const cli = new ScramClientSession('pw', { nonce: 'clientnonce' });
    cli.clientFirst();
    await t.rejects(cli.handleServerFirst(make('clientnonce')), want, name);
    const err = await cli.handleServerFirst(make('clientnonce')).catch((e: unknown) => e);
    t.type(err, Error, `${name}: a second call is refused`);
    t.notOk(err instanceof ScramClientError, `${name}: the session is over after a failure`);
  }
  const ok = new ScramClientSession('pw', { nonce: 'clientnonce' });
  ok.clientFirst();
  t.match(await ok.handleServerFirst('r=clientnonceXYZ,s=AAAA,i=1'), /^c=biws,r=clientnonceXYZ,p=[A-Za-z0-9+/]{43}=$/);
});

t.test('channel binding (tls-server-end-point)', async (t) => {
  const secret = await secretFor('pw', 1);
  const cb = { type: 'tls-server-end-point' as const, data: crypto.randomBytes(32) };
  const other = { type: 'tls-server-end-point' as const, data: crypto.randomBytes(32) };

  t.same(server(secret, { channelBinding: cb }).mechanisms(), ['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']);

  const cli = new ScramClientSession('pw', { channelBinding: cb });
  t.equal(cli.mechanism, 'SCRAM-SHA-256-PLUS');
  t.same(await login(server(secret, { channelBinding: cb }), cli), { ok: true, serverVerified: true });

  const mitm = new ScramClientSession('pw', { channelBinding: other });
  t.same(await login(server(secret, { channelBinding: cb }), mitm), { ok: false, failure: { kind: 'auth' } });

  // Plain SCRAM is still allowed when PLUS is offered, with "n,,".
  t.same(await login(server(secret, { channelBinding: cb }), new ScramClientSession('pw')), {
    ok: true,
    serverVerified: true,
  });

  // "y,,": the client can bind but thinks we cannot. With PLUS offered that is a downgrade.
  t.same(server(secret, { channelBinding: cb }).start('SCRAM-SHA-256', 'y,,n=,r=abc'), {
    ok: false,
    failure: { kind: 'auth' },
  });

  // "p=" needs the PLUS mechanism; PLUS needs "p=".
  const pWithoutPlus = server(secret, { channelBinding: cb }).start('SCRAM-SHA-256', 'p=tls-server-end-point,,n=,r=abc');
  t.match(pWithoutPlus, { ok: false, failure: { kind: 'protocol', message: /without channel binding/ } });
  const plusWithoutP = server(secret, { channelBinding: cb }).start('SCRAM-SHA-256-PLUS', 'n,,n=,r=abc');
  t.match(plusWithoutP, { ok: false, failure: { kind: 'protocol', message: /does not include channel binding data/ } });
  const wrongType = server(secret, { channelBinding: cb }).start('SCRAM-SHA-256-PLUS', 'p=tls-unique,,n=,r=abc');
  t.match(wrongType, { ok: false, failure: { kind: 'protocol', message: /unsupported SCRAM channel-binding type "tls-unique"/ } });

  // c= carrying only the gs2 header (no binding data) under PLUS.
  const srv = server(secret, { channelBinding: cb });
  const c2 = new ScramClientSession('pw', { channelBinding: cb });
  const first = srv.start('SCRAM-SHA-256-PLUS', c2.clientFirst());
  if (!first.ok) throw new Error('start failed');
  const final = await c2.handleServerFirst(first.serverFirst);
  const headerOnly = Buffer.from('p=tls-server-end-point,,').toString('base64');
  t.same(srv.finish(final.replace(/^c=[^,]+/, `c=${headerOnly}`)), { ok: false, failure: { kind: 'auth' } });
});

t.test('client SaltedPassword cache', async (t) => {
  clearScramClientCache();
  const secret = await secretFor('cached pw', 4096);
  t.same(await login(server(secret), new ScramClientSession('cached pw')), { ok: true, serverVerified: true });
  t.match(scramClientCacheStats(), { hits: 0, misses: 1, size: 1 });
  t.same(await login(server(secret), new ScramClientSession('cached pw')), { ok: true, serverVerified: true });
  t.match(scramClientCacheStats(), { hits: 1, misses: 1, size: 1 });

  // A different password, salt or iteration count is a different entry.
  await login(server(secret), new ScramClientSession('other pw'));
  await login(server(await secretFor('cached pw', 4096)), new ScramClientSession('cached pw'));
  await login(server(await secretFor('cached pw', 2)), new ScramClientSession('cached pw'));
  t.match(scramClientCacheStats(), { hits: 1, misses: 4, size: 4 });

  // Concurrent logins share one derivation.
  clearScramClientCache();
  await Promise.all([1, 2, 3].map(() => login(server(secret), new ScramClientSession('cached pw'))));
  t.match(scramClientCacheStats(), { hits: 2, misses: 1, size: 1 });

  // Bounded.
  clearScramClientCache();
  for (let i = 0; i < 300; i++) {
    const c = new ScramClientSession('p', { nonce: 'n' });
    c.clientFirst();
    await c.handleServerFirst(`r=nx,s=${Buffer.from(String(i)).toString('base64')},i=1`);
  }
  t.equal(scramClientCacheStats().size, 256);
  clearScramClientCache();
});

t.test('preparePassword (SASLprep as PostgreSQL applies it)', async (t) => {
  const hex = (s: string) => preparePassword(s).toString('hex');
  t.equal(hex('pencil'), Buffer.from('pencil').toString('hex'), 'ASCII unchanged');
  t.equal(hex('a\u0007b'), Buffer.from('a\u0007b').toString('hex'), 'ASCII control characters unchanged, as PostgreSQL');
  t.equal(preparePassword('\uff50\uff41\uff53\uff53').toString(), 'pass', 'NFKC folds full-width letters');
  t.equal(preparePassword('I\u00adX').toString(), 'IX', 'soft hyphen maps to nothing');
  t.equal(preparePassword('a\u00a0b').toString(), 'a b', 'non-ASCII space maps to space');
  t.equal(preparePassword('\u2168').toString(), 'IX', 'roman numeral nine');
  t.equal(preparePassword('caf\u0065\u0301').toString(), 'caf\u00e9', 'composed');
  t.equal(preparePassword('\u00ad').toString(), '\u00ad', 'empty after mapping: raw bytes');
  t.equal(preparePassword('\u00e9\u0007').toString(), '\u00e9\u0007', 'prohibited control char: raw bytes');
  t.equal(preparePassword('\ue000\uff41').toString(), '\ue000\uff41', 'private use: raw bytes');
  t.equal(preparePassword('\u05d0a').toString(), '\u05d0a', 'RandAL with L: raw bytes');
  t.equal(preparePassword('\u05d01').toString(), '\u05d01', 'RandAL not at both ends: raw bytes');
  t.equal(preparePassword('\u05d01\u05d1').toString(), '\u05d01\u05d1', 'valid RTL string');
  t.throws(() => preparePassword('\ud800'), TypeError);
  t.throws(() => preparePassword('\u00e9'.repeat(513)), RangeError, '1026 bytes');
  t.doesNotThrow(() => preparePassword('\u00e9'.repeat(512)), '1024 bytes');

  // The client and makeScramSecret agree on non-ASCII passwords.
  const secret = await secretFor('\uff50\u00e4ss', 1);
  t.same(await login(server(secret), new ScramClientSession('\uff50\u00e4ss')), { ok: true, serverVerified: true });
  t.same(await login(server(secret), new ScramClientSession('p\u0061\u0308ss')), { ok: true, serverVerified: true });
});

// --- tls-server-end-point ---------------------------------------------------------------------

function der(tag: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  const n = body.length;
  const len = n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]);
  return Buffer.concat([Buffer.from([tag]), len, body]);
}

function oid(dotted: string): Buffer {
  const [a, b, ...rest] = dotted.split('.').map(Number);
  const bytes = [a! * 40 + b!];
  for (const v of rest) {
    const enc = [v & 0x7f];
    for (let x = v >> 7; x > 0; x >>= 7) enc.unshift((x & 0x7f) | 0x80);
    bytes.push(...enc);
  }
  return der(0x06, Buffer.from(bytes));
}

/** A certificate-shaped DER with the given AlgorithmIdentifier (enough for the hash choice). */
function fakeCert(algId: Buffer): Buffer {
  const tbs = der(0x30, der(0x02, Buffer.from([1])), Buffer.alloc(200, 0x04).fill(0x05, 0, 1));
  return der(0x30, tbs, algId, der(0x03, Buffer.from([0, 1, 2, 3])));
}

let rsaKey: forge.pki.rsa.PrivateKey | undefined;
function forgeCert(md: forge.md.MessageDigest): Buffer {
  if (rsaKey === undefined) {
    const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    rsaKey = forge.pki.privateKeyFromPem(privateKey.export({ type: 'pkcs1', format: 'pem' }).toString());
  }
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.setRsaPublicKey(rsaKey.n, rsaKey.e);
  cert.serialNumber = '01';
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + 3_600_000);
  const attrs = [{ name: 'commonName', value: 'pgbastion-test' }];
  cert.setSubject(attrs);
  cert.setIssuer(attrs);
  cert.sign(rsaKey, md);
  return Buffer.from(forge.asn1.toDer(forge.pki.certificateToAsn1(cert)).getBytes(), 'binary');
}

const h = (alg: string, data: Buffer) => crypto.createHash(alg).update(data).digest();

t.test('tlsServerEndPointHash on real RSA certificates', async (t) => {
  const cases: Array<[string, () => forge.md.MessageDigest, string]> = [
    ['md5', () => forge.md.md5.create(), 'sha256'],
    ['sha1', () => forge.md.sha1.create(), 'sha256'],
    ['sha256', () => forge.md.sha256.create(), 'sha256'],
    ['sha384', () => forge.md.sha384.create(), 'sha384'],
    ['sha512', () => forge.md.sha512.create(), 'sha512'],
  ];
  for (const [name, md, expected] of cases) {
    const cert = forgeCert(md());
    t.equal(new crypto.X509Certificate(cert).subject, 'CN=pgbastion-test', `${name}: a real certificate`);
    t.same(tlsServerEndPointHash(cert), h(expected, cert), `${name}WithRSAEncryption hashes with ${expected}`);
  }
});

t.test('tlsServerEndPointHash on other signature algorithms', async (t) => {
  const alg = (o: string, params?: Buffer) => der(0x30, oid(o), ...(params ? [params] : []));
  const ecdsa384 = fakeCert(alg('1.2.840.10045.4.3.3'));
  t.same(tlsServerEndPointHash(ecdsa384), h('sha384', ecdsa384), 'ecdsa-with-SHA384');
  const ecdsa1 = fakeCert(alg('1.2.840.10045.4.1'));
  t.same(tlsServerEndPointHash(ecdsa1), h('sha256', ecdsa1), 'ecdsa-with-SHA1 upgrades to sha256');

  const pssParams = (hashOid: string) => der(0x30, der(0xa0, der(0x30, oid(hashOid), der(0x05, Buffer.alloc(0)))));
  const pss512 = fakeCert(alg('1.2.840.113549.1.1.10', pssParams('2.16.840.1.101.3.4.2.3')));
  t.same(tlsServerEndPointHash(pss512), h('sha512', pss512), 'RSASSA-PSS with SHA-512');
  const pssDefault = fakeCert(alg('1.2.840.113549.1.1.10', der(0x30)));
  t.same(tlsServerEndPointHash(pssDefault), h('sha256', pssDefault), 'RSASSA-PSS default (SHA-1) upgrades');

  t.throws(() => tlsServerEndPointHash(fakeCert(alg('1.3.101.112'))), /unsupported signature algorithm 1\.3\.101\.112/);
  t.throws(() => tlsServerEndPointHash(Buffer.from('not a certificate')), /malformed DER/);
  t.throws(() => tlsServerEndPointHash(ecdsa384.subarray(0, 40)), /malformed DER/);

  // A caller-provided algorithm name wins over the certificate.
  t.same(tlsServerEndPointHash(ecdsa384, 'sha512'), h('sha512', ecdsa384));
  t.same(tlsServerEndPointHash(ecdsa384, 'ecdsa-with-SHA224'), h('sha224', ecdsa384));
  t.same(tlsServerEndPointHash(ecdsa384, 'RSA-SHA1'), h('sha256', ecdsa384));
  t.same(tlsServerEndPointHash(ecdsa384, 'SHA-384'), h('sha384', ecdsa384));
  t.throws(() => tlsServerEndPointHash(ecdsa384, 'ed25519'), /no hash known/);
});

// --- CLI --------------------------------------------------------------------------------------

async function cli(args: string[], input: string | Buffer | Array<string | Buffer>) {
  const out: string[] = [];
  const err: string[] = [];
  const chunks = Array.isArray(input) ? input : [input];
  const code = await runScramSecret(args, Readable.from(chunks), (s) => out.push(s), (s) => err.push(s));
  return { code, out, err };
}

t.test('pgbastion scram-secret', async (t) => {
  const r = await cli([], 'hunter2\n');
  t.equal(r.code, 0);
  t.same(r.err, []);
  t.equal(r.out.length, 1);
  const secret = parseScramSecret(r.out[0]!)!;
  t.ok(secret, 'prints a parseable secret');
  t.equal(secret.iterations, 4096);
  t.same(await login(server(secret), new ScramClientSession('hunter2')), { ok: true, serverVerified: true }, 'newline stripped');

  const crlf = await cli(['--iterations', '8'], ['hun', 'ter2\r\n']);
  t.equal(crlf.code, 0);
  const s2 = parseScramSecret(crlf.out[0]!)!;
  t.equal(s2.iterations, 8);
  t.same(await login(server(s2), new ScramClientSession('hunter2')), { ok: true, serverVerified: true }, 'CRLF stripped');

  const twoNewlines = await cli(['--iterations=2'], Buffer.from('pw\n\n'));
  t.equal(twoNewlines.code, 0);
  const s3 = parseScramSecret(twoNewlines.out[0]!)!;
  t.equal(s3.iterations, 2);
  t.same(await login(server(s3), new ScramClientSession('pw\n')), { ok: true, serverVerified: true }, 'only one newline stripped');

  for (const input of ['', '\n', '\r\n']) {
    const e = await cli([], input);
    t.equal(e.code, 1, `empty password ${JSON.stringify(input)} refused`);
    t.match(e.err.join('\n'), /empty password/);
    t.same(e.out, []);
  }

  for (const args of [['--iterations'], ['--iterations', '0'], ['--iterations', '-1'], ['--iterations', '1.5'], ['--iterations', 'abc'], ['--iterations=', 'x'], ['--iterations', '2147483648']]) {
    const e = await cli(args, 'pw\n');
    t.equal(e.code, 1, `${args.join(' ')} refused`);
    t.match(e.err.join('\n'), /--iterations/);
    t.same(e.out, []);
  }

  const unknown = await cli(['--password', 'pw'], 'pw\n');
  t.equal(unknown.code, 1);
  t.match(unknown.err.join('\n'), /unknown argument "--password"/);

  const help = await cli(['--help'], '');
  t.equal(help.code, 0);
  t.match(help.out.join('\n'), /usage: pgbastion scram-secret/);

  const notUtf8 = await cli([], Buffer.from([0x70, 0xff, 0x0a]));
  t.equal(notUtf8.code, 1);
  t.match(notUtf8.err.join('\n'), /not valid UTF-8/);

  const tooLong = await cli([], 'x'.repeat(2000));
  t.equal(tooLong.code, 1);
  t.match(tooLong.err.join('\n'), /password too long/);

  const huge = await cli([], Buffer.alloc(100 * 1024, 0x61));
  t.equal(huge.code, 1);
  t.match(huge.err.join('\n'), /input longer than/);
});
