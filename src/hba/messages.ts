// Client-facing wording of HBA refusals (SQLSTATE 28000), exactly as PostgreSQL 15+ words them.
// Pure string builders; the caller sends them as FATAL ErrorResponse messages.

import { displayClientAddress } from './rules.js';

export interface DenialSubject {
  /** Client address as Node reports it, or `unix` (shown as `[local]`, as PostgreSQL does). */
  readonly address: string;
  readonly user: string;
  readonly database: string;
  readonly tls: boolean;
  /** Physical replication connection: PostgreSQL words these without a database. */
  readonly replication?: boolean;
}

/**
 * `reject`: a matching rule said reject; `nomatch`: no rule matched.
 * IPv4-mapped IPv6 addresses are shown in their IPv4 form.
 */
export function denialMessage(kind: 'reject' | 'nomatch', conn: DenialSubject): string {
  const host = displayClientAddress(conn.address);
  const encryption = conn.tls ? 'SSL encryption' : 'no encryption';
  if (conn.replication === true) {
    return kind === 'reject'
      ? `pg_hba.conf rejects replication connection for host "${host}", user "${conn.user}", ${encryption}`
      : `no pg_hba.conf entry for replication connection from host "${host}", user "${conn.user}", ${encryption}`;
  }
  return kind === 'reject'
    ? `pg_hba.conf rejects connection for host "${host}", user "${conn.user}", database "${conn.database}", ${encryption}`
    : `no pg_hba.conf entry for host "${host}", user "${conn.user}", database "${conn.database}", ${encryption}`;
}
