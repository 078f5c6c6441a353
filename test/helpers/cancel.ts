// Sends a CancelRequest for (processId, secretKey) to 127.0.0.1:`port`, as libpq does:
// a connection of its own that carries nothing else, kept open (no FIN) until the server
// closes it, which PostgreSQL does once it has signalled the backend. Resolves then.

import net from 'node:net';
import pg from 'pg';

export function sendCancel(port: number, processId: number, secretKey: number): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => {
      const b = Buffer.alloc(16);
      b.writeInt32BE(16, 0);
      b.writeInt32BE(80877102, 4);
      b.writeInt32BE(processId, 8);
      b.writeInt32BE(secretKey, 12);
      s.write(b);
    });
    s.on('close', () => resolve());
    s.on('error', () => resolve());
  });
}

/** Cancels what `client` (connected to 127.0.0.1:`port`) runs now, with its BackendKeyData. */
export function cancelClient(port: number, client: pg.Client): Promise<void> {
  const key = client as unknown as { processID: number; secretKey: number };
  return sendCancel(port, key.processID, key.secretKey);
}
