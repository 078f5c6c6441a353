// A forwarder between the proxy and PostgreSQL for tests that must see, or tamper with, what
// passes on a server connection: it keeps every chunk the proxy writes, and can slip bytes
// into the server's replies (a misbehaving or desynchronised server, which a real
// PostgreSQL cannot be made to be on cue). Listens on 127.0.0.1; closed in teardown.

import net from 'node:net';

interface Injection {
  marker: Buffer;
  bytes: Buffer;
  where: 'before' | 'after';
  done: () => void;
}

export interface UpstreamTap {
  port: number;
  /** Every chunk the proxy wrote towards PostgreSQL, in order (on loopback a small write arrives as one). */
  sent: Buffer[];
  /**
   * The next time the proxy writes a chunk containing `marker`, `bytes` reach it on that
   * connection just before (or just after) the first chunk of the server's reply. Resolves
   * once they were passed on.
   */
  inject(marker: string, bytes: Buffer, where: 'before' | 'after'): Promise<void>;
}

export async function upstreamTap(t: { teardown(f: () => unknown): void }, port: number): Promise<UpstreamTap> {
  const sent: Buffer[] = [];
  const armed: Injection[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((proxy) => {
    const pg = net.connect(port, '127.0.0.1');
    sockets.add(proxy).add(pg);
    let due: Injection | null = null;
    proxy.on('data', (chunk: Buffer) => {
      sent.push(chunk);
      const i = armed.findIndex((a) => chunk.includes(a.marker));
      if (i >= 0 && due === null) due = armed.splice(i, 1)[0]!;
      pg.write(chunk);
    });
    pg.on('data', (chunk: Buffer) => {
      const now = due;
      due = null;
      if (now?.where === 'before') proxy.write(now.bytes);
      proxy.write(chunk);
      if (now?.where === 'after') proxy.write(now.bytes);
      now?.done();
    });
    for (const [s, other] of [
      [proxy, pg],
      [pg, proxy],
    ] as const) {
      s.on('error', () => other.destroy());
      s.on('close', () => other.destroy());
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    return new Promise((r) => server.close(r));
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    sent,
    inject: (marker, bytes, where) => new Promise<void>((done) => armed.push({ marker: Buffer.from(marker), bytes, where, done })),
  };
}
