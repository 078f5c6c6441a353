// `pgbastion scram-secret`: reads a password on stdin and prints its PostgreSQL SCRAM-SHA-256
// secret (pg_authid format). The password never goes through argv, where `ps` would show it.

import { makeScramSecret } from '../auth/scram.js';

const USAGE = `usage: pgbastion scram-secret [--iterations N]

Reads a password on standard input (one trailing newline is removed) and prints
a SCRAM-SHA-256 secret as PostgreSQL stores it, for the config's users section.

  --iterations N   PBKDF2 iteration count, an integer >= 1 (default 4096)
  --help           show this help

example: printf '%s' "$PASSWORD" | pgbastion scram-secret`;

const MAX_ITERATIONS = 0x7fffffff;
/** Far above PostgreSQL's 1024-byte password limit; stops reading a runaway stdin early. */
const MAX_INPUT_BYTES = 64 * 1024;

/**
 * Run the sub-command. `out` and `err` print one line each (the caller adds the newline).
 * Exit codes: 0 printed a secret or help, 1 invalid option or password.
 */
export async function runScramSecret(
  args: string[],
  stdin: NodeJS.ReadableStream,
  out: (s: string) => void,
  err: (s: string) => void,
): Promise<number> {
  let iterations = 4096;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--help' || arg === '-h') {
      out(USAGE);
      return 0;
    }
    let value: string | undefined;
    if (arg === '--iterations') value = args[++i];
    else if (arg.startsWith('--iterations=')) value = arg.slice('--iterations='.length);
    else {
      err(`pgbastion scram-secret: unknown argument "${arg}"\n\n${USAGE}`);
      return 1;
    }
    const n = value !== undefined && /^[0-9]+$/.test(value) ? Number(value) : NaN;
    if (!Number.isSafeInteger(n) || n < 1 || n > MAX_ITERATIONS) {
      err(`pgbastion scram-secret: --iterations needs an integer from 1 to ${MAX_ITERATIONS}`);
      return 1;
    }
    iterations = n;
  }

  const read = await readAll(stdin);
  if (read === null) {
    err(`pgbastion scram-secret: input longer than ${MAX_INPUT_BYTES} bytes`);
    return 1;
  }
  let password: string;
  try {
    password = new TextDecoder('utf-8', { fatal: true }).decode(read);
  } catch {
    err('pgbastion scram-secret: the password is not valid UTF-8');
    return 1;
  }
  if (password.endsWith('\r\n')) password = password.slice(0, -2);
  else if (password.endsWith('\n')) password = password.slice(0, -1);
  if (password === '') {
    err('pgbastion scram-secret: empty password on standard input');
    return 1;
  }

  try {
    out(await makeScramSecret(password, { iterations }));
  } catch (e) {
    err(`pgbastion scram-secret: ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  }
  return 0;
}

/** The whole of `stream` as bytes; null once it exceeds MAX_INPUT_BYTES. */
async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer | null> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of stream) {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : Buffer.from(chunk);
    total += buf.length;
    if (total > MAX_INPUT_BYTES) return null;
    chunks.push(buf);
  }
  return Buffer.concat(chunks);
}
