// The proxy's own BackendKeyData: random keys handed to clients, mapped to the session
// that owns them, so a CancelRequest reaches the server connection that client is using.

import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { serialize } from 'pg-protocol';

export interface Cancellable {
  /** The server endpoint and real key of the connection the client is using now, if any. */
  cancelTarget(): { host: string; port: number; processId: number; secretKey: number } | null;
}

export class CancelRegistry {
  private readonly sessions = new Map<bigint, Cancellable>();

  /** Issues a fresh random key for a session. */
  issue(session: Cancellable): { processId: number; secretKey: number } {
    for (;;) {
      const bytes = randomBytes(8);
      const key = bytes.readBigUInt64BE(0);
      if (this.sessions.has(key)) continue;
      this.sessions.set(key, session);
      return { processId: bytes.readInt32BE(0), secretKey: bytes.readInt32BE(4) };
    }
  }

  revoke(processId: number, secretKey: number): void {
    this.sessions.delete(keyOf(processId, secretKey));
  }

  /** Forwards a cancel for a known key; unknown keys are ignored, as PostgreSQL does. */
  cancel(processId: number, secretKey: number): boolean {
    const target = this.sessions.get(keyOf(processId, secretKey))?.cancelTarget();
    if (!target) return false;
    const socket = net.connect({ host: target.host, port: target.port });
    socket.on('error', () => socket.destroy());
    socket.setTimeout(5000, () => socket.destroy());
    socket.once('connect', () => socket.end(serialize.cancel(target.processId, target.secretKey)));
    return true;
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
