// Client-facing TLS: one swappable SecureContext (certificates reload without a restart),
// the server certificate's tls-server-end-point hash for SCRAM-SHA-256-PLUS, and the
// upgrade of a client socket after SSLRequest or for direct TLS (PostgreSQL 17's
// sslnegotiation=direct: a ClientHello first, ALPN "postgresql").

import { X509Certificate, constants as cryptoConstants } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import type { TlsConfig } from '../config/types.js';
import type { DirectRead } from '../net/direct-read.js';
import { tlsServerEndPointHash } from '../auth/scram.js';

/** TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3 suites all qualify). */
const FORWARD_SECRET_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

export const ALPN_POSTGRESQL = 'postgresql';

/** What the session learns from a completed handshake. */
export interface TlsPeer {
  readonly protocol: string;
  readonly cipher: string;
  /** Set when the client presented a certificate that chains to tls.ca and is in date. */
  readonly cert: { readonly cn?: string; readonly o?: string; readonly ou?: string; readonly subject: string; readonly fingerprint256: string } | null;
  /** Why a presented certificate was not accepted (expired, unknown CA...), else null. */
  readonly certError: string | null;
}

export class TlsTerminator {
  private context!: tls.SecureContext;
  /** tls-server-end-point channel binding data of the certificate we present. */
  endPointHash!: Buffer;
  verifiesClients = false;

  constructor(config: TlsConfig) {
    this.load(config);
  }

  /** Builds a new context from the files; the old one keeps serving until this succeeds. */
  load(config: TlsConfig): void {
    const cert = readFileSync(config.cert);
    const key = readFileSync(config.key);
    const ca = config.ca ? readFileSync(config.ca) : undefined;
    const crl = config.crl ? readFileSync(config.crl) : undefined;
    const context = tls.createSecureContext({
      cert,
      key,
      ...(ca ? { ca } : {}),
      ...(crl ? { crl } : {}),
      minVersion: config.min_version,
      ciphers: FORWARD_SECRET_CIPHERS,
      honorCipherOrder: true,
      // No session tickets, as PostgreSQL's own server. libpq never resumes a session, so
      // each login's tickets were wasted work on both ends; and a client that did offer one
      // back (a driver with a TLS session cache) got alert 80, internal error, whenever
      // client certificates are requested (tls.ca). TLS 1.3 still sends a small stateful
      // ticket; nothing stores its session, so an offer of it gets a full handshake.
      secureOptions: cryptoConstants.SSL_OP_NO_TICKET,
    });
    const leaf = new X509Certificate(cert);
    this.endPointHash = tlsServerEndPointHash(leaf.raw);
    this.context = context;
    this.verifiesClients = ca !== undefined;
  }

  /**
   * Starts the server side of a handshake on `socket`. `early` holds bytes already read
   * from it (a direct-TLS ClientHello) and the reader that read them: those bytes and the
   * ones after them go through a small JS stream in front of the socket, since a socket
   * whose bytes were consumed cannot be handed to TLS directly.
   */
  upgrade(socket: net.Socket, early: { bytes: Buffer; input: DirectRead } | null, direct: boolean): tls.TLSSocket {
    const transport = early ? prependBytes(socket, early.bytes, early.input) : socket;
    return new tls.TLSSocket(transport as net.Socket, {
      isServer: true,
      secureContext: this.context,
      requestCert: this.verifiesClients,
      // Checked after the handshake, so a client without a certificate can still use SCRAM.
      rejectUnauthorized: false,
      ...(direct ? { ALPNProtocols: [ALPN_POSTGRESQL] } : {}),
    });
  }
}

/**
 * Protocol and cipher names, one string each for every session that shares them: Node
 * returns a fresh copy per call, ~60 bytes a session keeps (bench S5). Bounded: only a
 * few names exist.
 */
const names = new Map<string, string>();
function interned(name: string): string {
  const known = names.get(name);
  if (known !== undefined) return known;
  if (names.size < 64) names.set(name, name);
  return name;
}

/** Describes a finished handshake. */
export function describePeer(socket: tls.TLSSocket): TlsPeer {
  const cipher = socket.getCipher();
  const peer = socket.getPeerCertificate();
  const presented = peer !== null && typeof peer === 'object' && Object.keys(peer).length > 0;
  const verifyError = presented ? chainError(socket) : null;
  const ok = presented && verifyError === null;
  const one = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);
  return {
    protocol: interned(socket.getProtocol() ?? 'unknown'),
    cipher: interned(cipher?.name ?? 'unknown'),
    cert: ok
      ? {
          cn: one(peer.subject?.CN),
          o: one(peer.subject?.O),
          ou: one(peer.subject?.OU),
          subject: Object.entries(peer.subject ?? {}).map(([k, v]) => `${k}=${String(v)}`).join(','),
          fingerprint256: peer.fingerprint256,
        }
      : null,
    certError: presented ? verifyError : null,
  };
}

/**
 * OpenSSL's verdict on the peer's chain (tls.ca, validity dates, CRL), or null when it
 * verified. A TLSSocket we build ourselves does not fill in `authorized` (only tls.Server's
 * sockets do), so ask the handle as tls.Server does; fail closed if that ever goes away.
 */
function chainError(socket: tls.TLSSocket): string | null {
  const handle = (socket as unknown as { _handle?: { verifyError?: () => (Error & { code?: string }) | null } })._handle;
  if (typeof handle?.verifyError !== 'function') return 'certificate verification unavailable';
  const err = handle.verifyError();
  return err ? (err.code ?? err.message) : null;
}

/** A duplex that yields `early` and then everything `input` reads, and writes to `socket`. */
function prependBytes(socket: net.Socket, early: Buffer, input: DirectRead): Duplex {
  const duplex = new Duplex({
    read() {
      input.resume();
    },
    write(chunk: Buffer, _enc, cb) {
      socket.write(chunk, cb);
    },
    final(cb) {
      socket.end(cb);
    },
    destroy(err, cb) {
      socket.destroy(err ?? undefined);
      cb(err);
    },
  });
  duplex.push(early);
  input.retarget((d: Buffer) => {
    if (!duplex.push(d)) input.pause();
  });
  // Bytes held while TLS was not reading go in before the end of stream, not after it. After
  // a clean end the duplex is destroyed (closing the TLS socket) only once TLS has read what
  // it buffers, which waits while the session has paused its reading: the socket's close
  // must not discard those bytes.
  let ended = false;
  socket.on('end', () => {
    ended = true;
    input.deliverHeld();
    duplex.push(null);
  });
  socket.on('close', () => {
    if (!ended || duplex.readableEnded) duplex.destroy();
    else duplex.once('end', () => duplex.destroy());
  });
  socket.on('error', (err) => duplex.destroy(err));
  return duplex;
}
