// Builds the hidden statement that makes a server connection hold exactly one client's
// settings (startup parameters and pins). set_config() takes the raw value exactly as a
// startup packet does (no list re-quoting); RESET drops what a previous client set and
// this one did not, back to the server's own default.

/** A SQL string literal that is safe whatever standard_conforming_strings says. */
export function quoteLiteral(value: string): string {
  if (value.includes('\\')) return `E'${value.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
  return `'${value.replace(/'/g, "''")}'`;
}

/** A GUC name as a SQL identifier chain (`app.tenant_id` → "app"."tenant_id"). */
function quoteGucName(name: string): string {
  return name
    .split('.')
    .map((part) => `"${part.replace(/"/g, '""')}"`)
    .join('.');
}

/**
 * The statement that turns `held` into `wanted`, or null when they already agree (then no
 * round trip at all). Names compare case-insensitively, as PostgreSQL's GUC names do.
 */
export function setConfigSql(wanted: ReadonlyMap<string, string>, held: ReadonlyMap<string, string>): string | null {
  const wantedLower = new Map<string, string>();
  for (const [name, value] of wanted) wantedLower.set(name.toLowerCase(), value);
  const parts: string[] = [];
  for (const [name] of held) {
    if (!wantedLower.has(name.toLowerCase())) parts.push(`RESET ${quoteGucName(name)}`);
  }
  const calls: string[] = [];
  for (const [name, value] of wanted) {
    if (heldValue(held, name) === value) continue;
    calls.push(`pg_catalog.set_config(${quoteLiteral(name)}, ${quoteLiteral(value)}, false)`);
  }
  if (calls.length > 0) parts.push(`SELECT ${calls.join(', ')}`);
  return parts.length === 0 ? null : parts.join('; ');
}

function heldValue(held: ReadonlyMap<string, string>, name: string): string | undefined {
  const direct = held.get(name);
  if (direct !== undefined) return direct;
  const lower = name.toLowerCase();
  for (const [k, v] of held) if (k.toLowerCase() === lower) return v;
  return undefined;
}
