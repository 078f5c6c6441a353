// Gathers buffers that sit next to each other in memory into one, so that the relay
// writes a server reply as one piece: the pass-through bytes and the messages it looked at
// (CommandComplete, ReadyForQuery ...) are slices of the same read, back to back. One write
// instead of three is one buffered entry, one write request and no writev array per reply,
// which on a 2-core machine is throughput (bench S1).

import type net from 'node:net';
import { directWrite, isIdle } from './direct-write.js';

export class SliceRun {
  /** The first buffer of the run; the run spans from its start to `end`. */
  private first: Buffer | null = null;
  /**
   * `first.buffer`, read once per run: the getter is a call into V8's C++ runtime (about 2 %
   * of the proxy's user-space CPU in bench S3 when read twice per slice).
   */
  private memory: ArrayBufferLike | null = null;
  /** Byte offset, in `memory`, just past the run. */
  private end = 0;

  get empty(): boolean {
    return this.first === null;
  }

  /**
   * Adds `bytes` after what the run holds. Returns the run it ended, to be written before
   * `bytes`, when `bytes` does not continue it in memory; else null.
   */
  push(bytes: Buffer): Buffer | null {
    if (bytes.length === 0) return null;
    if (this.first !== null && bytes.byteOffset === this.end && bytes.buffer === this.memory) {
      this.end += bytes.length;
      return null;
    }
    const ended = this.take();
    this.first = bytes;
    this.memory = bytes.buffer;
    this.end = bytes.byteOffset + bytes.length;
    return ended;
  }

  /** Empties the run and returns its bytes (null if it held none). No copy is made. */
  take(): Buffer | null {
    const first = this.first;
    if (first === null) return null;
    const memory = this.memory!;
    this.first = null;
    this.memory = null;
    const length = this.end - first.byteOffset;
    return length === first.length ? first : Buffer.from(memory, first.byteOffset, length);
  }
}

/**
 * Bytes of non-adjacent runs a burst gathers, then copies into one buffer for one write,
 * before it falls back to corking the socket. Copying a few KiB costs less than what the
 * Writable does per corked write (its buffered list, a writev, the afterWrite callbacks):
 * a pin switch ahead of a client's extended-protocol batch, or a reply with messages taken
 * out of it, went that way on every transaction (bench S7 extended: clearBuffer alone was
 * 7.6 % of the proxy's user CPU).
 */
export const GATHER_LIMIT = 16 * 1024;

/**
 * The writes of one burst of work to one socket (what one read makes the relay send):
 * slices that follow each other become one run; a burst of several runs is copied into one
 * buffer while it is small (GATHER_LIMIT), else the socket is corked and each run written.
 * Either way the socket gets the bytes in order, at flush() or (corked) as they come; nothing
 * else may write to the socket during a burst. flush() ends the burst.
 */
export class CoalescedWrites {
  private readonly run = new SliceRun();
  /** The socket of the burst under way; null between bursts. */
  private target: net.Socket | null = null;
  private corked = false;
  /** Runs the burst ended, held for one gathered write (see GATHER_LIMIT). */
  private gathered: Buffer[] = [];
  private gatheredBytes = 0;
  /** Whether the target was idle when the burst began: then flush() hands everything to it. */
  startedIdle = false;
  /** The last flush() wrote a copy (Buffer.concat): nothing it wrote refers to the slices' memory. */
  copied = false;

  write(socket: net.Socket, bytes: Buffer): void {
    if (this.target !== socket) {
      this.flush();
      this.target = socket;
      this.startedIdle = isIdle(socket);
    }
    const ended = this.run.push(bytes);
    if (ended === null) return;
    if (this.corked) return void socket.write(ended);
    this.gathered.push(ended);
    this.gatheredBytes += ended.length;
    if (this.gatheredBytes <= GATHER_LIMIT) return;
    // Too much to copy: what is held goes to the corked socket, and the rest as it comes.
    this.corked = true;
    socket.cork();
    for (const b of this.gathered) socket.write(b);
    this.gathered = [];
    this.gatheredBytes = 0;
  }

  /**
   * Writes what the burst gathered; returns the socket written to (null: no burst). One
   * write to an idle socket skips the Writable (direct-write.ts).
   */
  flush(): net.Socket | null {
    const socket = this.target;
    if (socket === null) return null;
    this.target = null;
    let last = this.run.take();
    this.copied = this.gathered.length > 0;
    if (this.copied) {
      if (last !== null) {
        this.gathered.push(last);
        this.gatheredBytes += last.length;
      }
      last = Buffer.concat(this.gathered, this.gatheredBytes);
      this.gathered = [];
      this.gatheredBytes = 0;
    }
    if (last !== null && (this.corked || !directWrite(socket, last))) socket.write(last);
    if (this.corked) {
      this.corked = false;
      socket.uncork();
    }
    return socket;
  }
}
