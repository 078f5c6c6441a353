// The metrics listener: GET /metrics (Prometheus text), /healthz (the process answers),
// /readyz (config loaded and an upstream reachable at the last attempt).

import http from 'node:http';
import type { Endpoint } from '../config/types.js';

/** Where the Prometheus text comes from: this process's registry, or all workers' aggregated. */
export interface MetricsSource {
  metrics(): Promise<string>;
  readonly contentType: string;
}

export async function startMetricsServer(ep: Endpoint, source: MetricsSource, ready: () => Promise<boolean>): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    const url = (req.url ?? '/').split('?')[0];
    if (url === '/metrics') {
      source.metrics().then(
        (text) => res.writeHead(200, { 'content-type': source.contentType }).end(text),
        () => res.writeHead(500).end('metrics collection failed\n'),
      );
    } else if (url === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (url === '/readyz') {
      ready().then(
        (ok) => res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' }).end(ok ? 'ready\n' : 'no upstream reachable\n'),
        () => res.writeHead(503).end('readiness check failed\n'),
      );
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: ep.host, port: ep.port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}
