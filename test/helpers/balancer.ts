// A tiny TCP balancer for tests: each connection to it reaches 127.0.0.1:`port` with
// `header` (a PROXY protocol header) written in front of the client's bytes.

import net from 'node:net';

export async function headerBalancer(t: { teardown(f: () => unknown): void }, port: number, header: Buffer): Promise<number> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    sockets.add(client);
    const upstream = net.connect(port, '127.0.0.1', () => {
      upstream.write(header);
      client.pipe(upstream).pipe(client);
    });
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    sockets.add(upstream);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    return new Promise((r) => server.close(r));
  });
  return (server.address() as net.AddressInfo).port;
}

/**
 * A forwarder to 127.0.0.1:`port` that holds each CancelRequest connection for `delayMs`
 * (or, given a function, for what it says for the n-th cancel, from 0) before passing it
 * on: a cancel that reaches PostgreSQL late, as when the process handling it is descheduled
 * between its two signals. Other connections pass at once.
 */
export async function slowCancelForwarder(t: { teardown(f: () => unknown): void }, port: number, delayMs: number | ((n: number) => number)): Promise<number> {
  const sockets = new Set<net.Socket>();
  let cancels = 0;
  // Half-open: a cancel's sender ends its side at once, and must see this side close only
  // when PostgreSQL closes it.
  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    sockets.add(client);
    client.once('data', (first: Buffer) => {
      client.pause();
      const isCancel = first.length >= 8 && first.readInt32BE(0) === 16 && first.readInt32BE(4) === 80877102;
      setTimeout(
        () => {
          const upstream = net.connect(port, '127.0.0.1', () => {
            upstream.write(first);
            client.pipe(upstream).pipe(client);
            client.resume();
          });
          upstream.on('error', () => client.destroy());
          sockets.add(upstream);
        },
        isCancel ? (typeof delayMs === 'number' ? delayMs : delayMs(cancels++)) : 0,
      );
    });
    client.on('error', () => client.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    return new Promise((r) => server.close(r));
  });
  return (server.address() as net.AddressInfo).port;
}
