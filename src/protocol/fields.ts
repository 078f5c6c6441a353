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

/** What an editFields `edit` returns to leave a field out. */
export const DROP_FIELD: unique symbol = Symbol('drop field');

/**
 * An ErrorResponse/NoticeResponse with each field's text passed through `edit` with its
 * code, which returns the new text, null to keep it, or DROP_FIELD to leave the field out:
 * `frame` itself when no field changed.
 */
export function editFields(frame: Buffer, edit: (code: number, text: string) => string | null | typeof DROP_FIELD): Buffer {
  const parts: Buffer[] = [frame.subarray(0, 1), Buffer.alloc(4)];
  let pos = 5;
  let changed = false;
  while (pos < frame.length && frame[pos] !== 0) {
    const end = frame.indexOf(0, pos + 1);
    if (end < 0) return frame;
    const edited = edit(frame[pos]!, frame.toString('utf8', pos + 1, end));
    if (edited === null) parts.push(frame.subarray(pos, end + 1));
    else {
      changed = true;
      if (edited !== DROP_FIELD) parts.push(frame.subarray(pos, pos + 1), Buffer.from(`${edited}\0`, 'utf8'));
    }
    pos = end + 1;
  }
  if (!changed) return frame;
  parts.push(Buffer.from([0]));
  const out = Buffer.concat(parts);
  out.writeInt32BE(out.length - 1, 1);
  return out;
}

/**
 * An ErrorResponse/NoticeResponse with its position field (P, 1-based, in characters of the
 * query text) moved `by` characters back: the client's text began that far into what the
 * server ran. A position that would fall before the client's text is dropped.
 */
export function shiftPosition(frame: Buffer, by: number): Buffer {
  if (by === 0) return frame;
  let found = false;
  return editFields(frame, (code, text) => {
    if (code !== 0x50 /* P */ || found) return null;
    found = true;
    const moved = Number(text) - by;
    return Number.isInteger(moved) && moved >= 1 ? String(moved) : DROP_FIELD;
  });
}

/** An error that ends the server session: severity FATAL or PANIC. */
export function endsSession(fields: Readonly<Record<string, string>>): boolean {
  return fields.S === 'FATAL' || fields.S === 'PANIC' || fields.V === 'FATAL' || fields.V === 'PANIC';
}
