// Builders for the backend (server → client) messages pgbastion writes itself.
// Each returns a complete frame; constant frames are built once at module load.

import type { SqlStateCode } from './sqlstate.js';

function frame(type: string, body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = type.charCodeAt(0);
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

function cstr(s: string): Buffer {
  return Buffer.from(s + '\0', 'utf8');
}

function int32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeInt32BE(n, 0);
  return b;
}

export type Severity = 'FATAL' | 'ERROR' | 'WARNING' | 'NOTICE';

export interface ErrorFields {
  severity: Severity;
  code: SqlStateCode | string;
  message: string;
  detail?: string;
  hint?: string;
}

/** ErrorResponse ('E') or NoticeResponse ('N') with S, V, C, M and optional D, H fields. */
function fieldsMessage(type: 'E' | 'N', f: ErrorFields): Buffer {
  const parts: Buffer[] = [
    Buffer.from('S'), cstr(f.severity),
    Buffer.from('V'), cstr(f.severity),
    Buffer.from('C'), cstr(f.code),
    Buffer.from('M'), cstr(f.message),
  ];
  if (f.detail) parts.push(Buffer.from('D'), cstr(f.detail));
  if (f.hint) parts.push(Buffer.from('H'), cstr(f.hint));
  parts.push(Buffer.from([0]));
  return frame(type, Buffer.concat(parts));
}

export const errorResponse = (f: ErrorFields): Buffer => fieldsMessage('E', f);
export const noticeResponse = (f: ErrorFields): Buffer => fieldsMessage('N', f);

export const fatal = (code: SqlStateCode | string, message: string, detail?: string): Buffer =>
  errorResponse({ severity: 'FATAL', code, message, detail });

export const authenticationOk = frame('R', int32(0));

export function authenticationSasl(mechanisms: readonly string[]): Buffer {
  return frame('R', Buffer.concat([int32(10), ...mechanisms.map(cstr), Buffer.from([0])]));
}

export function authenticationSaslContinue(data: string): Buffer {
  return frame('R', Buffer.concat([int32(11), Buffer.from(data, 'utf8')]));
}

export function authenticationSaslFinal(data: string): Buffer {
  return frame('R', Buffer.concat([int32(12), Buffer.from(data, 'utf8')]));
}

export function parameterStatus(name: string, value: string): Buffer {
  return frame('S', Buffer.concat([cstr(name), cstr(value)]));
}

export function backendKeyData(processId: number, secretKey: number): Buffer {
  const body = Buffer.allocUnsafe(8);
  body.writeInt32BE(processId, 0);
  body.writeInt32BE(secretKey, 4);
  return frame('K', body);
}

export function readyForQuery(status: 'I' | 'T' | 'E'): Buffer {
  return frame('Z', Buffer.from(status));
}

/** NegotiateProtocolVersion ('v'): newest minor we support plus the options we did not recognise. */
export function negotiateProtocolVersion(minor: number, unrecognised: readonly string[]): Buffer {
  return frame('v', Buffer.concat([int32(minor), int32(unrecognised.length), ...unrecognised.map(cstr)]));
}

/** Single-byte answers to SSLRequest / GSSENCRequest. */
export const SSL_NO = Buffer.from('N');
export const SSL_YES = Buffer.from('S');
