// Reads a plaintext socket into one buffer that is used again for the next read, instead
// of a fresh 64 KiB allocation per read, and hands the bytes over without Node's Readable
// stream machinery (net.connect's `onread`). Used on server connections, where every
// reply of every transaction is a read (bench S1).
//
// The catch: a slice of the buffer must not outlive the callback that got it, since the
// next read overwrites it. A consumer whose slice may be kept (a write to the client that
// did not complete at once) calls retain(), and the next read goes into a new buffer.

import type net from 'node:net';

const READ_SIZE = 64 * 1024;

export class ReusedReadBuffer {
  private buffer = Buffer.allocUnsafe(READ_SIZE);
  private retained = false;
  private consumer: ((chunk: Buffer) => void) | null = null;
  /** Copies of bytes read before there was a consumer. */
  private early: Buffer[] = [];

  /** The `onread` option of net.connect. */
  readonly onread: net.OnReadOpts = {
    buffer: () => this.next(),
    callback: (bytes: number, buffer: Uint8Array): boolean => {
      const chunk = (buffer as Buffer).subarray(0, bytes);
      if (this.consumer !== null) this.consumer(chunk);
      else this.early.push(Buffer.from(chunk));
      return true; // keep reading (back-pressure pauses the socket itself)
    },
  };

  /**
   * Where the bytes of each read go from now on (the slice is valid until it returns, see
   * retain()); bytes that arrived before are handed over first.
   */
  set onChunk(consumer: (chunk: Buffer) => void) {
    this.consumer = consumer;
    const early = this.early;
    this.early = [];
    for (const chunk of early) consumer(chunk);
  }

  /** Slices of the last read are still referenced: the next read must not overwrite them. */
  retain(): void {
    this.retained = true;
  }

  private next(): Buffer {
    if (this.retained) {
      this.retained = false;
      this.buffer = Buffer.allocUnsafe(READ_SIZE);
    }
    return this.buffer;
  }
}
