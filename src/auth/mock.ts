// What an unknown user's SCRAM exchange is made of: the key its fake salt is derived from and
// the iteration count it announces. Both come from the loaded configuration, so every worker
// of an instance, a replaced worker and the instance after a restart send the same server-first
// for the same unknown name, as a known user always gets its one real salt (PostgreSQL keeps its
// mock-authentication nonce in pg_control for the same reason).

import crypto from 'node:crypto';
import type { Config } from '../config/types.js';
import { DEFAULT_ITERATIONS, parseScramSecret, type MockScram } from './scram.js';

/**
 * scrypt cost of the key derivation. A client sees HMAC(key, name) for any name it tries, so
 * the key must not be a fast function of guessable input: at N = 2^15, r = 8 each guess of the
 * server-role passwords costs ~32 MiB and ~0.1 s. Paid once per load (cached while the
 * passwords stay the same).
 */
const SCRYPT = { N: 1 << 15, r: 8, p: 1, maxmem: 64 * 1024 * 1024 } as const;
const KEY_LABEL = 'pgbastion mock SCRAM salt key v1';

let cached: { material: string; key: Buffer } | null = null;

/**
 * The fake-salt key: scrypt over every server role's name and password (sorted by name).
 *
 * Why the server-role passwords and not the users' secrets: the key must not change when users
 * are added or removed, or a reload would change every unknown name's salt while each known
 * user's stays put, which tells them apart to anyone probing before and after. Server-role
 * passwords are secret (clients never see them), change only when a role is added, removed or
 * its password rotated, and every loaded config that has users has them (each user names one).
 * That rotation is then the only moment unknown names' salts change.
 *
 * Fallback: with no server roles there are no users either, so every name is unknown and there
 * is nothing to enumerate; the key is then scrypt of the empty list, a fixed value.
 */
export function mockSaltKey(config: Pick<Config, 'server_roles'>): Buffer {
  const roles = [...config.server_roles].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const material = JSON.stringify(roles.map((r) => [r.name, r.password]));
  if (cached?.material === material) return cached.key;
  const key = crypto.scryptSync(material, KEY_LABEL, 32, SCRYPT);
  cached = { material, key };
  return key;
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
export function mockScram(config: Pick<Config, 'server_roles' | 'users'>): MockScram {
  return { key: mockSaltKey(config), iterations: mockIterations(config) };
}
