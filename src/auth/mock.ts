// What an unknown user's SCRAM exchange is made of: the key its fake salt is derived from and
// the iteration count it announces. Every worker of an instance (and a replaced one) sends the
// same server-first for the same unknown name, as a known user always gets its one real salt.

import crypto from 'node:crypto';
import type { Config } from '../config/types.js';
import { DEFAULT_ITERATIONS, parseScramSecret, type MockScram } from './scram.js';

/** Names the key to use (64 hexadecimal digits): set by the primary for its workers, or by the operator. */
export const MOCK_KEY_ENV = 'PGBASTION_MOCK_SALT_KEY';

let drawn: Buffer | null = null;

/**
 * The fake-salt key: random, one per instance, secret. Not derived from anything in the
 * configuration: a salt anyone can ask for (any made-up user name) must not be a function of
 * passwords, or it is an offline oracle for them (a reviewer recovered a server-role password
 * from a scrypt-derived one with a dictionary). The primary draws it and hands it to its
 * workers through MOCK_KEY_ENV (shareMockKey), so every worker gives an unknown name the same
 * salt; an operator who sets MOCK_KEY_ENV keeps it across restarts too (else a restart
 * changes every unknown name's salt while known users' stay, as PostgreSQL avoids by keeping
 * its mock nonce in pg_control).
 */
export function mockSaltKey(env: NodeJS.ProcessEnv = process.env): Buffer {
  const given = env[MOCK_KEY_ENV];
  if (given !== undefined && given !== '') {
    if (!/^[0-9a-fA-F]{64}$/.test(given)) throw new Error(`${MOCK_KEY_ENV} must be 64 hexadecimal digits`);
    return Buffer.from(given, 'hex');
  }
  return (drawn ??= crypto.randomBytes(32));
}

/** The primary, before it forks: its workers inherit the key it uses. */
export function shareMockKey(env: NodeJS.ProcessEnv = process.env): void {
  env[MOCK_KEY_ENV] = mockSaltKey(env).toString('hex');
}

/**
 * The iteration count an unknown user announces: the one most configured users' secrets have
 * (ties: the higher count), else PostgreSQL's default 4096. A fixed 4096 would give unknown
 * names away at once on an instance whose secrets were all made with `--iterations 600000`.
 * It changes only when the most common count among the users does (a change of policy), not
 * with each user added or removed.
 */
export function mockIterations(config: Pick<Config, 'users'>): number {
  const counts = new Map<number, number>();
  for (const u of config.users) {
    const s = u.secret ? parseScramSecret(u.secret) : null;
    if (s) counts.set(s.iterations, (counts.get(s.iterations) ?? 0) + 1);
  }
  let best = DEFAULT_ITERATIONS;
  let bestCount = 0;
  for (const [iterations, n] of counts) {
    if (n > bestCount || (n === bestCount && iterations > best)) [best, bestCount] = [iterations, n];
  }
  return best;
}

/** Everything an unknown user's exchange is derived from, for this configuration. */
export function mockScram(config: Pick<Config, 'users'>): MockScram {
  return { key: mockSaltKey(), iterations: mockIterations(config) };
}
