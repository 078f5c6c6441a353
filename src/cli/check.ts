// `pgbastion check [-c FILE]`: validates a config file without starting anything (SPEC §1).
// Exit 0 with a one-line summary (plus warnings), or 1 with every problem as `path.to.key: message (line L, column C)`.

import type { Config } from '../config/types.js';
import { unservedFeatures } from '../config/unserved.js';
import { ConfigError, formatProblem, loadConfigFileWithWarnings } from '../config/load.js';
import { parseConfigArgs } from './load-config.js';

const USAGE = `usage: pgbastion check [-c FILE]

Validate a pgbastion configuration file and print a summary, or every problem found.

options:
  -c, --config FILE   config file (default: $PGBASTION_CONFIG, else config/pgbastion.yaml)
  -h, --help          show this help`;

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** `config OK: 1 listener, 1 upstream, 2 users, 3 hba rules, pool transaction/20` */
export function summarise(c: Config): string {
  const rules = c.hba_file !== undefined ? `hba_file ${c.hba_file}` : plural(c.hba?.length ?? 0, 'hba rule');
  return (
    `config OK: ${plural(c.listen.length, 'listener')}, ${plural(c.upstreams.length, 'upstream')}, ` +
    `${plural(c.users.length, 'user')}, ${rules}, pool ${c.pool.mode}/${c.pool.size}`
  );
}

export async function runCheck(
  args: string[],
  out: (s: string) => void,
  err: (s: string) => void,
): Promise<number> {
  const parsed = parseConfigArgs(args);
  if ('error' in parsed) {
    err(`pgbastion check: ${parsed.error}\n\n${USAGE}`);
    return 1;
  }
  if (parsed.help) {
    out(USAGE);
    return 0;
  }
  try {
    const { config, warnings } = await loadConfigFileWithWarnings(parsed.file);
    const unserved = unservedFeatures(config);
    if (unserved.refuse.length > 0) {
      err(`${parsed.file}: valid, but \`pgbastion start\` would refuse it:`);
      for (const r of unserved.refuse) err(r);
      return 1;
    }
    out(summarise(config));
    for (const w of warnings) out(`warning: ${w}`);
    return 0;
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e; // a bug, not a bad config: main.ts reports it with exit 2
    err(`${parsed.file}: ${plural(e.problems.length, 'problem')}`);
    for (const p of e.problems) err(formatProblem(p));
    return 1;
  }
}
