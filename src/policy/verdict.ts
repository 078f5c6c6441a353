// What the pinning policy answers for one SQL string, and the few constructors that build
// answers, so every refusal carries the same message shape (SQLSTATE 42501 is the caller's).

export interface Refusal {
  /** The pinned variable the statement would change (lower-case); null for statementsRefusal. */
  readonly variable: string | null;
  /** `permission denied to set parameter "<variable>"`, as PostgreSQL words it. */
  readonly message: string;
  /** Which form was refused and why. */
  readonly detail: string;
  /** SQLSTATE when not 42501 (42601 for text the parser here rejects). */
  readonly code?: string;
}

export interface PolicyVerdict {
  /** Set when the statement must be refused with ERROR 42501. */
  readonly refuse: Refusal | null;
  /** Set when the statement leaves session state a transaction pooler cannot carry to another server connection. */
  readonly sticky: string | null;
}

/** The answer for everything that neither tampers nor leaves session state. */
export const ALLOW: PolicyVerdict = Object.freeze({ refuse: null, sticky: null });

export function refusal(variable: string, detail: string): Refusal {
  return Object.freeze({ variable, message: `permission denied to set parameter "${variable}"`, detail });
}

/**
 * Not a pinned variable: the protocol-level prepared statements pgbastion made for other
 * clients, which share server connections in transaction mode.
 */
export function statementsRefusal(message: string, detail: string): Refusal {
  return Object.freeze({ variable: null, message, detail });
}

export type Effect = 'would change' | 'would reset' | 'could change';

/** `<form> <effect> "<variable>", which pgbastion pins for this session<why>`. */
export function pinnedDetail(form: string, variable: string, effect: Effect = 'would change', why = ''): string {
  return `${form} ${effect} "${variable}", which pgbastion pins for this session${why}`;
}

export function verdict(refuse: Refusal | null, sticky: string | null): PolicyVerdict {
  if (refuse === null && sticky === null) return ALLOW;
  // Refuse wins: a refused statement never reaches the server, so it leaves no state.
  return Object.freeze({ refuse, sticky: refuse === null ? sticky : null });
}

/** Both answers at once (several statements, or two readings of one text): first refusal, else first sticky. */
export function merge(a: PolicyVerdict, b: PolicyVerdict): PolicyVerdict {
  if (a.refuse !== null) return a;
  if (b.refuse !== null) return b;
  return stickier(a.sticky, b.sticky) === a.sticky ? a : b;
}

/**
 * Of two sticky reasons, the one to keep: the first, unless only the second is one whose
 * state DISCARD ALL leaves (OUTLIVES_RESET), which decides how the connection is given back.
 */
export function stickier(first: string | null, second: string | null): string | null {
  if (first === null) return second;
  if (second !== null && !OUTLIVES_RESET.has(first) && OUTLIVES_RESET.has(second)) return second;
  return first;
}

/** The sticky reason of text the parser here rejects (classify.ts): it may have done anything. */
export const UNPARSED = 'unparsed statement';

/**
 * Sticky reasons whose state DISCARD ALL does not undo: a seeded random() (nothing reseeds it
 * back), a loaded library, and a DO block or a statement not parsed here (which may have
 * done either). A server connection that ran one is closed when its client leaves, not
 * reset for the next.
 */
export const OUTLIVES_RESET: ReadonlySet<string> = new Set(['setseed', 'LOAD', 'DO', UNPARSED]);
