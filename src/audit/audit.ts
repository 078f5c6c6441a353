// The audit trail (SPEC §4): JSON lines, one event each, on their own destination and
// separate from the operational log. Asynchronous writes (pino's SonicBoom stream) so a slow disk
// never stalls the relay; flushed on shutdown. A failing destination is reported, counted,
// and — with audit.on_failure: refuse — makes the proxy refuse new sessions until it recovers.

import pino from 'pino';
import type { AuditConfig } from '../config/types.js';

export type AuditEvent =
  | 'session.start'
  | 'session.denied'
  | 'session.end'
  | 'ddl'
  | 'policy.blocked'
  | 'config.reloaded'
  | 'config.reload_failed';

/** The fields every event about a client connection carries. */
export interface AuditIdentity {
  readonly session_id: string;
  readonly client_addr: string;
  readonly client_port: number;
  readonly user: string | null;
  readonly database: string | null;
}

export class Audit {
  private readonly stream: pino.DestinationStream & { flushSync?: () => void; on?: (e: string, f: (err: Error) => void) => void };
  /** False after the destination failed, until a write succeeds again. */
  healthy = true;

  constructor(
    private readonly config: AuditConfig,
    onFailure: (err: Error) => void = () => {},
    destination?: NodeJS.WritableStream,
  ) {
    this.stream =
      destination ??
      (config.destination === 'stdout'
        ? pino.destination({ fd: 1, sync: false })
        : pino.destination({ dest: config.destination, append: true, mkdir: true, sync: false }));
    this.stream.on?.('error', (err: Error) => {
      this.healthy = false;
      onFailure(err);
    });
  }

  get refusesSessions(): boolean {
    return !this.healthy && this.config.on_failure === 'refuse';
  }

  /** Connection events (session.*): written when audit.connections is on. */
  connection(event: 'session.start' | 'session.denied' | 'session.end', who: AuditIdentity, fields: Record<string, unknown>): void {
    if (this.config.connections) this.write(event, { ...who, ...fields });
  }

  /** ddl events: written when audit.ddl is on. */
  ddl(who: AuditIdentity, fields: Record<string, unknown>): void {
    if (this.config.ddl) this.write('ddl', { ...who, ...fields });
  }

  /** Events that are always written (policy blocks, config reloads). */
  write(event: AuditEvent, fields: Record<string, unknown>): void {
    this.stream.write(JSON.stringify({ time: new Date().toISOString(), event, ...fields }, censorSecrets) + '\n');
  }

  flush(): void {
    try {
      this.stream.flushSync?.();
    } catch {
      /* the destination already reported its failure */
    }
  }
}

/** Belt and braces: a field named like a secret is never written, whatever a caller passes. */
function censorSecrets(key: string, value: unknown): unknown {
  return key === 'password' || key === 'secret' ? '<REDACTED>' : value;
}
