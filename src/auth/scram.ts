// SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it: stored secrets, the server side
// of a client's login, the client side of pgbastion's own upstream login. Pure code, no I/O.

import crypto from 'node:crypto';
import { promisify } from 'node:util';
import { secureRandomBytes } from './random-pool.js';

const pbkdf2 = promisify(crypto.pbkdf2);

const KEY_LEN = 32; // SHA-256 output; StoredKey, ServerKey, proofs and signatures
export const DEFAULT_ITERATIONS = 4096; // PostgreSQL's scram_iterations default
const DEFAULT_SALT_LEN = 16; // PostgreSQL's SCRAM_DEFAULT_SALT_LEN
const RAW_NONCE_LEN = 18; // PostgreSQL's SCRAM_RAW_NONCE_LEN
const MAX_ITERATIONS = 0x7fffffff; // iterations are a C int in PostgreSQL
const MAX_PASSWORD_BYTES = 1024; // PostgreSQL's MAX_PASSWORD_LENGTH: longer passwords are refused
const GS2_CBIND_HEADER = 'p=tls-server-end-point,,';

const MECH = 'SCRAM-SHA-256';
const MECH_PLUS = 'SCRAM-SHA-256-PLUS';

// ---------------------------------------------------------------------------------------------
// Stored secrets

export interface ScramSecret {
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

/**
 * Parse a pg_authid secret `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
 * Returns null for anything malformed: bad base64, empty salt, keys that are not 32 bytes,
 * iterations outside 1..2^31-1 (PostgreSQL also treats an overflowing count as "not a secret").
 */
export function parseScramSecret(s: string): ScramSecret | null {
  const m = /^SCRAM-SHA-256\$([0-9]+):([^$:]+)\$([^$:]+):([^$:]+)$/.exec(s);
  if (m === null) return null;
  const iterations = parseIterations(m[1]!);
  const salt = decodeBase64(m[2]!);
  const storedKey = decodeBase64(m[3]!);
  const serverKey = decodeBase64(m[4]!);
  if (iterations === null || salt === null || storedKey === null || serverKey === null) return null;
  if (salt.length === 0 || storedKey.length !== KEY_LEN || serverKey.length !== KEY_LEN) return null;
  return { iterations, salt, storedKey, serverKey };
}

/** Format a secret the way PostgreSQL stores it in pg_authid.rolpassword. */
export function formatScramSecret(secret: ScramSecret): string {
  return (
    `SCRAM-SHA-256$${secret.iterations}:${secret.salt.toString('base64')}` +
    `$${secret.storedKey.toString('base64')}:${secret.serverKey.toString('base64')}`
  );
}

/**
 * Build a pg_authid-format secret for `password`, byte-for-byte what PostgreSQL's
 * `ALTER ROLE … PASSWORD` stores for the same salt and iteration count. PBKDF2 runs on the
 * libuv thread pool. The password goes through `preparePassword` (SASLprep, see there).
 * An empty password is hashed like PostgreSQL would; refusing it is the caller's policy.
 */
export async function makeScramSecret(
  password: string,
  opts: { iterations?: number; salt?: Buffer } = {},
): Promise<string> {
  const iterations = opts.iterations ?? DEFAULT_ITERATIONS;
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > MAX_ITERATIONS) {
    throw new RangeError(`SCRAM iterations must be an integer from 1 to ${MAX_ITERATIONS}`);
  }
  const salt = opts.salt ?? crypto.randomBytes(DEFAULT_SALT_LEN);
  if (salt.length === 0) throw new RangeError('SCRAM salt must not be empty');
  const salted = await pbkdf2(preparePassword(password), salt, iterations, KEY_LEN, 'sha256');
  const { storedKey, serverKey } = keysFromSaltedPassword(salted);
  return formatScramSecret({ iterations, salt, storedKey, serverKey });
}

// ---------------------------------------------------------------------------------------------
// SASLprep (RFC 4013), as far as PostgreSQL's pg_saslprep() goes

/**
 * The bytes PostgreSQL hashes for `password`.
 *
 * - Pure ASCII is used unchanged (PostgreSQL short-cuts the same way, control characters
 *   included), so ASCII passwords are exact.
 * - Otherwise: non-ASCII spaces map to U+0020, "commonly mapped to nothing" characters are
 *   dropped, the result is NFKC-normalised, and prohibited characters / bidi rule violations
 *   make SASLprep fail. Like PostgreSQL, the prohibition and bidi checks look at the mapped
 *   string before normalisation.
 * - When SASLprep fails, the raw UTF-8 bytes of the password are used: that is what PostgreSQL
 *   does (server and libpq), so such passwords still work.
 *
 * Approximations for non-ASCII input: JavaScript's `normalize('NFKC')` uses the runtime's
 * Unicode version (PostgreSQL its own tables); "unassigned" is judged by today's Unicode
 * (`\p{Cn}`), not Unicode 3.2 as RFC 3454 Table A.1; and "LCat" (bidi class L) is approximated
 * by letters and spacing marks outside the right-to-left blocks. A password whose SASLprep
 * outcome depends on those differences may not match a secret computed by PostgreSQL.
 *
 * Throws RangeError for passwords PostgreSQL refuses outright (over 1024 bytes) and TypeError
 * for strings that are not valid Unicode (lone surrogates cannot be encoded as UTF-8).
 */
export function preparePassword(password: string): Buffer {
  if (/[\uD800-\uDFFF]/u.test(password)) throw new TypeError('password is not valid Unicode');
  const raw = Buffer.from(password, 'utf8');
  if (raw.length > MAX_PASSWORD_BYTES) throw new RangeError('password too long');
  if (/^[\x00-\x7f]*$/.test(password)) return raw;

  const mapped: number[] = [];
  for (const ch of password) {
    const cp = ch.codePointAt(0)!;
    if (inRanges(cp, NON_ASCII_SPACE)) mapped.push(0x20);
    else if (!inRanges(cp, MAPPED_TO_NOTHING)) mapped.push(cp);
  }
  if (mapped.length === 0) return raw; // PostgreSQL: empty after mapping = prohibited
  for (const cp of mapped) {
    if (inRanges(cp, PROHIBITED) || UNASSIGNED.test(String.fromCodePoint(cp))) return raw;
  }
  if (mapped.some(isRandAL)) {
    if (mapped.some(isL)) return raw;
    if (!isRandAL(mapped[0]!) || !isRandAL(mapped[mapped.length - 1]!)) return raw;
  }
  return Buffer.from(String.fromCodePoint(...mapped).normalize('NFKC'), 'utf8');
}

type Ranges = ReadonlyArray<readonly [number, number]>;

function inRanges(cp: number, ranges: Ranges): boolean {
  for (const [lo, hi] of ranges) if (cp >= lo && cp <= hi) return true;
  return false;
}

// RFC 3454 C.1.2
const NON_ASCII_SPACE: Ranges = [
  [0x00a0, 0x00a0], [0x1680, 0x1680], [0x2000, 0x200b], [0x202f, 0x202f], [0x205f, 0x205f],
  [0x3000, 0x3000],
];
// RFC 3454 B.1
const MAPPED_TO_NOTHING: Ranges = [
  [0x00ad, 0x00ad], [0x034f, 0x034f], [0x1806, 0x1806], [0x180b, 0x180d], [0x200b, 0x200d],
  [0x2060, 0x2060], [0xfe00, 0xfe0f], [0xfeff, 0xfeff],
];
// RFC 4013 §2.3: C.1.2, C.2.1, C.2.2, C.3, C.4, C.5, C.6, C.7, C.8, C.9
const PROHIBITED: Ranges = [
  ...NON_ASCII_SPACE,
  [0x0000, 0x001f], [0x007f, 0x009f], [0x0340, 0x0341], [0x06dd, 0x06dd], [0x070f, 0x070f],
  [0x180e, 0x180e], [0x200c, 0x200f], [0x2028, 0x202e], [0x2060, 0x2063], [0x206a, 0x206f],
  [0x2ff0, 0x2ffb], [0xd800, 0xf8ff], [0xfdd0, 0xfdef], [0xfeff, 0xfeff], [0xfff9, 0xffff],
  [0x1d173, 0x1d17a], [0x1fffe, 0x1ffff], [0x2fffe, 0x2ffff], [0x3fffe, 0x3ffff],
  [0x4fffe, 0x4ffff], [0x5fffe, 0x5ffff], [0x6fffe, 0x6ffff], [0x7fffe, 0x7ffff],
  [0x8fffe, 0x8ffff], [0x9fffe, 0x9ffff], [0xafffe, 0xaffff], [0xbfffe, 0xbffff],
  [0xcfffe, 0xcffff], [0xdfffe, 0xdffff], [0xe0001, 0xe0001], [0xe0020, 0xe007f],
  [0xefffe, 0xeffff], [0xf0000, 0x10ffff],
];
// RFC 3454 D.1 (bidi R and AL)
const RAND_AL: Ranges = [
  [0x05be, 0x05be], [0x05c0, 0x05c0], [0x05c3, 0x05c3], [0x05d0, 0x05ea], [0x05f0, 0x05f4],
  [0x061b, 0x061b], [0x061f, 0x061f], [0x0621, 0x063a], [0x0640, 0x064a], [0x066d, 0x066f],
  [0x0671, 0x06d5], [0x06dd, 0x06dd], [0x06e5, 0x06e6], [0x06fa, 0x06fe], [0x0700, 0x070d],
  [0x0710, 0x0710], [0x0712, 0x072c], [0x0780, 0x07a5], [0x07b1, 0x07b1], [0x200f, 0x200f],
  [0xfb1d, 0xfb1d], [0xfb1f, 0xfb28], [0xfb2a, 0xfb36], [0xfb38, 0xfb3c], [0xfb3e, 0xfb3e],
  [0xfb40, 0xfb41], [0xfb43, 0xfb44], [0xfb46, 0xfbb1], [0xfbd3, 0xfd3d], [0xfd50, 0xfd8f],
  [0xfd92, 0xfdc7], [0xfdf0, 0xfdfc], [0xfe70, 0xfe74], [0xfe76, 0xfefc],
];
const RTL_BLOCKS: Ranges = [
  [0x0590, 0x08ff], [0xfb1d, 0xfdff], [0xfe70, 0xfeff], [0x10800, 0x10fff], [0x1e800, 0x1efff],
];
const UNASSIGNED = /^\p{Cn}$/u;
const LETTER_LIKE = /^[\p{L}\p{Mc}]$/u;

function isRandAL(cp: number): boolean {
  return inRanges(cp, RAND_AL);
}

function isL(cp: number): boolean {
  return LETTER_LIKE.test(String.fromCodePoint(cp)) && !inRanges(cp, RTL_BLOCKS);
}

// ---------------------------------------------------------------------------------------------
// Server side: a client logging in to pgbastion

/**
 * Why a step failed. `protocol`: the SASL message is malformed; send FATAL 08P01 with
 * `message` (PostgreSQL's wording where it has one). `auth`: wrong proof, unknown user or a
 * channel-binding mismatch; send the uniform 28P01 message and say nothing more.
 */
export type ScramFailure = { kind: 'protocol'; message: string } | { kind: 'auth' };

export interface ChannelBinding {
  type: 'tls-server-end-point';
  /** tlsServerEndPointHash() of the certificate the server presented on this connection. */
  data: Buffer;
}

export interface ScramServerOptions {
  /** null = unknown user, or a user without a SCRAM secret: the exchange runs and fails. */
  secret: ScramSecret | null;
  /**
   * What fake secrets for unknown users are derived from (src/auth/mock.ts): the salt key and
   * the iteration count to announce. A bare key announces PostgreSQL's default 4096.
   */
  fakeSaltKey: Buffer | MockScram;
  /** The startup packet's user; the SCRAM `n=` attribute is ignored, as in PostgreSQL. */
  username: string;
  /** Set when the connection is TLS: SCRAM-SHA-256-PLUS is then offered. */
  channelBinding?: ChannelBinding | null;
  /** Random bytes in the server's half of the nonce (default 18, as PostgreSQL). */
  nonceBytes?: number;
  /** @internal Test hook: a fixed server nonce suffix instead of random bytes. */
  nonceSuffix?: string;
}

/** The same for every worker and across restarts of one configuration: see src/auth/mock.ts. */
export interface MockScram {
  /** HMAC key of the fake salt: salt = HMAC-SHA-256(key, user name), first 16 bytes. */
  readonly key: Buffer;
  /** Iteration count announced for unknown users. */
  readonly iterations: number;
}

type ServerState = 'initial' | 'challenged' | 'done';

/** One SCRAM exchange, server side: mechanisms() → start() → finish(). */
export class ScramServerSession {
  private state: ServerState = 'initial';
  private readonly secret: ScramSecret;
  /** True when the exchange must fail whatever the client proves (unknown user). */
  private readonly doomed: boolean;
  private readonly channelBinding: ChannelBinding | null;
  private readonly nonceBytes: number;
  private readonly nonceSuffix: string | undefined;
  private cbindInUse = false;
  private gs2Header = '';
  private clientFirstBare = '';
  private serverFirst = '';
  private nonce = '';

  constructor(opts: ScramServerOptions) {
    this.channelBinding = opts.channelBinding ?? null;
    this.nonceBytes = opts.nonceBytes ?? RAW_NONCE_LEN;
    if (!Number.isInteger(this.nonceBytes) || this.nonceBytes < 1) {
      throw new RangeError('ScramServerSession: nonceBytes must be a positive integer');
    }
    this.nonceSuffix = opts.nonceSuffix;
    if (opts.secret !== null) {
      this.secret = opts.secret;
      this.doomed = false;
    } else {
      // Same shape as a real secret and stable per username, so probing cannot tell
      // existing from missing users; the random keys make every proof fail.
      const mock = Buffer.isBuffer(opts.fakeSaltKey) ? { key: opts.fakeSaltKey, iterations: DEFAULT_ITERATIONS } : opts.fakeSaltKey;
      const salt = crypto
        .createHmac('sha256', mock.key)
        .update(opts.username, 'utf8')
        .digest()
        .subarray(0, DEFAULT_SALT_LEN);
      this.secret = {
        iterations: mock.iterations,
        salt,
        storedKey: crypto.randomBytes(KEY_LEN),
        serverKey: crypto.randomBytes(KEY_LEN),
      };
      this.doomed = true;
    }
  }

  /** Mechanisms for AuthenticationSASL, preferred first. */
  mechanisms(): string[] {
    return this.channelBinding !== null ? [MECH_PLUS, MECH] : [MECH];
  }

  /** Handle SASLInitialResponse (mechanism + client-first-message); returns server-first. */
  start(
    mechanism: string,
    clientFirst: string,
  ): { ok: true; serverFirst: string } | { ok: false; failure: ScramFailure } {
    this.expectState('initial', 'start');
    this.state = 'done'; // until proven otherwise: a failed start ends the exchange
    try {
      return this.doStart(mechanism, clientFirst);
    } catch (e) {
      if (e instanceof StepFailure) return { ok: false, failure: e.failure };
      throw e;
    }
  }

  /** Handle SASLResponse (client-final-message); returns server-final on success. */
  finish(clientFinal: string): { ok: true; serverFinal: string } | { ok: false; failure: ScramFailure } {
    this.expectState('challenged', 'finish');
    this.state = 'done';
    try {
      return this.doFinish(clientFinal);
    } catch (e) {
      if (e instanceof StepFailure) return { ok: false, failure: e.failure };
      throw e;
    }
  }

  private doStart(mechanism: string, msg: string): { ok: true; serverFirst: string } {
    if (mechanism === MECH_PLUS && this.channelBinding !== null) this.cbindInUse = true;
    else if (mechanism !== MECH) {
      throw protocolError('client selected an invalid SASL authentication mechanism');
    }

    const r = new AttrReader(msg);
    switch (r.peek()) {
      case 'p': {
        if (!this.cbindInUse) {
          throw malformed(
            'the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data',
          );
        }
        const type = r.value('p');
        if (type !== 'tls-server-end-point') {
          throw protocolError(`unsupported SCRAM channel-binding type "${sanitize(type)}"`);
        }
        break;
      }
      case 'y':
        // The client can bind but believes we cannot. We offered PLUS, so someone removed
        // it on the way: a downgrade. PostgreSQL: "SCRAM channel binding negotiation error".
        if (this.channelBinding !== null) throw authFailure();
        r.skip();
        r.expectComma();
        break;
      case 'n':
        if (this.cbindInUse) {
          throw malformed(
            'the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data',
          );
        }
        r.skip();
        r.expectComma();
        break;
      default:
        throw malformed(`unexpected channel-binding flag "${sanitize(r.peek())}"`);
    }
    if (r.peek() === 'a') {
      throw protocolError('client uses authorization identity, but it is not supported');
    }
    if (r.peek() !== ',') {
      throw malformed(`unexpected attribute "${sanitize(r.peek())}" in client-first-message`);
    }
    r.skip();
    this.gs2Header = msg.slice(0, r.pos);
    this.clientFirstBare = msg.slice(r.pos);

    if (r.peek() === 'm') throw protocolError('client requires an unsupported SCRAM extension');
    r.value('n'); // ignored: the startup packet's user name is authoritative
    const clientNonce = r.value('r');
    if (clientNonce === '') throw malformed('empty nonce');
    if (!isPrintable(clientNonce)) throw protocolError('non-printable characters in SCRAM nonce');
    while (!r.atEnd()) r.anyAttr(); // optional extensions are ignored

    const suffix = this.nonceSuffix ?? secureRandomBytes(this.nonceBytes).toString('base64');
    this.nonce = clientNonce + suffix;
    this.serverFirst = `r=${this.nonce},s=${this.secret.salt.toString('base64')},i=${this.secret.iterations}`;
    this.state = 'challenged';
    return { ok: true, serverFirst: this.serverFirst };
  }

  private doFinish(msg: string): { ok: true; serverFinal: string } | { ok: false; failure: ScramFailure } {
    const r = new AttrReader(msg);
    const cbind = r.value('c');
    const cbindBytes = decodeBase64(cbind);
    if (cbindBytes === null) throw malformed('invalid base64 in channel-binding attribute');
    if (this.cbindInUse) {
      const expected = Buffer.concat([Buffer.from(this.gs2Header, 'utf8'), this.channelBinding!.data]);
      // PostgreSQL: "SCRAM channel binding check failed" (28000); reported uniformly here.
      if (!cbindBytes.equals(expected)) throw authFailure();
    } else if (cbind !== Buffer.from(this.gs2Header, 'utf8').toString('base64')) {
      throw protocolError('unexpected SCRAM channel-binding attribute in client-final-message');
    }
    const nonce = r.value('r');
    let proofStart: number;
    for (;;) {
      if (r.atEnd()) throw malformed('attribute "p" expected');
      proofStart = r.pos;
      if (r.anyAttr() === 'p') break;
    }
    const proof = decodeBase64(r.lastValue);
    if (proof === null || proof.length !== KEY_LEN) {
      throw malformed('malformed proof in client-final-message');
    }
    if (!r.atEnd() || msg.endsWith(',')) {
      throw malformed('garbage found at the end of client-final-message');
    }
    if (nonce !== this.nonce) throw protocolError('invalid SCRAM response (nonce does not match)');

    const withoutProof = msg.slice(0, proofStart - 1); // drop ",p=…"
    const authMessage = `${this.clientFirstBare},${this.serverFirst},${withoutProof}`;
    // Same work for every user, real or not.
    const clientSignature = hmac(this.secret.storedKey, authMessage);
    const clientKey = xor(proof, clientSignature);
    const matches = safeEqual(sha256(clientKey), this.secret.storedKey);
    if (!matches || this.doomed) return { ok: false, failure: { kind: 'auth' } };
    const serverSignature = hmac(this.secret.serverKey, authMessage);
    return { ok: true, serverFinal: `v=${serverSignature.toString('base64')}` };
  }

  private expectState(want: ServerState, step: string): void {
    if (this.state !== want) {
      throw new Error(`ScramServerSession.${step}() called in state "${this.state}"`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Client side: pgbastion logging in to upstream PostgreSQL

/** The upstream's SCRAM messages are malformed or inconsistent; the login must be aborted. */
export class ScramClientError extends Error {
  override readonly name = 'ScramClientError';
}

export interface ScramClientOptions {
  /** Bind to the upstream's TLS certificate (mechanism SCRAM-SHA-256-PLUS). */
  channelBinding?: ChannelBinding | null;
  /** Sent as `n=`; PostgreSQL ignores it and libpq sends it empty (the default). */
  username?: string;
  /** @internal Test hook: a fixed client nonce instead of 18 random bytes. */
  nonce?: string;
}

type ClientState = 'initial' | 'first-sent' | 'final-sent' | 'done';

// SaltedPassword cache: PBKDF2 is the expensive part of a login and the upstream's salt and
// iteration count rarely change. Keyed by an HMAC of the password under a per-process key so
// the map never holds a plain, unsalted hash of it. Promises are cached so concurrent logins
// share one derivation. Bounded, least recently used first out.
const SALTED_CACHE_MAX = 256;
const saltedCache = new Map<string, Promise<Buffer>>();
const cacheKeyKey = crypto.randomBytes(32);
const cacheStats = { hits: 0, misses: 0 };

/** Counters of the client SaltedPassword cache (for tests and metrics). */
export function scramClientCacheStats(): { hits: number; misses: number; size: number } {
  return { hits: cacheStats.hits, misses: cacheStats.misses, size: saltedCache.size };
}

/** Empty the client SaltedPassword cache and zero its counters. */
export function clearScramClientCache(): void {
  saltedCache.clear();
  cacheStats.hits = 0;
  cacheStats.misses = 0;
}

function saltedPassword(password: Buffer, salt: Buffer, iterations: number): Promise<Buffer> {
  const key = `${hmac(cacheKeyKey, password).toString('base64')}|${salt.toString('base64')}|${iterations}`;
  const cached = saltedCache.get(key);
  if (cached !== undefined) {
    cacheStats.hits++;
    saltedCache.delete(key);
    saltedCache.set(key, cached);
    return cached;
  }
  cacheStats.misses++;
  const derived = pbkdf2(password, salt, iterations, KEY_LEN, 'sha256');
  saltedCache.set(key, derived);
  derived.catch(() => {
    if (saltedCache.get(key) === derived) saltedCache.delete(key);
  });
  if (saltedCache.size > SALTED_CACHE_MAX) {
    saltedCache.delete(saltedCache.keys().next().value!);
  }
  return derived;
}

/** One SCRAM exchange, client side: clientFirst() → handleServerFirst() → verifyServerFinal(). */
export class ScramClientSession {
  /** The mechanism to name in SASLInitialResponse. */
  readonly mechanism: string;
  /** The server's `e=` error from server-final, if it sent one. */
  serverError: string | null = null;
  private state: ClientState = 'initial';
  private readonly password: Buffer;
  private readonly channelBinding: ChannelBinding | null;
  private readonly gs2Header: string;
  private readonly clientNonce: string;
  private readonly username: string;
  private clientFirstBare = '';
  private expectedServerSignature: Buffer | null = null;

  constructor(password: string, opts: ScramClientOptions = {}) {
    this.password = preparePassword(password);
    this.channelBinding = opts.channelBinding ?? null;
    this.mechanism = this.channelBinding !== null ? MECH_PLUS : MECH;
    this.gs2Header = this.channelBinding !== null ? GS2_CBIND_HEADER : 'n,,';
    this.clientNonce = opts.nonce ?? crypto.randomBytes(RAW_NONCE_LEN).toString('base64');
    this.username = (opts.username ?? '').replace(/=/g, '=3D').replace(/,/g, '=2C');
  }

  /** The client-first-message for SASLInitialResponse. */
  clientFirst(): string {
    this.expectState('initial', 'clientFirst');
    this.clientFirstBare = `n=${this.username},r=${this.clientNonce}`;
    this.state = 'first-sent';
    return this.gs2Header + this.clientFirstBare;
  }

  /**
   * Check server-first and compute client-final. Rejects with ScramClientError when the
   * server's message is malformed or its nonce does not extend ours.
   */
  async handleServerFirst(serverFirst: string): Promise<string> {
    this.expectState('first-sent', 'handleServerFirst');
    this.state = 'done'; // until proven otherwise
    const r = new AttrReader(serverFirst);
    let nonce: string;
    let salt: Buffer | null;
    let iterations: number | null;
    try {
      if (r.peek() === 'm') throw new ScramClientError('server requires an unsupported SCRAM extension');
      nonce = r.value('r');
      salt = decodeBase64(r.value('s'));
      iterations = parseIterations(r.value('i'));
      if (!r.atEnd()) {
        throw new ScramClientError('malformed SCRAM message (garbage at end of server-first-message)');
      }
    } catch (e) {
      if (e instanceof StepFailure) {
        throw new ScramClientError(e.message);
      }
      throw e;
    }
    if (!nonce.startsWith(this.clientNonce) || nonce.length <= this.clientNonce.length || !isPrintable(nonce)) {
      throw new ScramClientError('invalid SCRAM response (nonce mismatch)');
    }
    if (salt === null || salt.length === 0) throw new ScramClientError('malformed SCRAM message (invalid salt)');
    if (iterations === null) throw new ScramClientError('malformed SCRAM message (invalid iteration count)');

    const salted = await saltedPassword(this.password, salt, iterations);
    const cbindInput =
      this.channelBinding !== null
        ? Buffer.concat([Buffer.from(this.gs2Header, 'utf8'), this.channelBinding.data])
        : Buffer.from(this.gs2Header, 'utf8');
    const withoutProof = `c=${cbindInput.toString('base64')},r=${nonce}`;
    const authMessage = `${this.clientFirstBare},${serverFirst},${withoutProof}`;
    const clientKey = hmac(salted, 'Client Key');
    const proof = xor(clientKey, hmac(sha256(clientKey), authMessage));
    this.expectedServerSignature = hmac(hmac(salted, 'Server Key'), authMessage);
    this.state = 'final-sent';
    return `${withoutProof},p=${proof.toString('base64')}`;
  }

  /** True when server-final proves the server knows our secret; false on `e=` or mismatch. */
  verifyServerFinal(serverFinal: string): boolean {
    this.expectState('final-sent', 'verifyServerFinal');
    this.state = 'done';
    if (serverFinal.startsWith('e=')) {
      this.serverError = serverFinal.slice(2);
      return false;
    }
    const m = /^v=([^,]*)$/.exec(serverFinal);
    if (m === null) return false;
    const signature = decodeBase64(m[1]!);
    return signature !== null && safeEqual(signature, this.expectedServerSignature!);
  }

  private expectState(want: ClientState, step: string): void {
    if (this.state !== want) {
      throw new Error(`ScramClientSession.${step}() called in state "${this.state}"`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Channel binding data (RFC 5929 tls-server-end-point)

const SIGNATURE_HASH_BY_OID: Record<string, string> = {
  '1.2.840.113549.1.1.4': 'md5', // md5WithRSAEncryption
  '1.2.840.113549.1.1.5': 'sha1', // sha1WithRSAEncryption
  '1.2.840.113549.1.1.14': 'sha224',
  '1.2.840.113549.1.1.11': 'sha256',
  '1.2.840.113549.1.1.12': 'sha384',
  '1.2.840.113549.1.1.13': 'sha512',
  '1.2.840.10045.4.1': 'sha1', // ecdsa-with-SHA1
  '1.2.840.10045.4.3.1': 'sha224',
  '1.2.840.10045.4.3.2': 'sha256',
  '1.2.840.10045.4.3.3': 'sha384',
  '1.2.840.10045.4.3.4': 'sha512',
  '1.2.840.10040.4.3': 'sha1', // dsa-with-sha1
  '2.16.840.1.101.3.4.3.1': 'sha224', // dsa-with-sha224
  '2.16.840.1.101.3.4.3.2': 'sha256', // dsa-with-sha256
};
const HASH_BY_OID: Record<string, string> = {
  '1.3.14.3.2.26': 'sha1',
  '2.16.840.1.101.3.4.2.4': 'sha224',
  '2.16.840.1.101.3.4.2.1': 'sha256',
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
};
const RSASSA_PSS = '1.2.840.113549.1.1.10';

/**
 * Channel-binding data for tls-server-end-point: the hash of the DER certificate, using the
 * certificate's signature hash, or SHA-256 when that is MD5 or SHA-1 (RFC 5929 §4.1).
 * The hash comes from `signatureAlgorithm` when given (e.g. "sha384",
 * "ecdsa-with-SHA384"), else from the certificate's signatureAlgorithm field, read with a
 * minimal DER walk: Node 20's X509Certificate does not expose it. Throws for algorithms with
 * no defined hash (Ed25519, Ed448), as PostgreSQL and libpq also refuse them.
 */
export function tlsServerEndPointHash(certDer: Buffer, signatureAlgorithm?: string): Buffer {
  const hash = signatureAlgorithm !== undefined ? hashFromName(signatureAlgorithm) : signatureHashOf(certDer);
  const effective = hash === 'md5' || hash === 'sha1' ? 'sha256' : hash;
  return crypto.createHash(effective).update(certDer).digest();
}

function hashFromName(name: string): string {
  const m = /(md5|sha-?(?:224|256|384|512|1))/i.exec(name);
  if (m === null) throw new Error(`tls-server-end-point: no hash known for signature algorithm "${name}"`);
  return m[1]!.toLowerCase().replace('-', '');
}

function signatureHashOf(der: Buffer): string {
  // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm AlgorithmIdentifier, … }
  const cert = readTlv(der, 0, der.length, 0x30);
  const tbs = readTlv(der, cert.start, cert.end, 0x30);
  const algId = readTlv(der, tbs.end, cert.end, 0x30);
  const oidTlv = readTlv(der, algId.start, algId.end, 0x06);
  const oid = decodeOid(der.subarray(oidTlv.start, oidTlv.end));
  if (oid === RSASSA_PSS) return pssHash(der, oidTlv.end, algId.end);
  const hash = SIGNATURE_HASH_BY_OID[oid];
  if (hash === undefined) throw new Error(`tls-server-end-point: unsupported signature algorithm ${oid}`);
  return hash;
}

function pssHash(der: Buffer, pos: number, end: number): string {
  // RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] AlgorithmIdentifier DEFAULT sha1, … }
  if (pos >= end) return 'sha1';
  const params = readTlv(der, pos, end, 0x30);
  if (params.start >= params.end || der[params.start] !== 0xa0) return 'sha1';
  const explicit = readTlv(der, params.start, params.end, 0xa0);
  const hashAlg = readTlv(der, explicit.start, explicit.end, 0x30);
  const oidTlv = readTlv(der, hashAlg.start, hashAlg.end, 0x06);
  const oid = decodeOid(der.subarray(oidTlv.start, oidTlv.end));
  const hash = HASH_BY_OID[oid];
  if (hash === undefined) throw new Error(`tls-server-end-point: unsupported RSASSA-PSS hash ${oid}`);
  return hash;
}

function readTlv(buf: Buffer, pos: number, limit: number, tag: number): { start: number; end: number } {
  const bad = (): never => {
    throw new Error('tls-server-end-point: malformed DER certificate');
  };
  if (pos + 2 > limit || buf[pos] !== tag) bad();
  let len = buf[pos + 1]!;
  let start = pos + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4 || start + n > limit) bad();
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[start + i]!;
    start += n;
  }
  const end = start + len;
  if (end > limit) bad();
  return { start, end };
}

function decodeOid(bytes: Buffer): string {
  if (bytes.length === 0) throw new Error('tls-server-end-point: malformed DER certificate');
  const parts: number[] = [];
  let value = 0;
  for (const b of bytes) {
    value = value * 128 + (b & 0x7f);
    if ((b & 0x80) === 0) {
      parts.push(value);
      value = 0;
    }
  }
  const first = parts.shift()!;
  const head = first < 80 ? [Math.floor(first / 40), first % 40] : [2, first - 80];
  return [...head, ...parts].join('.');
}

// ---------------------------------------------------------------------------------------------
// Message parsing and small crypto helpers

/** A parse step failed; thrown only inside this module and turned into a result at each step. */
class StepFailure extends Error {
  constructor(readonly failure: ScramFailure) {
    super(failure.kind === 'protocol' ? failure.message : 'SCRAM authentication failed');
  }
}

function protocolError(message: string): StepFailure {
  return new StepFailure({ kind: 'protocol', message });
}

function malformed(detail: string): StepFailure {
  return protocolError(`malformed SCRAM message (${detail})`);
}

function authFailure(): StepFailure {
  return new StepFailure({ kind: 'auth' });
}

/** Reads `a=value` attributes separated by commas, the way PostgreSQL's read_attr_value does. */
class AttrReader {
  pos = 0;
  lastValue = '';
  constructor(private readonly msg: string) {}

  peek(): string {
    return this.msg.charAt(this.pos);
  }

  atEnd(): boolean {
    return this.pos >= this.msg.length;
  }

  skip(): void {
    this.pos++;
  }

  expectComma(): void {
    if (this.peek() !== ',') throw malformed(`comma expected, but found "${sanitize(this.peek())}"`);
    this.pos++;
  }

  /** The value of attribute `attr`, which must come next. */
  value(attr: string): string {
    if (this.peek() !== attr) throw malformed(`attribute "${attr}" expected`);
    return this.readValue(attr);
  }

  /** Any attribute (a letter); returns its name and leaves its value in lastValue. */
  anyAttr(): string {
    const attr = this.peek();
    if (!/^[A-Za-z]$/.test(attr)) throw malformed(`attribute expected, but found invalid character "${sanitize(attr)}"`);
    this.lastValue = this.readValue(attr);
    return attr;
  }

  private readValue(attr: string): string {
    this.pos++;
    if (this.peek() !== '=') throw malformed(`expected character "=" for attribute "${attr}"`);
    this.pos++;
    let end = this.msg.indexOf(',', this.pos);
    if (end === -1) end = this.msg.length;
    const value = this.msg.slice(this.pos, end);
    this.pos = end < this.msg.length ? end + 1 : end;
    return value;
  }
}

/** Printable per RFC 5802: %x21-7E except ','. */
function isPrintable(s: string): boolean {
  return /^[\x21-\x2b\x2d-\x7e]*$/.test(s);
}

/** Echo a client-supplied fragment in an error message without control or odd characters. */
function sanitize(s: string): string {
  if (s === '') return 'end of string';
  const shown = s.length > 32 ? `${s.slice(0, 32)}…` : s;
  return shown.replace(/[^\x20-\x7e]/g, (c) => `0x${c.codePointAt(0)!.toString(16).padStart(2, '0')}`);
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict, padded base64 (what PostgreSQL emits); null when invalid. */
function decodeBase64(s: string): Buffer | null {
  return BASE64.test(s) ? Buffer.from(s, 'base64') : null;
}

function parseIterations(s: string): number | null {
  if (!/^[0-9]+$/.test(s)) return null;
  const n = Number(s);
  return Number.isSafeInteger(n) && n >= 1 && n <= MAX_ITERATIONS ? n : null;
}

function keysFromSaltedPassword(salted: Buffer): { storedKey: Buffer; serverKey: Buffer } {
  return {
    storedKey: sha256(hmac(salted, 'Client Key')),
    serverKey: hmac(salted, 'Server Key'),
  };
}

function hmac(key: Buffer, data: string | Buffer): Buffer {
  return crypto.createHmac('sha256', key).update(data).digest();
}

function sha256(data: Buffer): Buffer {
  return crypto.createHash('sha256').update(data).digest();
}

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.alloc(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!;
  return out;
}

function safeEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}
