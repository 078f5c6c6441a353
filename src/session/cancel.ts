// The proxy's own BackendKeyData: random keys handed to clients, mapped to the session
// that owns them, so a CancelRequest reaches the server connection that client is using.

import { secureRandomBytes } from '../auth/random-pool.js';
import { serialize } from 'pg-protocol';
import type { Endpoint } from '../config/types.js';
import { dial, type UpstreamTransport } from '../upstream/dial.js';

/** How long delivering a cancel may take: connecting (TLS included) and PostgreSQL closing. */
const CANCEL_TIMEOUT_MS = 2000;

export interface CancelTarget {
  endpoint: Endpoint;
  /** The cancel goes the way the connection went: same TLS, same PROXY header (HAProxy requires it). */
  transport: UpstreamTransport;
  processId: number;
  secretKey: number;
  /**
   * Told of the cancel on its way: `done` resolves true once PostgreSQL has handled it (closed
   * the cancel connection), false when that was not seen (a timeout), so it may still land.
   */
  delivering(done: Promise<boolean>): void;
}

export interface Cancellable {
  /** The server endpoint and real key of the connection the client is using now, if any. */
  cancelTarget(): CancelTarget | null;
  /** No server connection yet: cancel the work waiting for one. Returns whether there was any. */
  cancelWaiting(): boolean;
}

export class CancelRegistry {
  private readonly sessions = new Map<bigint, Cancellable>();
  /**
   * Where a cancel for a key this process does not know is passed on (workers: N, where a
   * CancelRequest may land on another worker than its session). Null: it is ignored.
   */
  elsewhere: ((processId: number, secretKey: number) => void) | null = null;

  /** Issues a fresh random key for a session. */
  issue(session: Cancellable): { processId: number; secretKey: number } {
    for (;;) {
      const bytes = secureRandomBytes(8);
      const key = bytes.readBigUInt64BE(0);
      if (this.sessions.has(key)) continue;
      this.sessions.set(key, session);
      return { processId: bytes.readInt32BE(0), secretKey: bytes.readInt32BE(4) };
    }
  }

  revoke(processId: number, secretKey: number): void {
    this.sessions.delete(keyOf(processId, secretKey));
  }

  /**
   * Forwards a cancel for a known key; unknown keys go `elsewhere` (unless this cancel
   * already came from there), or are ignored as PostgreSQL does.
   */
  cancel(processId: number, secretKey: number, passOn = true): boolean {
    return this.forward(processId, secretKey, passOn) !== null;
  }

  /**
   * As cancel(), for the client's own cancel connection: resolves once the cancel is handled,
   * for one relayed to PostgreSQL when PostgreSQL has closed the cancel connection (it has
   * signalled the backend then). PostgreSQL closes a cancel connection only at that point
   * and libpq's PQcancel waits for it: the proxy's must not close earlier.
   */
  cancelAndWait(processId: number, secretKey: number): Promise<void> {
    return this.forward(processId, secretKey, true) ?? Promise.resolve();
  }

  /** Null: nothing here to cancel. Else resolves when the cancel is done with. */
  private forward(processId: number, secretKey: number, passOn: boolean): Promise<void> | null {
    const session = this.sessions.get(keyOf(processId, secretKey));
    if (!session) {
      if (passOn) this.elsewhere?.(processId, secretKey);
      return null;
    }
    const target = session.cancelTarget();
    if (!target) return session.cancelWaiting() ? Promise.resolve() : null;
    const delivered = dial(target.endpoint, target.transport, null, CANCEL_TIMEOUT_MS).then(
      ({ socket }) =>
        new Promise<boolean>((resolve) => {
          let seen = true;
          const unseen = (): void => {
            seen = false;
            socket.destroy();
          };
          socket.on('error', unseen);
          socket.setTimeout(CANCEL_TIMEOUT_MS, unseen);
          socket.once('close', () => resolve(seen));
          socket.end(serialize.cancel(target.processId, target.secretKey));
          socket.resume(); // PostgreSQL answers nothing; drain until it closes
        }),
      () => true, // unreachable: it cannot land
    );
    // Until PostgreSQL has signalled the backend, the connection must not serve another client.
    target.delivering(delivered);
    return delivered.then(() => undefined);
  }

  get size(): number {
    return this.sessions.size;
  }
}

function keyOf(processId: number, secretKey: number): bigint {
  const b = Buffer.allocUnsafe(8);
  b.writeInt32BE(processId, 0);
  b.writeInt32BE(secretKey, 4);
  return b.readBigUInt64BE(0);
}
