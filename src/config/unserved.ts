// Config the schema accepts but this build cannot serve: TLS certificate, key or CA files
// that do not load. Serving without them would be less safe than asked, so `check`, `start`
// and reload refuse.

import { TlsTerminator } from '../tls/terminate.js';
import { buildUpstreamTransport } from '../upstream/dial.js';
import type { Config } from './types.js';

export interface Unserved {
  /** Why the configuration cannot be served, one problem each (empty: it can). */
  readonly refuse: readonly string[];
}

/** Certificate and key files must load (and match) before a listener may promise TLS. */
export function tlsProblem(c: Config): string | null {
  if (!c.tls) return null;
  try {
    new TlsTerminator(c.tls);
    return null;
  } catch (e) {
    return `tls: cannot use the certificate, key or CA files: ${(e as Error).message}`;
  }
}

export function unservedFeatures(c: Config): Unserved {
  const refuse: string[] = [];
  const tls = tlsProblem(c);
  if (tls) refuse.push(tls);
  try {
    buildUpstreamTransport(c);
  } catch (e) {
    refuse.push(`upstream.tls: cannot use the CA file: ${(e as Error).message}`);
  }
  return { refuse };
}
