// Client authentication methods as small strategy objects behind one interface.
// A method consumes the client's auth messages and produces frames; it does no I/O itself.

import { authenticationSasl, authenticationSaslContinue, authenticationSaslFinal } from '../protocol/backend.js';
import { ScramServerSession, type MockScram, type ScramSecret } from './scram.js';

export type AuthOutcome =
  | { kind: 'continue'; send: Buffer[] }
  | { kind: 'ok'; send: Buffer[] }
  /** Wrong credentials: the caller answers with the uniform 28P01 message. */
  | { kind: 'denied' }
  /** Malformed exchange: FATAL 08P01 with this message. */
  | { kind: 'protocol'; message: string }
  /** Refused before any credential exchange (e.g. certificate does not name the user): FATAL 28000. */
  | { kind: 'refused'; message: string };

export interface AuthMethod {
  readonly name: 'scram-sha-256' | 'trust' | 'cert';
  /** Does this method check a secret the client could guess? Only those count toward lockout. */
  readonly provesCredential: boolean;
  begin(): AuthOutcome;
  /** A typed message from the client during authentication (normally 'p'). */
  handle(type: number, frame: Buffer): AuthOutcome;
}

/** `trust`: no exchange at all. */
export class TrustAuth implements AuthMethod {
  readonly name = 'trust' as const;
  readonly provesCredential = false;
  begin(): AuthOutcome {
    return { kind: 'ok', send: [] };
  }
  handle(): AuthOutcome {
    return { kind: 'protocol', message: 'unexpected message during trust authentication' };
  }
}

/**
 * `cert`: the verified client certificate is the credential. Its CN, mapped through
 * cert_map when there is one, must name the requested user.
 */
export class CertAuth implements AuthMethod {
  readonly name = 'cert' as const;
  readonly provesCredential = false;
  constructor(
    private readonly cn: string | undefined,
    private readonly user: string,
    private readonly namesUser: (cn: string, user: string) => boolean,
  ) {}
  begin(): AuthOutcome {
    if (this.cn === undefined) return { kind: 'refused', message: 'connection requires a valid client certificate' };
    if (!this.namesUser(this.cn, this.user)) return { kind: 'refused', message: `certificate authentication failed for user "${this.user}"` };
    return { kind: 'ok', send: [] };
  }
  handle(): AuthOutcome {
    return { kind: 'protocol', message: 'unexpected message during certificate authentication' };
  }
}

/** SCRAM-SHA-256 (and -PLUS when channel binding data is given) over SASL messages. */
export class ScramAuth implements AuthMethod {
  readonly name = 'scram-sha-256' as const;
  readonly provesCredential = true;
  private readonly session: ScramServerSession;
  private step: 'initial' | 'final' | 'done' = 'initial';

  constructor(opts: {
    secret: ScramSecret | null;
    username: string;
    fakeSaltKey: Buffer | MockScram;
    channelBinding?: { type: 'tls-server-end-point'; data: Buffer } | null;
  }) {
    this.session = new ScramServerSession(opts);
  }

  begin(): AuthOutcome {
    return { kind: 'continue', send: [authenticationSasl(this.session.mechanisms())] };
  }

  handle(type: number, frame: Buffer): AuthOutcome {
    if (type !== 0x70 /* p */) {
      return { kind: 'protocol', message: `expected SASL response, got message type ${type}` };
    }
    switch (this.step) {
      case 'initial':
        return this.initial(frame);
      case 'final':
        return this.final(frame);
      case 'done':
        return { kind: 'protocol', message: 'unexpected SASL message after authentication' };
    }
  }

  private initial(frame: Buffer): AuthOutcome {
    // SASLInitialResponse: mechanism\0, int32 length (-1 = none), data.
    const nameEnd = frame.indexOf(0, 5);
    if (nameEnd < 0 || nameEnd + 5 > frame.length) return { kind: 'protocol', message: 'malformed SASLInitialResponse message' };
    const mechanism = frame.toString('utf8', 5, nameEnd);
    const len = frame.readInt32BE(nameEnd + 1);
    const dataStart = nameEnd + 5;
    if (len < 0 || dataStart + len !== frame.length) return { kind: 'protocol', message: 'malformed SASLInitialResponse message' };
    if (!this.session.mechanisms().includes(mechanism)) {
      return { kind: 'protocol', message: 'client selected an invalid SASL authentication mechanism' };
    }
    const r = this.session.start(mechanism, frame.toString('utf8', dataStart));
    if (!r.ok) return r.failure.kind === 'auth' ? { kind: 'denied' } : { kind: 'protocol', message: r.failure.message };
    this.step = 'final';
    return { kind: 'continue', send: [authenticationSaslContinue(r.serverFirst)] };
  }

  private final(frame: Buffer): AuthOutcome {
    this.step = 'done';
    const r = this.session.finish(frame.toString('utf8', 5));
    if (!r.ok) return r.failure.kind === 'auth' ? { kind: 'denied' } : { kind: 'protocol', message: r.failure.message };
    return { kind: 'ok', send: [authenticationSaslFinal(r.serverFinal)] };
  }
}
