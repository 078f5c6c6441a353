// Ending a client connection without losing the last message. Closing a socket whose
// receive buffer still holds unread bytes makes the kernel send RST, which can discard
// the FATAL we just wrote; so we half-close, keep draining input, and only destroy after
// the peer closes or a short grace period passes.

import type net from 'node:net';

const LINGER_MS = 2000;

export function endAndLinger(socket: net.Socket, last?: Buffer): void {
  if (socket.destroyed) return;
  if (!socket.writableEnded) {
    if (last) socket.end(last);
    else socket.end();
  }
  socket.resume();
  setTimeout(() => socket.destroy(), LINGER_MS).unref();
}
