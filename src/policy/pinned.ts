// The pinned variable names, folded the way PostgreSQL compares GUC names (ASCII
// case-insensitively, whatever the quoting), with the text matchers the opaque-body rule uses.

export class PinnedNames {
  /** Lower-case names, in configuration order. */
  readonly names: readonly string[];
  /** The name a refusal cites when a form touches every variable (RESET ALL) or an unknown one. */
  readonly first: string | null;
  private readonly set: ReadonlySet<string>;
  /** Per name: one whole-word matcher per dot-separated part (`app`, `tenant_id`). */
  private readonly parts: readonly (readonly RegExp[])[];

  constructor(pinned: readonly string[]) {
    // JS toLowerCase folds a superset of what guc_name_compare folds (ASCII only): every pair
    // PostgreSQL treats as one name is one name here too, which errs on the side of refusing.
    this.names = Object.freeze([...new Set(pinned.map((n) => n.toLowerCase()))]);
    this.first = this.names[0] ?? null;
    this.set = new Set(this.names);
    this.parts = this.names.map((n) => n.split('.').filter((p) => p !== '').map(wordMatcher));
  }

  /** The pinned name `name` designates, or null. */
  match(name: string): string | null {
    const lower = name.toLowerCase();
    return this.set.has(lower) ? lower : null;
  }

  /**
   * The first pinned name that lower-case `text` mentions, spelled whole (`app.tenant_id`) or
   * as all of its parts as separate words (`"app" . "tenant_id"`, `'app.' || 'tenant_id'`).
   */
  mentionedIn(text: string): string | null {
    for (let i = 0; i < this.names.length; i++) {
      const name = this.names[i]!;
      if (text.includes(name)) return name;
      const parts = this.parts[i]!;
      if (parts.length > 0 && parts.every((re) => re.test(text))) return name;
    }
    return null;
  }
}

/**
 * A word: not glued to ASCII identifier characters on either side. Non-ASCII neighbours count
 * as boundaries although PostgreSQL would read them as part of the identifier: more matches
 * only means more refusals, never fewer.
 */
function wordMatcher(word: string): RegExp {
  const escaped = word.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`(?<![a-z0-9_$])${escaped}(?![a-z0-9_$])`);
}
