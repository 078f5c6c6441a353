// Writes to a socket's handle without Node's Writable machinery, when nothing else is
// queued. socket.write() costs, per call, a pass through the Writable state (writeOrBuffer,
// onwrite), a process.nextTick for afterWrite and the bookkeeping around both: in bench S1,
// with one write per direction per transaction, about 8 % of the proxy's user-space CPU.
// Node itself writes through the handle the same way (stream_base_commons writeGeneric:
// a WriteWrap request, handle.writeBuffer); this module does just that, through the
// stream_wrap binding (process.binding, which Node keeps for modules that need it).
//
// Plaintext sockets only: a TLS socket's handle takes one write at a time (Node aborts the
// process on a second while the first is in flight), and only its Writable knows when the
// first is done.
//
// Rules that keep this invisible to the Writable around it:
// - Only when the socket is idle: nothing buffered in the Writable, not corked, not
//   connecting or ending, and no direct write of ours still in flight. So bytes never
//   overtake each other, and a later socket.write() (or end()) queues behind ours in libuv.
// - A write the kernel did not take at once stays in flight (libuv holds the buffer and
//   finishes it): until it completes, writes go through socket.write(), whose own
//   back-pressure then applies, and inFlight() tells a caller whose buffer may be reused
//   (reused-read.ts) to keep it.
// - Errors end the socket as a failed socket.write() would: destroy(error).
// - bytesWritten stays right: Node reads it from the handle, which counts these bytes.
// Should the binding be missing (another Node version) or warn (pending deprecations on),
// every write goes through socket.write() as before.

import type net from 'node:net';

interface StreamWrapBinding {
  WriteWrap: new () => WriteRequest;
  kLastWriteWasAsync: number;
  streamBaseState: Int32Array;
}

interface WriteRequest {
  handle: unknown;
  oncomplete: (this: WriteRequest, status: number) => void;
  async: boolean;
  bytes: number;
  buffer: Buffer | null;
  socket: DirectSocket;
}

interface StreamHandle {
  writeBuffer(req: WriteRequest, data: Buffer): number;
}

const IN_FLIGHT = Symbol('pgbastion.directWritesInFlight');

type DirectSocket = net.Socket & { _handle?: StreamHandle | null; connecting: boolean; [IN_FLIGHT]?: number };

/**
 * process.binding is deprecated (DEP0111) in documentation only, unless pending deprecations
 * are turned on: then it warns, and with --throw-deprecation the warning, raised after the
 * call returns, ends the process. In those cases it is not touched.
 */
export function pendingDeprecations(execArgv: readonly string[], env: NodeJS.ProcessEnv): boolean {
  const flags = [...execArgv, ...(env.NODE_OPTIONS ?? '').split(/\s+/)];
  return flags.includes('--pending-deprecation') || env.NODE_PENDING_DEPRECATION === '1';
}

function loadBinding(): StreamWrapBinding | null {
  if (pendingDeprecations(process.execArgv, process.env)) return null;
  try {
    const b = (process as unknown as { binding(name: string): Partial<StreamWrapBinding> }).binding('stream_wrap');
    return typeof b.WriteWrap === 'function' && b.streamBaseState instanceof Int32Array && typeof b.kLastWriteWasAsync === 'number' ? (b as StreamWrapBinding) : null;
  } catch {
    return null;
  }
}

const binding = loadBinding();

/** Whether writes can bypass the Writable on this Node (else directWrite always declines). */
export const directWritesAvailable = binding !== null;

function writeDone(this: WriteRequest, status: number): void {
  const socket = this.socket;
  socket[IN_FLIGHT] = (socket[IN_FLIGHT] ?? 1) - 1;
  this.buffer = null;
  if (status < 0 && !socket.destroyed) socket.destroy(writeError(status));
}

function writeError(status: number): Error {
  return Object.assign(new Error(`write failed (libuv error ${status})`), { errno: status, syscall: 'write' });
}

/** A direct write to `socket` has not completed yet: its buffer is still referenced. */
export function inFlight(socket: net.Socket): boolean {
  return ((socket as DirectSocket)[IN_FLIGHT] ?? 0) > 0;
}

/** Nothing buffered, in flight or corked: a write now is handed to the socket at once. */
export function isIdle(socket: net.Socket): boolean {
  return socket.writableLength === 0 && socket.writableCorked === 0 && !inFlight(socket);
}

/**
 * Writes `data` straight to the socket's handle when the socket is idle (see the module
 * comment). Returns false, having done nothing, when it is not: the caller then uses
 * socket.write().
 */
export function directWrite(socket: net.Socket, data: Buffer): boolean {
  const s = socket as DirectSocket;
  const handle = s._handle;
  if (binding === null || handle == null || typeof handle.writeBuffer !== 'function' || (s as { encrypted?: boolean }).encrypted === true) return false;
  if (!isIdle(s) || s.connecting || s.destroyed || s.writableEnded) return false;
  const req = new binding.WriteWrap();
  req.handle = handle;
  req.oncomplete = writeDone;
  req.async = false;
  req.bytes = 0;
  req.buffer = null;
  req.socket = s;
  const err = handle.writeBuffer(req, data);
  if (err !== 0) {
    s.destroy(writeError(err));
    return true;
  }
  if (binding.streamBaseState[binding.kLastWriteWasAsync] !== 0) {
    req.async = true;
    req.buffer = data; // referenced until writeDone, as Node does
    s[IN_FLIGHT] = (s[IN_FLIGHT] ?? 0) + 1;
  }
  return true;
}
