// Random bytes for the small values every login needs (the session id, the SCRAM server
// nonce, the cancel key; refusal tokens too), taken from one crypto.randomFillSync of
// POOL_BYTES at a time. Each randomBytes() call builds a crypto job object and crosses into
// OpenSSL, three times per login; in bench S4 (a TLS + SCRAM login per transaction) that
// showed in perf at about 1 % of the proxy's CPU. Node's own crypto.randomUUID() batches its
// entropy the same way.
//
// The bytes are the same CSPRNG output, each handed out once; a slice is zeroed in the pool
// as it is handed out, so the pool never keeps a value already in use.

import { randomBytes, randomFillSync } from 'node:crypto';

const POOL_BYTES = 4096;
/** Larger requests gain nothing from the pool and would drain it. */
const MAX_POOLED = 64;

const pool = Buffer.alloc(POOL_BYTES);
let next = POOL_BYTES; // empty: filled on first use

/** `n` cryptographically random bytes, in a Buffer of the caller's own. */
export function secureRandomBytes(n: number): Buffer {
  if (n > MAX_POOLED) return randomBytes(n);
  if (next + n > POOL_BYTES) {
    randomFillSync(pool);
    next = 0;
  }
  const out = Buffer.alloc(n); // memory of its own, not a slice of Node's shared pool
  pool.copy(out, 0, next, next + n);
  pool.fill(0, next, next + n);
  next += n;
  return out;
}
