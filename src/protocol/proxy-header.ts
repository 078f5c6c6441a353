// PROXY protocol headers (HAProxy's spec, v1 text and v2 binary) that a trusted load
// balancer puts in front of the PostgreSQL stream to carry the real client address.
// Pure: parses a prefix of the bytes read so far; never allocates for a claimed length.

import { parseClientAddress } from '../hba/rules.js';

export type ProxyHeader =
  | { readonly kind: 'incomplete' }
  | { readonly kind: 'invalid'; readonly message: string }
  /** `source` is absent for LOCAL (v2) and UNKNOWN (v1): keep the peer's own address. */
  | { readonly kind: 'ok'; readonly length: number; readonly source?: { readonly address: string; readonly port: number } };

const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V1_PREFIX = Buffer.from('PROXY ');
/** v1 lines are at most 107 bytes including CRLF. */
const V1_MAX = 107;
/** v2 address block plus TLVs we are willing to read. */
const V2_MAX_BODY = 512;

/** Could `buf` (possibly partial) be the start of a PROXY header? */
export function looksLikeProxyHeader(buf: Buffer): boolean {
  const n = Math.min(buf.length, V2_SIGNATURE.length);
  if (buf.subarray(0, n).equals(V2_SIGNATURE.subarray(0, n))) return n > 0;
  const m = Math.min(buf.length, V1_PREFIX.length);
  return m > 0 && buf.subarray(0, m).equals(V1_PREFIX.subarray(0, m));
}

export function parseProxyHeader(buf: Buffer): ProxyHeader {
  if (buf.length === 0) return { kind: 'incomplete' };
  if (buf[0] === 0x0d) return parseV2(buf);
  if (buf[0] === 0x50 /* P */) return parseV1(buf);
  return { kind: 'invalid', message: 'expected a PROXY protocol header' };
}

function parseV1(buf: Buffer): ProxyHeader {
  const n = Math.min(buf.length, V1_PREFIX.length);
  if (!buf.subarray(0, n).equals(V1_PREFIX.subarray(0, n))) return { kind: 'invalid', message: 'expected a PROXY protocol header' };
  const end = buf.indexOf('\r\n');
  if (end < 0) return buf.length >= V1_MAX ? { kind: 'invalid', message: 'PROXY v1 header too long' } : { kind: 'incomplete' };
  if (end + 2 > V1_MAX) return { kind: 'invalid', message: 'PROXY v1 header too long' };
  const parts = buf.toString('latin1', 0, end).split(' ');
  const length = end + 2;
  if (parts[1] === 'UNKNOWN') return { kind: 'ok', length };
  if (parts.length !== 6 || (parts[1] !== 'TCP4' && parts[1] !== 'TCP6')) return { kind: 'invalid', message: 'malformed PROXY v1 header' };
  const [, proto, src, , sport] = parts as [string, string, string, string, string, string];
  const port = Number(sport);
  if (!validAddress(src, proto === 'TCP4' ? 4 : 6) || !/^\d{1,5}$/.test(sport) || port > 65535) {
    return { kind: 'invalid', message: 'malformed PROXY v1 header' };
  }
  return { kind: 'ok', length, source: { address: src, port } };
}

function parseV2(buf: Buffer): ProxyHeader {
  const n = Math.min(buf.length, V2_SIGNATURE.length);
  if (!buf.subarray(0, n).equals(V2_SIGNATURE.subarray(0, n))) return { kind: 'invalid', message: 'expected a PROXY protocol header' };
  if (buf.length < 16) return { kind: 'incomplete' };
  const verCmd = buf[12]!;
  const family = buf[13]!;
  const bodyLength = buf.readUInt16BE(14);
  if (verCmd >> 4 !== 2) return { kind: 'invalid', message: 'unsupported PROXY protocol version' };
  if (bodyLength > V2_MAX_BODY) return { kind: 'invalid', message: 'PROXY v2 header too long' };
  if (buf.length < 16 + bodyLength) return { kind: 'incomplete' };
  const length = 16 + bodyLength;
  const command = verCmd & 0x0f;
  if (command === 0x0) return { kind: 'ok', length }; // LOCAL: health check from the balancer itself
  if (command !== 0x1) return { kind: 'invalid', message: 'unsupported PROXY v2 command' };
  const body = buf.subarray(16, length);
  switch (family) {
    case 0x11: // TCP over IPv4
    case 0x12: // UDP over IPv4
      if (body.length < 12) return { kind: 'invalid', message: 'PROXY v2 IPv4 address block too short' };
      return { kind: 'ok', length, source: { address: [...body.subarray(0, 4)].join('.'), port: body.readUInt16BE(8) } };
    case 0x21: // TCP over IPv6
    case 0x22: {
      if (body.length < 36) return { kind: 'invalid', message: 'PROXY v2 IPv6 address block too short' };
      const words: string[] = [];
      for (let i = 0; i < 16; i += 2) words.push(body.readUInt16BE(i).toString(16));
      return { kind: 'ok', length, source: { address: words.join(':'), port: body.readUInt16BE(32) } };
    }
    case 0x00: // UNSPEC
      return { kind: 'ok', length };
    default:
      return { kind: 'invalid', message: 'unsupported PROXY v2 address family' };
  }
}

function validAddress(s: string, family: 4 | 6): boolean {
  if (family === 4) return /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.test(s) && s.split('.').every((o) => Number(o) <= 255);
  return /^[0-9a-fA-F:.]+$/.test(s) && s.includes(':');
}

/** One side of a connection, as carried in a PROXY header. */
export interface ProxyAddress {
  readonly address: string;
  readonly port: number;
}

/**
 * A PROXY v2 header for an upstream that accepts them (HAProxy `accept-proxy`): PROXY with
 * the client's address as source and the address it connected to as destination, or
 * LOCAL (no addresses) for the proxy's own connections such as health checks, or when an
 * address is not IP. Mixed families are sent as IPv6, IPv4 mapped into ::ffff:0:0/96.
 */
export function encodeProxyV2(source: ProxyAddress | null, destination: ProxyAddress | null): Buffer {
  const src = source && ipBytes(source.address);
  const dst = destination && ipBytes(destination.address);
  if (!src || !dst) {
    const local = Buffer.alloc(16);
    V2_SIGNATURE.copy(local);
    local[12] = 0x20; // version 2, LOCAL
    return local; // family UNSPEC, no address block
  }
  const v6 = src.length === 16 || dst.length === 16;
  const width = v6 ? 16 : 4;
  const header = Buffer.alloc(16 + 2 * width + 4);
  V2_SIGNATURE.copy(header);
  header[12] = 0x21; // version 2, PROXY
  header[13] = v6 ? 0x21 : 0x11; // TCP over IPv6 / IPv4
  header.writeUInt16BE(2 * width + 4, 14);
  widen(src, width).copy(header, 16);
  widen(dst, width).copy(header, 16 + width);
  header.writeUInt16BE(source!.port, 16 + 2 * width);
  header.writeUInt16BE(destination!.port, 18 + 2 * width);
  return header;
}

/** 4 or 16 address bytes (IPv4-mapped IPv6 as 4); null for anything but an IP address. */
function ipBytes(address: string): Buffer | null {
  const ip = parseClientAddress(address);
  if (ip === null) return null;
  const out = Buffer.alloc(ip.family === 4 ? 4 : 16);
  ip.words.forEach((w, i) => out.writeUInt32BE(w, 4 * i));
  return out;
}

function widen(bytes: Buffer, width: number): Buffer {
  if (bytes.length === width) return bytes;
  const out = Buffer.alloc(16);
  out[10] = 0xff;
  out[11] = 0xff;
  bytes.copy(out, 12);
  return out;
}
