// Parsing of the untyped first packets a client sends: StartupMessage, SSLRequest,
// GSSENCRequest and CancelRequest. Pure functions over a complete packet.

export const MAX_STARTUP_PACKET = 10000; // PostgreSQL's MAX_STARTUP_PACKET_LENGTH
export const CANCEL_REQUEST_CODE = 80877102;
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
const PROTOCOL_3_0 = 3 << 16;

export type StartupPacket =
  | { kind: 'ssl' }
  | { kind: 'gssenc' }
  | { kind: 'cancel'; processId: number; secretKey: number }
  | { kind: 'startup'; minor: number; params: Map<string, string>; protocolOptions: string[] }
  | { kind: 'unsupported'; major: number; minor: number }
  | { kind: 'invalid'; message: string };

/**
 * Reads the declared length of a startup packet from its first 4 bytes.
 * Returns null when the length is outside what PostgreSQL accepts.
 */
export function startupLength(head: Buffer): number | null {
  const len = head.readInt32BE(0);
  return len < 8 || len > MAX_STARTUP_PACKET ? null : len;
}

/** Decodes a complete startup-phase packet (length prefix included). */
export function parseStartupPacket(packet: Buffer): StartupPacket {
  const code = packet.readInt32BE(4);
  switch (code) {
    case SSL_REQUEST_CODE:
      return packet.length === 8 ? { kind: 'ssl' } : { kind: 'invalid', message: 'invalid length of startup packet' };
    case GSSENC_REQUEST_CODE:
      return packet.length === 8 ? { kind: 'gssenc' } : { kind: 'invalid', message: 'invalid length of startup packet' };
    case CANCEL_REQUEST_CODE:
      if (packet.length !== 16) return { kind: 'invalid', message: 'invalid length of startup packet' };
      return { kind: 'cancel', processId: packet.readInt32BE(8), secretKey: packet.readInt32BE(12) };
  }
  const major = code >>> 16;
  const minor = code & 0xffff;
  if (major !== 3) return { kind: 'unsupported', major, minor };
  return parseParams(packet, minor);
}

function parseParams(packet: Buffer, minor: number): StartupPacket {
  const params = new Map<string, string>();
  const protocolOptions: string[] = [];
  let pos = 8;
  // The body is name\0value\0 pairs ended by one extra \0, which must be the last byte.
  while (pos < packet.length && packet[pos] !== 0) {
    const nameEnd = packet.indexOf(0, pos);
    if (nameEnd < 0) break;
    const valueEnd = packet.indexOf(0, nameEnd + 1);
    if (valueEnd < 0) break;
    const name = packet.toString('utf8', pos, nameEnd);
    const value = packet.toString('utf8', nameEnd + 1, valueEnd);
    if (name.startsWith('_pq_.')) protocolOptions.push(name);
    else params.set(name, value);
    pos = valueEnd + 1;
  }
  if (pos !== packet.length - 1 || packet[pos] !== 0) {
    return { kind: 'invalid', message: 'invalid startup packet layout: expected terminator as last byte' };
  }
  return { kind: 'startup', minor, params, protocolOptions };
}

export { PROTOCOL_3_0 };

/** NAMEDATALEN - 1: PostgreSQL cuts longer user and database names in a startup packet to this many bytes. */
export const NAME_BYTES = 63;

/** `s` cut to NAME_BYTES bytes of UTF-8, as PostgreSQL cuts startup names (a character cut in two is lost). */
export function asName(s: string): string {
  if (s.length <= NAME_BYTES / 4 || Buffer.byteLength(s) <= NAME_BYTES) return s;
  return Buffer.from(s).subarray(0, NAME_BYTES).toString('utf8').replace(/\uFFFD$/, '');
}
