// Config the schema accepts (the full SPEC contract) but this build does not serve yet.
// Security features that would silently degrade (TLS served as plaintext, PROXY headers
// ignored) make `start` refuse; the rest are warnings `check` and `start` print.
// Each entry disappears from here when its feature lands.

import type { Config } from './types.js';

export interface Unserved {
  /** `start` refuses to run with these: serving without them would be less safe than asked. */
  readonly refuse: readonly string[];
  readonly warn: readonly string[];
}

export function unservedFeatures(c: Config): Unserved {
  const refuse: string[] = [];
  const warn: string[] = [];
  if (c.tls) refuse.push('tls: client-facing TLS is not implemented in this build; refusing to serve plaintext instead');
  if (c.proxy_protocol) refuse.push('proxy_protocol: PROXY headers are not implemented in this build');
  if (c.upstream.tls.mode !== 'disable') refuse.push(`upstream.tls.mode: ${c.upstream.tls.mode} is not implemented in this build`);
  if (c.upstream.send_proxy_protocol) refuse.push('upstream.send_proxy_protocol: not implemented in this build');
  if (c.metrics) warn.push('metrics: the /metrics endpoint is not implemented yet; nothing listens there');
  if (c.audit.connections || c.audit.ddl) warn.push('audit: the audit trail is not implemented yet; nothing is written');
  return { refuse, warn };
}
