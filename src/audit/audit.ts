// The audit trail (SPEC §4): JSON lines, one event each, on their own destination and
// separate from the operational log. Asynchronous writes (a file write stream) so a slow disk
// never stalls the relay; ended (flushed) on shutdown. A failing destination is reported, counted,
// and — with audit.on_failure: refuse — makes the proxy refuse new sessions until it recovers.

import { createWriteStream, WriteStream } from 'node:fs';
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

const REOPEN_MS = 2000;

export class Audit {
  private stream: NodeJS.WritableStream | null = null;
  private reopenTimer: NodeJS.Timeout | null = null;
  /** False after the destination failed, until it could be opened again. */
  healthy = true;
  /** The stream was given by the caller (tests): reloads never replace it. */
  private readonly injected: boolean;

  constructor(
    private config: AuditConfig,
    private readonly onFailure: (err: Error) => void = () => {},
    destination?: NodeJS.WritableStream,
  ) {
    this.injected = destination !== undefined;
    if (destination) this.stream = destination;
    else if (config.destination === 'stdout') this.stream = process.stdout;
    else this.openFile(config.destination);
  }

  /**
   * Appends to the audit file. A failure (unwritable path, disk full) marks the trail
   * unhealthy and retries the open every REOPEN_MS; events in between are lost, and say so
   * through the failure counter, never by stopping the proxy.
   */
  private openFile(path: string): void {
    const stream = createWriteStream(path, { flags: 'a', mode: 0o600 });
    this.stream = stream;
    stream.once('open', () => {
      this.healthy = true;
    });
    stream.on('error', (err: Error) => {
      if (this.stream === stream) this.stream = null;
      stream.destroy();
      this.healthy = false;
      this.onFailure(err);
      if (!this.reopenTimer) {
        this.reopenTimer = setTimeout(() => {
          this.reopenTimer = null;
          this.openFile(path);
        }, REOPEN_MS);
        this.reopenTimer.unref();
      }
    });
  }

  /** Reload: new flags at once; a new destination is opened in place of the old one. */
  reconfigure(config: AuditConfig): void {
    const moved = config.destination !== this.config.destination;
    this.config = config;
    if (!moved || this.injected) return;
    if (this.reopenTimer) clearTimeout(this.reopenTimer);
    this.reopenTimer = null;
    if (this.stream instanceof WriteStream) this.stream.end();
    if (config.destination === 'stdout') this.stream = process.stdout;
    else this.openFile(config.destination);
  }

  /** Reopens the file (log rotation): the next events go to a file of that name. */
  reopen(): void {
    if (this.config.destination === 'stdout' || this.stream === process.stdout) return;
    this.stream?.end();
    this.openFile(this.config.destination);
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
    this.stream?.write(JSON.stringify({ time: new Date().toISOString(), event, ...fields }, censorSecrets) + '\n');
  }

  /** Ends the stream so that everything accepted reaches the file (at shutdown). */
  close(): Promise<void> {
    if (this.reopenTimer) clearTimeout(this.reopenTimer);
    const stream = this.stream;
    if (!stream || stream === process.stdout || stream === process.stderr) return Promise.resolve();
    return new Promise((resolve) => stream.end(() => resolve()));
  }
}

/** Belt and braces: a field named like a secret is never written, whatever a caller passes. */
function censorSecrets(key: string, value: unknown): unknown {
  return key === 'password' || key === 'secret' ? '<REDACTED>' : value;
}
