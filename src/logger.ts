// The operational log: structured JSON lines (pino) on stderr, one child logger per session.
// The audit trail is a separate stream (audit/).

import pino, { type Logger } from 'pino';

export function createLogger(level: string, destination: NodeJS.WritableStream | number = 2): Logger {
  const stream = typeof destination === 'number' ? pino.destination({ fd: destination, sync: false }) : destination;
  return pino(
    {
      level,
      base: { service: 'pgbastion' },
      // Nothing secret may reach the log even by accident.
      redact: { paths: ['password', 'secret', '*.password', '*.secret'], censor: '<REDACTED>' },
    },
    stream,
  );
}
