// Builds the hidden statement that makes a server connection hold a client's settings.
// set_config() takes the raw value exactly as a startup packet does (no list re-quoting).

/** A SQL string literal that is safe whatever standard_conforming_strings says. */
export function quoteLiteral(value: string): string {
  if (value.includes('\\')) return `E'${value.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
  return `'${value.replace(/'/g, "''")}'`;
}

/**
 * `SELECT set_config(...)` for every wanted setting the connection does not already hold,
 * or null when nothing differs (no round trip at all).
 */
export function setConfigSql(wanted: ReadonlyMap<string, string>, held: ReadonlyMap<string, string>): string | null {
  const calls: string[] = [];
  for (const [name, value] of wanted) {
    if (held.get(name) === value) continue;
    calls.push(`pg_catalog.set_config(${quoteLiteral(name)}, ${quoteLiteral(value)}, false)`);
  }
  return calls.length === 0 ? null : `SELECT ${calls.join(', ')}`;
}
