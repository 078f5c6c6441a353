// Which users may not have long texts parsed for a while. A parse that fails other than with
// the parser's own error (deep input that exhausts the stack: parser.ts) leaves the shared
// WebAssembly instance tainted until a fresh one is loaded (tens of ms); a burst of some
// twenty such failures breaks it for every client until then. So the user whose text did
// it gets no text longer than ALWAYS_PARSED_CHARS parsed for COOLDOWN_MS: such text is
// judged as unparsed text is (refused while variables are pinned). To break the instance
// again an attacker then needs as many users as failures.

/** How long a user's long texts go unparsed after one of them faulted the parser. */
export const COOLDOWN_MS = 1000;

/**
 * Text this short is always parsed: it cannot nest deep enough to exhaust the stack (the
 * shallowest failure measured, 2 000 nested subqueries, takes 16 000 characters).
 */
export const ALWAYS_PARSED_CHARS = 4096;

/** Past this many users in cooldown, expired entries are dropped before another is added. */
const PRUNE_AT = 1024;

export class ParserCooldown {
  /** User name -> time (performance.now()) its cooldown ends. */
  private readonly until = new Map<string, number>();

  constructor(
    private readonly ms = COOLDOWN_MS,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** `user`'s text faulted the parser: its cooldown starts (again) now. */
  start(user: string): void {
    if (this.until.size >= PRUNE_AT) {
      const now = this.now();
      for (const [name, end] of this.until) if (end <= now) this.until.delete(name);
    }
    this.until.set(user, this.now() + this.ms);
  }

  /** May `sql`, sent by `user`, be handed to the parser? */
  mayParse(user: string, sql: string): boolean {
    if (this.until.size === 0 || sql.length <= ALWAYS_PARSED_CHARS) return true;
    const end = this.until.get(user);
    if (end === undefined) return true;
    if (end > this.now()) return false;
    this.until.delete(user);
    return true;
  }
}
