// The characters PostgreSQL's lexer (scan.l) decides on, shared by the two scanners that find
// string literals: escape-strings.ts (the policy's standard_conforming_strings = off reading,
// on JavaScript strings) and audit/ddl.ts (the audit's redaction, on UTF-8 bytes). Both read
// any code point or byte >= 128 as part of an identifier, as the lexer does.

export const Ch = {
  Quote: 0x27,
  DQuote: 0x22,
  Backslash: 0x5c,
  Dollar: 0x24,
  Dash: 0x2d,
  Slash: 0x2f,
  Star: 0x2a,
  Amp: 0x26,
  LF: 0x0a,
  CR: 0x0d,
} as const;

export function isIdentStart(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || c === 0x5f || c >= 0x80;
}

export function isIdentCont(c: number): boolean {
  return isIdentStart(c) || (c >= 0x30 && c <= 0x39) || c === Ch.Dollar;
}

/** Dollar-quote tags may not contain `$` or start with a digit. */
export function isTagCont(c: number): boolean {
  return isIdentStart(c) || (c >= 0x30 && c <= 0x39);
}
