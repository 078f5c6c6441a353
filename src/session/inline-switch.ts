// The inline settings switch: when a leased server connection holds another client's pins,
// the SET statements that switch them can ride in the client's own Query, ahead of its one
// statement ("SET "app"."tenant_id" = '7'; SELECT …"), instead of a separate
// `BEGIN; SET …; COMMIT` Query in the same write.
//
// Why: PostgreSQL's cost is per statement. In pgbench against PostgreSQL alone (16 clients,
// a one-row SELECT per transaction) the separate switch cut throughput to about 40 % of the
// SELECT alone, the inline one to about 60 %. The proxy also reads one reply instead of two.
//
// Why it stays fail-closed and never leaks a tenant's value:
// - PostgreSQL runs a Query of several statements as one implicit transaction, so the
//   switch and the client's statement commit together or not at all. The connection holds
//   the new settings when the Query saw no ErrorResponse, and the old ones otherwise
//   (ServerConnection reverts its record at ReadyForQuery).
// - When a switch statement fails, PostgreSQL skips the rest of the string: the client's
//   statement never runs with the previous client's values.
// - Whatever the client sends after that Query would run after a possible rollback, with
//   the previous values: it waits for the Query's ReadyForQuery (ClientSession holds it)
//   and then gets a switch of its own if one is still needed.
// - Only one statement that can neither end nor begin a transaction and may run inside a
//   transaction block: SELECT, INSERT, UPDATE, DELETE, MERGE, WITH, VALUES, TABLE (not
//   BEGIN, whose block a later ROLLBACK would undo the switch with; not VACUUM, which
//   refuses a block). A `;` anywhere but at the end, even inside a string, rules it out.
// - Only custom variables (with a dot, such as pins) are switched this way: a core setting
//   like default_transaction_read_only takes effect when a transaction starts, which would be
//   too late for a statement in the same one (set-config.ts decides this).
// - PostgreSQL converts and parses the whole string before it runs any of it, so an error
//   or warning about the client's text (syntax, encoding, a long identifier) comes before
//   the switch's replies, positioned from the start of the string: the client gets it with
//   the position shifted back to its own text. Only a SET's own failure gives the connection
//   up (switchsOwnError); whatever fails, the Query as a whole rolled back.
// - What is written behind the Query must know its outcome, however it is held back (for
//   the Query, or for a cancel in flight): ClientSession.writeHeld switches again first when
//   the switch rolled back.

// The extended protocol (Parse/Bind/Execute ... Sync, what most drivers send) has the same
// property: everything up to a Sync runs in one implicit transaction (PostgreSQL commits a
// non-transaction-control Execute only at the Sync), and after an error the server skips
// every message up to the Sync. So the switch goes in front of the client's batch as
// Parse/Bind/Execute of each SET on the unnamed statement and portal, under these rules
// (batchTakesInlineSwitch):
// - The batch is whole: one Sync, at its end. Messages after it wait for its ReadyForQuery,
//   as for a Query; messages before the Sync arriving later would join the same transaction
//   unseen, so a batch still without its Sync takes the separate switch.
// - Every statement the batch executes is one of the kinds above: each Parse's text passes
//   takesInlineSwitch, each Bind binds a statement parsed earlier in the batch or a named
//   one that passed when it was parsed, and each Execute (or Describe of a portal) names a
//   portal bound in the batch (not a cursor left open by a WITH HOLD, nor the switch's own
//   unnamed portal). Only Parse, Bind, Describe, Execute, Close and Flush may come before
//   the Sync.
// - The switch takes over the unnamed statement: the client's own is prepared again on
//   this connection if the batch uses it (ClientSession.unnamedOnServer), and a batch that
//   binds the unnamed statement without parsing it first takes the separate switch.
// - Nothing is shifted: the client's messages are its own, and an error before the switch
//   completed can only be the switch's (or a cancel or FATAL, which are the client's).

// A transaction block cannot take the inline switch: a later ROLLBACK would undo it. So a
// client's BEGIN gets the separate switch, `BEGIN; SET …; COMMIT` as a Query of its own, and
// work behind a separate switch waits for its ReadyForQuery (should it fail, work starting
// with ROLLBACK would leave its aborted block and run with the previous client's settings).
// A Query that is one BEGIN or START TRANSACTION and nothing else (opensBlockOnly) goes out
// with the switch instead, saving that round trip, because it cannot run anything of the
// client's whatever the switch's outcome:
// - the switch failed inside its block: the BEGIN meets the aborted block and fails (25P02);
// - the switch's COMMIT failed (its transaction is over): the BEGIN opens a block, empty;
// and either way the connection is given up at the switch's ReadyForQuery, before anything
// else of the client's is written (ServerConnection.switchInFlight holds it back).

import { endsSession } from '../protocol/fields.js';

/** Client statements longer than this are not copied into an inline switch. */
export const INLINE_MAX_BYTES = 16 * 1024;

const INLINE_FIRST_WORD = /^\s*(?:select|insert|update|delete|merge|with|values|table)(?![a-z0-9_$])/i;

const BLOCK_FIRST_WORD = /^\s*(?:begin|start\s+transaction)(?![a-z0-9_$])/i;

/** Whether a switch may ride ahead of `sql` in one Query (see the module comment). */
export function takesInlineSwitch(sql: string): boolean {
  return INLINE_FIRST_WORD.test(sql) && oneStatement(sql);
}

/** Whether `sql` is one BEGIN or START TRANSACTION alone, which may follow a separate switch at once. */
export function opensBlockOnly(sql: string): boolean {
  return BLOCK_FIRST_WORD.test(sql) && oneStatement(sql);
}

/** No `;` but at the end: a `;` anywhere else, even inside a string or comment, rules a text out. */
function oneStatement(sql: string): boolean {
  const semicolon = sql.indexOf(';');
  return semicolon < 0 || sql.slice(semicolon + 1).trim() === '';
}

/** The client's Query message with `prefix` put in front of its text. */
export function inlineQuery(prefix: Buffer, query: Buffer): Buffer {
  const out = Buffer.allocUnsafe(query.length + prefix.length);
  out[0] = query[0]!;
  out.writeInt32BE(query.length - 1 + prefix.length, 1);
  prefix.copy(out, 5);
  query.copy(out, 5 + prefix.length, 5);
  return out;
}

/**
 * What a SET or RESET of a custom variable raises when it fails: invalid or unknown name (a
 * prefix an extension reserved), permission denied, invalid value, or a variable that cannot
 * be changed now.
 */
const SWITCH_FAILURES = new Set(['42602', '42704', '42501', '22023', '55P02']);

/**
 * An error that came before the switch statements had all completed: whether it is the
 * switch's own failure (the connection is given up, as when a separate switch fails). Nothing
 * of the Query ran either way, so anything else is safely the client's to hear: a syntax
 * error placed in its text, an encoding error (the server converts the whole text first), a
 * cancel meant for its statement, a FATAL.
 */
export function switchsOwnError(fields: Readonly<Record<string, string>>, prefixChars: number): boolean {
  if (endsSession(fields)) return false;
  if (fields.C === undefined || !SWITCH_FAILURES.has(fields.C)) return false;
  return fields.P === undefined || Number(fields.P) <= prefixChars;
}

const PARSE = 0x50;
const BIND = 0x42;
const DESCRIBE = 0x44;
const EXECUTE = 0x45;
const CLOSE = 0x43;
const FLUSH = 0x48;
const SYNC = 0x53;

/** One queued client message, as far as batchTakesInlineSwitch needs to know it. */
export interface BatchMessage {
  readonly type: number;
  readonly bytes: Buffer;
  /** Parse: the client's own SQL, vetted and unchanged (else undefined). */
  readonly own?: string;
  /** Bind/Describe of a named statement: whether its SQL passed takesInlineSwitch. */
  readonly needs: { readonly inlineSafe: boolean } | null;
  /** Bind/Describe of the unnamed statement. */
  readonly usesUnnamed?: unknown;
  /** Parse of a named statement (null for the unnamed one). */
  readonly defines: unknown;
}

/** The portal name a Bind ('B') or Execute ('E') frame names (its first field), as bytes read as latin1. */
export function portalName(frame: Buffer): string | null {
  const end = frame.indexOf(0, 5);
  return end < 0 ? null : frame.toString('latin1', 5, end);
}

/** Whether a switch may ride ahead of this extended-protocol batch (see the module comment). */
export function batchTakesInlineSwitch(batch: readonly BatchMessage[]): boolean {
  if (batch.length < 2 || batch[batch.length - 1]!.type !== SYNC) return false;
  let unnamedParsed = false;
  const portals = new Set<string>();
  for (let i = 0; i < batch.length - 1; i++) {
    const m = batch[i]!;
    switch (m.type) {
      case PARSE:
        if (m.own === undefined || !takesInlineSwitch(m.own)) return false;
        if (m.defines === null) unnamedParsed = true;
        break;
      case BIND: {
        if (m.needs !== null ? !m.needs.inlineSafe : !(m.usesUnnamed !== undefined && unnamedParsed)) return false;
        const portal = portalName(m.bytes);
        if (portal === null) return false;
        portals.add(portal);
        break;
      }
      case EXECUTE: {
        const portal = portalName(m.bytes);
        if (portal === null || !portals.has(portal)) return false;
        break;
      }
      case DESCRIBE:
        // (A malformed message is relayed counted as a Describe: no switch rides with it.)
        if (m.bytes[0] !== DESCRIBE) return false;
        // A portal described must be one the batch bound: the unnamed one is the switch's before that.
        if (m.bytes[5] === 0x50 /* P */ && !portals.has(m.bytes.toString('latin1', 6, m.bytes.length - 1))) return false;
        break;
      case CLOSE:
      case FLUSH:
        break;
      default:
        return false;
    }
  }
  return true;
}
