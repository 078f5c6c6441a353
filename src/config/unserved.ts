// Config the schema accepts (the full SPEC contract) but this build cannot serve: features
// not built yet, and TLS files that do not load. Serving without them would be less safe
// than asked, so `check`, `start` and reload refuse. Each feature entry disappears when it lands.

import { TlsTerminator } from '../tls/terminate.js';
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
  if (c.upstream.tls.mode !== 'disable') refuse.push(`upstream.tls.mode: ${c.upstream.tls.mode} is not implemented in this build`);
  if (c.upstream.send_proxy_protocol) refuse.push('upstream.send_proxy_protocol: not implemented in this build');
  return { refuse };
}
