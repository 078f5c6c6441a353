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

/** Whether PostgreSQL would take `name` for an encoding whose characters may hide ASCII bytes. */
export function hidesAscii(name: string): boolean {
  // As PostgreSQL's clean_encoding_name: only letters and digits count, case-insensitively.
  return ASCII_AMBIGUOUS.has(name.toLowerCase().replace(/[^a-z0-9]/g, ''));
}

export const ENCODING_REFUSED_DETAIL =
  'pgbastion reads statements as UTF-8; in SJIS, BIG5, GBK, UHC, GB18030 and JOHAB a character may contain an ASCII byte such as a quote or backslash, so PostgreSQL could read a statement differently from every check made on it';
