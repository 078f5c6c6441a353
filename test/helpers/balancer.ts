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
