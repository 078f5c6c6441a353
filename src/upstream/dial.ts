// The transport under an upstream connection: TCP, then the PROXY v2 header HAProxy's
// `accept-proxy` expects (when configured), then PostgreSQL's SSLRequest and TLS (when
// configured). Resolves with the socket the startup packet goes on.

import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { encodeProxyV2, type ProxyAddress } from '../protocol/proxy-header.js';
import { tlsServerEndPointHash, type ChannelBinding } from '../auth/scram.js';
import type { Config, Endpoint, UpstreamTlsMode } from '../config/types.js';
import { UpstreamError } from './errors.js';

/** How to reach upstreams, built once per configuration load (the CA file is read then). */
export interface UpstreamTransport {
  readonly tlsMode: UpstreamTlsMode;
  /** PEM bundle for verify-full. */
  readonly ca: Buffer | null;
  readonly sendProxyProtocol: boolean;
}

/** `host:port`: how an upstream endpoint is named in keys, labels and messages. */
export const endpointKey = (e: Endpoint): string => `${e.host}:${e.port}`;

export const PLAIN_TRANSPORT: UpstreamTransport = { tlsMode: 'disable', ca: null, sendProxyProtocol: false };

/** upstream.tls and send_proxy_protocol, with the CA bundle read now: a bad file fails the load. */
export function buildUpstreamTransport(config: Config): UpstreamTransport {
  const { tls, send_proxy_protocol } = config.upstream;
  const ca = tls.mode === 'verify-full' && tls.ca !== undefined ? readFileSync(tls.ca) : null;
  if (ca !== null && !ca.includes('-----BEGIN CERTIFICATE-----')) throw new Error(`upstream.tls.ca: ${tls.ca} holds no PEM certificate`);
  return { tlsMode: tls.mode, ca, sendProxyProtocol: send_proxy_protocol };
}

/** Same TLS, CA and PROXY settings? A connection opened under others is not reused after a reload. */
export function sameTransport(a: UpstreamTransport, b: UpstreamTransport): boolean {
  const sameCa = a.ca === b.ca || (a.ca !== null && b.ca !== null && a.ca.equals(b.ca));
  return a.tlsMode === b.tlsMode && a.sendProxyProtocol === b.sendProxyProtocol && sameCa;
}

/** Whose connection this is, for the PROXY header: null for the proxy's own (health checks). */
export interface ClientOrigin {
  readonly source: ProxyAddress;
  /** The pgbastion address the client connected to. */
  readonly destination: ProxyAddress;
}

export interface Dialed {
  readonly socket: net.Socket;
  /** tls-server-end-point data of the server's certificate, when the connection is TLS. */
  readonly channelBinding: ChannelBinding | null;
}

const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

/**
 * `onread`: net.connect's option, used when the connection stays plaintext (a TLS
 * connection reads through the TLS socket on top, and the SSLRequest answer as 'data').
 */
export function dial(endpoint: Endpoint, transport: UpstreamTransport, origin: ClientOrigin | null, timeoutMs: number, onread?: net.OnReadOpts): Promise<Dialed> {
  const where = endpointKey(endpoint);
  return new Promise((resolve, reject) => {
    const plain = transport.tlsMode === 'disable';
    let current: net.Socket = net.connect({ host: endpoint.host, port: endpoint.port, ...(plain && onread ? { onread } : {}) });
    let settled = false;
    const finish = (err: UpstreamError | null, dialed?: Dialed): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      current.removeListener('error', onError);
      current.removeListener('close', onClose);
      if (err) {
        current.destroy();
        reject(err);
      } else resolve(dialed!);
    };
    const onError = (e: Error): void => finish(new UpstreamError('unreachable', `cannot connect to ${where}: ${e.message}`));
    const onClose = (): void => finish(new UpstreamError('unreachable', `${where} closed the connection during connection setup`));
    const timer = setTimeout(() => finish(new UpstreamError('timeout', `timed out connecting to ${where}`)), timeoutMs);
    current.on('error', onError);
    current.on('close', onClose);

    current.once('connect', () => {
      if (transport.sendProxyProtocol) current.write(encodeProxyV2(origin?.source ?? null, origin?.destination ?? null));
      if (transport.tlsMode === 'disable') return finish(null, { socket: current, channelBinding: null });
      current.write(SSL_REQUEST);
      current.once('data', (answer: Buffer) => {
        current.pause();
        if (answer[0] === 0x4e /* N */) return finish(new UpstreamError('unreachable', `${where} does not accept TLS, and upstream.tls.mode is ${transport.tlsMode}`));
        if (answer[0] !== 0x53 /* S */) return finish(new UpstreamError('protocol', `${where} sent an invalid answer to the SSL request`));
        // Bytes after 'S' arrived before the handshake: they were not protected (CVE-2021-23222).
        if (answer.length > 1) return finish(new UpstreamError('protocol', `${where} sent unencrypted data after accepting TLS`));
        startTls();
      });
    });

    const startTls = (): void => {
      const raw = current;
      raw.removeListener('error', onError);
      raw.removeListener('close', onClose);
      raw.on('error', () => {}); // reported by the TLS socket on top; never an unhandled 'error'
      const verify = transport.tlsMode === 'verify-full';
      const secure = tls.connect({
        socket: raw,
        // The name verified against the certificate (without it Node checks "localhost").
        host: endpoint.host,
        // SNI takes host names only; an IP is still checked against the certificate's IP SANs.
        servername: net.isIP(endpoint.host) ? undefined : endpoint.host,
        ca: verify && transport.ca ? transport.ca : undefined,
        rejectUnauthorized: verify,
        checkServerIdentity: verify ? tls.checkServerIdentity : () => undefined,
        minVersion: 'TLSv1.2',
      });
      current = secure;
      secure.on('error', onError);
      secure.on('close', onClose);
      secure.once('secureConnect', () => {
        const cert = secure.getPeerX509Certificate();
        let channelBinding: ChannelBinding | null = null;
        try {
          if (cert) channelBinding = { type: 'tls-server-end-point', data: tlsServerEndPointHash(cert.raw) };
        } catch {
          // No hash is defined for this certificate's signature (Ed25519): no channel binding.
        }
        finish(null, { socket: secure, channelBinding });
      });
    };
  });
}
