// Temporary schemas. Objects created in one stay with the server connection (transaction
// mode hands it to the next client, whose unqualified names find them first: PostgreSQL
// searches pg_temp before the path for relations), so a session that may create one keeps
// its connection (sticky). A search_path that names pg_temp makes CREATE TABLE without TEMP
// create one, when pg_temp is the first schema of the path that exists.

/** The sticky reason of a search_path that names one. */
export const TEMP_PATH = 'search_path with pg_temp';

/** pg_temp, or a backend's own pg_temp_N. */
export function isTempSchema(name: string): boolean {
  return /^pg_temp(_\d+)?$/i.test(name);
}

/** Whether a search_path value (`"$user", public, pg_temp`) names a temporary schema anywhere. */
export function searchPathHasTemp(value: string): boolean {
  return value.split(',').some((part) => isTempSchema(part.trim().replace(/^"(.*)"$/, '$1')));
}
