// Decoding of the few backend message bodies the proxy reads itself
// (ErrorResponse fields, ParameterStatus, BackendKeyData, Authentication requests).

/** ErrorResponse/NoticeResponse fields keyed by their one-letter code (S, V, C, M, D, H, ...). */
export function parseFields(frame: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = 5;
  while (pos < frame.length && frame[pos] !== 0) {
    const code = String.fromCharCode(frame[pos]!);
    const end = frame.indexOf(0, pos + 1);
    if (end < 0) break;
    out[code] = frame.toString('utf8', pos + 1, end);
    pos = end + 1;
  }
  return out;
}

export function parseParameterStatus(frame: Buffer): [string, string] {
  const nameEnd = frame.indexOf(0, 5);
  const valueEnd = frame.indexOf(0, nameEnd + 1);
  return [frame.toString('utf8', 5, nameEnd), frame.toString('utf8', nameEnd + 1, valueEnd < 0 ? frame.length : valueEnd)];
}

/** Null-terminated strings of a body, from `start`, until an empty string or the end. */
export function readCStrings(frame: Buffer, start: number): string[] {
  const out: string[] = [];
  let pos = start;
  while (pos < frame.length && frame[pos] !== 0) {
    const end = frame.indexOf(0, pos);
    if (end < 0) break;
    out.push(frame.toString('utf8', pos, end));
    pos = end + 1;
  }
  return out;
}
