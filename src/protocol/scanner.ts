// Header-first message framing for the typed (post-startup) protocol, in either direction.
// Reads only 5-byte headers; bodies of uninspected types are passed on as slices of the input.

import { SqlState } from './sqlstate.js';

/**
 * Receives what the scanner finds. `pass` bytes are forwarded untouched (`startsMessage`: they
 * begin with a message's type byte, not in the middle of one); `message` gets whole frames.
 */
export interface ScanSink {
  pass(bytes: Buffer, startsMessage: boolean): void;
  message(type: number, frame: Buffer): void;
}

/** A framing violation: the stream cannot be trusted any further and must be closed. */
export class FrameError extends Error {
  readonly sqlstate = SqlState.PROTOCOL_VIOLATION;
}

/**
 * A well-framed message whose names or text lack their terminator: PostgreSQL answers it
 * with ERROR 08P01 and goes on, and so does the relay, which catches it (relayMalformed).
 * Where nothing does, it is fatal, as a FrameError.
 */
export class MalformedMessage extends FrameError {}

/** A 256-entry table of message types the sink wants to see whole. */
export type InspectTable = Uint8Array;

export function inspectTable(types: string): InspectTable {
  const t = new Uint8Array(256);
  for (const ch of types) t[ch.charCodeAt(0)] = 1;
  return t;
}

export const INSPECT_ALL: InspectTable = new Uint8Array(256).fill(1);

const HEADER = 5;

export class MessageScanner {
  /** Body bytes of a passed-through message still to come. */
  private remaining = 0;
  /**
   * A header split across chunks is held back here until its type is known. Made on first
   * need: most streams never split one, and an idle client's scanner stays small (bench S5).
   */
  private header: Buffer | null = null;
  private headerLen = 0;
  /** An inspected message being assembled across chunks. */
  private partial: Buffer | null = null;
  private partialLen = 0;
  /** Nothing more is read (stop()). */
  private stopped = false;

  constructor(
    public inspect: InspectTable,
    public maxLength: number,
    private readonly sink: ScanSink,
  ) {}

  /** True when the stream sits exactly on a message boundary. */
  get atBoundary(): boolean {
    return this.remaining === 0 && this.headerLen === 0 && this.partial === null;
  }

  /** Inside a passed-through message: the bytes to come continue one whose start was passed. */
  get inPassThrough(): boolean {
    return this.remaining > 0;
  }

  /** From now on no byte reaches the sink, not even the rest of the chunk being fed (after a Terminate). */
  stop(): void {
    this.stopped = true;
  }

  feed(chunk: Buffer): void {
    const n = chunk.length;
    let pos = 0;
    let passStart = 0;
    let runStartsMessage = this.atBoundary;
    while (pos < n && !this.stopped) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, n - pos);
        this.remaining -= take;
        pos += take;
        continue;
      }
      if (this.partial !== null) {
        const take = Math.min(this.partial.length - this.partialLen, n - pos);
        chunk.copy(this.partial, this.partialLen, pos, pos + take);
        this.partialLen += take;
        pos += take;
        passStart = pos;
        runStartsMessage = true; // (when the partial is still not whole, nothing follows in this chunk)
        if (this.partialLen === this.partial.length) this.emitPartial();
        continue;
      }
      if (this.headerLen === 0 && n - pos >= HEADER) {
        const type = chunk[pos]!;
        const len = this.checkLength(chunk.readInt32BE(pos + 1));
        if (this.inspect[type] === 0) {
          this.remaining = len - 4;
          pos += HEADER;
          continue;
        }
        if (pos > passStart) this.sink.pass(chunk.subarray(passStart, pos), runStartsMessage);
        const total = len + 1;
        if (n - pos >= total) {
          const frame = chunk.subarray(pos, pos + total);
          pos += total;
          passStart = pos;
          runStartsMessage = true;
          this.sink.message(type, frame);
        } else {
          this.partial = Buffer.allocUnsafe(total);
          this.partialLen = chunk.copy(this.partial, 0, pos, n);
          pos = n;
          passStart = n;
        }
        continue;
      }
      // A header split across chunks: flush what precedes it and hold its bytes back.
      if (this.headerLen === 0 && pos > passStart) this.sink.pass(chunk.subarray(passStart, pos), runStartsMessage);
      const take = Math.min(HEADER - this.headerLen, n - pos);
      const header = (this.header ??= Buffer.alloc(HEADER));
      chunk.copy(header, this.headerLen, pos, pos + take);
      this.headerLen += take;
      pos += take;
      passStart = pos;
      if (this.headerLen < HEADER) break;
      this.headerLen = 0;
      const type = header[0]!;
      const len = this.checkLength(header.readInt32BE(1));
      if (this.inspect[type] === 0) {
        this.remaining = len - 4; // (first: the sink may ask atBoundary)
        runStartsMessage = this.remaining === 0;
        this.sink.pass(Buffer.from(header), true);
      } else {
        runStartsMessage = true; // (the partial it starts ends the chunk, or completes into a boundary)
        this.partial = Buffer.allocUnsafe(len + 1);
        header.copy(this.partial, 0);
        this.partialLen = HEADER;
        if (len === 4) this.emitPartial();
      }
    }
    if (pos > passStart && !this.stopped) this.sink.pass(chunk.subarray(passStart, pos), runStartsMessage);
  }

  private emitPartial(): void {
    const frame = this.partial!;
    this.partial = null;
    this.partialLen = 0;
    this.sink.message(frame[0]!, frame);
  }

  private checkLength(len: number): number {
    // Checked before anything is allocated for the claimed length.
    if (len < 4 || len > this.maxLength) throw new FrameError('invalid message length');
    return len;
  }
}
