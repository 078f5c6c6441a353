// Client encodings pgbastion refuses. Every check on a statement (the pinning policy, sticky
// state, DDL audit) reads its bytes as UTF-8, as PostgreSQL does in a UTF-8 database once it
// has converted them from the client encoding. That agrees for every encoding whose
// multibyte characters are made of bytes >= 0x80 only: the ASCII that shapes SQL (quotes,
// backslash, $, ;, --) reads the same either way. In the encodings below (PostgreSQL's
// client-only ones) the second byte of a character may be ASCII: in SJIS `0x81 0x5C` is one
// character for PostgreSQL, but `\` for a UTF-8 reader, so `E'<0x81 0x5C>', set_config(…) --'`
// is one string literal to the proxy and a set_config() call to the server.

/** PostgreSQL's names and aliases of those encodings (src/common/encnames.c), as clean_encoding_name leaves them. */
const ASCII_AMBIGUOUS = new Set([
  'sjis', 'shiftjis', 'mskanji', 'win932', 'windows932', 'cp932',
  'shiftjis2004',
  'big5', 'win950', 'windows950', 'cp950',
  'gbk', 'win936', 'windows936', 'cp936',
  'uhc', 'win949', 'windows949', 'cp949',
  'gb18030',
  'johab',
]);

/**
 * PostgreSQL's clean_encoding_name: only its ASCII letters and digits, lower-cased. (Dropped
 * before lower-casing: JavaScript lower-cases the Kelvin sign U+212A to `k` and U+0130 to
 * `i`, which PostgreSQL drops, so 'S\u212AJIS' would have passed for harmless.)
 */
function cleanEncodingName(name: string): string {
  return name.replace(/[^A-Za-z0-9]/g, '').toLowerCase();
}

/** Whether PostgreSQL would take `name` for an encoding whose characters may hide ASCII bytes. */
export function hidesAscii(name: string): boolean {
  return ASCII_AMBIGUOUS.has(cleanEncodingName(name));
}

/** Whether `name` is UTF-8 to PostgreSQL (UTF8, or its alias Unicode). */
export function isUtf8Name(name: string): boolean {
  const clean = cleanEncodingName(name);
  return clean === 'utf8' || clean === 'unicode';
}

/**
 * Procedural text (a DO block, a non-SQL function body) that may set the client encoding: it
 * cannot be analysed, and inside one batch it could switch the encoding, have a statement read
 * in it, and switch back before the server reports anything.
 */
export const SETS_ENCODING = /client_encoding|(?<![a-z0-9_$])set\s+names(?![a-z0-9_$])/i;

export const ENCODING_REFUSED_DETAIL =
  'pgbastion reads statements as UTF-8; in SJIS, BIG5, GBK, UHC, GB18030 and JOHAB a character may contain an ASCII byte such as a quote or backslash, so PostgreSQL could read a statement differently from every check made on it';
