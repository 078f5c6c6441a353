// One client connection from accept to close: startup negotiation, HBA decision,
// authentication, server lease, and the client→server relay. One function moves its state.

import { secureRandomBytes } from '../auth/random-pool.js';
import { isUtf8 } from 'node:buffer';
import type net from 'node:net';
import type tls from 'node:tls';
import { certNamesUser } from '../hba/cert-map.js';
import { ALPN_POSTGRESQL, describePeer, type TlsPeer } from '../tls/terminate.js';
import type { Level as LogLevel, Logger } from 'pino';
import { endAndLinger } from '../net/linger.js';
import { DirectRead } from '../net/direct-read.js';
import { CertAuth, ScramAuth, TrustAuth, type AuthMethod, type AuthOutcome } from '../auth/method.js';
import * as be from '../protocol/backend.js';
import { FrameError, INSPECT_ALL, MalformedMessage, MessageScanner, type ScanSink } from '../protocol/scanner.js';
import { SqlState } from '../protocol/sqlstate.js';
import { asName, parseStartupPacket, startupLength, type StartupPacket } from '../protocol/startup.js';
import { looksLikeProxyHeader, parseProxyHeader } from '../protocol/proxy-header.js';
import { displayClientAddress, evaluate, type HbaRule } from '../hba/rules.js';
import { lockoutMessage } from '../auth/lockout.js';
import type { AuditIdentity } from '../audit/audit.js';
import { ddlStatements, type DdlStatement } from '../audit/ddl.js';
import { DdlTracker, type DdlGroup, type DdlOutcome } from './ddl-tracker.js';
import { editFields, parseFields } from '../protocol/fields.js';
import type { DenyReason } from '../metrics/metrics.js';
import { denialMessage } from '../hba/messages.js';
import type { Runtime, RuntimeUser } from '../proxy/runtime.js';
import { PoolTimeoutError, type Pool } from '../pool/pool.js';
import { stickyPerUser } from '../pool/registry.js';
import { parserFaults } from '../policy/parser.js';
import { UpstreamError } from '../upstream/errors.js';
import type { ServerConnection, ServerPeer, TxStatus } from '../upstream/server-connection.js';
import { decideStartupParams } from './startup-params.js';
import { isUtf8Name } from '../policy/client-encoding.js';
import { OUTLIVES_RESET } from '../policy/verdict.js';
import type { Cancellable, CancelTarget } from './cancel.js';
import { resolvePins } from './pins.js';
import { trackedSet, type TrackedSet } from './tracked-set.js';
import { serialize } from 'pg-protocol';
import { Refusals } from './refusal.js';
import { PreparedStatements, bindStatementName, mentionsServerName, replaceCString, statementTarget, type Statement } from './prepared.js';
import { RelayLedger } from './relay-ledger.js';
import { mergesWithCurrent, setConfigSql, settingsKey, switchPlan } from './set-config.js';
import { INLINE_MAX_BYTES, batchTakesInlineSwitch, inlineQuery, opensBlockOnly, portalName, takesInlineSwitch } from './inline-switch.js';
import { TextLru } from '../cache/text-lru.js';
import type { ClientOrigin } from '../upstream/dial.js';

export type ClientState = 'startup' | 'auth' | 'connecting' | 'ready' | 'closed';

const TRANSITIONS: Record<ClientState, readonly ClientState[]> = {
  startup: ['auth', 'closed'],
  auth: ['connecting', 'closed'],
  connecting: ['ready', 'closed'],
  ready: ['closed'],
  closed: [],
};

/** PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH bounds SASL messages before login. */
const MAX_AUTH_MESSAGE = 65535 + 64;
/**
 * Client messages the relay looks at: Terminate, the two that carry SQL (policy), the three
 * that each make the server answer with exactly one ReadyForQuery (lease accounting), the
 * three that name a prepared statement (renamed per server connection), Execute and Flush
 * (extended-protocol work not yet closed by a Sync), CopyDone/CopyFail (end of COPY IN).
 */
/** Every type but CopyData, whose bytes are passed on as read: an unknown type is refused, not passed on. */
const CLIENT_RELAY_INSPECT = (() => {
  const t = new Uint8Array(256).fill(1);
  t[0x64 /* d */] = 0;
  return t;
})();
/** NegotiateProtocolVersion names the newest version served, as PostgreSQL writes it (major << 16 | minor). */
const PROTOCOL_3_0 = 3 << 16;
/** What a released server connection runs before another client may use it. */
const RESET_SQL = 'DISCARD ALL';
const TLS_HANDSHAKE_RECORD = 0x16;
const EMPTY = Buffer.alloc(0);
/** The settings or pins of a session that has none yet: one shared (read-only) Map instead of one per client. */
const NONE: ReadonlyMap<string, string> = new Map();
/** lo_open, lo_close, loread, lowrite, lo_lseek(64), lo_creat, lo_create, lo_tell(64), lo_truncate(64), lo_unlink. */
const LARGE_OBJECT_FUNCTIONS = new Set([952, 953, 954, 955, 956, 3170, 957, 715, 958, 3171, 1004, 3172, 964]);
const Q = 0x51;
const P = 0x50;
const S = 0x53;
const F = 0x46;
const B = 0x42;
const D = 0x44;
const C = 0x43;
const E = 0x45;
const H = 0x48;
const COPY_DATA = 0x64;
const COPY_DONE = 0x63;
const COPY_FAIL = 0x66;
/** Prepared statements a server connection may hold before the next lease deallocates them all. */
const MAX_SERVER_STATEMENTS = 1000;
const DEALLOCATE_ALL = /^\s*deallocate\s+(prepare\s+)?all\s*;?\s*$/i;
const DEALLOCATE_ONE = /^\s*deallocate\s+(prepare\s+)?(?:"([^"]+)"|([a-z_][a-z0-9_$]*))\s*;?\s*$/i;

/** A FATAL a session is ended with once it is between transactions (see endIfRevokedAndIdle). */
interface Ending {
  readonly code: string;
  readonly message: string;
  readonly detail: string;
}

const administratorCommand = (detail: string): Ending => ({ code: SqlState.ADMIN_SHUTDOWN, message: 'terminating connection due to administrator command', detail });

/** Why work the server will never answer failed (see answerLostTransaction). */
interface LostWork {
  readonly code?: string;
  readonly message: string;
  readonly detail: string;
  /** The ErrorResponse already went out (the server connection died mid-batch): the Sync gets only ReadyForQuery. */
  readonly reported?: true;
}

/** Bytes on their way to the server; `type` 0 for pass-through bytes that are no whole message. */
interface Outgoing {
  readonly bytes: Buffer;
  readonly type: number;
  /** A prepared statement the server connection must hold before these bytes reach it. */
  readonly needs: Statement | null;
  /** This Parse defines `defines` on the server connection. */
  readonly defines: Statement | null;
  /** Statements the audit trail records once they complete. */
  readonly ddl?: readonly DdlStatement[];
  /** A Bind/Describe of the unnamed statement: it must be this client's, on this connection. */
  readonly usesUnnamed?: { readonly start: number; readonly end: number };
  /**
   * With usesUnnamed: the client's unnamed statement when the message came (null: none), what
   * a replay writes. A Parse read later, while this waited for a server connection, is not its.
   */
  readonly unnamedParse?: Buffer | null;
  /** A Bind, of a statement holding these audited statements (the unnamed one as it was when the Bind came, a named one as latest() tells; null: none). */
  readonly bindsDdl?: DdlGroup | null;
  /** A SET of a startup parameter (its Parse, or a Bind of it as the unnamed statement): one of the client's settings once the server accepts it. */
  readonly sets?: TrackedSet;
  /** A DEALLOCATE of this server-side statement. */
  readonly deallocates?: Statement;
  /** A Close of this statement, and PreparedStatements.seq when it came (see PreparedStatements.closed). */
  readonly closes?: { readonly stmt: Statement; readonly seq: number };
  /** A Query whose text lacks its terminator (relayMalformed): the server refuses it, dropping nothing. */
  readonly malformed?: true;
  /** With `needs`: PreparedStatements.seq when the message came (see PreparedStatements.replayable). */
  readonly at?: number;
  /** The SQL of a client's own Query or Parse, as it wrote it, that a settings switch may ride with (inline-switch.ts). */
  readonly own?: string;
}


export class ClientSession implements ScanSink, ServerPeer, Cancellable {
  readonly id = secureRandomBytes(6).toString('hex');
  state: ClientState = 'startup';
  /**
   * The child logger with this session's fields (logFields()), made when a line is first
   * written and again after the fields change. At the usual level most sessions write no
   * line: a child held by every idle client cost ~0.7 KiB each (bench S5).
   */
  private logger: Logger | null = null;

  /** The client's address: the peer's, or the one a trusted PROXY header gave. */
  private address: string;
  private port: number;
  /** The trusted balancer whose PROXY header named the client, or null. */
  private via: string | null = null;
  /** A trusted balancer is in front: its PROXY header must come before anything else. */
  private awaitingProxyHeader: boolean;
  /**
   * Startup bytes not yet handled. Never a zero-length view of a read's chunk: that would
   * keep the chunk's whole 8 KiB pool slab alive for as long as the session (bench S5).
   */
  private startupBuf: Buffer = EMPTY;
  private sslAnswered = false;
  private readonly startedAt = performance.now();
  private hbaRule = 0;
  private transactions = 0;
  /** Audited statements in flight, settled as the server answers them. */
  private readonly ddl: DdlTracker;
  private pinValues: ReadonlyMap<string, string> = NONE;
  /**
   * The work this client sent cannot run: its transaction died with its server connection,
   * or no server connection could be opened for it. Answered at the next Query/Sync.
   */
  private lostTransaction: LostWork | null = null;
  /** A FATAL from the server went to the client (as an ERROR) before the connection dropped. */
  private serverFatalRelayed = false;
  /**
   * The FATAL that ends this session at its next transaction boundary (a reload withdrew its
   * permission, the proxy is shutting down, or it became sticky past its user's share of the
   * pool). Null while it may go on.
   */
  private revoked: Ending | null = null;
  /** The pool whose sticky share for this user the session holds (pool.max_sticky_per_user). */
  private stickyShare: Pool | null = null;
  /** Sticky without a share: when the session ends at the latest (endOverStickyShare). */
  private shareDeadline: NodeJS.Timeout | null = null;
  /** Set once a TLS handshake completed on this connection. */
  private tlsPeer: TlsPeer | null = null;
  private gssAnswered = false;
  private readonly scanner: MessageScanner;
  /** How this.socket is read (set by listen()). */
  private input!: DirectRead;
  /** The login's authentication exchange; dropped once it succeeded (its name stays in authMethod). */
  private auth: AuthMethod | null = null;
  /** The hba method that authenticated (or is authenticating) the client. */
  private authMethod: string | null = null;
  private user = '';
  private database = '';
  private runtimeUser: RuntimeUser | null = null;
  /** The settings (startup parameters, tracked SETs, pins) every server connection must hold for this client. */
  private params: ReadonlyMap<string, string> = NONE;
  /** settingsKey(params), updated with it. */
  private paramsKey = '';
  private key: { processId: number; secretKey: number } | null = null;
  private pool: Pool | null = null;
  private server: ServerConnection | null = null;
  /**
   * Client bytes that arrived before a server connection was attached, or that wait for a
   * cancel relayed to the attached one to land (see holdForCancel) or for the outcome of an
   * inline settings switch (see onServerReady).
   */
  private queued: Outgoing[] = [];
  /** The relayed cancel the queued bytes wait for (the server connection's `cancelling`). */
  private heldFor: Promise<boolean> | null = null;
  /** What the server still owes for what this client sent it. */
  private readonly ledger = new RelayLedger();
  /** Transaction mode: the client's last Parse of the unnamed statement, to replay elsewhere. */
  private unnamedParse: Buffer | null = null;
  /** The audited statements of unnamedParse (null: none), recorded when a portal bound to it runs. */
  private unnamedDdl: DdlGroup | null = null;
  /**
   * The tracked SET the unnamed statement is (null: none). It runs at an Execute, maybe in a
   * later batch than its Parse, after a failed one, or replayed elsewhere, or never: the
   * Execute of a portal bound to it carries the SET (setPortals), so that the connection's
   * record of settings holds what ran, no more and no less.
   */
  private unnamedSet: TrackedSet | null = null;
  /** Portals bound, in the open batch, to a tracked SET (the unnamed statement): their Execute runs it. Null: none. */
  private setPortals: Map<string, TrackedSet> | null = null;
  /** The unnamed statement on the current server connection is this client's. */
  private unnamedOnServer = false;
  /**
   * Why this session's server connection must be closed, not reset, when it leaves: it ran
   * something whose state DISCARD ALL leaves behind (OUTLIVES_RESET), else null.
   */
  private outlivesReset: string | null = null;
  /** The SQL text of the message vet() last looked at. */
  private vettedSql = '';
  /** That text as a tracked SET (tracked-set.ts), found only where the policy says it sets something; else null. */
  private vettedSet: TrackedSet | null = null;
  /** A lease request is in flight (transaction mode, between transactions). */
  private leasing = false;
  /** When the current lease was asked for (performance.now()), for the pool-wait histogram. */
  private leaseStart = 0;
  /** onData is feeding the scanner: a server batch opened meanwhile is closed when it ends. */
  private feeding = false;
  /** Work was queued during this read with no server connection: lease one when the read ends. */
  private leaseAfterRead = false;
  /** The server connection whose write batch onData closes when its read is done. */
  private batched: ServerConnection | null = null;
  /**
   * Stray copy messages: CopyData, CopyDone or CopyFail outside a COPY (one that already
   * failed, or none), and a Flush with nothing before it, are ignored by PostgreSQL. With
   * nothing else of the client's on its way they are dropped here: leasing a server connection
   * for them would hold it with no reply ever to give it back, outside any transaction (where
   * PostgreSQL's idle_in_transaction_session_timeout would end it). `droppingStray`: the next
   * pass-through bytes continue a message whose start was dropped, or went to a server
   * connection that is gone: never pass them on (its data would reach a server as messages no
   * check saw).
   */
  private droppingStray = false;
  /**
   * The client left (Terminate, or closed its socket) while its work waited on a settings
   * switch's outcome: the session stays, reading nothing more, until that work is written
   * (see leave()). Says how the client left.
   */
  private leaving: string | null = null;
  /** When the open transaction's first statement reached the server (performance.now()); -1: none open. */
  private txStartedAt = -1;
  /** pool.idle_transaction_timeout_ms: runs while the client holds a connection that waits on it. */
  private idleTimer: NodeJS.Timeout | null = null;
  /** The client socket was paused because its work has to wait (pauseToWait). */
  private pausedToWait = false;
  /** Why this client keeps its server connection until it leaves (transaction mode), or null. */
  private sticky: string | null = null;
  private readonly transactionMode: boolean;
  private readonly refusals = new Refusals();
  private readonly statements = new PreparedStatements();
  private startupTimer: NodeJS.Timeout | null;
  private originCache: ClientOrigin | null = null;
  /** Pool affinity: an idle connection already holding this client's settings and pins is leased first. */
  private readonly holdsMine = (server: ServerConnection): boolean => server.appliedKey === this.paramsKey;
  /** The client's TCP socket, under any TLS layer: where the pgbastion address it connected to is read. */
  private readonly tcp: net.Socket;

  constructor(
    public socket: net.Socket,
    private readonly rt: Runtime,
  ) {
    this.address = displayClientAddress(socket.remoteAddress ?? 'unknown');
    this.port = socket.remotePort ?? 0;
    this.tcp = socket;
    this.awaitingProxyHeader = rt.proxyHeaderTrusted(socket.remoteAddress ?? '') === true;
    this.scanner = new MessageScanner(INSPECT_ALL, MAX_AUTH_MESSAGE, this);
    this.transactionMode = rt.config.pool.mode === 'transaction';
    // Runs are followed where the session knows which statement each name means.
    this.ddl = new DdlTracker((stmt, outcome) => this.recordDdl(stmt, outcome), this.transactionMode);
    socket.setNoDelay(true);
    this.listen(socket);
    this.startupTimer = setTimeout(() => this.onStartupTimeout(), rt.config.limits.startup_timeout_ms);
  }

  private identity(): AuditIdentity {
    return {
      session_id: this.id,
      client_addr: this.address,
      client_port: this.port,
      user: this.user || null,
      database: this.database || null,
    };
  }

  private readonly onSocketData = (chunk: Buffer): void => this.onData(chunk);
  private readonly onSocketError = (err: Error): void => {
    // TLS runs over the TCP socket, and no handshake completed: this one failed.
    if (this.socket !== this.tcp && this.tlsPeer === null) {
      this.rt.metrics.tlsHandshakes.inc({ result: 'error' });
      this.denied('tls', SqlState.PROTOCOL_VIOLATION, `TLS handshake failed: ${err.message}`);
    }
    this.log('debug', { err: err.message }, 'client socket error');
  };
  /** What the client sent before it closed, still held while the session paused, is handled first (DirectRead). */
  private readonly onSocketClose = (): void => {
    this.input.deliverHeld();
    if (this.leaving === null) this.leave('client disconnected');
  };

  private listen(socket: net.Socket): void {
    this.input = new DirectRead(socket, this.onSocketData);
    socket.on('error', this.onSocketError);
    socket.on('close', this.onSocketClose);
  }

  /** Hands the connection to TLS: from now on every byte in and out goes through `secure`. */
  private startTls(early: Buffer | null, direct: boolean): void {
    const raw = this.socket;
    const rawInput = this.input;
    // A ClientHello read before the handshake is replayed to TLS, and the rest follows it;
    // after an SSLRequest, TLS reads the socket itself and nothing more arrives here.
    if (early === null) rawInput.detach();
    raw.off('error', this.onSocketError);
    raw.off('close', this.onSocketClose);
    raw.on('error', destroyOnError);
    const secure = this.rt.tls!.upgrade(raw, early === null ? null : { bytes: early, input: rawInput }, direct);
    this.socket = secure;
    this.listen(secure);
    secure.once('secure', () => this.onTlsReady(secure, direct));
  }

  private onTlsReady(secure: tls.TLSSocket, direct: boolean): void {
    if (this.state === 'closed') return;
    if (direct && secure.alpnProtocol !== ALPN_POSTGRESQL) {
      // As PostgreSQL 17: direct TLS without the postgresql ALPN could be a confused peer.
      this.log('info', null, 'direct TLS without ALPN "postgresql" refused');
      this.denied('tls', SqlState.PROTOCOL_VIOLATION, 'direct TLS connection without the "postgresql" ALPN');
      return void this.close();
    }
    const peer = describePeer(secure);
    this.tlsPeer = peer;
    this.rt.metrics.tlsHandshakes.inc({ result: 'ok' });
    this.logger = null; // its fields now name the TLS version
    if (peer.certError !== null) {
      this.fatal(SqlState.INVALID_AUTHORIZATION, `client certificate verification failed: ${peer.certError}`, undefined, 'tls');
    }
  }

  /** Writes one log line with this session's fields, if `level` is enabled. */
  private log(level: LogLevel, fields: Record<string, unknown> | null, msg: string): void {
    if (!this.rt.logger.isLevelEnabled(level)) return;
    const logger = (this.logger ??= this.rt.logger.child(this.logFields()));
    if (fields === null) logger[level](msg);
    else logger[level](fields, msg);
  }

  /** Fields every log line of this session carries, as the login has learned them so far. */
  private logFields(): Record<string, unknown> {
    return {
      session_id: this.id,
      client: `${this.address}:${this.port}`,
      ...(this.via !== null ? { via: this.via } : {}),
      ...(this.tlsPeer !== null ? { tls: this.tlsPeer.protocol } : {}),
      ...(this.user !== '' ? { user: this.user, database: this.database } : {}),
    };
  }

  private move(to: ClientState): void {
    if (!TRANSITIONS[this.state].includes(to)) {
      throw new Error(`client session ${this.id}: illegal move ${this.state} -> ${to}`);
    }
    this.state = to;
  }

  // ---- input --------------------------------------------------------------------------

  private onData(chunk: Buffer): void {
    try {
      if (this.state === 'startup') return this.onStartupData(chunk);
      if (this.state === 'ready') {
        // Everything this read makes us send to the server goes out in one write.
        this.batched = this.server;
        this.batched?.beginBatch();
        this.feeding = true;
        if (this.idleTimer !== null) this.stopIdleTimer();
        try {
          this.scanner.feed(chunk);
        } finally {
          this.feeding = false;
          const batched = this.batched;
          this.batched = null;
          if (batched !== null && !batched.endBatch() && batched === this.server) this.waitForServerDrain();
        }
        this.leaseForRead();
        this.startIdleTimerIfWaiting();
        return;
      }
      if (this.state !== 'closed') this.scanner.feed(chunk);
    } catch (err) {
      this.onFailure(err);
    }
  }

  /** Startup packets are untyped: a length, then a body; several may precede the real one. */
  private onStartupData(chunk: Buffer): void {
    this.startupBuf = this.startupBuf.length === 0 ? chunk : Buffer.concat([this.startupBuf, chunk]);
    if (!this.sslAnswered && !this.takeProxyHeader()) return;
    if (this.startupBuf[0] === TLS_HANDSHAKE_RECORD && !this.sslAnswered && this.rt.tls) {
      // Direct TLS: a ClientHello where a startup packet length would be.
      this.sslAnswered = true;
      const early = this.startupBuf;
      this.startupBuf = EMPTY;
      return this.startTls(early, true);
    }
    while (this.state === 'startup' && this.startupBuf.length >= 4) {
      const len = startupLength(this.startupBuf);
      if (len === null) return this.fatal(SqlState.PROTOCOL_VIOLATION, 'invalid length of startup packet');
      if (this.startupBuf.length < len) return;
      const packet = this.startupBuf.subarray(0, len);
      this.startupBuf = after(this.startupBuf, len);
      this.onStartupPacket(parseStartupPacket(packet));
    }
    // Bytes after the startup packet (pipelined auth messages) belong to the typed protocol.
    if (this.state !== 'startup' && this.state !== 'closed' && this.startupBuf.length > 0) {
      const rest = this.startupBuf;
      this.startupBuf = EMPTY;
      this.scanner.feed(rest);
    }
  }

  /**
   * PROXY protocol: from a trusted balancer the header is required and names the client;
   * from anyone else a header is a forgery attempt. Returns false while the session must
   * wait for more bytes or has ended.
   */
  private takeProxyHeader(): boolean {
    if (!this.awaitingProxyHeader) {
      const first = this.startupBuf[0];
      if (this.rt.proxyProtocolEnabled && (first === 0x0d || first === 0x50) && looksLikeProxyHeader(this.startupBuf)) {
        this.fatal(SqlState.PROTOCOL_VIOLATION, 'PROXY protocol header from a peer not in proxy_protocol.trusted', undefined, 'protocol');
        return false;
      }
      return true;
    }
    const header = parseProxyHeader(this.startupBuf);
    if (header.kind === 'incomplete') return false;
    if (header.kind === 'invalid') {
      this.fatal(SqlState.PROTOCOL_VIOLATION, `invalid PROXY protocol header: ${header.message}`, undefined, 'protocol');
      return false;
    }
    this.awaitingProxyHeader = false;
    this.startupBuf = after(this.startupBuf, header.length);
    if (header.source) {
      this.address = displayClientAddress(header.source.address);
      this.port = header.source.port;
      this.via = this.socket.remoteAddress ?? null;
      this.logger = null;
    }
    return this.startupBuf.length > 0;
  }

  private onStartupPacket(p: StartupPacket): void {
    switch (p.kind) {
      case 'ssl':
        if (this.sslAnswered) return this.fatal(SqlState.PROTOCOL_VIOLATION, 'duplicate SSLRequest');
        this.sslAnswered = true;
        if (!this.rt.tls) return void this.socket.write(be.SSL_NO);
        if (this.startupBuf.length > 0) {
          // Bytes sent before our answer would be read as if they came over TLS (CVE-2021-23214 class).
          this.log('warn', null, 'unencrypted data after SSLRequest');
          this.startupBuf = EMPTY;
          this.denied('protocol', SqlState.PROTOCOL_VIOLATION, 'received unencrypted data after SSL request');
          return void this.abort();
        }
        this.socket.write(be.SSL_YES);
        return this.startTls(null, false);
      case 'gssenc':
        if (this.gssAnswered) return this.fatal(SqlState.PROTOCOL_VIOLATION, 'duplicate GSSENCRequest');
        this.gssAnswered = true;
        this.socket.write(be.SSL_NO);
        return;
      case 'cancel':
        // Closed once the cancel is handled, as PostgreSQL does (libpq's PQcancel returns then).
        // Nothing else belongs on a cancel connection: whatever follows is read and dropped
        // (not held for later), and there is no startup timeout.
        this.clearStartupTimer();
        this.startupBuf = EMPTY;
        this.input.drop();
        void this.rt.cancels.cancelAndWait(p.processId, p.secretKey).then(() => this.close());
        return;
      case 'invalid':
        return this.fatal(SqlState.PROTOCOL_VIOLATION, p.message);
      case 'unsupported':
        return this.fatal(
          SqlState.FEATURE_NOT_SUPPORTED,
          `unsupported frontend protocol ${p.major}.${p.minor}: server supports 3.0 to 3.0`,
        );
      case 'startup':
        return this.onStartup(p.minor, p.params, p.protocolOptions);
      default: {
        const never: never = p;
        throw new Error(`unhandled startup packet ${String(never)}`);
      }
    }
  }

  /**
   * clientcert on a hostssl rule (PostgreSQL's wording when refused): a certificate that
   * verified against tls.ca (one that did not ended the session at the handshake), and for
   * verify-full one whose name maps to the user (cert_map, else CN = user).
   */
  private clientCertRefusal(rule: HbaRule): string | null {
    const clientcert = rule.options.clientcert;
    if (clientcert === undefined) return null;
    const cert = this.tlsPeer?.cert ?? null;
    if (cert === null) return 'connection requires a valid client certificate';
    if (clientcert === 'verify-full' && !certNamesUser(this.rt.config.cert_map, cert.cn ?? '', this.user)) {
      return `certificate validation (clientcert=verify-full) failed for user "${this.user}": CN mismatch`;
    }
    return null;
  }

  private onStartup(minor: number, params: Map<string, string>, protocolOptions: string[]): void {
    const user = params.get('user') ?? '';
    if (user === '') return this.fatal(SqlState.INVALID_AUTHORIZATION, 'no PostgreSQL user name specified in startup packet', undefined, 'startup');
    // Cut to the length of a PostgreSQL name, as PostgreSQL does: what the lockout counts,
    // logs and audit lines hold stays bounded whatever a client sends.
    this.user = asName(user);
    this.database = asName(params.get('database') || user);
    this.logger = null; // its fields now name the user and database
    if (minor > 0 || protocolOptions.length > 0) this.socket.write(be.negotiateProtocolVersion(PROTOCOL_3_0, protocolOptions));

    const replication = isReplication(params.get('replication'));
    if (replication === null) {
      return this.fatal(SqlState.INVALID_PARAMETER_VALUE, `invalid value for parameter "replication": "${params.get('replication')}"`, undefined, 'startup');
    }
    const tls = this.tlsPeer !== null;
    const rule = evaluate(this.rt.hba, { address: this.address, tls, database: this.database, user: this.user, replication });
    const conn = { address: this.address, user: this.user, database: this.database, tls, replication };
    this.rt.metrics.hba.inc({ rule: rule ? String(rule.index) : 'none', decision: rule && !replication ? rule.method : 'reject' });
    if (rule === null) return this.fatal(SqlState.INVALID_AUTHORIZATION, denialMessage('nomatch', conn), undefined, 'hba');
    if (rule.method === 'reject' || replication) return this.fatal(SqlState.INVALID_AUTHORIZATION, denialMessage('reject', conn), undefined, 'hba');
    this.hbaRule = rule.index;
    const certRefusal = this.clientCertRefusal(rule);
    if (certRefusal !== null) return this.fatal(SqlState.INVALID_AUTHORIZATION, certRefusal, undefined, 'hba');

    const decision = decideStartupParams(params, this.rt.config.pinning.variables);
    if (decision.invalid) return this.fatal(SqlState.SYNTAX_ERROR, decision.invalid, undefined, 'startup'); // (42601, as PostgreSQL)
    if (decision.refused) {
      return this.fatal(SqlState.INSUFFICIENT_PRIVILEGE, `permission denied to set parameter "${decision.refused}"`, decision.refusedWhy);
    }
    if (decision.sticky && this.transactionMode) this.makeSticky(decision.sticky);
    if (decision.dropped.length > 0) this.log('debug', { dropped: decision.dropped }, 'startup parameters not forwarded');
    this.setParams(decision.forward);

    this.runtimeUser = this.rt.users.get(this.user) ?? null;
    this.auth = this.makeAuth(rule.method);
    this.authMethod = this.auth?.name ?? null;
    if (!this.auth) {
      return this.fatal(SqlState.INVALID_AUTHORIZATION, `authentication method "${rule.method}" is not available for user "${this.user}"`, undefined, 'hba');
    }
    this.log('debug', { rule: rule.index, method: rule.method }, 'hba rule matched');
    if (this.lockedOut()) return;
    this.move('auth');
    this.onAuthOutcome(this.auth.begin());
  }

  private makeAuth(method: string): AuthMethod | null {
    switch (method) {
      case 'scram-sha-256':
        return new ScramAuth({
          secret: this.runtimeUser?.secret ?? null,
          username: this.user,
          fakeSaltKey: this.rt.fakeSaltKey,
          // On TLS, SCRAM-SHA-256-PLUS is offered, bound to the certificate we presented.
          channelBinding: this.tlsPeer ? { type: 'tls-server-end-point', data: this.rt.tls!.endPointHash } : null,
        });
      case 'cert':
        return new CertAuth(this.tlsPeer?.cert?.cn, this.user, (cn, user) => certNamesUser(this.rt.config.cert_map, cn, user));
      case 'trust':
        return new TrustAuth();
      default:
        // cert needs TLS; every other method is refused by config validation.
        return null;
    }
  }

  // ---- ScanSink: typed messages during auth and relay ---------------------------------

  pass(bytes: Buffer, startsMessage: boolean): void {
    if (this.state === 'ready') {
      if (this.droppingStray || (startsMessage && bytes[0] === COPY_DATA && this.nothingOnItsWay())) {
        this.droppingStray = !this.scanner.atBoundary;
        return;
      }
      if (this.lostTransaction === null) this.send(bytes, 0);
    } else if (this.state === 'connecting') {
      this.queued.push({ bytes, type: 0, needs: null, defines: null });
    } else if (this.state === 'auth') {
      this.fatal(SqlState.PROTOCOL_VIOLATION, 'unexpected message during authentication');
    }
  }

  /** Work this read queued, with no server connection yet: its lease starts now (see queueOrWrite). */
  private leaseForRead(): void {
    if (!this.leaseAfterRead) return;
    this.leaseAfterRead = false;
    if (this.state === 'ready' && this.server === null && !this.leasing && this.queued.length > 0) this.lease();
  }

  message(type: number, frame: Buffer): void {
    this.droppingStray = false;
    if (type === 0x58 /* X Terminate */) return this.leave('client terminated');
    switch (this.state) {
      case 'auth':
        // Again at each message: logins already under way when the lock fell must not go on
        // to have their passwords checked (many at once would each get a guess).
        if (this.lockedOut()) return;
        return this.onAuthOutcome(this.auth!.handle(type, frame));
      case 'connecting':
        // Pipelined before login completed: handled as soon as the session is ready.
        this.queued.push({ bytes: frame, type: -type, needs: null, defines: null });
        return;
      case 'ready':
        return this.clientMessage(type, frame);
      case 'startup':
      case 'closed':
        return;
      default: {
        const never: never = this.state;
        throw new Error(`unknown state ${String(never)}`);
      }
    }
  }

  /**
   * Terminate, or the client closed its socket. PostgreSQL runs what it read before either,
   * so the work the client sent goes out first: work in the same read as if leased at once,
   * statements held back for a cancel, and work behind a settings switch once the switch's
   * outcome is known (should it fail, the work would run with the previous client's
   * settings). Until then the session stays (`leaving`) and reads nothing more, as
   * PostgreSQL stops reading at a Terminate. Work still waiting for a server connection goes
   * with the client, and its place in the queue, as in PgBouncer.
   */
  private leave(how: string): void {
    if (this.leaseAfterRead) {
      this.leaseForRead();
      this.server?.flushBatch();
    }
    const server = this.server;
    if (this.state === 'ready' && server !== null && this.queued.length > 0 && !this.writeBeforeLeaving(server)) {
      this.leaving = how;
      this.scanner.stop();
      this.input.drop();
      return;
    }
    this.finish(how);
  }

  /** A leaving session ends once nothing of the client's waits any more: written, answered, or gone with its connection. */
  private endIfLeft(): void {
    if (this.leaving === null || this.state !== 'ready') return;
    const server = this.server;
    if (server !== null && this.queued.length > 0) return;
    server?.flushBatch(); // now: finish() lets the connection go next
    this.finish(this.leaving);
  }

  private onAuthOutcome(r: AuthOutcome): void {
    switch (r.kind) {
      case 'continue':
        for (const f of r.send) this.socket.write(f);
        return;
      case 'denied':
        return this.authFailed();
      case 'protocol':
        return this.fatal(SqlState.PROTOCOL_VIOLATION, r.message);
      case 'refused':
        this.rt.metrics.auth.inc({ method: this.auth!.name, result: 'fail' });
        return this.fatal(SqlState.INVALID_AUTHORIZATION, r.message, undefined, 'auth');
      case 'ok': {
        const user = this.runtimeUser;
        if (!user) return this.authFailed();
        if (user.config.valid_until && user.config.valid_until.getTime() < Date.now()) return this.authFailed();
        const cert = this.tlsPeer?.cert;
        const pins = resolvePins(user.config.pins, { user: this.user, database: this.database, ...(cert ? { cert } : {}) });
        if (!pins.ok) {
          return this.fatal(
            SqlState.INVALID_AUTHORIZATION,
            `pinned variable "${pins.variable}" needs \${${pins.missing}}, which this connection does not provide`,
            undefined,
            'auth',
          );
        }
        // Pins go last: they are what the server connection must hold for this client.
        this.pinValues = pins.values;
        // A reload during the exchange may have withdrawn what the login started under.
        const withdrawn = this.withdrawnBy();
        if (withdrawn !== null) {
          return this.fatal(SqlState.INVALID_AUTHORIZATION, 'login no longer allowed after a configuration reload', withdrawn, 'hba');
        }
        this.setParams(new Map([...this.params, ...pins.values]));
        if (this.auth!.provesCredential) this.rt.lockout.recordSuccess(this.address, this.user);
        this.rt.metrics.auth.inc({ method: this.auth!.name, result: 'ok' });
        // Nothing of the exchange is needed any more (nonces, proofs, the SCRAM state): a
        // session held for hours keeps none of it.
        this.auth = null;
        // One write (one TLS record, one wake-up of the client) for the SASL final message,
        // AuthenticationOk and, when the pool can welcome the client at once, the whole
        // login answer that completeStartup sends.
        this.socket.cork();
        for (const f of r.send) this.socket.write(f);
        this.socket.write(be.authenticationOk);
        // The login is proven: from here the wait for a server is bounded by
        // pool.acquire_timeout_ms, not by the startup timeout meant for slow logins.
        this.clearStartupTimer();
        this.move('connecting');
        this.scanner.inspect = CLIENT_RELAY_INSPECT;
        this.scanner.maxLength = this.rt.config.limits.max_message_bytes;
        this.input.pause(); // nothing more is read until the session is ready: bounded memory
        this.guard(this.connectServer(user));
        this.socket.uncork();
        return;
      }
      default: {
        const never: never = r;
        throw new Error(`unknown auth outcome ${String(never)}`);
      }
    }
  }

  /**
   * The lockout (limits.auth_failures), checked before any credential is looked at, so that
   * a locked key is no password oracle. Refuses the login and returns true when locked.
   */
  private lockedOut(): boolean {
    if (!this.auth?.provesCredential) return false;
    const verdict = this.rt.lockout.check(this.address, this.user);
    if (!verdict.locked) return false;
    this.log('warn', { by: verdict.by }, 'login refused: locked out after repeated failures');
    this.rt.metrics.lockouts.inc({ by: verdict.by });
    this.fatal(SqlState.INVALID_AUTHORIZATION, lockoutMessage(verdict), undefined, 'lockout');
    return true;
  }

  /** Same words for a wrong password and an unknown user: no enumeration. */
  private authFailed(): void {
    if (this.auth?.provesCredential) this.rt.lockout.recordFailure(this.address, this.user);
    if (this.auth) this.rt.metrics.auth.inc({ method: this.auth.name, result: 'fail' });
    this.fatal(SqlState.INVALID_PASSWORD, `password authentication failed for user "${this.user}"`, undefined, 'auth');
  }

  // ---- relay: client → server ------------------------------------------------------------

  private clientMessage(type: number, frame: Buffer): void {
    if (this.lostTransaction !== null) return this.answerLostTransaction(type);
    try {
      this.relayClientMessage(type, frame);
    } catch (err) {
      if (!(err instanceof MalformedMessage)) throw err;
      this.relayMalformed(type, frame);
    }
  }

  /**
   * A message whose names or statement lack their terminator: PostgreSQL reads the strings
   * before it does anything else and answers ERROR 08P01 "invalid string in message" (then
   * skips to Sync in a batch, and drops nothing: not even the unnamed statement at a Query).
   * So it is relayed as it came, for the server to refuse in its own words: no string of it
   * is ever run or resolved. In the bookkeeping a Query stays a Query (answered by
   * ReadyForQuery, behind a marker that touches nothing), anything else counts as a
   * Describe, whose only answer is the error.
   */
  private relayMalformed(type: number, frame: Buffer): void {
    this.log('info', { type: String.fromCharCode(type) }, 'malformed message relayed for the server to refuse');
    if (type === Q) return this.queueOrWrite({ bytes: frame, type: Q, needs: null, defines: null, malformed: true });
    this.send(frame, D);
  }

  private relayClientMessage(type: number, frame: Buffer): void {
    switch (type) {
      case Q: {
        const vetted = this.vet(frame, 5, null);
        // PostgreSQL drops the unnamed statement at every Query: it is not replayed after one.
        this.forgetUnnamed();
        if (vetted !== frame) return this.send(vetted, Q);
        const sql = this.vettedSql;
        if (this.transactionMode) {
          const dealloc = this.deallocate(sql, true);
          if (dealloc) return this.queueOrWrite(dealloc);
          const sets = this.vettedSet;
          if (sets) return this.queueOrWrite({ bytes: frame, type: Q, needs: null, defines: null, sets });
        }
        const ddl = this.ddlOf(sql);
        if (ddl !== undefined && ddl.length > 0) return this.send(frame, Q, null, null, ddl);
        return this.queueOrWrite({ bytes: frame, type: Q, needs: null, defines: null, own: sql });
      }
      case P: {
        const nameEnd = frame.indexOf(0, 5);
        if (nameEnd < 0) throw new MalformedMessage('Parse without the end of its name');
        const name = frame.toString('utf8', 5, nameEnd);
        const vetted = this.vet(frame, nameEnd + 1, name);
        const ddl = vetted === frame ? this.ddlOf(this.vettedSql) : undefined;
        const ddlGroup = ddl !== undefined && ddl.length > 0 ? ddl : null;
        // The unnamed statement is replayed if a later transaction of this client uses it elsewhere.
        if (name === '' && this.transactionMode) {
          this.unnamedParse = vetted === frame ? frame : null;
          this.unnamedDdl = ddlGroup;
          this.unnamedSet = null;
        }
        if (vetted === frame && name === '' && this.transactionMode) {
          // Drivers send their SET and DEALLOCATE statements through the extended protocol too.
          const sql = this.vettedSql;
          const dealloc = this.deallocate(sql, false);
          if (dealloc) {
            this.forgetUnnamed();
            const parse = serialize.parse({ name: '', text: dealloc.bytes.toString('utf8', 5, dealloc.bytes.length - 1), types: [] });
            return this.queueOrWrite({ ...dealloc, bytes: parse, type: P });
          }
          const sets = this.vettedSet;
          if (sets) {
            this.unnamedSet = sets;
            return this.queueOrWrite({ bytes: frame, type: P, needs: null, defines: null });
          }
        }
        if (vetted !== frame) return this.send(vetted, P, null, null, ddl);
        // Session mode keeps one server connection: names can stay as the client chose them.
        const own = this.vettedSql;
        if (name === '' || !this.transactionMode) return this.send(frame, P, null, null, ddl, own);
        // Each named statement is kept, to prepare it again on other server connections: within a budget.
        const budget = this.rt.config.limits.max_prepared_bytes;
        if (!this.statements.fits(frame.length, budget)) {
          const detail = `pgbastion keeps at most ${budget} bytes of prepared statements per client in transaction mode (limits.max_prepared_bytes; ${this.statements.heldBytes} kept): close some first.`;
          this.log('warn', { kept: this.statements.heldBytes, budget }, 'Parse refused: prepared statement budget spent');
          return this.send(this.refusals.parse(name, { code: SqlState.OUT_OF_MEMORY, message: 'out of memory', detail }), P);
        }
        const held = this.statements.get(name);
        if (held !== undefined) {
          // A name in use: the server answers as PostgreSQL would (a syntax error before 42P05;
          // success if held's own Parse, still unanswered, fails), under held's server-side
          // name, prepared there first where missing.
          const stmt = this.statements.contend(held, frame, name, nameEnd, takesInlineSwitch(own), ddlGroup, this.vettedSet);
          return this.send(stmt.parse, P, held, stmt, ddl, own);
        }
        const stmt = this.statements.define(frame, name, nameEnd, takesInlineSwitch(own), ddlGroup, this.vettedSet);
        return this.send(stmt.parse, P, null, stmt, ddl, own);
      }
      case F:
        return this.send(this.vetFunctionCall(frame), F);
      case B:
        return this.sendNaming(frame, type, this.transactionMode ? bindStatementName(frame) : null);
      case E: {
        // A tracked SET runs here, not at its Parse: the settings record follows the Execute.
        const sets = this.setPortals === null ? undefined : this.takeSetPortal(frame);
        if (sets === undefined) return this.queueOrWrite({ bytes: frame, type, needs: null, defines: null, at: this.statements.seq });
        return this.queueOrWrite({ bytes: frame, type, needs: null, defines: null, at: this.statements.seq, sets });
      }
      case S:
        // A SET portal bound and not yet executed: inside a transaction block it outlives this
        // Sync, and a later batch could run it where nothing records it.
        if (this.setPortals !== null && this.setPortals.size > 0 && this.transactionMode && this.sticky === null) this.makeSticky('SET portal across a Sync');
        this.setPortals = null;
        return this.send(frame, type);
      case D:
      case C:
        return this.sendNaming(frame, type, this.transactionMode ? statementTarget(frame) : null);
      case COPY_DONE:
      case COPY_FAIL:
      case H:
        if (this.nothingOnItsWay()) return; // a stray one, ignored by PostgreSQL: see droppingStray
        return this.send(frame, type);
      default:
        // As PostgreSQL, and not sent on: a server connection would die of it (a fork and a
        // login each, for whoever comes next).
        return this.fatal(SqlState.PROTOCOL_VIOLATION, `invalid frontend message type ${type}`);
    }
  }

  /**
   * A Bind of portal `frame` names: to the tracked SET `set`, or to anything else (null).
   * (Most sessions never bind one: then no portal name is read.)
   */
  private bindSetPortal(frame: Buffer, set: TrackedSet | null): void {
    if (set === null && this.setPortals === null) return;
    const portal = portalName(frame) ?? '';
    if (set !== null) (this.setPortals ??= new Map()).set(portal, set);
    else this.setPortals!.delete(portal);
  }

  /** The tracked SET the Execute `frame` runs (its portal's), taken off the list; else undefined. */
  private takeSetPortal(frame: Buffer): TrackedSet | undefined {
    const portal = portalName(frame) ?? '';
    const sets = this.setPortals!.get(portal);
    if (sets !== undefined) this.setPortals!.delete(portal);
    return sets;
  }

  private forgetUnnamed(): void {
    this.unnamedParse = null;
    this.unnamedDdl = null;
    this.unnamedSet = null;
  }

  /** Passed-through bytes (CopyData) are held, or one such message is still being read. */
  private holdsPassThrough(): boolean {
    return this.scanner.inPassThrough || this.queued.some((out) => out.type === 0);
  }

  /** Transaction mode, no server connection, and no work waiting for one. */
  private nothingOnItsWay(): boolean {
    return this.transactionMode && this.server === null && this.queued.length === 0 && !this.leasing;
  }

  /**
   * The transaction this client had open died with its server connection. Like PostgreSQL
   * after an error, everything up to the next Query/Sync is dropped and that one is
   * answered with the error and ReadyForQuery idle: nothing runs outside the lost transaction.
   */
  private answerLostTransaction(type: number): void {
    if (type !== Q && type !== S && type !== F) return;
    const failure = this.lostTransaction!;
    this.lostTransaction = null;
    this.socket.cork();
    if (!failure.reported) {
      this.socket.write(be.errorResponse({ severity: 'ERROR', code: failure.code ?? SqlState.CONNECTION_FAILURE, message: failure.message, detail: failure.detail }));
    }
    this.socket.write(be.readyForQuery('I'));
    this.socket.uncork();
  }

  /** Bind/Describe/Close naming a client statement: renamed, and prepared first where missing. */
  private sendNaming(frame: Buffer, type: number, at: { start: number; end: number } | null): void {
    if (at === null) return this.send(frame, type);
    if (at.end === at.start) {
      if (type === C) {
        // Closed: as after a Query, it is not replayed on a later lease.
        this.forgetUnnamed();
        return this.send(frame, type);
      }
      const bindsDdl = type === B ? this.unnamedDdl : null;
      if (type === B) this.bindSetPortal(frame, this.unnamedSet);
      return this.queueOrWrite({ bytes: frame, type, needs: null, defines: null, usesUnnamed: at, unnamedParse: this.unnamedParse, bindsDdl });
    }
    const name = frame.toString('utf8', at.start, at.end);
    const stmt = this.statements.get(name);
    if (!stmt) {
      if (type === B) this.bindSetPortal(frame, null);
      return this.send(replaceCString(frame, at.start, at.end, this.refusals.missingStatement(name)), type);
    }
    const renamed = replaceCString(frame, at.start, at.end, stmt.serverName);
    if (type === C) {
      // The name is free once the Close completes (statementClosed). It is not prepared first
      // where missing (a replay could fail where the Close would not, e.g. after a migration),
      // and messages read after it do not have it prepared either: a Bind gets 26000 and a
      // Parse of the name succeeds, as in PostgreSQL.
      this.statements.closing(stmt);
      return this.queueOrWrite({ bytes: renamed, type, needs: null, defines: null, closes: { stmt, seq: this.statements.seq } });
    }
    if (type === B) {
      // A Bind after a Close and a new Parse of the name runs the new statement: its audit group, its SET.
      const runs = this.statements.latest(stmt);
      if (runs.set !== null && this.setWouldStickPastShare()) {
        // (Prepared outside a transaction block, run inside one: refused as vet refuses a SET there.)
        this.bindSetPortal(frame, null);
        return this.send(replaceCString(frame, at.start, at.end, this.refusals.statement(this.stickyShareRefusal())), type);
      }
      this.bindSetPortal(frame, runs.set);
      return this.queueOrWrite({ bytes: renamed, type, needs: stmt, defines: null, at: this.statements.seq, bindsDdl: runs.ddl });
    }
    this.send(renamed, type, stmt);
  }

  /**
   * Runs the pinning policy on the SQL text at `at` in a Query (name null) or Parse frame.
   * Returns the frame to forward: the original, or the refusal that stands in for it.
   */
  private vet(frame: Buffer, at: number, statementName: string | null): Buffer {
    const end = frame.indexOf(0, at);
    if (end < 0) throw new MalformedMessage('statement without its terminator');
    // Text that is not UTF-8 where the client says it speaks UTF-8: PostgreSQL refuses it too
    // (22021), unless its encoding was switched behind the proxy's back (a DO block, a
    // function, in the same batch), when it could read an ASCII quote or backslash that the
    // checks below, reading UTF-8, do not see (client-encoding.ts).
    if (!isUtf8(frame.subarray(at, end)) && this.speaksUtf8()) {
      const refuse = { code: '22021', message: 'invalid byte sequence for encoding "UTF8"', detail: 'pgbastion checks every statement as UTF-8, the client encoding in force' };
      this.log('warn', null, 'statement that is not UTF-8 refused');
      return statementName === null ? this.refusals.query(refuse) : this.refusals.parse(statementName, refuse);
    }
    const sql = frame.toString('utf8', at, end);
    const verdict = this.parsing(sql, (mayParse) => this.rt.policy.classify(sql, mayParse));
    this.vettedSql = sql;
    // A tracked SET is remembered with the client's settings, unless it runs inside a
    // transaction block (settle): as far as the connection's last status tells, then it sticks too.
    this.vettedSet = verdict.sticky === 'SET' || verdict.sticky === 'set_config' ? trackedSet(sql) : null;
    const tracked = this.vettedSet !== null;
    const sticks = verdict.sticky !== null && this.transactionMode && (!tracked || this.inTransactionBlock());
    // (Also a session sticky without a share, ending for it: it may not add to what it holds.)
    if (sticks && this.stickyShare === null && verdict.refuse === null && !this.pool!.hasStickyShare(this.user)) {
      const refuse = this.stickyShareRefusal();
      this.log('warn', { reason: verdict.sticky }, 'statement refused: the user has no sticky share of the pool left');
      return statementName === null ? this.refusals.query(refuse) : this.refusals.parse(statementName, refuse);
    }
    // (Also in session mode, whose connections are reset for the next client too.)
    if (verdict.sticky !== null && OUTLIVES_RESET.has(verdict.sticky)) this.outlivesReset = verdict.sticky;
    if (sticks && !tracked && this.sticky === null) this.makeSticky(verdict.sticky!);
    if (verdict.refuse === null) return frame;
    this.log('warn', { variable: verdict.refuse.variable, detail: verdict.refuse.detail }, 'statement refused by pinning policy');
    this.rt.metrics.blocked.inc();
    this.rt.audit.write('policy.blocked', { ...this.identity(), variable: verdict.refuse.variable, why: verdict.refuse.detail, protocol: statementName === null ? 'simple' : 'extended' });
    return statementName === null ? this.refusals.query(verdict.refuse) : this.refusals.parse(statementName, verdict.refuse);
  }

  /**
   * SQL DEALLOCATE of a protocol-level statement this client prepared (drivers free theirs
   * this way): it names the server-side statement instead (a stand-in's where the connection
   * lacks it: deallocateStandIn), so the answer is PostgreSQL's own. In a Query the
   * name is freed when the DEALLOCATE completes, as a Close frees it (one that failed or was
   * skipped freed nothing); in a Parse, where it runs at some later Execute, as it is read.
   * DEALLOCATE ALL forgets all of the client's names.
   */
  private deallocate(sql: string, inQuery: boolean): Outgoing | null {
    if (DEALLOCATE_ALL.test(sql)) {
      this.statements.clear();
      return null;
    }
    const m = DEALLOCATE_ONE.exec(sql);
    if (!m) return null;
    const name = m[2] ?? m[3]!;
    const stmt = this.statements.get(name);
    if (!stmt) return null;
    const bytes = serialize.query(`DEALLOCATE "${stmt.serverName}"`);
    if (!inQuery) {
      this.statements.forget(name);
      return { bytes, type: Q, needs: stmt, defines: null, deallocates: stmt };
    }
    // Behind a Close or DEALLOCATE of it (read, not answered yet) nothing stands in for it:
    // the server says 26000 where that one succeeded, as PostgreSQL would.
    const needs = this.statements.isEnding(stmt) ? null : stmt;
    this.statements.closing(stmt);
    return { bytes, type: Q, needs, defines: null, deallocates: stmt, closes: { stmt, seq: this.statements.seq } };
  }

  // ---- DDL audit: statements recorded once the server has answered them ---------------------

  /** Audited statements in SQL vet() just decoded (none unless audit.ddl is on). */
  private ddlOf(sql: string): readonly DdlStatement[] | undefined {
    return this.rt.config.audit.ddl ? this.parsing(sql, (mayParse) => ddlStatements(sql, mayParse)) : undefined;
  }

  /**
   * Runs a reading of `sql` that may parse it (the policy's, the audit's), told whether this
   * user may have it parsed now; when it faulted the parser, the user's long texts go
   * unparsed for a while (parser-cooldown.ts).
   */
  private parsing<T>(sql: string, read: (mayParse: boolean) => T): T {
    const faults = parserFaults;
    const result = read(this.rt.parserCooldown.mayParse(this.user, sql));
    if (parserFaults !== faults) {
      this.log('warn', null, "statement faulted the policy parser: the user's long statements go unparsed for a second");
      this.rt.parserCooldown.start(this.user);
    }
    return result;
  }

  // ---- ServerPeer: what the server connection reports ----------------------------------

  /**
   * A Parse failed or was skipped: its statement does not exist on that connection. A replay
   * (injected) lost leaves the client's statement its own, to be prepared again where used.
   */
  statementLost(serverName: string, parse: Buffer, injected: boolean): void {
    if (serverName === '') {
      // Only when it was the client's latest: an older one failing leaves a newer in place.
      if (parse !== this.unnamedParse) return;
      this.unnamedOnServer = false;
      if (injected) return;
      this.forgetUnnamed();
      return;
    }
    if (!injected) this.statements.lost(serverName, parse);
  }

  /** A Close of a statement completed: its name is free (not when the Close was sent: the server may skip it). */
  statementClosed(serverName: string, seq: number): void {
    this.statements.closed(serverName, seq);
  }

  closeSkipped(serverName: string, target: Buffer): void {
    this.statements.closeSkippedFor(serverName, target);
  }

  /**
   * COPY IN started. When an Execute started it, the Syncs already sent behind that Execute
   * are ignored by the server: they will get no ReadyForQuery, so stop waiting for them.
   */
  onCopyIn(): void {
    for (let dropped = this.ledger.copyInStarted(); dropped > 0; dropped--) {
      this.ddl.unowe();
      this.server?.dropLastSyncGroup();
    }
  }

  /** The server skipped a Query written inside an extended-protocol batch that failed before it. */
  queryIgnored(): void {
    this.ledger.queryIgnored();
    this.ddl.queryIgnored();
  }

  skippingToSync(frame: Buffer): void {
    this.ledger.skipToSync(parseFields(frame).C ?? 'XX000');
  }

  get wantsCommandTags(): boolean {
    return this.ddl.active;
  }

  commandComplete(frame: Buffer): void {
    this.ddl.commandComplete(frame.toString('utf8', 5, frame.length - 1));
  }

  private recordDdl(stmt: DdlStatement, outcome: DdlOutcome): void {
    const who = { ...this.identity(), server_role: this.runtimeUser?.config.server_role, cert_subject: this.tlsPeer?.cert?.subject ?? null };
    this.rt.metrics.ddl.inc({ class: stmt.class, outcome: outcome.outcome }, outcome.runs ?? 1);
    this.rt.audit.ddl(who, { class: stmt.class, node: stmt.node, statement: stmt.statement, ...outcome });
  }

  /**
   * Fast-path function calls name a function by OID, out of the policy's sight (OID 2078 is
   * set_config). Only the large-object functions libpq calls this way are relayed.
   */
  private vetFunctionCall(frame: Buffer): Buffer {
    if (frame.length >= 9 && LARGE_OBJECT_FUNCTIONS.has(frame.readUInt32BE(5))) return frame;
    const refuse = { message: 'permission denied for fast-path function call', detail: 'pgbastion relays only the large-object functions through FunctionCall' };
    this.log('warn', { oid: frame.length >= 9 ? frame.readUInt32BE(5) : null }, 'fast-path function call refused');
    this.rt.metrics.blocked.inc();
    this.rt.audit.write('policy.blocked', { ...this.identity(), variable: null, why: refuse.message, protocol: 'function-call' });
    return this.refusals.query(refuse);
  }

  serverError(frame: Buffer): Buffer {
    this.ledger.errored();
    this.keepIfInDoubt();
    // The server is going away (terminated backend, shutdown): in transaction mode the
    // client's connection outlives it, so the client hears an ERROR, not a FATAL.
    if (this.transactionMode && this.sticky === null && isFatal(frame)) {
      // Nobody is waiting for it (idle in a transaction): the loss is reported on the next statement.
      if (this.ledger.owed === 0) return EMPTY;
      this.serverFatalRelayed = true;
      const f = parseFields(frame);
      return be.errorResponse({ severity: 'ERROR', code: f.C ?? SqlState.CONNECTION_FAILURE, message: f.M ?? 'server connection lost', ...(f.D ? { detail: f.D } : {}) });
    }
    if (this.ddl.active) this.ddl.error(parseFields(frame).C ?? 'XX000');
    // (e.g. 42P05 "already exists", 08P01 "bind message supplies …": the client's own name)
    if (mentionsServerName(frame)) frame = editFields(frame, (code, text) => (code === 0x4d /* M */ || code === 0x44 /* D */ ? this.statements.clientNamesIn(text) : null));
    return this.refusals.size > 0 ? (this.refusals.rewrite(frame) ?? frame) : frame;
  }

  /** Whether the client's encoding is UTF-8: its own setting, else the server's default. */
  private speaksUtf8(): boolean {
    const name = this.params.get('client_encoding') ?? this.pool?.welcome?.get('client_encoding') ?? 'UTF8';
    return isUtf8Name(name);
  }

  /** Sends client bytes to its server connection, leasing one first when it has none. */
  private send(bytes: Buffer, type: number, needs: Statement | null = null, defines: Statement | null = null, ddl?: readonly DdlStatement[], own?: string): void {
    this.queueOrWrite({ bytes, type, needs, defines, at: this.statements.seq, ...(ddl && ddl.length > 0 ? { ddl } : {}), ...(own !== undefined ? { own } : {}) });
  }

  private queueOrWrite(out: Outgoing): void {
    const server = this.server;
    if (server) {
      // The connection may have stopped holding the client's settings meanwhile: an inline
      // switch rolls back with its statement. writeHeld switches again first.
      if (this.heldFor === null && server.cancelling === null && !server.switchInFlight && server.appliedKey === this.paramsKey) {
        return this.write(server, out);
      }
      this.queued.push(out);
      return this.writeHeld(server);
    }
    this.queued.push(out);
    if (this.leasing) return this.pauseToWait();
    // Inside a read the lease waits for the read's end, so that the switch to the client's
    // settings sees all the work it brought: a whole extended-protocol batch can take it inline.
    if (this.feeding) this.leaseAfterRead = true;
    else this.lease();
  }

  /**
   * Work queued on the attached connection goes out once nothing holds it back: a cancel on
   * its way (holdForCancel) or an inline switch whose outcome is still unknown (onServerReady
   * calls again). It gets a switch of its own first when the connection no longer holds the
   * client's settings: an inline switch rolls back when the statement it rode with fails.
   */
  private writeHeld(server: ServerConnection): void {
    if (this.state !== 'ready' || this.heldFor !== null) return; // holdForCancel calls again
    if (this.queued.length === 0) return this.resumeAfterWait();
    if (server.cancelling !== null) return this.holdForCancel(server.cancelling);
    if (server.switchInFlight) return this.pauseToWait();
    this.resumeAfterWait();
    let drained: boolean;
    server.beginBatch();
    try {
      if (this.switchSettings(server)) this.flushQueued(server);
    } finally {
      drained = server.endBatch(); // (also on a throw: a batch left open would hold every later write)
    }
    if (!drained) this.waitForServerDrain();
    this.startIdleTimerIfWaiting();
  }

  /**
   * A cancel relayed to this connection's backend is still on its way: PostgreSQL signals
   * the backend while it handles the CancelRequest (SIGINT twice: to the process, then to
   * its process group), and the statement it was meant for may already have ended by then.
   * A signal that lands while the client's next statement runs cancels that one instead
   * (seen as 57014 on the `SELECT 1` after a cancelled pg_sleep). So the client's next bytes
   * wait until PostgreSQL has closed the cancel connection, as the pool already makes the
   * next client wait (Pool.release).
   */
  private holdForCancel(pending: Promise<boolean>): void {
    this.heldFor = pending;
    this.pauseToWait(); // bounded memory: further client bytes stay in the kernel
    void pending.then(() => {
      if (this.heldFor !== pending) return;
      this.heldFor = null;
      if (this.state !== 'ready') return;
      const now = this.server;
      if (now !== null) {
        this.writeHeld(now); // or waits on: another cancel, an inline switch
        return this.endIfLeft();
      }
      // The connection was lost meanwhile (transaction mode): the held work takes another.
      if (this.queued.length > 0) {
        if (!this.leasing) this.lease();
      } else this.resumeAfterWait();
    });
  }

  /**
   * The client leaves with work held back (for a cancel, or a switch): it is written before
   * the connection is let go, with a Terminate behind it, as a client's bytes before its
   * Terminate reach PostgreSQL. Returns false, writing nothing, when the work must wait for a
   * switch's outcome first: one still running, or the separate switch this sends now
   * (onSwitchDone and onServerReady write it then, and endIfLeft ends the session).
   */
  private writeBeforeLeaving(server: ServerConnection): boolean {
    this.heldFor = null;
    if (server.switchInFlight) return false;
    let written: boolean;
    server.beginBatch();
    try {
      written = this.switchSettings(server);
      if (written) this.flushQueued(server);
    } finally {
      server.endBatch();
    }
    server.flushBatch(); // now, even inside onData's batch: finish() lets the connection go next
    return written;
  }

  /** Async steps report their failures here instead of as unhandled rejections. */
  private guard(p: Promise<void>): void {
    p.catch((err: unknown) => this.onFailure(err));
  }

  private onFailure(err: unknown): void {
    if (err instanceof FrameError) return this.fatal(SqlState.PROTOCOL_VIOLATION, err.message);
    this.log('error', { err }, 'session failed');
    this.fatal(SqlState.INTERNAL_ERROR, 'internal error in pgbastion');
  }

  /** The one place client bytes reach a server connection, with its bookkeeping. */
  private write(server: ServerConnection, out: Outgoing): void {
    if (this.ledger.copyIn && out.type !== 0 && out.type !== COPY_DONE && out.type !== COPY_FAIL) return this.writeInCopyIn(server, out);
    // (`out` may be replaced below when it names an unnamed statement that is not ours here.)
    // After an error in the open batch the server skips everything up to its Sync: a Parse
    // written now creates nothing (and no replay is worth writing).
    const skipping = this.ledger.skipping !== null;
    if (out.needs && !server.prepared.has(out.needs.serverName) && !skipping) {
      if (out.deallocates !== undefined) out = this.deallocateStandIn(server, out, out.deallocates);
      else if (this.statements.replayable(out.needs, out.at ?? 0)) {
        server.write(out.needs.parse);
        server.noteParse(true, out.needs.serverName, out.needs.parse);
        server.prepared.add(out.needs.serverName);
      }
    }
    if (out.usesUnnamed && !this.unnamedOnServer) {
      const parse = out.unnamedParse ?? null;
      if (parse === null) {
        // None of this client's when it came: whatever unnamed statement sits there is not its own.
        const missing = this.refusals.missingStatement('');
        out = { ...out, bindsDdl: null, bytes: replaceCString(out.bytes, out.usesUnnamed.start, out.usesUnnamed.end, missing) };
      } else if (!skipping) {
        server.write(parse);
        server.noteParse(true, '', parse);
        this.unnamedOnServer = true;
      }
    }
    if (out.type === P || out.type === B || out.type === D || out.type === C || out.type === E || out.type === H) {
      this.ledger.extended(out.type === E, out.type === E ? out.sets : undefined, out.type === H);
    } else if (out.type === COPY_DONE || out.type === COPY_FAIL) {
      this.ledger.copyEnded();
    } else if (out.type === 0) {
      this.ledger.copyData(); // (CopyData, or a message of a type the session does not look into)
    }
    if (out.type === P) {
      if (out.deallocates) server.prepared.delete(out.deallocates.serverName);
      const name = parsedName(out);
      if (skipping) this.statementLost(name, out.bytes, false);
      else {
        server.noteParse(false, name, out.bytes, out.defines !== null);
        if (out.defines) server.prepared.add(out.defines.serverName);
        if (name === '' && this.transactionMode) this.unnamedOnServer = true;
      }
      this.ddl.parsed(out.ddl);
      if (out.ddl !== undefined && out.ddl.length > 0) server.commandTagsWanted();
    } else if (out.type === B) {
      const group = out.bindsDdl !== undefined ? out.bindsDdl : (out.needs?.ddl ?? null);
      const portal = group !== null || this.ddl.tracksPortals ? portalName(out.bytes) : null;
      if (portal !== null) this.ddl.bound(portal, group); // (null: a malformed Bind the server refuses)
    } else if (out.type === E) {
      if (this.ddl.executed(this.ddl.tracksPortals ? portalName(out.bytes) : null)) server.commandTagsWanted();
    } else if (out.type === Q || out.type === S || out.type === F) {
      const now = performance.now();
      // (In COPY IN a Query is the client's protocol error, which the server reports.)
      if (out.type !== S && this.ledger.unsynced && !this.ledger.copyIn) {
        // Inside an extended-protocol batch. A FunctionCall right behind its extended messages
        // is refused: a marker there could close the client's unnamed portal or replace its
        // unnamed statement, and libpq never sends one there (PQfn is not allowed in pipeline
        // mode). Behind a Query that ends the batch it takes a marker that touches nothing.
        if (out.type === F && !this.ledger.endedByQuery) {
          const refuse = { code: SqlState.FEATURE_NOT_SUPPORTED, message: 'pgbastion does not relay a fast-path function call inside an extended-protocol batch', detail: 'Send Sync first.' };
          out = { bytes: this.refusals.query(refuse), type: Q, needs: null, defines: null };
        }
        if (!skipping) {
          if (out.type === F) server.markFunctionCall();
          else if (out.malformed) server.markMalformedQuery();
          else server.markQuery();
        }
      }
      if (out.type === Q) {
        // After an error in the batch the server skips the Query: nothing answers it.
        if (!this.ledger.query(now, out.sets)) {
          if (out.closes) this.statements.closeSkipped(out.closes.stmt);
          this.ddl.skippedQuery(out.ddl ?? [], this.ledger.skipping!);
          return this.writeOrWait(server, out.bytes);
        }
      } else if (out.type === F) this.ledger.functionCall(now);
      else this.ledger.sync(now); // (never during COPY IN: see writeInCopyIn)
      if (out.closes) server.noteDeallocate(out.closes.stmt.serverName, out.closes.stmt.parse, out.closes.seq);
      server.noteSync();
      if (out.type === Q && this.ddl.tracksPortals) this.ddl.queried();
      this.ddl.owed(out.type === Q ? (out.ddl ?? []) : null);
      if (this.ddl.active) server.commandTagsWanted();
      // DEALLOCATE ALL drops the statements the proxy prepared there too.
      if (out.type === Q && server.prepared.size > 0 && out.bytes.length < 64 && DEALLOCATE_ALL.test(out.bytes.toString('latin1', 5, out.bytes.length - 1))) {
        server.prepared.clear();
      }
    } else if (out.type === C) {
      // Its CloseComplete frees a statement's name; skipped (after an error), it closes nothing.
      const statement = out.bytes[5] === 0x53; /* S */
      if (skipping) {
        if (out.closes) this.statements.closeSkipped(out.closes.stmt);
      } else server.noteClose(out.closes?.stmt.serverName ?? '', out.closes?.stmt.parse ?? null, out.closes?.seq ?? 0);
      if (!statement && this.ddl.tracksPortals) this.ddl.closedPortal(out.bytes.toString('latin1', 6, out.bytes.length - 1));
    }
    this.writeOrWait(server, out.bytes);
  }

  /**
   * A DEALLOCATE (`out`, a Query or a Parse) of `stmt` on a connection that lacks it: a
   * stand-in, a statement of nothing under a name of its own, is prepared there and `out`
   * deallocates that instead, so that PostgreSQL answers as it would have (DEALLOCATE, or
   * 25P02 in a failed transaction). Not the client's own text under its server-side name:
   * that can fail to parse by now (a table dropped since), and should the DEALLOCATE then
   * fail (a cancel) the name would hold the wrong statement. Outside a batch a hidden Sync
   * follows the stand-in, whose replies are not the client's: a Parse failing there (the
   * transaction failed, maybe in a Query still unanswered) would otherwise make the server
   * skip the DEALLOCATE up to a Sync that never comes. None in a failed transaction (known
   * failed: nothing owed), where the DEALLOCATE alone gets 25P02; inside a batch the failing
   * stand-in would make the server skip it. The stand-in counts among the connection's
   * statements (MAX_SERVER_STATEMENTS): one left there (its DEALLOCATE never ran) goes with
   * the next clear.
   */
  private deallocateStandIn(server: ServerConnection, out: Outgoing, stmt: Statement): Outgoing {
    if (server.txStatus === 'E' && this.ledger.owed === 0) return out;
    const standIn = this.statements.standInFor(stmt);
    const parse = serialize.parse({ name: standIn, text: 'SELECT', types: [] });
    server.write(parse);
    server.noteParse(true, standIn, parse);
    server.prepared.add(standIn);
    if (!this.ledger.unsynced && !server.switchPending) server.writeHiddenSync();
    const sql = `DEALLOCATE "${standIn}"`;
    return { ...out, bytes: out.type === Q ? serialize.query(sql) : serialize.parse({ name: '', text: sql, types: [] }) };
  }

  /**
   * A message other than CopyData, CopyDone and CopyFail while the server is in COPY IN.
   * PostgreSQL ignores Flush and Sync there. A Sync is not sent at all: should the COPY have
   * failed already on data the proxy has not heard back about, the server would answer it,
   * and whether it did cannot be told from the ReadyForQuery that follows (see RelayLedger).
   * Anything else ends the session here with PostgreSQL's own two errors: it fails the COPY
   * on such a message and ends the connection ("protocol synchronization was lost"), but
   * only if the COPY had not already failed, and otherwise runs it.
   */
  private writeInCopyIn(server: ServerConnection, out: Outgoing): void {
    if (out.type === S || this.state === 'closed') return;
    if (out.type === H) return this.writeOrWait(server, out.bytes);
    const type = out.type > 0 ? out.type : out.bytes[0]!;
    const hex = type.toString(16).toUpperCase().padStart(2, '0');
    this.socket.write(be.errorResponse({ severity: 'ERROR', code: SqlState.PROTOCOL_VIOLATION, message: `unexpected message type 0x${hex} during COPY from stdin` }));
    this.fatal(SqlState.PROTOCOL_VIOLATION, 'terminating connection because protocol synchronization was lost');
  }

  private writeOrWait(server: ServerConnection, bytes: Buffer): void {
    if (!server.write(bytes)) this.waitForServerDrain();
  }

  /**
   * The ledger may count fewer replies than the server will send (RelayLedger.inDoubt): the
   * server connection must never go to another client, who would read them. It stays with
   * this one (sticky) and is closed, not reset, when the client leaves.
   */
  private keepIfInDoubt(): void {
    if (!this.ledger.inDoubt || !this.transactionMode || this.sticky !== null) return;
    this.log('warn', {}, 'lost count of the replies owed: the server connection stays with this client');
    this.makeSticky('replies in doubt');
  }

  private makeSticky(reason: string): void {
    this.sticky = reason;
    this.rt.metrics.sticky.inc({ reason });
    this.log('debug', { reason }, 'client is now sticky to its server connection');
    // (Before login the share is taken once the session has its pool: connectServer. In
    // session mode every client keeps its connection anyway.)
    if (this.transactionMode && this.pool !== null && !this.takeStickyShare()) this.endOverStickyShare();
  }

  /** As far as the server connection's last status shows (transaction mode holds it only then). */
  private inTransactionBlock(): boolean {
    return this.server !== null && this.server.txStatus !== 'I';
  }

  /** A tracked SET run now would make the session sticky (in a block: settle) past the user's share. */
  private setWouldStickPastShare(): boolean {
    return this.transactionMode && this.inTransactionBlock() && this.stickyShare === null && !this.pool!.hasStickyShare(this.user);
  }

  /**
   * pool.max_sticky_per_user: a sticky session keeps a server connection until it ends, so one
   * user's share of them is bounded. Where the statement that would make one more is seen
   * before it goes out, it is refused (vet); where the server's answer makes the session
   * sticky (a SET inside a transaction block, replies in doubt), the session ends at its next
   * transaction boundary, its connection reset for the next client.
   */
  private takeStickyShare(): boolean {
    if (this.stickyShare !== null) return true;
    if (!this.pool!.takeStickyShare(this.user)) return false;
    this.stickyShare = this.pool;
    return true;
  }

  private stickyShareRefusal(): Ending {
    return {
      code: SqlState.TOO_MANY_CONNECTIONS,
      message: `too many sticky sessions for user "${this.user}"`,
      detail:
        `The user's sessions already keep ${stickyPerUser(this.rt.config.pool)} server connections of pool ${this.pool?.name ?? ''} for ` +
        'session state (temporary tables, session SET, LISTEN, advisory locks, ...): pool.max_sticky_per_user.',
    };
  }

  /**
   * Ends a session sticky past its user's share at its next transaction boundary, or, since
   * a client can put that off (`COMMIT; BEGIN` in one Query never leaves it between
   * transactions), after pool.acquire_timeout_ms, what other clients wait for a connection.
   */
  private endOverStickyShare(): void {
    if (this.shareDeadline !== null) return;
    this.log('warn', { reason: this.sticky }, 'sticky past the user\'s share of the pool: the session ends at its next transaction boundary');
    const ending = this.stickyShareRefusal();
    this.revoked ??= ending;
    this.endIfRevokedAndIdle();
    if (this.state === 'closed') return;
    this.shareDeadline = setTimeout(() => this.fatal(ending.code, ending.message, ending.detail), this.rt.config.pool.acquire_timeout_ms);
    this.shareDeadline.unref();
  }

  // ---- server lease -------------------------------------------------------------------

  /**
   * Transaction mode: takes a server connection for the client's next transaction. The
   * client's settings go ahead of its first bytes (see switchSettings), and only when the
   * connection does not already hold exactly them. With an idle connection at
   * hand this all happens now, inside the caller; else when the pool hands one over.
   */
  private lease(): void {
    this.leasing = true;
    this.leaseStart = performance.now();
    this.pool!.request(this.origin(), this.holdsMine, this.onLeased);
    if (this.leasing) this.pauseToWait();
  }

  /**
   * Bounded memory while work waits (for a lease, a cancel, an inline switch): the client's
   * bytes stay in the kernel. Paused again each time, since a server drain resumes the socket.
   */
  private pauseToWait(): void {
    this.pausedToWait = true;
    this.input.pause();
  }

  private readonly onLeased = (err: Error | null, server: ServerConnection | null): void => {
    // May run inside another session's release: a failure here is this session's alone.
    try {
      this.leasing = false;
      if (server === null) {
        if (err instanceof UpstreamError && this.transactionMode && this.sticky === null && this.state === 'ready') {
          return this.failQueuedWork(err);
        }
        return this.onConnectFailure(err);
      }
      this.rt.metrics.poolWait.observe((performance.now() - this.leaseStart) / 1000);
      // Closed meanwhile, or its work was cancelled while it waited: the connection goes back untouched.
      if (this.state !== 'ready' || this.queued.length === 0) {
        this.pool!.release(server, true, null);
        if (this.state === 'ready') this.resumeAfterWait();
        return;
      }
      // Resumed first, so that back-pressure from the server socket can pause it again.
      this.resumeAfterWait();
      this.useServer(server);
    } catch (failure) {
      this.onFailure(failure);
    }
  };

  private resumeAfterWait(): void {
    if (!this.pausedToWait) return;
    this.pausedToWait = false;
    this.input.resume();
  }

  /** Attaches a leased connection and sends it the client's settings (if it lacks them) and queued work. */
  private useServer(server: ServerConnection): void {
    this.server = server;
    server.attach(this);
    this.unnamedOnServer = false;
    server.beginBatch();
    // Leased while reading the client (an idle connection was at hand): what else this read
    // holds joins the same write, at the end of onData (whose finally ends the batch).
    const endLater = this.feeding && this.batched === null;
    if (endLater) this.batched = server;
    let drained = true;
    try {
      if (server.prepared.size > MAX_SERVER_STATEMENTS) {
        // Statements of clients long gone pile up on a busy connection: start it afresh (the
        // ones still needed are prepared again on demand).
        server.sendHidden(serialize.query('DEALLOCATE ALL'));
        server.prepared.clear();
      }
      if (this.switchSettings(server)) this.flushQueued(server);
    } finally {
      // (Also on a throw: a batch left open would hold every later write to this connection.)
      if (!endLater) drained = server.endBatch();
    }
    if (!drained) this.waitForServerDrain();
    this.startIdleTimerIfWaiting();
  }

  /**
   * Makes the connection hold exactly the client's settings, ahead of the queued work. A
   * lone Query of the client's own, or a whole extended-protocol batch, takes the switch
   * inline when it can (inline-switch.ts); else the switch is a hidden Query of its own,
   * and the work waits for its ReadyForQuery. Returns whether the work may be written now.
   */
  private switchSettings(server: ServerConnection): boolean {
    const plan = switchPlan(this.params, this.paramsKey, server.applied, server.appliedKey);
    if (plan === null) {
      // Nothing to do, though the keys may differ in the case of a name: record the client's.
      if (server.appliedKey !== this.paramsKey) server.holdExactly(this.params, this.paramsKey);
      return true;
    }
    const inline = plan.inline !== null && this.sticky === null && server.txStatus === 'I' ? plan.inline : null;
    const only = this.queued.length === 1 ? this.queued[0]! : null;
    if (inline !== null && only?.type === Q && only.own !== undefined && only.bytes.length <= INLINE_MAX_BYTES && takesInlineSwitch(only.own)) {
      this.rt.metrics.settingsSwitches.inline.inc();
      this.queued[0] = { ...only, bytes: inlineQuery(inline.prefix, only.bytes) };
      server.expectInline(inline.prefix.length, inline.statements, this.params, this.paramsKey);
      return true;
    }
    if (inline !== null && this.transactionMode && batchTakesInlineSwitch(this.queued)) {
      this.rt.metrics.settingsSwitches.inline.inc();
      server.write(inline.extended);
      server.expectInline(null, inline.statements, this.params, this.paramsKey);
      // The switch took the unnamed statement: the client's is prepared again where used.
      this.unnamedOnServer = false;
      return true;
    }
    // The work waits for this one's ReadyForQuery (onSwitchDone): should it fail, work
    // already behind it would run with the previous client's settings (switchInFlight).
    // A lone BEGIN goes with it: nothing of the client's can run in its block if it fails.
    this.rt.metrics.settingsSwitches.separate.inc();
    server.sendHidden(plan.query, true);
    server.holdExactly(this.params, this.paramsKey);
    return only?.type === Q && only.own !== undefined && server.txStatus === 'I' && opensBlockOnly(only.own);
  }

  onSwitchDone(): void {
    const server = this.server;
    if (server === null) return;
    if (this.queued.length > 0) this.writeHeld(server);
    else {
      // The work behind it was cancelled meanwhile (cancelWaiting), or went with it (a lone BEGIN).
      this.resumeAfterWait();
      this.releaseIfDone(server.txStatus);
    }
    this.endIfLeft();
  }

  /** This client as named in the PROXY header of server connections opened for it. */
  private origin(): ClientOrigin {
    return (this.originCache ??= {
      source: { address: this.address, port: this.port },
      destination: { address: this.tcp.localAddress ?? '', port: this.tcp.localPort ?? 0 },
    });
  }

  /**
   * Transaction mode, no upstream reachable for the client's next transaction: that work
   * fails with ERROR 08006 (like a statement that failed) and the client may retry; its
   * connection to pgbastion stays open for when an upstream is back (failover).
   */
  private failQueuedWork(err: UpstreamError): void {
    this.log('warn', { err: err.message }, 'no server connection for the next transaction');
    this.answerQueued({ message: 'pgbastion could not connect to the upstream server', detail: err.message });
    this.resumeAfterWait();
  }

  /**
   * Answers the queued work with `failure`: an ERROR and ReadyForQuery for each Query, Sync
   * and FunctionCall, as PostgreSQL answers work it did not run. Work after the last of
   * those (Parse/Bind/Execute still without a Sync) hears the error now, as PostgreSQL sends
   * one at once (the client may be waiting on a Flush); its Sync then gets ReadyForQuery alone.
   */
  private answerQueued(failure: LostWork): void {
    const queued = this.queued;
    this.queued = [];
    // The start of a passed-through message still being read is dropped with the rest of the
    // work: so is what is left of it (see droppingStray).
    if (this.scanner.inPassThrough) this.droppingStray = true;
    let cutShort = false;
    for (const out of queued) {
      // A Parse that never went out created nothing; a Close or DEALLOCATE closed nothing.
      if (out.type === P) this.statementLost(parsedName(out), out.bytes, false);
      if (out.closes) this.statements.closeSkipped(out.closes.stmt);
      if (out.type === 0) continue;
      this.lostTransaction ??= failure; // one already pending (a batch cut short) goes first
      cutShort = out.type !== Q && out.type !== S && out.type !== F;
      this.answerLostTransaction(out.type);
    }
    const left = this.lostTransaction;
    if (cutShort && left !== null && left.reported !== true) {
      this.socket.write(be.errorResponse({ severity: 'ERROR', code: left.code ?? SqlState.CONNECTION_FAILURE, message: left.message, detail: left.detail }));
      this.lostTransaction = { ...left, reported: true };
    }
  }

  private flushQueued(server: ServerConnection): void {
    const queued = this.queued;
    this.queued = [];
    for (const out of queued) {
      if (this.state === 'closed') return; // (a message that ended the session: writeInCopyIn)
      this.write(server, out);
    }
  }

  /** Transaction mode: the server connection goes back once nothing more is owed on it. */
  private releaseIfDone(status: TxStatus): void {
    const server = this.server;
    if (!server || !this.transactionMode || this.sticky !== null || server.runningHidden) return;
    if (!this.ledger.settled || status !== 'I' || !this.scanner.atBoundary || this.queued.length > 0) return;
    this.server = null;
    this.pool!.release(server, true, null);
  }

  private async connectServer(user: RuntimeUser): Promise<void> {
    const pool = this.rt.pools.get(this.database, user.config.server_role);
    this.pool = pool;
    if (this.sticky !== null && !this.takeStickyShare()) {
      const refusal = this.stickyShareRefusal();
      return this.fatal(refusal.code, refusal.message, refusal.detail);
    }
    if (pool.canWelcome(this.params)) {
      // Like PgBouncer: log the client in now; its first message leases a server connection.
      return this.completeStartup(null);
    }
    let server: ServerConnection;
    try {
      server = await this.pool!.acquire(this.origin(), this.holdsMine);
    } catch (err) {
      return this.onConnectFailure(err);
    }
    if (this.state !== 'connecting') return pool.release(server, true, null);
    this.server = server;
    server.attach(this);
    try {
      const sql = setConfigSql(this.params, server.applied);
      if (sql) {
        this.rt.metrics.settingsSwitches.separate.inc();
        await server.runHidden(sql);
      }
    } catch (err) {
      return this.onConnectFailure(err);
    }
    if (this.state !== 'connecting') return;
    server.holdExactly(this.params, this.paramsKey);
    pool.noteAccepted(this.params);
    this.completeStartup(server);
  }

  /** Ends the login: with the server connection it was proven on, or (null) from the pool's welcome. */
  private completeStartup(server: ServerConnection | null): void {
    this.key = this.rt.cancels.issue(this);
    const status = server ? parameterStatuses(server.params) : welcomeStatuses(this.pool!.welcome!, this.params, this.paramsKey);
    this.socket.write(Buffer.concat([status, be.backendKeyData(this.key.processId, this.key.secretKey), be.readyForQuery(server ? server.txStatus : 'I')]));
    this.clearStartupTimer();
    this.move('ready');
    this.log('info', server ? { server: server.id, pid: server.processId } : { server: null }, 'session started');
    this.rt.metrics.connections.inc({ outcome: 'started', reason: '' });
    const cert = this.tlsPeer?.cert;
    this.rt.audit.connection('session.start', this.identity(), {
      auth_method: this.authMethod ?? undefined,
      hba_rule: this.hbaRule,
      server_role: this.runtimeUser?.config.server_role,
      tls: this.tlsPeer ? { version: this.tlsPeer.protocol, cipher: this.tlsPeer.cipher } : null,
      cert: cert ? { subject: cert.subject, fingerprint: cert.fingerprint256 } : null,
    });
    // What the client pipelined behind its login goes through the same checks as the rest.
    const early = this.queued;
    this.queued = [];
    try {
      for (const out of early) {
        if (out.type < 0) this.clientMessage(-out.type, out.bytes);
        else this.send(out.bytes, 0);
      }
    } catch (err) {
      return this.onFailure(err);
    }
    this.input.resume();
    if (server !== null) this.releaseIfDone(server.txStatus);
  }

  private onConnectFailure(err: unknown): void {
    if (err instanceof PoolTimeoutError) return this.fatal(SqlState.TOO_MANY_CONNECTIONS, err.message);
    if (err instanceof UpstreamError) {
      this.log('warn', { err: err.message, failure: err.failure }, 'could not get a server connection');
      // A refusal the client can act on (unknown database, bad parameter value) is relayed as is.
      if (err.fields?.C && (err.serverRefusal || err.failure === 'protocol')) {
        return this.fatal(err.fields.C, err.fields.M ?? err.message);
      }
      return this.fatal(SqlState.CONNECTION_FAILURE, 'pgbastion could not connect to the upstream server');
    }
    this.log('error', { err }, 'unexpected error while connecting upstream');
    this.fatal(SqlState.CONNECTION_FAILURE, 'pgbastion could not connect to the upstream server');
  }

  private waitForServerDrain(): void {
    const server = this.server;
    if (!server || this.input.paused) return;
    this.input.pause();
    server.socket.once('drain', () => {
      if (!this.pausedToWait) this.input.resume();
    });
  }

  // ---- ServerPeer ---------------------------------------------------------------------

  /** The client's settings change: `paramsKey` follows `params`. */
  private setParams(params: ReadonlyMap<string, string>): void {
    this.params = params;
    this.paramsKey = settingsKey(params);
  }

  /**
   * A tracked SET the server accepted: it is now one of the client's settings. Not when it
   * ran inside a transaction block, which a ROLLBACK (to a savepoint) could still undo: the
   * client keeps this connection instead, whose record of settings is then not trusted
   * again (it is DISCARDed when the client leaves).
   */
  private readonly settle = (set: TrackedSet): void => {
    // Called from onServerReady: the connection's status is that of the ReadyForQuery.
    const server = this.server;
    if (server?.txStatus === 'I') {
      // A partial DateStyle merged with the one in force: what the server reported (just
      // before this ReadyForQuery) is the whole value, which replays the same anywhere.
      const value = mergesWithCurrent(set.name) ? (server.params.get(set.name) ?? set.value) : set.value;
      return this.holdSetting(set.name, value);
    }
    if (this.sticky === null) this.makeSticky('SET in a transaction');
  };

  /**
   * A tracked SET ran together with other statements, which may have undone it or kept it
   * whatever the replies say: what the connection holds is no longer known. It stays with this
   * client, and is reset (DISCARD ALL) when the client leaves.
   */
  private readonly settingsUnsure = (): void => {
    if (this.sticky === null && this.transactionMode) this.makeSticky('SET among other statements');
  };

  /** A SET the server accepted: the client's settings (and this connection's) now include it. */
  private holdSetting(name: string, value: string): void {
    const lower = name.toLowerCase();
    const next = new Map([...this.params].filter(([k]) => k.toLowerCase() !== lower));
    next.set(name, value);
    this.setParams(next);
    this.server?.holdOne(name, value, this.paramsKey);
  }

  // ---- reload: sessions the new configuration no longer allows --------------------------------

  /** Called after a reload: a session the new rules do not allow ends at its next transaction boundary. */
  recheck(): void {
    if (this.state !== 'ready' || this.revoked !== null) return;
    const withdrawn = this.withdrawnBy();
    if (withdrawn !== null) {
      this.log('info', { reason: withdrawn }, 'session no longer allowed after reload');
      this.revoked = administratorCommand(`configuration reload: ${withdrawn}`);
      this.endIfRevokedAndIdle();
    }
  }

  /**
   * Shutdown (SIGTERM): a session between transactions ends now; one with a transaction in
   * flight ends when it completes (the server stops waiting at shutdown_timeout_ms).
   */
  drain(): void {
    if (this.state === 'closed') return;
    if (this.state !== 'ready') return this.fatal(SqlState.ADMIN_SHUTDOWN, 'terminating connection due to administrator command');
    this.revoked ??= administratorCommand('pgbastion is shutting down');
    this.endIfRevokedAndIdle();
  }

  /** What in the current configuration no longer allows this session, or null. */
  private withdrawnBy(): string | null {
    const user = this.rt.users.get(this.user);
    if (!user) return 'the user was removed';
    if (user.config.server_role !== this.runtimeUser?.config.server_role) return 'the user now maps to another server role';
    if (user.config.valid_until && user.config.valid_until.getTime() < Date.now()) return 'the user expired';
    const conn = { address: this.address, tls: this.tlsPeer !== null, database: this.database, user: this.user, replication: false };
    const rule = evaluate(this.rt.hba, conn);
    if (rule === null || rule.method !== this.authMethod || this.clientCertRefusal(rule) !== null) return 'the rules no longer allow this connection';
    if (rule.method === 'cert' && !certNamesUser(this.rt.config.cert_map, this.tlsPeer?.cert?.cn ?? '', this.user)) return 'the certificate no longer maps to the user';
    const cert = this.tlsPeer?.cert;
    const pins = resolvePins(user.config.pins, { user: this.user, database: this.database, ...(cert ? { cert } : {}) });
    if (!pins.ok || !sameMap(pins.values, this.pinValues)) return 'the pinned values changed';
    return null;
  }

  /** Between transactions (nothing owed, no transaction open): end a revoked session now. */
  private endIfRevokedAndIdle(): void {
    if (this.revoked === null || !this.ledger.settled) return;
    if (this.server && this.server.txStatus !== 'I') return;
    // Work read and waiting for a server connection runs first: its replies are not dropped
    // (a Parse/Bind/Sync of a SET, sticky at its Sync past the share, lost them).
    if (this.queued.length > 0) return;
    this.fatal(this.revoked.code, this.revoked.message, this.revoked.detail);
  }

  onServerReady(status: TxStatus, bare: boolean): void {
    const askedAt = this.ledger.answered(this.settle, bare, this.settingsUnsure);
    if (this.ledger.inDoubt) this.keepIfInDoubt();
    let now = 0;
    if (askedAt !== undefined) {
      now = performance.now();
      this.rt.metrics.queryDuration.observe((now - askedAt) / 1000);
      if (this.txStartedAt < 0) this.txStartedAt = askedAt; // the transaction's first answer
    }
    this.ddl.ready(status);
    if (status === 'I') {
      this.transactions++;
      this.rt.metrics.transactions.inc();
      if (this.txStartedAt >= 0) {
        this.rt.metrics.transactionDuration.observe(((now || performance.now()) - this.txStartedAt) / 1000);
        this.txStartedAt = -1;
      }
    }
    // Refusals the server skipped: none of their errors can come any more once nothing is
    // owed, no batch is open and nothing is held back to be written (refusals are made when
    // a message is read, and a batch's error may come after a ReadyForQuery of an earlier one).
    if (this.refusals.size > 0 && this.ledger.settled && this.queued.length === 0) this.refusals.clear();
    this.releaseIfDone(status);
    // Work held behind an inline switch: its outcome is known now.
    if (this.server !== null && this.queued.length > 0) this.writeHeld(this.server);
    if (this.leaving !== null) return this.endIfLeft();
    if (this.revoked !== null) this.endIfRevokedAndIdle();
    this.startIdleTimerIfWaiting();
  }

  /**
   * A client that keeps a server connection while sending nothing holds it from every other
   * client; after a while it is disconnected with PostgreSQL's own FATAL for it. Its bytes
   * restart the clock.
   * - pool.idle_transaction_timeout_ms: the server waits on it (inside a transaction, or a
   *   batch without its Sync, or a message half sent), as PgBouncer's idle_transaction_timeout.
   *   Its connection is closed.
   * - pool.sticky_idle_timeout_ms: sticky, between transactions (transaction mode), as
   *   PostgreSQL's idle_session_timeout. Its connection is reset for the next client.
   */
  private startIdleTimerIfWaiting(): void {
    const server = this.server;
    // (Work held back, for a cancel or a switch, waits on the proxy, not on the client.)
    if (server === null || this.ledger.owed > 0 || this.queued.length > 0 || this.state !== 'ready') return;
    const between = server.txStatus === 'I' && !this.ledger.unsynced && this.scanner.atBoundary;
    if (between && (this.sticky === null || !this.transactionMode)) return;
    const ms = between ? this.rt.config.pool.sticky_idle_timeout_ms : this.rt.config.pool.idle_transaction_timeout_ms;
    if (ms <= 0) return;
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null;
      if (this.server === null || this.ledger.owed > 0 || this.queued.length > 0) return;
      if (between) this.fatal(SqlState.IDLE_SESSION_TIMEOUT, 'terminating connection due to idle-session timeout');
      else this.fatal(SqlState.IDLE_IN_TRANSACTION_TIMEOUT, 'terminating connection due to idle-in-transaction timeout');
    }, ms);
    this.idleTimer.unref();
  }

  private stopIdleTimer(): void {
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    this.idleTimer = null;
  }

  /**
   * The server connection died under the client. In transaction mode a client without
   * session state keeps its connection: it gets an error for the work in flight and its
   * next transaction runs on a healthy server connection. Otherwise the session ends.
   */
  onServerLost(err: UpstreamError): void {
    this.log('warn', { err: err.message }, 'server connection lost');
    // (Work still held goes with the client, as work waiting for a connection does.)
    if (this.leaving !== null) return this.finish(this.leaving);
    this.statements.dropContenders(); // (unanswered, and never will be)
    const inTransaction = this.server !== null && this.server.txStatus !== 'I';
    if (this.server && this.pool) this.pool.release(this.server, false, null);
    this.server = null;
    if (!this.transactionMode || this.sticky !== null || this.state !== 'ready') {
      return this.fatal(SqlState.CONNECTION_FAILURE, 'server connection lost', err.message);
    }
    // A passed-through message half written to the lost connection: the rest must not start
    // another one (its bytes would reach that server as messages no check saw).
    if (this.scanner.inPassThrough) this.droppingStray = true;
    // Work held back (for a cancel, or an inline switch's outcome) was sent behind what the
    // connection took down with it: it may run elsewhere only when that was nothing, outside
    // a transaction. Otherwise it fails as work behind a failed statement does.
    const held = this.queued.length > 0;
    this.heldFor = null;
    // Parse/Bind/Execute without their Sync yet: the client may be waiting on a Flush for
    // their results. As PostgreSQL after an error, it hears the error now; its Sync is then
    // answered with ReadyForQuery alone.
    const cutShort = this.ledger.unsynced;
    if (this.ledger.owed === 0 && !cutShort) {
      this.serverFatalRelayed = false;
      // Nothing is owed, but portals bound to audited statements died with the connection.
      this.ddl.unanswered('server connection lost');
      this.resumeReading();
      if (inTransaction) {
        // Idle inside a transaction: its next statement must fail, not run outside it.
        const failure = { message: 'server connection lost; the transaction was rolled back', detail: err.message };
        if (held) this.answerQueued(failure);
        else this.lostTransaction = failure;
      } else if (held && err.failure === 'settings') {
        // The work waited for its settings switch, which failed: it did not run. It fails
        // rather than trying again elsewhere, where the same switch may fail the same way.
        this.answerQueued({ code: SqlState.CONNECTION_FAILURE, message: 'server connection lost; the statement was not run', detail: err.message });
      } else if (held && this.holdsPassThrough()) {
        // Pass-through bytes (CopyData) may continue a message whose start went down with the
        // connection: sent to another, they would be read as messages there. They fail instead.
        this.answerQueued({ message: 'server connection lost; the statement was not run', detail: err.message });
      } else if (held && !this.leasing) this.lease();
      return;
    }
    const lost: LostWork = { message: 'server connection lost', detail: err.message };
    const error = be.errorResponse({ severity: 'ERROR', code: SqlState.CONNECTION_FAILURE, message: lost.message, detail: lost.detail });
    this.socket.cork();
    if (this.ledger.owed > 0) {
      if (!this.serverFatalRelayed) this.socket.write(error);
      for (let i = 0; i < this.ledger.owed; i++) this.socket.write(be.readyForQuery('I'));
    }
    if (cutShort) {
      this.socket.write(error);
      this.lostTransaction = { ...lost, reported: true };
    }
    this.socket.uncork();
    this.serverFatalRelayed = false;
    this.ledger.reset();
    this.ddl.unanswered('server connection lost');
    this.refusals.clear();
    if (held) this.answerQueued(lost);
    this.resumeReading();
  }

  /** Reads on, whatever paused the client: waits for work, or back-pressure from a server that is gone. */
  private resumeReading(): void {
    this.pausedToWait = false;
    if (this.input.paused) this.input.resume();
  }

  cancelTarget(): CancelTarget | null {
    const s = this.server;
    // Nothing in flight: in transaction mode the connection may be someone else's next.
    // While the hidden settings statement runs, a cancel would hit it, not the client's work.
    // (A batch without its Sync yet, run with a Flush, is in flight too.)
    if (!s || s.isClosed || this.ledger.settled || s.runningHidden) return null;
    const delivering = (done: Promise<boolean>): void => {
      const timeout = new Promise<boolean>((resolve) => setTimeout(resolve, 2000, false).unref());
      const mine = Promise.race([done, timeout]);
      // Every cancel still on its way, not only the latest: an earlier one landing last would
      // hit whatever runs then, maybe the next client's statement (Pool.release waits on this).
      const before = s.cancelling;
      const pending: Promise<boolean> = (before === null ? mine : Promise.all([before, mine]).then(([a, b]) => a && b)).then((seen) => {
        if (s.cancelling === pending) s.cancelling = null;
        return seen;
      });
      s.cancelling = pending;
    };
    return { endpoint: s.endpoint, transport: s.transport, processId: s.processId, secretKey: s.secretKey, delivering };
  }

  /**
   * Work not sent yet is cancelled here, as PostgreSQL would have cancelled it running: work
   * waiting for a server connection, or held behind a separate settings switch (which the
   * cancel must not hit: cancelTarget). The switch goes on; the connection then goes back.
   */
  cancelWaiting(): boolean {
    const server = this.server;
    // (Held pass-through bytes may continue a message whose start this connection already
    // has: dropping them would leave it half written. That work waits for the switch.)
    const passThrough = server !== null && this.holdsPassThrough();
    const notSent = server === null ? this.leasing : server.switchInFlight && this.ledger.settled && !passThrough;
    if (!notSent || this.queued.length === 0) return false;
    const detail = server === null ? 'cancelled while waiting for a server connection' : 'cancelled while its session settings were being applied';
    this.answerQueued({ code: SqlState.QUERY_CANCELED, message: 'canceling statement due to user request', detail });
    // Read on: a Sync still to come is answered here; new work queues (and pauses) again.
    this.resumeAfterWait();
    return true;
  }

  // ---- endings ------------------------------------------------------------------------

  private onStartupTimeout(): void {
    this.startupTimer = null;
    if (this.state === 'ready' || this.state === 'closed') return;
    this.fatal(SqlState.QUERY_CANCELED, 'canceling authentication due to timeout');
  }

  /** Sends a FATAL ErrorResponse and closes; before login that is a denial, audited as such. */
  fatal(code: string, message: string, detail?: string, reason: DenyReason = denyReasonFor(code)): void {
    if (this.state === 'closed') return;
    this.log('info', { code, reason: message }, 'session refused or ended with FATAL');
    if (this.state !== 'ready') this.denied(reason, code, message);
    endAndLinger(this.socket, be.fatal(code, message, detail));
    this.finish(detail ? `${message} (${detail})` : message);
  }

  /** A login refused: counted and audited (also where no FATAL can be sent, as PostgreSQL only logs those). */
  private denied(reason: DenyReason, code: string, message: string): void {
    if (this.state === 'closed' || this.state === 'ready') return;
    this.rt.metrics.denied(reason);
    this.rt.audit.connection('session.denied', this.identity(), { reason, sqlstate: code, message });
  }

  close(): void {
    endAndLinger(this.socket);
    this.finish('closed');
  }

  /** Drops the connection without a word: nothing we could send would be read correctly. */
  private abort(): void {
    this.socket.destroy();
    this.finish('aborted');
  }

  private clearStartupTimer(): void {
    if (this.startupTimer) clearTimeout(this.startupTimer);
    this.startupTimer = null;
  }

  /** The one place a session ends: server returned (clean) or dropped (in doubt). */
  private finish(reason: string): void {
    if (this.state === 'closed') return;
    const wasReady = this.state === 'ready';
    this.state = 'closed';
    this.clearStartupTimer();
    this.stopIdleTimer();
    if (this.shareDeadline !== null) clearTimeout(this.shareDeadline);
    this.rt.clients--;
    if (this.key) this.rt.cancels.revoke(this.key.processId, this.key.secretKey);
    if (this.leasing) this.pool?.withdraw(this.onLeased);
    const server = this.server;
    this.server = null;
    if (server && this.pool) {
      const clean = server.state === 'active' && this.ledger.settled && !this.ledger.inDoubt && server.txStatus === 'I' && this.scanner.atBoundary && this.outlivesReset === null;
      // Transaction mode hands a clean, non-sticky connection on as is: the next lease
      // makes it hold its own client's settings. Anything else is reset or closed.
      const reset = clean && (!this.transactionMode || this.sticky !== null) ? RESET_SQL : null;
      if (reset) server.noteDiscardAll();
      this.pool.release(server, clean, reset);
    }
    this.stickyShare?.giveStickyShare(this.user);
    this.stickyShare = null;
    this.pool?.leave(); // the session no longer holds its pool: the registry removes one nothing holds
    // Audited work whose answer the session no longer reads (the client left behind it): it
    // may still run and commit, so it is recorded now, as unknown.
    this.ddl.unanswered('client disconnected');
    this.input.drop();
    endAndLinger(this.socket);
    if (wasReady) {
      this.log('info', { reason }, 'session ended');
      this.rt.audit.connection('session.end', this.identity(), {
        reason,
        duration_ms: Math.round(performance.now() - this.startedAt),
        bytes_in: this.socket.bytesRead,
        bytes_out: this.socket.bytesWritten,
        transactions: this.transactions,
      });
    }
  }
}

/** The 'error' listener of a client's TCP socket once TLS runs over it (`this` is the socket); the TLS socket reports the error. */
function destroyOnError(this: net.Socket): void {
  this.destroy();
}

/** The statement a Parse creates on the server: its server-side name, or the name it carries (unnamed: ''). */
function parsedName(out: Outgoing): string {
  return out.defines?.serverName ?? out.bytes.toString('utf8', 5, out.bytes.indexOf(0, 5));
}

/** The bytes of `buf` from `offset` on; EMPTY rather than an empty view that pins `buf`'s memory. */
function after(buf: Buffer, offset: number): Buffer {
  return offset >= buf.length ? EMPTY : buf.subarray(offset);
}

/** An ErrorResponse whose severity (first field, as PostgreSQL writes it) is FATAL or PANIC. */
function isFatal(frame: Buffer): boolean {
  if (frame[5] !== 0x53 /* S */) return false;
  const sev = frame.toString('latin1', 6, 11);
  return sev === 'FATAL' || sev === 'PANIC';
}

function sameMap(a: ReadonlyMap<string, string>, b: ReadonlyMap<string, string>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}

function parameterStatuses(params: ReadonlyMap<string, string>): Buffer {
  return Buffer.concat([...params].map(([name, value]) => be.parameterStatus(name, value)));
}

/** The welcome's ParameterStatus messages, by pool welcome and the client's settingsKey: the same for most logins. */
const welcomeCache = new WeakMap<ReadonlyMap<string, string>, TextLru<Buffer>>();

function welcomeStatuses(welcome: ReadonlyMap<string, string>, settings: ReadonlyMap<string, string>, key: string): Buffer {
  let byKey = welcomeCache.get(welcome);
  if (byKey === undefined) welcomeCache.set(welcome, (byKey = new TextLru(256, 1024 * 1024)));
  let bytes = byKey.get(key);
  if (bytes === undefined) {
    bytes = parameterStatuses(welcomeFor(welcome, settings));
    byKey.set(key, bytes);
  }
  return bytes;
}

/** The pool's welcome values with this client's own settings where the server reports them. */
function welcomeFor(welcome: ReadonlyMap<string, string>, settings: ReadonlyMap<string, string>): Map<string, string> {
  const out = new Map(welcome);
  const byLower = new Map([...welcome.keys()].map((k) => [k.toLowerCase(), k]));
  for (const [name, value] of settings) {
    const key = byLower.get(name.toLowerCase());
    if (key !== undefined) out.set(key, value);
  }
  return out;
}

/** The audit reason of a refusal, from its SQLSTATE when the caller did not name one. */
function denyReasonFor(code: string): DenyReason {
  switch (code) {
    case SqlState.INVALID_PASSWORD:
      return 'auth';
    case SqlState.TOO_MANY_CONNECTIONS:
      return 'limit';
    case SqlState.PROTOCOL_VIOLATION:
    case SqlState.INTERNAL_ERROR:
      return 'protocol';
    case SqlState.CONNECTION_FAILURE:
      return 'upstream';
    default:
      // 0A000 protocol version, 42501 startup parameter, 57014 timeout, server refusals (3D000 ...).
      return code === '3D000' || code.startsWith('08') ? 'upstream' : 'startup';
  }
}

/** The startup parameter `replication` as PostgreSQL reads it (parse_bool, or "database"); null: invalid. */
function isReplication(value: string | undefined): boolean | null {
  if (value === undefined) return false;
  if (value === 'database') return true;
  const v = value.toLowerCase();
  // parse_bool: any prefix of true/false/yes/no, on, off (at least "of"), 1, 0.
  const prefixOf = (word: string): boolean => v.length > 0 && word.startsWith(v);
  if (prefixOf('true') || prefixOf('yes') || v === 'on' || v === '1') return true;
  if (prefixOf('false') || prefixOf('no') || v === 'off' || v === 'of' || v === '0') return false;
  return null;
}
