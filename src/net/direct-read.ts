// Reads a client socket without Node's Readable machinery. A 'data' listener costs, per
// read, a Buffer over a fresh 64 KiB allocation (plaintext), a push through the Readable
// state and a process.nextTick to start reading again: about a fifth of the proxy's
// user-space CPU per transaction in bench S1/S2. net.connect has an option that skips all
// of it (`onread`, used for server connections in reused-read.ts); sockets a net.Server
// accepts, and TLSSockets built on them, do not take that option. This module sets up the
// same thing on them through the three fields Node's net.Socket keeps for it.
//
// Safety does not rest on any consumer's discipline: every socket reads into one shared
// scratch buffer, and each read is copied out (into a pooled allocation, as Buffer.from
// would) before anything else runs, so no byte handed to a consumer is ever overwritten.
// Should a Node version lack those fields, reading falls back to 'data' events.
//
// Pausing keeps a Readable stream's behaviour, which the session relies on:
// - pause() does not stop reading at once: bytes read meanwhile are held (up to HOLD_LIMIT,
//   a Readable's highWaterMark, then reading stops). So a client that leaves while its work
//   waits for a server connection is noticed (its end of stream is read), as before. Node's
//   TLS layer also hands over all the plaintext it decrypted from one network read, even
//   after pause(): those bytes are held the same way.
// - Bytes held when the socket closes are handed over at once (deliverHeld), paused or
//   not, before the session ends: a client's last messages before it closed (a TLS
//   close_notify read together with them, a Terminate) are seen in order. Waiting for the
//   session to resume instead could be forever: it may be paused on a server that is itself
//   waiting for this client to read.

import net from 'node:net';

const SCRATCH_SIZE = 64 * 1024;
const scratch = Buffer.allocUnsafe(SCRATCH_SIZE);

interface ReadFields {
  readonly buffer: symbol;
  readonly callback: symbol;
  readonly generator: symbol;
}

/** net.Socket's onread fields (kBuffer, kBufferCb, kBufferGen), found by their names. */
function findReadFields(): ReadFields | null {
  const probe = new net.Socket();
  const byName = new Map(Object.getOwnPropertySymbols(probe).map((s) => [s.description, s]));
  probe.destroy();
  const buffer = byName.get('kBuffer');
  const callback = byName.get('kBufferCb');
  const generator = byName.get('kBufferGen');
  return buffer && callback && generator ? { buffer, callback, generator } : null;
}

const fields = findReadFields();

type Fields = Record<symbol, unknown>;
interface UserBufferHandle {
  useUserBuffer?: (buffer: Uint8Array) => void;
}

/** Shared by every reader that holds nothing (most of them, most of the time); frozen, so a push to it would throw. */
const NOTHING_HELD = Object.freeze([]) as unknown as Buffer[];

/** The read callback of a socket whose reader was detached: every byte is dropped. */
function dropRead(): boolean {
  return true;
}

/** Bytes held while paused before reading stops: a Readable stream's default highWaterMark. */
export const HOLD_LIMIT = 16 * 1024;

export class DirectRead {
  /** Reads bypass the Readable stream (false: the 'data' event fallback). */
  readonly direct: boolean;
  private consumer: ((chunk: Buffer) => void) | null;
  private held: Buffer[] = NOTHING_HELD;
  private heldBytes = 0;
  private pausedByOwner = false;
  /** The socket itself is paused: HOLD_LIMIT was reached while the owner paused. */
  private stopped = false;
  private draining = false;

  constructor(
    private readonly socket: net.Socket,
    consumer: (chunk: Buffer) => void,
  ) {
    this.consumer = consumer;
    const handle = (socket as unknown as { _handle?: UserBufferHandle | null })._handle;
    const own = socket as unknown as Fields;
    if (fields !== null && own[fields.buffer] !== null) throw new Error('DirectRead: the socket already reads into a buffer of its own');
    this.direct = fields !== null && typeof handle?.useUserBuffer === 'function';
    if (this.direct) {
      own[fields!.generator] = null;
      own[fields!.callback] = (bytes: number): boolean => {
        const chunk = Buffer.allocUnsafe(bytes);
        scratch.copy(chunk, 0, 0, bytes);
        this.deliver(chunk);
        return true; // pausing is pause()'s job
      };
      own[fields!.buffer] = scratch;
      handle!.useUserBuffer!(scratch);
    } else {
      socket.on('data', (chunk: Buffer) => this.deliver(chunk));
    }
  }

  /** Hands later bytes to `consumer` instead (the raw socket's bytes go to a TLS layer). */
  retarget(consumer: (chunk: Buffer) => void): void {
    this.consumer = consumer;
  }

  /** From now on every byte read is dropped, and reading goes on (a closing connection drains). */
  drop(): void {
    this.consumer = null;
    this.held = NOTHING_HELD;
    this.heldBytes = 0;
    this.pausedByOwner = false;
    if (this.stopped) {
      this.stopped = false;
      this.socket.resume();
    }
  }

  /**
   * drop(), for good: the socket stops referring to this reader. For a socket a TLS layer
   * took over, whose reader would otherwise live as long as the connection (bench S5).
   */
  detach(): void {
    this.drop();
    if (this.direct) (this.socket as unknown as Fields)[fields!.callback] = dropRead;
  }

  get paused(): boolean {
    return this.pausedByOwner;
  }

  /** Bytes read and held while paused. */
  get holding(): number {
    return this.heldBytes;
  }

  /** Nothing more is delivered until resume(); reading goes on into the held bytes up to HOLD_LIMIT. */
  pause(): void {
    this.pausedByOwner = true;
  }

  resume(): void {
    this.pausedByOwner = false;
    if (this.held.length > 0 && !this.draining) {
      this.draining = true;
      // Not from inside resume(): its caller is in the middle of its own work.
      process.nextTick(() => this.drainHeld());
    }
    if (this.stopped) {
      this.stopped = false;
      this.socket.resume();
    }
  }

  /** Hands every held byte to the consumer now, paused or not (the socket closed: see the module comment). */
  deliverHeld(): void {
    this.handOverHeld(false);
  }

  private deliver(chunk: Buffer): void {
    if (this.consumer === null) return;
    if (!this.pausedByOwner && this.held.length === 0) return this.consumer(chunk);
    if (this.held === NOTHING_HELD) this.held = [];
    this.held.push(chunk);
    this.heldBytes += chunk.length;
    if (this.heldBytes >= HOLD_LIMIT && this.pausedByOwner && !this.stopped) {
      this.stopped = true;
      this.socket.pause();
    }
  }

  private drainHeld(): void {
    this.draining = false;
    this.handOverHeld(true);
  }

  /** Held bytes to the consumer, oldest first; `untilPaused`: stop when it pauses again. */
  private handOverHeld(untilPaused: boolean): void {
    while (this.held.length > 0 && this.consumer !== null && !(untilPaused && this.pausedByOwner)) {
      const chunk = this.held.shift()!;
      this.heldBytes -= chunk.length;
      this.consumer(chunk);
    }
  }
}
