// pg_ident-style certificate mapping: may a client whose certificate CN is `cn` log in
// as `user`? With a cert_map, only its entries grant; without one, the CN must be the
// user name itself (PostgreSQL's clientcert=verify-full / cert method default).

import type { CertMapEntry } from '../config/types.js';

export function certNamesUser(certMap: readonly CertMapEntry[], cn: string, user: string): boolean {
  if (certMap.length === 0) return cn === user;
  return certMap.some((e) => e.cn === cn && e.user === user);
}
