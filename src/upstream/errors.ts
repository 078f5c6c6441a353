// Errors of the upstream layer, with predicates the session uses to choose between
// "tell the client and go on" and "close".

/**
 * `standby`: reachable, but in recovery while upstream.require_primary is set. `settings`:
 * a switch of the client's settings failed on the connection.
 */
export type UpstreamFailure = 'unreachable' | 'login' | 'protocol' | 'lost' | 'timeout' | 'standby' | 'settings';

export class UpstreamError extends Error {
  constructor(
    readonly failure: UpstreamFailure,
    message: string,
    /** The server's own ErrorResponse fields, when it sent one. */
    readonly fields?: Record<string, string>,
  ) {
    super(message);
  }

  /** The server refused the login for a reason its client should see verbatim (e.g. 3D000). */
  get serverRefusal(): boolean {
    return this.failure === 'login' && this.fields?.C !== undefined && !this.fields.C.startsWith('28');
  }
}
