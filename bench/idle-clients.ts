// Many idle TLS clients (S5): a minimal PostgreSQL client that does SSLRequest, TLS, startup
// and SCRAM-SHA-256, then holds the connection without sending anything. Far lighter than
// thousands of pg.Client objects, and PBKDF2 runs once (ScramClientSession caches it).

import net from 'node:net';
import tls from 'node:tls';
import { ScramClientSession } from '../src/auth/scram.js';

const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]); // length 8, code 80877103
const TERMINATE = Buffer.from([0x58, 0, 0, 0, 4]);
const LOGIN_TIMEOUT_MS = 30_000;

function message(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

function startupMessage(user: string, database: string): Buffer {
  const body = Buffer.from(`\0\0\0\0user\0${user}\0database\0${database}\0\0`, 'utf8');
  body.writeInt32BE(196608, 0); // protocol 3.0
  const len = Buffer.alloc(4);
  len.writeInt32BE(body.length + 4);
  return Buffer.concat([len, body]);
}

function saslInitialResponse(mechanism: string, data: string): Buffer {
  const d = Buffer.from(data, 'utf8');
  const len = Buffer.alloc(4);
  len.writeInt32BE(d.length);
  return message('p', Buffer.concat([Buffer.from(mechanism + '\0', 'utf8'), len, d]));
}

/** The M (message) field of an ErrorResponse body. */
function errorText(body: Buffer): string {
  for (const field of body.toString('utf8').split('\0')) if (field.startsWith('M')) return field.slice(1);
  return 'error';
}

/** Reads backend messages off `sock` until ReadyForQuery, answering the SCRAM exchange. */
function login(sock: tls.TLSSocket, password: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const scram = new ScramClientSession(password);
    let buf = Buffer.alloc(0);
    let busy = Promise.resolve();
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 5 && buf.length >= 1 + buf.readInt32BE(1)) {
        const type = String.fromCharCode(buf[0]!);
        const body = buf.subarray(5, 1 + buf.readInt32BE(1));
        buf = buf.subarray(1 + buf.readInt32BE(1));
        // Messages are handled in order; the SCRAM step in between is asynchronous.
        busy = busy.then(() => handle(type, body)).catch((e: Error) => {
          sock.off('data', onData);
          reject(e);
        });
      }
    };
    const handle = async (type: string, body: Buffer): Promise<void> => {
      if (type === 'E') throw new Error(errorText(body));
      if (type === 'Z') {
        sock.off('data', onData);
        return resolve();
      }
      if (type !== 'R') return; // ParameterStatus, BackendKeyData
      const code = body.readInt32BE(0);
      const data = body.subarray(4).toString('utf8');
      switch (code) {
        case 0: // AuthenticationOk
          return;
        case 10: // AuthenticationSASL
          return void sock.write(saslInitialResponse(scram.mechanism, scram.clientFirst()));
        case 11: // AuthenticationSASLContinue
          return void sock.write(message('p', Buffer.from(await scram.handleServerFirst(data), 'utf8')));
        case 12: // AuthenticationSASLFinal
          if (!scram.verifyServerFinal(data)) throw new Error('server SCRAM signature mismatch');
          return;
        default:
          throw new Error(`unexpected authentication request ${code}`);
      }
    };
    sock.on('data', onData);
  });
}

/** One TLS client, logged in and idle. */
function openOne(port: number, user: string, password: string, database: string): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const raw = net.connect({ host: '127.0.0.1', port });
    let sock: tls.TLSSocket | null = null;
    const timer = setTimeout(() => fail(new Error(`login not done after ${LOGIN_TIMEOUT_MS} ms`)), LOGIN_TIMEOUT_MS);
    const fail = (e: Error) => {
      clearTimeout(timer);
      (sock ?? raw).destroy();
      reject(e);
    };
    raw.once('error', fail);
    raw.once('connect', () => raw.write(SSL_REQUEST));
    raw.once('data', (b: Buffer) => {
      if (b[0] !== 0x53) return fail(new Error(`TLS refused (answer ${JSON.stringify(b.toString('latin1', 0, 1))})`));
      sock = tls.connect({ socket: raw, rejectUnauthorized: false });
      sock.once('error', fail);
      sock.once('secureConnect', () => sock!.write(startupMessage(user, database)));
      login(sock, password).then(() => {
        clearTimeout(timer);
        sock!.off('error', fail);
        sock!.on('error', () => {}); // reported by the missing connection count, not as a crash
        sock!.on('data', () => {}); // an idle client still reads what the server may send
        resolve(sock!);
      }, fail);
    });
  });
}

export interface IdleClients {
  readonly count: number;
  /** Sends Terminate to each and waits (up to 10 s) until all are closed. */
  close(): Promise<void>;
}

/** Opens `count` logged-in idle TLS clients, `concurrency` logins at a time. */
export async function openIdleClients(
  o: { port: number; user: string; password: string; database: string; count: number; concurrency?: number },
): Promise<IdleClients> {
  const socks: tls.TLSSocket[] = [];
  const close = async () => {
    const closed = socks.map((s) => (s.closed ? Promise.resolve() : new Promise<void>((r) => s.once('close', () => r()))));
    for (const s of socks) s.end(TERMINATE);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(closed), new Promise<void>((r) => (timer = setTimeout(r, 10_000)))]);
    clearTimeout(timer);
    for (const s of socks) s.destroy();
  };
  let next = 0;
  let error: Error | null = null;
  const worker = async () => {
    while (next < o.count && error === null) {
      next++;
      try {
        socks.push(await openOne(o.port, o.user, o.password, o.database));
      } catch (e) {
        error ??= e as Error;
      }
    }
  };
  // Every worker finishes before a failure is reported, so close() sees every socket opened.
  await Promise.all(Array.from({ length: Math.min(o.concurrency ?? 100, o.count) }, worker));
  if (error !== null) {
    await close();
    throw new Error(`opening ${o.count} idle clients failed after ${socks.length}: ${(error as Error).message}`);
  }
  return { count: socks.length, close };
}
