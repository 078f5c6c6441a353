// One connection from pgbastion to an upstream PostgreSQL (or HAProxy in front of one):
// login as a server role, hidden housekeeping queries, and the server→client relay.

import { randomBytes } from 'node:crypto';
import net from 'node:net';
import type { TLSSocket } from 'node:tls';
import { serialize } from 'pg-protocol';
import type { Logger } from 'pino';
import { ScramClientSession } from '../auth/scram.js';
import { endsSession, parseFields, parseParameterStatus, readCStrings, shiftPosition } from '../protocol/fields.js';
import { hidesAscii } from '../policy/client-encoding.js';
import { INSPECT_ALL, MessageScanner, inspectTable, type InspectTable, type ScanSink } from '../protocol/scanner.js';
import type { Endpoint } from '../config/types.js';
import type { ChannelBinding } from '../auth/scram.js';
import { UpstreamError } from './errors.js';
import { CoalescedWrites } from '../net/slice-run.js';
import { ReusedReadBuffer } from '../net/reused-read.js';
import { inFlight } from '../net/direct-write.js';
import { switchsOwnError } from '../session/inline-switch.js';
import { dial, endpointKey, type ClientOrigin, type UpstreamTransport } from './dial.js';
import { endAndLinger } from '../net/linger.js';

export type ServerState = 'connecting' | 'login' | 'idle' | 'active' | 'hidden' | 'closed';
export type TxStatus = 'I' | 'T' | 'E';

/** The tags of the statements an inline switch runs (set-config.ts: SET and RESET, no SELECT inline). */
const SWITCH_TAG = /^(?:SET|RESET)$/;

/** Legal moves of a server connection; anything else is a bug and throws. */
const TRANSITIONS: Record<ServerState, readonly ServerState[]> = {
  connecting: ['login', 'closed'],
  login: ['idle', 'closed'],
  idle: ['active', 'hidden', 'closed'],
  active: ['idle', 'hidden', 'closed'],
  hidden: ['idle', 'active', 'closed'],
  closed: [],
};

/** What a leased server connection relays to: the client session. */
export interface ServerPeer {
  readonly socket: net.Socket;
  /** A separate settings switch completed: work held behind it may go now (see switchInFlight). */
  onSwitchDone(): void;
  /**
   * ReadyForQuery seen (already forwarded). `bare`: nothing else was relayed since the last
   * one, which answers a Sync but never a Query or FunctionCall (see RelayLedger.answered).
   */
  onServerReady(status: TxStatus, bare: boolean): void;
  /** The connection died under the client. */
  onServerLost(err: UpstreamError): void;
  /** The ErrorResponse to relay for `frame` (the peer may swap in its own). */
  serverError(frame: Buffer): Buffer;
  /**
   * A Parse of this server-side statement name failed or was skipped: it does not exist
   * there. `parse` is the Parse message that was written (which of several Parses of a
   * name); `injected`: a replay of the client's statement, not the client's own Parse.
   */
  statementLost(serverName: string, parse: Buffer, injected: boolean): void;
  /** A Close of this server-side statement name completed; `seq` is what the peer noted with it (noteClose). */
  statementClosed(serverName: string, seq: number): void;
  /** A Close of `serverName`, meant for the statement `target` parsed, was skipped (an error before it in its batch): it closed nothing. */
  closeSkipped(serverName: string, target: Buffer): void;
  /**
   * The server skips to the next Sync past a Query (or a FunctionCall behind one) written
   * inside an extended-protocol batch (see markQuery): it gets no ReadyForQuery. Called before
   * the error is relayed.
   */
  queryIgnored(): void;
  /**
   * `frame`, an error, came in an extended-protocol batch whose Sync is not written yet: the
   * server skips everything up to that Sync. Called before the error is relayed.
   */
  skippingToSync(frame: Buffer): void;
  /** The server entered COPY IN (CopyInResponse). */
  onCopyIn(): void;
  /** Set while the peer wants CommandComplete tags (statements it audits are in flight). */
  readonly wantsCommandTags: boolean;
  /** A completion: CommandComplete, EmptyQueryResponse or PortalSuspended (tag ""). */
  commandComplete(frame: Buffer): void;
}

export interface ServerLogin {
  endpoint: Endpoint;
  user: string;
  password: string;
  database: string;
  maxMessageBytes: number;
  timeoutMs: number;
  logger: Logger;
  transport: UpstreamTransport;
  /** The client whose demand opens this connection (PROXY header); null: the proxy's own. */
  origin: ClientOrigin | null;
}

/**
 * ReadyForQuery (lease accounting), ParameterStatus (kept current), ErrorResponse (peer may
 * rewrite), ParseComplete (the ones answering Parses the proxy injected are dropped),
 * CloseComplete (a statement closed: its name is free),
 * CommandComplete, EmptyQueryResponse and PortalSuspended (completions: tags of audited
 * statements, see DdlTracker), CopyInResponse (Syncs are ignored in COPY IN).
 */
/** PostgreSQL's own bound on a message (MaxAllocSize, 1 GiB - 1). */
const SERVER_MAX_MESSAGE = 0x3fffffff;
const RELAY_INSPECT = inspectTable('ZSE13CIsG');
/**
 * The same but the completions, which pass through while the client audits no DDL (the
 * usual case): one message fewer looked at per statement (see relayTable).
 */
const RELAY_QUIET = inspectTable('ZSE13G');

/** The same and NoticeResponse, while a Query carrying an inline switch runs (positions shift). */
const INLINE_INSPECT = inspectTable('ZSE13CIsGN');
const INLINE_QUIET = inspectTable('ZSE13GN');

interface Hidden {
  resolve: () => void;
  reject: (err: UpstreamError) => void;
  error?: Record<string, string>;
}

/**
 * A settings switch riding in the client's Query ahead of its statement, or in its
 * extended-protocol batch ahead of its messages (session/inline-switch.ts).
 */
interface InlineSwitch {
  /**
   * In a Query: the length of the switch text in front of the client's (ASCII: characters =
   * bytes), by which error positions shift. Null in a batch: nothing shifts there.
   */
  readonly prefixChars: number | null;
  /** Replies of the switch statements still to come (swallowed): CommandCompletes, and in a batch also ParseCompletes and BindCompletes. */
  pending: number;
  /** The Query saw an error: its implicit transaction, switch included, rolled back. */
  failed: boolean;
  /** What the connection held before the switch, and holds again if it rolled back. */
  readonly prior: ReadonlyMap<string, string>;
  readonly priorKey: string;
}

interface ParseEntry {
  readonly injected: boolean;
  readonly name: string;
  /** The Parse message written. */
  readonly parse: Buffer;
  /** Written by markQuery or markFunctionCall: a Query or FunctionCall follows it. */
  readonly marker?: true;
  /** The client's Parse of one of its statements under the server-side name `name`: its success makes the name held here. */
  readonly defines?: true;
  /**
   * Such a Parse of a name this connection already held (or was about to): its failure
   * (42P05, a syntax error) or skip removes nothing.
   */
  readonly contends?: true;
  /**
   * A Close, answered by CloseComplete instead: of the statement `name` (server-side; `parse`
   * is the Parse of the statement meant), with what the peer noted with it, or of a portal or
   * the unnamed statement (name ''). A Close the server skipped closed nothing.
   */
  readonly closes?: { readonly seq: number };
  /** With closes: a Query's SQL DEALLOCATE, answered by no CloseComplete; done at its ReadyForQuery if no error came first. */
  readonly byQuery?: true;
  /** Last of its stretch, which a Sync of the proxy's ends: nothing in it is the client's to hear (writeHiddenSync). */
  readonly hiddenSync?: true;
}

const SYNC = serialize.sync();

/**
 * markQuery's marker: a Parse of the empty text into the unnamed statement. A Query drops the
 * unnamed statement first anyway (PostgreSQL's exec_simple_query), so it changes nothing the
 * client can see.
 */
const QUERY_MARKER = serialize.parse({ name: '', text: '', types: [] });

/**
 * markFunctionCall's marker: a Close of the unnamed portal, answered by CloseComplete. It is
 * written only behind a Query, which dropped the unnamed portal (exec_simple_query runs in it),
 * so it closes nothing; unlike QUERY_MARKER it leaves the unnamed statement alone, which a
 * FunctionCall does not drop.
 */
const FUNCTION_CALL_MARKER = serialize.close({ type: 'P', name: '' });

/**
 * markMalformedQuery's marker: a Close of a portal no one opens, answered by CloseComplete.
 * A Query whose text lacks its terminator is refused by PostgreSQL before it drops the unnamed
 * statement or portal, so its marker must leave both alone too.
 */
const MALFORMED_QUERY_MARKER = serialize.close({ type: 'P', name: `pgbastion_marker_${randomBytes(8).toString('hex')}` }); // (no client guesses it: its cursor would be closed)

/** The `parse` of a Close's entry (no Parse). */
const NO_PARSE = Buffer.alloc(0);

/** The settings of a session nobody has set anything on. */
const NO_SETTINGS: ReadonlyMap<string, string> = new Map();

const REQUIRE_PRIMARY_SQL =
  "DO $$BEGIN IF pg_catalog.pg_is_in_recovery() THEN RAISE EXCEPTION 'in recovery' USING ERRCODE = '25006'; END IF; END$$";

let nextServerId = 1;

export class ServerConnection implements ScanSink {
  readonly id = nextServerId++;
  /** `host:port` of the upstream endpoint. */
  readonly where: string;
  state: ServerState = 'connecting';
  txStatus: TxStatus = 'I';
  /** ParameterStatus values the server has reported, kept current. */
  readonly params = new Map<string, string>();
  /** ParameterStatus values as they were right after login: the server's own defaults. */
  loginParams: ReadonlyMap<string, string> = new Map();
  /**
   * Settings applied on this session (name → value) for the client it serves; cleared by
   * DISCARD ALL. The map is the one given to holdExactly, shared, never changed here (a switch
   * on every lease then costs a reference, not a copy): whoever hands one over must not change
   * it afterwards, as a client never changes its params (it replaces them).
   */
  get applied(): ReadonlyMap<string, string> {
    return this.appliedMap;
  }
  /** settingsKey() of `applied`, kept with it: what pool affinity compares. */
  appliedKey = '';
  private appliedMap: ReadonlyMap<string, string> = NO_SETTINGS;
  processId = 0;
  secretKey = 0;
  idleSince = 0;

  private readonly scanner: MessageScanner;
  private peer: ServerPeer | null = null;
  /** Server → client bytes of one read (toClient, flushToClient). */
  private readonly clientWrites = new CoalescedWrites();
  /** Something went to the client since the last ReadyForQuery (see ServerPeer.onServerReady). */
  private relayedSinceReady = false;
  /** Client → server bytes of one batch (beginBatch, endBatch). */
  private readonly serverWrites = new CoalescedWrites();
  private batchDepth = 0;
  private hidden: Hidden | null = null;
  private loginDone: ((err?: UpstreamError) => void) | null = null;
  private scram: ScramClientSession | null = null;
  private serverVerified = false;
  /** Waiting for the client socket to drain before reading more from the server. */
  private drainWait: { out: net.Socket; resume: () => void } | null = null;
  private onIdleClose: (() => void) | null = null;
  /** A cancel for this connection is on its way: it must not serve another client before. */
  cancelling: Promise<boolean> | null = null;
  /** Server-side names of the prepared statements this session holds (see session/prepared.ts). */
  readonly prepared = new Set<string>();
  /**
   * One list per ReadyForQuery still to come, oldest first: each Parse sent in that stretch
   * (whether the proxy injected it: its ParseComplete is not the client's) and each Close,
   * in the order their ParseComplete or CloseComplete will come.
   */
  private parseGroups: ParseEntry[][] = [[]];
  /**
   * Hidden statements written ahead of client bytes whose replies are still to swallow, in
   * order: true for a settings switch.
   */
  private readonly pipelinedHidden: boolean[] = [];
  private pipelinedError: Record<string, string> | null = null;
  /** Set from the write of a Query carrying an inline switch until its ReadyForQuery. */
  private inline: InlineSwitch | null = null;

  private constructor(
    readonly socket: net.Socket,
    readonly endpoint: Endpoint,
    private readonly login: ServerLogin,
    /** Set on TLS connections: SCRAM-SHA-256-PLUS binds the login to this server certificate. */
    private readonly channelBinding: ChannelBinding | null,
    /** Plaintext connections read into a reused buffer (see flushToClient for its one rule). */
    private readonly reader: ReusedReadBuffer | null,
  ) {
    this.where = endpointKey(endpoint);
    this.scanner = new MessageScanner(INSPECT_ALL, login.maxMessageBytes, this);
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    if (reader) reader.onChunk = (chunk) => this.onData(chunk);
    else socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.fail(new UpstreamError('lost', `server connection error: ${err.message}`)));
    socket.on('close', () => this.fail(new UpstreamError('lost', 'server closed the connection unexpectedly')));
  }

  /** Connects (PROXY header, TLS as configured) and logs in; resolves once the server is ready for queries. */
  static async open(login: ServerLogin): Promise<ServerConnection> {
    const deadline = Date.now() + login.timeoutMs;
    const reader = login.transport.tlsMode === 'disable' ? new ReusedReadBuffer() : null;
    const { socket, channelBinding } = await dial(login.endpoint, login.transport, login.origin, login.timeoutMs, reader?.onread);
    return new Promise((resolve, reject) => {
      const conn = new ServerConnection(socket, login.endpoint, login, channelBinding, reader);
      const timer = setTimeout(() => {
        conn.fail(new UpstreamError('timeout', `timed out logging in to ${endpointKey(login.endpoint)}`));
      }, Math.max(1, deadline - Date.now()));
      conn.loginDone = (err) => {
        clearTimeout(timer);
        conn.loginDone = null;
        if (err) reject(err);
        else resolve(conn);
      };
      conn.move('login');
      socket.write(serialize.startup({ user: login.user, database: login.database }));
      socket.resume();
    });
  }

  /** Moves to `to`, refusing moves the state machine does not allow. */
  private move(to: ServerState): void {
    if (!TRANSITIONS[this.state].includes(to)) {
      throw new Error(`server connection ${this.id}: illegal move ${this.state} -> ${to}`);
    }
    this.state = to;
  }

  /** How this connection was opened (TLS, PROXY header). */
  get transport(): UpstreamTransport {
    return this.login.transport;
  }

  /** A pipelined hidden statement is still running ahead of the client's bytes. */
  get runningHidden(): boolean {
    return this.pipelinedHidden.length > 0;
  }

  /**
   * A Query carrying an inline switch, or a separate switch, is in flight: until its
   * ReadyForQuery nobody knows whether the connection holds the new settings, so nothing else
   * may be written behind it. (Behind a failed separate switch the client's work would run
   * with the previous client's settings: its BEGIN block is left aborted, but work starting
   * with ROLLBACK leaves that block.)
   */
  get switchInFlight(): boolean {
    return this.inline !== null || this.pipelinedHidden.includes(true);
  }

  get isClosed(): boolean {
    return this.state === 'closed';
  }

  /** Hands the connection to a client: from now on server bytes go to `peer`. */
  attach(peer: ServerPeer): void {
    this.move('active');
    this.peer = peer;
    this.scanner.inspect = this.pipelinedHidden.length > 0 || this.inline !== null ? INSPECT_ALL : this.relayTable();
  }

  /** Takes the connection back from its client (it is then reset or closed by the pool). */
  detach(): void {
    this.flushToClient();
    this.peer = null;
    if (this.drainWait) {
      this.drainWait.out.off('drain', this.drainWait.resume);
      this.drainWait.resume();
    }
    if (this.state === 'active') this.move('idle');
    this.idleSince = Date.now();
  }

  /** Called by the pool so that a connection dying while idle leaves the pool. */
  whenClosedIdle(cb: () => void): void {
    this.onIdleClose = cb;
  }

  /** `parse`, a Parse of `name`, went out (`injected`: by the proxy, not the client). */
  noteParse(injected: boolean, name: string, parse: Buffer, defines = false): void {
    const group = this.parseGroups[this.parseGroups.length - 1]!;
    if (!defines) group.push({ injected, name, parse });
    else if (this.prepared.has(name)) group.push({ injected, name, parse, defines, contends: true });
    else group.push({ injected, name, parse, defines });
  }

  /**
   * A Query is about to be written inside an extended-protocol batch (no Sync since its
   * messages). After an error in the batch PostgreSQL skips everything up to the Sync, that
   * Query included, and only a reply that comes before the Query's own tells whether the
   * error came before it. So a marker goes in front: its ParseComplete (swallowed) arrives
   * if and only if the server reached the Query; an error while it is still awaited means
   * the Query was skipped (relayMessage).
   */
  markQuery(): void {
    this.write(QUERY_MARKER);
    this.parseGroups[this.parseGroups.length - 1]!.push({ injected: true, name: '', parse: QUERY_MARKER, marker: true });
  }

  /** markQuery for a FunctionCall written behind a Query that ends the batch (FUNCTION_CALL_MARKER). */
  markFunctionCall(): void {
    this.write(FUNCTION_CALL_MARKER);
    this.parseGroups[this.parseGroups.length - 1]!.push({ injected: true, name: '', parse: FUNCTION_CALL_MARKER, marker: true });
  }

  /** markQuery for a malformed Query, which touches nothing (MALFORMED_QUERY_MARKER). */
  markMalformedQuery(): void {
    this.write(MALFORMED_QUERY_MARKER);
    this.parseGroups[this.parseGroups.length - 1]!.push({ injected: true, name: '', parse: MALFORMED_QUERY_MARKER, marker: true });
  }

  /**
   * A Close went out: of `statement` (server-side name) meant for the statement `target`
   * parsed (`seq` is handed back with its completion), or of a portal or the unnamed
   * statement ('', no target).
   */
  noteClose(statement: string, target: Buffer | null, seq: number): void {
    this.parseGroups[this.parseGroups.length - 1]!.push({ injected: false, name: statement, parse: target ?? NO_PARSE, closes: { seq } });
  }

  /**
   * A Query is about to be written that deallocates `statement` (as noteClose): the statement
   * is gone when the Query's ReadyForQuery comes without an error before it.
   */
  noteDeallocate(statement: string, target: Buffer, seq: number): void {
    this.parseGroups[this.parseGroups.length - 1]!.push({ injected: false, name: statement, parse: target, closes: { seq }, byQuery: true });
  }

  /**
   * Ends the stretch of what the proxy wrote since the client's last Sync, Query or
   * FunctionCall (nothing of the client's) with a Sync of its own: its replies, an error
   * included, are not relayed.
   */
  writeHiddenSync(): void {
    this.write(SYNC);
    this.parseGroups[this.parseGroups.length - 1]!.push({ injected: true, name: '', parse: NO_PARSE, hiddenSync: true });
    this.parseGroups.push([]);
  }

  /** An inline settings switch is still awaiting its replies. */
  get switchPending(): boolean {
    return this.inline !== null;
  }

  /** A message that ends with ReadyForQuery (Sync, Query, FunctionCall) went out. */
  noteSync(): void {
    this.parseGroups.push([]);
  }

  /** A Sync went out that the server will ignore (COPY IN): forget its stretch. */
  dropLastSyncGroup(): void {
    if (this.parseGroups.length > 1) {
      const last = this.parseGroups.pop()!;
      this.parseGroups[this.parseGroups.length - 1]!.push(...last);
    }
  }

  /** The session now holds exactly `wanted` (whose settingsKey is `key`): what the hidden statement made it hold. */
  holdExactly(wanted: ReadonlyMap<string, string>, key: string): void {
    this.appliedMap = wanted;
    this.appliedKey = key;
  }

  /**
   * What the relay looks at: CommandComplete only while the client wants its tags (DDL
   * audit), `notices` while a Query carrying an inline switch runs.
   */
  private relayTable(notices = false): InspectTable {
    const tags = this.peer?.wantsCommandTags === true;
    if (notices) return tags ? INLINE_INSPECT : INLINE_QUIET;
    return tags ? RELAY_INSPECT : RELAY_QUIET;
  }

  /**
   * The client now wants CommandComplete tags (it sent a statement the DDL audit records),
   * from the replies to what it is writing now on. Called before that is written.
   */
  commandTagsWanted(): void {
    if (this.scanner.inspect === RELAY_QUIET) this.scanner.inspect = RELAY_INSPECT;
    else if (this.scanner.inspect === INLINE_QUIET) this.scanner.inspect = INLINE_INSPECT;
  }

  /** A client's tracked SET took effect here; `key` is the settingsKey of its settings now. */
  holdOne(name: string, value: string, key: string): void {
    const lower = name.toLowerCase();
    const next = new Map([...this.appliedMap].filter(([k]) => k.toLowerCase() !== lower));
    next.set(name, value);
    this.appliedMap = next;
    this.appliedKey = key;
  }

  /** DISCARD ALL is on its way: no settings of any client, no prepared statements. */
  noteDiscardAll(): void {
    this.appliedMap = NO_SETTINGS;
    this.appliedKey = '';
    this.prepared.clear();
  }

  /**
   * Opens a batch: client → server bytes written until the matching endBatch go out in as
   * few writes as possible. Batches nest; the outermost endBatch writes.
   */
  beginBatch(): void {
    this.batchDepth++;
  }

  /** Closes a batch. Returns false when the socket wants the writer to wait. */
  endBatch(): boolean {
    if (--this.batchDepth > 0) return true;
    this.serverWrites.flush();
    return !this.socket.writableNeedDrain;
  }

  /** Writes what the open batch gathered so far, before it closes (the connection is about to go). */
  flushBatch(): void {
    this.serverWrites.flush();
  }

  /**
   * Client → server bytes (and the proxy's own statements). Inside a batch, slices of one
   * client read that follow each other (a Query, or Parse/Bind/Execute/Sync) become one
   * write at endBatch; anything else corks the socket until then. Returns false when the
   * socket wants the writer to wait.
   */
  write(bytes: Buffer): boolean {
    if (this.batchDepth === 0) return this.socket.write(bytes);
    this.serverWrites.write(this.socket, bytes);
    return !this.socket.writableNeedDrain;
  }

  /**
   * Runs a statement the client never sees (DISCARD ALL, set_config ...). Its replies are
   * swallowed up to ReadyForQuery; a server error rejects.
   */
  runHidden(sql: string): Promise<void> {
    const resume: ServerState = this.state === 'active' ? 'active' : 'idle';
    this.move('hidden');
    this.scanner.inspect = INSPECT_ALL;
    return new Promise<void>((resolve, reject) => {
      this.hidden = {
        resolve: () => {
          this.move(resume);
          this.scanner.inspect = this.relayTable();
          resolve();
        },
        reject,
      };
      this.write(serialize.query(sql));
    });
  }

  /**
   * Writes a statement the client never sees, ahead of the client's own bytes (no round trip
   * of its own). Its replies up to its ReadyForQuery are swallowed; if it fails the
   * connection is closed and the client told, since what follows it would run without the
   * settings it was meant to hold.
   */
  sendHidden(query: Buffer, isSwitch = false): void {
    this.pipelinedHidden.push(isSwitch);
    this.noteSync();
    this.scanner.inspect = INSPECT_ALL;
    this.write(query);
  }

  /**
   * The next Query written carries `statements` switch statements (`prefixChars` long) in
   * front of the client's text, or (`prefixChars` null) the switch statements were just
   * written as Parse/Bind/Execute ahead of the client's batch, switching to `wanted`
   * (settingsKey `key`). The connection counts as holding `wanted` from now on; if the Query
   * or batch fails, the old settings come back at its ReadyForQuery, as they do in the server.
   */
  expectInline(prefixChars: number | null, statements: number, wanted: ReadonlyMap<string, string>, key: string): void {
    const pending = prefixChars === null ? 3 * statements : statements;
    this.inline = { prefixChars, pending, failed: false, prior: this.appliedMap, priorKey: this.appliedKey };
    this.holdExactly(wanted, key);
    this.scanner.inspect = INSPECT_ALL;
  }

  /**
   * Fails (and closes the connection) when the server is in recovery: with
   * upstream.require_primary a standby is never handed to a client, even if HAProxy
   * routed there after a failover.
   */
  async requirePrimary(): Promise<void> {
    try {
      await this.runHidden(REQUIRE_PRIMARY_SQL);
    } catch (err) {
      const e = err as UpstreamError;
      throw new UpstreamError('standby', `${this.where} is in recovery (not a primary)`, e.fields);
    }
  }

  /** Health check: is the server in recovery (a standby)? Other failures reject. */
  async inRecovery(): Promise<boolean> {
    try {
      await this.runHidden(REQUIRE_PRIMARY_SQL);
      return false;
    } catch (err) {
      if ((err as UpstreamError).fields?.C === '25006') return true;
      throw err;
    }
  }

  close(): void {
    if (this.state === 'closed') return;
    this.fail(null);
  }

  private onData(chunk: Buffer): void {
    const peer = this.state === 'active' ? this.peer : null;
    try {
      this.scanner.feed(chunk);
    } catch (err) {
      this.flushToClient();
      this.fail(new UpstreamError('protocol', `server sent an invalid message: ${(err as Error).message}`));
      return;
    }
    // Also when the read began in another state: a hidden statement may have ended in it.
    this.flushToClient();
    // Back-pressure from the client, but only while it is still our client: a release
    // inside feed() handed us on, and the next client must not wait on the old one.
    if (peer !== null && peer.socket.writableNeedDrain && this.peer === peer && this.drainWait === null) {
      const out = peer.socket;
      this.socket.pause();
      const resume = (): void => {
        this.drainWait = null;
        this.socket.resume();
      };
      this.drainWait = { out, resume };
      out.once('drain', resume);
    }
  }

  /** Server → client bytes: slices of one read that follow each other go out as one write. */
  private toClient(bytes: Buffer): void {
    this.relayedSinceReady = true;
    this.clientWrites.write(this.peer!.socket, bytes);
  }

  /**
   * Writes what toClient gathered. Called before anything that may act on the bytes so far.
   * The bytes are slices of the read, which the reused read buffer overwrites next time
   * unless told they are still referenced: by a write Node has not handed to the socket yet
   * (it was busy or corked), or, on a TCP socket, by what the kernel did not take at once
   * (in the Writable's buffer, or a direct write still in flight: net/direct-write.ts).
   * A TLS socket encrypts what it is handed, or copies it when it cannot yet.
   */
  private flushToClient(): void {
    const handedOver = this.clientWrites.startedIdle;
    const out = this.clientWrites.flush();
    if (out === null) return;
    // (A burst copied into one buffer refers to none of the read's memory.)
    const kept = !this.clientWrites.copied && ((out as TLSSocket).encrypted === true ? !handedOver : out.writableLength > 0 || inFlight(out));
    if (kept) this.reader?.retain();
  }

  // ScanSink: bytes of messages the relay does not inspect go straight to the client.
  pass(bytes: Buffer): void {
    if (this.state === 'active') this.toClient(bytes);
    else if (this.state === 'idle') this.fail(new UpstreamError('protocol', 'unexpected data from an idle server'));
  }

  message(type: number, frame: Buffer): void {
    switch (this.state) {
      case 'active':
        if (this.pipelinedHidden.length > 0) return this.pipelinedHiddenMessage(type, frame);
        if (this.inline !== null) return this.inlineMessage(type, frame);
        return this.relayMessage(type, frame);
      case 'hidden':
        return this.hiddenMessage(type, frame);
      case 'login':
        return this.loginMessage(type, frame);
      case 'idle':
        // An idle server speaks only to say it is going away (e.g. admin shutdown).
        return this.fail(new UpstreamError('lost', 'idle server sent a message', type === 0x45 ? parseFields(frame) : undefined));
      case 'connecting':
      case 'closed':
        return;
      default: {
        const never: never = this.state;
        throw new Error(`unknown state ${String(never)}`);
      }
    }
  }

  private relayMessage(type: number, frame: Buffer): void {
    const peer = this.peer!;
    if (type === 0x31 /* 1 ParseComplete */) {
      const entry = this.parseGroups[0]!.shift();
      if (entry?.injected === true) return; // answers a Parse the proxy injected
      // (Also after a Close of the name that found nothing, pipelined ahead of this Parse.)
      if (entry?.defines === true) this.prepared.add(entry.name);
    } else if (type === 0x33 /* 3 CloseComplete */) {
      const entry = this.parseGroups[0]!.shift();
      if (entry?.marker === true) return; // answers markFunctionCall's or markMalformedQuery's Close
      if (entry?.closes !== undefined && entry.name !== '') this.statementClosed(peer, entry.name, entry.closes.seq);
    } else if (type === 0x45 /* E */) {
      if (this.inHiddenStretch() && !endsSession(parseFields(frame))) return this.hiddenStretchFailed();
      this.skipToSync(peer, frame);
      return this.toClient(peer.serverError(frame));
    } else if (type === 0x5a /* Z */ && this.inHiddenStretch()) {
      this.endParseGroup();
      this.txStatus = String.fromCharCode(frame[5]!) as TxStatus;
      return;
    }
    const bare = type === 0x5a && !this.relayedSinceReady;
    this.toClient(frame);
    if (type === 0x43 /* C */ || type === 0x49 /* I EmptyQueryResponse */ || type === 0x73 /* s PortalSuspended */) {
      if (peer.wantsCommandTags) peer.commandComplete(frame);
    } else if (type === 0x47 /* G CopyInResponse */) {
      peer.onCopyIn();
    } else if (type === 0x5a /* Z */) {
      // What is left of the stretch: DEALLOCATEs that ran (an error would have taken them).
      for (const entry of this.parseGroups[0]!) if (entry.byQuery === true) this.statementClosed(peer, entry.name, entry.closes!.seq);
      this.endParseGroup();
      this.txStatus = String.fromCharCode(frame[5]!) as TxStatus;
      // The client has its reply before the lease is settled (which may hand us on).
      this.flushToClient();
      this.relayedSinceReady = false;
      peer.onServerReady(this.txStatus, bare);
    } else if (type === 0x53 /* S */) {
      this.noteParameter(frame);
    }
  }

  /**
   * An error: the server skips to the next Sync (after an error in a Query there is none to
   * skip). None of the Parses still awaiting their ParseComplete in this stretch created
   * anything: the first of them failed, or something before them did. When the last of them
   * is a Query's marker, the skip runs past that Query, whose ReadyForQuery will not come,
   * into the next stretch. When it reaches the stretch still open (its Sync not written yet),
   * the session hears that more is skipped.
   */
  private skipToSync(peer: ServerPeer, error: Buffer): void {
    for (;;) {
      const lost = this.parseGroups[0]!.splice(0);
      for (const entry of lost) {
        if (entry.marker) continue;
        if (entry.closes) {
          if (entry.name !== '') peer.closeSkipped(entry.name, entry.parse);
          continue;
        }
        if (entry.contends !== true) this.prepared.delete(entry.name);
        peer.statementLost(entry.name, entry.parse, entry.injected);
      }
      // The last entry a message answers (a Query's DEALLOCATE is noted after its marker).
      const last = lost.at(-1)?.byQuery === true ? lost.at(-2) : lost.at(-1);
      if (last?.marker !== true || this.parseGroups.length === 1) break;
      this.parseGroups.shift();
      peer.queryIgnored();
    }
    if (this.parseGroups.length === 1) peer.skippingToSync(error);
  }

  private pipelinedHiddenMessage(type: number, frame: Buffer): void {
    if (type === 0x45 /* E */) this.pipelinedError ??= parseFields(frame);
    else if (type === 0x53 /* S */) {
      this.noteParameter(frame);
    } else if (type === 0x5a /* Z */) {
      this.endParseGroup();
      const wasSwitch = this.pipelinedHidden.shift() === true;
      if (this.pipelinedError) {
        // (Its status, E after a failure inside the switch's BEGIN block, is not the
        // client's: the session still sees the connection as it was, idle.)
        const fields = this.pipelinedError;
        return this.fail(new UpstreamError('settings', `could not apply session settings: ${fields.M ?? ''}`, fields));
      }
      this.txStatus = String.fromCharCode(frame[5]!) as TxStatus;
      if (this.pipelinedHidden.length === 0 && this.inline === null) this.scanner.inspect = this.relayTable();
      if (wasSwitch && !this.pipelinedHidden.includes(true)) this.peer?.onSwitchDone();
    }
  }

  /**
   * Replies to a Query carrying an inline switch: the switch statements' replies are
   * swallowed, then the client's are relayed with error positions moved back to its text.
   */
  private inlineMessage(type: number, frame: Buffer): void {
    const inline = this.inline!;
    // In a batch the client's messages are its own: nothing shifts, and before the switch
    // completed the server has seen none of them.
    const shift = inline.prefixChars ?? 0;
    if (inline.pending > 0) {
      if (type === 0x43 /* C */ || type === 0x31 /* 1 */ || type === 0x32 /* 2 */) {
        if (type === 0x43 && !SWITCH_TAG.test(frame.toString('latin1', 5, frame.length - 1))) return this.switchOutOfStep(type);
        if (--inline.pending === 0) this.scanner.inspect = this.relayTable(inline.prefixChars !== null);
        return;
      }
      if (type === 0x53 /* S */) return this.noteParameter(frame);
      if (type === 0x45 /* E */) {
        // Nothing of the client's ran, and nothing will. A switch statement's own failure gives
        // the connection up, as a failing separate switch does (it would fail again there);
        // anything else (an error in the client's text, an encoding error, a cancel, a FATAL)
        // is the client's to hear, and the connection keeps its settings.
        const fields = parseFields(frame);
        if (switchsOwnError(fields, inline.prefixChars ?? Infinity)) {
          return this.fail(new UpstreamError('settings', `could not apply session settings: ${fields.M ?? ''}`, fields));
        }
        inline.pending = 0;
        inline.failed = true;
        this.scanner.inspect = this.relayTable(inline.prefixChars !== null);
        return this.relayMessage(type, shiftPosition(frame, shift));
      }
      // A warning the client's text raised while the whole string was parsed is the client's;
      // in a batch it can only be the switch's own.
      if (type === 0x4e /* N */ && inline.prefixChars !== null) this.toClient(shiftPosition(frame, shift));
      else if (type !== 0x4e && type !== 0x41 /* A NotificationResponse */) return this.switchOutOfStep(type);
      return;
    }
    if (type === 0x45 /* E */) {
      inline.failed = true;
      return this.relayMessage(type, shiftPosition(frame, shift));
    }
    if (type === 0x4e /* N */) return this.toClient(shiftPosition(frame, shift));
    // A ParameterStatus (application_name, DateStyle ...) after the Query failed reports the
    // values its rollback restored, the previous client's: noted, never relayed. (PostgreSQL
    // 14 and later report only at ReadyForQuery, and only values that differ from the last
    // reported, so they send none then; older ones report each change as it happens.) After a
    // commit, the values reported are this client's own.
    if (type === 0x53 /* S */ && inline.failed) return this.noteParameter(frame);
    if (type === 0x5a /* Z */) {
      this.inline = null;
      this.scanner.inspect = this.relayTable();
      if (inline.failed) this.holdExactly(inline.prior, inline.priorKey);
    }
    this.relayMessage(type, frame);
  }

  /**
   * A reply no switch statement gives (rows, a ReadyForQuery, another command's tag) came
   * before the switch was done: replies to an earlier client's work still arriving. The
   * connection is given up, so that this client hears a lost connection instead of them.
   */
  private switchOutOfStep(type: number): void {
    this.fail(new UpstreamError('protocol', `unexpected reply (${String.fromCharCode(type)}) to a settings switch`));
  }

  /** ParameterStatus, in whatever state it arrives: params stays the server's current values. */
  private noteParameter(frame: Buffer): void {
    const [name, value] = parseParameterStatus(frame);
    this.params.set(name, value);
    // However it was set (a role's default, a function's dynamic SQL: no check on the client's
    // text sees those), such a connection can no longer be read safely: it goes. See
    // client-encoding.ts; the policy refuses the client's own ways to set one.
    if (name === 'client_encoding' && hidesAscii(value)) {
      this.fail(new UpstreamError('protocol', `the server's client_encoding became ${value}, which pgbastion cannot read safely`));
    }
  }

  /** The replies coming are to a stretch the proxy ended with its own Sync (writeHiddenSync). */
  private inHiddenStretch(): boolean {
    const group = this.parseGroups[0]!;
    return group.length > 0 && group[group.length - 1]!.hiddenSync === true;
  }

  /**
   * An error (not FATAL: that one is the client's to hear) in a hidden stretch: its Parses
   * (the proxy's stand-ins, nothing the client knows) created nothing; its Sync still answers.
   */
  private hiddenStretchFailed(): void {
    const group = this.parseGroups[0]!;
    for (const entry of group.splice(0, group.length - 1)) this.prepared.delete(entry.name);
  }

  private statementClosed(peer: ServerPeer, name: string, seq: number): void {
    this.prepared.delete(name);
    peer.statementClosed(name, seq);
  }

  private endParseGroup(): void {
    if (this.parseGroups.length > 1) this.parseGroups.shift();
    else this.parseGroups[0]!.length = 0;
  }

  private hiddenMessage(type: number, frame: Buffer): void {
    const hidden = this.hidden!;
    if (type === 0x45 /* E */) hidden.error ??= parseFields(frame);
    else if (type === 0x53 /* S */) {
      this.noteParameter(frame);
    } else if (type === 0x5a /* Z */) {
      this.txStatus = String.fromCharCode(frame[5]!) as TxStatus;
      this.hidden = null;
      if (hidden.error) {
        const err = new UpstreamError('protocol', `housekeeping statement failed: ${hidden.error.M ?? ''}`, hidden.error);
        hidden.reject(err);
        this.close();
      } else hidden.resolve();
    }
  }

  private loginMessage(type: number, frame: Buffer): void {
    switch (type) {
      case 0x52 /* R */:
        return void this.authRequest(frame).catch((err: Error) =>
          this.fail(err instanceof UpstreamError ? err : new UpstreamError('login', err.message)),
        );
      case 0x53 /* S */:
        return this.noteParameter(frame);
      case 0x4b /* K */:
        this.processId = frame.readInt32BE(5);
        this.secretKey = frame.readInt32BE(9);
        return;
      case 0x5a /* Z */:
        this.txStatus = String.fromCharCode(frame[5]!) as TxStatus;
        this.loginParams = new Map(this.params);
        this.move('idle');
        this.scanner.inspect = this.relayTable();
        // From here on the limit is PostgreSQL's, not the one on clients: a row, a COPY line
        // or a notice may be as long as the server makes it (DataRow and CopyData pass
        // through unassembled). During login the client's limit bounds what is assembled.
        this.scanner.maxLength = SERVER_MAX_MESSAGE;
        this.loginDone?.();
        return;
      case 0x45 /* E */: {
        const fields = parseFields(frame);
        return this.fail(new UpstreamError('login', fields.M ?? 'server refused the login', fields));
      }
      case 0x4e /* N */:
      case 0x76 /* v NegotiateProtocolVersion */:
        return;
      default:
        return this.fail(new UpstreamError('protocol', `unexpected message type ${String.fromCharCode(type)} during login`));
    }
  }

  private async authRequest(frame: Buffer): Promise<void> {
    const code = frame.readInt32BE(5);
    switch (code) {
      case 0: // AuthenticationOk
        // Only after the server proved it knows the secret: anything else could be an impostor.
        if (!this.serverVerified) throw new UpstreamError('login', 'server accepted the login without completing SCRAM; refusing to trust it');
        return;
      case 10: {
        // AuthenticationSASL
        const mechanisms = readCStrings(frame, 9);
        // Over TLS, bind the exchange to the certificate when the server offers it (a relay
        // in the middle cannot then reuse the proof), like libpq's channel_binding=prefer.
        const bind = this.channelBinding !== null && mechanisms.includes('SCRAM-SHA-256-PLUS');
        if (!bind && !mechanisms.includes('SCRAM-SHA-256')) {
          throw new UpstreamError('login', `server offers no supported SASL mechanism (${mechanisms.join(', ')})`);
        }
        this.scram = new ScramClientSession(this.login.password, { channelBinding: bind ? this.channelBinding : null });
        this.socket.write(serialize.sendSASLInitialResponseMessage(this.scram.mechanism, this.scram.clientFirst()));
        return;
      }
      case 11: {
        // AuthenticationSASLContinue
        if (!this.scram) throw new UpstreamError('protocol', 'SASL continue without a SASL exchange');
        const clientFinal = await this.scram.handleServerFirst(frame.toString('utf8', 9));
        if (this.state === 'login') this.socket.write(serialize.sendSCRAMClientFinalMessage(clientFinal));
        return;
      }
      case 12: // AuthenticationSASLFinal
        if (!this.scram?.verifyServerFinal(frame.toString('utf8', 9))) {
          throw new UpstreamError('login', 'upstream server signature is invalid');
        }
        this.serverVerified = true;
        return;
      case 3: // cleartext password: never sent, it would hand the password to whoever asks
        throw new UpstreamError('login', 'server asked for a cleartext password; pgbastion logs in with SCRAM-SHA-256 only');
      default:
        throw new UpstreamError('login', `unsupported authentication request ${code} from the server`);
    }
  }

  /** The one way a connection ends: settles whoever waits on it and tells its peer. */
  private fail(err: UpstreamError | null): void {
    if (this.state === 'closed') return;
    const wasIdle = this.state === 'idle';
    const loggedIn = wasIdle || this.state === 'active' || this.state === 'hidden';
    this.state = 'closed';
    // Letting go of a logged-in connection (a client left with work on it, the pool shrinks,
    // shutdown) says goodbye behind whatever was written, as a client's Terminate would: a
    // client's last statements before its own Terminate reach the server whole, where a
    // destroy discards what Node had not handed to the kernel yet. Failures end at once.
    if (err === null && loggedIn) {
      // Bytes a write batch still holds (a client's statements read with its Terminate) first.
      this.serverWrites.flush();
      endAndLinger(this.socket, serialize.end());
    } else this.socket.destroy();
    this.inline = null;
    const reason = err ?? new UpstreamError('lost', 'server connection closed');
    if (err) this.login.logger.debug({ server: this.id, err: err.message }, 'server connection ended');
    this.loginDone?.(reason);
    if (this.hidden) {
      this.hidden.reject(reason);
      this.hidden = null;
    }
    this.flushToClient();
    const peer = this.peer;
    this.peer = null;
    if (peer) {
      // Closes and DEALLOCATEs never answered closed nothing the client can still reach.
      for (const group of this.parseGroups) for (const entry of group) if (entry.closes && entry.name !== '') peer.closeSkipped(entry.name, entry.parse);
    }
    if (peer && err) peer.onServerLost(err);
    if (wasIdle) this.onIdleClose?.();
  }
}
